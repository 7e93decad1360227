//! `/v1/partitions/{name}/snapshots`: named snapshots of a partition's disks
//! and, taken while its VM runs, of its memory and devices.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use brood_api::{ErrorBody, Partition, Snapshot, SnapshotCreateRequest, SnapshotList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::jobs::{WaitQuery, partition_job};
use super::partitions::partition_json;
use crate::host::Host;
use crate::job::Done;
use crate::partition::snapshot;
use crate::tenancy::Action;

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, create))
        .routes(routes!(delete))
        .routes(routes!(revert))
}

/// Lists a partition's snapshots, oldest first.
#[utoipa::path(
    get,
    path = "/v1/partitions/{name}/snapshots",
    tag = "partitions",
    operation_id = "list_snapshots",
    params(("name" = String, Path, description = "Partition name or uuid")),
    responses(
        (status = 200, description = "Its snapshots", body = SnapshotList),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn list(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    let rec = caller.partition(&d, &name, Action::Operate).await?;
    Ok(Json(SnapshotList {
        items: snapshot::list(&d, &rec).await?,
    }))
}

/// Takes a snapshot: of a running or paused VM its disks, memory and devices
/// of one instant (the VM carries on); of a stopped one its disks.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/snapshots",
    tag = "partitions",
    operation_id = "create_snapshot",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    request_body = SnapshotCreateRequest,
    responses(
        (status = 201, description = "Taken", body = Snapshot),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or a snapshot name that is not valid", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the name is taken, it holds the most snapshots it may, it is a template or saved, or another operation holds it", body = ErrorBody),
        (status = 502, description = "QEMU or qemu-img failed to take it (`engine_failed`); nothing of it is left", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<SnapshotCreateRequest>,
) -> ApiResult<Response> {
    let work = move |d: Arc<Host>, actor: String, uuid| async move {
        let s = snapshot::create(&d, &actor, uuid, &req.name).await?;
        let body =
            serde_json::to_vec(&s).map_err(|e| ApiError::internal("encode the snapshot", &e))?;
        Ok(Done::with(StatusCode::CREATED, body))
    };
    let kind = "partition.snapshot.create";
    partition_job(&d, &caller, &name, Action::Operate, kind, w.wait(), work).await
}

/// Deletes a snapshot of a partition that is not running.
#[utoipa::path(
    delete,
    path = "/v1/partitions/{name}/snapshots/{snapshot}",
    tag = "partitions",
    operation_id = "delete_snapshot",
    params(
        ("name" = String, Path, description = "Partition name or uuid"),
        ("snapshot" = String, Path, description = "Snapshot name"),
        WaitQuery,
    ),
    responses(
        (status = 204, description = "Deleted from its disks and the data directory"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "a path segment that is not valid UTF-8, or a snapshot name that is not valid", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or it has no such snapshot (`not_found`)", body = ErrorBody),
        (status = 409, description = "its VM runs (its disks are open), a disk could not drop the snapshot (nothing else is removed), or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn delete(
    State(d): D,
    caller: Auth,
    Path((name, snap)): Path<(String, String)>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    let work = move |d: Arc<Host>, actor: String, uuid| async move {
        snapshot::delete(&d, &actor, uuid, &snap).await?;
        Ok(Done::empty())
    };
    let kind = "partition.snapshot.delete";
    partition_job(&d, &caller, &name, Action::Operate, kind, w.wait(), work).await
}

/// Puts a partition back to a snapshot: its VM (if any) is killed, its
/// disks are reverted, and a snapshot with memory starts the VM from it.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/snapshots/{snapshot}/revert",
    tag = "partitions",
    operation_id = "revert_snapshot",
    params(
        ("name" = String, Path, description = "Partition name or uuid"),
        ("snapshot" = String, Path, description = "Snapshot name"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "Reverted: the partition, running or paused as it was (or stopped, for a disk-only snapshot)", body = Partition),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "a path segment that is not valid UTF-8, or a snapshot name that is not valid", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or it has no such snapshot (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, its configuration changed since, a disk lost the snapshot, another operation holds it, or the host lacks capacity (`capacity_exceeded`)", body = ErrorBody),
        (status = 502, description = "qemu-img or QEMU failed (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn revert(
    State(d): D,
    caller: Auth,
    Path((name, snap)): Path<(String, String)>,
    Query(w): Query<WaitQuery>,
) -> ApiResult<Response> {
    let work = move |d: Arc<Host>, actor: String, uuid| async move {
        let rec = snapshot::revert(&d, &actor, uuid, &snap).await?;
        Ok(Done::ok(partition_json(&d, rec).await?))
    };
    let kind = "partition.snapshot.revert";
    partition_job(&d, &caller, &name, Action::Operate, kind, w.wait(), work).await
}
