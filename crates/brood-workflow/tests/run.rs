//! The executor against a model of broodd's steps: outputs flow from task
//! to task, every task property does what it says, secrets stay out of the
//! journal, a failure at any step leaves nothing behind, and a run cut off
//! after any journal entry (a crash) resumes without running a task twice.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use brood_workflow::{Event, Journal, Outcome, Runner, Task, TaskResult, Workflow, run};
use serde_json::{Value, json};

/// VMs that exist, every call made, and the task that fails (or hangs).
#[derive(Default)]
struct World {
    vms: Mutex<BTreeSet<String>>,
    calls: Mutex<Vec<String>>,
    fail: Option<String>,
    hang: Option<String>,
    code: BTreeMap<String, i64>,
}

#[async_trait]
impl Runner for World {
    async fn run(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("run {} {params}", task.id));
        if self.hang.as_deref() == Some(&task.id) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self.fail.as_deref() == Some(&task.id) {
            return Err(format!("{} failed as asked", task.id));
        }
        let mut out = TaskResult::default();
        match task.step.as_str() {
            "create" => {
                let name = params["name"].as_str().unwrap().to_string();
                // Idempotent: creating what exists is fine.
                self.vms.lock().unwrap().insert(name.clone());
                out.outputs.insert("name".into(), json!(name));
            }
            "exec" => {
                let vm = params["vm"].as_str().unwrap();
                if !self.vms.lock().unwrap().contains(vm) {
                    return Err(format!("no VM {vm}"));
                }
                out.code = Some(*self.code.get(&task.id).unwrap_or(&0));
                out.outputs.insert(
                    "stdout".into(),
                    json!(format!("ran {}", params["command"].as_str().unwrap())),
                );
            }
            _ => {}
        }
        Ok(out)
    }

    async fn undo(&self, task: &Task, params: &Value, _done: &TaskResult) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("undo {}", task.id));
        if task.step.as_str() == "create" {
            self.vms
                .lock()
                .unwrap()
                .remove(params["name"].as_str().unwrap());
        }
        Ok(())
    }
}

/// A journal in memory that can "crash" after a number of entries.
#[derive(Default)]
struct Mem {
    events: Vec<Event>,
    crash_after: Option<usize>,
}

#[async_trait]
impl Journal for Mem {
    async fn append(&mut self, e: &Event) -> Result<(), String> {
        if self.crash_after.is_some_and(|n| self.events.len() >= n) {
            return Err("broodd was killed".into());
        }
        self.events.push(e.clone());
        Ok(())
    }
}

const WF: &str = r#"
name: web
inputs:
  password: {secret: true}
  size: {default: 256}
tasks:
  - id: make
    step: create
    params: {name: web-1, memory_mib: "${data.size}"}
  - id: hello
    step: exec
    params: {vm: "${make.name}", command: "echo ${data.password}"}
  - id: second
    step: exec
    params: {vm: "${make.name}", command: "say ${hello.stdout}"}
"#;

fn data() -> BTreeMap<String, Value> {
    BTreeMap::from([("password".to_string(), json!("hunter2"))])
}

fn journal_text(j: &Mem) -> String {
    serde_json::to_string(&j.events).unwrap()
}

#[tokio::test]
async fn the_second_task_uses_the_firsts_output_and_secrets_stay_hidden() {
    let wf = Workflow::parse(WF).unwrap();
    let w = World::default();
    let mut j = Mem::default();
    let o = run(&wf, data(), &w, &mut j, &[]).await.unwrap();
    let Outcome::Succeeded { outputs } = &o else {
        panic!("{o:?}")
    };
    assert_eq!(outputs["second"]["stdout"], json!("ran say ran echo ***"));
    // The runner got the secret; nothing that was written down has it.
    assert!(
        w.calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.contains("echo hunter2"))
    );
    let text = journal_text(&j);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("echo ***"), "{text}");
    assert!(!format!("{o:?}").contains("hunter2"));
}

#[tokio::test]
async fn task_properties_do_what_they_say() {
    // A disabled task is skipped; success codes decide; continue-on-error
    // makes a failure and a timeout non-fatal; a task's own timeout ends it.
    let wf = Workflow::parse(
        r#"
name: props
tasks:
  - {id: make, step: create, params: {name: v}}
  - {id: off, step: exec, enabled: false, params: {vm: v, command: x}}
  - {id: three, step: exec, success_codes: [0, 3], params: {vm: v, command: x}}
  - {id: slow, step: exec, timeout_s: 1, continue_on_error: true, params: {vm: v, command: x}}
  - {id: bad, step: exec, continue_on_error: true, params: {vm: v, command: x}}
  - {id: last, step: exec, params: {vm: v, command: x}}
"#,
    )
    .unwrap();
    let w = World {
        hang: Some("slow".into()),
        fail: Some("bad".into()),
        code: BTreeMap::from([("three".into(), 3)]),
        ..World::default()
    };
    let mut j = Mem::default();
    let o = run(&wf, BTreeMap::new(), &w, &mut j, &[]).await.unwrap();
    assert!(matches!(o, Outcome::Succeeded { .. }), "{o:?}");
    assert!(j.events.contains(&Event::Skipped {
        task: "off".into(),
        reason: "disabled".into()
    }));
    assert!(
        !w.calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("run off"))
    );
    let soft: Vec<&Event> = j
        .events
        .iter()
        .filter(|e| matches!(e, Event::Failed { fatal: false, .. }))
        .collect();
    assert_eq!(soft.len(), 2, "{soft:?}");
    assert!(
        format!("{soft:?}").contains("timed out after 1s (its own timeout)"),
        "{soft:?}"
    );

    // The same code outside the success codes, and no continue-on-error: the job fails and unwinds.
    let strict = Workflow::parse(
        "name: strict\ntasks:\n  - {id: make, step: create, params: {name: v}}\n  - {id: three, step: exec, success_codes: [0], params: {vm: v, command: x}}\n",
    )
    .unwrap();
    let w = World {
        code: BTreeMap::from([("three".into(), 3)]),
        ..World::default()
    };
    let o = run(&strict, BTreeMap::new(), &w, &mut Mem::default(), &[])
        .await
        .unwrap();
    match o {
        Outcome::Failed {
            task,
            reason,
            undone,
            ..
        } => {
            assert_eq!(task, "three");
            assert!(reason.contains("returned 3"), "{reason}");
            assert_eq!(
                undone,
                ["three", "make"],
                "the failed step first, then the rest, newest first"
            );
        }
        o => panic!("{o:?}"),
    }
    assert!(
        w.vms.lock().unwrap().is_empty(),
        "the created VM was undone"
    );
}

