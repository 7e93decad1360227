#![allow(clippy::tests_outside_test_module)]
//! broodd's life-cycle transitions and refusals on the fake engine: after
//! each operation the ledger holds what it must (nothing leaked, nothing
//! double-held) and `ledger verify` agrees.

use axum::http::StatusCode;
use brood_engine::EngineError;
use brood_testkit::{Mode, Op, Phase, Resources, TestApp};
use serde_json::{Value, json};

/// What a running partition is charged besides its guest memory: QEMU's
/// own (`host::config::QEMU_OVERHEAD_MIB`).
const QEMU_MIB: u64 = 128;

/// What a partition holds with `guest_mib` of guest memory and `vcpus` live
/// (its QEMU's own memory included), or nothing.
fn holds(guest_mib: u64, vcpus: u64) -> Value {
    let mem = if guest_mib == 0 {
        0
    } else {
        guest_mib + QEMU_MIB
    };
    json!({"memory_mib": mem, "vcpus": vcpus, "disk_gib": 0, "nics": 0})
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn define_start_stop_delete_hold_and_release() {
    let app = TestApp::new().await;
    let (s, v) = app.define("web", 512, 2, false).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["stage"], "operating");
    assert_eq!(v["run_state"], "stopped");
    assert_eq!(app.holdings().await["web"], holds(0, 0));
    assert!(app.fake().live().is_empty());

    let (s, v) = app.post_empty("/v1/partitions/web/start").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "running");
    let vm = app.vm("web").await;
    assert_eq!(v["pid"], vm.pid());
    assert_eq!(vm.spec().mem_mib, 512);
    let h = app.holdings().await;
    assert_eq!(h["web"], holds(512, 2));
    assert_eq!(h["available"]["memory_mib"], 2048 - 512 - QEMU_MIB);
    app.assert_verified().await;

    let (s, v) = app.post("/v1/partitions/web/stop", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "stopped");
    assert_eq!(v["last_exit"], "guest powered off");
    assert!(!vm.is_alive());
    let h = app.holdings().await;
    assert_eq!(h["web"], holds(0, 0));
    assert_eq!(h["available"]["memory_mib"], 2048);
    app.assert_verified().await;

    let (s, v) = app.delete("/v1/partitions/web").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(!app.holdings().await.contains_key("web"));
    let (s, _) = app.get("/v1/partitions/web").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.assert_verified().await;
}

#[tokio::test]
async fn every_refused_transition_is_409_and_changes_nothing() {
    let app = TestApp::new().await;
    app.define("off", 256, 1, false).await;
    app.running("on").await;
    let before = app.holdings().await;
    let refused = [
        ("/v1/partitions/on/start", "invalid_transition"),
        ("/v1/partitions/on/resume", "invalid_transition"),
        ("/v1/partitions/on/restore", "invalid_transition"),
        ("/v1/partitions/off/pause", "invalid_transition"),
        ("/v1/partitions/off/resume", "invalid_transition"),
        ("/v1/partitions/off/restore", "invalid_transition"),
        ("/v1/partitions/off/save", "invalid_transition"),
        ("/v1/partitions/off/stop", "invalid_transition"),
        ("/v1/partitions/off/kill", "invalid_transition"),
    ];
    for (path, want) in refused {
        let (s, v) = app.post_empty(path).await;
        assert_eq!(s, StatusCode::CONFLICT, "{path}: {v}");
        assert_eq!(code(&v), want, "{path}: {v}");
    }
    let (s, v) = app.delete("/v1/partitions/on").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop it first")
    );
    assert_eq!(app.run_state("on").await, "running");
    assert_eq!(app.run_state("off").await, "stopped");
    assert_eq!(app.holdings().await, before);
    app.assert_verified().await;
}

