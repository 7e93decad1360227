//! An in-memory file tree and its serialisation as an uncompressed `newc`
//! cpio archive, the format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! The archive is reproducible: entries are sorted by path (so every
//! directory precedes its contents, which the kernel's unpacker needs), all
//! mtimes are 0, owners are root, and inode numbers count up from 1 in path
//! order. Paths are stored without a leading `/`. Hard links are not
//! supported; nothing in the image needs them.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::ImageError;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory with permission bits `mode`.
    Dir { mode: u32 },
    /// A regular file.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node.
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// A file tree keyed by relative path (`bin/sh`), kept sorted.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    entries: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds a directory and any missing parents. Adding an existing directory
    /// again is allowed (the first mode wins); anything else there is a conflict.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), ImageError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        match self.entries.get(&path) {
            None => {
                self.entries.insert(path, Node::Dir { mode });
                Ok(())
            }
            Some(Node::Dir { .. }) => Ok(()),
            Some(_) => Err(conflict(&path, "directory over a non-directory")),
        }
    }

    /// Adds a regular file, creating missing parent directories (mode 0755).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), ImageError> {
        self.insert(path, Node::File { mode, data })
    }

    /// Adds a symlink, creating missing parent directories.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        let target = target.to_string();
        self.insert(path, Node::Symlink { target })
    }

    /// Adds a character device node, creating missing parent directories.
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ImageError> {
        self.insert(path, Node::CharDev { mode, major, minor })
    }

    /// Whether `path` (or, for a nested path, one of its parents as a
    /// non-directory) is taken, so that adding an entry there would fail.
    pub fn is_taken(&self, path: &str) -> bool {
        let Ok(path) = normalise(path) else {
            return true;
        };
        self.entries.contains_key(&path)
            || ancestors(&path)
                .any(|p| !matches!(self.entries.get(p), None | Some(Node::Dir { .. })))
    }

    /// The entries in archive order.
    #[cfg(test)]
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries
            .iter()
            .map(|(path, node)| (path.as_str(), node))
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), ImageError> {
        let path = normalise(path)?;
        self.parents(&path)?;
        if self.entries.contains_key(&path) {
            return Err(conflict(&path, "two entries"));
        }
        self.entries.insert(path, node);
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<(), ImageError> {
        for parent in ancestors(path) {
            match self.entries.get(parent) {
                None => {
                    self.entries
                        .insert(parent.to_string(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(conflict(parent, "a non-directory used as a directory")),
            }
        }
        Ok(())
    }

    /// Writes the tree as a newc archive ending in `TRAILER!!!` and returns
    /// the number of bytes written.
    pub fn write_newc<W: Write>(&self, out: &mut W) -> Result<u64, ImageError> {
        let mut w = Counter {
            inner: out,
            written: 0,
        };
        let io_err = |source: io::Error| ImageError::Write {
            path: "initramfs (in memory)".into(),
            source,
        };
        for (index, (path, node)) in self.entries.iter().enumerate() {
            let ino =
                u32::try_from(index + 1).map_err(|_| conflict(path, "over 4 billion entries"))?;
            let (mode, nlink, rdev, data): (u32, u32, (u32, u32), &[u8]) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, 2, (0, 0), &[]),
                Node::File { mode, data } => (S_IFREG | mode, 1, (0, 0), data),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, (0, 0), target.as_bytes()),
                Node::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, (*major, *minor), &[]),
            };
            let size = u32::try_from(data.len()).map_err(|_| ImageError::EntryTooLarge {
                path: path.clone(),
                size: data.len(),
            })?;
            write_entry(&mut w, path, ino, mode, nlink, rdev, size, data).map_err(io_err)?;
        }
        write_entry(&mut w, TRAILER, 0, 0, 1, (0, 0), 0, &[]).map_err(io_err)?;
        Ok(w.written)
    }
}

/// Writes one newc header, name and data, each padded to 4 bytes.
#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    w: &mut Counter<W>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    size: u32,
    data: &[u8],
) -> io::Result<()> {
    // The name size counts the terminating NUL; names are far below 4 GiB
    // because they come from the tree's own paths.
    let namesize = u32::try_from(name.len() + 1).map_err(io::Error::other)?;
    // Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}\
         {rdev_major:08x}{rdev_minor:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.pad()?;
    w.write_all(data)?;
    w.pad()
}

/// A writer that counts bytes, to pad to 4-byte boundaries and report the size.
struct Counter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Counter<'_, W> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = self.written % 4;
        if rem == 0 {
            return Ok(());
        }
        let zeros = [0u8; 3];
        let len = usize::try_from(4 - rem).unwrap_or(0);
        self.write_all(zeros.get(..len).unwrap_or(&[]))
    }
}

/// Strips leading and trailing `/` and rejects empty, `.` and `..` components.
fn normalise(path: &str) -> Result<String, ImageError> {
    let trimmed = path.trim_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed != TRAILER
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(conflict(path, "not a plain path"))
    }
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(at, _)| &path[..at])
}

