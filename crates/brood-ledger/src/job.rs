//! The job store: every mutating action of a unit as a durable row, its
//! append-only event log (a workflow's journal lives there too), and the
//! stored, versioned workflow definitions.
//!
//! ```text
//! job(id PK AUTOINCREMENT, unit, actor, kind, target, queue high|normal,
//!     priority, adds_vm 0|1, state queued|running|succeeded|failed|
//!     cancelled|refused, params JSON (secrets redacted), progress,
//!     result JSON, error, runner, created_at, started_at, finished_at)
//! job_event(job REFERENCES job, seq, time, kind, body JSON, PK (job, seq))
//!     append-only: triggers abort UPDATE and DELETE
//! workflow(name, version, definition JSON, created_by, created_at,
//!          PK (name, version))
//! ```
//!
//! Admission ([`Ledger::admit_job`]) and every state change
//! ([`Ledger::set_job_state`]) are one SQLite transaction each, the event
//! that records it included, on the ledger's writer thread: a kill -9 at
//! any point leaves either the old row and log or the new ones. These rows
//! are not resource changes, so they do not go to the audit log (which
//! records the resource transactions the jobs make).
//!
//! broodd reaches this store only through [`JobStore`], a small trait, so
//! the cluster (PostgreSQL) can give it another home.

use async_trait_free::JobStoreFuture;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DbContext, LedgerError};
use crate::ledger::Ledger;
use crate::store::now_rfc3339;

/// The `V_JOBS` migration.
pub(crate) const V_JOBS: &str = "
CREATE TABLE job (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    unit        TEXT,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    target      TEXT NOT NULL,
    queue       TEXT NOT NULL CHECK (queue IN ('high', 'normal')),
    priority    INTEGER NOT NULL,
    adds_vm     INTEGER NOT NULL CHECK (adds_vm IN (0, 1)),
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
                    'cancelled', 'refused')),
    params      TEXT NOT NULL CHECK (json_valid(params)),
    progress    TEXT NOT NULL DEFAULT '',
    result      TEXT CHECK (result IS NULL OR json_valid(result)),
    error       TEXT,
    runner      TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX job_state ON job (state, queue, priority, id);
CREATE INDEX job_unit ON job (unit, id);

CREATE TABLE job_event (
    job  INTEGER NOT NULL REFERENCES job (id),
    seq  INTEGER NOT NULL CHECK (seq >= 0),
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL CHECK (json_valid(body)),
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
CREATE TRIGGER job_event_no_update BEFORE UPDATE ON job_event
    BEGIN SELECT RAISE(ABORT, 'job_event is append-only'); END;
CREATE TRIGGER job_event_no_delete BEFORE DELETE ON job_event
    BEGIN SELECT RAISE(ABORT, 'job_event is append-only'); END;

CREATE TABLE workflow (
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64
                   AND name NOT GLOB '*[^a-z0-9_.-]*'),
    version    INTEGER NOT NULL CHECK (version >= 1),
    definition TEXT NOT NULL CHECK (json_valid(definition)),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
";

/// Where a job waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobQueue {
    /// Light jobs: start, stop, save, pause, resume, restore, kill.
    High,
    /// Heavy jobs: create, fork, delete, service requests, workflows.
    Normal,
}

impl JobQueue {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobQueue::High => "high",
            JobQueue::Normal => "normal",
        }
    }

    fn parse(s: &str) -> Option<JobQueue> {
        match s {
            "high" => Some(JobQueue::High),
            "normal" => Some(JobQueue::Normal),
            _ => None,
        }
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted, waiting for its turn.
    Queued,
    /// Running.
    Running,
    /// Done.
    Succeeded,
    /// Ran and failed (what it did was undone).
    Failed,
    /// Cancelled before it ran, or while it ran (then undone).
    Cancelled,
    /// Not admitted: `error` says why.
    Refused,
}

