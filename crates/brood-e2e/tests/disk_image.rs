//! Disk images users already have (issue 16, item 12): `brood vm create
//! --disk-image FILE --user-data FILE` on real VMs, with a cloud image laid
//! out as Debian's and Ubuntu's are (a GPT disk whose root is an ext4
//! partition behind a BIOS-boot and an EFI partition, systemd as init,
//! cloud-init and growpart installed), built here from Debian packages
//! with mmdebstrap, since the test host reaches no image download site.
//!
//! The image is built once per run into `<target>/e2e-images/cloud` (a
//! fresh CI clone builds it afresh). The two VM tests take a lock so that
//! one cloud guest boots at a time (systemd and cloud-init under TCG are
//! CPU-heavy).

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use brood_e2e::{
    Broodd, TestEnv, brood_bin, http, readme_fenced, readme_sh_lines, run, wait_until,
};
use serde_json::{Value, json};

/// What the image is made of; a change rebuilds it.
const RECIPE: &str = "bookworm minbase systemd-sysv,udev,cloud-init,cloud-guest-utils,locales; \
                      gpt bios-boot 3M, efi 124M, root ext4 rest of 2G; v2";
const PACKAGES: &str = "systemd-sysv,udev,cloud-init,cloud-guest-utils,locales";
/// Sectors (512 bytes) of the layout: the root partition starts at 128 MiB.
const ROOT_START: u64 = 262_144;
const DISK_BYTES: u64 = 2 << 30;

/// The README's section this file runs.
const SECTION: &str = "### Disk images you already have";
/// One cloud guest at a time.
static ONE_VM: Mutex<()> = Mutex::new(());

/// The cloud image (qcow2), built once per run.
fn cloud_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = brood_bin()
            .parent()
            .expect("target dir")
            .join("e2e-images/cloud");
        std::fs::create_dir_all(&dir).expect("cache dir");
        let img = dir.join("cloud.qcow2");
        let stamp = dir.join("recipe");
        if img.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(RECIPE) {
            return img;
        }
        build_cloud_image(&dir, &img);
        std::fs::write(&stamp, RECIPE).expect("write the recipe stamp");
        img
    })
}

