//! Business units against the real broodd binary: kill -9 during a run of
//! approvals, then `brood ledger verify` finds the ledger consistent, and
//! every request is either decided with its capacity moved or still pending
//! with nothing moved (an approval is one transaction); and a real VM
//! booted inside a unit's partial allocation, with the next refused.
#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::json;

const UNITS: usize = 40;

#[test]
fn kill9_during_approvals_leaves_a_consistent_ledger() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "65536", "--disk-gib", "100"]);
    for i in 0..UNITS {
        b.ok(
            "POST",
            "/v1/units",
            Some(&json!({"name": format!("u{i}"), "contact": "c"})),
        );
        b.ok(
            "POST",
            &format!("/v1/units/u{i}/requests"),
            Some(&json!({"memory_mib": 256, "vcpus": 0, "disk_gib": 1})),
        );
    }
    let (sock, token) = (b.socket(), b.token());
    let approver = std::thread::spawn(move || {
        for id in 1..=UNITS {
            let (s, _) = brood_e2e::http(
                &sock,
                "POST",
                &format!("/v1/requests/{id}/approve"),
                Some(&token),
                Some("{}"),
                None,
            );
            if s != 200 {
                break;
            }
        }
    });
    // Kill it once some approvals have gone through, others not yet.
    assert!(wait_until(Duration::from_secs(60), || {
        let (_, v) = b.call("GET", "/v1/requests?pending=true", None);
        v["items"].as_array().is_some_and(|a| a.len() < UNITS - 3)
    }));
    b.kill9();
    let _ = approver.join();
    b.restart();
    let verify = b
        .brood()
        .args(["ledger", "verify"])
        .output()
        .expect("brood ledger verify");
    assert!(
        verify.status.success(),
        "brood ledger verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let mut decided = 0;
    for i in 0..UNITS {
        let u = b.ok("GET", &format!("/v1/units/u{i}"), None);
        let r = b.ok("GET", &format!("/v1/requests/{}", i + 1), None);
        match r["state"].as_str() {
            Some("approved") => {
                decided += 1;
                assert_eq!(u["allocated"]["memory_mib"], 256, "{u}");
                assert_eq!(u["free"]["memory_mib"], 256, "{u}");
            }
            Some("pending") => assert_eq!(u["allocated"]["memory_mib"], 0, "{u}"),
            other => panic!("request {}: {other:?}", i + 1),
        }
    }
    assert!(decided > 0, "no approval went through before the kill");
    // The rest can still be approved; the ledger holds up.
    for i in 0..UNITS {
        let (s, v) = b.call(
            "POST",
            &format!("/v1/requests/{}/approve", i + 1),
            Some(&json!({})),
        );
        assert!(s == 200 || s == 409, "{s} {v}");
    }
    let ledger = b.ok("GET", "/v1/ledger", None);
    assert!(ledger.to_string().contains("unit:"), "{ledger}");
    b.verify_ok();
}

fn brood_ok(b: &Broodd, args: &[&str]) -> String {
    let o = b.brood().args(args).output().expect("run brood");
    assert!(
        o.status.success(),
        "brood {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_real_vm_inside_a_partial_allocation_and_one_refused_beyond_it() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    brood_ok(
        &b,
        &["unit", "register", "eng", "--contact", "eng@example.com"],
    );
    brood_ok(
        &b,
        &["unit", "register", "ops", "--contact", "ops@example.com"],
    );
    brood_ok(
        &b,
        &[
            "unit",
            "request",
            "eng",
            "--vcpus",
            "2",
            "--memory",
            "2048",
            "--nics",
            "1",
            "--network",
            "user",
        ],
    );
    // 256 MiB of guest memory and QEMU's 128: one VM, in part of what eng asked.
    brood_ok(
        &b,
        &["unit", "approve", "1", "--vcpus", "1", "--memory", "384"],
    );
    brood_ok(
        &b,
        &[
            "user",
            "create",
            "alice",
            "--unit",
            "eng",
            "--role",
            "unit-user",
        ],
    );
    brood_ok(
        &b,
        &[
            "user",
            "create",
            "olga",
            "--unit",
            "ops",
            "--role",
            "unit-user",
        ],
    );
    let alice = brood_ok(&b, &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let olga = brood_ok(&b, &["token", "create", "--user", "olga"])
        .trim()
        .to_owned();
    brood_ok(
        &b,
        &[
            "--token", &alice, "vm", "create", "w1", "--memory", "256", "--vcpus", "1",
        ],
    );
    let out = brood_ok(&b, &["--token", &alice, "vm", "exec", "w1", "echo inside"]);
    assert!(out.contains("inside"), "{out}");
    let o = b
        .brood()
        .args([
            "--token", &alice, "vm", "create", "w2", "--memory", "256", "--vcpus", "1",
        ])
        .output()
        .expect("run brood");
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unit's allocation") && err.contains("brood unit request"),
        "{err}"
    );
    let o = b
        .brood()
        .args(["--token", &olga, "vm", "show", "w1"])
        .output()
        .expect("run brood");
    assert_eq!(o.status.code(), Some(125), "another unit's VM is not there");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no partition named"));
    let u: serde_json::Value =
        serde_json::from_str(&brood_ok(&b, &["-o", "json", "unit", "show", "eng"])).expect("json");
    assert_eq!(u["used"]["vcpus"], 1, "{u}");
    brood_ok(&b, &["vm", "delete", "w1", "--force"]);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
