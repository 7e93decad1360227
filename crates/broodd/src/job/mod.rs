//! Jobs: every mutating action of a unit is admitted, queued, run and
//! recorded here (issue 13; US 8,924,964's job engine).
//!
//! - Admission ([`submit`]): one ledger transaction inserts the job as
//!   `queued`, or as `refused` with the reason, when its queue holds
//!   `queue_bound` waiting jobs already, or when it would add a VM past
//!   `max_vms` (active partitions plus admitted jobs that add one). The
//!   unit's allocation and the host's capacity are the ledger's own
//!   preconditions, checked when the job's step reserves them; a job that
//!   they refuse fails with the ledger's reason and holds nothing.
//! - Queues ([`class_of`]): light jobs (start, stop, kill, save, restore,
//!   pause, resume) wait in the high queue, heavy ones (define, delete,
//!   fork, service requests, workflows) in the normal one; within a queue
//!   by the partition's `policy.priority` (higher first), then age. At most
//!   `max_heavy` heavy jobs and `max_workflows` workflows run at once; light
//!   jobs are not throttled (each VM's own lock serializes its operations).
//! - Placement: the choice of the next job, and the check that a job that
//!   adds a VM still fits under `max_vms` (the VMs running now plus the jobs
//!   adding one that run), happen under one lock ([`Jobs::pump`]), so two
//!   jobs never take the same room.
//! - Running: a job's state changes (queued → running → succeeded |
//!   failed | cancelled) are one ledger transaction each, with their event
//!   in the job's log, and go out on the event stream. The route that
//!   submitted it waits for it (unless `?wait=false`) and answers with the
//!   same status and body as before jobs existed.
//! - Recovery ([`recover`]): at start, jobs a dead broodd left `running`
//!   are resumed from their journal (workflows) or failed, and `queued` ones
//!   whose work lived only in that broodd's memory are cancelled with the
//!   reason. The partitions themselves are reconciled by `reconcile`.
//!
//! Workflows (`workflow`) run as jobs of kind `workflow.run`, their steps
//! against the host's real operations (`tasks`).

pub mod recover;
pub mod tasks;
pub mod workflow;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use brood_api::ErrorCode;
use brood_api::event::EventKind;
use brood_ledger::{
    AdmitLimits, JobChange, JobQueue, JobRecord, JobState, NewJob, PartitionRecord,
};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};
use uuid::Uuid;

use crate::api::error::{ApiError, ApiResult};
use crate::host::Host;

/// The job engine's limits (`broodd --max-heavy-jobs` and the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobConfig {
    /// Most heavy jobs running at once.
    pub max_heavy: usize,
    /// Most workflows running at once.
    pub max_workflows: usize,
    /// Most jobs waiting in one queue; past it a job is refused (503).
    pub queue_bound: u64,
    /// Most VMs on the host (none: only capacity limits them).
    pub max_vms: Option<u64>,
    /// A test hook (issue 13's harness): every workflow step that succeeds
    /// runs a second time, and every undo twice, as a job resumed after a
    /// crash may run them; the second run's result is the step's. Off in
    /// broodd itself.
    pub replay_steps: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            max_heavy: 2,
            max_workflows: 4,
            queue_bound: 1000,
            max_vms: None,
            replay_steps: false,
        }
    }
}

/// How a job is throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not throttled.
    Light,
    /// At most `max_heavy` at once.
    Heavy,
    /// At most `max_workflows` at once.
    Workflow,
}

