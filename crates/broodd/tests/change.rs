#![allow(clippy::tests_outside_test_module)]
//! Changing a partition after it is defined, against the fake engine:
//! refusals past a unit's allocation that change nothing, a pending change
//! that survives a broodd restart and blocks a template of the VM until
//! the next start applies it, and NICs named by MAC or index. (Real VMs:
//! `crates/brood-e2e/tests/change.rs`.)

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_ledger::Resources;
use brood_testkit::{TOKEN, TestApp};
use serde_json::{Value, json};

async fn send(
    app: &TestApp,
    m: Method,
    uri: &str,
    unit: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(m)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if let Some(u) = unit {
        b = b.header(brood_api::UNIT_HEADER, u);
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    app.send(b.body(body).unwrap()).await
}

async fn ok(app: &TestApp, m: Method, uri: &str, unit: Option<&str>, body: Option<Value>) -> Value {
    let (s, v) = send(app, m.clone(), uri, unit, body).await;
    assert!(s.is_success(), "{m} {uri}: {s} {v}");
    v
}

#[tokio::test]
async fn a_change_past_the_units_allocation_is_refused_and_changes_nothing() {
    let app = TestApp::builder()
        .capacity(Resources {
            memory_mib: 8192,
            vcpus: 8,
            disk_gib: 50,
            nics: 8,
        })
        .build()
        .await;
    ok(
        &app,
        Method::POST,
        "/v1/units",
        None,
        Some(json!({"name": "eng", "contact": "c"})),
    )
    .await;
    let r = ok(
        &app,
        Method::POST,
        "/v1/units/eng/requests",
        None,
        Some(json!({"memory_mib": 1024, "vcpus": 2, "disk_gib": 2})),
    )
    .await;
    let id = r["id"].as_u64().unwrap();
    ok(
        &app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        None,
        Some(json!({})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        "/v1/partitions",
        Some("eng"),
        Some(json!({"name": "w", "configs": {"d": {"memory_mib": 256, "disks": [{"name": "data", "size_gib": 1}]}}})),
    )
    .await;
    let before = app.holdings().await;
    let (s, v) = send(
        &app,
        Method::PATCH,
        "/v1/partitions/w/resources",
        None,
        Some(json!({"memory_mib": 4096})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("unit's allocation") && m.contains("MiB of memory"),
        "{m}"
    );
    let (s, v) = send(
        &app,
        Method::POST,
        "/v1/partitions/w/disks",
        None,
        Some(json!({"name": "big", "size_gib": 5})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(app.holdings().await, before, "a refusal changes nothing");
    let (_, p) = app.get("/v1/partitions/w").await;
    assert_eq!(p["configs"]["d"]["memory_mib"], 256, "{p}");
    assert_eq!(
        p["configs"]["d"]["disks"].as_array().unwrap().len(),
        1,
        "{p}"
    );
    // Within it: the disk's space moves from the unit with the change.
    let r = ok(
        &app,
        Method::POST,
        "/v1/partitions/w/disks",
        None,
        Some(json!({"name": "more", "size_gib": 1})),
    )
    .await;
    assert_eq!(r["applied_now"], json!([]), "{r}");
    assert_eq!(app.holdings().await["w"]["disk_gib"], 2);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_pending_change_survives_a_restart_and_blocks_a_template_until_applied() {
    let mut app = TestApp::new().await;
    app.running("on").await;
    let r = ok(
        &app,
        Method::PATCH,
        "/v1/partitions/on/resources",
        None,
        Some(json!({"memory_mib": 512, "vcpus": 2})),
    )
    .await;
    assert_eq!(r["next_start"].as_array().unwrap().len(), 2, "{r}");
    let was = r["partition"]["pending_change"]["running"]["memory_mib"].clone();
    let nic = ok(
        &app,
        Method::POST,
        "/v1/partitions/on/nics",
        None,
        Some(json!({"network": "user"})),
    )
    .await;
    let mac = nic["partition"]["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    app.restart().await;
    let (_, p) = app.get("/v1/partitions/on").await;
    assert_eq!(p["pending_change"]["running"]["memory_mib"], was, "{p}");
    assert_eq!(p["nics"][0]["mac"], mac.as_str(), "{p}");
    let (s, v) = app.template("on", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop and start it"),
        "{v}"
    );
    // A bad `apply` is a clear 400.
    let (s, v) = send(
        &app,
        Method::DELETE,
        "/v1/partitions/on/nics/0?apply=later",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    // A NIC goes by its MAC (any case), another index is not there.
    let (s, v) = send(&app, Method::DELETE, "/v1/partitions/on/nics/3", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&mac),
        "{v}"
    );
    let uri = format!(
        "/v1/partitions/on/nics/{}?apply=next-start",
        mac.to_uppercase()
    );
    let r = ok(&app, Method::DELETE, &uri, None, None).await;
    assert_eq!(r["partition"]["nics"], json!([]), "{r}");
    // The next start applies it: nothing waits, the template can be made.
    ok(
        &app,
        Method::POST,
        "/v1/partitions/on/stop",
        None,
        Some(json!({"timeout_s": 1})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        "/v1/partitions/on/start",
        None,
        Some(json!({})),
    )
    .await;
    let (_, p) = app.get("/v1/partitions/on").await;
    assert!(p.get("pending_change").is_none(), "{p}");
    assert_eq!(app.holdings().await["on"]["memory_mib"], 512 + 128);
    assert_eq!(app.holdings().await["on"]["vcpus"], 2);
    let (s, v) = app.template("on", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_forked_child_changes_only_its_cpu_cap() {
    let app = TestApp::new().await;
    app.running("t0").await;
    let (s, v) = app.template("t0", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    ok(
        &app,
        Method::POST,
        "/v1/templates/tpl/fork",
        None,
        Some(json!({"count": 1})),
    )
    .await;
    let (s, v) = send(
        &app,
        Method::PATCH,
        "/v1/partitions/tpl-0/resources",
        None,
        Some(json!({"memory_mib": 512})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("forked child"),
        "{v}"
    );
    let (s, v) = send(
        &app,
        Method::POST,
        "/v1/partitions/tpl-0/disks",
        None,
        Some(json!({"name": "x", "size_gib": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let r = ok(
        &app,
        Method::PATCH,
        "/v1/partitions/tpl-0/resources",
        None,
        Some(json!({"cpu_cap_pct": 50, "apply": "next-start"})),
    )
    .await;
    assert_eq!(
        r["partition"]["pending_change"]["summary"], "CPU cap none -> 50%",
        "{r}"
    );
    ok(
        &app,
        Method::POST,
        "/v1/partitions/tpl-0/stop",
        None,
        Some(json!({"timeout_s": 1})),
    )
    .await;
    ok(
        &app,
        Method::POST,
        "/v1/partitions/tpl-0/start",
        None,
        Some(json!({})),
    )
    .await;
    let (_, p) = app.get("/v1/partitions/tpl-0").await;
    assert!(p.get("pending_change").is_none(), "{p}");
    assert_eq!(p["configs"]["default"]["policy"]["cpu_cap_pct"], 50, "{p}");
    app.assert_verified().await;
}
