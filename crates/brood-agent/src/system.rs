//! Guest-wide state: hostname, power, network identity, the kernel RNG,
//! uptime and the facts `Info` reports.
//!
//! The actions that change the whole machine (hostname, power, a NIC's MAC
//! and IPv4 address, reseeding the RNG) go through the [`Machine`] trait so
//! tests on the host can swap them for a recording double; everything
//! read-only is a plain function. Init-time hostname setup reuses
//! [`validate_hostname`]; the network ioctls live in [`crate::net`].

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brood_proto::{AgentError, AgentInfo, ErrorKind, Ipv4Config, PROTOCOL_VERSION};
use nix::errno::Errno;
use nix::sys::reboot::RebootMode;
use nix::time::ClockId;
use nix::unistd::SysconfVar;

use crate::VERSION;
use crate::net::NetError;

/// Longest hostname the agent accepts.
pub const MAX_HOSTNAME: usize = brood_proto::hostname::MAX_LEN;

/// Errors of machine-wide actions.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The hostname is empty, too long or has characters outside `[A-Za-z0-9-.]`.
    #[error(
        "invalid hostname {name:?}: want 1-{MAX_HOSTNAME} characters of [A-Za-z0-9-.], not starting with '-'"
    )]
    InvalidHostname {
        /// The refused name, cut for display.
        name: String,
    },
    /// clock_settime(2) failed.
    #[error("set the wall clock")]
    SetClock(#[source] Errno),
    /// gethostname(2) failed.
    #[error("read the kernel hostname")]
    GetHostname(#[source] Errno),
    /// sethostname(2) failed.
    #[error("set the kernel hostname")]
    SetHostname(#[source] Errno),
    /// The hostname file could not be written.
    #[error("write {path}")]
    WriteHostnameFile {
        /// The file.
        path: PathBuf,
        /// What the write reported.
        #[source]
        source: io::Error,
    },
    /// reboot(2) with `RB_POWER_OFF` failed.
    #[error("power off")]
    PowerOff(#[source] Errno),
    /// A `SetIpv4` names a NIC past the last possible one or a prefix over 32.
    #[error("invalid IPv4 request for NIC {nic}: {why}")]
    InvalidIpv4 {
        /// The NIC index asked for.
        nic: u32,
        /// What was wrong.
        why: &'static str,
    },
    /// A network interface could not be configured.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The random device could not be opened.
    #[error("open {path}")]
    OpenRandom {
        /// The device.
        path: PathBuf,
        /// What open reported.
        #[source]
        source: io::Error,
    },
    /// An ioctl on the random device failed.
    #[error("{op} on {path}")]
    Random {
        /// The request, as in random(4).
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// What the kernel answered.
        #[source]
        source: Errno,
    },
}

impl SystemError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        let kind = match self {
            SystemError::InvalidHostname { .. } | SystemError::InvalidIpv4 { .. } => {
                ErrorKind::BadRequest
            }
            SystemError::SetHostname(errno)
            | SystemError::SetClock(errno)
            | SystemError::GetHostname(errno)
            | SystemError::PowerOff(errno)
            | SystemError::Random { source: errno, .. } => errno_kind(*errno),
            SystemError::WriteHostnameFile { source, .. }
            | SystemError::OpenRandom { source, .. } => crate::serve::io_kind(source),
            SystemError::Net(_) => ErrorKind::Io,
        };
        AgentError::new(kind, crate::console::chain(self))
    }
}

fn errno_kind(errno: Errno) -> ErrorKind {
    match errno {
        Errno::EPERM | Errno::EACCES => ErrorKind::PermissionDenied,
        Errno::EINVAL => ErrorKind::BadRequest,
        _ => ErrorKind::Io,
    }
}

/// The machine-wide actions a request can take.
pub trait Machine: Send + Sync + std::fmt::Debug {
    /// Sets the kernel hostname and persists it; `hostname` is already validated.
    fn set_hostname(&self, hostname: &str) -> Result<(), SystemError>;
    /// Flushes file systems and powers the guest off. Returns only on failure.
    fn power_off(&self) -> Result<(), SystemError>;
    /// Sets the hardware address of the network interface `iface`.
    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> Result<(), SystemError>;
    /// The hardware address of the network interface `iface`.
    fn mac(&self, iface: &str) -> Result<[u8; 6], SystemError>;
    /// Gives `iface` an IPv4 address, brings it up and, with a gateway,
    /// makes that the default route.
    fn set_ipv4(&self, iface: &str, config: &Ipv4Config) -> Result<(), SystemError>;
    /// Mixes `entropy` into the kernel RNG, credited in full, and reseeds
    /// the CRNG from it at once.
    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), SystemError>;
    /// Sets the wall clock (CLOCK_REALTIME) to `unix_ns`.
    fn set_clock(&self, unix_ns: u64) -> Result<(), SystemError>;
    /// The kernel hostname.
    fn hostname(&self) -> Result<String, SystemError>;
}