impl JobState {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Refused => "refused",
        }
    }

    /// Parses the column value.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "refused" => JobState::Refused,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One job row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its number.
    pub id: u64,
    /// The unit it acts for (none: an administrator's job).
    pub unit: Option<uuid::Uuid>,
    /// Who submitted it.
    pub actor: String,
    /// What it does (`partition.start`, `workflow.run`, ...).
    pub kind: String,
    /// What it acts on (a partition, a template, a workflow).
    pub target: String,
    /// Its queue.
    pub queue: JobQueue,
    /// Its partition's priority (higher runs first within a queue).
    pub priority: i64,
    /// Whether it adds a VM to the host (counted against the host's maximum).
    pub adds_vm: bool,
    /// Its state.
    pub state: JobState,
    /// Its parameters, secrets redacted.
    pub params: Value,
    /// What it is doing now.
    pub progress: String,
    /// What it returned, once succeeded.
    pub result: Option<Value>,
    /// Why it failed or was refused.
    pub error: Option<String>,
    /// The broodd instance that runs it.
    pub runner: Option<String>,
    /// When it was submitted (RFC 3339).
    pub created_at: String,
    /// When it began to run.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
}

/// A job to admit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The unit it acts for.
    pub unit: Option<uuid::Uuid>,
    /// Who submits it.
    pub actor: String,
    /// What it does.
    pub kind: String,
    /// What it acts on.
    pub target: String,
    /// Its queue.
    pub queue: JobQueue,
    /// Its priority within the queue.
    pub priority: i64,
    /// Whether it adds a VM.
    pub adds_vm: bool,
    /// Its parameters, secrets already redacted.
    pub params: Value,
}

/// The bounds admission checks, in the same transaction as the insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitLimits {
    /// Most jobs waiting in one queue; past it a job is refused.
    pub queue_bound: u64,
    /// Most VMs on the host: active partitions plus admitted jobs that add one.
    pub max_vms: Option<u64>,
}

/// One entry of a job's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job: u64,
    /// Its place in the job's log, from 0.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// `state` (a state change), `task` (a workflow journal entry), `progress`.
    pub kind: String,
    /// What happened.
    pub body: Value,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only of this unit.
    pub unit: Option<uuid::Uuid>,
    /// Only acting on this target.
    pub target: Option<String>,
    /// Only older than this id (paging, newest first).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// One stored version of a workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// Its name.
    pub name: String,
    /// Its version, from 1.
    pub version: u64,
    /// The definition (JSON).
    pub definition: Value,
    /// Who stored it.
    pub created_by: String,
    /// When.
    pub created_at: String,
}

/// The most events one job's log holds (a bound on a runaway workflow).
pub const MAX_JOB_EVENTS: u64 = 100_000;

/// The job store as broodd uses it: every read and write of jobs, their
/// logs and the workflow definitions goes through it. The ledger
/// implements it on SQLite (one host); the cluster's catalog implements it
/// on PostgreSQL (`brood_cluster::PgJobStore`), where a host's jobs and
/// the cluster's workflows live when broodd runs with `--catalog`.
/// [`conformance`] checks that both behave alike.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Where the jobs live (`sqlite`, `postgresql`), for `brood host show`.
    fn backend(&self) -> &'static str;
    /// Admits a job (state `queued`) or records it refused, in one transaction.
    fn admit_job(&self, job: NewJob, limits: AdmitLimits) -> JobStoreFuture<'_, JobRecord>;
    /// Moves a job from one of `from` to `to` with its event, in one transaction.
    fn set_job_state(&self, change: JobChange) -> JobStoreFuture<'_, JobRecord>;
    /// Appends to a job's log; returns the entry's place in it.
    fn append_job_event(&self, job: u64, kind: &str, body: Value) -> JobStoreFuture<'_, u64>;
    /// The job with this id.
    fn job(&self, id: u64) -> JobStoreFuture<'_, Option<JobRecord>>;
    /// Jobs, newest first.
    fn jobs(&self, filter: JobFilter) -> JobStoreFuture<'_, Vec<JobRecord>>;
    /// A job's log, oldest first.
    fn job_events(&self, id: u64) -> JobStoreFuture<'_, Vec<JobEvent>>;
    /// Stores a new version of a workflow definition; returns its version.
    fn put_workflow(&self, name: &str, definition: Value, actor: &str) -> JobStoreFuture<'_, u64>;
    /// A workflow's newest version, or the one asked for.
    fn workflow(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> JobStoreFuture<'_, Option<WorkflowRecord>>;
    /// Every workflow's newest version, by name.
    fn workflows(&self) -> JobStoreFuture<'_, Vec<WorkflowRecord>>;
    /// Deletes every version of a workflow; false if it had none.
    fn delete_workflow(&self, name: &str) -> JobStoreFuture<'_, bool>;
}

