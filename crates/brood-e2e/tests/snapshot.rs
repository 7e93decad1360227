//! Named snapshots on real VMs: a live snapshot puts back disk and memory
//! of one instant (and the VM goes on running after it is taken); a
//! snapshot of a stopped VM puts back its disks; bad names, duplicates and
//! deleting under a running VM are refused; nothing is left afterwards.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use brood_e2e::{Broodd, TestEnv, run};
use serde_json::{Value, json};

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}");
    out
}

fn cli(b: &Broodd, args: &[&str]) -> (bool, String, String) {
    let out = b.brood().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn qemu_img_snapshots(b: &Broodd, uuid: &str) -> String {
    let disk = b.data.join(format!("disks/{uuid}/d.qcow2"));
    let out = run(std::process::Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(disk));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn snapshots_put_back_disk_and_memory() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let def = json!({"name": "snap", "configs": {"default": {"memory_mib": 256, "disks": [{"name": "d", "size_gib": 1}]}}, "start": true});
    let p = b.ok("POST", "/v1/partitions", Some(&def));
    let uuid = p["uuid"].as_str().unwrap().to_string();
    exec(
        &b,
        "snap",
        "printf one > /dev/vda; sync; echo mem-one > /tmp/m",
    );

    // A live snapshot, through the CLI; the VM runs on.
    let (ok, out, err) = cli(
        &b,
        &["vm", "snapshot", "create", "snap", "s1", "-o", "json"],
    );
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["name"], "s1");
    assert_eq!(s["memory"], true);
    assert_eq!(s["taken_while"], "running");
    assert_eq!(
        b.ok("GET", "/v1/partitions/snap", None)["run_state"],
        "running"
    );
    assert!(qemu_img_snapshots(&b, &uuid).contains("s1"));
    exec(
        &b,
        "snap",
        "printf two > /dev/vda; sync; echo mem-two > /tmp/m",
    );
    assert_eq!(exec(&b, "snap", "head -c 3 /dev/vda"), "two");

    // Refusals: a bad name, a taken name, deleting under the running VM,
    // an unknown snapshot; none of them changes anything.
    let (s, e) = b.call(
        "POST",
        "/v1/partitions/snap/snapshots",
        Some(&json!({"name": "../x"})),
    );
    assert_eq!(s, 400, "{e}");
    let (s, e) = b.call(
        "POST",
        "/v1/partitions/snap/snapshots",
        Some(&json!({"name": "s1"})),
    );
    assert_eq!(s, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already has a snapshot s1"),
        "{e}"
    );
    let (s, e) = b.call("DELETE", "/v1/partitions/snap/snapshots/s1", None);
    assert_eq!(s, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop it first"),
        "{e}"
    );
    let (s, e) = b.call("POST", "/v1/partitions/snap/snapshots/nope/revert", None);
    assert_eq!(s, 404, "{e}");
    let (ok, _, err) = cli(&b, &["vm", "snapshot", "revert", "snap", "nope"]);
    assert!(!ok && err.contains("no snapshot nope"), "{err}");

    // Revert: the disk and the memory of the instant it was taken.
    let (ok, _, err) = cli(&b, &["vm", "snapshot", "revert", "snap", "s1"]);
    assert!(ok, "{err}");
    assert_eq!(
        b.ok("GET", "/v1/partitions/snap", None)["run_state"],
        "running"
    );
    assert_eq!(exec(&b, "snap", "cat /tmp/m"), "mem-one\n");
    assert_eq!(exec(&b, "snap", "head -c 3 /dev/vda"), "one");
    b.verify_ok();

    // A snapshot of the stopped VM holds its disks only.
    b.ok("POST", "/v1/partitions/snap/stop", Some(&json!({})));
    let s = b.ok(
        "POST",
        "/v1/partitions/snap/snapshots",
        Some(&json!({"name": "cold"})),
    );
    assert_eq!(s["memory"], false);
    assert_eq!(s["taken_while"], "stopped");
    b.ok("POST", "/v1/partitions/snap/start", None);
    exec(&b, "snap", "printf thr > /dev/vda; sync");
    b.ok("POST", "/v1/partitions/snap/snapshots/cold/revert", None);
    assert_eq!(
        b.ok("GET", "/v1/partitions/snap", None)["run_state"],
        "stopped"
    );
    b.ok("POST", "/v1/partitions/snap/start", None);
    assert_eq!(exec(&b, "snap", "head -c 3 /dev/vda"), "one");
    assert_eq!(
        exec(&b, "snap", "cat /tmp/m 2>/dev/null || echo none"),
        "none\n"
    );

    let (ok, out, err) = cli(&b, &["vm", "snapshot", "list", "snap"]);
    assert!(ok, "{err}");
    assert!(out.contains("s1") && out.contains("cold"), "{out}");
    let l = b.ok("GET", "/v1/partitions/snap/snapshots", None);
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "cold"]);

    // Deleting them takes them off the disk too.
    b.ok("POST", "/v1/partitions/snap/stop", Some(&json!({})));
    let (s, e) = b.call("DELETE", "/v1/partitions/snap/snapshots/s1", None);
    assert_eq!(s, 204, "{e}");
    let (ok, _, err) = cli(&b, &["vm", "snapshot", "delete", "snap", "cold"]);
    assert!(ok, "{err}");
    assert!(
        b.ok("GET", "/v1/partitions/snap/snapshots", None)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let left = qemu_img_snapshots(&b, &uuid);
    assert!(!left.contains("s1") && !left.contains("cold"), "{left}");
    b.verify_ok();
    b.ok("DELETE", "/v1/partitions/snap", None);
    assert!(!b.data.join(format!("disks/{uuid}")).exists());
    drop(b);
    env.assert_clean();
}
