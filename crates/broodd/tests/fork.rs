#![allow(clippy::tests_outside_test_module)]
//! Templates and forks on the fake engine: children's records and names,
//! unique MACs and machine-ids, identity and IPv4 values taken from their
//! pools and given back, an exhausted pool that makes no child, children
//! whose identity step fails, is slow or hangs, and what the ledger holds
//! after each step.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use brood_engine::EngineError;
use brood_testkit::{Identity, Mode, Op, TestApp};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A running `web` with one NIC, made template `web` with `warm` waiting children.
async fn template(app: &TestApp, warm: u32) {
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "web", "start": true,
                   "configs": {"d": {"memory_mib": 256, "nics": [{"network": "user"}]}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    if app.fake().mode() == Mode::Explicit {
        app.vm("web").await.finish_boot();
    }
    let (s, v) = app.template("web", None, warm).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "web");
    if warm > 0 {
        app.wait_until("the warm children are ready", || async {
            app.get("/v1/templates/web").await.1["warm_ready"] == warm
        })
        .await;
    }
}

async fn fork(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.post("/v1/templates/web/fork", body).await
}

#[tokio::test]
async fn children_get_unique_identities_from_their_pools() {
    let app = TestApp::new().await;
    template(&app, 2).await;
    let h = app.holdings().await;
    assert_eq!(
        h["web"]["memory_mib"],
        256 + 128,
        "a template keeps its memory (its QEMU's own included)"
    );
    assert_eq!(h["web"]["vcpus"], 0, "and gives back its vCPUs");
    let (s, v) = app
        .identity_pool("doms", &["dom-a", "dom-b", "dom-c"])
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .ipv4_pool("net", "10.0.0.10-10.0.0.12", Some("10.0.0.1"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let (s, v) = fork(
        &app,
        json!({"count": 3, "identity_pool": "doms", "ip_pool": "net", "values": {"role": "front"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let children = v["children"].as_array().unwrap();
    let names: Vec<&str> = children
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    let mut identities = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut machine_ids = BTreeSet::new();
    for c in children {
        assert_eq!(c["status"], "ready", "{c}");
        let name = c["name"].as_str().unwrap();
        let vm = app.vm(name).await;
        assert!(
            vm.is_forked() && vm.is_alive() && vm.networks_joined(),
            "{vm:?}"
        );
        let cfg = vm.child_config().expect("the child applied an identity");
        assert_eq!(cfg.hostname, name);
        assert_eq!(vm.hostname(), name);
        assert_eq!(
            Some(cfg.index),
            c["index"].as_u64().map(|i| u32::try_from(i).unwrap())
        );
        assert_eq!(cfg.identity.as_deref(), c["identity"].as_str());
        assert_eq!(cfg.values, vec![("role".to_string(), "front".to_string())]);
        let ip = cfg.ipv4.expect("an address");
        assert_eq!((ip.prefix, ip.gateway), (24, Some([10, 0, 0, 1])));
        assert_eq!(
            c["ipv4"],
            format!(
                "{}.{}.{}.{}/24",
                ip.address[0], ip.address[1], ip.address[2], ip.address[3]
            )
        );
        assert_eq!(cfg.machine_id.len(), 32);
        assert!(cfg.machine_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(cfg.macs.len(), 1);
        let mac = cfg.macs[0];
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        assert!(cfg.entropy.len() >= 32, "fresh entropy");
        identities.insert(cfg.identity.unwrap());
        addresses.insert(ip.address);
        macs.insert(mac);
        machine_ids.insert(cfg.machine_id);
        let child = app.get(&format!("/v1/partitions/{name}")).await.1;
        assert_eq!(child["parent"], "web");
        assert_eq!(child["run_state"], "running");
        assert_eq!(child["pending_op"], Value::Null);
    }
    assert_eq!(
        identities,
        ["dom-a", "dom-b", "dom-c"].map(String::from).into()
    );
    assert_eq!(addresses.len(), 3);
    assert_eq!(macs.len(), 3, "MACs are unique");
    assert_eq!(machine_ids.len(), 3, "machine-ids are unique");
    let doms = app.pool("doms").await;
    assert_eq!(doms["free"], 0);
    let holders: BTreeSet<&str> = doms["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["holder"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["web-0", "web-1", "web-2"].into());
    // Each child is charged a quarter of the template's memory, its vCPU and NIC.
    let h = app.holdings().await;
    for n in names {
        assert_eq!(
            h[n],
            json!({"memory_mib": 64, "vcpus": 1, "disk_gib": 0, "nics": 1}),
            "{n}"
        );
    }
    // The two warm children were used (they rehearsed the identity step).
    let warmed = app.fake().live().iter().filter(|v| v.warmed() > 0).count();
    assert!(warmed >= 2, "{warmed} warm children");
    app.wait_until("the pool is refilled", || async {
        app.get("/v1/templates/web").await.1["warm_ready"] == 2
    })
    .await;
    app.assert_verified().await;
}

#[tokio::test]
async fn an_exhausted_pool_makes_no_child() {
    let app = TestApp::new().await;
    template(&app, 1).await;
    app.identity_pool("two", &["a", "b"]).await;
    let before = app.holdings().await;
    let forks = app.fake().count(Op::Fork);
    let (s, v) = fork(&app, json!({"count": 3, "identity_pool": "two"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(code(&v), "capacity_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no child was made")
    );
    assert_eq!(app.holdings().await, before);
    assert_eq!(app.pool("two").await["free"], 2);
    assert_eq!(
        app.fake().count(Op::Fork),
        forks,
        "no QEMU for a refused fork"
    );
    assert_eq!(
        app.get("/v1/templates/web").await.1["warm_ready"],
        1,
        "the warm child waits on"
    );
    let (_, list) = app.get("/v1/partitions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    // Memory runs out the same way: nothing is made.
    let (s, v) = fork(&app, json!({"count": 20, "charge_mib": 256})).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "capacity_exceeded"),
        "{v}"
    );
    assert_eq!(app.holdings().await, before);
    app.assert_verified().await;
    // And the next fork still numbers from 0.
    let (s, v) = fork(&app, json!({"count": 2, "identity_pool": "two"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"][0]["name"], "web-0");
    assert_eq!(app.pool("two").await["free"], 0);
}

#[tokio::test]
async fn deleting_a_child_returns_its_values_and_names_go_on() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.identity_pool("ids", &["x", "y"]).await;
    app.ipv4_pool("net", "10.1.0.5-10.1.0.6", None).await;
    let (s, v) = fork(
        &app,
        json!({"count": 2, "identity_pool": "ids", "ip_pool": "net"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let held_by_0 = v["children"][0]["identity"].clone();
    let (s, v) = app.delete("/v1/partitions/web-0?force=true").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(app.pool("ids").await["free"], 1);
    assert_eq!(app.pool("net").await["free"], 1);
    assert!(!app.holdings().await.contains_key("web-0"));
    let (s, v) = fork(
        &app,
        json!({"count": 1, "identity_pool": "ids", "ip_pool": "net"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["children"][0]["name"], "web-2",
        "indices are never reused"
    );
    assert_eq!(
        v["children"][0]["identity"], held_by_0,
        "the returned value is handed out again"
    );
    // A pool whose values are held cannot go.
    let path = app.pools_path();
    let (s, v) = app.delete(&format!("{path}/ids")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_child_whose_identity_step_fails_is_recorded_failed() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.identity_pool("ids", &["i1"]).await;
    app.fake()
        .set_identity(Identity::Fail("dnsmasq: cannot bind".into()));
    let (s, v) = fork(&app, json!({"count": 1, "identity_pool": "ids"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let c = &v["children"][0];
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .contains("dnsmasq: cannot bind"),
        "{c}"
    );
    // It is stopped and kept for inspection, holding nothing: its
    // identity went back to the pool.
    let (_, p) = app.get("/v1/partitions/web-0").await;
    assert_eq!(p["run_state"], "stopped", "{p}");
    assert_eq!(p["fork"]["status"], "failed");
    assert!(
        p["last_exit"]
            .as_str()
            .unwrap()
            .contains("dnsmasq: cannot bind"),
        "{p}"
    );
    assert_eq!(app.holdings().await["web-0"]["memory_mib"], 0);
    assert_eq!(app.pool("ids").await["free"], 1);
    // It cannot start again without its identity.
    let (s, v) = app.post("/v1/partitions/web-0/start", json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    app.assert_verified().await;
    app.delete("/v1/partitions/web-0").await;
    app.assert_verified().await;
}

#[tokio::test]
async fn a_slow_identity_step_is_observed_pending_until_it_finishes() {
    let app = TestApp::builder().mode(Mode::Explicit).build().await;
    template(&app, 0).await;
    let (s, v) = fork(&app, json!({"count": 1, "wait": false})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"][0]["status"], "pending");
    app.wait_until("the child runs", || async {
        app.run_state("web-0").await == "running"
    })
    .await;
    let vm = app.vm("web-0").await;
    let (_, p) = app.get("/v1/partitions/web-0").await;
    assert_eq!(p["fork"]["status"], "pending", "{p}");
    assert_eq!(p["pending_op"], "fork");
    assert!(vm.child_config().is_none());
    vm.finish_identity();
    app.wait_until("the child is ready", || async {
        app.get("/v1/partitions/web-0").await.1["fork"]["status"] == "ready"
    })
    .await;
    assert_eq!(vm.hostname(), "web-0");
    let (_, p) = app.get("/v1/partitions/web-0").await;
    assert_eq!(p["pending_op"], Value::Null);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_delayed_identity_step_is_waited_for() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.fake()
        .set_identity(Identity::Delay(Duration::from_millis(50)));
    let (s, v) = fork(&app, json!({"count": 2})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for c in v["children"].as_array().unwrap() {
        assert_eq!(c["status"], "ready", "{c}");
    }
}

#[tokio::test]
async fn a_child_whose_identity_hangs_and_then_dies_gives_everything_back() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.identity_pool("ids", &["only"]).await;
    app.fake().set_identity(Identity::Never);
    let (s, v) = fork(
        &app,
        json!({"count": 1, "identity_pool": "ids", "wait": false}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    app.wait_until("the child runs", || async {
        app.run_state("web-0").await == "running"
    })
    .await;
    let vm = app.vm("web-0").await;
    assert_eq!(app.holdings().await["web-0"]["memory_mib"], 64);
    vm.crash();
    app.wait_until("the child is crashed", || async {
        app.run_state("web-0").await == "crashed"
    })
    .await;
    app.wait_until("its fork is recorded failed", || async {
        app.get("/v1/partitions/web-0").await.1["fork"]["status"] == "failed"
    })
    .await;
    assert_eq!(app.holdings().await["web-0"]["memory_mib"], 0);
    assert_eq!(
        app.pool("ids").await["free"],
        1,
        "a child whose identity step never finished gives its identity back"
    );
    app.assert_verified().await;
    app.delete("/v1/partitions/web-0").await;
    assert_eq!(app.pool("ids").await["free"], 1);
    app.assert_verified().await;
}

#[tokio::test]
async fn kill_acts_at_once_while_a_childs_identity_hangs() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.fake().set_identity(Identity::Never);
    fork(&app, json!({"count": 1, "wait": false})).await;
    app.wait_until("the child runs", || async {
        app.run_state("web-0").await == "running"
    })
    .await;
    let kill = tokio::time::timeout(
        Duration::from_secs(10),
        app.post_empty("/v1/partitions/web-0/kill"),
    )
    .await
    .expect("kill does not wait for the guest");
    assert_eq!(kill.0, StatusCode::OK, "{}", kill.1);
    let del = tokio::time::timeout(
        Duration::from_secs(10),
        app.delete("/v1/partitions/web-0?force=true"),
    )
    .await
    .expect("delete --force does not wait for the guest");
    assert_eq!(del.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_failed_fork_gives_everything_back() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.identity_pool("ids", &["a", "b"]).await;
    let before = app.holdings().await;
    app.fake().fail_when(|c| {
        (c.op == Op::Fork).then(|| EngineError::Migration("load the device state".into()))
    });
    let (s, v) = fork(&app, json!({"count": 2, "identity_pool": "ids"})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("load the device state")
    );
    assert_eq!(app.holdings().await, before);
    assert_eq!(app.pool("ids").await["free"], 2);
    let (_, list) = app.get("/v1/partitions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    app.fake().clear_failures();
    // One child fails to join its networks: it is removed, the other lives.
    app.fake()
        .fail_next(Op::JoinNetworks, EngineError::Unsupported { op: "tap" });
    let (s, v) = fork(&app, json!({"count": 2, "identity_pool": "ids"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(app.pool("ids").await["free"], 1);
    app.assert_verified().await;
}

#[tokio::test]
async fn fork_and_template_requests_are_checked() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.running("plain").await;
    app.ipv4_pool("net", "10.2.0.1-10.2.0.2", None).await;
    for (body, why) in [
        (json!({"count": 0}), "count"),
        (json!({"count": 257}), "count"),
        (json!({"values": {"bad key": "v"}}), "value"),
        (json!({"identity_pool": "none"}), "no identity pool"),
        (json!({"identity_pool": "net"}), "not an"),
    ] {
        let (s, v) = fork(&app, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(why),
            "{body}: {v}"
        );
    }
    let (s, v) = app.post("/v1/templates/plain/fork", json!({})).await;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
        "{s} {v}"
    );
    for (body, want) in [
        (json!({"vm": "plain", "warm": 65}), StatusCode::BAD_REQUEST),
        (
            json!({"vm": "plain", "name": "Bad Name"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"vm": "web"}), StatusCode::CONFLICT),
    ] {
        let (s, v) = app.post("/v1/templates", body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
    }
    assert_eq!(app.run_state("plain").await, "running");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_failed_fork_point_leaves_the_vm_running() {
    let app = TestApp::new().await;
    app.running("db").await;
    app.fake()
        .fail_prepare_fork(Some("10-migrate exited 1".into()));
    let (s, v) = app.template("db", None, 0).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10-migrate")
    );
    assert_eq!(app.run_state("db").await, "running");
    app.fake().fail_prepare_fork(None);
    // A failed save of the template ends the VM: recorded crashed, released.
    app.fake()
        .fail_next(Op::SaveTemplate, EngineError::Migration("no space".into()));
    let (s, v) = app.template("db", None, 0).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    let (_, p) = app.get("/v1/partitions/db").await;
    assert_eq!(p["run_state"], "crashed", "{p}");
    assert_eq!(p["stage"], "operating");
    assert_eq!(app.holdings().await["db"]["memory_mib"], 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_child_starts_again_as_a_fresh_fork_with_its_identity() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    app.identity_pool("ids", &["keep"]).await;
    fork(&app, json!({"count": 1, "identity_pool": "ids"})).await;
    let first = app.vm("web-0").await;
    let cfg = first.child_config().unwrap();
    let (s, v) = app.post("/v1/partitions/web-0/stop", json!({})).await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("stopped")),
        "{v}"
    );
    assert_eq!(app.holdings().await["web-0"]["memory_mib"], 0);
    assert_eq!(
        app.pool("ids").await["free"],
        0,
        "a stopped child keeps its identity"
    );
    let (s, v) = app.post_empty("/v1/partitions/web-0/start").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running")),
        "{v}"
    );
    let again = app.vm("web-0").await;
    assert_ne!(again.pid(), first.pid());
    assert!(again.is_forked());
    let cfg2 = again.child_config().expect("identity applied again");
    assert_eq!(
        (cfg2.identity, cfg2.machine_id, cfg2.macs),
        (cfg.identity, cfg.machine_id, cfg.macs)
    );
    assert_ne!(cfg2.entropy, cfg.entropy, "fresh entropy at every start");
    assert_eq!(app.holdings().await["web-0"]["memory_mib"], 64);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_template_with_children_is_deleted_only_with_cascade() {
    let app = TestApp::new().await;
    template(&app, 2).await;
    app.identity_pool("ids", &["a", "b"]).await;
    fork(&app, json!({"count": 2, "identity_pool": "ids"})).await;
    let (s, v) = app.delete("/v1/templates/web").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("web-0"));
    let (s, v) = app.delete("/v1/templates/web?cascade=true").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let h = app.holdings().await;
    assert_eq!(h.len(), 1, "only `available` is left: {h:?}");
    assert_eq!(h["available"]["memory_mib"], 2048);
    assert_eq!(app.pool("ids").await["free"], 2);
    app.wait_until("every fake VM has ended", || async {
        app.fake().live().is_empty()
    })
    .await;
    app.assert_verified().await;
}

#[tokio::test]
async fn a_guest_that_asks_to_be_forked_becomes_a_template() {
    let app = TestApp::new().await;
    app.running("self").await;
    let vm = app.vm("self").await;
    app.wait_until("the agent is ready", || async {
        app.post("/v1/partitions/self/exec", json!({"command": "true"}))
            .await
            .0
            == StatusCode::OK
    })
    .await;
    vm.announce_fork_point();
    app.wait_until("self is a template", || async {
        app.get("/v1/templates/self").await.0 == StatusCode::OK
    })
    .await;
    assert!(!vm.is_alive());
    let (_, p) = app.get("/v1/partitions/self").await;
    assert_eq!(p["stage"], "template");
    assert_eq!(p["run_state"], "stopped");
}

#[tokio::test]
async fn a_child_becomes_a_template_through_a_rehost() {
    let app = TestApp::new().await;
    template(&app, 0).await;
    fork(&app, json!({"count": 1})).await;
    let (s, v) = app.template("web-0", Some("web2"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["parent"], "web");
    assert_eq!(app.fake().count(Op::Rehost), 1);
    let (_, t) = app.get("/v1/templates/web").await;
    assert_eq!(t["derived"], json!(["web2"]));
    let (s, v) = app
        .post("/v1/templates/web2/fork", json!({"count": 1}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"][0]["name"], "web2-0");
    assert_eq!(v["children"][0]["status"], "ready");
    app.assert_verified().await;
}

#[tokio::test]
async fn pool_definitions_are_checked() {
    let app = TestApp::new().await;
    let path = app.pools_path();
    for body in [
        json!({"name": "p", "kind": "identity", "values": []}),
        json!({"name": "p", "kind": "identity", "values": ["a"], "range": "10.0.0.1-10.0.0.2"}),
        json!({"name": "p", "kind": "ipv4"}),
        json!({"name": "p", "kind": "ipv4", "range": "10.0.0.9-10.0.0.1"}),
        json!({"name": "p", "kind": "ipv4", "range": "10.0.0.1-10.0.0.2", "prefix": 33}),
        json!({"name": "p", "kind": "ipv4", "range": "10.0.0.1-10.0.0.2", "gateway": "x"}),
    ] {
        let (s, v) = app.post(path, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (s, v) = app.get(path).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"], json!([]), "nothing was made");
    app.identity_pool("p", &["a"]).await;
    let (s, v) = app.identity_pool("p", &["b"]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = app.delete(&format!("{path}/p")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("{path}/p")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