/// Boxed futures for [`JobStore`] without pulling `async-trait` into the ledger.
pub mod async_trait_free {
    use std::future::Future;
    use std::pin::Pin;

    use crate::error::LedgerError;

    /// What a [`super::JobStore`] method returns.
    pub type JobStoreFuture<'a, T> =
        Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;
}

/// A state change of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobChange {
    /// The job.
    pub job: u64,
    /// The states it may be in now (a precondition).
    pub from: Vec<JobState>,
    /// Its new state.
    pub to: JobState,
    /// Its progress text (unchanged when none).
    pub progress: Option<String>,
    /// Its result (with `succeeded`).
    pub result: Option<Value>,
    /// Why (with `failed`, `cancelled`).
    pub error: Option<String>,
    /// The broodd instance that runs it (with `running`).
    pub runner: Option<String>,
}

impl JobChange {
    /// A change from `from` to `to` with nothing else.
    pub fn new(job: u64, from: &[JobState], to: JobState) -> JobChange {
        JobChange {
            job,
            from: from.to_vec(),
            to,
            progress: None,
            result: None,
            error: None,
            runner: None,
        }
    }
}

impl JobStore for Ledger {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn admit_job(&self, job: NewJob, limits: AdmitLimits) -> JobStoreFuture<'_, JobRecord> {
        Box::pin(self.write(move |c| admit(c, &job, limits)))
    }

    fn set_job_state(&self, change: JobChange) -> JobStoreFuture<'_, JobRecord> {
        Box::pin(self.write(move |c| set_state(c, &change)))
    }

    fn append_job_event(&self, job: u64, kind: &str, body: Value) -> JobStoreFuture<'_, u64> {
        let kind = kind.to_owned();
        Box::pin(self.write(move |c| append(c, job, &kind, &body)))
    }

    fn job(&self, id: u64) -> JobStoreFuture<'_, Option<JobRecord>> {
        Box::pin(self.read(move |c| by_id(c, id)))
    }

    fn jobs(&self, filter: JobFilter) -> JobStoreFuture<'_, Vec<JobRecord>> {
        Box::pin(self.read(move |c| list(c, &filter)))
    }

    fn job_events(&self, id: u64) -> JobStoreFuture<'_, Vec<JobEvent>> {
        Box::pin(self.read(move |c| events(c, id)))
    }

    fn put_workflow(&self, name: &str, definition: Value, actor: &str) -> JobStoreFuture<'_, u64> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        Box::pin(self.write(move |c| {
            let v: u64 = c
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM workflow WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .ctx("next workflow version")?;
            c.execute(
                "INSERT INTO workflow (name, version, definition, created_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, v, definition.to_string(), actor, now_rfc3339()],
            )
            .ctx("insert workflow")?;
            Ok(v)
        }))
    }

    fn workflow(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> JobStoreFuture<'_, Option<WorkflowRecord>> {
        let name = name.to_owned();
        Box::pin(self.read(move |c| {
            c.query_row(
                "SELECT name, version, definition, created_by, created_at FROM workflow \
                 WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
                params![name, version],
                workflow_row,
            )
            .optional()
            .ctx("read workflow")?
            .transpose()
        }))
    }

    fn workflows(&self) -> JobStoreFuture<'_, Vec<WorkflowRecord>> {
        Box::pin(self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT name, MAX(version), definition, created_by, created_at FROM workflow \
                     GROUP BY name ORDER BY name",
                )
                .ctx("list workflows")?;
            let rows = st
                .query_map([], workflow_row)
                .ctx("list workflows")?
                .collect::<Result<Vec<_>, _>>()
                .ctx("list workflows")?;
            rows.into_iter().collect()
        }))
    }

    /// Jobs that ran a deleted workflow keep their own copy of its graph.
    fn delete_workflow(&self, name: &str) -> JobStoreFuture<'_, bool> {
        let name = name.to_owned();
        Box::pin(self.write(move |c| {
            Ok(c.execute("DELETE FROM workflow WHERE name = ?1", [&name])
                .ctx("delete workflow")?
                > 0)
        }))
    }
}

