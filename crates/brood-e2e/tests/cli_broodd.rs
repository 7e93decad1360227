//! The `brood` CLI against a real broodd and real VMs: the fixed points
//! other tools rely on (socket and token in the data directory, `vm create`,
//! `vm exec` exit codes, `vm show -o json` fields, `ledger verify` failing
//! with a non-zero exit when an invariant breaks).

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Command;

use brood_e2e::{Broodd, TestEnv};
use serde_json::Value;

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run brood");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_drives_broodd_through_a_vm_life() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let (code, out, err) = run(b.brood().args([
        "vm", "create", "cli1", "--memory", "256", "--disk", "data:1",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(b.brood().args([
        "vm",
        "exec",
        "cli1",
        "cat /proc/version; echo oops >&2; exit 7",
    ]));
    assert_eq!(code, 7, "{err}");
    assert!(out.contains("Debian"), "{out}");
    assert_eq!(err, "oops\n");

    let (code, out, _) = run(b.brood().args(["vm", "show", "cli1", "-o", "json"]));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    for field in ["name", "uuid", "stage", "run_state", "pid", "disks"] {
        assert!(!v[field].is_null(), "vm show lacks {field}: {v}");
    }
    assert_eq!(v["run_state"], "running");
    let disk = v["disks"][0]["path"].as_str().unwrap();
    assert!(std::path::Path::new(disk).is_file(), "{disk}");
    let pid = v["pid"].as_i64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let (code, out, _) = run(b.brood().args(["vm", "list"]));
    assert_eq!(code, 0);
    assert!(out.contains("cli1") && out.contains("running"), "{out}");
    let (code, out, _) = run(b.brood().args(["ledger", "verify"]));
    assert_eq!((code, out.trim()), (0, "ok"));
    for args in [
        ["vm", "pause", "cli1"],
        ["vm", "resume", "cli1"],
        ["vm", "stop", "cli1"],
    ] {
        let (code, out, err) = run(b.brood().args(args));
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    // Refused with a one-line error and a non-zero exit.
    let (code, _, err) = run(b.brood().args(["vm", "pause", "cli1"]));
    assert_eq!(code, 125);
    assert!(
        err.starts_with("brood: error:") && err.contains("invalid_transition"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);

    // Break an invariant behind broodd's back: verify says so and exits 1.
    b.kill9();
    let db = b.data.join("ledger.db");
    let py = format!(
        "import sqlite3; c = sqlite3.connect('{}'); \
         c.execute(\"UPDATE holding SET amount = amount - 1 WHERE owner = 'available' AND kind = 'memory_mib'\"); c.commit()",
        db.display()
    );
    let status = Command::new("python3").args(["-c", &py]).status().unwrap();
    assert!(status.success());
    b.restart();
    let (code, out, _) = run(b.brood().args(["ledger", "verify"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("memory_mib"), "{out}");

    let (code, _, err) = run(b.brood().args(["vm", "delete", "cli1"]));
    assert_eq!(code, 0, "{err}");
    drop(b);
    env.assert_clean();
}
