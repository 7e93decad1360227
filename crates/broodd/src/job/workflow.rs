//! Workflow jobs: a stored definition run as a job of kind `workflow.run`.
//!
//! The job's parameters hold the whole graph (the definition as it was when
//! the job was submitted, so editing the workflow later does not change a
//! running job), its version, the job's data with secrets written `***`,
//! and the caller (actor, unit). Every task step goes to the job's log as a
//! `task` event (`brood_workflow::Event`) before the run goes on, which is
//! the journal [`brood_workflow::run`] resumes from after a crash.
//!
//! Secrets are kept in memory only: a job whose data had secrets cannot go
//! on after a restart of broodd, so it fails at its next task and unwinds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use axum::http::StatusCode;
use brood_api::ErrorCode;
use brood_workflow::{Event, Journal, Outcome, Runner, Secrets, Task, TaskResult, Workflow};
use serde_json::Value;

use super::tasks::HostRunner;
use super::{Done, JobCtx};
use crate::api::error::{ApiError, ApiResult};
use crate::host::Host;
use crate::tenancy::Caller;

/// The journal of one job: its `task` events in the ledger.
struct LedgerJournal {
    host: Arc<Host>,
    job: u64,
}

#[async_trait]
impl Journal for LedgerJournal {
    async fn append(&mut self, e: &Event) -> Result<(), String> {
        let body = serde_json::to_value(e).map_err(|e| e.to_string())?;
        self.host
            .jobs
            .append_job_event(self.job, "task", body)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The replay hook (`JobConfig::replay_steps`): each step that succeeds is
/// run again and each undo twice, so a step that is not idempotent shows
/// (the second run fails, or leaves more behind than one run).
struct Twice<'a> {
    inner: &'a HostRunner,
}

#[async_trait]
impl Runner for Twice<'_> {
    async fn run(&self, task: &Task, params: &Value) -> Result<TaskResult, String> {
        self.inner.run(task, params).await?;
        self.inner
            .run(task, params)
            .await
            .map_err(|e| format!("{e} (when run a second time)"))
    }

    async fn undo(&self, task: &Task, params: &Value, done: &TaskResult) -> Result<(), String> {
        self.inner.undo(task, params, done).await?;
        self.inner
            .undo(task, params, done)
            .await
            .map_err(|e| format!("{e} (when undone a second time)"))
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// The job parameters of a run of `wf` (version `version`) with `data`.
pub fn params(wf: &Workflow, version: u64, data: &BTreeMap<String, Value>) -> Value {
    let mut secrets = Secrets::default();
    for (k, i) in &wf.inputs {
        if i.secret
            && let Some(v) = data.get(k)
        {
            secrets.add(v);
        }
    }
    let shown: BTreeMap<&String, Value> = data
        .iter()
        .map(|(k, v)| {
            let secret = wf.inputs.get(k).is_some_and(|i| i.secret);
            (
                k,
                if secret {
                    Value::from("***")
                } else {
                    secrets.redact_value(v)
                },
            )
        })
        .collect();
    serde_json::json!({
        "workflow": wf,
        "version": version,
        "data": shown,
        "has_secrets": wf.inputs.values().any(|i| i.secret),
    })
}

/// The journal entries of a job so far.
async fn past(host: &Host, job: u64) -> ApiResult<Vec<Event>> {
    let mut out = Vec::new();
    for e in host.jobs.job_events(job).await? {
        if e.kind == "task" {
            let ev: Event = serde_json::from_value(e.body).map_err(|err| {
                ApiError::internal(&format!("read the journal of job {job}"), &err)
            })?;
            out.push(ev);
        }
    }
    Ok(out)
}

/// Runs (or resumes) a workflow job. `data` is the job's data with its
/// secrets, when the job was submitted in this run of broodd; none when it
/// resumes after a restart.
pub async fn run(ctx: JobCtx, data: Option<BTreeMap<String, Value>>) -> ApiResult<Done> {
    let p = &ctx.job.params;
    let wf: Workflow = serde_json::from_value(p["workflow"].clone())
        .map_err(|e| ApiError::internal(&format!("read the graph of job {}", ctx.job.id), &e))?;
    let resumed = data.is_none();
    let data: BTreeMap<String, Value> = match data {
        Some(d) => d,
        None => serde_json::from_value(p["data"].clone()).unwrap_or_default(),
    };
    let caller = caller_of(&ctx.host, &ctx.job).await?;
    let mut past = past(&ctx.host, ctx.job.id).await?;
    let mut journal = LedgerJournal {
        host: ctx.host.clone(),
        job: ctx.job.id,
    };
    if resumed && p["has_secrets"].as_bool().unwrap_or(false) {
        // Its secrets died with the old broodd: it cannot go on, only unwind.
        if let Some(next) = next_task(&wf, &past) {
            let e = Event::Failed {
                task: next,
                reason: "broodd restarted while the job ran; its secrets are not stored, so \
                         it cannot go on: run it again"
                    .into(),
                fatal: true,
            };
            journal
                .append(&e)
                .await
                .map_err(|m| ApiError::conflict(format!("job {}: {m}", ctx.job.id)))?;
            past.push(e);
        }
    }
    let runner = HostRunner::new(
        ctx.host.clone(),
        caller,
        ctx.cancelled.clone(),
        ctx.job.clone(),
    );
    let twice = Twice { inner: &runner };
    let runner: &dyn Runner = if ctx.host.feature::<super::Jobs>().config().replay_steps {
        &twice
    } else {
        &runner
    };
    let outcome = brood_workflow::run(&wf, data, runner, &mut journal, &past)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    match outcome {
        Outcome::Succeeded { outputs } => {
            let body = serde_json::to_vec(&serde_json::json!({
                "workflow": wf.name,
                "outputs": outputs,
            }))
            .map_err(|e| ApiError::internal("encode the outputs", &e))?;
            Ok(Done::ok(body))
        }
        Outcome::Failed {
            task,
            reason,
            undone,
            undo_failed,
        } => {
            let cancelled =
                ctx.cancelled.load(Ordering::SeqCst) && reason == brood_workflow::CANCELLED;
            let mut m = format!(
                "workflow {}: task {task} failed: {reason}; undone: {}",
                wf.name,
                if undone.is_empty() {
                    "nothing".to_string()
                } else {
                    undone.join(", ")
                }
            );
            if !undo_failed.is_empty() {
                m.push_str(&format!(
                    "; these could not be undone and are left: {}",
                    undo_failed.join(", ")
                ));
            }
            if cancelled {
                m = format!("{m} (the job was cancelled)");
            }
            Err(ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, m))
        }
    }
}

/// The first task the journal has not finished.
fn next_task(wf: &Workflow, past: &[Event]) -> Option<String> {
    wf.tasks
        .iter()
        .find(|t| {
            !past.iter().any(|e| match e {
                Event::Succeeded { task, .. }
                | Event::Failed { task, .. }
                | Event::Skipped { task, .. } => task == &t.id,
                _ => false,
            })
        })
        .map(|t| t.id.clone())
}

/// The caller a job acts as: its actor, inside its unit.
pub async fn caller_of(host: &Host, job: &brood_ledger::JobRecord) -> ApiResult<Caller> {
    let c = Caller::of_actor(host, &job.actor).await?;
    Ok(match (job.unit, c.scope()) {
        (Some(u), None) => match host.ledger.unit_by_uuid(u).await? {
            Some(unit) => c.enter(host, &unit.name).await?,
            None => c,
        },
        _ => c,
    })
}
