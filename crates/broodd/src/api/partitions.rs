//! `/v1/partitions`: define, list, show, delete, and the operations on a
//! partition's VM. Handlers parse and check the request, then call `ops`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use brood_api::{
    ConsoleLog, DefineRequest, ErrorBody, ExecChunk, ExecRequest, ExecResponse, Partition,
    PartitionList, SetConfigRequest, SetStageRequest, StopRequest,
};
use brood_ledger::PartitionRecord;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson, RawJson};
use super::jobs::{WaitQuery, partition_job};
use super::render::render;
use crate::host::runstate::EndMode;
use crate::host::{Host, HostResult};
use crate::job::{self, Done};
use crate::partition::{define, lifecycle};
use crate::tenancy::Action;
use crate::wire;

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, define))
        .routes(routes!(show, delete))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(kill))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(save))
        .routes(routes!(restore))
        .routes(routes!(set_config))
        .routes(routes!(set_stage))
        .routes(routes!(console))
        .routes(routes!(exec))
}

async fn out(d: &Host, rec: brood_ledger::PartitionRecord) -> ApiResult<RawJson> {
    Ok(RawJson(partition_json(d, rec).await?))
}

/// A partition as the API renders it (with its template's name): what the
/// partition, change and snapshot routes answer with.
pub(super) async fn partition_json(d: &Host, rec: PartitionRecord) -> ApiResult<Vec<u8>> {
    let parent = parent_name(d, &rec).await?;
    Ok(render(d, rec, parent)?.to_vec())
}

/// The undo of a start that was cancelled: the VM is killed (stopped).
async fn stopped(d: &Arc<Host>, actor: &str, uuid: Uuid) -> HostResult<()> {
    lifecycle::stop(d, actor, uuid, EndMode::Kill)
        .await
        .map(drop)
}

/// A partition operation as a job of `kind` ([`partition_job`], with
/// `operate`): answers 200 with the partition `f` leaves.
async fn op<F, Fut>(
    d: &Arc<Host>,
    caller: &Auth,
    name: &str,
    kind: &str,
    wait: bool,
    f: F,
) -> ApiResult<Response>
where
    F: FnOnce(Arc<Host>, String, Uuid) -> Fut + Send + 'static,
    Fut: Future<Output = HostResult<PartitionRecord>> + Send + 'static,
{
    let run = move |d: Arc<Host>, actor, uuid| async move {
        let rec = f(d.clone(), actor, uuid).await?;
        Ok(Done::ok(partition_json(&d, rec).await?))
    };
    partition_job(d, caller, name, Action::Operate, kind, wait, run).await
}

/// The name of the template a child was forked from.
async fn parent_name(d: &Host, rec: &brood_ledger::PartitionRecord) -> ApiResult<Option<String>> {
    Ok(match rec.parent {
        Some(p) => d.ledger.partition_by_uuid(p).await?.map(|r| r.name),
        None => None,
    })
}

