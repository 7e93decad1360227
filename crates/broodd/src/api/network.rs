//! `/v1/networks` and `/v1/io`: networks, and the I/O partitions (switches)
//! that serve them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::{
    ErrorBody, IoPartition, IoPartitionList, IoPartitionPatch, Network, NetworkCreateRequest,
    NetworkList,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::ApiResult;
use super::extract::ApiJson;
use crate::host::Host;
use crate::tenancy::{Action, Kind};
use crate::{io, network};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, create))
        .routes(routes!(show, delete))
        .routes(routes!(io_list))
        .routes(routes!(io_show, io_set))
        .routes(routes!(io_restart))
        .routes(routes!(io_stop))
}

/// Lists networks.
#[utoipa::path(
    get,
    path = "/v1/networks",
    tag = "networks",
    operation_id = "list_networks",
    responses(
        (status = 200, description = "Every network, by name, with the NICs on it", body = NetworkList),
        Common
    )
)]
async fn list(State(d): D, caller: Auth) -> ApiResult<Json<NetworkList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(network::list(&d).await?))
}

/// Creates a network, and its zone's switch I/O partition when it is the
/// zone's first.
#[utoipa::path(
    post,
    path = "/v1/networks",
    tag = "networks",
    operation_id = "create_network",
    request_body = NetworkCreateRequest,
    params(super::jobs::WaitQuery),
    responses(
        (status = 201, description = "The network", body = Network),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name, zone or subnet, a host interface's name, or `nat` on a host without `nft` or without an uplink", body = ErrorBody),
        (status = 409, description = "a network of that name exists, or the subnet overlaps another of the zone, any network's when either is NAT, or the uplink's (`conflict`)", body = ErrorBody),
        (status = 500, description = "the gateway tap could not be made, or `nft` failed (`internal`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create(
    State(d): D,
    caller: Auth,
    Query(w): Query<super::jobs::WaitQuery>,
    ApiJson(req): ApiJson<NetworkCreateRequest>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    let s = crate::job::Submit::named("network.create", &req.name, caller.scope());
    crate::job::on_host(&d, caller.actor(), s, w.wait(), move |d, _| async move {
        let body = serde_json::to_vec(&network::create(&d, req).await?)
            .map_err(|e| super::error::ApiError::internal("encode the network", &e))?;
        Ok(crate::job::Done::with(StatusCode::CREATED, body))
    })
    .await
}

/// Shows a network and the NICs on it.
#[utoipa::path(
    get,
    path = "/v1/networks/{name}",
    tag = "networks",
    operation_id = "show_network",
    params(("name" = String, Path, description = "Network name")),
    responses(
        (status = 200, description = "The network", body = Network),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no network has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<Json<Network>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(network::show(&d, &name).await?))
}

/// Deletes a network no running VM uses.
#[utoipa::path(
    delete,
    path = "/v1/networks/{name}",
    tag = "networks",
    operation_id = "delete_network",
    params(("name" = String, Path, description = "Network name"), super::jobs::WaitQuery),
    responses(
        (status = 204, description = "Deleted (with its zone's switch when it was the zone's last network)"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no network has that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "running VMs have NICs on it (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn delete(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<super::jobs::WaitQuery>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    let s = crate::job::Submit::named("network.delete", &name, caller.scope());
    crate::job::on_host(&d, caller.actor(), s, w.wait(), move |d, _| async move {
        network::delete(&d, &name).await?;
        Ok(crate::job::Done::empty())
    })
    .await
}

/// Lists I/O partitions.
#[utoipa::path(
    get,
    path = "/v1/io",
    tag = "networks",
    operation_id = "list_io_partitions",
    responses(
        (status = 200, description = "Every I/O partition, by name, with its kind, pid, state and clients", body = IoPartitionList),
        Common
    )
)]
async fn io_list(State(d): D, caller: Auth) -> ApiResult<Json<IoPartitionList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(io::list(&d).await?))
}

/// Shows an I/O partition.
#[utoipa::path(
    get,
    path = "/v1/io/{name}",
    tag = "networks",
    operation_id = "show_io_partition",
    params(("name" = String, Path, description = "I/O partition name (`switch-ZONE`)")),
    responses(
        (status = 200, description = "The I/O partition", body = IoPartition),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no I/O partition has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn io_show(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<IoPartition>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(io::show(&d, &name).await?))
}

/// Restarts an I/O partition's process (a stopped one is started); its
/// guests keep their channels and reconnect.
#[utoipa::path(
    post,
    path = "/v1/io/{name}/restart",
    tag = "networks",
    operation_id = "restart_io_partition",
    params(("name" = String, Path, description = "I/O partition name")),
    responses(
        (status = 200, description = "The I/O partition", body = IoPartition),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no I/O partition has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn io_restart(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<IoPartition>> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok(Json(io::restart(&d, &name).await?))
}

/// Stop options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    /// Stop even with clients: their channels are closed (detached) first.
    force: Option<bool>,
}

/// Stops an I/O partition; refused while it has clients unless `force`.
#[utoipa::path(
    post,
    path = "/v1/io/{name}/stop",
    tag = "networks",
    operation_id = "stop_io_partition",
    params(("name" = String, Path, description = "I/O partition name"), StopQuery),
    responses(
        (status = 200, description = "The I/O partition, stopped", body = IoPartition),
        (status = 400, description = "an unknown query parameter or a `force` that is not a boolean", body = ErrorBody),
        (status = 404, description = "no I/O partition has that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "it has clients and `force` is not set (`conflict`)", body = ErrorBody),
        Common
    )
)]
async fn io_stop(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Json<IoPartition>> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok(Json(io::stop(&d, &name, q.force.unwrap_or(false)).await?))
}

/// Changes an I/O partition: the host CPUs dedicated to its process.
#[utoipa::path(
    patch,
    path = "/v1/io/{name}",
    tag = "networks",
    operation_id = "set_io_partition",
    params(("name" = String, Path, description = "I/O partition name")),
    request_body = IoPartitionPatch,
    responses(
        (status = 200, description = "The I/O partition, with the CPUs it runs on", body = IoPartition),
        (status = 400, description = "malformed JSON, an unknown field, or `cpus` not below the number of CPUs broodd may use (`invalid`)", body = ErrorBody),
        (status = 404, description = "no I/O partition has that name (`not_found`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn io_set(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<IoPartitionPatch>,
) -> ApiResult<Json<IoPartition>> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok(Json(io::set(&d, &name, req).await?))
}
