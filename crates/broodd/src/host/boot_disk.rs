//! A partition booted from a disk image the user brought (`boot_disk` in
//! its configuration, `brood vm create --disk-image`): importing the image
//! as its root disk, the cloud-init NoCloud seed disk it boots with, and
//! the kernel arguments that make brood's initramfs hand over to the
//! image's own init.
//!
//! The image is read only by `qemu-img`, with its format given (never
//! probed), and refused if it names a backing file or an external data
//! file: either is a host path that QEMU would open for the guest. What
//! the partition boots is a qcow2 copy of it in brood's storage (the
//! partition's root disk, `Paths::image_root`), made under a temporary
//! name and renamed when complete, grown to the configured size. The
//! upload itself (its bytes, its size cap) is the API's.

use std::path::{Path, PathBuf};

use brood_api as api;
use uuid::Uuid;

use super::error::{HostError, HostResult};
use super::paths::Paths;

/// The seed disk's file in the partition's disk directory.
const SEED_FILE: &str = "boot.seed.img";
/// The address space `qemu-img info` may use on an upload (OpenStack's 1 GiB).
const INFO_MAX_BYTES: u64 = 1 << 30;
/// The CPU seconds it may use (OpenStack's 30, for images of any size).
const INFO_MAX_CPU_SECS: u32 = 30;
/// One GiB.
const GIB: u64 = 1 << 30;
/// The seed disk's size in KiB: room for 64 KiB of user-data many times over.
const SEED_KIB: u32 = 1024;

/// The kernel arguments that make the initramfs find the disk's root file
/// system and execute its init, with or without brood's agent as a unit.
pub fn cmdline(boot: &api::BootDiskConfig) -> &'static str {
    if boot.agent {
        "brood.root=auto brood.init=/sbin/init brood.agent=unit"
    } else {
        "brood.root=auto brood.init=/sbin/init brood.agent=none"
    }
}

/// Refuses what needs the guest agent on a partition that boots its disk
/// image without one (`agent: false`), at once instead of after waiting for
/// an agent that never comes.
pub fn needs_agent(rec: &brood_ledger::PartitionRecord, what: &str) -> HostResult<()> {
    let config = super::config::active_config(rec)?;
    if config.boot_disk.is_some_and(|b| !b.agent) {
        return Err(HostError::transition(format!(
            "{} boots its disk image without brood's agent (--no-agent), and {what} needs it:              reach the guest over ssh or its console (`brood vm console {}`)",
            rec.name, rec.name
        )));
    }
    Ok(())
}

/// The partition's cloud-init seed disk (raw FAT, label `CIDATA`).
pub fn seed_path(paths: &Paths, uuid: Uuid) -> PathBuf {
    paths.disk_dir(uuid).join(SEED_FILE)
}

/// The file in a partition's disk directory an upload is received in.
const UPLOAD_FILE: &str = "boot.upload.partial";

/// Where an upload is received before it is imported.
pub fn upload_path(paths: &Paths, uuid: Uuid) -> PathBuf {
    paths.disk_dir(uuid).join(UPLOAD_FILE)
}

/// Removes the uploads a broodd that was killed while receiving them left
/// (at start, when no upload can be running); returns how many.
pub fn sweep_uploads(paths: &Paths) -> usize {
    let Ok(dirs) = std::fs::read_dir(paths.data.join("disks")) else {
        return 0;
    };
    let mut n = 0;
    for d in dirs.flatten() {
        let f = d.path().join(UPLOAD_FILE);
        if f.exists() {
            match std::fs::remove_file(&f) {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!("remove {}: {e}", f.display()),
            }
        }
    }
    n
}

/// The boot disk of a partition's configurations (they agree; checked at define).
pub fn of(
    configs: &std::collections::BTreeMap<String, api::PartitionConfig>,
) -> Option<&api::BootDiskConfig> {
    configs.values().find_map(|c| c.boot_disk.as_ref())
}

/// Checks that every configuration has the same boot disk.
pub fn check(configs: &std::collections::BTreeMap<String, api::PartitionConfig>) -> HostResult<()> {
    let mut all = configs.values().map(|c| &c.boot_disk);
    let first = all.next().cloned().flatten();
    if all.any(|b| *b != first) {
        return Err(HostError::invalid(
            "every configuration must have the same boot_disk: a partition has one root disk",
        ));
    }
    Ok(())
}