impl Ledger {
    /// Partitions whose VM holds host capacity now (starting, running or
    /// paused): what another job store counts against `max_vms`.
    pub async fn active_vm_count(&self) -> Result<u64, LedgerError> {
        self.read(active_vms).await
    }
}

type RowResult<T> = rusqlite::Result<Result<T, LedgerError>>;

fn workflow_row(r: &rusqlite::Row<'_>) -> RowResult<WorkflowRecord> {
    let name: String = r.get(0)?;
    let text: String = r.get(2)?;
    Ok(serde_json::from_str(&text)
        .map_err(|e| LedgerError::BadRow {
            table: "workflow",
            key: name.clone(),
            what: e.to_string(),
        })
        .map(|definition| WorkflowRecord {
            definition,
            version: 0,
            name: String::new(),
            created_by: String::new(),
            created_at: String::new(),
        })
        .and_then(|mut w| {
            w.name = name;
            w.version = r.get(1).ctx("workflow version")?;
            w.created_by = r.get(3).ctx("workflow created_by")?;
            w.created_at = r.get(4).ctx("workflow created_at")?;
            Ok(w)
        }))
}

const COLUMNS: &str = "id, unit, actor, kind, target, queue, priority, adds_vm, state, params, \
                       progress, result, error, runner, created_at, started_at, finished_at";

fn bad(id: u64, what: impl Into<String>) -> LedgerError {
    LedgerError::BadRow {
        table: "job",
        key: id.to_string(),
        what: what.into(),
    }
}

fn job_row(r: &rusqlite::Row<'_>) -> RowResult<JobRecord> {
    let id: u64 = r.get(0)?;
    let unit: Option<String> = r.get(1)?;
    let queue: String = r.get(5)?;
    let state: String = r.get(8)?;
    let params: String = r.get(9)?;
    let result: Option<String> = r.get(11)?;
    let decode = || -> Result<JobRecord, LedgerError> {
        Ok(JobRecord {
            id,
            unit: unit
                .map(|u| u.parse().map_err(|e| bad(id, format!("unit: {e}"))))
                .transpose()?,
            actor: r.get(2).ctx("job actor")?,
            kind: r.get(3).ctx("job kind")?,
            target: r.get(4).ctx("job target")?,
            queue: JobQueue::parse(&queue).ok_or_else(|| bad(id, format!("queue {queue:?}")))?,
            priority: r.get(6).ctx("job priority")?,
            adds_vm: r.get::<_, i64>(7).ctx("job adds_vm")? != 0,
            state: JobState::parse(&state).ok_or_else(|| bad(id, format!("state {state:?}")))?,
            params: serde_json::from_str(&params).map_err(|e| bad(id, e.to_string()))?,
            progress: r.get(10).ctx("job progress")?,
            result: result
                .map(|t| serde_json::from_str(&t).map_err(|e| bad(id, e.to_string())))
                .transpose()?,
            error: r.get(12).ctx("job error")?,
            runner: r.get(13).ctx("job runner")?,
            created_at: r.get(14).ctx("job created_at")?,
            started_at: r.get(15).ctx("job started_at")?,
            finished_at: r.get(16).ctx("job finished_at")?,
        })
    };
    Ok(decode())
}

pub(crate) fn by_id(c: &Connection, id: u64) -> Result<Option<JobRecord>, LedgerError> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM job WHERE id = ?1"),
        [id],
        job_row,
    )
    .optional()
    .ctx("read job")?
    .transpose()
}

fn list(c: &Connection, f: &JobFilter) -> Result<Vec<JobRecord>, LedgerError> {
    let mut st = c
        .prepare(&format!(
            "SELECT {COLUMNS} FROM job WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR unit = ?2) AND (?3 IS NULL OR target = ?3) \
             AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
        ))
        .ctx("list jobs")?;
    let rows = st
        .query_map(
            params![
                f.state.map(JobState::as_str),
                f.unit.map(|u| u.to_string()),
                f.target,
                f.before,
                u64::try_from(f.limit)
                    .unwrap_or(u64::MAX)
                    .min(i64::MAX as u64)
            ],
            job_row,
        )
        .ctx("list jobs")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("list jobs")?;
    rows.into_iter().collect()
}

