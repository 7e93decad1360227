#![allow(clippy::tests_outside_test_module)]
//! Jobs on the fake engine: priority queues (a stop submitted after 100
//! creates finishes first), priority within a queue, refusal past the
//! queue bound, the max-VMs limit, `?wait=false`, cancel, and workflows:
//! bindings, a failure injected at each task in turn (nothing is left
//! half-done), steps run twice, and a restart of broodd in the middle; the
//! replay harness (`JobConfig::replay_steps`): a workflow of every built-in
//! step, run with each step and undo executed twice, ends as one run does,
//! and with a failure injected at each step in turn leaves nothing; a
//! service request run twice ends as once; every single action submitted
//! twice ends as once; an action bound to a template forks from it and
//! undoes on failure; every remaining unit action is a job (202 with
//! `?wait=false`); a running create, start or fork cancelled unwinds; a
//! stop whose shutdown and kill fail is an error naming both; a
//! template's actions go with it.

use axum::http::{Method, StatusCode};
use brood_engine::EngineError;
use brood_ledger::Resources;
use brood_testkit::{ExecReply, Op, TestApp};
use broodd::job::JobConfig;
use serde_json::{Value, json};

fn big() -> Resources {
    Resources {
        memory_mib: 65536,
        vcpus: 256,
        disk_gib: 200,
        nics: 64,
    }
}

async fn app(jobs: JobConfig) -> TestApp {
    TestApp::builder().capacity(big()).jobs(jobs).build().await
}

fn vm(name: &str, start: bool, priority: i64) -> Value {
    json!({"name": name, "configs": {"d": {"memory_mib": 64, "vcpus": 1,
        "policy": {"priority": priority}}}, "start": start})
}

async fn job(app: &TestApp, id: u64) -> Value {
    let (s, v) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn wait_job(app: &TestApp, id: u64) -> Value {
    let (s, v) = app.get(&format!("/v1/jobs/{id}/wait?timeout_s=60")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(v["state"], "queued", "{v}");
    assert_ne!(v["state"], "running", "{v}");
    v
}

fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("a job: {v}"))
}