/// Writes the seed disk the partition boots with: `meta-data` names it
/// (instance-id its uuid, hostname its name), `user-data` is the
/// configuration's. Made with `mkfs.vfat` and `mcopy` under a temporary
/// name, then renamed over the last one.
pub async fn write_seed(
    paths: &Paths,
    uuid: Uuid,
    name: &str,
    boot: &api::BootDiskConfig,
) -> HostResult<()> {
    let dir = paths.disk_dir(uuid);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    // The two files, under the names mcopy gives them on the seed.
    let files = dir.join("boot.seed.files");
    let _ = tokio::fs::remove_dir_all(&files).await;
    tokio::fs::create_dir(&files)
        .await
        .map_err(|e| HostError::io(format!("create {}", files.display()), e))?;
    let written = seed_from(&dir, &files, uuid, name, boot).await;
    let _ = tokio::fs::remove_dir_all(&files).await;
    written
}

async fn seed_from(
    dir: &Path,
    files: &Path,
    uuid: Uuid,
    name: &str,
    boot: &api::BootDiskConfig,
) -> HostResult<()> {
    let meta = format!("instance-id: {uuid}\nlocal-hostname: {name}\n");
    let user = boot
        .user_data
        .clone()
        .unwrap_or_else(|| "#cloud-config\n{}\n".to_string());
    let (meta_path, user_path) = (files.join("meta-data"), files.join("user-data"));
    for (path, text) in [(&meta_path, meta.as_str()), (&user_path, user.as_str())] {
        tokio::fs::write(path, text)
            .await
            .map_err(|e| HostError::io(format!("write {}", path.display()), e))?;
    }
    let seed = dir.join(SEED_FILE);
    let partial = seed.with_extension("img.partial");
    let _ = tokio::fs::remove_file(&partial).await;
    run(
        tokio::process::Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(&partial)
            .arg(SEED_KIB.to_string()),
        "mkfs.vfat",
        "dosfstools",
    )
    .await?;
    let copied = run(
        tokio::process::Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(&partial)
            .arg(&user_path)
            .arg(&meta_path)
            .arg("::"),
        "mcopy",
        "mtools",
    )
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &seed)
        .await
        .map_err(|e| HostError::io(format!("rename {}", partial.display()), e))
}

async fn run(cmd: &mut tokio::process::Command, program: &str, package: &str) -> HostResult<()> {
    let out = cmd
        .output()
        .await
        .map_err(|e| HostError::io(format!("run {program} (install {package})"), e))?;
    if !out.status.success() {
        return Err(HostError::io(
            format!("{program} for the cloud-init seed disk"),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// What `qemu-img info` says of an uploaded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its virtual size in bytes.
    pub virtual_bytes: u64,
}

/// Parses `qemu-img info --output=json`: refuses a backing file or an
/// external data file (host paths the guest would reach).
pub fn parse_info(json: &[u8]) -> Result<ImageInfo, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("qemu-img info printed no JSON: {e}"))?;
    if let Some(b) = v.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(format!(
            "it names a backing file ({b:?}): import a standalone image (`qemu-img convert -O qcow2 IN OUT` flattens it)"
        ));
    }
    if v.pointer("/format-specific/data/data-file").is_some() {
        return Err(
            "it keeps its data in an external file: import a standalone image (`qemu-img convert -O qcow2 IN OUT`)"
                .into(),
        );
    }
    let virtual_bytes = v
        .get("virtual-size")
        .and_then(|s| s.as_u64())
        .ok_or("qemu-img info gave no virtual size")?;
    Ok(ImageInfo { virtual_bytes })
}

/// Imports the received file `upload` (of `format`) as partition `uuid`'s
/// root disk of `size_gib`, replacing any earlier one; removes `upload`.
/// The caller holds the partition's lock and has checked it is stopped.
pub async fn import(
    paths: &Paths,
    uuid: Uuid,
    upload: &Path,
    format: api::ImageFormat,
    size_gib: u64,
) -> HostResult<ImageInfo> {
    let result = import_inner(paths, uuid, upload, format, size_gib).await;
    let _ = tokio::fs::remove_file(upload).await;
    result
}

