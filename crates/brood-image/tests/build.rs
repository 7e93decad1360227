//! Builds real images from the host's `linux-image-cloud-amd64` and
//! `busybox-static` packages, with `/bin/busybox` standing in for the agent
//! (it is a static ELF), and checks reproducibility, the up-to-date check,
//! the archive's contents and the input checks.

// This file is a test crate of its own; the lint is for unit tests in library
// code (Firecracker's vmm/tests allow it the same way).
#![allow(clippy::tests_outside_test_module)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use brood_image::{
    BuildOptions, INITRD_FILE, ImageError, KERNEL_FILE, MANIFEST_FILE, Manifest, Progress, build,
    read_manifest,
};

const STAND_IN_AGENT: &str = "/bin/busybox";

fn run(opts: &BuildOptions) -> (Result<Manifest, ImageError>, Vec<Progress>) {
    let mut seen = Vec::new();
    let result = build(opts, &mut |p| seen.push(p));
    (result, seen)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn options(out: &Path, scripts: &Path) -> BuildOptions {
    let mut opts = BuildOptions::new(out, STAND_IN_AGENT);
    opts.independent_services = vec![script(scripts, "hello", "#!/bin/sh\necho hello\n")];
    opts.dependent_services = vec![script(scripts, "after", "#!/bin/sh\necho after\n")];
    opts
}

/// `cpio -it` over the archive: the paths it lists.
fn cpio_list(initrd: &[u8]) -> Vec<String> {
    let mut child = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU cpio is needed for this test: apt-get install -y cpio");
    let mut stdin = child.stdin.take().unwrap();
    let data = initrd.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "cpio -it failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn builds_are_reproducible_and_skipped_when_up_to_date() {
    let scripts = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();

    let started = std::time::Instant::now();
    let (first, steps) = run(&options(a.path(), scripts.path()));
    let first = first.unwrap();
    eprintln!("first build: {:?}", started.elapsed());
    let numbers: Vec<u8> = steps.iter().map(Progress::step).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 4, 5], "{steps:?}");
    assert!(matches!(steps.last(), Some(Progress::Done { .. })));

    let (second, _) = run(&options(b.path(), scripts.path()));
    assert_eq!(second.unwrap(), first);
    for name in [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE] {
        let (x, y) = (
            fs::read(a.path().join(name)).unwrap(),
            fs::read(b.path().join(name)).unwrap(),
        );
        assert!(x == y, "{name} differs between two builds");
    }
    // Only the three outputs: no temporary files left behind.
    let mut names: Vec<_> = fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [INITRD_FILE, MANIFEST_FILE, KERNEL_FILE]);

    // Same inputs again: nothing rewritten.
    let stat = |name: &str| {
        let m = fs::metadata(a.path().join(name)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let before: Vec<_> = [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE].map(stat).to_vec();
    let started = std::time::Instant::now();
    let (again, steps) = run(&options(a.path(), scripts.path()));
    eprintln!("up-to-date check: {:?}", started.elapsed());
    assert_eq!(again.unwrap(), first);
    assert!(
        matches!(steps.last(), Some(Progress::UpToDate { fingerprint }) if *fingerprint == first.fingerprint),
        "{steps:?}"
    );
    assert!(!steps.iter().any(|s| matches!(s, Progress::Writing { .. })));
    let after: Vec<_> = [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE].map(stat).to_vec();
    assert_eq!(before, after);

    // force rebuilds; a damaged output rebuilds; a changed input changes the fingerprint.
    let mut forced = options(a.path(), scripts.path());
    forced.force = true;
    let (_, steps) = run(&forced);
    assert!(
        matches!(steps.last(), Some(Progress::Done { .. })),
        "{steps:?}"
    );
    fs::write(a.path().join(INITRD_FILE), b"damaged").unwrap();
    let (rebuilt, steps) = run(&options(a.path(), scripts.path()));
    assert!(
        matches!(steps.last(), Some(Progress::Done { .. })),
        "{steps:?}"
    );
    assert_eq!(rebuilt.unwrap(), first);
    assert_eq!(
        fs::read(a.path().join(INITRD_FILE)).unwrap(),
        fs::read(b.path().join(INITRD_FILE)).unwrap()
    );
    let opts = options(a.path(), scripts.path());
    script(scripts.path(), "hello", "#!/bin/sh\necho changed\n");
    let (changed, _) = run(&opts);
    assert_ne!(changed.unwrap().fingerprint, first.fingerprint);

    assert_eq!(read_manifest(b.path()).unwrap(), first);
}

#[test]
fn image_contents_and_module_order() {
    let scripts = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(out.path(), scripts.path());
    opts.extra_modules = vec!["virtio-scsi".to_string()];
    let manifest = run(&opts).0.unwrap();
    let release = &manifest.kernel.release;
    assert!(manifest.kernel.package.ends_with(release.as_str()));
    eprintln!(
        "kernel {} {} ({release}), initrd {} bytes, {} modules",
        manifest.kernel.package,
        manifest.kernel.version,
        manifest.outputs.initrd.size_bytes,
        manifest.modules.len()
    );

    let listed = cpio_list(&fs::read(out.path().join(INITRD_FILE)).unwrap());
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "entries are not in path order");
    for want in [
        "init".to_string(),
        "sbin/brood-agent".to_string(),
        "bin/busybox".to_string(),
        "bin/sh".to_string(),
        "sbin/ip".to_string(),
        "etc/brood/modules".to_string(),
        "etc/brood/image.json".to_string(),
        "etc/brood/services/independent/hello".to_string(),
        "etc/brood/services/dependent/after".to_string(),
        "etc/machine-id".to_string(),
        "dev/console".to_string(),
        "usr/sbin".to_string(),
    ] {
        assert!(listed.contains(&want), "{want} missing from the initramfs");
    }
    let module_path = |name: &str| {
        manifest
            .modules
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} not in {:?}", manifest.modules))
    };
    let mmio = &manifest.modules[module_path("virtio_mmio")];
    assert!(mmio.path.starts_with(&format!("/lib/modules/{release}/")));
    assert!(mmio.path.ends_with("/virtio_mmio.ko"));
    for m in &manifest.modules {
        assert!(
            listed.contains(&m.path[1..].to_string()),
            "{} not in the archive",
            m.path
        );
    }
    assert!(module_path("virtio_ring") < module_path("virtio"));
    assert!(module_path("virtio") < module_path("virtio_mmio"));
    assert!(module_path("virtio") < module_path("virtio_pci"));
    for name in [
        "virtio_blk",
        "virtio_net",
        "virtio_console",
        "virtio_rng",
        "virtio_scsi",
        "scsi_mod",
    ] {
        module_path(name);
    }
    assert!(module_path("scsi_mod") < module_path("virtio_scsi"));
}

