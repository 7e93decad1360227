//! Debian guests on real VMs: `brood image build --rootfs debian` with
//! packages that are not in the default image (dnsmasq and curl, which have
//! shared libraries, and iproute2 for the identity checks), booting it with
//! `brood run --image` and through broodd (`image` in the configuration),
//! the fork checks of `fork.rs` on it (identities, disks, the image's
//! independent and dependent services), a second build that is not rebuilt,
//! and bad input that leaves no image behind.
//!
//! The image is built ONCE per test run: into `<target>/e2e-images` (beside
//! the brood binary under test, so a fresh CI clone builds it afresh), by
//! the first test that needs it; brood-image's lock on the name makes the
//! others (in this binary or another) wait and then find it up to date.
//! broodd tests link it into their own data directory.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use brood_e2e::{Bridge, Broodd, TestEnv, brood_bin};
use serde_json::{Value, json};

/// The image's name, and the packages it is built with.
const IMAGE: &str = "deb";
/// (systemd-sysv for `--init systemd`; nat.rs builds the same image.)
const PACKAGES: [&str; 4] = ["dnsmasq", "curl", "iproute2", "systemd-sysv"];

/// The data directory the shared image is built in.
fn cache_dir() -> PathBuf {
    brood_bin().parent().expect("target dir").join("e2e-images")
}

/// The image's service scripts (those of `fork.rs`), written into the data
/// directory with fixed contents and modes so the fingerprint is stable.
fn services(data: &Path) -> [PathBuf; 2] {
    use std::os::unix::fs::PermissionsExt;
    let dir = data.join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let indep = dir.join("10-warm");
    let dep = dir.join("20-role");
    std::fs::write(&indep, "#!/bin/sh\necho independent > /tmp/indep-ran\n").unwrap();
    std::fs::write(
        &dep,
        "#!/bin/sh\necho \"$BROOD_HOSTNAME $BROOD_VALUE_ROLE\" > /tmp/dep-ran\n",
    )
    .unwrap();
    for f in [&indep, &dep] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    [indep, dep]
}

fn build_cmd(data: &Path) -> Command {
    let [indep, dep] = services(data);
    let mut c = Command::new(brood_bin());
    c.arg("--data-dir").arg(data).args([
        "image", "build", "--name", IMAGE, "--rootfs", "debian", "-o", "json",
    ]);
    for p in PACKAGES {
        c.args(["--package", p]);
    }
    c.arg("--independent-service")
        .arg(indep)
        .arg("--dependent-service")
        .arg(dep);
    c
}

/// Builds the shared image (once per process; other processes wait on the
/// build's lock) and returns its directory.
fn image_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let data = cache_dir();
        std::fs::create_dir_all(&data).expect("cache dir");
        let out = build_cmd(&data).output().expect("run brood image build");
        assert!(
            out.status.success(),
            "brood image build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        data.join("images").join(IMAGE)
    })
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(image_dir().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest JSON")
}