fn build_cloud_image(dir: &Path, img: &Path) {
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("mmdebstrap")
        .args([
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            "-q",
        ])
        .arg(format!("--include={PACKAGES}"))
        .arg("bookworm")
        .arg(&root)
        .env("LC_ALL", "C"));
    std::fs::write(
        root.join("etc/fstab"),
        "/dev/vda3 / ext4 rw,discard,errors=remount-ro 0 1\n",
    )
    .expect("fstab");
    let raw = dir.join("cloud.raw");
    let _ = std::fs::remove_file(&raw);
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("raw disk");
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sfdisk (install fdisk)");
    {
        use std::io::Write as _;
        let table = format!(
            "label: gpt\n\
             start=2048, size=6144, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
             start=8192, size=253952, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"efi\"\n\
             start={ROOT_START}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n"
        );
        let mut stdin = sfdisk.stdin.take().expect("stdin");
        stdin.write_all(table.as_bytes()).expect("partition table");
    }
    assert!(sfdisk.wait().expect("sfdisk").success(), "sfdisk failed");
    // sfdisk ends the root partition on a MiB boundary before the GPT's
    // backup (the disk's last 33 sectors).
    let root_kib = (DISK_BYTES / 512 - 34 - ROOT_START) / 2048 * 2048 / 2;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "cloudimg-rootfs", "-d"])
        .arg(&root)
        .arg("-E")
        .arg(format!("offset={}", ROOT_START * 512))
        .arg(&raw)
        .arg(format!("{root_kib}k")));
    let partial = img.with_extension("qcow2.partial");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&partial));
    std::fs::rename(&partial, img).expect("rename the image");
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_dir_all(&root);
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn brood(b: &Broodd, args: &[&str]) -> std::process::Output {
    b.brood().args(args).output().expect("run brood")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn console(b: &Broodd, name: &str) -> String {
    text(&brood(b, &["vm", "console", name, "--bytes", "100000"]))
}

/// Every line of the README's block, on the cloud image: it boots as it
/// is (its systemd as PID 1, found on its third partition), cloud-init
/// applies the README's user-data and the meta-data brood gives it
/// (hostname), grows the root into the size asked, brood's agent runs as
/// a systemd unit (exec works), a stop is graceful, an import replaces the
/// stopped VM's disk, and the user's file is never written.
#[test]
fn the_readme_block_boots_a_cloud_image_with_its_user_data() {
    let img = cloud_image();
    let before = sha256(img);
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    let cwd = env.run_root();
    std::os::unix::fs::symlink(img, cwd.join("debian-12-genericcloud-amd64.qcow2")).unwrap();
    std::fs::write(cwd.join("user-data.yaml"), readme_fenced(SECTION, "yaml")).unwrap();
    let lines = readme_sh_lines(SECTION);
    assert_eq!(lines.len(), 6, "{lines:?}");
    for line in &lines {
        let o = b.sh(line, Some(cwd));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if line.starts_with("brood vm create") {
            let p = b.ok("GET", "/v1/partitions/deb12", None);
            assert_eq!(p["run_state"], "running", "{p}");
            let boot = &p["configs"]["default"]["boot_disk"];
            assert_eq!(
                (&boot["size_gib"], &boot["agent"]),
                (&json!(3), &json!(true)),
                "{p}"
            );
        }
        if line.starts_with("brood vm exec deb12 'cloud-init") {
            // It prints a dot a second while it waits.
            assert!(stdout.trim().ends_with("status: done"), "{stdout}");
        }
        if line.starts_with("brood vm exec deb12 'hostname") {
            assert_eq!(stdout, "deb12\nhello from cloud-init\n");
            running_checks(&b);
        }
        if line.starts_with("brood vm stop") {
            let p = b.ok("GET", "/v1/partitions/deb12", None);
            assert_eq!(p["last_exit"], "guest powered off", "{p}");
        }
    }
    b.verify_ok();
    assert_eq!(sha256(img), before, "the user's image was written");
    let disks = std::fs::read_dir(env.run_root().join("data/disks"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(disks, 0, "a deleted VM left its disks");
    drop(b);
    env.assert_clean();
}

/// What the running cloud guest is: systemd as PID 1 on the image's root
/// partition, brood's agent its unit, the disk grown to 3 GiB and its root
/// file system with it.
fn running_checks(b: &Broodd) {
    let (code, o, e) = b.exec(
        "deb12",
        "cat /proc/1/comm; systemctl is-active brood-agent; cat /sys/block/vda/size; \
         findmnt -n -o SOURCE /; df -B1M --output=size / | tail -1",
    );
    assert_eq!(code, 0, "{e}");
    let lines: Vec<&str> = o.lines().map(str::trim).collect();
    assert_eq!(
        lines.get(..4),
        Some(&["systemd", "active", "6291456", "/dev/vda3"][..]),
        "{o}"
    );
    // growpart and resize2fs grew the root file system past its 1.9 GiB.
    let root_mib: u64 = lines.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(root_mib > 2500, "root is {root_mib} MiB:\n{o}");
    let log = console(b, "deb12");
    assert!(
        log.contains("found the root file system on /dev/vda3"),
        "{log}"
    );
}

/// `--no-agent` boots the image untouched: no agent unit, so exec says at
/// once that it needs ssh instead of waiting for an agent that never comes,
/// and a stop still ends the VM (ACPI, else a kill at the deadline).
#[test]
fn a_disk_image_without_the_agent_boots_and_exec_says_to_use_ssh() {
    let img = cloud_image();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    let out = brood(
        &b,
        &[
            "vm",
            "create",
            "bare",
            "--disk-image",
            img.to_str().unwrap(),
            "--no-agent",
            "--memory",
            "512M",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The image's own systemd takes over from brood's initramfs.
    let booted = wait_until(Duration::from_secs(120), || {
        let log = console(&b, "bare");
        log.contains("found the root file system on /dev/vda3") && log.contains("systemd[1]")
    });
    assert!(booted, "systemd did not start:\n{}", console(&b, "bare"));
    let out = brood(&b, &["vm", "exec", "bare", "true"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ssh"), "{}", text(&out));
    // Its agent is not its init: no fork point, so no template.
    let out = brood(&b, &["template", "create", "bare"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("fork point"), "{}", text(&out));
    let out = brood(&b, &["vm", "stop", "bare", "--timeout", "20"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = brood(&b, &["vm", "delete", "bare"]);
    assert!(out.status.success(), "{}", text(&out));
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

/// Bad input is refused with the cause and leaves nothing: a file that is
/// not of the format given, an image with a backing file (a host path), an
/// image larger than the disk, a start before any import, a define that
/// asks to start at once, and user-data over the limit.
#[test]
fn bad_disk_images_are_refused_and_leave_nothing_behind() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    let dir = env.run_root();
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let base = dir.join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("1G"));
    let backed = dir.join("backed.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&backed));
    let big = dir.join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&big)
        .arg("8G"));

    let gone = |name: &str| {
        let (s, _) = b.call("GET", &format!("/v1/partitions/{name}"), None);
        s == 404
    };
    // The CLI reads the qcow2 header of a qcow2 only.
    let out = brood(
        &b,
        &["vm", "create", "x1", "--disk-image", raw.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not a qcow2 image"), "{}", text(&out));
    assert!(gone("x1"));
    // broodd refuses a backing file; the CLI then deletes the definition.
    let out = brood(
        &b,
        &[
            "vm",
            "create",
            "x2",
            "--disk-image",
            backed.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("backing file"), "{}", text(&out));
    assert!(gone("x2"), "a failed import left its VM");
    let out = brood(
        &b,
        &[
            "vm",
            "create",
            "x3",
            "--disk-image",
            big.to_str().unwrap(),
            "--disk-size",
            "2G",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("at least 8G"), "{}", text(&out));
    let big_ud = dir.join("ud");
    std::fs::write(&big_ud, vec![b'#'; 70_000]).unwrap();
    let out = brood(
        &b,
        &[
            "vm",
            "create",
            "x4",
            "--disk-image",
            base.to_str().unwrap(),
            "--user-data",
            big_ud.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("at most 65536"), "{}", text(&out));

    // The API itself: a define with start, then uploads that are refused.
    let boot = json!({"size_gib": 1});
    let (s, v) = b.call(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "x5", "configs": {"a": {"boot_disk": boot}}, "start": true})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PUT its image"),
        "{v}"
    );
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "x5", "configs": {"a": {"boot_disk": boot}}})),
    );
    let (s, v) = b.call("POST", "/v1/partitions/x5/start", Some(&json!({})));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no boot disk yet"),
        "{v}"
    );
    let put = |format: &str, file: &Path| {
        let body = std::fs::read(file).unwrap();
        let (s, t) = http(
            &b.socket(),
            "PUT",
            &format!("/v1/partitions/x5/boot-disk?format={format}"),
            Some(&b.token()),
            Some(std::str::from_utf8(&body).unwrap_or("\u{1}not utf-8")),
            Some("application/octet-stream"),
        );
        (
            s,
            serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t)),
        )
    };
    // Zeros are not a qcow2 image.
    let (s, v) = put("qcow2", &raw);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a qcow2 image"),
        "{v}"
    );
    let (s, v) = put("vmdk", &raw);
    assert_eq!(s, 400, "{v}");
    // A raw image is what it says: 1 MiB of zeros is a 1 MiB disk.
    let (s, v) = put("raw", &raw);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["image_virtual_bytes"], 1 << 20, "{v}");
    assert_eq!(v["size_gib"], 1, "{v}");
    let disk_dir = dir.join("data/disks");
    let files: Vec<String> = std::fs::read_dir(&disk_dir)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["image.root.qcow2"], "scratch files left: {files:?}");
    // A brood-image VM has no boot disk to replace.
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "plain", "configs": {"a": {}}})),
    );
    let (s, v) = b.call("PUT", "/v1/partitions/plain/boot-disk?format=raw", None);
    assert_eq!(s, 409, "{v}");
    for name in ["x5", "plain"] {
        b.ok("DELETE", &format!("/v1/partitions/{name}"), None);
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