fn events(c: &Connection, id: u64) -> Result<Vec<JobEvent>, LedgerError> {
    let mut st = c
        .prepare("SELECT seq, time, kind, body FROM job_event WHERE job = ?1 ORDER BY seq")
        .ctx("read job events")?;
    let rows = st
        .query_map([id], |r| {
            let body: String = r.get(3)?;
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, body))
        })
        .ctx("read job events")?
        .collect::<Result<Vec<(u64, String, String, String)>, _>>()
        .ctx("read job events")?;
    rows.into_iter()
        .map(|(seq, time, kind, body)| {
            Ok(JobEvent {
                job: id,
                seq,
                time,
                kind,
                body: serde_json::from_str(&body).map_err(|e| bad(id, e.to_string()))?,
            })
        })
        .collect()
}

fn append(c: &Connection, job: u64, kind: &str, body: &Value) -> Result<u64, LedgerError> {
    let seq: u64 = c
        .query_row(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM job_event WHERE job = ?1",
            [job],
            |r| r.get(0),
        )
        .ctx("next job event")?;
    if seq >= MAX_JOB_EVENTS {
        return Err(LedgerError::Job {
            what: format!("job {job} has {MAX_JOB_EVENTS} events, the most one job may log"),
        });
    }
    c.execute(
        "INSERT INTO job_event (job, seq, time, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![job, seq, now_rfc3339(), kind, body.to_string()],
    )
    .ctx("append job event")?;
    Ok(seq)
}

/// Why a job is refused when its queue already holds `waiting` jobs and
/// `bound` is the most it may (`None`: it has room). Both job stores
/// decide with this inside their admission transaction.
pub fn queue_full(queue: JobQueue, waiting: u64, bound: u64) -> Option<String> {
    (waiting >= bound).then(|| {
        format!(
            "the {} queue already holds {waiting} waiting jobs, its bound \
             (broodd --job-queue-bound); try again when some have run",
            queue.as_str()
        )
    })
}

/// Why a job that adds a VM is refused when the host runs `vms`, admitted
/// jobs will add `coming` and at most `max` may run (`None`: it fits).
pub fn host_full(vms: u64, coming: u64, max: u64) -> Option<String> {
    (vms.saturating_add(coming) >= max).then(|| {
        format!(
            "the host runs {vms} VMs and {coming} admitted jobs will add more; at most {max} \
             VMs may run here (broodd --max-vms): stop or delete a VM first"
        )
    })
}

/// Partitions whose VM holds host capacity now.
fn active_vms(c: &Connection) -> Result<u64, LedgerError> {
    c.query_row(
        "SELECT COUNT(*) FROM partition WHERE run_state IN ('starting', 'running', 'paused')",
        [],
        |r| r.get(0),
    )
    .ctx("count active partitions")
}

fn admit(c: &Connection, job: &NewJob, limits: AdmitLimits) -> Result<JobRecord, LedgerError> {
    let waiting: u64 = c
        .query_row(
            "SELECT COUNT(*) FROM job WHERE state = 'queued' AND queue = ?1",
            [job.queue.as_str()],
            |r| r.get(0),
        )
        .ctx("count queued jobs")?;
    let mut refusal = queue_full(job.queue, waiting, limits.queue_bound);
    if refusal.is_none()
        && let Some(max) = limits.max_vms
        && job.adds_vm
    {
        let vms = active_vms(c)?;
        let coming: u64 = c
            .query_row(
                "SELECT COUNT(*) FROM job WHERE adds_vm = 1 AND state IN ('queued', 'running')",
                [],
                |r| r.get(0),
            )
            .ctx("count jobs that add a VM")?;
        refusal = host_full(vms, coming, max);
    }
    let now = now_rfc3339();
    let state = if refusal.is_some() {
        JobState::Refused
    } else {
        JobState::Queued
    };
    c.execute(
        "INSERT INTO job (unit, actor, kind, target, queue, priority, adds_vm, state, params, \
         error, created_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            job.unit.map(|u| u.to_string()),
            job.actor,
            job.kind,
            job.target,
            job.queue.as_str(),
            job.priority,
            i64::from(job.adds_vm),
            state.as_str(),
            job.params.to_string(),
            refusal,
            now,
            refusal.as_ref().map(|_| now.clone()),
        ],
    )
    .ctx("insert job")?;
    let id = u64::try_from(c.last_insert_rowid()).map_err(|e| bad(0, e.to_string()))?;
    append(
        c,
        id,
        "state",
        &serde_json::json!({"state": state.as_str(), "error": refusal}),
    )?;
    by_id(c, id)?.ok_or_else(|| bad(id, "vanished after insert"))
}

