//! Leaving the initramfs for an image's root disk: what PID 1 does when the
//! initramfs carries [`ROOT_CONFIG`] (written by brood-image for images with
//! a Debian root file system; the default busybox image has none).
//!
//! The steps are those of busybox `switch_root` and util-linux
//! `switch_root(8)`: wait for the device, mount it on [`NEW_ROOT`], move the
//! API file systems into it, delete the initramfs's files (they are in RAM
//! and would otherwise stay there for the VM's life, and in every forked
//! child's memory), move the new root onto `/`, `chroot` into it and `exec`
//! its `/sbin/brood-agent`, which then runs init again as PID 1 in the real
//! root. Nothing here forks or starts a thread.
//!
//! The file's format, one `key=value` a line:
//!
//! ```text
//! device=/dev/vda
//! fstype=ext4
//! ```
//!
//! broodd can also name the root on the kernel command line ([`BootArgs`]),
//! for a VM booted from a disk image the user brought (`brood vm create
//! --disk-image`) or a Debian image run under systemd (`--init systemd`):
//! `brood.root=auto` finds the disk's root file system (its first ext4
//! partition or whole disk that holds the init), `brood.init=/sbin/init`
//! executes the image's own init instead of its agent, and
//! `brood.agent=unit` (the default with `brood.init`) copies this agent
//! into the new root's `/run` with a systemd unit that starts it, so the
//! guest's init runs it as a service; `brood.agent=none` adds nothing.

use std::convert::Infallible;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// The initramfs file that names the root disk.
pub const ROOT_CONFIG: &str = "/etc/brood/root";
/// Where the root disk is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/newroot";
/// The agent in the new root, executed as PID 1.
pub const ROOT_AGENT: &str = "/sbin/brood-agent";
/// How long to wait for the root device node to appear.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// The most bytes of [`ROOT_CONFIG`] read.
const MAX_CONFIG_BYTES: usize = 4096;
/// The file system types a root named `auto` may have (ext4 is built into
/// Debian's cloud kernel; the guest has no other modules for a root).
const AUTO_FSTYPES: [&str; 1] = ["ext4"];
/// The most partitions of the first disk tried for an `auto` root.
const MAX_PARTITIONS: u32 = 16;
/// Where the agent copy and its unit go in the new root (on the `/run`
/// tmpfs the initramfs hands over, which systemd keeps).
pub const UNIT_AGENT: &str = "/run/brood/brood-agent";
/// The runtime unit that starts [`UNIT_AGENT`].
pub const UNIT_FILE: &str = "/run/systemd/system/brood-agent.service";
/// The link that makes `sysinit.target` want it.
pub const UNIT_WANTS: &str = "/run/systemd/system/sysinit.target.wants/brood-agent.service";
/// Most bytes of `/proc/cmdline` read.
const MAX_CMDLINE_BYTES: usize = 4096;
/// File systems moved into the new root (`/dev` carries `/dev/pts` along).
const MOVED: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
/// statfs(2) magic numbers of an initramfs root (linux/magic.h).
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Errors of switching to the root disk.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The configuration file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        #[source]
        source: io::Error,
    },
    /// The configuration file is malformed.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The device did not appear in time.
    #[error(
        "root device {device} did not appear within {secs} s (is the image's root disk the VM's first disk?)"
    )]
    NoDevice {
        /// The device node.
        device: PathBuf,
        /// How long we waited.
        secs: u64,
    },
    /// A mount step failed.
    #[error("{step} {path}")]
    Mount {
        /// What was being done.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What the kernel reported.
        #[source]
        source: Errno,
    },
    /// The root disk has no agent to hand over to.
    #[error("the root disk has no {ROOT_AGENT}; rebuild the image")]
    NoAgent,
    /// The root disk has no init named by `brood.init`.
    #[error(
        "the root disk has no {init}: the image is not a Linux root file system with that init"
    )]
    NoInit {
        /// The init looked for.
        init: PathBuf,
    },
    /// No partition of an `auto` disk is the root.
    #[error("no root file system holding {init} on /dev/vda: {tried}")]
    NoRoot {
        /// The init looked for.
        init: PathBuf,
        /// What was found instead.
        tried: String,
    },
    /// The agent's unit could not be written.
    #[error("add the agent's systemd unit to /run")]
    Unit {
        /// What the write reported.
        #[source]
        source: io::Error,
    },
    /// execv of the new root's init failed.
    #[error("exec {init} in the new root")]
    Exec {
        /// The init.
        init: PathBuf,
        /// What execv reported.
        #[source]
        source: Errno,
    },
}

/// The root disk an initramfs names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// Its device node, under `/dev/`; `auto` to search the first disk.
    pub device: PathBuf,
    /// Its file system type (`ext4`).
    pub fstype: String,
}

