//! Changing a partition after it is defined: `PATCH
//! /v1/partitions/{name}/resources`, `/v1/partitions/{name}/disks` (attach,
//! resize, detach) and `/v1/partitions/{name}/nics` (attach, detach). The
//! work is `partition::change`'s; these handlers check the caller and
//! shape the answer.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use brood_api::{
    Apply, AttachDiskRequest, AttachNicRequest, ChangeResult, ErrorBody, ResizeDiskRequest,
    SetResourcesRequest,
};
use serde::Deserialize;
use utoipa::IntoParams;
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
use crate::partition::change::{self, Change};
use crate::tenancy::Action;

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(set_resources))
        .routes(routes!(attach_disk))
        .routes(routes!(resize_disk, detach_disk))
        .routes(routes!(attach_nic))
        .routes(routes!(detach_nic))
}

/// A change of a partition as a job of `kind`; answers 200 with what it did.
async fn run(
    d: &Arc<Host>,
    caller: &Auth,
    name: &str,
    kind: &str,
    wait: bool,
    c: Change,
) -> ApiResult<Response> {
    let work = move |d: Arc<Host>, actor: String, uuid| async move {
        let out = change::change(&d, &actor, uuid, c).await?;
        let json = partition_json(&d, out.rec).await?;
        let partition = serde_json::from_slice(&json)
            .map_err(|e| ApiError::internal("decode a rendered partition", &e))?;
        let body = serde_json::to_vec(&ChangeResult {
            partition,
            applied_now: out.applied_now,
            next_start: out.next_start,
        })
        .map_err(|e| ApiError::internal("encode the change", &e))?;
        Ok(Done::ok(body))
    };
    partition_job(d, caller, name, Action::Operate, kind, wait, work).await
}

/// The detach routes' query: when the device goes, and whether to wait.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DetachWait {
    /// When a running partition loses the device: `auto` (default),
    /// `now` or `next-start`.
    #[param(inline)]
    #[serde(default)]
    apply: Apply,
    /// Wait for the job and answer as the action does (the default); with
    /// `false`, answer 202 at once with the job (`GET /v1/jobs/{id}`).
    wait: Option<bool>,
}