/// Page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Return partitions whose name sorts after this one.
    after: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists partitions by name, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/partitions",
    tag = "partitions",
    operation_id = "list_partitions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of partitions, by name", body = PartitionList),
        (status = 400, description = "an unknown query parameter, or `limit` outside 1-1000", body = ErrorBody),
        Common
    )
)]
async fn list(State(d): D, caller: Auth, Query(q): Query<ListQuery>) -> ApiResult<RawJson> {
    let limit = q.limit.unwrap_or(brood_api::DEFAULT_PAGE);
    if !(1..=brood_api::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} must be between 1 and {}",
            brood_api::MAX_PAGE
        )));
    }
    let recs = match caller.scope() {
        Some(unit) => d.ledger.unit_partitions(unit, q.after, limit + 1).await?,
        None => d.ledger.partitions(q.after, limit + 1).await?,
    };
    let mut parents = std::collections::HashMap::new();
    for p in recs.iter().filter_map(|r| r.parent) {
        if let std::collections::hash_map::Entry::Vacant(e) = parents.entry(p)
            && let Some(t) = d.ledger.partition_by_uuid(p).await?
        {
            e.insert(t.name);
        }
    }
    let more = recs.len() > limit;
    let page: Vec<_> = recs.into_iter().take(limit).collect();
    let next = if more {
        page.last().map(|r| r.name.clone())
    } else {
        None
    };
    // Assembled from each partition's rendering, kept per generation.
    let mut body = Vec::with_capacity(64 + page.len() * 768);
    body.extend_from_slice(b"{\"items\":[");
    for (i, r) in page.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let parent = r.parent.and_then(|p| parents.get(&p).cloned());
        body.extend_from_slice(&render(&d, r, parent)?);
    }
    body.extend_from_slice(b"],\"next\":");
    serde_json::to_writer(&mut body, &next)
        .map_err(|e| ApiError::internal("encode the page", &e))?;
    body.push(b'}');
    Ok(RawJson(body))
}