fn set_state(c: &Connection, ch: &JobChange) -> Result<JobRecord, LedgerError> {
    let Some(cur) = by_id(c, ch.job)? else {
        return Err(LedgerError::Job {
            what: format!("no job {}", ch.job),
        });
    };
    if !ch.from.contains(&cur.state) {
        return Err(LedgerError::Job {
            what: format!(
                "job {} is {}, so it cannot become {}",
                ch.job,
                cur.state.as_str(),
                ch.to.as_str()
            ),
        });
    }
    let now = now_rfc3339();
    c.execute(
        "UPDATE job SET state = ?2, progress = COALESCE(?3, progress), \
         result = COALESCE(?4, result), error = COALESCE(?5, error), \
         runner = COALESCE(?6, runner), \
         started_at = CASE WHEN ?2 = 'running' THEN COALESCE(started_at, ?7) ELSE started_at END, \
         finished_at = CASE WHEN ?2 IN ('queued', 'running') THEN NULL ELSE ?7 END \
         WHERE id = ?1",
        params![
            ch.job,
            ch.to.as_str(),
            ch.progress,
            ch.result.as_ref().map(Value::to_string),
            ch.error,
            ch.runner,
            now
        ],
    )
    .ctx("update job")?;
    append(
        c,
        ch.job,
        "state",
        &serde_json::json!({"state": ch.to.as_str(), "error": ch.error}),
    )?;
    by_id(c, ch.job)?.ok_or_else(|| bad(ch.job, "vanished after update"))
}