/// How the agent goes along into the new root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// The root's own `/sbin/brood-agent` runs as PID 1 (brood's images).
    Init,
    /// The root's init runs this agent as a systemd unit.
    Unit,
    /// No agent: the guest has only what its image brings.
    None,
}

/// What the kernel command line asks of the switch (`brood.*` arguments,
/// written by broodd; anything else is the kernel's or the user's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// `brood.root=auto|/dev/NAME`: the root, overriding [`ROOT_CONFIG`].
    pub root: Option<PathBuf>,
    /// `brood.init=PATH`: the root's init to execute instead of its agent.
    pub init: Option<PathBuf>,
    /// `brood.agent=unit|none`.
    pub agent: AgentMode,
}

impl BootArgs {
    /// Reads `/proc/cmdline`; none of brood's arguments when it cannot.
    pub fn read() -> Result<Self, String> {
        let data = std::fs::read("/proc/cmdline").unwrap_or_default();
        Self::parse(&data)
    }

    /// Parses a command line (bounded; malformed brood arguments refused).
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        if data.len() > MAX_CMDLINE_BYTES {
            return Err(format!(
                "the command line is longer than {MAX_CMDLINE_BYTES} bytes"
            ));
        }
        let text = std::str::from_utf8(data).map_err(|_| "the command line is not UTF-8")?;
        let (mut root, mut init, mut agent) = (None, None, None);
        for word in text.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "brood.root" if value == "auto" => root = Some(PathBuf::from("auto")),
                "brood.root" => {
                    if !is_dev_node(value) {
                        return Err(format!(
                            "brood.root={value:?} is not auto or a /dev/NAME node"
                        ));
                    }
                    root = Some(PathBuf::from(value));
                }
                "brood.init" => {
                    let ok = value.starts_with('/')
                        && value.len() <= 256
                        && !value.split('/').any(|c| c == "..");
                    if !ok {
                        return Err(format!("brood.init={value:?} is not an absolute path"));
                    }
                    init = Some(PathBuf::from(value));
                }
                "brood.agent" => {
                    agent = Some(match value {
                        "unit" => AgentMode::Unit,
                        "none" => AgentMode::None,
                        _ => return Err(format!("brood.agent={value:?}: use unit or none")),
                    });
                }
                _ => {}
            }
        }
        let agent = match (&init, agent) {
            (None, Some(_)) => return Err("brood.agent needs brood.init".into()),
            (None, None) => AgentMode::Init,
            (Some(_), mode) => mode.unwrap_or(AgentMode::Unit),
        };
        Ok(BootArgs { root, init, agent })
    }

    /// Whether the command line names the root itself.
    pub fn names_root(&self) -> bool {
        self.root.is_some()
    }
}

fn is_dev_node(device: &str) -> bool {
    device
        .strip_prefix("/dev/")
        .is_some_and(|r| !r.is_empty() && !r.contains('/') && r != "." && r != "..")
}

/// Reads [`ROOT_CONFIG`] at `path`: `None` when there is none.
pub fn read_config(path: &Path) -> Result<Option<RootSpec>, RootError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RootError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&data).map(Some).map_err(|reason| RootError::Config {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the configuration text (bounded; unknown keys are refused).
pub fn parse(data: &[u8]) -> Result<RootSpec, String> {
    if data.len() > MAX_CONFIG_BYTES {
        return Err(format!("longer than {MAX_CONFIG_BYTES} bytes"));
    }
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_string())?;
    let (mut device, mut fstype) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not key=value"))?;
        match key.trim() {
            "device" => device = Some(value.trim().to_string()),
            "fstype" => fstype = Some(value.trim().to_string()),
            other => return Err(format!("unknown key {:?}", crate::console::cut(other, 32))),
        }
    }
    let device = device.ok_or("no device= line")?;
    if !is_dev_node(&device) {
        return Err(format!("device {device:?} is not a /dev/NAME node"));
    }
    let fstype = fstype.ok_or("no fstype= line")?;
    if fstype.is_empty() || fstype.len() > 32 || !fstype.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!("fstype {fstype:?} is not a file system name"));
    }
    Ok(RootSpec {
        device: PathBuf::from(device),
        fstype,
    })
}

/// Whether `/` is an initramfs (ramfs or tmpfs), the only place a switch
/// makes sense: on a root disk a stray config must not loop.
pub fn in_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let magic = s.filesystem_type().0;
            magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Switches to the root disk and executes its agent, or the init `args`
