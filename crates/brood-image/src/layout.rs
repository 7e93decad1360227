//! The file layout of the initramfs, assembled as an in-memory file tree:
//!
//! ```text
//! /init                           -> /sbin/brood-agent
//! /sbin/brood-agent               0755, the agent (runs as PID 1)
//! /bin/busybox                    0755, plus one symlink per applet at the
//!                                 paths `busybox --list-full` prints
//! /lib/modules/<release>/<path>.ko  every module of the closure, decompressed
//! /lib/modules/<release>/modules.dep  the closure only, for busybox modprobe
//! /etc/brood/modules              load order, one absolute path per line
//! /etc/brood/image.json           kernel release and input fingerprint
//! /etc/brood/root                 only with a root disk: `device=`, `fstype=`
//! /etc/brood/services/{independent,dependent}/<name>  0755, user scripts
//! /etc/{hostname,passwd,group,machine-id}
//! /dev/console                    char 5:1, the kernel opens it for PID 1
//! /dev /proc /sys /tmp /run /root /var /mnt /usr/bin /usr/sbin
//! ```
//!
//! What the agent does with these files at boot is the agent's business.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ImageError;
use crate::cpio::Tree;
use crate::module::{ModuleFile, first_line};

/// Where the agent lives in the image; `/init` points here.
pub const AGENT_PATH: &str = "/sbin/brood-agent";
/// The module load order file in the image.
pub const MODULES_LIST_PATH: &str = "/etc/brood/modules";
/// The modules loaded only before booting a disk the VM was given, in the
/// same format (the agent's `init::DISK_MODULES_LIST`).
pub const DISK_MODULES_LIST_PATH: &str = "/etc/brood/modules.disk";
/// The file naming the root disk the agent switches to (images with a
/// Debian root file system only; read by the agent's `root` module).
pub const ROOT_CONFIG_PATH: &str = "/etc/brood/root";
/// Directory of services started without waiting on each other.
pub const INDEPENDENT_SERVICES_DIR: &str = "/etc/brood/services/independent";
/// Directory of services started after the independent ones.
pub const DEPENDENT_SERVICES_DIR: &str = "/etc/brood/services/dependent";

/// Which services directory a script goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceKind {
    Independent,
    Dependent,
}

impl ServiceKind {
    fn dir(self) -> &'static str {
        match self {
            ServiceKind::Independent => INDEPENDENT_SERVICES_DIR,
            ServiceKind::Dependent => DEPENDENT_SERVICES_DIR,
        }
    }

    /// The tag used in the fingerprint.
    pub fn tag(self) -> &'static str {
        match self {
            ServiceKind::Independent => "service.independent",
            ServiceKind::Dependent => "service.dependent",
        }
    }
}

/// A user's service script, read.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub kind: ServiceKind,
    /// The file name, kept in the image.
    pub name: String,
    /// Its permission bits on the host (fingerprinted; the image uses 0755).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Reads the service scripts, sorted by kind then name. Names identify
/// services, so a name may be used once across both kinds.
pub(crate) fn read_services(
    independent: &[PathBuf],
    dependent: &[PathBuf],
) -> Result<Vec<Service>, ImageError> {
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    let mut services = Vec::new();
    let all = independent
        .iter()
        .map(|p| (ServiceKind::Independent, p))
        .chain(dependent.iter().map(|p| (ServiceKind::Dependent, p)));
    for (kind, path) in all {
        let bad = |reason: &str| ImageError::Service {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or_else(|| bad("its file name is missing or not UTF-8"))?
            .to_string();
        if let Some(first) = seen.insert(name.clone(), path) {
            return Err(ImageError::DuplicateService {
                name,
                first: first.to_path_buf(),
                second: path.clone(),
            });
        }
        let meta = std::fs::metadata(path).map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        let data = std::fs::read(path).map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
        services.push(Service {
            kind,
            name,
            mode: meta.permissions().mode() & 0o7777,
            data,
        });
    }
    services.sort_by(|a, b| (a.kind.tag(), &a.name).cmp(&(b.kind.tag(), &b.name)));
    Ok(services)
}

/// Runs `busybox --list-full` and returns the applet paths (relative, as
/// printed: `bin/sh`, `usr/bin/env`).
pub(crate) fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let bad = |reason: String| ImageError::BusyboxList {
        path: busybox.to_path_buf(),
        reason,
    };
    let output = Command::new(busybox)
        .arg("--list-full")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::BusyboxSpawn {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(bad(format!(
            "exited with {}: {}",
            output.status,
            first_line(&output.stderr)
        )));
    }
    let text =
        String::from_utf8(output.stdout).map_err(|e| bad(format!("output is not UTF-8: {e}")))?;
    let applets: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_start_matches('/'))
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if let Some(odd) = applets
        .iter()
        .find(|a| a.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
    {
        return Err(bad(format!("unexpected applet path {odd:?}")));
    }
    if applets.is_empty() {
        return Err(bad("it listed no applets".to_string()));
    }
    Ok(applets)
}