/// Defines a partition (and starts it with `start: true`).
#[utoipa::path(
    post,
    path = "/v1/partitions",
    tag = "partitions",
    operation_id = "define_partition",
    request_body = DefineRequest,
    params(WaitQuery),
    responses(
        (status = 201, description = "Defined (and started, with `start: true`)", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or an invalid value: the message names it", body = ErrorBody),
        (status = 409, description = "the name is taken, or a `publish` host port is another VM's or the host's own (`conflict`), or with `start: true` the host lacks capacity (`capacity_exceeded`) or a service it requires could not be had (the definition is removed again)", body = ErrorBody),
        (status = 502, description = "with `start: true`, QEMU failed to start; the definition is removed again (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn define(
    State(d): D,
    caller: Auth,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<DefineRequest>,
) -> ApiResult<Response> {
    caller.check(Action::Create, crate::tenancy::Kind::Partition)?;
    crate::tenancy::units::check_networks(&d, &caller, req.configs.values()).await?;
    crate::tenancy::units::check_ports(&d, &caller, &req.publish)?;
    let s = job::Submit {
        kind: if req.start {
            "partition.define.start"
        } else {
            "partition.define"
        }
        .into(),
        target: req.name.clone(),
        unit: caller.scope(),
        priority: req
            .configs
            .values()
            .next()
            .map_or(0, |c| i64::from(c.policy.priority)),
        params: serde_json::json!({"partition": req.name, "start": req.start}),
    };
    let unit = caller.scope();
    job::on_host(
        &d,
        caller.actor(),
        s,
        w.wait(),
        move |d, actor| async move {
            let made = define::define(&d, &actor, unit, req);
            // Cancelled while it ran: the partition it made goes again.
            let (d2, a2) = (d.clone(), actor.clone());
            let undo = |rec: PartitionRecord| async move {
                lifecycle::delete(&d2, &a2, rec.uuid, true).await
            };
            let rec = job::cancellable(made, undo).await?;
            Ok(Done::with(
                StatusCode::CREATED,
                partition_json(&d, rec).await?,
            ))
        },
    )
    .await
}

/// Shows a partition (by name or uuid).
#[utoipa::path(
    get,
    path = "/v1/partitions/{name}",
    tag = "partitions",
    operation_id = "show_partition",
    params(("name" = String, Path, description = "Partition name or uuid")),
    responses(
        (status = 200, description = "The partition", body = Partition),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<RawJson> {
    out(
        &d,
        caller
            .partition(&d, &name, Action::Read)
            .await?
            .into_inner(),
    )
    .await
}

/// Delete options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Kill the VM first if it runs.
    force: Option<bool>,
    /// Wait for the job (default); `false` answers 202 with the job.
    wait: Option<bool>,
}

/// Deletes a partition, its disks and saved state.
#[utoipa::path(
    delete,
    path = "/v1/partitions/{name}",
    tag = "partitions",
    operation_id = "delete_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted, with its disks and saved state"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "an unknown query parameter or a `force` that is not a boolean", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "its VM runs and `force` is not set, it is a template, or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn delete(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let force = q.force.unwrap_or(false);
    let run = move |d: Arc<Host>, actor: String, uuid| async move {
        lifecycle::delete(&d, &actor, uuid, force).await?;
        Ok(Done::empty())
    };
    let wait = q.wait.unwrap_or(true);
    partition_job(
        &d,
        &caller,
        &name,
        Action::Delete,
        "partition.delete",
        wait,
        run,
    )
    .await
}

/// Starts a stopped or crashed partition with its active configuration.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/start",
    tag = "partitions",
    operation_id = "start_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Started: the partition, running", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8, or its disks cannot be made as defined", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "not stopped or crashed, not startable in its stage, another operation holds it, the host lacks capacity (`capacity_exceeded`), or a service it requires could not be had (its VM is stopped again)", body = ErrorBody),
        (status = 502, description = "QEMU failed to start (`engine_failed`); its resources are returned", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn start(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    let run = |d: Arc<Host>, a: String, u| async move {
        let act = lifecycle::start(&d, &a, u);
        let rec = job::cancellable(act, |_| stopped(&d, &a, u)).await?;
        Ok(Done::ok(partition_json(&d, rec).await?))
    };
    let kind = "partition.start";
    partition_job(&d, &caller, &name, Action::Operate, kind, w.wait(), run).await
}

/// Powers a partition off (killing it after the timeout); discards a saved state; acknowledges a crash.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/stop",
    tag = "partitions",
    operation_id = "stop_partition",
    request_body(content = StopRequest, description = "Optional: an empty body means the defaults"),
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Stopped: the partition", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or `timeout_s` over 3600", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is in a stage or run state that does not allow it (`invalid_transition`), or another operation holds it (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn stop(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    OptionalJson(req): OptionalJson<StopRequest>,
) -> ApiResult<Response> {
    let t = req
        .timeout_s
        .map_or(lifecycle::STOP_TIMEOUT, Duration::from_secs);
    if t > Duration::from_secs(3600) {
        return Err(ApiError::bad_request("timeout_s must be at most 3600"));
    }
    op(
        &d,
        &caller,
        &name,
        "partition.stop",
        w.wait(),
        move |d, a, u| async move { lifecycle::stop(&d, &a, u, EndMode::Graceful(t)).await },
    )
    .await
}

/// Kills a partition's VM at once.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/kill",
    tag = "partitions",
    operation_id = "kill_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Killed: the partition, stopped", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is in a stage or run state that does not allow it (`invalid_transition`), or another operation holds it (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn kill(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    op(
        &d,
        &caller,
        &name,
        "partition.kill",
        w.wait(),
        |d, a, u| async move { lifecycle::stop(&d, &a, u, EndMode::Kill).await },
    )
    .await
}

/// Pauses a running partition's vCPUs.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/pause",
    tag = "partitions",
    operation_id = "pause_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Paused: the partition", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "not running (`invalid_transition`), or another operation holds it (`conflict`)", body = ErrorBody),
        (status = 502, description = "QEMU did not pause (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn pause(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    op(
        &d,
        &caller,
        &name,
        "partition.pause",
        w.wait(),
        |d, a, u| async move { lifecycle::pause(&d, &a, u, true).await },
    )
    .await
}

/// Resumes a paused partition.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/resume",
    tag = "partitions",
    operation_id = "resume_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Resumed: the partition, running", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "not paused (`invalid_transition`), or another operation holds it (`conflict`)", body = ErrorBody),
        (status = 502, description = "QEMU did not resume (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn resume(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    op(
        &d,
        &caller,
        &name,
        "partition.resume",
        w.wait(),
        |d, a, u| async move { lifecycle::pause(&d, &a, u, false).await },
    )
    .await
}

