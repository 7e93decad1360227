//! Guest-wide state: hostname, power, uptime and the facts `Info` reports.
//!
//! The two actions that change the whole machine (setting the hostname and
//! powering off) go through the [`Machine`] trait so tests on the host can
//! swap them for a recording double; everything read-only is a plain
//! function. Init-time hostname setup reuses [`validate_hostname`].

use std::io;
use std::path::PathBuf;

use brood_proto::{AgentError, AgentInfo, ErrorKind, PROTOCOL_VERSION};
use nix::errno::Errno;
use nix::sys::reboot::RebootMode;
use nix::time::ClockId;
use nix::unistd::SysconfVar;

use crate::VERSION;

/// Longest hostname the agent accepts.
pub const MAX_HOSTNAME: usize = 64;

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
}

impl SystemError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        let kind = match self {
            SystemError::InvalidHostname { .. } => ErrorKind::BadRequest,
            SystemError::SetHostname(errno) | SystemError::PowerOff(errno) => errno_kind(*errno),
            SystemError::WriteHostnameFile { source, .. } => crate::serve::io_kind(source),
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
}

/// The real guest: sethostname(2), a hostname file, reboot(2).
#[derive(Debug)]
pub struct LinuxMachine {
    hostname_file: PathBuf,
}

impl LinuxMachine {
    /// A machine that keeps its hostname in /etc/hostname.
    pub fn new() -> Self {
        Self {
            hostname_file: PathBuf::from("/etc/hostname"),
        }
    }
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
        // reboot(2) only needs CAP_SYS_BOOT in the initial pid namespace, so
        // this works from the agent, which is not PID 1.
        match nix::sys::reboot::reboot(RebootMode::RB_POWER_OFF) {
            Err(errno) => Err(SystemError::PowerOff(errno)),
        }
    }
}

/// Checks a hostname: 1-64 characters of `[A-Za-z0-9-.]`, not starting with `-`.
pub fn validate_hostname(name: &str) -> Result<(), SystemError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOSTNAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(SystemError::InvalidHostname {
            name: crate::console::cut(name, 2 * MAX_HOSTNAME).to_owned(),
        })
    }
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
