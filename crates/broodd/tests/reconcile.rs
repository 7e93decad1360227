#![allow(clippy::tests_outside_test_module)]
//! Reconciliation after broodd stops at any moment: VMs still running are
//! attached again, VMs that died meanwhile are recorded and released, VMs
//! nobody owns are killed, and an operation dropped half done (the request
//! task aborted while the engine call is held) is finished or settled.
//! After each restart `ledger verify` must be clean.

use axum::http::{Method, StatusCode};
use brood_engine::{Engine, VmSpec};
use brood_testkit::{Mode, Op, Phase, TestApp};
use serde_json::{Value, json};

/// What a partition holds with `guest_mib` of guest memory and `vcpus`
/// live: its QEMU's own 128 MiB (`host::config::QEMU_OVERHEAD_MIB`) too.
fn holds(guest_mib: u64, vcpus: u64) -> Value {
    let mem = if guest_mib == 0 { 0 } else { guest_mib + 128 };
    json!({"memory_mib": mem, "vcpus": vcpus, "disk_gib": 0, "nics": 0})
}

#[tokio::test]
async fn running_and_paused_vms_are_attached_again() {
    let mut app = TestApp::new().await;
    app.running("a").await;
    app.running("b").await;
    app.post_empty("/v1/partitions/b/pause").await;
    let (pa, pb) = (app.vm("a").await.pid(), app.vm("b").await.pid());
    let before = app.holdings().await;
    app.restart().await;
    assert_eq!(app.fake().count(Op::Attach), 2);
    let (_, a) = app.get("/v1/partitions/a").await;
    assert_eq!(
        (a["run_state"].clone(), a["pid"].clone()),
        (json!("running"), json!(pa))
    );
    let (_, b) = app.get("/v1/partitions/b").await;
    assert_eq!(
        (b["run_state"].clone(), b["pid"].clone()),
        (json!("paused"), json!(pb))
    );
    assert_eq!(app.holdings().await, before);
    app.assert_verified().await;
    // The new connection's agent answers, and the attached VMs are supervised.
    let (s, v) = app
        .post("/v1/partitions/a/exec", json!({"command": "echo again"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.vm("a").await.crash();
    app.wait_until("a is crashed", || async {
        app.run_state("a").await == "crashed"
    })
    .await;
    assert_eq!(app.holdings().await["a"], holds(0, 0));
    let (s, v) = app.post_empty("/v1/partitions/b/resume").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running")),
        "{v}"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn vms_that_ended_while_broodd_was_down_are_released() {
    let mut app = TestApp::new().await;
    app.running("crashes").await;
    app.running("powers-off").await;
    app.running("lives").await;
    app.stop().await;
    app.fake()
        .vm(&app.uuid_of("crashes").await)
        .unwrap()
        .crash();
    app.fake()
        .vm(&app.uuid_of("powers-off").await)
        .unwrap()
        .power_off();
    app.start().await;
    let (_, v) = app.get("/v1/partitions/crashes").await;
    assert_eq!(v["run_state"], "crashed");
    assert_eq!(v["last_exit"], "its VM was gone when broodd restarted");
    assert_eq!(app.run_state("powers-off").await, "crashed");
    assert_eq!(app.run_state("lives").await, "running");
    let h = app.holdings().await;
    assert_eq!(h["crashes"], holds(0, 0));
    assert_eq!(h["powers-off"], holds(0, 0));
    assert_eq!(h["lives"], holds(256, 1));
    assert_eq!(h["available"]["memory_mib"], 2048 - 256 - 128);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_vm_nobody_owns_is_killed() {
    let mut app = TestApp::new().await;
    app.running("mine").await;
    let mut spec = VmSpec::new("stray", app.paths().kernel());
    spec.initrd = Some(app.paths().initrd());
    let stray = app.fake().boot(&spec).await.expect("the fake boots a VM");
    let (_, v) = app.get("/v1/ledger/verify").await;
    assert_eq!(v["ok"], false, "verify sees the stray VM: {v}");
    assert!(v.to_string().contains("orphan_qemu"), "{v}");
    app.restart().await;
    assert!(stray.exit_status().is_some(), "the stray VM was killed");
    assert_eq!(app.fake().count(Op::KillFound), 1);
    assert_eq!(app.run_state("mine").await, "running");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_vm_that_cannot_be_attached_is_killed_and_released() {
    let mut app = TestApp::new().await;
    app.running("x").await;
    let vm = app.vm("x").await;
    app.stop().await;
    app.fake().fail_next(
        Op::Attach,
        brood_engine::EngineError::AgentChannel("no socket".into()),
    );
    app.start().await;
    assert!(!vm.is_alive());
    let (_, v) = app.get("/v1/partitions/x").await;
    assert_eq!(v["run_state"], "crashed", "{v}");
    assert_eq!(app.holdings().await["x"], holds(0, 0));
    app.assert_verified().await;
}

/// Starts `method path`, waits until the engine call `op` is reached (and
/// held), then drops the request there and restarts broodd.
async fn die_during(app: &mut TestApp, op: Op, method: Method, path: &str, body: Option<Value>) {
    let calls = app.fake().count(op);
    app.fake().hold(op);
    let task = app.spawn_request(method, path, body);
    app.wait_until("the engine call is reached", || async {
        app.fake().count(op) > calls
    })
    .await;
    task.abort();
    let _ = task.await;
    app.fake().release(op);
    app.restart().await;
}

#[tokio::test]
async fn a_start_dropped_half_done_is_undone() {
    let mut app = TestApp::new().await;
    app.define("s", 512, 2, false).await;
    die_during(
        &mut app,
        Op::Boot,
        Method::POST,
        "/v1/partitions/s/start",
        None,
    )
    .await;
    let (_, v) = app.get("/v1/partitions/s").await;
    assert_eq!(v["run_state"], "stopped", "{v}");
    assert_eq!(v["last_exit"], "start interrupted by a restart");
    assert_eq!(app.holdings().await["s"], holds(0, 0));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_stop_dropped_half_done_is_finished() {
    let mut app = TestApp::builder().mode(Mode::Explicit).build().await;
    app.running("s").await;
    let vm = app.vm("s").await;
    die_during(
        &mut app,
        Op::Shutdown,
        Method::POST,
        "/v1/partitions/s/stop",
        Some(json!({})),
    )
    .await;
    assert!(!vm.is_alive(), "the stop was finished by killing it");
    let (_, v) = app.get("/v1/partitions/s").await;
    assert_eq!(v["run_state"], "stopped", "{v}");
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(app.holdings().await["s"], holds(0, 0));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_save_dropped_half_done_carries_on_running() {
    let mut app = TestApp::new().await;
    app.running("s").await;
    let vm = app.vm("s").await;
    die_during(
        &mut app,
        Op::Save,
        Method::POST,
        "/v1/partitions/s/save",
        None,
    )
    .await;
    let (_, v) = app.get("/v1/partitions/s").await;
    assert_eq!(v["run_state"], "running", "{v}");
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(vm.phase(), Phase::Running);
    assert_eq!(app.holdings().await["s"], holds(256, 1));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_restore_dropped_half_done_keeps_the_saved_state() {
    let mut app = TestApp::new().await;
    app.running("s").await;
    app.post_empty("/v1/partitions/s/save").await;
    die_during(
        &mut app,
        Op::Restore,
        Method::POST,
        "/v1/partitions/s/restore",
        None,
    )
    .await;
    let (_, v) = app.get("/v1/partitions/s").await;
    assert_eq!(v["run_state"], "saved", "{v}");
    assert_eq!(app.holdings().await["s"], holds(0, 0));
    app.assert_verified().await;
    let (s, v) = app.post_empty("/v1/partitions/s/restore").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running")),
        "{v}"
    );
}

#[tokio::test]
async fn a_delete_dropped_half_done_is_finished() {
    let mut app = TestApp::new().await;
    app.running("d").await;
    die_during(
        &mut app,
        Op::Kill,
        Method::DELETE,
        "/v1/partitions/d?force=true",
        None,
    )
    .await;
    // The kill was recorded first; the restart finishes it as a stop.
    let (s, v) = app.get("/v1/partitions/d").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "stopped");
    assert!(app.fake().live().is_empty());
    app.assert_verified().await;
}

#[tokio::test]
async fn a_fork_dropped_half_done_leaves_no_child() {
    let mut app = TestApp::new().await;
    app.running("t").await;
    app.template("t", None, 0).await;
    let (s, v) = app.identity_pool("ids", &["a", "b"]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    die_during(
        &mut app,
        Op::Fork,
        Method::POST,
        "/v1/templates/t/fork",
        Some(json!({"count": 2, "identity_pool": "ids"})),
    )
    .await;
    let (_, list) = app.get("/v1/partitions").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["t"], "no half-made children");
    assert_eq!(
        app.pool("ids").await["free"],
        2,
        "their identities went back"
    );
    let h = app.holdings().await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(app.fake().live().is_empty());
    app.assert_verified().await;
    // The template still forks.
    let (s, v) = app.post("/v1/templates/t/fork", json!({"count": 1})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"][0]["status"], "ready");
}

#[tokio::test]
async fn a_template_dropped_half_done_runs_on() {
    let mut app = TestApp::new().await;
    app.running("t").await;
    let vm = app.vm("t").await;
    die_during(
        &mut app,
        Op::SaveTemplate,
        Method::POST,
        "/v1/templates",
        Some(json!({"vm": "t"})),
    )
    .await;
    assert!(vm.is_alive());
    let (_, v) = app.get("/v1/partitions/t").await;
    assert_eq!(v["stage"], "operating", "{v}");
    assert_eq!(v["run_state"], "running");
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(app.holdings().await["t"], holds(256, 1));
    app.assert_verified().await;
}

#[tokio::test]
async fn templates_and_children_survive_a_restart() {
    let mut app = TestApp::new().await;
    app.running("t").await;
    app.template("t", None, 2).await;
    app.wait_until("the warm children are ready", || async {
        app.get("/v1/templates/t").await.1["warm_ready"] == 2
    })
    .await;
    app.identity_pool("ids", &["a", "b", "c"]).await;
    let (s, v) = app
        .post(
            "/v1/templates/t/fork",
            json!({"count": 2, "identity_pool": "ids"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pid0 = app.vm("t-0").await.pid();
    let before = app.holdings().await;
    app.restart().await;
    assert_eq!(app.holdings().await, before);
    let (_, c) = app.get("/v1/partitions/t-0").await;
    assert_eq!(
        (c["run_state"].clone(), c["pid"].clone()),
        (json!("running"), json!(pid0))
    );
    assert_eq!(c["fork"]["status"], "ready");
    app.wait_until("the pool is refilled", || async {
        app.get("/v1/templates/t").await.1["warm_ready"] == 2
    })
    .await;
    app.assert_verified().await;
    let (s, v) = app
        .post(
            "/v1/templates/t/fork",
            json!({"count": 1, "identity_pool": "ids"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["children"][0]["name"], "t-2");
    assert_eq!(app.pool("ids").await["free"], 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_restart_removes_what_a_killed_broodd_or_image_build_left_on_disk() {
    let mut app = TestApp::new().await;
    app.running("a").await;
    let uuid = app.uuid_of("a").await;
    let paths = app.paths().clone();
    let upload = paths
        .data
        .join("disks")
        .join(&uuid)
        .join("boot.upload.partial");
    std::fs::create_dir_all(upload.parent().unwrap()).unwrap();
    std::fs::write(&upload, b"half an upload").unwrap();
    let images = paths.images();
    for d in [".build-deb-abc123/rootfs/etc", ".delete-old-qwerty"] {
        std::fs::create_dir_all(images.join(d)).unwrap();
    }
    app.restart().await;
    assert!(!upload.exists(), "the partial upload is removed");
    assert!(!images.join(".build-deb-abc123").exists());
    assert!(!images.join(".delete-old-qwerty").exists());
    assert_eq!(app.run_state("a").await, "running");
    app.assert_verified().await;
}