/// name; returns only on failure, with the initramfs still usable (nothing
/// is deleted before the new root is mounted and checked).
pub fn switch(spec: &RootSpec, args: &BootArgs) -> Result<Infallible, RootError> {
    let new_root = Path::new(NEW_ROOT);
    let _ = std::fs::create_dir_all(new_root);
    let init = args
        .init
        .clone()
        .unwrap_or_else(|| PathBuf::from(ROOT_AGENT));
    if spec.device == Path::new("auto") {
        mount_auto(new_root, &init)?;
    } else {
        wait_for(&spec.device)?;
        nix::mount::mount(
            Some(spec.device.as_path()),
            new_root,
            Some(spec.fstype.as_str()),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| RootError::Mount {
            step: "mount the root disk on",
            path: new_root.to_owned(),
            source,
        })?;
        if !has_init(new_root, &init) {
            let _ = nix::mount::umount(new_root);
            return Err(match args.init {
                None => RootError::NoAgent,
                Some(_) => RootError::NoInit { init },
            });
        }
    }
    if args.agent == AgentMode::Unit
        && let Err(source) = add_agent_unit()
    {
        let _ = nix::mount::umount(new_root);
        return Err(RootError::Unit { source });
    }
    hand_over(new_root, &init)
}

/// Whether the new root holds `init` (a file, or a link the new root
/// resolves: `/sbin/init` is a link to systemd, absolute or relative).
fn has_init(new_root: &Path, init: &Path) -> bool {
    let path = new_root.join(init.strip_prefix("/").unwrap_or(init));
    std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() || m.file_type().is_symlink())
}

/// Mounts the root of an `auto` disk: the first partition of `/dev/vda`
/// (in number order), or the whole disk, whose ext4 file system holds `init`.
fn mount_auto(new_root: &Path, init: &Path) -> Result<(), RootError> {
    let disk = Path::new("/dev/vda");
    wait_for(disk)?;
    let mut candidates: Vec<PathBuf> = (1..=MAX_PARTITIONS)
        .filter(|n| Path::new(&format!("/sys/block/vda/vda{n}")).exists())
        .map(|n| PathBuf::from(format!("/dev/vda{n}")))
        .collect();
    candidates.push(disk.to_owned());
    let mut tried = Vec::new();
    for device in &candidates {
        // The kernel lists a partition in sysfs before devtmpfs has its node.
        if wait_for(device).is_err() {
            continue;
        }
        for fstype in AUTO_FSTYPES {
            if nix::mount::mount(
                Some(device.as_path()),
                new_root,
                Some(fstype),
                MsFlags::empty(),
                None::<&str>,
            )
            .is_err()
            {
                continue;
            }
            if has_init(new_root, init) {
                log!("found the root file system on {}", device.display());
                return Ok(());
            }
            let _ = nix::mount::umount(new_root);
            tried.push(device.display().to_string());
        }
    }
    Err(RootError::NoRoot {
        init: init.to_owned(),
        tried: if tried.is_empty() {
            "none of /dev/vda's partitions or the disk itself holds an ext4 file system".into()
        } else {
            format!("ext4 on {} but without it", tried.join(", "))
        },
    })
}

