//! The job store in the catalog: when broodd runs as a cluster member
//! (`--catalog`), its jobs, their append-only logs and the cluster's
//! workflow definitions live in PostgreSQL, beside the hosts and
//! placements, instead of in the host's SQLite ledger (issue 13: "the
//! queue lives where it will live in a cluster too").
//!
//! [`PgJobStore`] implements [`brood_ledger::JobStore`], the same trait the
//! ledger implements, and passes the same conformance checks
//! (`brood_ledger::job_store_conformance`). A host's jobs are its own rows
//! (`job.host`): each host's broodd admits, runs and recovers only those,
//! as on one host; workflow definitions are shared by every host.
//!
//! - Admission is one transaction under a per-host advisory lock, so
//!   concurrent admissions on one host count the queue and the VMs to come
//!   one after the other. The VMs already running are counted in the
//!   host's own ledger (the seed's per-host resource database), read after
//!   the jobs that will add one: a job that ends between the two reads is
//!   then counted twice (refusing early), never missed.
//! - Every write is retried through a PostgreSQL restart, like the rest of
//!   the catalog. A write whose commit was lost with the connection must
//!   not happen twice, so each carries a request id chosen once, before
//!   the first attempt (`job.request`, `job_event.request`,
//!   `workflow.request`): a retry that finds it done returns what was done.
//! - Times are PostgreSQL's clock (one clock for the cluster), in RFC 3339.

use brood_ledger::{
    AdmitLimits, JobChange, JobEvent, JobFilter, JobQueue, JobRecord, JobState, JobStore,
    JobStoreFuture, Ledger, LedgerError, MAX_JOB_EVENTS, NewJob, WorkflowRecord, host_full,
    queue_full,
};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::catalog::{Catalog, retry};
use crate::error::ClusterError;

/// The first key of the advisory locks this store takes (the second is a
/// hash of the host's or the workflow's name).
const ADMIT_LOCK: i32 = 0x6a6f_6273; // "jobs"
const WORKFLOW_LOCK: i32 = 0x7766_6c77; // "wflw"