fn sha256(path: &Path) -> String {
    let out = brood_e2e::run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A broodd whose data directory has a copy of the shared image (a copy,
/// not a link: broodd hard-links a partition's files to its image's, which
/// needs them on the data directory's file system).
fn broodd(env: &TestEnv, extra: &[&str]) -> Broodd {
    let dir = image_dir();
    let b = Broodd::start(env, extra);
    let images = b.data.join("images");
    std::fs::create_dir_all(&images).unwrap();
    brood_e2e::run(
        Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(images.join(IMAGE)),
    );
    b
}

/// What `owner` holds in the ledger.
fn holds(b: &Broodd, owner: &str) -> Value {
    let l = b.ok("GET", "/v1/ledger", None);
    l["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == owner)
        .map(|o| o["holds"].clone())
        .unwrap_or(Value::Null)
}

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}");
    out
}

#[test]
fn the_image_lists_its_packages_runs_them_and_is_not_rebuilt() {
    let dir = image_dir();
    let m = manifest();
    let rootfs = &m["rootfs"];
    assert_eq!(rootfs["suite"], "bookworm");
    assert_eq!(rootfs["init"], "brood-agent");
    let packages: Vec<(&str, &str)> = rootfs["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["package"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
            )
        })
        .collect();
    for want in PACKAGES.iter().chain(&["kmod", "libc6", "apt", "libcurl4"]) {
        assert!(
            packages.iter().any(|(p, v)| p == want && !v.is_empty()),
            "{want} is not in the manifest's packages"
        );
    }
    assert!(packages.len() > 80, "only {} packages", packages.len());
    for key in ["kernel", "initrd", "root_disk"] {
        let o = &m["outputs"][key];
        let file = dir.join(o["file"].as_str().unwrap());
        assert_eq!(sha256(&file), o["sha256"].as_str().unwrap(), "{key}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), o["size_bytes"]);
    }

    // Built again with the same inputs: nothing is written.
    let root = dir.join("root.qcow2");
    let before = std::fs::metadata(&root).unwrap();
    let out = build_cmd(&cache_dir()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["manifest"]["fingerprint"], m["fingerprint"]);
    let after = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec()),
        "the root disk was rewritten"
    );

    // list and show know it.
    let out = brood_e2e::run(
        Command::new(brood_bin())
            .arg("--data-dir")
            .arg(cache_dir())
            .args(["image", "list", "-o", "json"]),
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == IMAGE)
        .unwrap_or_else(|| panic!("{IMAGE} not listed: {list}"));
    assert_eq!(entry["rootfs"], "debian");
    let out = brood_e2e::run(
        Command::new(brood_bin())
            .arg("--data-dir")
            .arg(cache_dir())
            .args(["image", "show", IMAGE]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dnsmasq ") && text.contains("root.qcow2"),
        "{text}"
    );

    // Boot it and run the packaged programs: dnsmasq serves a name that
    // the resolver (through /etc/resolv.conf) finds; curl reads a file.
    let env = TestEnv::new();
    let script = "set -e; cat /etc/debian_version; \
        dnsmasq --port=53 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
          --address=/brood.test/10.1.2.3 --pid-file=/run/dnsmasq.pid; \
        echo nameserver 127.0.0.1 > /etc/resolv.conf; getent hosts www.brood.test; \
        curl -s file:///etc/hostname; dpkg-query -W -f '${Package}\\n' dnsmasq curl; \
        cat /proc/1/cmdline | tr '\\0' ' '; echo; findmnt -n -o SOURCE,FSTYPE /";
    let out = env
        .brood()
        .arg("--data-dir")
        .arg(cache_dir())
        .args(["run", "--image", IMAGE, "--memory", "384", "--exec", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("12."), "{stdout}");
    assert!(
        lines[1].starts_with("10.1.2.3") && lines[1].contains("www.brood.test"),
        "{stdout}"
    );
    assert_eq!(lines[2], "brood");
    assert_eq!(&lines[3..5], ["curl", "dnsmasq"]);
    assert_eq!(lines[5].trim(), "/sbin/brood-agent init");
    assert_eq!(
        lines[6].split_whitespace().collect::<Vec<_>>(),
        ["/dev/vda", "ext4"]
    );
    // The README's example.
    let out = brood_e2e::run(
        env.brood()
            .arg("--data-dir")
            .arg(cache_dir())
            .args(["run", "--image", IMAGE, "--exec"])
            .arg("cat /etc/debian_version; dpkg-query -W curl"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("12.") && text.contains("\ncurl\t"),
        "{text}"
    );
    // The VM wrote its root disk (resolv.conf) through an overlay only.
    assert_eq!(
        sha256(&root),
        m["outputs"]["root_disk"]["sha256"].as_str().unwrap()
    );
    env.assert_clean();
}

/// `--init systemd`: the image's own systemd is PID 1 and brood's agent is
/// its unit (exec, a graceful stop), the image's packages work, and what
/// cannot be is refused: a fork (the agent holds no fork point there), and
/// systemd on the default image or on an image without systemd-sysv.
#[test]
fn a_debian_guest_under_systemd_runs_the_agent_as_its_unit() {
    let env = TestEnv::new();
    let b = broodd(&env, &[]);
    brood_e2e::run(b.brood().args([
        "vm", "create", "sd", "--image", IMAGE, "--init", "systemd", "--memory", "384",
    ]));
    let p = b.ok("GET", "/v1/partitions/sd", None);
    assert_eq!(p["configs"]["default"]["init"], "systemd", "{p}");
    let out = exec(
        &b,
        "sd",
        "cat /proc/1/comm; systemctl is-active brood-agent; findmnt -n -o SOURCE /; \
         dnsmasq --version | head -1 | cut -d' ' -f1-2",
    );
    assert_eq!(out, "systemd\nactive\n/dev/vda\nDnsmasq version\n", "{out}");
    let o = b
        .brood()
        .args(["template", "create", "sd"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("fork point"), "{msg}");
    brood_e2e::run(b.brood().args(["vm", "stop", "sd"]));
    let p = b.ok("GET", "/v1/partitions/sd", None);
    assert_eq!(p["last_exit"], "guest powered off", "{p}");
    brood_e2e::run(b.brood().args(["vm", "delete", "sd"]));
    // The default image's init is the agent: systemd is refused at define.
    let (s, e) = b.call(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "x", "configs": {"default": {"init": "systemd"}}})),
    );
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("root disk"),
        "{e}"
    );
    b.verify_ok();
}