/// The queue, class and whether it adds a VM, by kind of job.
pub fn class_of(kind: &str) -> (JobQueue, Class, bool) {
    match kind {
        "partition.start" | "partition.restore" => (JobQueue::High, Class::Light, true),
        "partition.stop" | "partition.kill" | "partition.save" | "partition.pause"
        | "partition.resume" => (JobQueue::High, Class::Light, false),
        // Changes of a definition (and of a running VM's devices): quick,
        // and serialized by the VM's own lock.
        "partition.config" | "partition.stage" | "partition.resources" => {
            (JobQueue::High, Class::Light, false)
        }
        k if k.starts_with("partition.disk.") || k.starts_with("partition.nic.") => {
            (JobQueue::High, Class::Light, false)
        }
        "partition.define.start" | "template.fork" => (JobQueue::Normal, Class::Heavy, true),
        "workflow.run" => (JobQueue::Normal, Class::Workflow, false),
        // partition.define, partition.delete, partition.snapshot.*,
        // template.create|delete, service.request|release, network.create|delete,
        // image.build|delete
        // (heavy: they copy state or build a host's devices).
        _ => (JobQueue::Normal, Class::Heavy, false),
    }
}

/// What a finished job answers its route with.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body (empty for 204).
    pub body: Vec<u8>,
}

impl Done {
    /// 200 with a JSON body.
    pub fn ok(body: Vec<u8>) -> Done {
        Done {
            status: StatusCode::OK,
            body,
        }
    }

    /// Another status with a JSON body.
    pub fn with(status: StatusCode, body: Vec<u8>) -> Done {
        Done { status, body }
    }

    /// 204.
    pub fn empty() -> Done {
        Done {
            status: StatusCode::NO_CONTENT,
            body: Vec::new(),
        }
    }