/// A timestamptz column as RFC 3339 text in UTC.
macro_rules! ts {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

macro_rules! job_columns {
    () => {
        concat!(
            "id, unit, actor, kind, target, queue, priority, adds_vm, state, params, progress, \
             result, error, runner, ",
            ts!("created_at"),
            ", ",
            ts!("started_at"),
            ", ",
            ts!("finished_at")
        )
    };
}

/// One host's jobs, and the cluster's workflows, in the catalog.
#[derive(Clone)]
pub struct PgJobStore {
    catalog: Catalog,
    host: String,
    ledger: Ledger,
}

impl std::fmt::Debug for PgJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJobStore")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl PgJobStore {
    /// The jobs of `host` in `catalog`; `ledger` is the host's own ledger,
    /// where the VMs it runs are counted for `max_vms`.
    pub fn new(catalog: Catalog, host: &str, ledger: Ledger) -> PgJobStore {
        PgJobStore {
            catalog,
            host: host.to_owned(),
            ledger,
        }
    }

    async fn admit(&self, job: NewJob, limits: AdmitLimits) -> Result<JobRecord, ClusterError> {
        let request = Uuid::new_v4();
        let host = self.host.as_str();
        retry!(self.catalog, "admit a job", |c| async {
            let tx = c.transaction().await?;
            if let Some(r) = tx
                .query_opt("SELECT id FROM job WHERE request = $1", &[&request])
                .await?
            {
                // The commit of an earlier attempt went through.
                let rec = read_job(&tx, host, r.get(0)).await?;
                return rec.ok_or_else(|| vanished(r.get(0)));
            }
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&ADMIT_LOCK, &host],
            )
            .await?;
            let waiting: i64 = tx
                .query_one(
                    "SELECT count(*) FROM job WHERE host = $1 AND state = 'queued' AND queue = $2",
                    &[&host, &job.queue.as_str()],
                )
                .await?
                .get(0);
            let waiting = u64::try_from(waiting).unwrap_or(0);
            let mut refusal = queue_full(job.queue, waiting, limits.queue_bound);
            if refusal.is_none()
                && let Some(max) = limits.max_vms
                && job.adds_vm
            {
                let coming: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM job WHERE host = $1 AND adds_vm \
                         AND state IN ('queued', 'running')",
                        &[&host],
                    )
                    .await?
                    .get(0);
                let coming = u64::try_from(coming).unwrap_or(0);
                let vms = self.ledger.active_vm_count().await.map_err(|e| {
                    ClusterError::Invalid(format!("count the VMs this host runs: {e}"))
                })?;
                refusal = host_full(vms, coming, max);
            }
            let state = if refusal.is_some() {
                JobState::Refused
            } else {
                JobState::Queued
            };
            let id: i64 = tx
                .query_one(
                    "INSERT INTO job (host, request, unit, actor, kind, target, queue, priority, \
                     adds_vm, state, params, error, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                     CASE WHEN $12::text IS NULL THEN NULL ELSE now() END) RETURNING id",
                    &[
                        &host,
                        &request,
                        &job.unit,
                        &job.actor,
                        &job.kind,
                        &job.target,
                        &job.queue.as_str(),
                        &job.priority,
                        &job.adds_vm,
                        &state.as_str(),
                        &Json(&job.params),
                        &refusal,
                    ],
                )
                .await?
                .get(0);
            append(
                &tx,
                host,
                id,
                "state",
                &serde_json::json!({"state": state.as_str(), "error": refusal}),
                None,
            )
            .await?;
            let rec = read_job(&tx, host, id).await?.ok_or_else(|| vanished(id))?;
            tx.commit().await?;
            Ok(rec)
        })
    }

    async fn set_state(&self, ch: JobChange) -> Result<JobRecord, ClusterError> {
        let request = Uuid::new_v4();
        let host = self.host.as_str();
        let id = job_id(ch.job)?;
        retry!(self.catalog, "change a job's state", |c| async {
            let tx = c.transaction().await?;
            let Some(cur) = lock_job(&tx, host, id).await? else {
                return Err(ClusterError::Conflict(format!("no job {}", ch.job)));
            };
            if done_before(&tx, request).await?.is_some() {
                // An earlier attempt committed: this change is made.
                return Ok(cur);
            }
            if !ch.from.contains(&cur.state) {
                return Err(ClusterError::Conflict(format!(
                    "job {} is {}, so it cannot become {}",
                    ch.job,
                    cur.state.as_str(),
                    ch.to.as_str()
                )));
            }
            tx.execute(
                "UPDATE job SET state = $2::text, progress = COALESCE($3, progress), \
                 result = COALESCE($4, result), error = COALESCE($5, error), \
                 runner = COALESCE($6, runner), \
                 started_at = CASE WHEN $2::text = 'running' THEN COALESCE(started_at, now()) \
                     ELSE started_at END, \
                 finished_at = CASE WHEN $2::text IN ('queued', 'running') THEN NULL \
                     ELSE now() END \
                 WHERE id = $1",
                &[
                    &id,
                    &ch.to.as_str(),
                    &ch.progress,
                    &ch.result.as_ref().map(Json),
                    &ch.error,
                    &ch.runner,
                ],
            )
            .await?;
            append(
                &tx,
                host,
                id,
                "state",
                &serde_json::json!({"state": ch.to.as_str(), "error": ch.error}),
                Some(request),
            )
            .await?;
            let rec = read_job(&tx, host, id).await?.ok_or_else(|| vanished(id))?;
            tx.commit().await?;
            Ok(rec)
        })
    }

    async fn append_event(&self, job: u64, kind: &str, body: Value) -> Result<u64, ClusterError> {
        let request = Uuid::new_v4();
        let host = self.host.as_str();
        let id = job_id(job)?;
        retry!(self.catalog, "append to a job's log", |c| async {
            let tx = c.transaction().await?;
            let seq = append(&tx, host, id, kind, &body, Some(request)).await?;
            tx.commit().await?;
            Ok(seq)
        })
    }

    async fn list(&self, f: JobFilter) -> Result<Vec<JobRecord>, ClusterError> {
        let host = self.host.as_str();
        let before = f.before.map(job_id).transpose()?;
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        retry!(self.catalog, "list jobs", |c| async {
            let rows = c
                .query(
                    concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM job WHERE host = $1 AND ($2::text IS NULL OR state = $2) \
                         AND ($3::uuid IS NULL OR unit = $3) AND ($4::text IS NULL OR target = $4) \
                         AND ($5::bigint IS NULL OR id < $5) ORDER BY id DESC LIMIT $6"
                    ),
                    &[
                        &host,
                        &f.state.map(JobState::as_str),
                        &f.unit,
                        &f.target,
                        &before,
                        &limit,
                    ],
                )
                .await?;
            rows.iter().map(job_row).collect()
        })
    }

    async fn events(&self, job: u64) -> Result<Vec<JobEvent>, ClusterError> {
        let host = self.host.as_str();
        let id = job_id(job)?;
        retry!(self.catalog, "read a job's log", |c| async {
            let rows = c
                .query(
                    concat!(
                        "SELECT e.seq, ",
                        ts!("e.time"),
                        ", e.kind, e.body FROM job_event e JOIN job j ON j.id = e.job \
                         WHERE e.job = $1 AND j.host = $2 ORDER BY e.seq"
                    ),
                    &[&id, &host],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let seq: i64 = r.get(0);
                    let body: Json<Value> = r.get(3);
                    Ok(JobEvent {
                        job,
                        seq: u64::try_from(seq).map_err(|_| bad(job, "negative seq"))?,
                        time: r.get(1),
                        kind: r.get(2),
                        body: body.0,
                    })
                })
                .collect()
        })
    }

    async fn put_wf(&self, name: &str, def: Value, actor: &str) -> Result<u64, ClusterError> {
        let request = Uuid::new_v4();
        retry!(self.catalog, "store a workflow", |c| async {
            let tx = c.transaction().await?;
            let done = tx
                .query_opt(
                    "SELECT version FROM workflow WHERE request = $1",
                    &[&request],
                )
                .await?;
            let v: i64 = match done {
                Some(r) => r.get(0),
                None => {
                    tx.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                        &[&WORKFLOW_LOCK, &name],
                    )
                    .await?;
                    tx.query_one(
                        "INSERT INTO workflow (name, version, definition, created_by, request) \
                         SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4 FROM workflow \
                         WHERE name = $1 RETURNING version",
                        &[&name, &Json(&def), &actor, &request],
                    )
                    .await?
                    .get(0)
                }
            };
            tx.commit().await?;
            Ok(u64::try_from(v).unwrap_or(0))
        })
    }

    async fn get_wf(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<WorkflowRecord>, ClusterError> {
        let version = version.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        retry!(self.catalog, "read a workflow", |c| async {
            let row = c
                .query_opt(
                    concat!(
                        "SELECT name, version, definition, created_by, ",
                        ts!("created_at"),
                        " FROM workflow WHERE name = $1 AND ($2::bigint IS NULL OR version = $2) \
                         ORDER BY version DESC LIMIT 1"
                    ),
                    &[&name, &version],
                )
                .await?;
            Ok(row.as_ref().map(workflow_row))
        })
    }

    async fn list_wf(&self) -> Result<Vec<WorkflowRecord>, ClusterError> {
        retry!(self.catalog, "list workflows", |c| async {
            let rows = c
                .query(
                    concat!(
                        "SELECT DISTINCT ON (name) name, version, definition, created_by, ",
                        ts!("created_at"),
                        " FROM workflow ORDER BY name, version DESC"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(workflow_row).collect())
        })
    }

    async fn delete_wf(&self, name: &str) -> Result<bool, ClusterError> {
        // A retry after a lost commit finds nothing to delete: the first
        // attempt's answer is the one kept.
        let mut first = None;
        let now = retry!(self.catalog, "delete a workflow", |c| async {
            let n = c
                .execute("DELETE FROM workflow WHERE name = $1", &[&name])
                .await?;
            first.get_or_insert(n > 0);
            Ok(n > 0)
        })?;
        Ok(first.unwrap_or(now))
    }
}

impl JobStore for PgJobStore {
    fn backend(&self) -> &'static str {
        "postgresql"
    }

    fn admit_job(&self, job: NewJob, limits: AdmitLimits) -> JobStoreFuture<'_, JobRecord> {
        Box::pin(async move { self.admit(job, limits).await.map_err(to_ledger) })
    }

    fn set_job_state(&self, change: JobChange) -> JobStoreFuture<'_, JobRecord> {
        Box::pin(async move { self.set_state(change).await.map_err(to_ledger) })
    }

    fn append_job_event(&self, job: u64, kind: &str, body: Value) -> JobStoreFuture<'_, u64> {
        let kind = kind.to_owned();
        Box::pin(async move { self.append_event(job, &kind, body).await.map_err(to_ledger) })
    }

    fn job(&self, id: u64) -> JobStoreFuture<'_, Option<JobRecord>> {
        Box::pin(async move {
            let Ok(id) = job_id(id) else {
                return Ok(None);
            };
            let host = self.host.as_str();
            retry!(self.catalog, "read a job", |c| async {
                read_job(&c, host, id).await
            })
            .map_err(to_ledger)
        })
    }

    fn jobs(&self, filter: JobFilter) -> JobStoreFuture<'_, Vec<JobRecord>> {
        Box::pin(async move { self.list(filter).await.map_err(to_ledger) })
    }

    fn job_events(&self, id: u64) -> JobStoreFuture<'_, Vec<JobEvent>> {
        Box::pin(async move { self.events(id).await.map_err(to_ledger) })
    }

    fn put_workflow(&self, name: &str, definition: Value, actor: &str) -> JobStoreFuture<'_, u64> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        Box::pin(async move {
            self.put_wf(&name, definition, &actor)
                .await
                .map_err(to_ledger)
        })
    }

    fn workflow(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> JobStoreFuture<'_, Option<WorkflowRecord>> {
        let name = name.to_owned();
        Box::pin(async move { self.get_wf(&name, version).await.map_err(to_ledger) })
    }

    fn workflows(&self) -> JobStoreFuture<'_, Vec<WorkflowRecord>> {
        Box::pin(async move { self.list_wf().await.map_err(to_ledger) })
    }

    fn delete_workflow(&self, name: &str) -> JobStoreFuture<'_, bool> {
        let name = name.to_owned();
        Box::pin(async move { self.delete_wf(&name).await.map_err(to_ledger) })
    }
}