#[tokio::test]
async fn a_stop_submitted_after_100_creates_finishes_first() {
    let app = app(JobConfig {
        max_heavy: 1,
        ..JobConfig::default()
    })
    .await;
    app.running("on").await;
    // The first create holds the only heavy slot; the other 99 wait.
    app.fake().hold(Op::Boot);
    let mut creates = Vec::new();
    for i in 0..100 {
        let (s, v) = app
            .post("/v1/partitions?wait=false", vm(&format!("c{i}"), true, 0))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["queue"], "normal");
        creates.push(id_of(&v));
    }
    let (s, v) = app.post_empty("/v1/partitions/on/stop").await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the stop does not wait behind the creates: {v}"
    );
    assert_eq!(v["run_state"], "stopped");
    let (_, l) = app.get("/v1/jobs?state=succeeded&limit=1000").await;
    let done: Vec<u64> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .filter(|id| creates.contains(id))
        .collect();
    assert!(
        done.is_empty(),
        "no create finished before the stop: {done:?}"
    );
    let (_, stop) = app.get("/v1/jobs?target=on&limit=1").await;
    assert_eq!(stop["items"][0]["kind"], "partition.stop");
    assert_eq!(stop["items"][0]["queue"], "high");
    app.fake().release(Op::Boot);
    for id in creates {
        assert_eq!(wait_job(&app, id).await["state"], "succeeded");
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn within_a_queue_a_higher_priority_goes_first() {
    let app = app(JobConfig {
        max_heavy: 1,
        ..JobConfig::default()
    })
    .await;
    app.fake().hold(Op::Boot);
    let (_, a) = app
        .post("/v1/partitions?wait=false", vm("a", true, 0))
        .await;
    let (_, b) = app
        .post("/v1/partitions?wait=false", vm("b", true, 0))
        .await;
    let (_, c) = app
        .post("/v1/partitions?wait=false", vm("c", true, 500))
        .await;
    assert_eq!(c["priority"], 500);
    app.wait_until("a runs", || async {
        job(&app, id_of(&a)).await["state"] == "running"
    })
    .await;
    assert_eq!(job(&app, id_of(&b)).await["state"], "queued");
    app.fake().release(Op::Boot);
    for j in [&a, &b, &c] {
        wait_job(&app, id_of(j)).await;
    }
    let started = |v: &Value| {
        humantime::parse_rfc3339(v["started_at"].as_str().expect("started")).expect("a time")
    };
    let (b, c) = (job(&app, id_of(&b)).await, job(&app, id_of(&c)).await);
    assert!(
        started(&c) <= started(&b),
        "c (priority 500) started before b (priority 0), though submitted after it"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn past_the_queue_bound_a_job_is_refused_with_the_reason_and_recorded() {
    let app = app(JobConfig {
        max_heavy: 1,
        queue_bound: 2,
        ..JobConfig::default()
    })
    .await;
    app.fake().hold(Op::Boot);
    let mut ids = Vec::new();
    for i in 0..3 {
        // One runs (held), two wait: the queue is full.
        let (s, v) = app
            .post("/v1/partitions?wait=false", vm(&format!("q{i}"), true, 0))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push(id_of(&v));
        if i == 0 {
            app.wait_until("q0 runs", || async {
                job(&app, ids[0]).await["state"] == "running"
            })
            .await;
        }
    }
    let (s, v) = app.post("/v1/partitions", vm("q3", true, 0)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "unavailable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("normal queue already holds 2"), "{msg}");
    assert!(
        msg.contains("job-queue-bound"),
        "says what to change: {msg}"
    );
    let (_, l) = app.get("/v1/jobs?state=refused").await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["items"][0]["target"], "q3");
    // A light job still gets in: its queue is another.
    let (s, _) = app.get("/v1/partitions/q3").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused job did nothing");
    app.fake().release(Op::Boot);
    for id in ids {
        assert_eq!(wait_job(&app, id).await["state"], "succeeded");
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn the_max_vms_limit_is_enforced_at_admission() {
    let app = app(JobConfig {
        max_vms: Some(2),
        ..JobConfig::default()
    })
    .await;
    app.running("a").await;
    app.running("b").await;
    app.define("c", 64, 1, false).await;
    let (s, v) = app.post_empty("/v1/partitions/c/start").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "capacity_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 VMs"),
        "{v}"
    );
    let (s, v) = app.post("/v1/partitions", vm("d", true, 0)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(app.run_state("c").await, "stopped");
    let (s, _) = app.get("/v1/partitions/d").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A define that does not start adds no VM.
    let (s, v) = app.post("/v1/partitions", vm("e", false, 0)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Room again once one stops.
    let (s, _) = app.post_empty("/v1/partitions/a/stop").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.post_empty("/v1/partitions/c/start").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_job_records_its_result_and_a_queued_one_can_be_cancelled() {
    let app = app(JobConfig {
        max_heavy: 1,
        ..JobConfig::default()
    })
    .await;
    let (s, v) = app
        .post("/v1/partitions?wait=false", vm("r", true, 0))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = wait_job(&app, id_of(&v)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["name"], "r",
        "the route's body is the result"
    );
    assert_eq!(done["result"]["run_state"], "running");
    let states: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["body"]["state"].as_str())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"]);
    // A failed job says why.
    let (s, v) = app.post_empty("/v1/partitions/r/start?wait=false").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let failed = wait_job(&app, id_of(&v)).await;
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("running"),
        "{failed}"
    );
    // Queued behind a held create: cancelled before it runs.
    app.fake().hold(Op::Boot);
    let (_, first) = app
        .post("/v1/partitions?wait=false", vm("s1", true, 0))
        .await;
    let (_, second) = app
        .post("/v1/partitions?wait=false", vm("s2", true, 0))
        .await;
    let (s, v) = app
        .post_empty(&format!("/v1/jobs/{}/cancel", id_of(&second)))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    // The running one is cancelled at its next safe point and undone
    // (`a_running_create_start_or_fork_cancelled_unwinds_what_it_did`).
    app.wait_until("s1 runs", || async {
        job(&app, id_of(&first)).await["state"] == "running"
    })
    .await;
    let (s, v) = app
        .post_empty(&format!("/v1/jobs/{}/cancel", id_of(&first)))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.fake().release(Op::Boot);
    assert_eq!(wait_job(&app, id_of(&first)).await["state"], "cancelled");
    for name in ["s1", "s2"] {
        let (s, _) = app.get(&format!("/v1/partitions/{name}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "a cancelled create made nothing");
    }
    app.assert_verified().await;
}

async fn workflow(app: &TestApp, yaml: &str) -> Value {
    let (s, v) = app.post("/v1/workflows", json!({"definition": yaml})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

const CREATE_EXEC: &str = "
name: web
inputs:
  name: {}
  password: {secret: true}
tasks:
  - id: make
    step: create
    params: {name: '${data.name}', memory_mib: 64}
  - id: agent
    step: wait_agent
    idempotent: true
    params: {vm: '${make.name}'}
  - id: hello
    step: exec
    params: {vm: '${make.name}', command: 'echo ${make.name} ${data.password}'}
  - id: check
    step: exec
    success_codes: [0]
    params: {vm: '${make.name}', command: 'exit 0'}
";

#[tokio::test]
async fn a_workflow_binds_outputs_and_redacts_its_secrets() {
    let app = app(JobConfig::default()).await;
    let v = workflow(&app, CREATE_EXEC).await;
    assert_eq!(v["version"], 1);
    let v = workflow(&app, CREATE_EXEC).await;
    assert_eq!(v["version"], 2, "storing it again is a new version");
    let (s, out) = app
        .post(
            "/v1/workflows/web/run",
            json!({"data": {"name": "w1", "password": "hunter2-s3cret"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    // The second task used the first's output; the secret is not shown.
    assert_eq!(out["outputs"]["hello"]["stdout"], "w1 ***\n", "{out}");
    assert_eq!(app.run_state("w1").await, "running");
    let (_, l) = app.get("/v1/jobs?target=web").await;
    let j = job(&app, id_of(&l["items"][0])).await;
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["params"]["data"]["password"], "***");
    let (_, log) = app.get("/v1/ledger/log?limit=1000").await;
    for text in [j.to_string(), log.to_string()] {
        assert!(!text.contains("hunter2-s3cret"), "a secret leaked: {text}");
    }
    // Bad data is refused before a job exists.
    let (s, v) = app
        .post("/v1/workflows/web/run", json!({"data": {"nope": 1}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_failure_at_each_task_in_turn_leaves_nothing_half_done() {
    let app = app(JobConfig::default()).await;
    workflow(&app, CREATE_EXEC).await;
    // Fail each task in turn: the create (the engine), the exec (the
    // agent), the last exec (a code outside its success codes).
    for (i, fail) in ["make", "hello", "check"].into_iter().enumerate() {
        let name = format!("f{i}");
        app.fake().clear_failures();
        app.fake().on_exec(|_, _| None);
        match fail {
            "make" => app
                .fake()
                .fail_next(Op::Boot, EngineError::InvalidSpec("no".into())),
            "hello" => app.fake().on_exec(|_, cmd| {
                cmd.starts_with("echo").then(|| ExecReply {
                    agent_error: Some("guest I/O error".into()),
                    ..ExecReply::default()
                })
            }),
            _ => app.fake().on_exec(|_, cmd| {
                (cmd == "exit 0").then(|| ExecReply {
                    code: 3,
                    ..ExecReply::default()
                })
            }),
        }
        let (s, v) = app
            .post(
                "/v1/workflows/web/run",
                json!({"data": {"name": name, "password": "p"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{fail}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("task {fail} failed")), "{msg}");
        assert!(msg.contains("make"), "the create was undone: {msg}");
        let (s, _) = app.get(&format!("/v1/partitions/{name}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{fail}: nothing is left");
        app.assert_verified().await;
    }
}

#[tokio::test]
async fn task_properties_disabled_timeout_continue_on_error() {
    let app = app(JobConfig::default()).await;
    // An HTTP server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    app.running("t").await;
    app.fake().on_exec(|_, cmd| {
        (cmd == "exit 7").then(|| ExecReply {
            code: 7,
            ..ExecReply::default()
        })
    });
    workflow(
        &app,
        &"
name: props
tasks:
  - id: off
    step: stop
    enabled: false
    params: {vm: t}
  - id: seven
    step: exec
    success_codes: [0, 7]
    params: {vm: t, command: 'exit 7'}
  - id: slow
    step: http
    timeout_s: 1
    continue_on_error: true
    params: {url: 'URL'}
  - id: last
    step: exec
    params: {vm: t, command: 'echo done'}
"
        .replace("URL", &url),
    )
    .await;
    let (s, v) = app.post("/v1/workflows/props/run", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"]["last"]["stdout"], "done\n");
    assert_eq!(
        app.run_state("t").await,
        "running",
        "the disabled stop was skipped"
    );
    let (_, l) = app.get("/v1/jobs?target=props").await;
    let j = job(&app, id_of(&l["items"][0])).await;
    let ev: Vec<&Value> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "task")
        .map(|e| &e["body"])
        .collect();
    assert!(
        ev.iter()
            .any(|e| e["event"] == "skipped" && e["task"] == "off")
    );
    assert!(ev.iter().any(|e| e["event"] == "failed"
        && e["task"] == "slow"
        && e["fatal"] == false
        && e["reason"].as_str().unwrap_or("").contains("timed out")));
    // Without continue_on_error the timeout fails the job.
    workflow(
        &app,
        &"
name: strict
tasks:
  - id: slow
    step: http
    timeout_s: 1
    params: {url: 'URL'}
"
        .replace("URL", &url),
    )
    .await;
    let (s, v) = app.post("/v1/workflows/strict/run", json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
}

#[tokio::test]
async fn a_restart_mid_workflow_fails_and_undoes_a_task_that_is_not_idempotent() {
    let mut app = app(JobConfig::default()).await;
    workflow(&app, CREATE_EXEC).await;
    app.fake().hold(Op::Boot);
    let (s, v) = app
        .post(
            "/v1/workflows/web/run?wait=false",
            json!({"data": {"name": "k1", "password": "p"}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = id_of(&v);
    app.wait_until("the create reaches the engine", || async {
        app.fake().count(Op::Boot) > 0
    })
    .await;
    // broodd dies in the middle of the create.
    app.stop().await;
    app.fake().release(Op::Boot);
    app.start().await;
    let j = wait_job(&app, id).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("make"), "{j}");
    let (s, _) = app.get("/v1/partitions/k1").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the create was undone");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_restart_mid_workflow_reruns_an_idempotent_task_and_finishes() {
    let mut app = app(JobConfig::default()).await;
    app.running("i").await;
    workflow(
        &app,
        "
name: twice
tasks:
  - id: agent
    step: wait_agent
    idempotent: true
    params: {vm: i}
  - id: stop
    step: stop
    idempotent: true
    params: {vm: i}
",
    )
    .await;
    app.fake().hold(Op::Shutdown);
    let (s, v) = app
        .post("/v1/workflows/twice/run?wait=false", json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = id_of(&v);
    app.wait_until("the stop reaches the engine", || async {
        app.fake().count(Op::Shutdown) > 0
    })
    .await;
    app.stop().await;
    app.fake().release(Op::Shutdown);
    app.start().await;
    let j = wait_job(&app, id).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let started = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["body"]["event"] == "started" && e["body"]["task"] == "stop")
        .count();
    assert_eq!(started, 2, "the idempotent stop ran again: {j}");
    assert_eq!(app.run_state("i").await, "stopped");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_restart_fails_single_jobs_it_cut_and_cancels_queued_ones() {
    let mut app = app(JobConfig {
        max_heavy: 1,
        ..JobConfig::default()
    })
    .await;
    app.fake().hold(Op::Boot);
    let (_, a) = app
        .post("/v1/partitions?wait=false", vm("a", true, 0))
        .await;
    let (_, b) = app
        .post("/v1/partitions?wait=false", vm("b", true, 0))
        .await;
    app.wait_until("a runs", || async {
        job(&app, id_of(&a)).await["state"] == "running"
    })
    .await;
    app.stop().await;
    app.fake().release(Op::Boot);
    app.start().await;
    let (a, b) = (job(&app, id_of(&a)).await, job(&app, id_of(&b)).await);
    assert_eq!(a["state"], "failed", "{a}");
    assert_eq!(b["state"], "cancelled", "{b}");
    assert!(b["error"].as_str().unwrap().contains("submit it again"));
    let (s, _) = app.get("/v1/partitions/a").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the cut define left no partition");
    let (_, l) = app
        .request(Method::GET, "/v1/jobs?state=running", None)
        .await;
    assert!(l["items"].as_array().unwrap().is_empty(), "{l}");
    app.assert_verified().await;
}

/// A workflow with every built-in step that a fake host can serve: each
/// step that changes state, with its undo, and the steps between them.
const EVERY_STEP: &str = "
name: every
inputs:
  name: {}
tasks:
  - id: make
    step: create
    params: {name: '${data.name}', memory_mib: 64}
  - id: agent
    step: wait_agent
    params: {vm: '${make.name}', timeout_ms: 5000}
  - id: hello
    step: exec
    params: {vm: '${make.name}', command: 'echo hi'}
  - id: halt
    step: stop
    params: {vm: '${make.name}', timeout_s: 5}
  - id: boot
    step: start
    params: {vm: '${make.name}'}
  - id: kids
    step: fork
    params: {template: tpl, count: 2}
  - id: drop
    step: delete
    params: {vm: '${kids.name}'}
";

/// The tasks of [`EVERY_STEP`], in order.
const EVERY_TASK: [&str; 7] = ["make", "agent", "hello", "halt", "boot", "kids", "drop"];

/// A host with the template `tpl` and the workflow [`EVERY_STEP`], with
/// every step run twice when `replay`.
async fn every_step_app(replay: bool) -> TestApp {
    let app = app(JobConfig {
        replay_steps: replay,
        ..JobConfig::default()
    })
    .await;
    app.running("src").await;
    let (s, v) = app.template("src", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    workflow(&app, EVERY_STEP).await;
    app
}

/// What a run leaves: each partition's name, stage and run state, the
/// holdings of the ledger, and the fake engine's live processes.
async fn end_state(app: &TestApp) -> Value {
    let (s, l) = app.get("/v1/partitions").await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let list = l
        .as_array()
        .or_else(|| l["items"].as_array())
        .unwrap_or_else(|| panic!("a list: {l}"));
    let mut vms: Vec<Value> = list
        .iter()
        .map(|p| json!([p["name"], p["stage"], p["run_state"]]))
        .collect();
    vms.sort_by_key(Value::to_string);
    json!({
        "vms": vms,
        "holdings": app.holdings().await,
        "live": app.fake().live().len(),
    })
}

#[tokio::test]
async fn every_step_run_twice_ends_as_one_run_does() {
    let once = every_step_app(false).await;
    let twice = every_step_app(true).await;
    let mut ends = Vec::new();
    for app in [&once, &twice] {
        let (s, out) = app
            .post("/v1/workflows/every/run", json!({"data": {"name": "e"}}))
            .await;
        assert_eq!(s, StatusCode::OK, "{out}");
        app.assert_verified().await;
        let mut out = out;
        // Uuids are random: the same VM is the same name.
        out["outputs"]["make"]
            .as_object_mut()
            .and_then(|m| m.remove("uuid"))
            .unwrap_or_else(|| panic!("the create's uuid: {out}"));
        ends.push((out, end_state(app).await));
    }
    let (one, two) = (&ends[0], &ends[1]);
    assert_eq!(one.0, two.0, "a step run twice gives the same outputs");
    assert_eq!(one.1, two.1, "a step run twice leaves the same host");
    assert_eq!(
        one.1["vms"].as_array().map(Vec::len),
        Some(3),
        "the template, e and one child: {}",
        one.1
    );
    // The second runs did happen: each step started its engine work again
    // or found it done.
    assert!(
        twice.fake().count(Op::Fork) == once.fake().count(Op::Fork),
        "a fork run again forks no more children"
    );
}

/// Makes task `task` of [`EVERY_STEP`] fail on the fake host.
fn fail_at(app: &TestApp, task: &str) {
    let f = app.fake();
    f.clear_failures();
    f.on_exec(|_, _| None);
    f.set_boot_delay(std::time::Duration::from_millis(5));
    let no = || EngineError::InvalidSpec("injected".into());
    // The first `n` calls of `op` fail.
    let first = |op: Op, n: usize| {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        move |c: &brood_testkit::Call| {
            (c.op == op && calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n)
                .then(|| EngineError::InvalidSpec("injected".into()))
        }
    };
    match task {
        // The create's boot.
        "make" => f.fail_next(Op::Boot, no()),
        // Its agent is not ready within the task's 5 s.
        "agent" => f.set_boot_delay(std::time::Duration::from_secs(3600)),
        // Both the guest shutdown and the kill after it fail.
        "halt" => {
            f.fail_when(first(Op::Shutdown, 1));
            f.fail_when(first(Op::Kill, 1));
        }
        // The delete's kill fails, and so does the kill after it.
        "drop" => f.fail_when(first(Op::Kill, 2)),
        // The agent answers the exec with an error.
        "hello" => f.on_exec(|_, cmd| {
            (cmd == "echo hi").then(|| ExecReply {
                agent_error: Some("guest I/O error".into()),
                ..ExecReply::default()
            })
        }),
        // The start's boot (the create's boot is done by then).
        "boot" => f.fail_when({
            let boots = std::sync::atomic::AtomicUsize::new(0);
            move |c| {
                (c.op == Op::Boot && boots.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1)
                    .then(no)
            }
        }),
        "kids" => f.fail_next(Op::Fork, no()),
        other => panic!("no failure for task {other}"),
    }
}

#[tokio::test]
async fn a_failure_at_each_step_in_turn_with_each_step_run_twice_leaves_nothing() {
    let app = every_step_app(true).await;
    let before = end_state(&app).await;
    for (i, task) in EVERY_TASK.into_iter().enumerate() {
        fail_at(&app, task);
        let name = format!("f{i}");
        let (s, v) = app
            .post("/v1/workflows/every/run", json!({"data": {"name": name}}))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{task}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!("task {task} failed")),
            "{task}: {msg}"
        );
        assert!(!msg.contains("could not be undone"), "{task}: {msg}");
        app.fake().clear_failures();
        app.fake()
            .set_boot_delay(std::time::Duration::from_millis(5));
        app.assert_verified().await;
        assert_eq!(
            end_state(&app).await,
            before,
            "a failure at {task} leaves nothing: no partition, holding or process"
        );
    }
}

const MKWEB: &str = "
name: mkweb
inputs:
  template: {}
  greeting: {}
tasks:
  - id: kids
    step: fork
    params: {template: '${data.template}', count: 1}
  - id: hello
    step: exec
    params: {vm: '${kids.name}', command: 'echo ${data.greeting}'}
";

#[tokio::test]
async fn an_action_bound_to_a_template_forks_from_it_and_undoes_on_failure() {
    let app = app(JobConfig::default()).await;
    app.running("src").await;
    let (s, v) = app.template("src", Some("web"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    workflow(&app, MKWEB).await;
    workflow(
        &app,
        "name: plain\ntasks:\n  - {id: a, step: http, params: {url: 'http://127.0.0.1:1/'}}\n",
    )
    .await;
    // Bad bindings are refused with what to do.
    let (s, v) = app
        .put(
            "/v1/templates/web/actions/serve",
            json!({"workflow": "plain"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input \"template\""),
        "{v}"
    );
    let (s, v) = app
        .put(
            "/v1/templates/web/actions/Bad%20Name",
            json!({"workflow": "mkweb"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app
        .put(
            "/v1/templates/web/actions/serve",
            json!({"workflow": "nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = app
        .put(
            "/v1/templates/nope/actions/serve",
            json!({"workflow": "mkweb"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Bound, listed.
    let (s, v) = app
        .put(
            "/v1/templates/web/actions/serve",
            json!({"workflow": "mkweb"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["workflow"], "mkweb");
    let (s, l) = app.get("/v1/templates/web/actions").await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert_eq!(l["items"][0]["action"], "serve", "{l}");
    // Run: the workflow forks a child of its template.
    let (s, out) = app
        .post(
            "/v1/templates/web/actions/serve/run",
            json!({"data": {"greeting": "hi"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    let child = out["outputs"]["kids"]["name"].as_str().unwrap().to_owned();
    assert_eq!(out["outputs"]["hello"]["stdout"], "hi\n", "{out}");
    assert_eq!(app.run_state(&child).await, "running");
    app.assert_verified().await;
    // A failure after the fork undoes it.
    app.fake().on_exec(|_, cmd| {
        (cmd == "echo bye").then(|| ExecReply {
            agent_error: Some("guest I/O error".into()),
            ..ExecReply::default()
        })
    });
    let before = end_state(&app).await;
    let (s, v) = app
        .post(
            "/v1/templates/web/actions/serve/run",
            json!({"data": {"greeting": "bye"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("undone: hello, kids"),
        "{v}"
    );
    assert_eq!(
        end_state(&app).await,
        before,
        "the failed action left nothing"
    );
    app.assert_verified().await;
    // The template is the action's to set.
    let (s, v) = app
        .post(
            "/v1/templates/web/actions/serve/run",
            json!({"data": {"greeting": "x", "template": "other"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Unbound: gone.
    let (s, _) = app.delete("/v1/templates/web/actions/serve").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.delete("/v1/templates/web/actions/serve").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "unbinding is idempotent: {v}");
    let (s, v) = app
        .post("/v1/templates/web/actions/serve/run", json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("brood workflow actions"),
        "{v}"
    );
}

/// A VM's state as a test compares it: its run state and stage.
async fn vm_state(app: &TestApp, name: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/partitions/{name}")).await;
    if s == StatusCode::NOT_FOUND {
        return json!("gone");
    }
    assert_eq!(s, StatusCode::OK, "{v}");
    json!([v["stage"], v["run_state"]])
}

#[tokio::test]
async fn every_single_action_submitted_twice_ends_as_once_and_verifies() {
    // Each action of a unit, as a client that retries submits it: the
    // second job either finds the work done (2xx) or is refused by the
    // state the first reached (409); never a 5xx, and the host ends as
    // after one submission.
    let once = app(JobConfig::default()).await;
    let twice = app(JobConfig::default()).await;
    let steps: [(Method, &str, Option<Value>); 10] = [
        (Method::POST, "/v1/partitions", Some(vm("v", false, 0))),
        (Method::POST, "/v1/partitions/v/start", None),
        (Method::POST, "/v1/partitions/v/pause", None),
        (Method::POST, "/v1/partitions/v/resume", None),
        (Method::POST, "/v1/partitions/v/save", None),
        (Method::POST, "/v1/partitions/v/restore", None),
        (Method::POST, "/v1/partitions/v/stop", Some(json!({}))),
        (Method::POST, "/v1/partitions/v/start", None),
        (Method::POST, "/v1/partitions/v/kill", None),
        (Method::DELETE, "/v1/partitions/v", None),
    ];
    for (m, path, body) in &steps {
        let (s, v) = once.request(m.clone(), path, body.clone()).await;
        assert!(s.is_success(), "{m} {path}: {v}");
        let (s, v) = twice.request(m.clone(), path, body.clone()).await;
        assert!(s.is_success(), "{m} {path}: {v}");
        let (s, v) = twice.request(m.clone(), path, body.clone()).await;
        eprintln!("{m} {path} again: {s}");
        assert!(
            s.is_success() || s == StatusCode::CONFLICT || s == StatusCode::NOT_FOUND,
            "{m} {path} again: {s} {v}"
        );
        assert_eq!(
            vm_state(&once, "v").await,
            vm_state(&twice, "v").await,
            "{m} {path} twice ends as once"
        );
        assert_eq!(once.holdings().await, twice.holdings().await, "{m} {path}");
        assert_eq!(
            once.fake().live().len(),
            twice.fake().live().len(),
            "{m} {path}: the same processes"
        );
        twice.assert_verified().await;
    }
    // The refusals were recorded as failed jobs, not left running.
    let (_, l) = twice.get("/v1/jobs?state=running").await;
    assert!(l["items"].as_array().unwrap().is_empty(), "{l}");
}

/// Submits `path` with `?wait=false` (202, the job), waits for the job and
/// returns it ended.
async fn no_wait(app: &TestApp, m: Method, path: &str, body: Option<Value>) -> Value {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (s, v) = app
        .request(m.clone(), &format!("{path}{sep}wait=false"), body)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{m} {path}: {v}");
    assert_eq!(v["state"], "queued", "{m} {path}: {v}");
    wait_job(app, id_of(&v)).await
}

#[tokio::test]
async fn every_remaining_action_of_a_unit_is_a_job() {
    let app = app(JobConfig::default()).await;
    let v = json!({"name": "v", "start": true, "configs": {"d": {"memory_mib": 64,
        "disks": [{"name": "data", "size_gib": 1}]}}});
    let (s, out) = app.post("/v1/partitions", v).await;
    assert_eq!(s, StatusCode::CREATED, "{out}");
    app.running("w").await;
    app.running("x").await;
    // Each is recorded, queued and run; with `?wait=false` it answers 202.
    let steps: [(Method, &str, Option<Value>, &str); 10] = [
        (
            Method::PUT,
            "/v1/partitions/v/config",
            Some(json!({"config": "d"})),
            "partition.config",
        ),
        (
            Method::PATCH,
            "/v1/partitions/v/resources",
            Some(json!({"memory_mib": 128, "apply": "next-start"})),
            "partition.resources",
        ),
        (
            Method::POST,
            "/v1/partitions/v/disks",
            Some(json!({"name": "extra", "size_gib": 1, "apply": "next-start"})),
            "partition.disk.attach",
        ),
        (
            Method::DELETE,
            "/v1/partitions/v/disks/extra?apply=next-start",
            None,
            "partition.disk.detach",
        ),
        (
            Method::POST,
            "/v1/partitions/w/snapshots",
            Some(json!({"name": "s1"})),
            "partition.snapshot.create",
        ),
        (
            Method::POST,
            "/v1/partitions/w/snapshots/s1/revert",
            None,
            "partition.snapshot.revert",
        ),
        (
            Method::POST,
            "/v1/templates",
            Some(json!({"vm": "w", "name": "t"})),
            "template.create",
        ),
        (Method::DELETE, "/v1/templates/t", None, "template.delete"),
        (Method::POST, "/v1/partitions/x/stop", None, ""),
        (
            Method::PUT,
            "/v1/partitions/x/stage",
            Some(json!({"stage": "disabled"})),
            "partition.stage",
        ),
    ];
    for (m, path, body, kind) in steps {
        if kind.is_empty() {
            // Set-up between the steps: x, stopped.
            let (s, v) = app.request(m, path, Some(json!({}))).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            continue;
        }
        let j = no_wait(&app, m.clone(), path, body).await;
        assert_eq!(j["state"], "succeeded", "{m} {path}: {j}");
        assert_eq!(j["kind"], kind, "{m} {path}: {j}");
        let (s, l) = app
            .get(&format!(
                "/v1/jobs?target={}",
                j["target"].as_str().unwrap()
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert!(
            l["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == j["id"]),
            "{kind} is listed: {l}"
        );
    }
    // The wait form answers as before: the snapshot route's 201 and body.
    let (s, v) = app
        .post("/v1/partitions/x/snapshots", json!({"name": "s2"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "s2", "{v}");
    let (s, _) = app.delete("/v1/partitions/x/snapshots/s2").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A refused change fails its job with the reason, and the route answers it.
    let (s, v) = app
        .put("/v1/partitions/x/config", json!({"config": "nope"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, l) = app.get("/v1/jobs?state=failed").await;
    assert_eq!(l["items"][0]["kind"], "partition.config", "{l}");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_stop_whose_shutdown_and_kill_both_fail_is_an_error_naming_both() {
    let app = app(JobConfig::default()).await;
    app.running("v").await;
    let f = app.fake();
    f.fail_next(
        Op::Shutdown,
        EngineError::InvalidSpec("shutdown refused".into()),
    );
    f.fail_next(Op::Kill, EngineError::InvalidSpec("kill refused".into()));
    let (s, v) = app.post("/v1/partitions/v/stop", json!({})).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("shutdown refused") && msg.contains("kill refused"),
        "the error names both causes: {msg}"
    );
    // The VM still runs, and says so; its job failed.
    assert_eq!(app.run_state("v").await, "running");
    assert_eq!(app.fake().live().len(), 1);
    let (_, l) = app.get("/v1/jobs?state=failed").await;
    assert_eq!(l["items"][0]["kind"], "partition.stop", "{l}");
    app.assert_verified().await;
    // A kill that fails alone is an error too.
    f.fail_next(Op::Kill, EngineError::InvalidSpec("kill refused".into()));
    f.fail_next(
        Op::Kill,
        EngineError::InvalidSpec("kill refused again".into()),
    );
    let (s, v) = app.post_empty("/v1/partitions/v/kill").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(app.run_state("v").await, "running");
    // Once the engine answers again, the stop works.
    let (s, v) = app.post("/v1/partitions/v/stop", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(app.run_state("v").await, "stopped");
    assert!(app.fake().live().is_empty());
    app.assert_verified().await;
}

#[tokio::test]
async fn a_templates_actions_are_deleted_with_it() {
    let app = app(JobConfig::default()).await;
    app.running("src").await;
    let (s, v) = app.template("src", Some("web"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    workflow(&app, MKWEB).await;
    for a in ["serve", "again"] {
        let (s, v) = app
            .put(
                &format!("/v1/templates/web/actions/{a}"),
                json!({"workflow": "mkweb"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let uuid: uuid::Uuid = app.uuid_of("web").await.parse().unwrap();
    let (s, v) = app.delete("/v1/templates/web").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    // No row outlives the template: read the ledger itself.
    let ledger = brood_ledger::Ledger::open(app.paths().ledger(), big())
        .await
        .unwrap();
    assert!(ledger.actions(uuid).await.unwrap().is_empty());
    // The deletion's audit row names them.
    let (s, a) = app.get("/v1/ledger/log?limit=20").await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert!(a.to_string().contains("actions_deleted"), "{a}");
    // A new template of that name has no actions.
    app.running("src2").await;
    let (s, v) = app.template("src2", Some("web"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, l) = app.get("/v1/templates/web/actions").await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert!(l["items"].as_array().unwrap().is_empty(), "{l}");
    app.assert_verified().await;
}

/// Submits `path` without waiting, holds `op` until the job's engine call
/// is under way, cancels the job there and lets the call finish; returns
/// the job as it ended.
async fn cancel_during(app: &TestApp, op: Op, path: &str, body: Value) -> Value {
    let f = app.fake();
    let before = f.count(op);
    f.hold(op);
    let (s, v) = app.post(&format!("{path}?wait=false"), body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{path}: {v}");
    let id = id_of(&v);
    app.wait_until(&format!("{path} reaches its engine call"), || async {
        f.count(op) > before
    })
    .await;
    let (s, c) = app.post_empty(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, StatusCode::OK, "a running {path} can be cancelled: {c}");
    f.release(op);
    let j = wait_job(app, id).await;
    assert_eq!(j["state"], "cancelled", "{path}: {j}");
    assert!(
        j["error"].as_str().unwrap_or_default().contains("undone"),
        "{j}"
    );
    j
}

#[tokio::test]
async fn a_running_create_start_or_fork_cancelled_unwinds_what_it_did() {
    let app = app(JobConfig::default()).await;
    app.running("src").await;
    let (s, v) = app.template("src", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = end_state(&app).await;
    // A create (define and start): its partition goes again.
    cancel_during(&app, Op::Boot, "/v1/partitions", vm("c", true, 0)).await;
    assert_eq!(vm_state(&app, "c").await, json!("gone"));
    assert_eq!(end_state(&app).await, before, "the create left nothing");
    app.assert_verified().await;
    // A start: the VM ends stopped.
    let (s, v) = app
        .request(Method::POST, "/v1/partitions", Some(vm("s", false, 0)))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    cancel_during(&app, Op::Boot, "/v1/partitions/s/start", json!({})).await;
    assert_eq!(app.run_state("s").await, "stopped");
    assert!(app.fake().live().iter().all(|m| m.name() != "s"));
    let (s, _) = app.delete("/v1/partitions/s").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A fork: it stops between a child's steps; no child whose VM was
    // being made when the cancel came is resumed, and every child goes.
    let resumed = app.fake().count(Op::Resume);
    cancel_during(
        &app,
        Op::Fork,
        "/v1/templates/tpl/fork",
        json!({"count": 3}),
    )
    .await;
    assert_eq!(
        app.fake().count(Op::Resume),
        resumed,
        "a child was resumed after its fork was cancelled"
    );
    assert_eq!(end_state(&app).await, before, "the fork left no child");
    app.assert_verified().await;
    // A single action that is not cancellable still says so.
    app.running("p").await;
    app.fake().hold(Op::Pause);
    let (s, v) = app.post_empty("/v1/partitions/p/pause?wait=false").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = id_of(&v);
    app.wait_until("the pause runs", || async {
        app.fake().count(Op::Pause) > 0
    })
    .await;
    let (s, c) = app.post_empty(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{c}");
    app.fake().release(Op::Pause);
    assert_eq!(wait_job(&app, id).await["state"], "succeeded");
}

const SERVICE: &str = "
name: svc
tasks:
  - id: web
    step: request_service
    params: {class: http, pool: sp}
";

#[tokio::test]
async fn a_service_request_run_twice_ends_as_once() {
    // The replay harness: the request step run twice (as a job retried
    // after a cut runs it) takes one member and makes one service.
    let mut ends = Vec::new();
    for replay in [false, true] {
        let app = app(JobConfig {
            replay_steps: replay,
            ..JobConfig::default()
        })
        .await;
        let (s, v) = app
            .post("/v1/pools", json!({"name": "sp", "min": 0, "max": 0}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        workflow(&app, SERVICE).await;
        let (s, out) = app.post("/v1/workflows/svc/run", json!({})).await;
        assert_eq!(s, StatusCode::OK, "{out}");
        let (s, l) = app.get("/v1/services").await;
        assert_eq!(s, StatusCode::OK, "{l}");
        let items = l["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "one service: {l}");
        assert_eq!(items[0]["name"], out["outputs"]["web"]["name"], "{l}");
        app.assert_verified().await;
        ends.push((end_state(&app).await, app.fake().count(Op::Boot)));
    }
    assert_eq!(
        ends[0], ends[1],
        "run twice, it ends as once: one member taken"
    );
}

/// A template's children require what its VM required: each child of a
/// fork gets services of its own at the fork (as a start gives them),
/// and a child whose services cannot be had does not stay.
#[tokio::test]
async fn forked_children_get_their_required_services() {
    let app = app(JobConfig::default()).await;
    let (s, v) = app
        .post("/v1/pools", json!({"name": "sp", "min": 0, "max": 0}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "web", "start": true,
                   "configs": {"d": {"memory_mib": 64, "requires": ["http"]}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.template("web", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .post("/v1/templates/tpl/fork", json!({"count": 2}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let children: Vec<String> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2, "{v}");
    let (_, l) = app.get("/v1/services").await;
    for child in &children {
        let theirs: Vec<&Value> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["guests"] == json!([child]))
            .collect();
        assert_eq!(theirs.len(), 1, "{child} has one service of its own: {l}");
        assert_eq!(theirs[0]["class"], "http", "{l}");
    }
    // With no pool to take one from, a fork makes no child.
    let (s, v) = app.delete("/v1/pools/sp").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = app
        .post("/v1/templates/tpl/fork", json!({"count": 1}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requires http"),
        "{v}"
    );
    let (_, tpl) = app.get("/v1/templates/tpl").await;
    assert_eq!(
        tpl["children"].as_array().map(Vec::len),
        Some(2),
        "the failed child stayed: {tpl}"
    );
    app.assert_verified().await;
}
