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
    /// execv of the new root's agent failed.
    #[error("exec {ROOT_AGENT} in the new root")]
    Exec(#[source] Errno),
}

/// The root disk an initramfs names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// Its device node, under `/dev/`.
    pub device: PathBuf,
    /// Its file system type (`ext4`).
    pub fstype: String,
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
    let node_ok = device
        .strip_prefix("/dev/")
        .is_some_and(|r| !r.is_empty() && !r.contains('/') && r != "." && r != "..");
    if !node_ok {
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

/// Switches to the root disk and executes its agent; returns only on failure,
/// with the initramfs still usable (nothing is deleted before the new root is
/// mounted and checked).
pub fn switch(spec: &RootSpec) -> Result<Infallible, RootError> {
    wait_for(&spec.device)?;
    let new_root = Path::new(NEW_ROOT);
    let _ = std::fs::create_dir_all(new_root);
    let mount_err = |step, path: &Path| {
        let path = path.to_owned();
        move |source| RootError::Mount { step, path, source }
    };
    nix::mount::mount(
        Some(spec.device.as_path()),
        new_root,
        Some(spec.fstype.as_str()),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(mount_err("mount the root disk on", new_root))?;
    let agent = new_root.join(ROOT_AGENT.trim_start_matches('/'));
    if !agent.is_file() {
        let _ = nix::mount::umount(new_root);
        return Err(RootError::NoAgent);
    }
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
    let path = CString::new(ROOT_AGENT.as_bytes()).map_err(|_| RootError::NoAgent)?;
    let argv = [path.clone(), c"init".to_owned()];
    match nix::unistd::execv(&path, &argv) {
        Err(errno) => Err(RootError::Exec(errno)),
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
