//! Carrying a workflow out: one task after another, each recorded in the
//! job's journal before and after it runs; a failure unwinds what was done.
//!
//! The journal is the job's whole memory. [`run`] first replays what it
//! holds (a run interrupted by a crash): tasks that finished keep their
//! outputs and are not run again; a task that started and never finished
//! runs again only if it is marked idempotent, otherwise the job fails at
//! it and unwinds; an unwinding that was interrupted goes on (undo steps
//! are idempotent: one that started and did not finish runs again).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bind::{Scope, Secrets};
use crate::def::{Task, Workflow};
use crate::error::RunError;

/// What a task returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Its first return value (an exit code, an HTTP status), if it has one.
    pub code: Option<i64>,
    /// Named outputs later tasks may bind (`${TASK.KEY}`).
    pub outputs: BTreeMap<String, Value>,
}

/// broodd's side: what each step does and how it is undone. Both must be
/// idempotent for the steps that declare it (running one twice, as a
/// resumed job may, does no harm).
#[async_trait]
pub trait Runner: Send + Sync {
    /// Runs a task with its resolved parameters. An error is the task's
    /// failure, in words a user can act on.
    async fn run(&self, task: &Task, params: &Value) -> Result<TaskResult, String>;
    /// Undoes a task (a create deletes what it made): one that completed, or
    /// one that failed or was cut off by a crash half-way (`done` is then
    /// empty, and there may be nothing to undo). Idempotent; a step with
    /// nothing to undo returns `Ok`.
    async fn undo(&self, task: &Task, params: &Value, done: &TaskResult) -> Result<(), String>;
    /// Whether the job was cancelled: checked before each task; a cancelled
    /// job fails at the next task and unwinds.
    fn cancelled(&self) -> bool {
        false
    }
}

/// The reason a cancelled job's next task fails with.
pub const CANCELLED: &str = "the job was cancelled";

/// One entry of a job's journal. Secrets never reach it: outputs and
/// messages are redacted first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A task is about to run (with its parameters, redacted).
    Started {
        /// The task.
        task: String,
        /// Its resolved parameters.
        params: Value,
    },
    /// It succeeded.
    Succeeded {
        /// The task.
        task: String,
        /// What it returned.
        result: TaskResult,
    },
    /// It failed; `fatal` false when `continue_on_error` let the job go on.
    Failed {
        /// The task.
        task: String,
        /// Why.
        reason: String,
        /// Whether the job fails with it.
        fatal: bool,
    },
    /// It was not run.
    Skipped {
        /// The task.
        task: String,
        /// Why (disabled).
        reason: String,
    },
    /// Its undo is about to run.
    UndoStarted {
        /// The task.
        task: String,
    },
    /// Its undo finished.
    Undone {
        /// The task.
        task: String,
    },
    /// Its undo failed: what it made is left, and named here.
    UndoFailed {
        /// The task.
        task: String,
        /// Why.
        reason: String,
    },
    /// The job ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Every task succeeded, was skipped, or failed without consequence.
    Succeeded {
        /// Each task's outputs (redacted).
        outputs: BTreeMap<String, BTreeMap<String, Value>>,
    },
    /// A task failed; it and the completed ones were undone, newest first.
    Failed {
        /// The task that failed.
        task: String,
        /// Why.
        reason: String,
        /// The tasks undone.
        undone: Vec<String>,
        /// Undos that failed (what they made is still there).
        undo_failed: Vec<String>,
    },
}

/// Where a job's events are kept. `append` returns only once the event is
/// durable: the run goes on only after that.
#[async_trait]
pub trait Journal: Send {
    /// Records an event.
    async fn append(&mut self, e: &Event) -> Result<(), String>;
}

/// What the journal says of each task.
#[derive(Debug, Clone, PartialEq)]
enum Past {
    Started(Value),
    Done(TaskResult),
    FailedSoft,
    FailedHard(String),
    Skipped,
}

struct Replay {
    tasks: BTreeMap<String, Past>,
    unwinding: Option<(String, String)>,
    undo_started: Vec<String>,
    undone: Vec<String>,
    undo_failed: Vec<String>,
    finished: Option<Outcome>,
}

