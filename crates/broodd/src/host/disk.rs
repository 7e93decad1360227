//! Disk images broodd makes with `qemu-img`: a partition's empty disks and
//! a child's overlays over its template's frozen disks. Each is written
//! under a `.partial` name and renamed when complete, so a crash never
//! leaves a half-made image under its real name.

use std::path::Path;

use super::error::{HostError, HostResult};

/// Runs `qemu-img ARGS`; its stderr is the error, under `what`.
pub(super) async fn qemu_img(args: &[&std::ffi::OsStr], what: &str) -> HostResult<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| HostError::io("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(HostError::io(
            what.to_string(),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Renames a complete `.partial` image to its name.
pub(super) async fn finish(partial: &Path, path: &Path) -> HostResult<()> {
    tokio::fs::rename(partial, path)
        .await
        .map_err(|e| HostError::io(format!("rename {}", partial.display()), e))
}

/// Creates an empty qcow2 disk of `size_gib` at `path`.
pub async fn create(path: &Path, size_gib: u64) -> HostResult<()> {
    let partial = path.with_extension("qcow2.partial");
    let size = format!("{size_gib}G");
    qemu_img(
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            partial.as_os_str(),
            size.as_ref(),
        ],
        &format!("create disk {}", path.display()),
    )
    .await?;
    finish(&partial, path).await
}

/// Creates a qcow2 overlay at `overlay` backed by the qcow2 image `base`.
pub async fn overlay(base: &Path, overlay: &Path) -> HostResult<()> {
    let partial = overlay.with_extension("qcow2.partial");
    qemu_img(
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            partial.as_os_str(),
        ],
        &format!("create an overlay over {}", base.display()),
    )
    .await?;
    finish(&partial, overlay).await
}
