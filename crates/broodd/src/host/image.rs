//! The guest image a partition boots: broodd's default image, or a named
//! one from `DATA_DIR/images` (`brood image build --name`), whose files are
//! found through its manifest (brood-image owns the format). An image with
//! a root disk gives each partition a qcow2 overlay of it, created when the
//! partition is provisioned and kept across stop and start. The overlay
//! backs onto a hard link to the image's root disk in the partition's own
//! disk directory, and the partition boots hard links to the image's
//! kernel and initramfs, so rebuilding or deleting the image never changes
//! (or removes) what an existing partition boots; across file systems,
//! where no hard link can be made, it uses the image's own files.

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

/// What partition `uuid` boots: its hard links to its image's kernel and
/// initramfs when provisioning made them (so it still boots after the image
/// is rebuilt or deleted), else the image's own files.
pub fn for_partition(paths: &Paths, uuid: Uuid, name: Option<&str>) -> HostResult<ImageBoot> {
    let (kernel, initrd) = (paths.image_kernel(uuid), paths.image_initrd(uuid));
    if name.is_some() && kernel.is_file() && initrd.is_file() {
        let root = paths.image_root(uuid);
        return Ok(ImageBoot {
            kernel,
            initrd,
            root_disk: root.is_file().then(|| paths.image_base(uuid)),
        });
    }
    boot(paths, name)
}

/// Hard-links `from` to `to` (kept if it exists); false where no link can
/// be made (another file system).
async fn link(from: &std::path::Path, to: &std::path::Path, uuid: Uuid) -> bool {
    match tokio::fs::hard_link(from, to).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
        Err(e) => {
            tracing::warn!(
                partition = %uuid,
                "no hard link to {} ({e}); the partition uses the image's file, so keep the image while the partition exists",
                from.display()
            );
            false
        }
    }
}