/// What the catalog's errors are to broodd's job code: a refused change is
/// the job's own error (409); a catalog that does not answer is the store
/// being unavailable (503).
fn to_ledger(e: ClusterError) -> LedgerError {
    match e {
        ClusterError::Conflict(what)
        | ClusterError::Invalid(what)
        | ClusterError::Refused(what) => LedgerError::Job { what },
        e @ ClusterError::NotFound { .. } => LedgerError::Job {
            what: e.to_string(),
        },
        other => LedgerError::StoreUnavailable {
            what: other.to_string(),
        },
    }
}

fn job_id(id: u64) -> Result<i64, ClusterError> {
    i64::try_from(id).map_err(|_| ClusterError::Conflict(format!("no job {id}")))
}

fn vanished(id: i64) -> ClusterError {
    ClusterError::Invalid(format!(
        "job {id} vanished from the catalog while it was written"
    ))
}

fn bad(id: u64, what: &str) -> ClusterError {
    ClusterError::Invalid(format!("unreadable job {id} in the catalog: {what}"))
}

/// Whether a write with this request id was committed already (its event).
async fn done_before<C: GenericClient>(c: &C, request: Uuid) -> Result<Option<i64>, ClusterError> {
    Ok(
        c.query_opt("SELECT seq FROM job_event WHERE request = $1", &[&request])
            .await?
            .map(|r| r.get(0)),
    )
}

