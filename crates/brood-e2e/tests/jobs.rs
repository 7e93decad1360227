//! Jobs and workflows on real VMs: a two-task workflow whose second task
//! uses the first's output (create, then exec in it), a task timing out
//! with continue-on-error true and false, success codes, a disabled task
//! skipped, a host script in its sandbox, secrets absent from broodd's log,
//! the job and the audit log; and kill -9 of broodd in the middle of a
//! workflow, after which the job is failed and undone and the ledger
//! verifies; a start of a real VM cancelled while it runs ends with the VM
//! stopped. At most one VM per test (two at once).
#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::{Value, json};

const SECRET: &str = "pa55-e2e-zq81";

fn store(b: &Broodd, yaml: &str) {
    b.ok("POST", "/v1/workflows", Some(&json!({"definition": yaml})));
}

fn job_of(b: &Broodd, target: &str) -> Value {
    let l = b.ok("GET", &format!("/v1/jobs?target={target}&limit=1"), None);
    let id = l["items"][0]["id"].as_u64().expect("a job");
    b.ok("GET", &format!("/v1/jobs/{id}"), None)
}

#[test]
fn a_workflow_creates_a_vm_and_runs_in_it_with_every_task_property() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    store(
        &b,
        "
name: web
inputs:
  name: {}
  password: {secret: true}
tasks:
  - id: make
    step: create
    params: {name: '${data.name}', memory_mib: 256}
  - id: agent
    step: wait_agent
    idempotent: true
    params: {vm: '${make.name}', timeout_ms: 120000}
  - id: hello
    step: exec
    params: {vm: '${make.name}', command: 'echo ${make.name}; echo ${data.password} > /tmp/pw; wc -c < /tmp/pw'}
  - id: three
    step: exec
    success_codes: [0, 3]
    params: {vm: '${make.name}', command: 'exit 3'}
  - id: skipped
    step: stop
    enabled: false
    params: {vm: '${make.name}'}
  - id: slow
    step: guest_script
    timeout_s: 2
    continue_on_error: true
    params: {vm: '${make.name}', script: 'sleep 30'}
  - id: sandbox
    step: host_script
    timeout_s: 30
    params: {script: 'id -u; grep -c : /proc/net/dev; echo ${data.password} | wc -c'}
",
    );
    let out = b.ok(
        "POST",
        "/v1/workflows/web/run",
        Some(&json!({"data": {"name": "wf-1", "password": SECRET}})),
    );
    // The second task used the first's output: the VM's name.
    assert_eq!(out["outputs"]["hello"]["stdout"], "wf-1\n14\n", "{out}");
    assert_eq!(out["outputs"]["three"]["code"], 3);
    assert_eq!(
        out["outputs"]["sandbox"]["stdout"], "65534\n1\n14\n",
        "the host script runs as nobody with only a loopback: {out}"
    );
    let p = b.ok("GET", "/v1/partitions/wf-1", None);
    assert_eq!(p["run_state"], "running", "the disabled stop was skipped");
    let j = job_of(&b, "web");
    let events: Vec<&Value> = j["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["body"])
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "skipped" && e["task"] == "skipped")
    );
    assert!(
        events.iter().any(|e| e["event"] == "failed"
            && e["task"] == "slow"
            && e["fatal"] == false
            && e["reason"].as_str().unwrap_or("").contains("timed out")),
        "{j}"
    );
    // Without continue_on_error the timeout fails the job.
    store(
        &b,
        "
name: strict
tasks:
  - id: slow
    step: guest_script
    timeout_s: 2
    params: {vm: wf-1, script: 'sleep 30'}
",
    );
    let (s, v) = b.call("POST", "/v1/workflows/strict/run", Some(&json!({})));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    // The secret is nowhere but in the guest.
    let log = b.ok("GET", "/v1/ledger/log?limit=1000", None);
    let jobs = b.ok("GET", "/v1/jobs?limit=1000", None);
    for (what, text) in [
        ("broodd's log", b.log()),
        ("the job", j.to_string()),
        ("the job list", jobs.to_string()),
        ("the audit log", log.to_string()),
    ] {
        assert!(!text.contains(SECRET), "{what} holds the secret");
    }
    b.ok("DELETE", "/v1/partitions/wf-1?force=true", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn kill9_of_broodd_mid_workflow_fails_the_job_and_undoes_it() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    store(
        &b,
        "
name: long
tasks:
  - id: make
    step: create
    params: {name: long-1, memory_mib: 256}
  - id: agent
    step: wait_agent
    idempotent: true
    params: {vm: long-1, timeout_ms: 120000}
  - id: work
    step: guest_script
    params: {vm: long-1, script: 'sleep 60'}
",
    );
    let (s, j) = b.call(
        "POST",
        "/v1/workflows/long/run?wait=false",
        Some(&json!({})),
    );
    assert_eq!(s, 202, "{j}");
    let id = j["id"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(180), || {
            let j = b.ok("GET", &format!("/v1/jobs/{id}"), None);
            j["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["body"]["event"] == "started" && e["body"]["task"] == "work")
        }),
        "the workflow reached its long task"
    );
    b.kill9();
    b.restart();
    let j = b.ok("GET", &format!("/v1/jobs/{id}/wait?timeout_s=120"), None);
    assert_eq!(j["state"], "failed", "{j}");
    let err = j["error"].as_str().unwrap();
    assert!(err.contains("task work failed"), "{err}");
    assert!(err.contains("make"), "the create was undone: {err}");
    let (s, _) = b.call("GET", "/v1/partitions/long-1", None);
    assert_eq!(s, 404, "nothing is left of the workflow");
    let running = b.ok("GET", "/v1/jobs?state=running", None);
    assert!(running["items"].as_array().unwrap().is_empty(), "{running}");
    let o = b.brood().args(["ledger", "verify"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn a_start_cancelled_while_it_runs_ends_with_the_vm_stopped() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "cs", "configs": {"d": {"memory_mib": 256}}})),
    );
    // The cancel must land while the start's QEMU comes up: a start that
    // ended first is stopped and tried again (a few times at most).
    let mut cancelled = None;
    for _ in 0..8 {
        let (s, j) = b.call("POST", "/v1/partitions/cs/start?wait=false", None);
        assert_eq!(s, 202, "{j}");
        let id = j["id"].as_u64().unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || {
                b.ok("GET", &format!("/v1/jobs/{id}"), None)["state"] != "queued"
            }),
            "the start ran"
        );
        let (s, c) = b.call("POST", &format!("/v1/jobs/{id}/cancel"), None);
        let j = b.ok("GET", &format!("/v1/jobs/{id}/wait?timeout_s=120"), None);
        if s == 200 {
            cancelled = Some(j);
            break;
        }
        // Too late: the start had ended (409 names it); stop and try again.
        assert_eq!(s, 409, "{c}");
        assert_eq!(j["state"], "succeeded", "{j}");
        b.ok("POST", "/v1/partitions/cs/kill", None);
    }
    let j = cancelled.expect("a cancel landed while a start ran");
    assert_eq!(j["state"], "cancelled", "{j}");
    assert!(
        j["error"].as_str().unwrap_or_default().contains("undone"),
        "{j}"
    );
    let p = b.ok("GET", "/v1/partitions/cs", None);
    assert_eq!(
        p["run_state"], "stopped",
        "the cancelled start left it stopped: {p}"
    );
    let o = b.brood().args(["ledger", "verify"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    b.ok("DELETE", "/v1/partitions/cs", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