fn replay(wf: &Workflow, past: &[Event]) -> Result<Replay, RunError> {
    let mismatch = |m: String| RunError::Mismatch {
        workflow: wf.name.clone(),
        message: m,
    };
    let mut r = Replay {
        tasks: BTreeMap::new(),
        unwinding: None,
        undo_started: Vec::new(),
        undone: Vec::new(),
        undo_failed: Vec::new(),
        finished: None,
    };
    for e in past {
        let task = match e {
            Event::Started { task, .. }
            | Event::Succeeded { task, .. }
            | Event::Failed { task, .. }
            | Event::Skipped { task, .. }
            | Event::UndoStarted { task }
            | Event::Undone { task }
            | Event::UndoFailed { task, .. } => Some(task),
            Event::Finished { .. } => None,
        };
        if let Some(t) = task
            && !wf.tasks.iter().any(|x| &x.id == t)
        {
            return Err(mismatch(format!(
                "it names task {t:?}, which the workflow has not"
            )));
        }
        match e {
            Event::Started { task, params } => {
                r.tasks.insert(task.clone(), Past::Started(params.clone()));
            }
            Event::Succeeded { task, result } => {
                r.tasks.insert(task.clone(), Past::Done(result.clone()));
            }
            Event::Failed {
                task,
                reason,
                fatal,
            } => {
                if *fatal {
                    r.tasks
                        .insert(task.clone(), Past::FailedHard(reason.clone()));
                    r.unwinding = Some((task.clone(), reason.clone()));
                } else {
                    r.tasks.insert(task.clone(), Past::FailedSoft);
                }
            }
            Event::Skipped { task, .. } => {
                r.tasks.insert(task.clone(), Past::Skipped);
            }
            Event::UndoStarted { task } => r.undo_started.push(task.clone()),
            Event::Undone { task } => r.undone.push(task.clone()),
            Event::UndoFailed { task, .. } => r.undo_failed.push(task.clone()),
            Event::Finished { outcome } => r.finished = Some(outcome.clone()),
        }
    }
    Ok(r)
}