/// The real guest: sethostname(2), a hostname file, reboot(2), network
/// ioctls and random(4) ioctls.
#[derive(Debug)]
pub struct LinuxMachine {
    hostname_file: PathBuf,
    random: PathBuf,
}

impl LinuxMachine {
    /// A machine that keeps its hostname in /etc/hostname.
    pub fn new() -> Self {
        Self {
            hostname_file: PathBuf::from("/etc/hostname"),
            random: PathBuf::from("/dev/urandom"),
        }
    }

    fn random_ioctl(
        &self,
        file: &std::fs::File,
        op: &'static str,
        request: libc::Ioctl,
        arg: *const u32,
    ) -> Result<(), SystemError> {
        // SAFETY: RNDADDENTROPY reads a `struct rand_pool_info` (two ints and
        // `buf_size` bytes) from `arg`, which the caller keeps alive and
        // sized to match; RNDRESEEDCRNG ignores its argument.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
        Errno::result(rc)
            .map(drop)
            .map_err(|source| SystemError::Random {
                op,
                path: self.random.clone(),
                source,
            })
    }
}

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])` in Linux include/uapi/linux/random.h.
const RNDADDENTROPY: libc::Ioctl =
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)` (Linux 4.17+).
const RNDRESEEDCRNG: libc::Ioctl = nix::request_code_none!(b'R', 0x07);

/// A `struct rand_pool_info` carrying `entropy`, credited at 8 bits a byte,
/// in `u32`s so its ints are aligned.
fn rand_pool_info(entropy: &[u8]) -> Vec<u32> {
    let len = u32::try_from(entropy.len()).unwrap_or(u32::MAX);
    let bits = len.saturating_mul(8).min(i32::MAX.unsigned_abs());
    let mut info = vec![bits, len];
    info.extend(entropy.chunks(4).map(|chunk| {
        let mut word = [0u8; 4];
        for (slot, byte) in word.iter_mut().zip(chunk) {
            *slot = *byte;
        }
        u32::from_ne_bytes(word)
    }));
    info
}

impl Default for LinuxMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine for LinuxMachine {
    fn set_hostname(&self, hostname: &str) -> Result<(), SystemError> {
        nix::unistd::sethostname(hostname).map_err(SystemError::SetHostname)?;
        std::fs::write(&self.hostname_file, format!("{hostname}\n")).map_err(|source| {
            SystemError::WriteHostnameFile {
                path: self.hostname_file.clone(),
                source,
            }
        })
    }

    fn power_off(&self) -> Result<(), SystemError> {
        nix::unistd::sync();
        // Under systemd (the agent is then its unit, not PID 1), ask it for
        // an orderly poweroff: SIGRTMIN+4 is its poweroff.target. sd_booted(3)
        // tells systemd by this directory.
        if std::process::id() != 1 && Path::new("/run/systemd/system").is_dir() {
            let poweroff = libc::SIGRTMIN() + 4;
            // SAFETY: kill(2) with a valid signal number has no memory effects.
            if unsafe { libc::kill(1, poweroff) } == 0 {
                return Ok(());
            }
        }
        // reboot(2) only needs CAP_SYS_BOOT in the initial pid namespace, so
        // this works from the agent, which is not PID 1.
        match nix::sys::reboot::reboot(RebootMode::RB_POWER_OFF) {
            Err(errno) => Err(SystemError::PowerOff(errno)),
        }
    }

    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> Result<(), SystemError> {
        Ok(crate::net::set_hw_addr(iface, mac)?)
    }

    fn mac(&self, iface: &str) -> Result<[u8; 6], SystemError> {
        Ok(crate::net::hw_addr(iface)?)
    }

    fn set_ipv4(&self, iface: &str, config: &Ipv4Config) -> Result<(), SystemError> {
        Ok(crate::net::set_ipv4(iface, config)?)
    }

