#![allow(clippy::tests_outside_test_module)]
//! Issue 16's "bugs in what exists" where broodd's logic suffices (the
//! fake engine): a fork that asks for addresses of a template without a
//! NIC is refused before anything starts, children whose identity step
//! fails give back what they took and hold no VM, a stage change never
//! makes a template, and the event stream carries the right details and
//! one event per committed ledger transaction.

use axum::http::StatusCode;
use brood_testkit::{Identity, Op, TestApp};
use serde_json::{Value, json};

/// Running `name` with `nics`, made template `name` with no warm children.
async fn template(app: &TestApp, name: &str, nics: Value) {
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": name, "start": true,
                   "configs": {"d": {"memory_mib": 256, "nics": nics}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.template(name, None, 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_fork_for_addresses_of_a_template_without_a_nic_is_refused_before_anything_starts() {
    let app = TestApp::new().await;
    template(&app, "web", json!([])).await;
    app.identity_pool("doms", &["dom-a", "dom-b"]).await;
    app.ipv4_pool("net", "10.0.0.10-10.0.0.50", Some("10.0.0.1"))
        .await;
    let forks = app.fake().count(Op::Fork);
    let (s, v) = app
        .post(
            "/v1/templates/web/fork",
            json!({"count": 2, "identity_pool": "doms", "ip_pool": "net"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no NIC") && msg.contains("--ip-pool"), "{msg}");
    assert_eq!(app.fake().count(Op::Fork), forks, "a child was started");
    let (_, list) = app.get("/v1/partitions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(app.pool("doms").await["free"], 2);
    assert_eq!(app.pool("net").await["free"], 41);
    // Without the address pool the same fork is fine.
    let (s, v) = app
        .post(
            "/v1/templates/web/fork",
            json!({"count": 2, "identity_pool": "doms"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn children_whose_identity_step_fails_give_back_identity_and_address() {
    let app = TestApp::new().await;
    template(&app, "web", json!([{"network": "user"}])).await;
    app.identity_pool("doms", &["dom-a", "dom-b"]).await;
    app.ipv4_pool("net", "10.0.0.10-10.0.0.11", Some("10.0.0.1"))
        .await;
    app.fake().set_identity(Identity::Fail(
        "configure IPv4 on eth0: no network interface eth0".into(),
    ));
    let (s, v) = app
        .post(
            "/v1/templates/web/fork",
            json!({"count": 2, "identity_pool": "doms", "ip_pool": "net"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for c in v["children"].as_array().unwrap() {
        assert_eq!(c["status"], "failed", "{c}");
        let name = c["name"].as_str().unwrap();
        let (_, p) = app.get(&format!("/v1/partitions/{name}")).await;
        // Kept for inspection, holding nothing, not running.
        assert_eq!(p["run_state"], "stopped", "{p}");
        assert!(p["pid"].is_null(), "{p}");
        assert_eq!(app.holdings().await[name]["memory_mib"], 0);
        assert!(app.fake().vm(name).is_none_or(|vm| !vm.is_alive()));
        // An exec is refused at once, not after the agent's deadline.
        let (s, e) = app
            .post(
                &format!("/v1/partitions/{name}/exec"),
                json!({"command": "true"}),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("start it first"),
            "{e}"
        );
    }
    assert_eq!(app.pool("doms").await["free"], 2);
    assert_eq!(app.pool("net").await["free"], 2);
    // What they gave back is there for the next fork.
    app.fake().set_identity(Identity::Apply);
    let (s, v) = app
        .post(
            "/v1/templates/web/fork",
            json!({"count": 2, "identity_pool": "doms", "ip_pool": "net"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for c in v["children"].as_array().unwrap() {
        assert_eq!(c["status"], "ready", "{c}");
    }
    assert_eq!(app.pool("net").await["free"], 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_stage_change_never_makes_a_template() {
    let app = TestApp::new().await;
    app.running("run").await;
    let (s, v) = app.define("stopped", 256, 1, false).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for name in ["run", "stopped"] {
        let (s, v) = app
            .put(
                &format!("/v1/partitions/{name}/stage"),
                json!({"stage": "template"}),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("brood template create"),
            "{v}"
        );
        let (_, p) = app.get(&format!("/v1/partitions/{name}")).await;
        assert_ne!(p["stage"], "template", "{p}");
    }
    let (s, v) = app.get("/v1/templates").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn pause_and_resume_events_carry_no_stale_exit_detail() {
    let app = TestApp::new().await;
    app.running("ev").await;
    let mut events = app.events().await;
    // An earlier end leaves its `last_exit` behind.
    let (s, v) = app.post_empty("/v1/partitions/ev/stop").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let e = events
        .until(|e| e["kind"]["type"] == "partition" && e["kind"]["run_state"] == "stopped")
        .await;
    assert!(e["kind"]["detail"].is_string(), "a stop says how: {e}");
    let (s, v) = app.post_empty("/v1/partitions/ev/start").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (verb, state) in [("pause", "paused"), ("resume", "running")] {
        let (s, v) = app.post_empty(&format!("/v1/partitions/ev/{verb}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let e = events
            .until(|e| e["kind"]["type"] == "partition" && e["kind"]["run_state"] == state)
            .await;
        assert!(e["kind"]["detail"].is_null(), "{verb}: {e}");
    }
    app.vm("ev").await.crash();
    let e = events
        .until(|e| e["kind"]["type"] == "partition" && e["kind"]["run_state"] == "crashed")
        .await;
    assert!(e["kind"]["detail"].is_string(), "a crash says how: {e}");
}

#[tokio::test]
async fn every_committed_ledger_transaction_is_an_event() {
    let app = TestApp::new().await;
    let mut events = app.events().await;
    app.running("led").await;
    let (_, log) = app.get("/v1/ledger/log?limit=1000").await;
    let entries = log["items"].as_array().cloned().unwrap_or_default();
    let e = events.until(|e| e["kind"]["type"] == "ledger").await;
    let tx = e["kind"]["tx"].as_u64().unwrap();
    assert_eq!(e["kind"]["actor"], "admin", "{e}");
    assert!(!e["kind"]["reason"].as_str().unwrap().is_empty(), "{e}");
    // The event is the audit log's entry.
    let entry = entries
        .iter()
        .find(|x| x["id"].as_u64() == Some(tx))
        .unwrap_or_else(|| panic!("tx {tx} is not in the audit log: {log}"));
    assert_eq!(entry["reason"], e["kind"]["reason"], "{entry} / {e}");
    // One per transaction, in commit order, none left out.
    let mut last = tx;
    app.post_empty("/v1/partitions/led/pause").await;
    let e = events
        .until(|e| {
            e["kind"]["type"] == "ledger"
                && e["kind"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("paused"))
        })
        .await;
    let paused = e["kind"]["tx"].as_u64().unwrap();
    assert!(paused > last, "{e}");
    last = paused;
    app.post_empty("/v1/partitions/led/resume").await;
    let e = events.until(|e| e["kind"]["type"] == "ledger").await;
    assert_eq!(e["kind"]["tx"].as_u64(), Some(last + 1), "{e}");
}