/// Everything that goes into the initramfs.
#[derive(Debug)]
pub(crate) struct Contents<'a> {
    pub release: &'a str,
    pub fingerprint: &'a str,
    pub agent: &'a [u8],
    pub busybox: &'a [u8],
    pub applets: &'a [String],
    /// The module closure in load order, with decompressed contents.
    pub modules: Vec<(&'a ModuleFile, Vec<u8>)>,
    /// Names of `modules` listed in [`DISK_MODULES_LIST_PATH`] instead of
    /// [`MODULES_LIST_PATH`].
    pub on_demand: &'a BTreeSet<String>,
    pub services: &'a [Service],
    /// The text of [`ROOT_CONFIG_PATH`] for an image with a root disk.
    pub root: Option<&'a str>,
}

/// The absolute image path of a module.
pub(crate) fn module_image_path(release: &str, module: &ModuleFile) -> String {
    format!("/lib/modules/{release}/{}", module.image_rel_path())
}

/// Assembles the initramfs tree.
pub(crate) fn initramfs(c: Contents<'_>) -> Result<Tree, ImageError> {
    let mut t = Tree::default();
    for dir in [
        "dev", "proc", "sys", "run", "var", "mnt", "usr/bin", "usr/sbin", "bin", "sbin",
    ] {
        t.dir(dir, 0o755)?;
    }
    t.dir("tmp", 0o1777)?;
    t.dir("root", 0o700)?;
    // The kernel opens /dev/console for PID 1 before anything can mount
    // devtmpfs (init/main.c console_on_rootfs); Debian's built-in initramfs
    // has it too, but an image should not depend on that.
    t.char_dev("dev/console", 0o600, 5, 1)?;

    t.file(AGENT_PATH, 0o755, c.agent.to_vec())?;
    t.symlink("init", AGENT_PATH)?;
    t.file("bin/busybox", 0o755, c.busybox.to_vec())?;

    t.file("etc/hostname", 0o644, b"brood\n".to_vec())?;
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    )?;
    t.file("etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    t.file("etc/machine-id", 0o444, Vec::new())?;
    t.file(
        "etc/brood/image.json",
        0o644,
        image_json(c.release, c.fingerprint),
    )?;

    if let Some(root) = c.root {
        t.file(ROOT_CONFIG_PATH, 0o644, root.as_bytes().to_vec())?;
    }

    let mut order = String::new();
    let mut disk_order = String::new();
    let mut dep = String::new();
    let modules_dir = format!("lib/modules/{}", c.release);
    t.dir(&modules_dir, 0o755)?;
    let paths: BTreeMap<&str, String> = c
        .modules
        .iter()
        .map(|&(m, _)| (m.name.as_str(), m.image_rel_path()))
        .collect();
    for (module, data) in c.modules {
        let path = module_image_path(c.release, module);
        let list = if c.on_demand.contains(&module.name) {
            &mut disk_order
        } else {
            &mut order
        };
        list.push_str(&path);
        list.push('\n');
        dep.push_str(&dep_line(module, &paths));
        t.file(&path, 0o644, data)?;
    }
    t.file(MODULES_LIST_PATH, 0o644, order.into_bytes())?;
    t.file(DISK_MODULES_LIST_PATH, 0o644, disk_order.into_bytes())?;
    t.file(
        &format!("{modules_dir}/modules.dep"),
        0o644,
        dep.into_bytes(),
    )?;

    t.dir(INDEPENDENT_SERVICES_DIR, 0o755)?;
    t.dir(DEPENDENT_SERVICES_DIR, 0o755)?;
    for s in c.services {
        t.file(
            &format!("{}/{}", s.kind.dir(), s.name),
            0o755,
            s.data.clone(),
        )?;
    }

    // Applets last, so brood's own files win any collision (busybox lists
    // `bin/busybox` itself and may list `linuxrc`, `init`-like names).
    for applet in c.applets {
        if t.is_taken(applet) {
            tracing::debug!(applet = %applet, "busybox applet collides with an image file; skipped");
            continue;
        }
        t.symlink(applet, "/bin/busybox")?;
    }
    Ok(t)
}

/// A modules.dep line for the image: the module and its dependencies, as
/// uncompressed paths relative to the modules directory. Every dependency is
/// in `paths` because the closure is closed under dependencies.
fn dep_line(module: &ModuleFile, paths: &BTreeMap<&str, String>) -> String {
    let mut line = module.image_rel_path();
    line.push(':');
    for dep in module.deps.iter().filter_map(|d| paths.get(d.as_str())) {
        line.push(' ');
        line.push_str(dep);
    }
    line.push('\n');
    line
}