    fn set_clock(&self, unix_ns: u64) -> Result<(), SystemError> {
        let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(unix_ns));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(SystemError::SetClock)
    }

    fn hostname(&self) -> Result<String, SystemError> {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(SystemError::GetHostname)
    }

    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), SystemError> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.random)
            .map_err(|source| SystemError::OpenRandom {
                path: self.random.clone(),
                source,
            })?;
        let info = rand_pool_info(entropy);
        self.random_ioctl(&file, "RNDADDENTROPY", RNDADDENTROPY, info.as_ptr())?;
        // Every child starts from the template's CRNG state. Crediting
        // entropy alone reseeds only on the kernel's schedule (Linux 5.18+
        // reseeds a ready CRNG at most once a minute), so force it now.
        match self.random_ioctl(&file, "RNDRESEEDCRNG", RNDRESEEDCRNG, std::ptr::null()) {
            // ENODATA: the CRNG is not initialized yet; it seeds itself from
            // the pool, which now holds the entropy, once it is.
            Err(SystemError::Random {
                source: Errno::ENODATA,
                ..
            }) => Ok(()),
            other => other,
        }
    }
}

/// Checks a hostname with the rule the host checks too (`brood_proto::hostname`).
pub fn validate_hostname(name: &str) -> Result<(), SystemError> {
    if brood_proto::hostname::is_valid(name) {
        Ok(())
    } else {
        Err(SystemError::InvalidHostname {
            name: crate::console::cut(name, 2 * MAX_HOSTNAME).to_owned(),
        })
    }
}

/// Most NICs a VM has (the virtio slots of a microvm).
const MAX_NICS: u32 = 32;

/// Checks a `SetIpv4` request before anything is changed.
pub fn validate_ipv4(nic: u32, config: &Ipv4Config) -> Result<(), SystemError> {
    if nic >= MAX_NICS {
        return Err(SystemError::InvalidIpv4 {
            nic,
            why: "a VM has at most 32 NICs",
        });
    }
    if config.prefix > 32 {
        return Err(SystemError::InvalidIpv4 {
            nic,
            why: "the prefix is over 32",
        });
    }
    Ok(())
}

/// Time since boot, including time suspended, in milliseconds.
pub fn uptime_ms() -> u64 {
    match nix::time::clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let millis = u64::try_from(ts.tv_nsec() / 1_000_000).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(millis)
        }
        Err(_) => 0,
    }
}

/// Collects what `Info` reports. Facts that cannot be read are left empty or zero.
pub fn info() -> AgentInfo {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpus = nix::unistd::sysconf(SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    AgentInfo {
        agent_version: VERSION.to_owned(),
        proto_version: PROTOCOL_VERSION,
        hostname,
        kernel_release,
        uptime_ms: uptime_ms(),
        cpus,
        mem_total_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0),
        mem_available_kib: meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0),
    }
}

/// The value of `key` in /proc/meminfo text (`MemTotal:   123456 kB`), in KiB.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != key {
            return None;
        }
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            None | Some("kB") => Some(value),
            Some(_) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["a", "guest-1", "x.example.org", &"a".repeat(64), "9"] {
            assert!(validate_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a b", "a_b", "é", &"a".repeat(65), "a\n"] {
            let err = validate_hostname(bad).unwrap_err();
            assert_eq!(err.agent_error().kind, ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn rand_pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info.len(), 4);
        assert_eq!((info[0], info[1]), (40, 5));
        assert_eq!(info[2].to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(info[3].to_ne_bytes(), [5, 0, 0, 0]);
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn meminfo_is_parsed_defensively() {
        let text = "MemTotal:        2035684 kB\nMemFree: 1 kB\nMemAvailable:    1700000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(2_035_684));
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(1_700_000));
        assert_eq!(meminfo_kib(text, "Missing"), None);
        assert_eq!(meminfo_kib("MemTotal: lots kB", "MemTotal"), None);
        assert_eq!(meminfo_kib("MemTotal: 5 MB", "MemTotal"), None);
        assert_eq!(meminfo_kib("MemTotal:", "MemTotal"), None);
        assert_eq!(meminfo_kib("garbage\n\0\u{fffd}", "MemTotal"), None);
        assert_eq!(
            meminfo_kib("MemTotal: 99999999999999999999999 kB", "MemTotal"),
            None
        );
    }

    #[test]
    fn info_reads_this_host() {
        let info = info();
        assert!(info.cpus >= 1);
        assert!(info.mem_total_kib > 0);
        assert!(!info.kernel_release.is_empty());
        assert!(uptime_ms() > 0);
    }
}