    fn into_response(self) -> Response {
        if self.body.is_empty() {
            self.status.into_response()
        } else {
            (
                self.status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                self.body,
            )
                .into_response()
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A job's work: runs once, on the host, when the job's turn comes.
pub type Work = Box<dyn FnOnce(JobCtx) -> BoxFuture<ApiResult<Done>> + Send>;

/// What a running job's work gets.
#[derive(Debug, Clone)]
pub struct JobCtx {
    /// The host.
    pub host: Arc<Host>,
    /// The job.
    pub job: JobRecord,
    /// Set when someone cancels the job while it runs (workflows check it
    /// between tasks).
    pub cancelled: Arc<AtomicBool>,
}

tokio::task_local! {
    /// The job the current task runs for (its id and cancel flag), so that
    /// a single action can find its safe points without a parameter.
    static CURRENT: (u64, Arc<AtomicBool>);
}

/// The kinds of single action that can be cancelled while they run: they
/// stop at the next safe point and undo what they did (`cancellable`).
pub const CANCELLABLE: [&str; 5] = [
    "partition.define",
    "partition.define.start",
    "partition.start",
    "partition.restore",
    "template.fork",
];

/// Whether the job the current task runs for was cancelled (false outside
/// a job).
pub fn cancel_requested() -> bool {
    CURRENT
        .try_with(|(_, f)| f.load(Ordering::SeqCst))
        .unwrap_or(false)
}

/// The error a job cancelled while it ran ends with (its state is then
/// `cancelled`).
fn cancelled_error() -> ApiError {
    let id = CURRENT.try_with(|(id, _)| *id).unwrap_or(0);
    ApiError::conflict(format!(
        "job {id} was cancelled while it ran: what it had done is undone"
    ))
}

/// Runs a single action that may be cancelled while it runs. Its safe
/// points are before it begins (then nothing runs) and where it ends: when
/// the job was cancelled meanwhile, `undo` takes back what it made (a
/// create deletes its partition, a start stops the VM, a fork deletes its
/// children) and the job ends `cancelled`. An undo that fails fails the
/// job with its cause.
pub async fn cancellable<T, E, Fut, U, UFut>(act: Fut, undo: U) -> ApiResult<T>
where
    Fut: Future<Output = Result<T, E>>,
    ApiError: From<E>,
    U: FnOnce(T) -> UFut,
    UFut: Future<Output = crate::host::HostResult<()>>,
{
    if cancel_requested() {
        return Err(cancelled_error());
    }
    let out = act.await?;
    if !cancel_requested() {
        return Ok(out);
    }
    match undo(out).await {
        Ok(()) => Err(cancelled_error()),
        Err(e) => {
            let id = CURRENT.try_with(|(id, _)| *id).unwrap_or(0);
            let e = <ApiError as From<crate::host::HostError>>::from(e);
            Err(ApiError::new(
                e.status,
                e.code,
                format!(
                    "job {id} was asked to cancel, but undoing what it did failed: {}",
                    e.message
                ),
            ))
        }
    }
}

struct Pending {
    rec: JobRecord,
    class: Class,
    work: Work,
    reply: Option<oneshot::Sender<ApiResult<Done>>>,
}

/// Queue order: high before normal, then higher priority, then older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    queue: JobQueue,
    neg_priority: i64,
    id: u64,
}

#[derive(Default)]
struct Sched {
    waiting: BTreeMap<Key, Pending>,
    heavy: usize,
    workflows: usize,
    adding_vms: usize,
    running: HashMap<u64, Arc<AtomicBool>>,
    tasks: HashMap<u64, tokio::task::AbortHandle>,
}

/// The job engine's shared state (a feature of the host).
pub struct Jobs {
    cfg: JobConfig,
    /// This broodd's run: the runner named on the jobs it runs.
    runner: String,
    sched: Mutex<Sched>,
    finished: broadcast::Sender<u64>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("cfg", &self.cfg)
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The engine with these limits, for one run of broodd.
    pub fn new(cfg: JobConfig) -> Jobs {
        Jobs {
            cfg,
            runner: Uuid::new_v4().to_string(),
            sched: Mutex::new(Sched::default()),
            finished: broadcast::channel(1024).0,
        }
    }

    /// The limits.
    pub fn config(&self) -> JobConfig {
        self.cfg
    }

    /// This broodd run's id (the `runner` of the jobs it runs).
    pub fn runner(&self) -> &str {
        &self.runner
    }

    /// Hears of every job that ends (its id).
    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.finished.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts every waiting job that may run now: the placement decision,
    /// under the scheduler's lock.
    fn pump(host: &Arc<Host>) {
        let jobs = host.feature::<Jobs>();
        let vms_now = host.registry.all_running().len();
        let mut ready = Vec::new();
        {
            let mut s = jobs.lock();
            let keys: Vec<Key> = s.waiting.keys().copied().collect();
            for k in keys {
                let Some(p) = s.waiting.get(&k) else { continue };
                let fits = match p.class {
                    Class::Light => true,
                    Class::Heavy => s.heavy < jobs.cfg.max_heavy,
                    Class::Workflow => s.workflows < jobs.cfg.max_workflows,
                };
                let room = !p.rec.adds_vm
                    || jobs.cfg.max_vms.is_none_or(|m| {
                        (vms_now + s.adding_vms) < usize::try_from(m).unwrap_or(usize::MAX)
                    });
                if !(fits && room) {
                    continue;
                }
                let Some(p) = s.waiting.remove(&k) else {
                    continue;
                };
                match p.class {
                    Class::Light => {}
                    Class::Heavy => s.heavy += 1,
                    Class::Workflow => s.workflows += 1,
                }
                if p.rec.adds_vm {
                    s.adding_vms += 1;
                }
                let flag = Arc::new(AtomicBool::new(false));
                s.running.insert(p.rec.id, flag.clone());
                ready.push((p, flag));
            }
        }
        for (p, flag) in ready {
            let id = p.rec.id;
            let task = tokio::spawn(run_one(host.clone(), p, flag));
            let mut s = jobs.lock();
            // A job that already ended (and removed its flag) keeps no handle.
            if s.running.contains_key(&id) {
                s.tasks.insert(id, task.abort_handle());
            }
        }
    }

    /// Cuts every running job where it is and forgets the waiting ones, as
    /// a kill of broodd would (`Broodd::shutdown`): the next start settles
    /// them from the ledger ([`recover`]).
    pub fn abort_all(&self) {
        let mut s = self.lock();
        for (_, t) in s.tasks.drain() {
            t.abort();
        }
        s.waiting.clear();
        s.running.clear();
    }
}

/// Runs one job that `pump` chose.
async fn run_one(host: Arc<Host>, p: Pending, cancelled: Arc<AtomicBool>) {
    let jobs = host.feature::<Jobs>();
    let Pending {
        rec,
        class,
        work,
        reply,
    } = p;
    let mut change = JobChange::new(rec.id, &[JobState::Queued], JobState::Running);
    change.runner = Some(jobs.runner.clone());
    change.progress = Some("running".into());
    let result = match host.jobs.set_job_state(change).await {
        Ok(rec) => {
            publish(&host, &rec);
            // The one fencing check of a clustered host (cluster/fence.rs).
            match crate::cluster::fence::admit(&host, &rec).await {
                Ok(()) => {
                    let current = (rec.id, cancelled.clone());
                    let ctx = JobCtx {
                        host: host.clone(),
                        job: rec,
                        cancelled,
                    };
                    CURRENT.scope(current, work(ctx)).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(ApiError::from(e)),
    };
    finish(&host, rec.id, &result).await;
    {
        let mut s = jobs.lock();
        match class {
            Class::Light => {}
            Class::Heavy => s.heavy = s.heavy.saturating_sub(1),
            Class::Workflow => s.workflows = s.workflows.saturating_sub(1),
        }
        if rec.adds_vm {
            s.adding_vms = s.adding_vms.saturating_sub(1);
        }
        s.running.remove(&rec.id);
        s.tasks.remove(&rec.id);
    }
    Jobs::pump(&host);
    if let Some(r) = reply {
        // The submitter may have gone (a client that left): the job's row
        // has the outcome.
        let _ = r.send(result);
    }
    let _ = jobs.finished.send(rec.id);
}

/// Records how a job ended.
async fn finish(host: &Arc<Host>, id: u64, result: &ApiResult<Done>) {
    let mut change = match result {
        Ok(done) => {
            let mut c = JobChange::new(id, &[JobState::Running], JobState::Succeeded);
            c.result = Some(if done.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&done.body).unwrap_or(Value::Null)
            });
            c
        }
        Err(e) if e.code == ErrorCode::Conflict && e.message.contains("was cancelled") => {
            let mut c = JobChange::new(id, &[JobState::Running], JobState::Cancelled);
            c.error = Some(e.message.clone());
            c
        }
        Err(e) => {
            let mut c = JobChange::new(id, &[JobState::Running], JobState::Failed);
            c.error = Some(e.message.clone());
            c
        }
    };
    change.progress = Some("done".into());
    match host.jobs.set_job_state(change).await {
        Ok(rec) => {
            publish(host, &rec);
            if rec.state == JobState::Failed {
                info!(job = rec.id, kind = %rec.kind, "job failed: {}", rec.error.as_deref().unwrap_or(""));
            }
        }
        Err(e) => warn!(job = id, "could not record the end of the job: {e}"),
    }
}

/// Announces a job's state on the event stream.
pub fn publish(host: &Host, rec: &JobRecord) {
    host.events.publish(EventKind::Job {
        id: rec.id,
        kind: rec.kind.clone(),
        target: rec.target.clone(),
        state: crate::job::wire_state(rec.state),
        unit: rec.unit,
    });
}

/// The API's job state.
pub fn wire_state(s: JobState) -> brood_api::JobState {
    match s {
        JobState::Queued => brood_api::JobState::Queued,
        JobState::Running => brood_api::JobState::Running,
        JobState::Succeeded => brood_api::JobState::Succeeded,
        JobState::Failed => brood_api::JobState::Failed,
        JobState::Cancelled => brood_api::JobState::Cancelled,
        JobState::Refused => brood_api::JobState::Refused,
    }
}

/// The ledger's job state of the API's.
pub fn state_in(s: brood_api::JobState) -> JobState {
    match s {
        brood_api::JobState::Queued => JobState::Queued,
        brood_api::JobState::Running => JobState::Running,
        brood_api::JobState::Succeeded => JobState::Succeeded,
        brood_api::JobState::Failed => JobState::Failed,
        brood_api::JobState::Cancelled => JobState::Cancelled,
        brood_api::JobState::Refused => JobState::Refused,
    }
}

/// A job as the API shows it.
pub fn view(rec: JobRecord) -> brood_api::Job {
    brood_api::Job {
        id: rec.id,
        kind: rec.kind,
        target: rec.target,
        unit: rec.unit,
        actor: rec.actor,
        queue: match rec.queue {
            JobQueue::High => brood_api::JobQueue::High,
            JobQueue::Normal => brood_api::JobQueue::Normal,
        },
        priority: rec.priority,
        state: wire_state(rec.state),
        params: rec.params,
        progress: rec.progress,
        result: rec.result,
        error: rec.error,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        events: Vec::new(),
    }
}

/// What a route submits.
#[derive(Debug, Clone)]
pub struct Submit {
    /// The kind of job (`partition.start`, ...).
    pub kind: String,
    /// What it acts on.
    pub target: String,
    /// The unit it acts for.
    pub unit: Option<Uuid>,
    /// Its priority in its queue.
    pub priority: i64,
    /// Its parameters (no secrets).
    pub params: Value,
}

impl Submit {
    /// A job on a partition, at the partition's priority.
    pub fn partition(kind: &str, rec: &PartitionRecord, unit: Option<Uuid>) -> Submit {
        Submit {
            kind: kind.to_owned(),
            target: rec.name.clone(),
            unit,
            priority: priority_of(rec),
            params: serde_json::json!({"partition": rec.name, "uuid": rec.uuid}),
        }
    }
}

impl Submit {
    /// A job on something that is not a partition (a network, a service,
    /// a template being made), at priority 0, named `target` in its
    /// parameters.
    pub fn named(kind: &str, target: &str, unit: Option<Uuid>) -> Submit {
        Submit {
            kind: kind.to_owned(),
            target: target.to_owned(),
            unit,
            priority: 0,
            params: serde_json::json!({"target": target}),
        }
    }
}

/// A partition's job priority: `policy.priority` of its active configuration.
pub fn priority_of(rec: &PartitionRecord) -> i64 {
    rec.configs
        .value()
        .get(&rec.active_config)
        .and_then(|c| c.get("policy"))
        .and_then(|p| p.get("priority"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The error a refused job answers with.
fn refused(rec: &JobRecord) -> ApiError {
    let why = rec.error.clone().unwrap_or_default();
    let (status, code) = if why.contains("VMs may run here") {
        (StatusCode::CONFLICT, ErrorCode::CapacityExceeded)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
    };
    ApiError::new(
        status,
        code,
        format!(
            "job {} was refused: {why} (`brood job show {}`)",
            rec.id, rec.id
        ),
    )
}

/// Admits a job; on admission queues `work` and, with `wait`, waits for it
/// and answers as the work does; without, answers 202 with the job.
pub async fn submit(
    host: &Arc<Host>,
    actor: &str,
    s: Submit,
    wait: bool,
    work: Work,
) -> ApiResult<Response> {
    let (queue, class, adds_vm) = class_of(&s.kind);
    let jobs = host.feature::<Jobs>();
    let new = NewJob {
        unit: s.unit,
        actor: actor.to_owned(),
        kind: s.kind,
        target: s.target,
        queue,
        priority: s.priority,
        adds_vm,
        params: s.params,
    };
    let limits = AdmitLimits {
        queue_bound: jobs.cfg.queue_bound,
        max_vms: jobs.cfg.max_vms,
    };
    let rec = host.jobs.admit_job(new, limits).await?;
    publish(host, &rec);
    if rec.state == JobState::Refused {
        return Err(refused(&rec));
    }
    let (tx, rx) = oneshot::channel();
    let key = Key {
        queue,
        neg_priority: -rec.priority,
        id: rec.id,
    };
    jobs.lock().waiting.insert(
        key,
        Pending {
            rec: rec.clone(),
            class,
            work,
            reply: wait.then_some(tx),
        },
    );
    Jobs::pump(host);
    if !wait {
        let body =
            serde_json::to_vec(&view(rec)).map_err(|e| ApiError::internal("encode the job", &e))?;
        return Ok(Done::with(StatusCode::ACCEPTED, body).into_response());
    }
    match rx.await {
        Ok(Ok(done)) => Ok(done.into_response()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "job {} was dropped while broodd shut down: `brood job show {}`",
                rec.id, rec.id
            ),
        )),
    }
}

/// Cancels a job: a waiting one at once; a running workflow between two
/// tasks (then it unwinds); a running create, start, restore or fork at
/// its next safe point ([`cancellable`]: it then undoes what it did).
/// Other single actions that have begun run to their end.
pub async fn cancel(host: &Arc<Host>, rec: &JobRecord) -> ApiResult<JobRecord> {
    let jobs = host.feature::<Jobs>();
    let key = Key {
        queue: rec.queue,
        neg_priority: -rec.priority,
        id: rec.id,
    };
    let (removed, running) = {
        let mut s = jobs.lock();
        (s.waiting.remove(&key), s.running.get(&rec.id).cloned())
    };
    if let Some(p) = removed {
        let mut c = JobChange::new(rec.id, &[JobState::Queued], JobState::Cancelled);
        c.error = Some("cancelled before it ran".into());
        let done = host.jobs.set_job_state(c).await?;
        publish(host, &done);
        if let Some(r) = p.reply {
            let _ = r.send(Err(ApiError::conflict(format!(
                "job {} was cancelled before it ran",
                rec.id
            ))));
        }
        let _ = jobs.finished.send(rec.id);
        return Ok(done);
    }
    match (rec.state, running) {
        (s, _) if s.is_final() => Err(ApiError::conflict(format!(
            "job {} has ended ({}): there is nothing to cancel",
            rec.id,
            s.as_str()
        ))),
        (_, Some(flag))
            if rec.kind == "workflow.run" || CANCELLABLE.contains(&rec.kind.as_str()) =>
        {
            flag.store(true, Ordering::SeqCst);
            Ok(host.jobs.job(rec.id).await?.unwrap_or_else(|| rec.clone()))
        }
        _ => Err(ApiError::conflict(format!(
            "job {} ({}) is one action that has begun; it cannot be cancelled half-way: \
             wait for it (`brood job wait {}`), then undo what it did",
            rec.id, rec.kind, rec.id
        ))),
    }
}

/// Waits until a job ends or `timeout` passes; returns it as it is then.
pub async fn wait(
    host: &Arc<Host>,
    id: u64,
    timeout: std::time::Duration,
) -> ApiResult<Option<JobRecord>> {
    let jobs = host.feature::<Jobs>();
    let mut ends = jobs.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rec = host.jobs.job(id).await?;
        match &rec {
            None => return Ok(None),
            Some(r) if r.state.is_final() => return Ok(rec),
            Some(_) => {}
        }
        match tokio::time::timeout_at(deadline, ends.recv()).await {
            Err(_) => return Ok(rec),
            Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(rec),
        }
    }
}

/// The wrapper the partition routes use: submits `kind` on the checked
/// partition `rec` and runs `f(host, actor)` as the job's work.
pub async fn on_partition<F, Fut>(
    host: &Arc<Host>,
    actor: &str,
    kind: &str,
    rec: &crate::tenancy::Authorized<PartitionRecord>,
    wait: bool,
    f: F,
) -> ApiResult<Response>
where
    F: FnOnce(Arc<Host>, String) -> Fut + Send + 'static,
    Fut: Future<Output = ApiResult<Done>> + Send + 'static,
{
    let s = Submit::partition(kind, rec, rec.unit());
    submit(
        host,
        actor,
        s,
        wait,
        Box::new(move |ctx| Box::pin(f(ctx.host, ctx.job.actor))),
    )
    .await
}

/// The wrapper of routes whose job acts on no single partition.
pub async fn on_host<F, Fut>(
    host: &Arc<Host>,
    actor: &str,
    s: Submit,
    wait: bool,
    f: F,
) -> ApiResult<Response>
where
    F: FnOnce(Arc<Host>, String) -> Fut + Send + 'static,
    Fut: Future<Output = ApiResult<Done>> + Send + 'static,
{
    submit(
        host,
        actor,
        s,
        wait,
        Box::new(move |ctx| Box::pin(f(ctx.host, ctx.job.actor))),
    )
    .await
}

/// The job checks of `brood ledger verify` that need broodd: every job the
/// ledger says runs is run by this broodd (`job_without_broodd`), and no
/// define that failed or was cancelled left its partition (`orphan_of_failed_job`).
pub async fn verify(host: &Host, out: &mut Vec<brood_api::Problem>) -> crate::host::HostResult<()> {
    let jobs = host.feature::<Jobs>();
    let running = host
        .jobs
        .jobs(brood_ledger::JobFilter {
            state: Some(JobState::Running),
            limit: usize::MAX >> 1,
            ..brood_ledger::JobFilter::default()
        })
        .await?;
    let runs_here = |id: u64| jobs.lock().running.contains_key(&id);
    for j in running {
        let ours = j.runner.as_deref() == Some(jobs.runner());
        // A job of this run that just ended may be gone from memory: re-read it.
        let lost = ours
            && !runs_here(j.id)
            && host
                .jobs
                .job(j.id)
                .await?
                .is_some_and(|now| now.state == JobState::Running)
            && !runs_here(j.id);
        if !ours || lost {
            out.push(brood_api::Problem {
                code: "job_without_broodd".into(),
                message: format!(
                    "job {} ({} {}) is recorded running, but this broodd does not run it",
                    j.id, j.kind, j.target
                ),
            });
        }
    }
    // A cancelled job never ran, so it made nothing: only failed ones count
    // (a partition of the same name made by a later job is not an orphan).
    for state in [JobState::Failed] {
        let ended = host
            .jobs
            .jobs(brood_ledger::JobFilter {
                state: Some(state),
                limit: 10_000,
                ..brood_ledger::JobFilter::default()
            })
            .await?;
        for j in ended
            .iter()
            .filter(|j| j.kind.starts_with("partition.define"))
        {
            // The partition of that name, if it was made by this job: created
            // between the job's submission and its end.
            let Some(p) = host.ledger.partition_by_name(&j.target).await? else {
                continue;
            };
            if made_by(j, &p) {
                out.push(brood_api::Problem {
                    code: "orphan_of_failed_job".into(),
                    message: format!(
                        "job {} ({}) {} but partition {} it made is still there",
                        j.id,
                        j.kind,
                        j.state.as_str(),
                        p.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Whether partition `p` was made by job `j` (a define): created between
/// the job's submission and its end (or now, if it has not ended).
pub fn made_by(j: &JobRecord, p: &PartitionRecord) -> bool {
    let t = |s: &str| humantime::parse_rfc3339(s).ok();
    let to = match j.finished_at.as_deref() {
        Some(f) => t(f),
        None => Some(std::time::SystemTime::now()),
    };
    match (t(&p.created_at), t(&j.created_at), to) {
        (Some(made), Some(from), Some(to)) => from <= made && made <= to,
        _ => false,
    }
}