/// The one image every configuration names (checked: they must agree, since
/// the partition has one root disk), and that it exists.
pub fn check(
    paths: &Paths,
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<Option<String>> {
    super::boot_disk::check(configs)?;
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
    if configs
        .values()
        .any(|c| c.init == Some(api::GuestInit::Systemd) && c.boot_disk.is_none())
    {
        check_systemd(paths, first.as_deref())?;
    }
    Ok(first)
}

/// That image `name` has a root disk with systemd as its `/sbin/init`
/// (Debian's `systemd-sysv`), for `init: systemd`.
fn check_systemd(paths: &Paths, name: Option<&str>) -> HostResult<()> {
    let Some(name) = name else {
        return Err(HostError::invalid(
            "init systemd needs a Debian image (`--image NAME`, built with --package systemd-sysv)",
        ));
    };
    let (_, m) = brood_image::open_image(&paths.images(), name)
        .map_err(|e| HostError::invalid(format!("image {name:?}: {}", super::chain(&e))))?;
    let has = m
        .rootfs
        .as_ref()
        .is_some_and(|r| r.packages.iter().any(|p| p.package == "systemd-sysv"));
    if !has {
        return Err(HostError::invalid(format!(
            "init systemd: image {name:?} has no systemd (no systemd-sysv package): rebuild it with \
             `brood image build --name {name} --rootfs debian --package systemd-sysv ...`"
        )));
    }
    Ok(())
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
    let image = boot(paths, Some(&name))?;
    let dir = paths.disk_dir(uuid);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    let overlay = paths.image_root(uuid);
    if let Some(base) = &image.root_disk
        && !overlay.exists()
    {
        let link_path = paths.image_base(uuid);
        // The link by its name in the overlay's own directory: QEMU resolves
        // a relative backing name there, so a template made of the running
        // partition (`--keep`) holds a link of that name and owns its chain.
        let backing = match link_path.file_name() {
            Some(name) if link(base, &link_path, uuid).await => std::path::PathBuf::from(name),
            _ => base.clone(),
        };
        disk::overlay(&backing, &overlay).await?;
    }
    // Kernel and initramfs last: their links are what `for_partition`
    // takes as "provisioned" (a root overlay, if any, exists by then).
    let (k, i) = (paths.image_kernel(uuid), paths.image_initrd(uuid));
    if !(link(&image.kernel, &k, uuid).await && link(&image.initrd, &i, uuid).await) {
        let _ = tokio::fs::remove_file(&k).await;
        let _ = tokio::fs::remove_file(&i).await;
    }
    Ok(())
}

/// The API's view of an image's manifest.
fn view(name: &str, m: &brood_image::Manifest) -> api::Image {
    let r = m.rootfs.as_ref();
    api::Image {
        name: name.to_owned(),
        rootfs: if r.is_some() {
            api::ImageRootfs::Debian
        } else {
            api::ImageRootfs::Busybox
        },
        fingerprint: m.fingerprint.clone(),
        kernel: m.kernel.release.clone(),
        suite: r.map(|r| r.suite.clone()),
        packages: r.map(|r| r.requested.clone()).unwrap_or_default(),
        size_gib: r.map(|r| r.size_gib),
        init: r.map(|r| r.init.clone()),
    }
}

/// The images of the data directory.
pub fn list(paths: &Paths) -> HostResult<api::ImageList> {
    let entries = brood_image::list_images(&paths.images())
        .map_err(|e| HostError::corrupt("the images directory", super::chain(&e)))?;
    let mut out = api::ImageList {
        items: Vec::new(),
        unreadable: Vec::new(),
    };
    for e in entries {
        match &e.manifest {
            Ok(m) => out.items.push(view(&e.name, m)),
            Err(err) => out.unreadable.push(api::UnreadableImage {
                name: e.name.clone(),
                error: super::chain(err),
            }),
        }
    }
    Ok(out)
}

/// Image `name`, or a 404 naming how to build it.
pub fn show(paths: &Paths, name: &str) -> HostResult<api::Image> {
    brood_image::validate_name(name).map_err(|e| HostError::invalid(super::chain(&e)))?;
    match brood_image::open_image(&paths.images(), name) {
        Ok((_, m)) => Ok(view(name, &m)),
        Err(brood_image::ImageError::UnknownImage { .. }) => Err(HostError::NotFound(format!(
            "no image named {name:?}: `brood image list` shows them, `brood image build --name {name}` makes one"
        ))),
        Err(e) => Err(HostError::corrupt(
            format!("image {name:?}"),
            super::chain(&e),
        )),
    }
}

/// Checks a build request the way `brood image build` checks its flags
/// (`brood_image::BuildRequest::plan`: the same checks), and finds the
/// agent the image is built with.
pub fn plan(paths: &Paths, req: api::ImageBuildRequest) -> HostResult<brood_image::BuildPlan> {
    if req.packages.len() > 256 || req.modules.len() > 64 {
        return Err(HostError::invalid(
            "at most 256 packages and 64 modules in one image",
        ));
    }
    if let Some(s) = req.size_gib
        && !(1..=brood_image::MAX_SIZE_GIB).contains(&s)
    {
        return Err(HostError::invalid(format!(
            "size_gib must be 1-{}, not {s}",
            brood_image::MAX_SIZE_GIB
        )));
    }
    let asked = brood_image::BuildRequest {
        name: req.name,
        debian: req.rootfs == api::ImageRootfs::Debian,
        service: req.service,
        suite: req.suite,
        packages: req.packages,
        size_gib: req.size_gib,
        mirror: req.mirror,
        extra_modules: req.modules,
        force: req.force,
        ..brood_image::BuildRequest::default()
    };
    // A host without an agent to build with is a conflict; anything else
    // wrong is the request's.
    asked
        .plan(&paths.images(), None, || brood_image::find_agent(None))
        .map_err(|e| match e {
            brood_image::ImageError::AgentNotFound { .. }
            | brood_image::ImageError::AgentNotFile { .. } => {
                HostError::conflict(format!("broodd cannot build images: {}", super::chain(&e)))
            }
            _ => HostError::invalid(super::chain(&e)),
        })
}

/// Runs a planned build (blocking: the caller runs it off the async
/// threads), logging each step; returns the image.
pub fn build(plan: brood_image::BuildPlan) -> HostResult<api::Image> {
    let name = plan.name();
    let failed = |e: brood_image::ImageError| {
        HostError::conflict(format!("build image {name:?}: {}", super::chain(&e)))
    };
    let m = match plan {
        brood_image::BuildPlan::Busybox(o) => brood_image::build(&o, &mut |p: brood_image::Progress| {
            tracing::info!(image = %name, "[{}/{}] {p}", p.step(), brood_image::Progress::STEPS);
        })
        .map_err(failed)?,
        brood_image::BuildPlan::Debian(o) => {
            brood_image::build_debian(&o, &mut |p: brood_image::DebianProgress| {
                tracing::info!(image = %name, "[{}/{}] {p}", p.step(), brood_image::DebianProgress::STEPS);
            })
            .map_err(failed)?
        }
    };
    Ok(view(&name, &m))
}

/// Deletes image `name` (not the default one).
pub fn delete(paths: &Paths, name: &str) -> HostResult<()> {
    show(paths, name)?;
    brood_image::delete_image(&paths.images(), name).map_err(|e| match e {
        brood_image::ImageError::InvalidName { .. } => HostError::invalid(super::chain(&e)),
        _ => HostError::corrupt(format!("delete image {name:?}"), super::chain(&e)),
    })
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
