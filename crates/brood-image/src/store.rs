//! Named images in an images directory (`DATA_DIR/images`): one
//! subdirectory per name, holding a complete image or nothing.
//!
//! ```text
//! <images>/<name>/            a complete image (manifest.json written last)
//! <images>/.build-<name>-*    a build in progress (removed when it ends)
//! <images>/.delete-<name>-*   an image being deleted
//! <images>/.<name>.lock       held while <name> is built or deleted
//! ```
//!
//! Builds happen in a `.build-` directory on the same file system and
//! appear under their name with one `rename(2)`, so a name never holds a
//! half-written image; a delete renames the image away before removing it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{ImageError, Manifest, read_manifest};

/// The name of the busybox image broodd and `brood run` boot by default.
pub const DEFAULT_IMAGE: &str = "default";
/// The longest image name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks an image name: 1-64 characters of `[a-z0-9_.-]`, starting with a
/// letter or digit (so it is a plain directory name, never hidden).
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let bad = |reason| ImageError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad("use 1-64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return Err(bad("use only a-z, 0-9, '_', '.' and '-'"));
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(bad("start with a letter or a digit"));
    }
    Ok(())
}

/// The directory of image `name` (not checked for existence).
pub fn image_dir(images: &Path, name: &str) -> Result<PathBuf, ImageError> {
    validate_name(name)?;
    Ok(images.join(name))
}

/// Reads the manifest of image `name`, with a clear error when there is none.
pub fn open_image(images: &Path, name: &str) -> Result<(PathBuf, Manifest), ImageError> {
    let dir = image_dir(images, name)?;
    match read_manifest(&dir) {
        Ok(m) => Ok((dir, m)),
        Err(ImageError::NoImage { .. }) => Err(ImageError::UnknownImage {
            name: name.to_string(),
            dir: images.to_path_buf(),
        }),
        Err(e) => Err(e),
    }
}

/// One entry of [`list_images`].
#[derive(Debug)]
pub struct ImageEntry {
    /// The image's name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, ImageError>,
}