#[tokio::test]
async fn a_task_with_no_timeout_still_ends_with_the_workflow() {
    let wf = Workflow::parse(
        "name: t\ntimeout_s: 1\ntasks:\n  - {id: make, step: create, params: {name: v}}\n  - {id: slow, step: exec, params: {vm: v, command: x}}\n",
    )
    .unwrap();
    let w = World {
        hang: Some("slow".into()),
        ..World::default()
    };
    let o = run(&wf, BTreeMap::new(), &w, &mut Mem::default(), &[])
        .await
        .unwrap();
    let Outcome::Failed { reason, .. } = o else {
        panic!()
    };
    assert!(reason.contains("the workflow's timeout"), "{reason}");
    assert!(w.vms.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failure_at_each_step_in_turn_leaves_nothing_behind() {
    let wf = Workflow::parse(WF).unwrap();
    for at in ["make", "hello", "second"] {
        let w = World {
            fail: Some(at.into()),
            ..World::default()
        };
        let o = run(&wf, data(), &w, &mut Mem::default(), &[])
            .await
            .unwrap();
        let Outcome::Failed {
            task, undo_failed, ..
        } = o
        else {
            panic!("{at}: {o:?}")
        };
        assert_eq!(task, at);
        assert!(undo_failed.is_empty());
        assert!(w.vms.lock().unwrap().is_empty(), "{at}: {:?}", w.vms);
    }
}

#[tokio::test]
async fn a_crash_after_any_journal_entry_resumes_without_running_a_task_twice() {
    let wf = Workflow::parse(WF).unwrap();
    // A full run writes this many entries.
    let mut full = Mem::default();
    run(&wf, data(), &World::default(), &mut full, &[])
        .await
        .unwrap();
    for cut in 0..full.events.len() {
        let w = World::default();
        let mut j = Mem {
            crash_after: Some(cut),
            ..Mem::default()
        };
        let first = run(&wf, data(), &w, &mut j, &[]).await;
        assert!(
            first.is_err(),
            "cut {cut}: the journal failed, so the run stops"
        );
        let past = j.events.clone();
        let mut rest = Mem::default();
        let o = run(&wf, data(), &w, &mut rest, &past).await.unwrap();
        let calls = w.calls.lock().unwrap().clone();
        let runs_of = |t: &str| {
            calls
                .iter()
                .filter(|c| c.starts_with(&format!("run {t} ")))
                .count()
        };
        for t in ["make", "hello", "second"] {
            assert!(
                runs_of(t) <= 1,
                "cut {cut}: {t} ran {} times: {calls:?}",
                runs_of(t)
            );
        }
        match &o {
            Outcome::Succeeded { .. } => {
                assert_eq!(
                    *w.vms.lock().unwrap(),
                    BTreeSet::from(["web-1".to_string()]),
                    "cut {cut}"
                )
            }
            // Cut while a non-idempotent task ran: it failed and what was done is undone.
            Outcome::Failed { reason, .. } => {
                assert!(
                    reason.contains("not marked idempotent"),
                    "cut {cut}: {reason}"
                );
                assert!(w.vms.lock().unwrap().is_empty(), "cut {cut}: {:?}", w.vms);
            }
        }
        // Once finished, a resume just reports the outcome.
        let mut again = Mem::default();
        let mut all = past.clone();
        all.extend(rest.events.clone());
        let o2 = run(&wf, data(), &w, &mut again, &all).await.unwrap();
        assert_eq!(o, o2);
        assert!(again.events.is_empty());
    }
}

#[tokio::test]
async fn an_idempotent_task_interrupted_runs_again() {
    let wf = Workflow::parse(
        "name: i\ntasks:\n  - {id: make, step: create, idempotent: true, params: {name: v}}\n",
    )
    .unwrap();
    let past = vec![Event::Started {
        task: "make".into(),
        params: json!({"name": "v"}),
    }];
    let w = World::default();
    let o = run(&wf, BTreeMap::new(), &w, &mut Mem::default(), &past)
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Succeeded { .. }), "{o:?}");
    assert!(w.vms.lock().unwrap().contains("v"));
}

#[tokio::test]
async fn bad_data_is_refused_before_anything_runs() {
    let wf = Workflow::parse(WF).unwrap();
    let w = World::default();
    let e = run(&wf, BTreeMap::new(), &w, &mut Mem::default(), &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not set \"password\""), "{e}");
    let mut d = data();
    d.insert("bogus".into(), json!(1));
    let e = run(&wf, d, &w, &mut Mem::default(), &[]).await.unwrap_err();
    assert!(e.to_string().contains("\"bogus\""), "{e}");
    assert!(w.calls.lock().unwrap().is_empty());
    let alien = vec![Event::Skipped {
        task: "nope".into(),
        reason: "x".into(),
    }];
    let e = run(&wf, data(), &w, &mut Mem::default(), &alien)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"nope\""), "{e}");
}