#[test]
fn a_debian_partition_forks_children_with_their_own_identities() {
    let env = TestEnv::new();
    let br = Bridge::new("d");
    let b = broodd(&env, &["--memory-mib", "4096", "--vcpu-overcommit", "16"]);
    let (s, e) = b.call(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "bad", "configs": {"default": {"image": "no-such-image"}}})),
    );
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-image"),
        "{e}"
    );
    // The README's command.
    let nic = br.name.clone();
    brood_e2e::run(b.brood().args([
        "vm", "create", "deb", "--image", IMAGE, "--memory", "384", "--disk", "data:1", "--nic",
        &nic,
    ]));
    let p = b.ok("GET", "/v1/partitions/deb", None);
    assert_eq!(p["configs"]["default"]["image"], IMAGE, "{p}");
    let out = exec(
        &b,
        "deb",
        "cat /etc/debian_version; findmnt -n -o SOURCE /; echo persisted > /root/kept; \
         echo from-the-template > /tmp/marker; printf template > /dev/vdb; sync; dnsmasq --version | head -1",
    );
    assert!(
        out.contains("/dev/vda") && out.contains("Dnsmasq version"),
        "{out}"
    );
    // Stop and start keep the root overlay, even with the image deleted
    // (the partition boots its own links to the image's files); save and
    // restore keep memory.
    brood_e2e::run(b.brood().args(["image", "delete", IMAGE]));
    b.ok("POST", "/v1/partitions/deb/stop", None);
    b.ok("POST", "/v1/partitions/deb/start", None);
    assert_eq!(exec(&b, "deb", "cat /root/kept"), "persisted\n");
    exec(&b, "deb", "echo from-the-template > /tmp/marker");
    b.ok("POST", "/v1/partitions/deb/save", None);
    b.ok("POST", "/v1/partitions/deb/restore", None);
    assert_eq!(exec(&b, "deb", "cat /tmp/marker"), "from-the-template\n");
    // The root overlay is charged with the data disk, at its virtual size
    // (the image's --size), and `vm show` lists it first.
    let p = b.ok("GET", "/v1/partitions/deb", None);
    assert_eq!(p["disks"][0]["name"], "image.root", "{p}");
    let root_gib = p["disks"][0]["size_gib"].as_u64().unwrap();
    assert!(root_gib >= 1, "{p}");
    assert_eq!(holds(&b, "deb")["disk_gib"].as_u64(), Some(1 + root_gib));
    let show =
        String::from_utf8_lossy(&brood_e2e::run(b.brood().args(["vm", "show", "deb"])).stdout)
            .into_owned();
    assert!(
        show.contains(&format!("image.root {root_gib} GiB")),
        "{show}"
    );
    // A template of it that keeps it running owns its root chain: the
    // image is deleted and the partition's own links are all there is.
    let t = b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "deb", "keep": true, "name": "deb-live", "warm": 0})),
    );
    assert!(t["downtime_ms"].as_u64().is_some(), "{t}");
    let c = b.ok(
        "POST",
        "/v1/templates/deb-live/fork",
        Some(&json!({"count": 1})),
    );
    let live_kid = c["children"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(exec(&b, &live_kid, "cat /root/kept"), "persisted\n");
    assert_eq!(
        holds(&b, &live_kid)["disk_gib"].as_u64(),
        Some(root_gib),
        "a child charges its own root overlay"
    );
    assert_eq!(exec(&b, "deb", "cat /root/kept"), "persisted\n");
    b.verify_ok();
    b.ok("DELETE", "/v1/templates/deb-live?cascade=true", None);

    let values: Vec<String> = (0..4).map(|i| format!("domain-{i:02}")).collect();
    b.ok(
        "POST",
        "/v1/identity-pools",
        Some(&json!({"name": "doms", "kind": "identity", "values": values})),
    );
    b.ok("POST", "/v1/identity-pools", Some(&json!({"name": "net", "kind": "ipv4", "range": "10.89.0.10-10.89.0.20", "prefix": 24, "gateway": "10.89.0.1"})));
    // The README's commands.
    brood_e2e::run(b.brood().args(["template", "create", "deb", "--warm", "1"]));
    let out = brood_e2e::run(b.brood().args([
        "fork",
        "deb",
        "-n",
        "3",
        "--identity-pool",
        "doms",
        "--ip-pool",
        "net",
        "--set",
        "role=db",
        "-o",
        "json",
    ]));
    let children: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(children.len(), 3);
    let mut seen: [HashSet<String>; 6] = Default::default();
    for c in &children {
        assert_eq!(c["status"], "ready", "{c}");
        let name = c["name"].as_str().unwrap();
        let out = exec(
            &b,
            name,
            "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk '{print $4}'; \
             cat /etc/machine-id; cat /etc/brood/identity; echo; head -c 1048576 /dev/urandom | md5sum; \
             cat /tmp/marker; cat /root/kept; cat /tmp/indep-ran /tmp/dep-ran",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 10, "{out}");
        // The image's services: the independent one ran in the parent
        // before the fork, the dependent one in this child with its identity.
        assert_eq!(lines[8], "independent");
        assert_eq!(lines[9], format!("{name} db"));
        assert_eq!(lines[0], name);
        assert_eq!(lines[1], c["mac"].as_str().unwrap());
        assert_eq!(lines[2], c["ipv4"].as_str().unwrap());
        assert_eq!(lines[4], c["identity"].as_str().unwrap());
        assert_eq!(lines[6], "from-the-template");
        assert_eq!(lines[7], "persisted");
        for (set, v) in seen.iter_mut().zip(&lines[..6]) {
            assert!(set.insert(v.to_string()), "{v} appears in two children");
        }
    }
    // Root disks: each child writes its own overlay.
    for c in &children {
        let name = c["name"].as_str().unwrap();
        exec(&b, name, &format!("echo {name} > /root/who; sync"));
    }
    for c in &children {
        let name = c["name"].as_str().unwrap();
        assert_eq!(exec(&b, name, "cat /root/who"), format!("{name}\n"));
    }
    // The image itself never changed.
    assert_eq!(
        sha256(&image_dir().join("root.qcow2")),
        manifest()["outputs"]["root_disk"]["sha256"]
            .as_str()
            .unwrap()
    );
    b.verify_ok();
    b.ok("DELETE", "/v1/templates/deb?cascade=true", None);
    b.ok("DELETE", "/v1/identity-pools/doms", None);
    b.ok("DELETE", "/v1/identity-pools/net", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

/// Runs a failing build in a fresh data directory and returns its stderr;
/// checks that nothing is left under the images directory but the lock.
fn failing_build(args: &[&str], path: Option<&str>) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut c = Command::new(brood_bin());
    c.arg("--data-dir")
        .arg(data.path())
        .args(["image", "build", "--name", "bad", "--rootfs", "debian"])
        .args(args);
    if let Some(p) = path {
        c.env("PATH", p);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    let left: Vec<String> = std::fs::read_dir(data.path().join("images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{args:?} left {left:?}");
    stderr
}

#[test]
fn bad_input_names_the_cause_and_leaves_no_image() {
    let e = failing_build(&["--package", "brood-no-such-package"], None);
    assert!(
        e.contains("package brood-no-such-package is not in Debian bookworm"),
        "{e}"
    );
    let e = failing_build(&["--suite", "nosuchsuite"], None);
    assert!(e.contains("suite nosuchsuite does not exist"), "{e}");
    // Nothing listens on port 9 of the loopback: the mirror is unreachable.
    let e = failing_build(&["--mirror", "http://127.0.0.1:9/debian"], None);
    assert!(
        e.contains("cannot reach the Debian mirror http://127.0.0.1:9/debian"),
        "{e}"
    );
    let e = failing_build(&["--package", "Not_A_Name"], None);
    assert!(e.contains("--package \"Not_A_Name\" is not valid"), "{e}");
    // A PATH without mmdebstrap (the agent is found beside brood).
    let empty = tempfile::tempdir().unwrap();
    let e = failing_build(&[], Some(empty.path().to_str().unwrap()));
    assert!(
        e.contains("mmdebstrap is not installed; run `apt-get install -y mmdebstrap`"),
        "{e}"
    );
    let e = failing_build(&["--size", "0"], None);
    assert!(e.contains("--size"), "{e}");

    // A full disk: a data directory on a 48 MiB tmpfs fills up while
    // mmdebstrap downloads and unpacks.
    let small = tempfile::tempdir().unwrap();
    brood_e2e::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
            .arg(small.path()),
    );
    let out = Command::new(brood_bin())
        .arg("--data-dir")
        .arg(small.path())
        .args(["image", "build", "--name", "full", "--rootfs", "debian"])
        .output()
        .unwrap();
    let left: Vec<String> = std::fs::read_dir(small.path().join("images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    let _ = Command::new("umount").arg(small.path()).status();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("is full"), "{e}");
    assert!(left.is_empty(), "a full disk left {left:?}");

    // A named image is listed until deleted; the default one is kept.
    let data = tempfile::tempdir().unwrap();
    let brood = |args: &[&str]| {
        Command::new(brood_bin())
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        brood(&["image", "build", "--name", "small"])
            .status
            .success()
    );
    let list = String::from_utf8(brood(&["image", "list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with("small ")), "{list}");
    assert!(brood(&["image", "delete", "small"]).status.success());
    let list = String::from_utf8(brood(&["image", "list"]).stdout).unwrap();
    assert!(!list.contains("small"), "{list}");
    let out = brood(&["image", "delete", "default"]);
    assert!(!out.status.success());
    let out = brood(&["image", "delete", "small"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no image named small"), "{e}");
}