/// `/etc/brood/image.json`: what the agent can report about its image.
fn image_json(release: &str, fingerprint: &str) -> Vec<u8> {
    let value = serde_json::json!({
        "format_version": crate::FORMAT_VERSION,
        "kernel_release": release,
        "fingerprint": fingerprint,
    });
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::Node;

    fn module(name: &str, rel: &str, deps: &[&str]) -> ModuleFile {
        ModuleFile {
            name: name.to_string(),
            rel_path: rel.to_string(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn services_are_sorted_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["a", "b"] {
            std::fs::create_dir(d.join(sub)).unwrap();
            std::fs::write(d.join(sub).join("web"), "#!/bin/sh\n").unwrap();
        }
        std::fs::write(d.join("zz"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(d.join("zz"), std::fs::Permissions::from_mode(0o700)).unwrap();

        let s = read_services(&[d.join("zz"), d.join("a/web")], &[]).unwrap();
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "zz"]);
        assert_eq!(s[1].mode, 0o700);

        for (ind, dep) in [
            (vec![d.join("a/web"), d.join("b/web")], vec![]),
            (vec![d.join("a/web")], vec![d.join("b/web")]),
        ] {
            let err = read_services(&ind, &dep).unwrap_err();
            assert!(
                matches!(&err, ImageError::DuplicateService { name, .. } if name == "web"),
                "{err:?}"
            );
        }
        let err = read_services(&[d.join("a")], &[]).unwrap_err();
        assert!(matches!(err, ImageError::Service { .. }), "{err:?}");
        let err = read_services(&[d.join("missing")], &[]).unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err:?}");
    }

    #[test]
    fn layout_has_brood_files_and_busybox_never_overrides_them() {
        let ring = module("virtio_ring", "kernel/virtio_ring.ko", &[]);
        let rng = module("virtio_rng", "kernel/virtio-rng.ko.xz", &["virtio_ring"]);
        let fat = module("vfat", "kernel/vfat.ko", &[]);
        let services = [Service {
            kind: ServiceKind::Dependent,
            name: "web".into(),
            mode: 0o600,
            data: b"#!/bin/sh\n".to_vec(),
        }];
        let applets: Vec<String> = [
            "bin/sh",
            "bin/busybox",
            "init",
            "sbin/brood-agent",
            "etc/hostname",
            "sbin/init",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = initramfs(Contents {
            release: "6.1.0-r",
            fingerprint: "f00d",
            agent: b"AGENT",
            busybox: b"BUSYBOX",
            applets: &applets,
            modules: vec![
                (&ring, b"R".to_vec()),
                (&rng, b"N".to_vec()),
                (&fat, b"F".to_vec()),
            ],
            on_demand: &BTreeSet::from(["vfat".to_string()]),
            services: &services,
            root: None,
        })
        .unwrap();
        let get = |p: &str| {
            t.entries()
                .find(|(path, _)| *path == p)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        let symlink = |target: &str| Node::Symlink {
            target: target.into(),
        };
        let file = |mode, data: &[u8]| Node::File {
            mode,
            data: data.to_vec(),
        };
        assert_eq!(get("init"), symlink(AGENT_PATH));
        assert_eq!(get("sbin/brood-agent"), file(0o755, b"AGENT"));
        assert_eq!(get("bin/busybox"), file(0o755, b"BUSYBOX"));
        assert_eq!(get("bin/sh"), symlink("/bin/busybox"));
        assert_eq!(get("sbin/init"), symlink("/bin/busybox"));
        assert_eq!(get("etc/hostname"), file(0o644, b"brood\n"));
        assert_eq!(
            get("etc/brood/services/dependent/web"),
            file(0o755, b"#!/bin/sh\n")
        );
        assert!(matches!(
            get("etc/brood/services/independent"),
            Node::Dir { .. }
        ));
        assert_eq!(
            get("lib/modules/6.1.0-r/kernel/virtio-rng.ko"),
            file(0o644, b"N")
        );
        assert_eq!(
            get("etc/brood/modules"),
            file(
                0o644,
                b"/lib/modules/6.1.0-r/kernel/virtio_ring.ko\n/lib/modules/6.1.0-r/kernel/virtio-rng.ko\n"
            )
        );
        // Carried for a disk the VM is given, loaded only then.
        assert_eq!(
            get("etc/brood/modules.disk"),
            file(0o644, b"/lib/modules/6.1.0-r/kernel/vfat.ko\n")
        );
        assert_eq!(
            get("lib/modules/6.1.0-r/modules.dep"),
            file(
                0o644,
                b"kernel/virtio_ring.ko:\nkernel/virtio-rng.ko: kernel/virtio_ring.ko\nkernel/vfat.ko:\n"
            )
        );
        let Node::File { data, .. } = get("etc/brood/image.json") else {
            panic!("image.json is not a file");
        };
        let json: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(json["kernel_release"], "6.1.0-r");
        assert_eq!(json["fingerprint"], "f00d");
        for dir in [
            "dev", "proc", "sys", "tmp", "run", "root", "var", "mnt", "usr/bin", "usr/sbin",
        ] {
            assert!(matches!(get(dir), Node::Dir { .. }), "{dir}");
        }
    }

    #[test]
    fn host_busybox_lists_applets() {
        let applets = busybox_applets(Path::new("/bin/busybox")).unwrap();
        assert!(applets.iter().any(|a| a == "bin/sh"), "{applets:?}");
        let err = busybox_applets(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(matches!(err, ImageError::BusyboxSpawn { .. }), "{err:?}");
    }
}