#[tokio::test]
async fn pause_resume_save_restore() {
    let app = TestApp::new().await;
    app.running("db").await;
    let vm = app.vm("db").await;

    let (s, v) = app.post_empty("/v1/partitions/db/pause").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("paused"))
    );
    assert_eq!(vm.phase(), Phase::Paused);
    assert_eq!(app.holdings().await["db"], holds(256, 1));
    let (s, v) = app.post_empty("/v1/partitions/db/pause").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = app.post_empty("/v1/partitions/db/resume").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running"))
    );
    assert_eq!(vm.phase(), Phase::Running);

    let (s, v) = app.post_empty("/v1/partitions/db/save").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "saved");
    assert!(!vm.is_alive());
    assert_eq!(app.holdings().await["db"], holds(0, 0));
    let uuid = app.uuid_of("db").await;
    assert!(app.paths().saved_state(uuid.parse().unwrap()).is_file());
    app.assert_verified().await;

    // A saved partition is restored, not started.
    let (s, v) = app.post_empty("/v1/partitions/db/start").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restore it")
    );

    let (s, v) = app.post_empty("/v1/partitions/db/restore").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "running");
    let restored = app.vm("db").await;
    assert_ne!(restored.pid(), vm.pid());
    assert!(!app.paths().saved_state(uuid.parse().unwrap()).exists());
    assert_eq!(app.holdings().await["db"], holds(256, 1));
    // The restored agent answers without a new Ready.
    let (s, v) = app
        .post("/v1/partitions/db/exec", json!({"command": "echo back"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["exit_code"], 0);
    app.assert_verified().await;

    // Stopping a saved partition discards its state.
    app.post_empty("/v1/partitions/db/save").await;
    let (s, v) = app.post("/v1/partitions/db/stop", json!({})).await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("stopped"))
    );
    assert!(!app.paths().saved_state(uuid.parse().unwrap()).exists());
    app.assert_verified().await;
}

#[tokio::test]
async fn a_failed_boot_leaves_nothing_held() {
    let app = TestApp::new().await;
    let boom = || EngineError::Spawn {
        program: "qemu-system-x86_64".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    // define + start: the definition goes too.
    app.fake().fail_next(Op::Boot, boom());
    let (s, v) = app.define("web", 256, 1, true).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(code(&v), "engine_failed");
    let (s, _) = app.get("/v1/partitions/web").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(app.holdings().await["available"]["memory_mib"], 2048);

    // A defined partition stays, stopped, with the reason.
    app.define("web", 256, 1, false).await;
    app.fake().fail_next(Op::Boot, boom());
    let (s, v) = app.post_empty("/v1/partitions/web/start").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    let (_, v) = app.get("/v1/partitions/web").await;
    assert_eq!(v["run_state"], "stopped");
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap()
            .starts_with("failed to start"),
        "{v}"
    );
    assert_eq!(app.holdings().await["web"], holds(0, 0));
    assert!(app.fake().live().is_empty());
    app.assert_verified().await;

    // And it starts once the engine works again.
    let (s, v) = app.post_empty("/v1/partitions/web/start").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running"))
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn quota_refusals_take_nothing() {
    let app = TestApp::builder()
        .capacity(Resources {
            memory_mib: 1024,
            vcpus: 2,
            disk_gib: 10,
            nics: 1,
        })
        .build()
        .await;
    app.running("a").await;
    app.define("big", 1024, 1, false).await;
    let (s, v) = app.post_empty("/v1/partitions/big/start").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(code(&v), "capacity_exceeded");
    app.define("wide", 128, 2, false).await;
    let (s, v) = app.post_empty("/v1/partitions/wide/start").await;
    assert_eq!(code(&v), "capacity_exceeded", "{s} {v}");
    let h = app.holdings().await;
    assert_eq!(h["big"], holds(0, 0));
    assert_eq!(h["wide"], holds(0, 0));
    assert_eq!(h["available"]["memory_mib"], 1024 - 256 - QEMU_MIB);
    assert_eq!(app.fake().count(Op::Boot), 1, "no QEMU for a refused start");
    // Disk space is reserved at definition.
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "disky", "configs": {"d": {"disks": [{"name": "data", "size_gib": 11}]}}}),
        )
        .await;
    assert_eq!(code(&v), "capacity_exceeded", "{s} {v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn crash_and_power_off_are_recorded_and_released() {
    let app = TestApp::new().await;
    app.running("c").await;
    app.running("p").await;
    app.vm("c").await.crash();
    app.vm("p").await.power_off();
    app.wait_until("c is crashed", || async {
        app.run_state("c").await == "crashed"
    })
    .await;
    app.wait_until("p is stopped", || async {
        app.run_state("p").await == "stopped"
    })
    .await;
    let (_, v) = app.get("/v1/partitions/c").await;
    assert_eq!(v["last_exit"], "crashed, signal 9");
    let h = app.holdings().await;
    assert_eq!(h["c"], holds(0, 0));
    assert_eq!(h["p"], holds(0, 0));
    app.assert_verified().await;
    // A crash is acknowledged by stop, and a crashed partition starts again.
    let (s, v) = app.post("/v1/partitions/c/stop", json!({})).await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("stopped"))
    );
    app.vm("p").await;
    let (s, v) = app.post_empty("/v1/partitions/p/start").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running"))
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn exec_waits_for_the_agent_in_explicit_mode() {
    let app = TestApp::builder().mode(Mode::Explicit).build().await;
    app.running("e").await;
    let vm = app.vm("e").await;
    // Booting: the agent has not said Ready.
    let (s, v) = app
        .post(
            "/v1/partitions/e/exec",
            json!({"command": "echo hi", "ready_timeout_ms": 20}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(vm.execs().is_empty());
    vm.finish_boot();
    let (s, v) = app
        .post("/v1/partitions/e/exec", json!({"command": "echo hi"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stdout_base64"], "aGkK");
    let (_, v) = app
        .post("/v1/partitions/e/exec", json!({"argv": ["exit", "3"]}))
        .await;
    assert_eq!(v["exit_code"], 3);
    assert_eq!(vm.execs(), vec!["echo hi", "exit 3"]);
    // A stopped partition has no agent to run things.
    app.post_empty("/v1/partitions/e/kill").await;
    let (s, v) = app
        .post("/v1/partitions/e/exec", json!({"command": "true"}))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "invalid_transition"));
}

#[tokio::test]
async fn a_graceful_stop_waits_for_the_guest_in_explicit_mode() {
    let app = std::sync::Arc::new(TestApp::builder().mode(Mode::Explicit).build().await);
    app.running("g").await;
    let vm = app.vm("g").await;
    vm.finish_boot();
    let stopping = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post("/v1/partitions/g/stop", json!({"timeout_s": 60}))
                .await
        })
    };
    // The stop is recorded before the VM ends; the VM runs until the guest powers off.
    app.wait_until("the stop is pending", || async {
        app.get("/v1/partitions/g").await.1["pending_op"] == "stop"
    })
    .await;
    assert!(vm.is_alive());
    assert_eq!(app.holdings().await["g"], holds(256, 1));
    vm.finish_power_off();
    let (s, v) = stopping.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "stopped");
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(app.holdings().await["g"], holds(0, 0));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_hung_vm_is_still_killed_and_a_hung_stop_ends_in_a_kill() {
    let app = TestApp::new().await;
    app.running("h").await;
    app.running("k").await;
    app.vm("h").await.hang();
    app.vm("k").await.hang();
    let (s, v) = app.post_empty("/v1/partitions/k/kill").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["last_exit"], "killed by brood, signal 9");
    let (s, v) = app
        .post("/v1/partitions/h/stop", json!({"timeout_s": 0}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run_state"], "stopped");
    assert!(!app.vm("h").await.is_alive());
    app.assert_verified().await;
}

#[tokio::test]
async fn engine_failures_of_pause_and_save_leave_it_running() {
    let app = TestApp::new().await;
    app.running("f").await;
    app.fake()
        .fail_next(Op::Pause, EngineError::Unsupported { op: "stop" });
    let (s, v) = app.post_empty("/v1/partitions/f/pause").await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::BAD_GATEWAY, "engine_failed"),
        "{v}"
    );
    assert_eq!(app.run_state("f").await, "running");
    app.fake()
        .fail_next(Op::Save, EngineError::Migration("disk full".into()));
    let (s, v) = app.post_empty("/v1/partitions/f/save").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk full")
    );
    let (_, v) = app.get("/v1/partitions/f").await;
    assert_eq!(v["run_state"], "running");
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(app.vm("f").await.phase(), Phase::Running);
    assert_eq!(app.holdings().await["f"], holds(256, 1));
    app.assert_verified().await;
}

