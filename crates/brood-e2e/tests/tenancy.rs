//! Business units against the real broodd binary: kill -9 during a run of
//! approvals, then `brood ledger verify` finds the ledger consistent, and
//! every request is either decided with its capacity moved or still pending
//! with nothing moved (an approval is one transaction). No VM is booted.
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