/// Changes a partition's memory, vCPUs, CPU cap or published ports. A
/// stopped partition takes it as its definition; a running one takes live
/// what its machine allows (the CPU cap, published ports: their DNATs are
/// in place when it answers) and the rest at its next start, marked pending.
#[utoipa::path(
    patch,
    path = "/v1/partitions/{name}/resources",
    tag = "partitions",
    operation_id = "set_partition_resources",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    request_body = SetResourcesRequest,
    responses(
        (status = 200, description = "Changed: what took effect now and what waits for the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, nothing to change, a value out of range (memory, vCPUs, a CPU cap over 100% per vCPU, a port), a host port published twice, or `publish` for a VM without a NIC on a NAT network", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or an `unpublish` host port it does not publish (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, a forked child (only its CPU cap and ports change), saved or starting; `apply: now` for what its machine cannot take live; more than its unit's allocation or the host's capacity; a `publish` host port another VM holds (named) or a host process listens on; or another operation holds it", body = ErrorBody),
        (status = 502, description = "the running VM refused a live change (`engine_failed`); the definition is as it was", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn set_resources(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<SetResourcesRequest>,
) -> ApiResult<Response> {
    crate::tenancy::units::check_ports(&d, &caller, &req.publish)?;
    run(
        &d,
        &caller,
        &name,
        "partition.resources",
        w.wait(),
        Change::Resources(req),
    )
    .await
}

/// Attaches a new empty disk (a qcow2 file brood creates). A running
/// microvm gets it at its next start: virtio-mmio has no hotplug.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/disks",
    tag = "partitions",
    operation_id = "attach_partition_disk",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    request_body = AttachDiskRequest,
    responses(
        (status = 200, description = "Attached, now or at the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, a disk name or size that is not valid, or more devices than the machine has slots for", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the name is taken; it is a template, a forked child, saved or starting; `apply: now` on a running VM; the unit or host lacks the disk space (`capacity_exceeded`, `quota_exceeded`); or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn attach_disk(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<AttachDiskRequest>,
) -> ApiResult<Response> {
    run(
        &d,
        &caller,
        &name,
        "partition.disk.attach",
        w.wait(),
        Change::AttachDisk(req),
    )
    .await
}

/// Grows a disk: live on a running VM (QMP `block_resize`; the guest sees
/// the new size at once), with `qemu-img resize` on a stopped one.
#[utoipa::path(
    put,
    path = "/v1/partitions/{name}/disks/{disk}",
    tag = "partitions",
    operation_id = "resize_partition_disk",
    params(
        ("name" = String, Path, description = "Partition name or uuid"),
        ("disk" = String, Path, description = "The disk's name in the configuration"),
        WaitQuery,
    ),
    request_body = ResizeDiskRequest,
    responses(
        (status = 200, description = "Grown, now or at the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or a size not larger than today's (a disk only grows) or over 65536 GiB", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or no such disk (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, a forked child, saved or starting; the disk is attached only from the next start and `apply` is `now`; the unit or host lacks the space; or another operation holds it", body = ErrorBody),
        (status = 502, description = "QEMU refused to grow it (`engine_failed`); the definition is as it was", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn resize_disk(
    State(d): D,
    caller: Auth,
    Path((name, disk)): Path<(String, String)>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<ResizeDiskRequest>,
) -> ApiResult<Response> {
    run(
        &d,
        &caller,
        &name,
        "partition.disk.resize",
        w.wait(),
        Change::ResizeDisk { disk, req },
    )
    .await
}

/// Detaches a disk and deletes its file (of a running VM: at its next
/// start, when its space goes back too).
#[utoipa::path(
    delete,
    path = "/v1/partitions/{name}/disks/{disk}",
    tag = "partitions",
    operation_id = "detach_partition_disk",
    params(
        ("name" = String, Path, description = "Partition name or uuid"),
        ("disk" = String, Path, description = "The disk's name in the configuration"),
        DetachWait,
    ),
    responses(
        (status = 200, description = "Detached, now or at the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "a path segment that is not valid UTF-8, or an `apply` that is not auto, now or next-start", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or no such disk (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, a forked child, saved or starting; `apply: now` on a running VM; or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn detach_disk(
    State(d): D,
    caller: Auth,
    Path((name, disk)): Path<(String, String)>,
    Query(q): Query<DetachWait>,
) -> ApiResult<Response> {
    let c = Change::DetachDisk {
        disk,
        apply: q.apply,
    };
    let wait = q.wait.unwrap_or(true);
    run(&d, &caller, &name, "partition.disk.detach", wait, c).await
}

/// Attaches a NIC (its MAC chosen and kept when not given). A running
/// microvm gets it at its next start.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/nics",
    tag = "partitions",
    operation_id = "attach_partition_nic",
    params(("name" = String, Path, description = "Partition name or uuid"), WaitQuery),
    request_body = AttachNicRequest,
    responses(
        (status = 200, description = "Attached, now or at the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, a network that is not valid, a MAC that is not valid or taken, or more devices than the machine has slots for", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, a forked child, saved or starting; `apply: now` on a running VM; more NICs than its unit's allocation or the host's capacity; or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn attach_nic(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<WaitQuery>,
    ApiJson(req): ApiJson<AttachNicRequest>,
) -> ApiResult<Response> {
    run(
        &d,
        &caller,
        &name,
        "partition.nic.attach",
        w.wait(),
        Change::AttachNic(req),
    )
    .await
}

/// Detaches a NIC, named by its MAC or its index (0 is the guest's eth0).
#[utoipa::path(
    delete,
    path = "/v1/partitions/{name}/nics/{nic}",
    tag = "partitions",
    operation_id = "detach_partition_nic",
    params(
        ("name" = String, Path, description = "Partition name or uuid"),
        ("nic" = String, Path, description = "The NIC's MAC address, or its index"),
        DetachWait,
    ),
    responses(
        (status = 200, description = "Detached, now or at the next start", body = ChangeResult),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "a path segment that is not valid UTF-8, or an `apply` that is not auto, now or next-start", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or no such NIC (`not_found`)", body = ErrorBody),
        (status = 409, description = "it is a template, a forked child, saved or starting; `apply: now` on a running VM; it publishes host ports and this is its last NIC on a NAT network (unpublish them first); or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn detach_nic(
    State(d): D,
    caller: Auth,
    Path((name, nic)): Path<(String, String)>,
    Query(q): Query<DetachWait>,
) -> ApiResult<Response> {
    let c = Change::DetachNic {
        nic,
        apply: q.apply,
    };
    let wait = q.wait.unwrap_or(true);
    run(&d, &caller, &name, "partition.nic.detach", wait, c).await
}
