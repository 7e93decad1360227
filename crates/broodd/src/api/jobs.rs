//! `/v1/jobs` and `/v1/workflows`: the jobs every unit action became, and
//! the stored workflow definitions run as jobs. The engine is `job`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use brood_api::{
    ErrorBody, Job, JobList, WorkflowCreateRequest, WorkflowInfo, WorkflowList, WorkflowRunRequest,
};
use brood_ledger::{JobFilter, WorkflowRecord};
use brood_workflow::Workflow;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JobStoreDown, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson};
use crate::host::Host;
use crate::job;
use crate::tenancy::{Action, Kind};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(wait))
        .routes(routes!(workflows, create_workflow))
        .routes(routes!(show_workflow, delete_workflow))
        .routes(routes!(run_workflow))
}

/// `?wait=false` on the routes that submit a job.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Wait for the job and answer as the action does (the default); with
    /// `false`, answer 202 at once with the job (`GET /v1/jobs/{id}`).
    pub wait: Option<bool>,
}

impl WaitQuery {
    /// Whether to wait.
    pub fn wait(&self) -> bool {
        self.wait.unwrap_or(true)
    }
}

/// The one wrapper of the routes that act on one partition: checks that
/// the caller may `action` it (404 if it may not read it), submits `kind`
/// on it and runs `f(host, actor, uuid)` as the job's work; answers as the
/// work does, or 202 with the job when `wait` is false.
pub(super) async fn partition_job<F, Fut>(
    d: &Arc<Host>,
    caller: &Auth,
    name: &str,
    action: Action,
    kind: &str,
    wait: bool,
    f: F,
) -> ApiResult<Response>
where
    F: FnOnce(Arc<Host>, String, uuid::Uuid) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiResult<job::Done>> + Send + 'static,
{
    let rec = caller.partition(d, name, action).await?;
    let uuid = rec.uuid;
    job::on_partition(d, caller.actor(), kind, &rec, wait, move |d, actor| {
        f(d, actor, uuid)
    })
    .await
}

/// Which jobs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only jobs in this state.
    state: Option<brood_api::JobState>,
    /// Only jobs of this unit (by name).
    unit: Option<String>,
    /// Only jobs acting on this partition, template or workflow.
    target: Option<String>,
    /// Jobs older than this id (the previous page's `next`).
    before: Option<u64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists jobs, newest first: the caller's unit's, or all for an administrator.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "list_jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobList),
        (status = 400, description = "an unknown query parameter or state, or `limit` outside 1-1000", body = ErrorBody),
        (status = 404, description = "no unit of that name that the caller may see (`not_found`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn list(State(d): D, caller: Auth, Query(q): Query<ListQuery>) -> ApiResult<Json<JobList>> {
    caller.check(Action::Read, Kind::Job)?;
    let limit = q.limit.unwrap_or(brood_api::DEFAULT_PAGE);
    if !(1..=brood_api::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} must be between 1 and {}",
            brood_api::MAX_PAGE
        )));
    }
    let unit = match (&q.unit, caller.scope()) {
        (Some(name), _) => Some(caller.unit_named(&d, name, Action::Read).await?.uuid),
        (None, scope) => scope,
    };
    if caller.scope().is_some() && unit != caller.scope() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            brood_api::ErrorCode::NotFound,
            "no unit of that name: `brood unit list` shows the units you can see",
        ));
    }
    let recs = d
        .jobs
        .jobs(JobFilter {
            state: q.state.map(job::state_in),
            unit,
            target: q.target,
            before: q.before,
            limit: limit + 1,
        })
        .await?;
    let more = recs.len() > limit;
    let items: Vec<Job> = recs.into_iter().take(limit).map(job::view).collect();
    let next = if more {
        items.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(JobList { items, next }))
}

