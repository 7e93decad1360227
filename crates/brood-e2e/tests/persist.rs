//! Templates that survive a host reboot (`brood template create --persist`):
//! their memory and state live in the data directory, not on the tmpfs, and
//! broodd loads them at start like any other.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::PathBuf;

use brood_e2e::{Broodd, TestEnv, run};
use serde_json::json;

#[test]
fn a_persistent_template_forks_after_a_reboot() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let def = json!({"name": "keep", "configs": {"default": {"memory_mib": 256}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&def));
    let (code, _, err) = b.exec("keep", "echo from-before-the-reboot > /tmp/marker");
    assert_eq!(code, 0, "{err}");
    let out = run(b
        .brood()
        .args(["template", "create", "keep", "--persist", "--warm", "0"]));
    assert!(out.status.success(), "{out:?}");
    let tpl = b.ok("GET", "/v1/templates/keep", None);
    assert_eq!(tpl["persistent"], true, "{tpl}");
    let uuid = tpl["uuid"].as_str().unwrap().to_string();
    let dir = b.data.join("templates").join(&uuid);
    for f in ["mem", "state", "template.json"] {
        assert!(dir.join(f).is_file(), "{} has no {f}", dir.display());
    }
    let tmpfs = PathBuf::from(format!(
        "{}-templates",
        env.run_root().join("vms").display()
    ));
    assert!(
        !tmpfs.join(&uuid).exists(),
        "a persistent template keeps nothing on the tmpfs"
    );

    // A reboot: broodd stops, no QEMU is left, the tmpfs is emptied.
    b.stop();
    assert!(env.qemu_pids().is_empty(), "{:?}", env.qemu_pids());
    let _ = std::fs::remove_dir_all(&tmpfs);
    let _ = std::fs::remove_dir_all(env.run_root().join("vms"));
    b.restart();

    let r = b.ok(
        "POST",
        "/v1/templates/keep/fork",
        Some(&json!({"count": 1})),
    );
    let child = r["children"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(r["children"][0]["status"], "ready", "{r}");
    let (code, out, err) = b.exec(&child, "cat /tmp/marker");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-before-the-reboot\n");
    b.verify_ok();

    b.ok("DELETE", "/v1/templates/keep?cascade=true", None);
    assert!(!dir.exists(), "deleting the template removes its files");
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
