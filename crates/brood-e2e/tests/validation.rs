//! Issue 8 item 6 against a real broodd: the exact values the issue found
//! accepted (or answered with a 500) get a 400 that names the field and
//! its bound, and leave nothing behind. No VM boots: every one of them is
//! refused before anything is made.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use brood_e2e::{Broodd, TestEnv};
use serde_json::{Value, json};

fn config(extra: Value) -> Value {
    let mut c = json!({"memory_mib": 256});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({"name": "bad", "configs": {"default": c}})
}

/// Posts `body` to `path` and returns the error message of the 400 it must get.
fn refused(b: &Broodd, path: &str, body: &Value) -> String {
    let (status, v) = b.call("POST", path, Some(body));
    assert_eq!(status, 400, "{path} {body} -> {status}: {v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_issues_bad_values_get_a_400_naming_the_field() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);

    // memory_limit_mib shifted without a check: 2^44 MiB was a limit of 0,
    // 2^44 + 300 MiB one of 300 MiB.
    for m in [17_592_186_044_416u64, 17_592_186_044_716, u64::MAX] {
        let e = refused(
            &b,
            "/v1/partitions",
            &config(json!({"policy": {"memory_limit_mib": m}})),
        );
        assert!(e.contains("policy.memory_limit_mib"), "{e}");
        assert!(
            e.contains(&format!("{m} MiB must be between 64 and 8388608")),
            "{e}"
        );
    }

    // cpu_cap_pct had no bound.
    let e = refused(
        &b,
        "/v1/partitions",
        &config(json!({"policy": {"cpu_cap_pct": u32::MAX}})),
    );
    assert!(e.contains("policy.cpu_cap_pct"), "{e}");
    let e = refused(
        &b,
        "/v1/partitions",
        &config(json!({"vcpus": 1, "policy": {"cpu_cap_pct": 150}})),
    );
    assert!(e.contains("more than its 1 vCPUs can use (100%)"), "{e}");

    // 70 disks on microvm could never start.
    let disks: Vec<Value> = (0..70)
        .map(|i| json!({"name": format!("d{i}"), "size_gib": 1}))
        .collect();
    let e = refused(&b, "/v1/partitions", &config(json!({"disks": disks})));
    assert!(e.contains("70 disks and 0 NICs"), "{e}");
    assert!(e.contains("at most 22 disks and NICs"), "{e}");

    // A network that is a path: refused as a name, and the answer is the
    // same whether the directory it points at exists or not.
    let nic = |n: &str| config(json!({"nics": [{"network": n}]}));
    let present = refused(&b, "/v1/partitions", &nic("../../tmp"));
    let absent = refused(&b, "/v1/partitions", &nic("../../tmp/no-such-dir-x"));
    assert!(
        present.contains("must be `user`, `user-unrestricted` or the name of a Linux bridge"),
        "{present}"
    );
    assert_eq!(
        present.replace("../../tmp", "P"),
        absent.replace("../../tmp/no-such-dir-x", "P"),
        "the answer must not tell whether a host directory exists"
    );

    // Numbers that do not fit their field's type name the field too.
    let e = refused(&b, "/v1/partitions", &config(json!({"vcpus": 1u64 << 40})));
    assert!(e.contains("configs.default.vcpus"), "{e}");
    let e = refused(&b, "/v1/partitions", &config(json!({"memory_mib": -1})));
    assert!(e.contains("configs.default.memory_mib"), "{e}");

    // Every other field: one bad value each.
    let e = refused(
        &b,
        "/v1/partitions",
        &config(json!({"memory_mib": u64::MAX})),
    );
    assert!(e.contains("memory_mib"), "{e}");
    let e = refused(&b, "/v1/partitions", &config(json!({"zones": ["../etc"]})));
    assert!(e.contains("zone"), "{e}");
    let e = refused(
        &b,
        "/v1/partitions",
        &config(json!({"policy": {"priority": i32::MAX}})),
    );
    assert!(e.contains("policy.priority"), "{e}");
    let e = refused(
        &b,
        "/v1/identity-pools",
        &json!({"name": "../x", "kind": "identity", "values": ["a"]}),
    );
    assert!(e.contains("pool name"), "{e}");

    // Exec fields are checked before the partition is even looked at.
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "idle", "configs": {"default": {}}})),
    );
    let e = refused(
        &b,
        "/v1/partitions/idle/exec",
        &json!({"command": "true", "timeout_ms": u64::MAX}),
    );
    assert!(e.contains("timeout_ms"), "{e}");
    let e = refused(
        &b,
        "/v1/partitions/idle/exec",
        &json!({"command": "true", "ready_timeout_ms": u64::MAX}),
    );
    assert!(e.contains("ready_timeout_ms"), "{e}");

    // Nothing refused was made, and the ledger is whole.
    let list = b.ok("GET", "/v1/partitions", None);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["idle"]);
    assert_eq!(b.ok("GET", "/v1/identity-pools", None)["items"], json!([]));
    b.verify_ok();
    assert!(
        !b.log().contains("panicked"),
        "broodd panicked:\n{}",
        b.log()
    );
}

/// The device bound is real, not a guess: a VM with as many disks and NICs
/// as a configuration may have (22 on microvm) boots and its guest sees
/// every one of them, the last ones on the second IOAPIC's pins.
#[test]
fn the_most_devices_a_config_allows_all_reach_the_guest() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024", "--disk-gib", "64"]);
    let disks: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("d{i}"), "size_gib": 1}))
        .collect();
    let nics = vec![json!({"network": "user"}); 2];
    let mut req = config(json!({"disks": disks, "nics": nics}));
    req["name"] = json!("full");
    req["start"] = json!(true);
    b.ok("POST", "/v1/partitions", Some(&req));
    let (code, out, err) = b.exec(
        "full",
        "ls /sys/block | grep -c '^vd'; ls /sys/class/net | grep -c '^eth'",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "20\n2\n");
    b.ok("POST", "/v1/partitions/full/kill", None);
}
