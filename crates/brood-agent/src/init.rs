//! PID 1 in the guest initramfs: mount the API file systems, load the
//! image's modules, set the hostname, bring up `lo`, then fork the agent
//! proper ([`crate::port::run`]) and stay behind as the reaper.
//!
//! PID 1 never starts a thread, so forking is safe at any time; it loops on
//! `waitpid(-1)` collecting every orphan the kernel hands it and respawns the
//! agent a second after it dies. The boot path spawns no process and never
//! sleeps: its time is measured. Failures are reported on the console and
//! boot goes on, since a half-set-up guest with a working agent is easier
//! to diagnose than a kernel panic.
//!
//! The image layout it reads (`/etc/brood/modules`, `/etc/hostname`) is
//! written by brood-image. An initramfs that names a root disk
//! (`/etc/brood/root`) is left for it once the modules are loaded
//! ([`crate::root`]); the agent in the root disk then runs init again.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::MsFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::system::{SystemError, validate_hostname};

/// Absolute `.ko` paths, one a line, dependencies first.
pub const MODULES_LIST: &str = "/etc/brood/modules";
/// Modules loaded only before booting a root the command line names (a
/// disk the VM was given: FAT for its cloud-init seed), same format.
pub const DISK_MODULES_LIST: &str = "/etc/brood/modules.disk";
/// The hostname set at boot.
pub const HOSTNAME_FILE: &str = "/etc/hostname";
/// `PATH` for the agent and everything it runs.
pub const PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";
/// Delay before a dead agent is started again.
pub const RESPAWN_DELAY: Duration = Duration::from_secs(1);
/// finit_module(2) flag for a compressed module file (Linux 6.4+).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Errors of the boot steps.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// mount(2) failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// What mount reported.
        #[source]
        source: Errno,
    },
    /// The module list could not be read.
    #[error("read {path}")]
    ReadList {
        /// The list.
        path: PathBuf,
        /// What the read reported.
        #[source]
        source: io::Error,
    },
    /// A module file could not be opened.
    #[error("open module {path}")]
    OpenModule {
        /// The module file.
        path: PathBuf,
        /// What open reported.
        #[source]
        source: io::Error,
    },
    /// finit_module(2) refused a module.
    #[error("load module {path}")]
    LoadModule {
        /// The module file.
        path: PathBuf,
        /// What finit_module reported.
        #[source]
        source: Errno,
    },
    /// The hostname file could not be read.
    #[error("read {path}")]
    ReadHostname {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        #[source]
        source: io::Error,
    },
    /// The hostname could not be set.
    #[error("set the hostname")]
    Hostname(#[source] SystemError),
    /// Bringing up the loopback interface failed.
    #[error("bring up lo: {step}")]
    Loopback {
        /// The step that failed.
        step: &'static str,
        /// What it reported.
        #[source]
        source: Errno,
    },
}

struct MountSpec {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In order: /dev/pts needs /dev.
const MOUNTS: [MountSpec; 6] = [
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
];

/// Runs init: the boot steps, then the reaper loop. Never returns.
pub fn run() -> ! {
    setup();
    supervise()
}

fn setup() {
    let mount_errors: Vec<InitError> = MOUNTS.iter().filter_map(|m| mount(m).err()).collect();
    // Only now can the console be opened if the kernel could not give us one.
    ensure_std_fds();
    for err in &mount_errors {
        log!("{}", crate::console::chain(err));
    }
    let modules_start = crate::system::uptime_ms();
    for err in load_modules(Path::new(MODULES_LIST)) {
        log!("{}", crate::console::chain(&err));
    }
    let modules_end = crate::system::uptime_ms();
    switch_root();
    if let Err(err) = hostname_from_file(Path::new(HOSTNAME_FILE)) {
        log!("{}", crate::console::chain(&err));
    }
    if let Err(err) = loopback_up() {
        log!("{}", crate::console::chain(&err));
    }
    // SAFETY: PID 1 is single-threaded (it never starts a thread), so nothing
    // can read the environment concurrently.
    unsafe { std::env::set_var("PATH", PATH) };
    log!(
        "boot steps done at {} ms of uptime (modules {} ms)",
        crate::system::uptime_ms(),
        modules_end.saturating_sub(modules_start)
    );
}

/// Hands over to the image's root disk when the initramfs names one
/// ([`crate::root`]); returns only when there is none or the switch failed,
/// and then boot goes on in the initramfs so the agent can still report.
fn switch_root() {
    if !crate::root::in_initramfs() {
        return;
    }
    let args = match crate::root::BootArgs::read() {
        Ok(args) => args,
        Err(reason) => {
            log!("{reason}; staying in the initramfs");
            return;
        }
    };
    let spec = match &args.root {
        Some(device) => {
            for err in load_modules(Path::new(DISK_MODULES_LIST)) {
                log!("{}", crate::console::chain(&err));
            }
            crate::root::RootSpec {
                device: device.clone(),
                fstype: "ext4".to_string(),
            }
        }
        None => match crate::root::read_config(Path::new(crate::root::ROOT_CONFIG)) {
            Ok(None) => return,
            Ok(Some(spec)) => spec,
            Err(err) => {
                log!("{}", crate::console::chain(&err));
                return;
            }
        },
    };
    log!(
        "switching to root disk {} at {} ms of uptime",
        spec.device.display(),
        crate::system::uptime_ms()
    );
    let Err(err) = crate::root::switch(&spec, &args);
    log!("{}; staying in the initramfs", crate::console::chain(&err));
}

fn mount(spec: &MountSpec) -> Result<(), InitError> {
    let _ = std::fs::create_dir_all(spec.target);
    if is_mount_point(Path::new(spec.target)) {
        return Ok(());
    }
    let data = (!spec.data.is_empty()).then_some(spec.data);
    match nix::mount::mount(
        Some(spec.fstype),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        data,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype: spec.fstype,
            target: spec.target,
            source,
        }),
    }
}