/// Shows a job with its log.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "show_job",
    params(("id" = u64, Path, description = "Job number", minimum = 1)),
    responses(
        (status = 200, description = "The job and its log", body = Job),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no job of that number that the caller may see (`not_found`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn show(State(d): D, caller: Auth, Path(id): Path<u64>) -> ApiResult<Json<Job>> {
    let rec = caller.job(&d, id, Action::Read).await?.into_inner();
    Ok(Json(with_events(&d, rec).await?))
}

async fn with_events(d: &Host, rec: brood_ledger::JobRecord) -> ApiResult<Job> {
    let events = d.jobs.job_events(rec.id).await?;
    let mut j = job::view(rec);
    j.events = events
        .into_iter()
        .map(|e| brood_api::JobEvent {
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            body: e.body,
        })
        .collect();
    Ok(j)
}

/// Cancels a job: a queued one at once; a running workflow before its next
/// task, and a running create, start, restore or fork at its next safe
/// point (each then undoes what it did). Other single actions that have
/// begun run to their end.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    operation_id = "cancel_job",
    params(("id" = u64, Path, description = "Job number", minimum = 1)),
    responses(
        (status = 200, description = "The job: cancelled, or (a running workflow, create, start, restore or fork) to be cancelled at its next safe point", body = Job),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "no job of that number that the caller may see (`not_found`)", body = ErrorBody),
        (status = 409, description = "the job has ended, or it is a single action that has begun and cannot be cut (`conflict`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn cancel(State(d): D, caller: Auth, Path(id): Path<u64>) -> ApiResult<Json<Job>> {
    let rec = caller.job(&d, id, Action::Operate).await?.into_inner();
    Ok(Json(job::view(job::cancel(&d, &rec).await?)))
}

/// How long to wait.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitFor {
    /// Seconds to wait at most, 0-3600 (default 60).
    #[param(minimum = 0, maximum = 3600)]
    timeout_s: Option<u64>,
}

/// Waits until a job ends (or the timeout passes) and shows it.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/wait",
    tag = "jobs",
    operation_id = "wait_job",
    params(("id" = u64, Path, description = "Job number", minimum = 1), WaitFor),
    responses(
        (status = 200, description = "The job: ended, or as it is when the timeout passed (check `state`)", body = Job),
        (status = 400, description = "the id is not a number, or `timeout_s` over 3600", body = ErrorBody),
        (status = 404, description = "no job of that number that the caller may see (`not_found`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn wait(
    State(d): D,
    caller: Auth,
    Path(id): Path<u64>,
    Query(q): Query<WaitFor>,
) -> ApiResult<Json<Job>> {
    let t = q.timeout_s.unwrap_or(60);
    if t > 3600 {
        return Err(ApiError::bad_request("timeout_s must be at most 3600"));
    }
    let rec = caller.job(&d, id, Action::Read).await?.into_inner();
    let rec = job::wait(&d, id, Duration::from_secs(t))
        .await?
        .unwrap_or(rec);
    Ok(Json(with_events(&d, rec).await?))
}

fn info(w: WorkflowRecord) -> WorkflowInfo {
    WorkflowInfo {
        name: w.name,
        version: w.version,
        definition: w.definition,
        created_by: w.created_by,
        created_at: w.created_at,
    }
}

/// Lists the stored workflows (their newest versions).
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "jobs",
    operation_id = "list_workflows",
    responses(
        (status = 200, description = "Every workflow, by name", body = WorkflowList),
        Common,
        JobStoreDown
    )
)]
async fn workflows(State(d): D, caller: Auth) -> ApiResult<Json<WorkflowList>> {
    caller.check(Action::Read, Kind::Workflow)?;
    let items = d.jobs.workflows().await?.into_iter().map(info).collect();
    Ok(Json(WorkflowList { items }))
}

/// Stores a workflow definition (JSON or YAML); a new version if the name exists.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "jobs",
    operation_id = "create_workflow",
    request_body = WorkflowCreateRequest,
    responses(
        (status = 201, description = "Stored: the workflow at its new version", body = WorkflowInfo),
        (status = 400, description = "malformed JSON or an unknown field, or a definition that does not parse or cannot run as written: the message names what", body = ErrorBody),
        JsonBody,
        Common,
        JobStoreDown
    )
)]
async fn create_workflow(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<WorkflowCreateRequest>,
) -> ApiResult<(StatusCode, Json<WorkflowInfo>)> {
    caller.check(Action::Create, Kind::Workflow)?;
    let wf = Workflow::parse(&req.definition).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let def =
        serde_json::to_value(&wf).map_err(|e| ApiError::internal("encode the workflow", &e))?;
    d.jobs.put_workflow(&wf.name, def, caller.actor()).await?;
    let stored = d
        .jobs
        .workflow(&wf.name, None)
        .await?
        .ok_or_else(|| ApiError::conflict("the workflow was deleted while it was stored"))?;
    Ok((StatusCode::CREATED, Json(info(stored))))
}