#[tokio::test]
async fn stage_rules() {
    let app = TestApp::new().await;
    app.running("s").await;
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "disabled"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("stop it"));
    // Manual is allowed while running.
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "manual"}))
        .await;
    assert_eq!(
        (s, v["stage"].clone()),
        (StatusCode::OK, json!("manual")),
        "{v}"
    );
    app.post_empty("/v1/partitions/s/kill").await;
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "disabled"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.post_empty("/v1/partitions/s/start").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "invalid_transition"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only operating or manual")
    );
    // A template is made by `template create`, never by a stage change.
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "template"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "decommissioned"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .put("/v1/partitions/s/stage", json!({"stage": "operating"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "decommissioned is final: {v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn delete_with_force_kills_first() {
    let app = TestApp::new().await;
    app.running("x").await;
    let vm = app.vm("x").await;
    let (s, v) = app.delete("/v1/partitions/x?force=true").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(!vm.is_alive());
    assert!(!app.holdings().await.contains_key("x"));
    assert_eq!(app.holdings().await["available"]["memory_mib"], 2048);
    app.assert_verified().await;
}

#[tokio::test]
async fn set_config_takes_effect_at_the_next_start() {
    let app = TestApp::new().await;
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "m", "start": true, "configs": {
                "small": {"memory_mib": 256},
                "large": {"memory_mib": 1024, "vcpus": 2}
            }, "active_config": "small"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .put("/v1/partitions/m/config", json!({"config": "large"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(app.holdings().await["m"], holds(256, 1), "held as started");
    let (s, v) = app
        .put("/v1/partitions/m/config", json!({"config": "huge"}))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    app.post_empty("/v1/partitions/m/kill").await;
    app.post_empty("/v1/partitions/m/start").await;
    assert_eq!(app.holdings().await["m"], holds(1024, 2));
    assert_eq!(app.vm("m").await.spec().mem_mib, 1024);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_crashed_vm_with_an_on_failure_policy_is_restarted() {
    let app = TestApp::new().await;
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "r", "start": true,
                   "configs": {"d": {"policy": {"restart": "on_failure"}}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = app.vm("r").await;
    first.crash();
    app.wait_until("r runs again in a new VM", || async {
        let (_, v) = app.get("/v1/partitions/r").await;
        v["run_state"] == "running" && v["pid"] != first.pid()
    })
    .await;
    let (_, v) = app.get("/v1/partitions/r").await;
    assert_eq!(v["restart_count"], 1);
    assert_eq!(app.holdings().await["r"], holds(256, 1));
    app.assert_verified().await;
    // A guest that powers itself off is not restarted on failure.
    app.vm("r").await.power_off();
    app.wait_until("r is stopped", || async {
        app.run_state("r").await == "stopped"
    })
    .await;
    assert_eq!(app.fake().count(Op::Boot), 2);
}

#[tokio::test]
async fn the_console_and_the_audit_log_tell_what_happened() {
    let app = TestApp::new().await;
    app.running("c").await;
    let vm = app.vm("c").await;
    vm.console("hello from the guest");
    let (s, v) = app.get("/v1/partitions/c/console").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("hello from the guest"), "{text}");
    // The console outlives the run.
    app.post_empty("/v1/partitions/c/kill").await;
    app.post_empty("/v1/partitions/c/start").await;
    let (_, v) = app.get("/v1/partitions/c/console").await;
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("hello from the guest"), "{text}");
    assert_eq!(text.matches("started for").count(), 2, "{text}");
    let (_, v) = app.get("/v1/partitions/c/console?bytes=5").await;
    assert_eq!(v["truncated"], true);
    assert_eq!(v["text"].as_str().unwrap().len(), 5);
    let (s, log) = app.get("/v1/ledger/log").await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let reasons: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for want in ["define c", "start c", "kill c", "c stopped"] {
        assert!(
            reasons.iter().any(|r| r.starts_with(want)),
            "{want}: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_starts_never_hold_twice_or_beyond_capacity() {
    let app = std::sync::Arc::new(TestApp::new().await);
    app.define("one", 256, 1, false).await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.post_empty("/v1/partitions/one/start").await.0 })
        })
        .collect();
    let mut ok = 0;
    for t in starts {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("a concurrent start answered {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one start wins");
    assert_eq!(app.holdings().await["one"], holds(256, 1));
    assert_eq!(app.fake().live().len(), 1);
    // Ten 512 MiB partitions (640 with their QEMU's own) on 2048 MiB, 384
    // held already: two fit.
    for i in 0..10 {
        app.define(&format!("p{i}"), 512, 1, false).await;
    }
    let starts: Vec<_> = (0..10)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.post_empty(&format!("/v1/partitions/p{i}/start")).await })
        })
        .collect();
    let mut ok = 0;
    for t in starts {
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => assert_eq!(code(&v), "capacity_exceeded", "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(
        app.holdings().await["available"]["memory_mib"],
        2048 - (256 + QEMU_MIB) - 2 * (512 + QEMU_MIB)
    );
    assert_eq!(app.fake().live().len(), 3);
    app.assert_verified().await;
}

#[tokio::test]
async fn state_changes_are_published_as_events() {
    let app = TestApp::new().await;
    let mut events = app.events().await;
    app.running("ev").await;
    let e = events
        .until(|e| e["kind"]["type"] == "partition" && e["kind"]["run_state"] == "running")
        .await;
    assert_eq!(e["kind"]["name"], "ev");
    app.vm("ev").await.crash();
    let e = events
        .until(|e| e["kind"]["type"] == "partition" && e["kind"]["run_state"] == "crashed")
        .await;
    assert_eq!(e["kind"]["name"], "ev");
    app.delete("/v1/partitions/ev").await;
    events
        .until(|e| e["kind"]["type"] == "partition_deleted")
        .await;
}