/// The job's data: its values over the workflow's defaults, every input
/// present, nothing it does not declare; and the secrets among them.
fn job_data(
    wf: &Workflow,
    given: BTreeMap<String, Value>,
) -> Result<(BTreeMap<String, Value>, Secrets), RunError> {
    let bad = |m: String| RunError::Data {
        workflow: wf.name.clone(),
        message: m,
    };
    if let Some(k) = given.keys().find(|k| !wf.inputs.contains_key(*k)) {
        return Err(bad(format!(
            "it sets {k:?}, which is not one of the workflow's inputs ({})",
            wf.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut data = BTreeMap::new();
    let mut secrets = Secrets::default();
    for (k, input) in &wf.inputs {
        let v = match given.get(k).or(input.default.as_ref()) {
            Some(v) => v.clone(),
            None => return Err(bad(format!("it does not set {k:?}, which has no default"))),
        };
        if input.secret {
            secrets.add(&v);
        }
        data.insert(k.clone(), v);
    }
    Ok((data, secrets))
}

/// Carries out (or resumes) a job of `wf` with data `given`, whose journal
/// so far is `past`; appends every step to `journal` and returns how the
/// job ended. A job whose journal says it finished returns that at once.
pub async fn run(
    wf: &Workflow,
    given: BTreeMap<String, Value>,
    runner: &dyn Runner,
    journal: &mut dyn Journal,
    past: &[Event],
) -> Result<Outcome, RunError> {
    let (data, secrets) = job_data(wf, given)?;
    let r = replay(wf, past)?;
    if let Some(o) = r.finished {
        return Ok(o);
    }
    let deadline = Instant::now() + Duration::from_secs(wf.timeout_s);
    let mut scope = Scope {
        data,
        outputs: BTreeMap::new(),
    };
    let mut log = Log { journal, secrets };
    // The tasks that completed, in order (what an unwinding undoes).
    let mut completed: Vec<(usize, Value, TaskResult)> = Vec::new();
    let mut failure = r.unwinding.clone();
    for (i, task) in wf.tasks.iter().enumerate() {
        if failure.is_some() {
            // Unwinding already (from the journal): nothing more runs, but
            // what completed before the failure, and the failed task itself,
            // are undone below.
            match r.tasks.get(&task.id) {
                Some(Past::Done(res)) => {
                    let params = scope.resolve(&params_of(task)).unwrap_or(Value::Null);
                    scope.outputs.insert(task.id.clone(), res.outputs.clone());
                    completed.push((i, params, res.clone()));
                }
                Some(Past::FailedHard(_)) => {
                    let params = scope.resolve(&params_of(task)).unwrap_or(Value::Null);
                    completed.push((i, params, TaskResult::default()));
                }
                _ => {}
            }
            continue;
        }
        match r.tasks.get(&task.id) {
            Some(Past::Done(res)) => {
                let params = scope.resolve(&params_of(task)).unwrap_or(Value::Null);
                scope.outputs.insert(task.id.clone(), res.outputs.clone());
                completed.push((i, params, res.clone()));
                continue;
            }
            Some(Past::Skipped | Past::FailedSoft) => continue,
            Some(Past::FailedHard(reason)) => {
                let params = scope.resolve(&params_of(task)).unwrap_or(Value::Null);
                completed.push((i, params, TaskResult::default()));
                failure = Some((task.id.clone(), reason.clone()));
                continue;
            }
            Some(Past::Started(_)) if !task.idempotent => {
                let reason = "interrupted by a restart of broodd while it ran; it is not \
                              marked idempotent, so it is not run again"
                    .to_string();
                // It may have done its work before the crash: it is undone
                // with the rest (undos are idempotent, so undoing what did
                // not happen is harmless).
                let params = scope.resolve(&params_of(task)).unwrap_or(Value::Null);
                completed.push((i, params, TaskResult::default()));
                log.append(Event::Failed {
                    task: task.id.clone(),
                    reason: reason.clone(),
                    fatal: true,
                })
                .await?;
                failure = Some((task.id.clone(), reason));
                continue;
            }
            Some(Past::Started(_)) | None => {}
        }
        if runner.cancelled() {
            log.append(Event::Failed {
                task: task.id.clone(),
                reason: CANCELLED.into(),
                fatal: true,
            })
            .await?;
            failure = Some((task.id.clone(), CANCELLED.into()));
            continue;
        }
        if !task.enabled {
            log.append(Event::Skipped {
                task: task.id.clone(),
                reason: "disabled".into(),
            })
            .await?;
            continue;
        }
        let params = match scope.resolve(&params_of(task)) {
            Ok(p) => p,
            Err(e) => {
                let fatal = !task.continue_on_error;
                log.append(Event::Failed {
                    task: task.id.clone(),
                    reason: e.clone(),
                    fatal,
                })
                .await?;
                if fatal {
                    failure = Some((task.id.clone(), e));
                }
                continue;
            }
        };
        log.append(Event::Started {
            task: task.id.clone(),
            params: params.clone(),
        })
        .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let (limit, whose) = match task.timeout_s.map(Duration::from_secs) {
            Some(t) if t < left => (t, "its own timeout"),
            _ => (left, "the workflow's timeout"),
        };
        let result = match tokio::time::timeout(limit, runner.run(task, &params)).await {
            Err(_) => Err(format!("timed out after {}s ({whose})", limit.as_secs())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(res)) => match (&task.success_codes, res.code) {
                (Some(ok), Some(code)) if !ok.contains(&code) => Err(format!(
                    "returned {code}, which is not one of its success codes {ok:?}"
                )),
                _ => Ok(res),
            },
        };
        match result {
            Ok(res) => {
                log.append(Event::Succeeded {
                    task: task.id.clone(),
                    result: res.clone(),
                })
                .await?;
                scope.outputs.insert(task.id.clone(), res.outputs.clone());
                completed.push((i, params, res));
            }
            Err(reason) => {
                let fatal = !task.continue_on_error;
                log.append(Event::Failed {
                    task: task.id.clone(),
                    reason: reason.clone(),
                    fatal,
                })
                .await?;
                if fatal {
                    // A step that failed half-way may have made something:
                    // its (idempotent) undo runs first.
                    completed.push((i, params, TaskResult::default()));
                    failure = Some((task.id.clone(), reason));
                }
            }
        }
    }
    let outcome = match failure {
        None => Outcome::Succeeded {
            outputs: scope
                .outputs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.iter()
                            .map(|(a, b)| (a.clone(), log.secrets.redact_value(b)))
                            .collect(),
                    )
                })
                .collect(),
        },
        Some((task, reason)) => {
            let mut undone = Vec::new();
            let mut undo_failed = Vec::new();
            for (i, params, res) in completed.iter().rev() {
                let t = &wf.tasks[*i];
                if r.undone.contains(&t.id) {
                    undone.push(t.id.clone());
                    continue;
                }
                if r.undo_failed.contains(&t.id) {
                    undo_failed.push(t.id.clone());
                    continue;
                }
                log.append(Event::UndoStarted { task: t.id.clone() })
                    .await?;
                match runner.undo(t, params, res).await {
                    Ok(()) => {
                        log.append(Event::Undone { task: t.id.clone() }).await?;
                        undone.push(t.id.clone());
                    }
                    Err(e) => {
                        log.append(Event::UndoFailed {
                            task: t.id.clone(),
                            reason: e,
                        })
                        .await?;
                        undo_failed.push(t.id.clone());
                    }
                }
            }
            Outcome::Failed {
                task,
                reason: log.secrets.redact(&reason),
                undone,
                undo_failed,
            }
        }
    };
    log.append(Event::Finished {
        outcome: outcome.clone(),
    })
    .await?;
    Ok(outcome)
}

/// A task's parameters as one JSON object.
fn params_of(task: &Task) -> Value {
    Value::Object(
        task.params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// The journal, behind the redaction of secrets.
struct Log<'a> {
    journal: &'a mut dyn Journal,
    secrets: Secrets,
}

impl Log<'_> {
    async fn append(&mut self, e: Event) -> Result<(), RunError> {
        let redacted = match e {
            Event::Started { task, params } => Event::Started {
                task,
                params: self.secrets.redact_value(&params),
            },
            Event::Succeeded { task, result } => Event::Succeeded {
                task,
                result: TaskResult {
                    code: result.code,
                    outputs: result
                        .outputs
                        .iter()
                        .map(|(k, v)| (k.clone(), self.secrets.redact_value(v)))
                        .collect(),
                },
            },
            Event::Failed {
                task,
                reason,
                fatal,
            } => Event::Failed {
                task,
                reason: self.secrets.redact(&reason),
                fatal,
            },
            Event::UndoFailed { task, reason } => Event::UndoFailed {
                task,
                reason: self.secrets.redact(&reason),
            },
            other => other,
        };
        self.journal
            .append(&redacted)
            .await
            .map_err(RunError::Journal)
    }
}