/// A version.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    /// This version instead of the newest.
    #[param(minimum = 1)]
    version: Option<u64>,
}

pub(super) fn no_workflow(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        brood_api::ErrorCode::NotFound,
        format!("no workflow named {name:?} (at that version): `brood workflow list` shows them"),
    )
}

/// Shows a workflow.
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}",
    tag = "jobs",
    operation_id = "show_workflow",
    params(("name" = String, Path, description = "Workflow name"), VersionQuery),
    responses(
        (status = 200, description = "The workflow", body = WorkflowInfo),
        (status = 400, description = "an unknown query parameter, or a version that is not a number", body = ErrorBody),
        (status = 404, description = "no workflow of that name or version (`not_found`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn show_workflow(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<WorkflowInfo>> {
    caller.check(Action::Read, Kind::Workflow)?;
    let w = d
        .jobs
        .workflow(&name, q.version)
        .await?
        .ok_or_else(|| no_workflow(&name))?;
    Ok(Json(info(w)))
}

/// Deletes every version of a workflow (jobs that ran it keep their copy).
#[utoipa::path(
    delete,
    path = "/v1/workflows/{name}",
    tag = "jobs",
    operation_id = "delete_workflow",
    params(("name" = String, Path, description = "Workflow name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no workflow of that name (`not_found`)", body = ErrorBody),
        Common,
        JobStoreDown
    )
)]
async fn delete_workflow(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.check(Action::Delete, Kind::Workflow)?;
    if d.jobs.delete_workflow(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_workflow(&name))
    }
}

/// Runs a workflow as a job with the given data items.
#[utoipa::path(
    post,
    path = "/v1/workflows/{name}/run",
    tag = "jobs",
    operation_id = "run_workflow",
    request_body(content = WorkflowRunRequest, description = "Optional: an empty body means no data and the newest version"),
    params(("name" = String, Path, description = "Workflow name"), WaitQuery),
    responses(
        (status = 200, description = "The workflow ran: `{workflow, outputs}`, its tasks' outputs (secrets as `***`)", content_type = "application/json"),
        (status = 202, description = "With `wait=false`: the job, queued", body = Job),
        (status = 400, description = "malformed JSON, an unknown field, or data that does not fit the workflow's inputs", body = ErrorBody),
        (status = 404, description = "no workflow of that name or version (`not_found`)", body = ErrorBody),
        (status = 409, description = "a task failed (what the job had done was undone; the message names the task), or the job was cancelled (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn run_workflow(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    OptionalJson(req): OptionalJson<WorkflowRunRequest>,
) -> ApiResult<Response> {
    caller.check(Action::Operate, Kind::Workflow)?;
    let stored = d
        .jobs
        .workflow(&name, req.version)
        .await?
        .ok_or_else(|| no_workflow(&name))?;
    let wf: Workflow = serde_json::from_value(stored.definition)
        .map_err(|e| ApiError::internal(&format!("read workflow {name}"), &e))?;
    // Checked before the job is admitted, so bad data is a 400, not a failed job.
    check_data(&wf, &req.data)?;
    let s = job::Submit {
        kind: "workflow.run".into(),
        target: wf.name.clone(),
        unit: caller.scope(),
        priority: 0,
        params: job::workflow::params(&wf, stored.version, &req.data),
    };
    let data: BTreeMap<String, serde_json::Value> = req.data;
    job::submit(
        &d,
        caller.actor(),
        s,
        w.wait(),
        Box::new(move |ctx| Box::pin(job::workflow::run(ctx, Some(data)))),
    )
    .await
}

pub(super) fn check_data(
    wf: &Workflow,
    data: &BTreeMap<String, serde_json::Value>,
) -> ApiResult<()> {
    if let Some(k) = data.keys().find(|k| !wf.inputs.contains_key(*k)) {
        return Err(ApiError::bad_request(format!(
            "workflow {} has no input {k:?}; its inputs: {}",
            wf.name,
            wf.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    if let Some((k, _)) = wf
        .inputs
        .iter()
        .find(|(k, i)| i.default.is_none() && !data.contains_key(*k))
    {
        return Err(ApiError::bad_request(format!(
            "workflow {} needs the input {k:?} (`--set {k}=VALUE`)",
            wf.name
        )));
    }
    Ok(())
}