/// Whether something is mounted at `path` (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return true;
    };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(dir), Ok(up)) => dir.dev() != up.dev(),
        _ => false,
    }
}

/// Points fds 0-2 at /dev/console when the kernel could not open it for us
/// (an initramfs without /dev/console), so later files never land on them.
fn ensure_std_fds() {
    // SAFETY: F_GETFD only queries the descriptor table.
    let closed = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1;
    if !(0..3).any(closed) {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    let fd = console.as_raw_fd();
    for target in 0..3 {
        if target != fd && closed(target) {
            // SAFETY: dup2 onto a descriptor we just found unused; `console`
            // stays open until the end of this function.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd < 3 {
        // The console itself landed on a standard descriptor: keep it open.
        std::mem::forget(console);
    }
}

/// Loads every module in the list at `list`; returns what failed.
fn load_modules(list: &Path) -> Vec<InitError> {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(source) => {
            return vec![InitError::ReadList {
                path: list.to_owned(),
                source,
            }];
        }
    };
    module_paths(&text)
        .filter_map(|path| load_module(path).err())
        .collect()
}

/// The module paths of a list: one a line; blank lines and `#` comments skipped.
fn module_paths(text: &str) -> impl Iterator<Item = &Path> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(Path::new)
}

fn load_module(path: &Path) -> Result<(), InitError> {
    let file = File::open(path).map_err(|source| InitError::OpenModule {
        path: path.to_owned(),
        source,
    })?;
    let compressed = path
        .extension()
        .is_some_and(|ext| ext == "xz" || ext == "zst" || ext == "gz");
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    let params: &CStr = c"";
    match finit_module(&file, params, flags) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(InitError::LoadModule {
            path: path.to_owned(),
            source,
        }),
    }
}

fn hostname_from_file(path: &Path) -> Result<(), InitError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(InitError::ReadHostname {
                path: path.to_owned(),
                source,
            });
        }
    };
    let name = text.trim();
    if name.is_empty() {
        return Ok(());
    }
    validate_hostname(name).map_err(InitError::Hostname)?;
    nix::unistd::sethostname(name)
        .map_err(|errno| InitError::Hostname(SystemError::SetHostname(errno)))
}

/// Sets IFF_UP on `lo` with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls.
fn loopback_up() -> Result<(), InitError> {
    let err = |step| move |source| InitError::Loopback { step, source };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = libc::c_char::from_ne_bytes([*byte]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq,
    // which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc).map_err(err("SIOCGIFFLAGS"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of the ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc).map(drop).map_err(err("SIOCSIFFLAGS"))
}

/// Reaps every child forever, respawning the agent when it dies.
fn supervise() -> ! {
    let mut agent = spawn_agent();
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(status) => {
                if agent.is_some() && status.pid() == agent {
                    log!("{}; restarting it in 1 s", describe(&status));
                    std::thread::sleep(RESPAWN_DELAY);
                    agent = spawn_agent();
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => {
                // ECHILD: not even the agent exists (its fork failed).
                if errno != Errno::ECHILD {
                    log!("waitpid: {errno}");
                }
                std::thread::sleep(RESPAWN_DELAY);
                if agent.is_none() || errno == Errno::ECHILD {
                    agent = spawn_agent();
                }
            }
        }
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(pid, code) => format!("agent (pid {pid}) exited with status {code}"),
        WaitStatus::Signaled(pid, signal, _) => format!("agent (pid {pid}) was killed by {signal}"),
        other => format!("agent ended: {other:?}"),
    }
}

/// Forks the agent proper; `None` if fork failed.
fn spawn_agent() -> Option<Pid> {
    // SAFETY: PID 1 never starts a thread, so the child is a complete copy of
    // a single-threaded process and may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = match crate::port::run() {
                Ok(()) => 0,
                Err(err) => {
                    log!("{}", crate::console::chain(&err));
                    1
                }
            };
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => Some(child),
        Err(errno) => {
            log!("fork the agent: {errno}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_list_parsing() {
        let text = "# deps first\n/lib/a.ko\n\n  /lib/b.ko  \n#/lib/c.ko\n";
        let paths: Vec<_> = module_paths(text).collect();
        assert_eq!(paths, [Path::new("/lib/a.ko"), Path::new("/lib/b.ko")]);
    }

    #[test]
    fn missing_module_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules");
        std::fs::write(&list, "/nonexistent/x.ko\n").unwrap();
        let errs = load_modules(&list);
        assert_eq!(errs.len(), 1);
        assert!(
            matches!(errs[0], InitError::OpenModule { .. }),
            "{:?}",
            errs[0]
        );
        assert!(load_modules(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn mount_points() {
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(&dir.path().join("missing")));
    }

    #[test]
    fn hostname_file_validation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hostname");
        std::fs::write(&file, "bad name\n").unwrap();
        assert!(matches!(
            hostname_from_file(&file),
            Err(InitError::Hostname(SystemError::InvalidHostname { .. }))
        ));
        std::fs::write(&file, "\n").unwrap();
        assert!(hostname_from_file(&file).is_ok());
        assert!(hostname_from_file(&dir.path().join("absent")).is_ok());
    }
}
