//! An image build is a job of broodd (issue 13): `brood image build --job`
//! queues it with the heavy jobs, broodd builds the image from the host's
//! packages with its own agent, and a VM boots it; bad requests make no
//! job; a deleted image leaves its VM booting from its own links.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use brood_e2e::{Broodd, TestEnv};
use serde_json::{Value, json};

fn jobs_of(b: &Broodd, kind: &str) -> Vec<Value> {
    b.ok("GET", "/v1/jobs?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn an_image_build_is_a_heavy_job_and_its_image_boots() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    // Refused before any job: a Debian image without a name, a bad name,
    // Debian options on a busybox image.
    for body in [
        json!({"rootfs": "debian"}),
        json!({"name": "../x"}),
        json!({"name": "bb", "packages": ["curl"]}),
    ] {
        let (s, v) = b.call("POST", "/v1/images", Some(&body));
        assert_eq!(s, 400, "{body}: {v}");
    }
    assert!(jobs_of(&b, "image.build").is_empty());
    // The CLI submits it and waits for its job.
    let out = b
        .brood()
        .args(["image", "build", "--name", "bb", "--job", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    let img: Value = serde_json::from_slice(&out.stdout).expect("the image as JSON");
    assert_eq!(img["name"], "bb", "{img}");
    assert_eq!(img["rootfs"], "busybox", "{img}");
    let jobs = jobs_of(&b, "image.build");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "succeeded", "{}", jobs[0]);
    assert_eq!(jobs[0]["target"], "bb", "{}", jobs[0]);
    assert_eq!(jobs[0]["queue"], "normal", "a heavy job: {}", jobs[0]);
    assert_eq!(b.ok("GET", "/v1/images/bb", None), img);
    let list = b.ok("GET", "/v1/images", None);
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "bb"),
        "{list}"
    );
    // Up to date with its inputs: a second build is a job that finds it so.
    let again = b.ok("POST", "/v1/images", Some(&json!({"name": "bb"})));
    assert_eq!(again["fingerprint"], img["fingerprint"], "{again}");
    assert_eq!(jobs_of(&b, "image.build").len(), 2);
    // A VM boots it.
    let (s, v) = b.call(
        "POST",
        "/v1/partitions",
        Some(
            &json!({"name": "onbb", "configs": {"d": {"memory_mib": 128, "image": "bb"}},
                     "start": true}),
        ),
    );
    assert_eq!(s, 201, "{v}\n{}", b.log());
    let (code, release, err) = b.exec("onbb", "uname -r");
    assert_eq!(code, 0, "{err}");
    assert_eq!(release.trim(), img["kernel"].as_str().unwrap());
    // Deleted (a job too), the image is gone; its VM still boots.
    assert_eq!(b.call("DELETE", "/v1/images/bb", None).0, 204);
    assert_eq!(b.call("GET", "/v1/images/bb", None).0, 404);
    assert_eq!(jobs_of(&b, "image.delete").len(), 1);
    let (s, v) = b.call("DELETE", "/v1/images/default", None);
    assert!(s == 400 || s == 404, "{s} {v}");
    b.ok("POST", "/v1/partitions/onbb/stop", None);
    b.ok("POST", "/v1/partitions/onbb/start", None);
    let (code, _, err) = b.exec("onbb", "true");
    assert_eq!(code, 0, "{err}");
    b.ok("POST", "/v1/partitions/onbb/stop", None);
    b.ok("DELETE", "/v1/partitions/onbb", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
