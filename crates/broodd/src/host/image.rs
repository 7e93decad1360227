//! The guest image a partition boots: broodd's default image, or a named
//! one from `DATA_DIR/images` (`brood image build --name`), whose files are
//! found through its manifest (brood-image owns the format). An image with
//! a root disk gives each partition a qcow2 overlay of it, created when the
//! partition is provisioned and kept across stop and start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use brood_api as api;
use uuid::Uuid;

use super::disk;
use super::error::{HostError, HostResult};
use super::paths::Paths;

/// What a partition boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBoot {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The image's root disk (the base of the partition's overlay), if any.
    pub root_disk: Option<PathBuf>,
}

/// The files of image `name` (`None`: broodd's default image).
pub fn boot(paths: &Paths, name: Option<&str>) -> HostResult<ImageBoot> {
    let Some(name) = name else {
        return Ok(ImageBoot {
            kernel: paths.kernel(),
            initrd: paths.initrd(),
            root_disk: None,
        });
    };
    let (dir, m) = brood_image::open_image(&paths.images(), name)
        .map_err(|e| HostError::invalid(format!("image {name:?}: {}", super::chain(&e))))?;
    Ok(ImageBoot {
        kernel: m.outputs.kernel.path_in(&dir),
        initrd: m.outputs.initrd.path_in(&dir),
        root_disk: m.outputs.root_disk.as_ref().map(|r| r.path_in(&dir)),
    })
}

/// The one image every configuration names (checked: they must agree, since
/// the partition has one root disk), and that it exists.
pub fn check(
    paths: &Paths,
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<Option<String>> {
    let mut names = configs.values().map(|c| c.image.clone());
    let first = names.next().flatten();
    if names.any(|n| n != first) {
        return Err(HostError::invalid(
            "every configuration must name the same image: a partition has one root disk",
        ));
    }
    if let Some(name) = &first {
        brood_image::validate_name(name).map_err(|e| HostError::invalid(super::chain(&e)))?;
        boot(paths, Some(name))?;
    }
    Ok(first)
}

/// Creates partition `uuid`'s overlay of its image's root disk unless it
/// exists (a stopped partition keeps what its guest wrote).
pub async fn provision_root(
    paths: &Paths,
    uuid: Uuid,
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<()> {
    let Some(name) = check(paths, configs)? else {
        return Ok(());
    };
    let Some(base) = boot(paths, Some(&name))?.root_disk else {
        return Ok(());
    };
    let overlay = paths.image_root(uuid);
    if overlay.exists() {
        return Ok(());
    }
    let dir = paths.disk_dir(uuid);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    disk::overlay(&base, &overlay).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_agree_on_an_existing_image() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths {
            data: d.path().into(),
            image: d.path().join("images/default"),
            templates: d.path().join("t"),
        };
        let mut a = api::PartitionConfig::default();
        let mut configs = BTreeMap::from([("a".to_string(), a.clone())]);
        assert_eq!(check(&paths, &configs).unwrap(), None);
        a.image = Some("deb".into());
        configs.insert("b".into(), a.clone());
        let e = check(&paths, &configs).unwrap_err();
        assert!(e.to_string().contains("same image"), "{e}");
        configs.insert("a".into(), a.clone());
        let e = check(&paths, &configs).unwrap_err();
        assert!(e.to_string().contains("brood image build"), "{e}");
        a.image = Some("../x".into());
        configs = BTreeMap::from([("a".to_string(), a)]);
        assert!(check(&paths, &configs).is_err());
    }
}