/// Puts a copy of this agent and a systemd unit that runs it into `/run`,
/// which moves into the new root and which systemd keeps as it is.
fn add_agent_unit() -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let agent = Path::new(UNIT_AGENT);
    if let Some(dir) = agent.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy("/proc/self/exe", agent)?;
    std::fs::set_permissions(agent, std::fs::Permissions::from_mode(0o755))?;
    let wants = Path::new(UNIT_WANTS);
    if let Some(dir) = wants.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(UNIT_FILE, unit_text())?;
    match std::os::unix::fs::symlink("../brood-agent.service", wants) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The unit: early (no default dependencies, once local file systems are
/// mounted), restarted like init restarts it, stopped at shutdown.
pub fn unit_text() -> String {
    format!(
        "# Added at boot by brood's initramfs: the guest agent, the host's channel into this VM.\n\
         [Unit]\n\
         Description=brood guest agent\n\
         DefaultDependencies=no\n\
         After=local-fs.target systemd-remount-fs.service\n\
         Conflicts=shutdown.target\n\
         Before=shutdown.target\n\
         \n\
         [Service]\n\
         ExecStart={UNIT_AGENT} serve\n\
         Restart=always\n\
         RestartSec=1\n"
    )
}

/// Moves the API file systems into the mounted new root, frees the
/// initramfs, makes the new root `/` and executes `init` there.
fn hand_over(new_root: &Path, init: &Path) -> Result<Infallible, RootError> {
    let mount_err = |step, path: &Path| {
        let path = path.to_owned();
        move |source| RootError::Mount { step, path, source }
    };
    // /tmp of the initramfs is not needed in the new root, which mounts its own.
    let _ = nix::mount::umount2("/tmp", MntFlags::MNT_DETACH);
    for dir in MOVED {
        let target = new_root.join(dir.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        match nix::mount::mount(
            Some(dir),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
            // Not mounted in the initramfs: the new root's init mounts it.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(source) => {
                return Err(RootError::Mount {
                    step: "move",
                    path: PathBuf::from(dir),
                    source,
                });
            }
        }
    }
    free_initramfs(new_root);
    std::env::set_current_dir(new_root).map_err(|e| RootError::Mount {
        step: "chdir to",
        path: new_root.to_owned(),
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(mount_err("move the new root onto", Path::new("/")))?;
    nix::unistd::chroot(".").map_err(mount_err("chroot into", new_root))?;
    nix::unistd::chdir("/").map_err(mount_err("chdir to", Path::new("/")))?;
    let path = CString::new(init.as_os_str().as_encoded_bytes()).map_err(|_| RootError::NoAgent)?;
    let argv = if init == Path::new(ROOT_AGENT) {
        vec![path.clone(), c"init".to_owned()]
    } else {
        vec![path.clone()]
    };
    match nix::unistd::execv(&path, &argv) {
        Err(errno) => Err(RootError::Exec {
            init: init.to_owned(),
            source: errno,
        }),
        Ok(never) => match never {},
    }
}

/// Polls for the device node: virtio-blk probes while its module loads, but
/// devtmpfs may create the node a moment later.
fn wait_for(device: &Path) -> Result<(), RootError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    while !device.exists() {
        if start.elapsed() >= DEVICE_WAIT {
            return Err(RootError::NoDevice {
                device: device.to_owned(),
                secs: DEVICE_WAIT.as_secs(),
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    Ok(())
}

/// Deletes the initramfs's files, staying on its file system and out of
/// `keep` (the mounted new root). Failures are ignored: what stays only
/// costs memory.
fn free_initramfs(keep: &Path) {
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_tree(Path::new("/"), root.dev(), keep);
}

fn remove_tree(dir: &Path, dev: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree(&path, dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_refuses_nonsense() {
        let spec = parse(b"# root\ndevice=/dev/vda\nfstype=ext4\n").unwrap();
        assert_eq!(spec.device, Path::new("/dev/vda"));
        assert_eq!(spec.fstype, "ext4");
        for bad in [
            &b"fstype=ext4\n"[..],
            b"device=/dev/vda\n",
            b"device=/etc/passwd\nfstype=ext4\n",
            b"device=/dev/..\nfstype=ext4\n",
            b"device=/dev/vda\nfstype=ext4;rm\n",
            b"device=/dev/vda\nfstype=ext4\nmode=x\n",
            b"garbage\n",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&vec![b'#'; MAX_CONFIG_BYTES + 1]).is_err());
    }

    #[test]
    fn boot_args_name_root_init_and_agent() {
        let none = BootArgs::parse(b"console=ttyS0 root=/dev/sda quiet\n").unwrap();
        assert_eq!(
            none,
            BootArgs {
                root: None,
                init: None,
                agent: AgentMode::Init
            }
        );
        assert!(!none.names_root());
        let disk = BootArgs::parse(b"quiet brood.root=auto brood.init=/sbin/init").unwrap();
        assert_eq!(disk.root.as_deref(), Some(Path::new("auto")));
        assert_eq!(disk.init.as_deref(), Some(Path::new("/sbin/init")));
        assert_eq!(disk.agent, AgentMode::Unit);
        let bare = BootArgs::parse(b"brood.root=/dev/vda2 brood.init=/sbin/init brood.agent=none")
            .unwrap();
        assert_eq!(bare.root.as_deref(), Some(Path::new("/dev/vda2")));
        assert_eq!(bare.agent, AgentMode::None);
        for bad in [
            &b"brood.root=/etc/passwd"[..],
            b"brood.root=vda",
            b"brood.init=sbin/init",
            b"brood.init=/../../x",
            b"brood.init=/sbin/init brood.agent=maybe",
            b"brood.agent=none",
            b"\xff",
        ] {
            assert!(BootArgs::parse(bad).is_err(), "{bad:?}");
        }
        assert!(BootArgs::parse(&vec![b' '; MAX_CMDLINE_BYTES + 1]).is_err());
    }

    #[test]
    fn the_unit_runs_the_copied_agent_early() {
        let unit = unit_text();
        assert!(unit.contains("ExecStart=/run/brood/brood-agent serve\n"));
        assert!(unit.contains("DefaultDependencies=no\n"));
        assert!(UNIT_WANTS.starts_with("/run/systemd/system/"));
    }

    #[test]
    fn missing_config_means_no_switch() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_config(&dir.path().join("root")).unwrap(), None);
        std::fs::write(dir.path().join("root"), "device=/dev/vda\n").unwrap();
        assert!(matches!(
            read_config(&dir.path().join("root")),
            Err(RootError::Config { .. })
        ));
    }

    #[test]
    fn host_root_is_not_an_initramfs() {
        // The test host boots from a disk, never from an initramfs.
        assert!(!in_initramfs());
    }
}