/// The images in `images`, sorted by name; a directory without a readable
/// manifest is listed with its error. A missing `images` lists nothing.
pub fn list_images(images: &Path) -> Result<Vec<ImageEntry>, ImageError> {
    let entries = match fs::read_dir(images) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImageError::Read {
                path: images.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ImageError::Read {
            path: images.to_path_buf(),
            source,
        })?;
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        if validate_name(&name).is_err() || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        out.push(ImageEntry {
            manifest: read_manifest(&dir),
            name,
            dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes image `name`: renamed away first (so it disappears at once and
/// whole), then removed. The busybox default image is refused: broodd and
/// `brood run` need it.
pub fn delete_image(images: &Path, name: &str) -> Result<(), ImageError> {
    let dir = image_dir(images, name)?;
    if name == DEFAULT_IMAGE {
        return Err(ImageError::InvalidName {
            name: name.to_string(),
            reason: "the default image cannot be deleted (broodd and `brood run` boot it); rebuild it with `brood image build` instead",
        });
    }
    let _lock = lock(images, name)?;
    if !dir.is_dir() {
        return Err(ImageError::UnknownImage {
            name: name.to_string(),
            dir: images.to_path_buf(),
        });
    }
    let trash = tempfile::Builder::new()
        .prefix(&format!(".delete-{name}-"))
        .tempdir_in(images)
        .map_err(|source| ImageError::Write {
            path: images.to_path_buf(),
            source,
        })?;
    let target = trash.path().join(name);
    fs::rename(&dir, &target).map_err(|source| ImageError::Write {
        path: dir.clone(),
        source,
    })?;
    trash.close().map_err(|source| ImageError::Write {
        path: target,
        source,
    })
}

/// Holds `<images>/.<name>.lock` exclusively until dropped, so two builds
/// (or a build and a delete) of one name never interleave.
pub(crate) fn lock(images: &Path, name: &str) -> Result<fs::File, ImageError> {
    fs::create_dir_all(images).map_err(|source| ImageError::Write {
        path: images.to_path_buf(),
        source,
    })?;
    let path = images.join(format!(".{name}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ImageError::Write {
            path: path.clone(),
            source,
        })?;
    file.lock()
        .map_err(|source| ImageError::Write { path, source })?;
    Ok(file)
}

/// Moves the finished image directory `built` to `<images>/<name>`,
/// replacing an older image of that name (moved into `scratch` first,
/// where it is removed with the build's scratch directory).
pub(crate) fn install(
    images: &Path,
    name: &str,
    built: &Path,
    scratch: &Path,
) -> Result<PathBuf, ImageError> {
    let dir = image_dir(images, name)?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    if dir.exists() {
        fs::rename(&dir, scratch.join("old")).map_err(werr(&dir))?;
    }
    fs::rename(built, &dir).map_err(werr(&dir))?;
    fs::File::open(images)
        .and_then(|d| d.sync_all())
        .map_err(werr(images))?;
    Ok(dir)
}

/// The image name of a leftover `.build-<name>-XXXXXX` or
/// `.delete-<name>-XXXXXX` directory (tempfile's six random characters).
fn leftover_of(file: &str) -> Option<&str> {
    let rest = file
        .strip_prefix(".build-")
        .or_else(|| file.strip_prefix(".delete-"))?;
    let cut = rest.len().checked_sub(7)?;
    (rest.as_bytes().get(cut) == Some(&b'-'))
        .then(|| &rest[..cut])
        .filter(|n| validate_name(n).is_ok())
}

/// Removes the scratch directories a build or delete of `name` that was
/// killed left behind; the caller holds `name`'s lock, so none of them is
/// in use. Mounts left below one are detached first (a kept directory is
/// logged, never removed across a mount).
pub(crate) fn sweep_locked(images: &Path, name: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(images) else {
        return removed;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        if leftover_of(file) != Some(name) {
            continue;
        }
        let path = e.path();
        if let Err(err) = crate::mounts::detach_below(&path) {
            tracing::warn!("keeping {}: {err}", path.display());
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(err) => tracing::warn!("remove {}: {err}", path.display()),
        }
    }
    removed
}

/// Removes what builds and deletes killed mid-way (kill -9 of broodd or of
/// `brood image build`) left in `images`: each leftover only while holding
/// its image's lock without waiting, so a build running now, in broodd or in
/// a CLI, keeps its own. Returns what was removed.
pub fn sweep_leftovers(images: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(images) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(leftover_of)
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    let mut removed = Vec::new();
    for name in names {
        let path = images.join(format!(".{name}.lock"));
        let Ok(file) = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        // Busy: a build or delete of that name runs now.
        if file.try_lock().is_err() {
            continue;
        }
        removed.extend(sweep_locked(images, &name));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "deb", "a", "web-1.2_x", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "A",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(validate_name(bad), Err(ImageError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn list_open_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("images");
        assert!(list_images(&images).unwrap().is_empty());
        fs::create_dir_all(images.join("broken")).unwrap();
        fs::create_dir_all(images.join(".build-x-1")).unwrap();
        let l = list_images(&images).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "broken");
        assert!(matches!(l[0].manifest, Err(ImageError::NoImage { .. })));
        let err = open_image(&images, "absent").unwrap_err();
        assert!(err.to_string().contains("brood image list"), "{err}");
        let err = delete_image(&images, "absent").unwrap_err();
        assert!(matches!(err, ImageError::UnknownImage { .. }), "{err:?}");
        assert!(delete_image(&images, DEFAULT_IMAGE).is_err());
        delete_image(&images, "broken").unwrap();
        assert!(!images.join("broken").exists());
        assert!(list_images(&images).unwrap().is_empty());
        // Nothing but the lock file is left behind.
        let left: Vec<_> = fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock") && !n.starts_with(".build-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn install_replaces_whole() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path();
        let scratch = tempfile::tempdir_in(images).unwrap();
        for round in ["one", "two"] {
            let built = scratch.path().join(format!("out-{round}"));
            fs::create_dir(&built).unwrap();
            fs::write(built.join("f"), round).unwrap();
            let _ = fs::remove_dir_all(scratch.path().join("old"));
            install(images, "img", &built, scratch.path()).unwrap();
            assert_eq!(fs::read_to_string(images.join("img/f")).unwrap(), round);
        }
    }

    #[test]
    fn leftovers_of_killed_builds_go_unless_their_build_runs() {
        assert_eq!(leftover_of(".build-deb-abc123"), Some("deb"));
        assert_eq!(leftover_of(".build-web-srv-a1B2c3"), Some("web-srv"));
        assert_eq!(leftover_of(".delete-deb-zzzzzz"), Some("deb"));
        assert_eq!(leftover_of(".build-x"), None);
        assert_eq!(leftover_of(".deb.lock"), None);
        assert_eq!(leftover_of("deb"), None);
        let images = tempfile::tempdir().unwrap();
        let dir = images.path();
        for d in [
            ".build-deb-abc123/rootfs",
            ".delete-deb-qwerty",
            ".build-busy-123456",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::create_dir_all(dir.join("deb")).unwrap();
        // A build of `busy` runs (it holds the lock): its scratch stays.
        let held = lock(dir, "busy").unwrap();
        let mut removed = sweep_leftovers(dir);
        removed.sort();
        assert_eq!(
            removed,
            [
                dir.join(".build-deb-abc123"),
                dir.join(".delete-deb-qwerty")
            ]
        );
        assert!(dir.join(".build-busy-123456").is_dir());
        assert!(dir.join("deb").is_dir(), "an image is not a leftover");
        drop(held);
        // Another test's child, forked before it execs, may hold a copy of
        // the lock's descriptor for a moment (close-on-exec closes it then):
        // the lock is free once that copy is gone too.
        let mut freed = sweep_leftovers(dir);
        for _ in 0..100 {
            if !freed.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            freed = sweep_leftovers(dir);
        }
        assert_eq!(freed, [dir.join(".build-busy-123456")]);
    }
}