fn conflict(path: &str, reason: &str) -> ImageError {
    ImageError::LayoutConflict {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Tree {
        let mut t = Tree::default();
        t.file("sbin/brood-agent", 0o755, b"agent!".to_vec())
            .unwrap();
        t.symlink("init", "/sbin/brood-agent").unwrap();
        t.file("etc/hostname", 0o644, b"brood\n".to_vec()).unwrap();
        t.file("etc/machine-id", 0o644, Vec::new()).unwrap();
        t.dir("tmp", 0o1777).unwrap();
        t.char_dev("dev/console", 0o600, 5, 1).unwrap();
        t.file("a/b/c/deep", 0o600, vec![7; 5]).unwrap();
        t
    }

    fn archive(t: &Tree) -> Vec<u8> {
        let mut out = Vec::new();
        let n = t.write_newc(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    /// A parsed entry: (name, mode, ino, nlink, rdev, data).
    type Parsed = (String, u32, u32, u32, (u32, u32), Vec<u8>);

    /// An independent newc parser that also checks alignment and zero fields.
    fn parse(mut data: &[u8]) -> Vec<Parsed> {
        let total = data.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - data.len()) % 4, 0, "header not 4-aligned");
            let hdr = std::str::from_utf8(&data[..110]).unwrap();
            assert_eq!(&hdr[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&hdr[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (ino, mode, nlink, size, namesize) =
                (field(0), field(1), field(4), field(6), field(11));
            for zero in [2, 3, 5, 7, 8, 12] {
                assert_eq!(field(zero), 0, "field {zero} of {hdr}");
            }
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&data[110..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(data[name_end - 1], 0);
            let data_start = name_end.div_ceil(4) * 4;
            assert!(data[name_end..data_start].iter().all(|b| *b == 0));
            let data_end = data_start + size as usize;
            let body = data[data_start..data_end].to_vec();
            let next = data_end.div_ceil(4) * 4;
            assert!(data[data_end..next].iter().all(|b| *b == 0));
            data = &data[next..];
            if name == TRAILER {
                assert!(data.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, ino, nlink, (field(9), field(10)), body));
        }
    }

    #[test]
    fn archive_parses_back_sorted_with_parents_first() {
        let parsed = parse(&archive(&sample()));
        let names: Vec<&str> = parsed.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c",
                "a/b/c/deep",
                "dev",
                "dev/console",
                "etc",
                "etc/hostname",
                "etc/machine-id",
                "init",
                "sbin",
                "sbin/brood-agent",
                "tmp"
            ]
        );
        let inos: Vec<u32> = parsed.iter().map(|p| p.2).collect();
        assert_eq!(inos, (1..=13).collect::<Vec<_>>());
        let get = |n: &str| parsed.iter().find(|p| p.0 == n).unwrap();
        assert_eq!(get("init").1, S_IFLNK | 0o777);
        assert_eq!(get("init").5, b"/sbin/brood-agent");
        assert_eq!(get("sbin/brood-agent").1, S_IFREG | 0o755);
        assert_eq!(get("sbin/brood-agent").5, b"agent!");
        assert_eq!(get("tmp").1, S_IFDIR | 0o1777);
        assert_eq!(get("tmp").3, 2);
        assert_eq!(get("dev/console").1, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").4, (5, 1));
        assert_eq!(get("etc/machine-id").5, b"");
    }

    #[test]
    fn padding_is_right_for_every_name_and_data_length() {
        let mut t = Tree::default();
        for n in 1..=8 {
            t.file(&"x".repeat(n), 0o644, vec![b'd'; n]).unwrap();
        }
        let parsed = parse(&archive(&t));
        assert_eq!(parsed.len(), 8);
        for (name, .., body) in parsed {
            assert_eq!(body.len(), name.len());
        }
    }

    #[test]
    fn output_is_identical_for_the_same_tree_in_any_insertion_order() {
        let mut other = Tree::default();
        other.file("a/b/c/deep", 0o600, vec![7; 5]).unwrap();
        other.char_dev("dev/console", 0o600, 5, 1).unwrap();
        other.dir("tmp", 0o1777).unwrap();
        other.file("etc/machine-id", 0o644, Vec::new()).unwrap();
        other
            .file("etc/hostname", 0o644, b"brood\n".to_vec())
            .unwrap();
        other.symlink("/init", "/sbin/brood-agent").unwrap();
        other
            .file("/sbin/brood-agent", 0o755, b"agent!".to_vec())
            .unwrap();
        assert_eq!(archive(&sample()), archive(&other));
    }

    #[test]
    fn conflicts_and_bad_paths_are_errors() {
        let mut t = sample();
        assert!(t.file("init", 0o644, vec![]).is_err());
        assert!(t.file("init/x", 0o644, vec![]).is_err());
        assert!(t.dir("etc/hostname", 0o755).is_err());
        t.dir("etc", 0o700).unwrap();
        for bad in ["", "/", "a/../b", "./a", "a//b", TRAILER] {
            assert!(t.file(bad, 0o644, vec![]).is_err(), "{bad:?}");
        }
        assert!(t.is_taken("init"));
        assert!(t.is_taken("init/x"));
        assert!(t.is_taken("sbin/brood-agent"));
        assert!(!t.is_taken("sbin/ip"));
        assert!(t.is_taken("etc"));
        assert!(!t.is_taken("etc/new"));
    }

    #[test]
    fn gnu_cpio_reads_the_archive() {
        let bytes = archive(&sample());
        let mut child = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("GNU cpio is needed for this test: apt-get install -y cpio");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listed = String::from_utf8(out.stdout).unwrap();
        let ours: Vec<String> = sample().entries().map(|(p, _)| p.to_string()).collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ours);

        // Extract and check contents, modes and the symlink.
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-id", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        // dev/console cannot be created without privileges; leave it out.
        let mut t = sample();
        t.entries.remove("dev/console");
        child.stdin.take().unwrap().write_all(&archive(&t)).unwrap();
        assert!(child.wait().unwrap().success());
        use std::os::unix::fs::PermissionsExt;
        let agent = dir.path().join("sbin/brood-agent");
        assert_eq!(std::fs::read(&agent).unwrap(), b"agent!");
        assert_eq!(
            std::fs::metadata(&agent).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let link = std::fs::read_link(dir.path().join("init")).unwrap();
        assert_eq!(link, std::path::Path::new("/sbin/brood-agent"));
    }
}