/// The job checks of `verify`: every row decodes; a job that ran has its
/// times; none runs without a broodd instance named as its runner.
pub(crate) fn verify(
    c: &Connection,
    out: &mut Vec<crate::verify::Problem>,
) -> Result<(), LedgerError> {
    let mut st = c
        .prepare(&format!(
            "SELECT {COLUMNS} FROM job WHERE state IN ('queued', 'running')"
        ))
        .ctx("verify jobs")?;
    let rows = st
        .query_map([], job_row)
        .ctx("verify jobs")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("verify jobs")?;
    for r in rows {
        match r {
            Err(e) => out.push(crate::verify::Problem::new("bad_row", e.to_string())),
            Ok(j) if j.state == JobState::Running && j.runner.is_none() => {
                out.push(crate::verify::Problem::new(
                    "job_without_runner",
                    format!(
                        "job {} ({}) runs, but no broodd is named as its runner",
                        j.id, j.kind
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The behaviour every [`JobStore`] must have, as checks a test runs
/// against a fresh, empty store (the SQLite ledger's unit tests and the
/// PostgreSQL store's tests run the same ones). Each returns what differed.
pub mod conformance {
    use super::{AdmitLimits, JobChange, JobFilter, JobQueue, JobState, JobStore, NewJob};

    macro_rules! ensure {
        ($cond:expr, $($why:tt)+) => {
            if !$cond {
                return Err(format!($($why)+));
            }
        };
    }

    fn new(kind: &str, queue: JobQueue, adds_vm: bool) -> NewJob {
        NewJob {
            unit: None,
            actor: "alice".into(),
            kind: kind.into(),
            target: "web".into(),
            queue,
            priority: 0,
            adds_vm,
            params: serde_json::json!({"name": "web"}),
        }
    }

    fn e(x: impl std::fmt::Display) -> String {
        x.to_string()
    }

    fn rfc3339(t: &str) -> bool {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
    }

    /// Past `queue_bound` waiting jobs a queue refuses, with the reason, and
    /// records the refusal; the other queue still admits.
    pub async fn queue_bound(s: &dyn JobStore) -> Result<(), String> {
        let limits = AdmitLimits {
            queue_bound: 2,
            max_vms: Some(3),
        };
        for _ in 0..2 {
            let j = s
                .admit_job(new("partition.start", JobQueue::High, false), limits)
                .await
                .map_err(e)?;
            ensure!(j.state == JobState::Queued, "not queued: {j:?}");
        }
        let r = s
            .admit_job(new("partition.start", JobQueue::High, false), limits)
            .await
            .map_err(e)?;
        ensure!(r.state == JobState::Refused, "not refused: {r:?}");
        ensure!(
            r.error.as_deref().unwrap_or("").contains("high queue"),
            "no reason: {r:?}"
        );
        ensure!(r.finished_at.is_some(), "a refusal has ended: {r:?}");
        let n = s
            .admit_job(new("partition.create", JobQueue::Normal, true), limits)
            .await
            .map_err(e)?;
        ensure!(
            n.state == JobState::Queued,
            "the normal queue has room: {n:?}"
        );
        let refused = s
            .jobs(JobFilter {
                state: Some(JobState::Refused),
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .map_err(e)?;
        ensure!(refused.len() == 1, "one refusal listed: {refused:?}");
        let ev = s.job_events(r.id).await.map_err(e)?;
        ensure!(ev.len() == 1, "a refusal logs one event: {ev:?}");
        let all = s
            .jobs(JobFilter {
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .map_err(e)?;
        ensure!(
            all.len() == 4 && all.windows(2).all(|w| w[0].id > w[1].id),
            "newest first: {all:?}"
        );
        let page = s
            .jobs(JobFilter {
                before: Some(all[1].id),
                limit: 1,
                ..JobFilter::default()
            })
            .await
            .map_err(e)?;
        ensure!(
            page.len() == 1 && page[0].id == all[2].id,
            "paging: {page:?}"
        );
        Ok(())
    }

    /// Jobs that add a VM count against `max_vms` while admitted; one that
    /// ends makes room; jobs that add none are not counted.
    pub async fn max_vms(s: &dyn JobStore) -> Result<(), String> {
        let limits = AdmitLimits {
            queue_bound: 100,
            max_vms: Some(2),
        };
        let create = || new("partition.create", JobQueue::Normal, true);
        let a = s.admit_job(create(), limits).await.map_err(e)?;
        let _b = s.admit_job(create(), limits).await.map_err(e)?;
        let c = s.admit_job(create(), limits).await.map_err(e)?;
        ensure!(c.state == JobState::Refused, "third create: {c:?}");
        ensure!(
            c.error.as_deref().unwrap_or("").contains("at most 2 VMs"),
            "reason: {c:?}"
        );
        let st = s
            .admit_job(new("partition.stop", JobQueue::High, false), limits)
            .await
            .map_err(e)?;
        ensure!(st.state == JobState::Queued, "a stop adds no VM: {st:?}");
        s.set_job_state(JobChange::new(
            a.id,
            &[JobState::Queued],
            JobState::Cancelled,
        ))
        .await
        .map_err(e)?;
        let d = s.admit_job(create(), limits).await.map_err(e)?;
        ensure!(d.state == JobState::Queued, "room after a cancel: {d:?}");
        Ok(())
    }

    /// State changes check where the job is, set its times and result, and
    /// log an event each; appended events keep their order.
    pub async fn state_changes(s: &dyn JobStore) -> Result<(), String> {
        let limits = AdmitLimits {
            queue_bound: 10,
            max_vms: None,
        };
        let j = s
            .admit_job(new("partition.start", JobQueue::High, false), limits)
            .await
            .map_err(e)?;
        let mut run = JobChange::new(j.id, &[JobState::Queued], JobState::Running);
        run.runner = Some("boot-1".into());
        let r = s.set_job_state(run.clone()).await.map_err(e)?;
        ensure!(r.state == JobState::Running, "running: {r:?}");
        ensure!(
            r.started_at.is_some() && r.finished_at.is_none() && r.runner.is_some(),
            "times and runner: {r:?}"
        );
        match s.set_job_state(run).await {
            Err(x) if x.to_string().contains("is running") => {}
            other => return Err(format!("a second run must be refused: {other:?}")),
        }
        let mut done = JobChange::new(j.id, &[JobState::Running], JobState::Succeeded);
        done.result = Some(serde_json::json!({"ok": true}));
        let d = s.set_job_state(done).await.map_err(e)?;
        ensure!(
            d.result == Some(serde_json::json!({"ok": true})) && d.finished_at.is_some(),
            "result and end: {d:?}"
        );
        for n in 0..3 {
            let seq = s
                .append_job_event(j.id, "task", serde_json::json!({"n": n}))
                .await
                .map_err(e)?;
            ensure!(seq == 3 + n, "seq {seq} for event {n}");
        }
        let ev = s.job_events(j.id).await.map_err(e)?;
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        ensure!(
            kinds == ["state", "state", "state", "task", "task", "task"],
            "log: {kinds:?}"
        );
        ensure!(
            ev.iter().all(|e| rfc3339(&e.time)) && rfc3339(&d.created_at),
            "times are RFC 3339: {ev:?}"
        );
        match s
            .set_job_state(JobChange::new(
                999_999_999,
                &[JobState::Queued],
                JobState::Running,
            ))
            .await
        {
            Err(x) if x.to_string().contains("no job") => {}
            other => return Err(format!("an unknown job: {other:?}")),
        }
        ensure!(
            s.job(999_999_999).await.map_err(e)?.is_none(),
            "an unknown job reads as none"
        );
        Ok(())
    }

    /// Workflow definitions are versioned per name; a delete removes every
    /// version. `name` must be new to the store.
    pub async fn workflows(s: &dyn JobStore, name: &str) -> Result<(), String> {
        let before = s.workflows().await.map_err(e)?.len();
        let v1 = s
            .put_workflow(name, serde_json::json!({"v": 1}), "alice")
            .await
            .map_err(e)?;
        let v2 = s
            .put_workflow(name, serde_json::json!({"v": 2}), "alice")
            .await
            .map_err(e)?;
        ensure!((v1, v2) == (1, 2), "versions {v1}, {v2}");
        let w = s
            .workflow(name, None)
            .await
            .map_err(e)?
            .ok_or("the workflow is not there")?;
        ensure!(
            (w.version, w.definition["v"].as_i64()) == (2, Some(2)) && w.created_by == "alice",
            "newest: {w:?}"
        );
        let old = s
            .workflow(name, Some(1))
            .await
            .map_err(e)?
            .ok_or("version 1 is not there")?;
        ensure!(old.definition["v"].as_i64() == Some(1), "v1: {old:?}");
        let listed = s.workflows().await.map_err(e)?;
        ensure!(
            listed.len() == before + 1 && listed.iter().any(|w| w.name == name && w.version == 2),
            "listed once, newest: {listed:?}"
        );
        ensure!(s.delete_workflow(name).await.map_err(e)?, "delete");
        ensure!(!s.delete_workflow(name).await.map_err(e)?, "deleted twice");
        ensure!(
            s.workflow(name, None).await.map_err(e)?.is_none(),
            "gone after delete"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resources;

    async fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cap = Resources {
            memory_mib: 4096,
            vcpus: 4,
            disk_gib: 10,
            nics: 4,
        };
        let l = Ledger::open(dir.path().join("l.db"), cap)
            .await
            .expect("open");
        (dir, l)
    }

    #[tokio::test]
    async fn admission_refuses_past_the_queue_bound_and_records_the_refusal() {
        let (_d, l) = ledger().await;
        conformance::queue_bound(&l).await.unwrap();
    }

    #[tokio::test]
    async fn admission_counts_vms_to_come_against_the_host_maximum() {
        let (_d, l) = ledger().await;
        conformance::max_vms(&l).await.unwrap();
    }

    #[tokio::test]
    async fn state_changes_are_checked_and_logged() {
        let (_d, l) = ledger().await;
        conformance::state_changes(&l).await.unwrap();
        assert!(l.verify().await.expect("verify").is_empty());
        assert_eq!(l.active_vm_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn workflows_are_versioned() {
        let (_d, l) = ledger().await;
        conformance::workflows(&l, "web").await.unwrap();
    }
}