async fn read_job<C: GenericClient>(
    c: &C,
    host: &str,
    id: i64,
) -> Result<Option<JobRecord>, ClusterError> {
    select_job(c, host, id, false).await
}

async fn lock_job<C: GenericClient>(
    c: &C,
    host: &str,
    id: i64,
) -> Result<Option<JobRecord>, ClusterError> {
    select_job(c, host, id, true).await
}

/// Host `host`'s job `id`; with `lock`, its row locked to the transaction.
async fn select_job<C: GenericClient>(
    c: &C,
    host: &str,
    id: i64,
    lock: bool,
) -> Result<Option<JobRecord>, ClusterError> {
    const READ: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM job WHERE id = $1 AND host = $2"
    );
    const LOCK: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM job WHERE id = $1 AND host = $2 FOR UPDATE"
    );
    c.query_opt(if lock { LOCK } else { READ }, &[&id, &host])
        .await?
        .as_ref()
        .map(job_row)
        .transpose()
}

/// Appends to job `id`'s log under the job row's lock (so two appends never
/// take the same place); with `request`, at most once.
async fn append<C: GenericClient>(
    c: &C,
    host: &str,
    id: i64,
    kind: &str,
    body: &Value,
    request: Option<Uuid>,
) -> Result<u64, ClusterError> {
    if c.query_opt(
        "SELECT 1 FROM job WHERE id = $1 AND host = $2 FOR UPDATE",
        &[&id, &host],
    )
    .await?
    .is_none()
    {
        return Err(ClusterError::Conflict(format!("no job {id}")));
    }
    if let Some(r) = request
        && let Some(seq) = done_before(c, r).await?
    {
        return Ok(u64::try_from(seq).unwrap_or(0));
    }
    let seq: i64 = c
        .query_one(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM job_event WHERE job = $1",
            &[&id],
        )
        .await?
        .get(0);
    if u64::try_from(seq).unwrap_or(u64::MAX) >= MAX_JOB_EVENTS {
        return Err(ClusterError::Conflict(format!(
            "job {id} has {MAX_JOB_EVENTS} events, the most one job may log"
        )));
    }
    c.execute(
        "INSERT INTO job_event (job, seq, kind, body, request) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &seq, &kind, &Json(body), &request],
    )
    .await?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

fn job_row(r: &Row) -> Result<JobRecord, ClusterError> {
    let id: i64 = r.get(0);
    let uid = u64::try_from(id).map_err(|_| ClusterError::Invalid(format!("job id {id}")))?;
    let queue: String = r.get(5);
    let state: String = r.get(8);
    let params: Json<Value> = r.get(9);
    let result: Option<Json<Value>> = r.get(11);
    Ok(JobRecord {
        id: uid,
        unit: r.get(1),
        actor: r.get(2),
        kind: r.get(3),
        target: r.get(4),
        queue: match queue.as_str() {
            "high" => JobQueue::High,
            "normal" => JobQueue::Normal,
            _ => return Err(bad(uid, &format!("queue {queue:?}"))),
        },
        priority: r.get(6),
        adds_vm: r.get(7),
        state: JobState::parse(&state).ok_or_else(|| bad(uid, &format!("state {state:?}")))?,
        params: params.0,
        progress: r.get(10),
        result: result.map(|j| j.0),
        error: r.get(12),
        runner: r.get(13),
        created_at: r.get(14),
        started_at: r.get(15),
        finished_at: r.get(16),
    })
}

fn workflow_row(r: &Row) -> WorkflowRecord {
    let version: i64 = r.get(1);
    let def: Json<Value> = r.get(2);
    WorkflowRecord {
        name: r.get(0),
        version: u64::try_from(version).unwrap_or(0),
        definition: def.0,
        created_by: r.get(3),
        created_at: r.get(4),
    }
}