#[test]
fn bad_agents_and_modules_are_refused_clearly() {
    let out = tempfile::tempdir().unwrap();
    let check = |agent: &Path, want: &dyn Fn(&ImageError) -> bool, text: &str| {
        let err = run(&BuildOptions::new(out.path(), agent)).0.unwrap_err();
        assert!(want(&err), "{err:?}");
        assert!(err.to_string().contains(text), "{err}");
        assert!(!out.path().join(MANIFEST_FILE).exists());
    };
    check(
        Path::new("/nonexistent/brood-agent"),
        &|e| matches!(e, ImageError::AgentMissing { .. }),
        "/nonexistent/brood-agent",
    );
    let text = script(out.path(), "agent.sh", "#!/bin/sh\n");
    check(
        &text,
        &|e| matches!(e, ImageError::NotElf { .. }),
        "agent.sh",
    );
    // /bin/ls is dynamically linked on Debian.
    check(
        Path::new("/bin/ls"),
        &|e| matches!(e, ImageError::DynamicallyLinked { .. }),
        "+crt-static",
    );

    let mut opts = BuildOptions::new(out.path(), STAND_IN_AGENT);
    opts.extra_modules = vec!["brood_no_such_module".to_string()];
    let err = run(&opts).0.unwrap_err();
    assert!(
        matches!(&err, ImageError::ModuleNotFound { module, .. } if module == "brood_no_such_module"),
        "{err:?}"
    );
}