async fn import_inner(
    paths: &Paths,
    uuid: Uuid,
    upload: &Path,
    format: api::ImageFormat,
    size_gib: u64,
) -> HostResult<ImageInfo> {
    let fmt = format.as_str();
    // A crafted image can make `qemu-img info` spin or allocate without end
    // (CVE-2015-5162): it runs under limits, as OpenStack runs it.
    let out = tokio::process::Command::new("prlimit")
        .arg(format!("--as={INFO_MAX_BYTES}"))
        .arg(format!("--cpu={INFO_MAX_CPU_SECS}"))
        .args(["qemu-img", "info", "--output=json", "-f", fmt])
        .arg(upload)
        .output()
        .await
        .map_err(|e| {
            HostError::io(
                "run prlimit and qemu-img (install util-linux and qemu-utils)",
                e,
            )
        })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim().rsplit(": ").next().unwrap_or("").to_string();
        return Err(HostError::invalid(format!(
            "the upload is not a {fmt} image ({why}): give its real format (qcow2 or raw)"
        )));
    }
    let info = parse_info(&out.stdout)
        .map_err(|why| HostError::invalid(format!("the {fmt} image is refused: {why}")))?;
    if info.virtual_bytes > size_gib.saturating_mul(GIB) {
        return Err(HostError::invalid(format!(
            "the image's virtual size is {} GiB, more than the boot disk's {size_gib} GiB: define the VM with a larger disk (`--disk-size`)",
            info.virtual_bytes.div_ceil(GIB)
        )));
    }
    let root = paths.image_root(uuid);
    let partial = root.with_extension("qcow2.partial");
    let _ = tokio::fs::remove_file(&partial).await;
    let size = format!("{size_gib}G");
    let made = async {
        super::disk::qemu_img(
            &[
                "convert".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                fmt.as_ref(),
                "-O".as_ref(),
                "qcow2".as_ref(),
                upload.as_os_str(),
                partial.as_os_str(),
            ],
            "qemu-img convert of the boot disk",
        )
        .await?;
        if info.virtual_bytes < size_gib.saturating_mul(GIB) {
            super::disk::qemu_img(
                &[
                    "resize".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    partial.as_os_str(),
                    size.as_ref(),
                ],
                "qemu-img resize of the boot disk",
            )
            .await?;
        }
        super::disk::finish(&partial, &root).await
    };
    if let Err(e) = made.await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_refuses_host_paths_and_reads_the_size() {
        let ok = br#"{"virtual-size": 2147483648, "filename": "x", "format": "qcow2"}"#;
        assert_eq!(parse_info(ok).unwrap().virtual_bytes, 2 << 30);
        let backed = br#"{"virtual-size": 1, "backing-filename": "/etc/shadow"}"#;
        assert!(parse_info(backed).unwrap_err().contains("backing file"));
        let data_file =
            br#"{"virtual-size": 1, "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}"#;
        assert!(parse_info(data_file).unwrap_err().contains("external file"));
        assert!(parse_info(b"not json").is_err());
        assert!(parse_info(b"{}").is_err());
    }

    #[test]
    fn configurations_agree_on_the_boot_disk() {
        let boot = api::BootDiskConfig {
            size_gib: 4,
            agent: true,
            user_data: None,
        };
        let with = api::PartitionConfig {
            boot_disk: Some(boot.clone()),
            ..Default::default()
        };
        let mut configs = std::collections::BTreeMap::from([("a".to_string(), with.clone())]);
        check(&configs).unwrap();
        assert_eq!(of(&configs), Some(&boot));
        configs.insert("b".into(), api::PartitionConfig::default());
        assert!(check(&configs).is_err());
        configs.insert("b".into(), with);
        check(&configs).unwrap();
        assert!(cmdline(&boot).contains("brood.agent=unit"));
        let bare = api::BootDiskConfig {
            agent: false,
            ..boot
        };
        assert!(cmdline(&bare).contains("brood.agent=none"));
    }
}
