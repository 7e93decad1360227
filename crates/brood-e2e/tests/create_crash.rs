//! A define with `start: true` that broodd never finished (it was killed
//! with SIGKILL while the VM was starting) leaves nothing behind: the next
//! broodd removes the partition, as the API promises for a failed start.
#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::json;

#[test]
fn kill9_during_a_define_and_start_removes_the_partition() {
    let env = TestEnv::new();
    // A "QEMU" that never answers on QMP: the start waits in the engine's
    // handshake, with the partition recorded `starting`, long enough to
    // kill broodd in the middle.
    let fake = env.run_root().join("bin");
    std::fs::create_dir_all(&fake).unwrap();
    let qemu = fake.join("qemu-system-x86_64");
    std::fs::write(&qemu, "#!/bin/sh\nsleep 600\n").unwrap();
    brood_e2e::run(std::process::Command::new("chmod").arg("755").arg(&qemu));
    let mut b = Broodd::start_with_env(
        &env,
        &[("BROOD_QEMU", qemu.to_str().unwrap())],
        &["--memory-mib", "2048"],
    );
    let (sock, token) = (b.socket(), b.token());
    let create = std::thread::spawn(move || {
        let body = json!({"name": "half", "configs": {"default": {}}, "start": true}).to_string();
        brood_e2e::http(
            &sock,
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(&body),
            None,
        )
    });
    assert!(wait_until(Duration::from_secs(30), || {
        let (s, p) = b.call("GET", "/v1/partitions/half", None);
        s == 200 && p["run_state"] == "starting"
    }));
    let uuid = b.ok("GET", "/v1/partitions/half", None)["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    b.kill9();
    let _ = create.join();
    // The stand-in QEMU is no QEMU reconciliation would recognise: end it
    // the way a host reboot would.
    let pid_file = b.run_root().join(&uuid).join("pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let pid: i32 = pid.trim().parse().unwrap();
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    b.set_envs(&[]);
    b.restart();
    let (status, body) = b.call("GET", "/v1/partitions/half", None);
    assert_eq!(
        status, 404,
        "the half-made partition is still there: {body}"
    );
    let ledger = b.ok("GET", "/v1/ledger", None);
    let owners: Vec<&str> = ledger["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["available"], "{ledger}");
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
