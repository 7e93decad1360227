//! Mounts a build left under its root file system. mmdebstrap's root mode
//! mounts /proc, /sys and device nodes inside the tree while it installs
//! packages and unmounts them at the end; when an unmount fails (a process
//! still holds a file there) the mount stays. `mkfs.ext4 -d` would then copy
//! the host's /proc into the root disk, and removing the build directory
//! would walk into the host's file systems. Both steps detach what is
//! mounted below the tree first.

use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// Where `/proc/self/mountinfo` says file systems are mounted strictly below
/// `dir`, deepest first (the order they must be detached in).
pub fn mounts_below(dir: &Path, mountinfo: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p != dir && p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches (lazily, so a busy one goes too) every mount below `dir`.
pub fn detach_below(dir: &Path) -> Result<(), ImageError> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ImageError::Read {
            path: PathBuf::from("/proc/self/mountinfo"),
            source,
        })?;
    for m in mounts_below(&dir, &info) {
        tracing::warn!(mount = %m.display(), "the build left a mount in its root file system; detaching it");
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            ImageError::Write {
                path: m.clone(),
                source: std::io::Error::from(e),
            }
        })?;
    }
    Ok(())
}

/// A build's scratch directory: mounts left below it are detached before
/// it is removed.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// Takes charge of `dir`.
    pub fn new(dir: tempfile::TempDir) -> Self {
        Self {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = detach_below(&self.path)
            && let Some(dir) = self.dir.take()
        {
            // Removing the tree now could reach into a host file system.
            tracing::warn!("keeping {}: {e}", self.path.display());
            let _ = dir.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
90 22 0:5 / /i/.build-deb-x/rootfs/proc rw - proc proc rw
91 90 0:6 / /i/.build-deb-x/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw
92 22 0:7 / /i/.build-deb-x/rootfs/dev/null rw - devtmpfs udev rw
93 22 0:8 / /i/.build-deb-x/rootfs\\040two/sys rw - sysfs sysfs rw
94 22 0:9 / /i/.build-deb-xy/rootfs/proc rw - proc proc rw
";

    #[test]
    fn finds_the_mounts_below_a_tree_deepest_first() {
        let got = mounts_below(Path::new("/i/.build-deb-x/rootfs"), INFO);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/i/.build-deb-x/rootfs/proc/sys/fs/binfmt_misc"),
                PathBuf::from("/i/.build-deb-x/rootfs/dev/null"),
                PathBuf::from("/i/.build-deb-x/rootfs/proc"),
            ]
        );
        // Not the tree itself, not a sibling whose name only starts alike.
        assert!(
            mounts_below(
                Path::new("/i/.build-deb-x"),
                "22 1 0:1 / /i/.build-deb-x rw - x x rw\n"
            )
            .is_empty()
        );
        assert_eq!(
            mounts_below(Path::new("/i/.build-deb-x/rootfs two"), INFO),
            vec![PathBuf::from("/i/.build-deb-x/rootfs two/sys")]
        );
    }

    #[test]
    fn hostile_lines_do_not_panic() {
        for line in [
            "",
            "1",
            "1 2 3 4 \\",
            "1 2 3 4 \\0",
            "1 2 3 4 /a\\777b",
            "1 2 3 4 /a\\",
        ] {
            let _ = mounts_below(Path::new("/a"), line);
        }
    }

    #[test]
    fn a_scratch_directory_detaches_a_left_mount_before_it_is_removed() {
        let images = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(tempfile::tempdir_in(images.path()).unwrap());
        let below = scratch.path().join("rootfs/proc");
        std::fs::create_dir_all(&below).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &below,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs (the tests run as root)");
        std::fs::write(below.join("held"), "x").unwrap();
        // A process holding a file there keeps a plain unmount busy.
        let held = std::fs::File::open(below.join("held")).unwrap();
        let path = scratch.path().to_path_buf();
        drop(scratch);
        drop(held);
        assert!(!path.exists(), "the scratch directory is removed");
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_below(images.path(), &info).is_empty(), "{info}");
    }
}