/// Saves a partition's state to disk and ends its VM; memory and vCPUs go back to `available`.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/save",
    tag = "partitions",
    operation_id = "save_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Saved: the partition, its VM ended", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "not running or paused, a child or template, or another operation holds it", body = ErrorBody),
        (status = 502, description = "QEMU failed to save its state (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn save(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    op(
        &d,
        &caller,
        &name,
        "partition.save",
        w.wait(),
        |d, a, u| async move { lifecycle::save(&d, &a, u).await },
    )
    .await
}

/// Starts a saved partition from its saved state.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/restore",
    tag = "partitions",
    operation_id = "restore_partition",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "Restored: the partition, running", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "not saved, another operation holds it, or the host lacks capacity (`capacity_exceeded`)", body = ErrorBody),
        (status = 502, description = "QEMU failed to start from the saved state (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn restore(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    let run = |d: Arc<Host>, a: String, u| async move {
        let act = lifecycle::restore(&d, &a, u);
        let rec = job::cancellable(act, |_| stopped(&d, &a, u)).await?;
        Ok(Done::ok(partition_json(&d, rec).await?))
    };
    let kind = "partition.restore";
    partition_job(&d, &caller, &name, Action::Operate, kind, w.wait(), run).await
}

/// Chooses the configuration used at the next start.
#[utoipa::path(
    put,
    path = "/v1/partitions/{name}/config",
    tag = "partitions",
    operation_id = "set_partition_config",
    request_body = SetConfigRequest,
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "The partition, with its new active configuration", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or no configuration of that name", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn set_config(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<SetConfigRequest>,
) -> ApiResult<Response> {
    op(
        &d,
        &caller,
        &name,
        "partition.config",
        w.wait(),
        |d, a, u| async move { lifecycle::set_config(&d, &a, u, &req.config).await },
    )
    .await
}

/// Moves a partition to another life-cycle stage.
#[utoipa::path(
    put,
    path = "/v1/partitions/{name}/stage",
    tag = "partitions",
    operation_id = "set_partition_stage",
    request_body = SetStageRequest,
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    responses(
        (status = 200, description = "The partition, in its new stage", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field or stage, or a stage it cannot be moved to by hand", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the move is not allowed from its stage or run state, or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn set_stage(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<SetStageRequest>,
) -> ApiResult<Response> {
    let to = wire::stage_in(req.stage);
    op(
        &d,
        &caller,
        &name,
        "partition.stage",
        w.wait(),
        move |d, a, u| async move { lifecycle::set_stage(&d, &a, u, to).await },
    )
    .await
}

/// Console options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    /// Most bytes to return, from the end (default 65536; more than 1048576
    /// counts as 1048576).
    #[param(maximum = 1048576)]
    bytes: Option<usize>,
    /// Keep the response open and stream the console as it grows
    /// (`application/octet-stream`), until the VM ends or the client leaves.
    follow: Option<bool>,
}

/// The tail of a partition's serial console log, or (with `follow=true`)
/// that tail and then the console as it grows.
#[utoipa::path(
    get,
    path = "/v1/partitions/{name}/console",
    tag = "partitions",
    operation_id = "partition_console",
    params(("name" = String, Path, description = "Partition name or uuid"), ConsoleQuery),
    responses(
        (status = 200, description = "The tail of its console log; with `follow=true`, that tail and then raw console bytes as they come",
            content((ConsoleLog = "application/json"), (String = "application/octet-stream"))),
        (status = 400, description = "an unknown query parameter, or `bytes` that is not a number", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn console(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> ApiResult<Response> {
    let rec = caller.partition(&d, &name, Action::Read).await?;
    let want = q.bytes.unwrap_or(64 * 1024).min(1 << 20);
    let running = d.registry.running(rec.uuid);
    // Subscribed before the history is read, so the stream misses nothing.
    let live = match (
        running.as_ref().and_then(|r| r.vm.console().cloned()),
        q.follow.unwrap_or(false),
    ) {
        (Some(c), true) => {
            let rx = c.subscribe();
            let end = c.total();
            Some((c, rx, end))
        }
        _ => None,
    };
    // Earlier runs' output, then the current run's.
    let mut text = tokio::fs::read(d.paths.console_log(rec.uuid))
        .await
        .unwrap_or_default();
    if let Some(r) = &running {
        text.extend(d.current_console(r).await);
    }
    let start = text.len().saturating_sub(want);
    if q.follow.unwrap_or(false) {
        let history = text.split_off(start);
        return Ok(match live {
            Some((c, rx, end)) => super::stream::console_follow(c, rx, history, end),
            // Nothing runs: the history is all there is.
            None => ([(CONTENT_TYPE, "application/octet-stream")], history).into_response(),
        });
    }
    Ok(Json(ConsoleLog {
        text: String::from_utf8_lossy(text.get(start..).unwrap_or_default()).into_owned(),
        truncated: start > 0,
    })
    .into_response())
}

/// Exec options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExecQuery {
    /// Stream the output as it comes, one `ExecChunk` JSON object per line
    /// (`application/x-ndjson`; `Accept: application/x-ndjson` asks the same).
    /// Closing the connection early kills the command.
    stream: Option<bool>,
}

/// Runs a command in a partition's guest through its agent.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/exec",
    tag = "partitions",
    operation_id = "exec_in_partition",
    request_body = ExecRequest,
    params(("name" = String, Path, description = "Partition name or uuid"), ExecQuery),
    responses(
        (status = 200, description = "The command ran: its exit status and output; with `stream=true` (or `Accept: application/x-ndjson`) NDJSON lines of output as it comes, then its end",
            content((ExecResponse = "application/json"), (ExecChunk = "application/x-ndjson"))),
        (status = 400, description = "malformed JSON, an unknown field, neither or both of `command` and `argv`, or `stdin_base64` that is not base64", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is not running (`invalid_transition`)", body = ErrorBody),
        (status = 502, description = "its agent did not become ready or failed the exec (`engine_failed`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn exec(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<ExecQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    let streamed = q.stream.unwrap_or(false)
        || headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(brood_api::NDJSON));
    crate::convert::validate_exec(&req)?;
    let rec = caller.partition(&d, &name, Action::Operate).await?;
    let command = match (req.command, req.argv) {
        (Some(c), None) => brood_proto::Command::Shell(c),
        (None, Some(a)) if !a.is_empty() => brood_proto::Command::Argv(a),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `command` (a shell string) or `argv`",
            ));
        }
    };
    let stdin = match req.stdin_base64 {
        Some(s) => B64
            .decode(s)
            .map_err(|e| ApiError::bad_request(format!("stdin_base64 is not base64: {e}")))?,
        None => Vec::new(),
    };
    let running = d
        .registry
        .running(rec.uuid)
        .ok_or_else(|| ApiError::transition(lifecycle::no_vm_hint(&rec)))?;
    crate::host::boot_disk::needs_agent(&rec, "exec")?;
    let ready = Duration::from_millis(req.ready_timeout_ms.unwrap_or(60_000).min(600_000));
    running
        .vm
        .wait_ready(ready)
        .await
        .map_err(|e| ApiError::engine(&format!("the agent of {}", rec.name), &e))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| ApiError::engine("the agent", &e))?;
    let mut r = brood_proto::ExecRequest::shell("");
    r.command = command;
    r.env = req.env.into_iter().collect();
    r.stdin = stdin;
    r.timeout_ms = req.timeout_ms;
    let what = format!("exec in {}", rec.name);
    let run = agent
        .exec_stream(&r)
        .await
        .map_err(|e| ApiError::engine(&what, &e))?;
    if streamed {
        Ok(super::stream::exec_ndjson(run, what))
    } else {
        super::stream::exec_buffered(run, &what).await
    }
}
