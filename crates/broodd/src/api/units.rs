//! `/v1/units`, `/v1/requests` and `/v1/infra`: units register and ask for
//! allocations, administrators decide, and the infrastructure hierarchy.
//! Each handler takes the [`Auth`] caller and reaches objects through its
//! checked lookups; the work is `tenancy::units`'.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::{
    AllocationRequest, ApproveRequest, Datacenter, ErrorBody, InfraView, RejectRequest, Unit,
    UnitList, UnitRegisterRequest, UnitRequestList, UnitRequestView,
};
use brood_ledger::Resources;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::ApiResult;
use super::extract::{ApiJson, OptionalJson};
use crate::host::Host;
use crate::tenancy::{Action, units};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, register))
        .routes(routes!(show))
        .routes(routes!(request))
        .routes(routes!(requests))
        .routes(routes!(show_request))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(infra, set_infra))
}

/// Lists the units the caller may see.
#[utoipa::path(
    get,
    path = "/v1/units",
    tag = "units",
    operation_id = "list_units",
    responses(
        (status = 200, description = "The units the caller may see, by name, with allocation and use", body = UnitList),
        Common
    )
)]
async fn list(State(d): D, caller: Auth) -> ApiResult<Json<UnitList>> {
    Ok(Json(units::list(&d, &caller).await?))
}

/// Registers a business unit, with nothing allocated yet.
#[utoipa::path(
    post,
    path = "/v1/units",
    tag = "units",
    operation_id = "register_unit",
    request_body = UnitRegisterRequest,
    responses(
        (status = 201, description = "The unit", body = Unit),
        (status = 400, description = "malformed JSON, an unknown field, or an invalid name or contact", body = ErrorBody),
        (status = 409, description = "a unit of that name exists (`conflict`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn register(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<UnitRegisterRequest>,
) -> ApiResult<(StatusCode, Json<Unit>)> {
    Ok((
        StatusCode::CREATED,
        Json(units::register(&d, &caller, req).await?),
    ))
}

/// Shows a unit: allocated, used and free, per resource.
#[utoipa::path(
    get,
    path = "/v1/units/{name}",
    tag = "units",
    operation_id = "show_unit",
    params(("name" = String, Path, description = "Unit name")),
    responses(
        (status = 200, description = "The unit", body = Unit),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no unit the caller may see has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<Json<Unit>> {
    let unit = caller.unit_named(&d, &name, Action::Read).await?;
    Ok(Json(units::view(&d, &unit).await?))
}

/// Asks for an allocation, or a change of it (each amount is the whole allocation wanted).
#[utoipa::path(
    post,
    path = "/v1/units/{name}/requests",
    tag = "units",
    operation_id = "request_allocation",
    request_body = AllocationRequest,
    params(("name" = String, Path, description = "Unit name")),
    responses(
        (status = 201, description = "The request, pending", body = UnitRequestView),
        (status = 400, description = "malformed JSON, an unknown field, or a bad network or template name", body = ErrorBody),
        (status = 404, description = "no unit the caller may see has that name (`not_found`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn request(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AllocationRequest>,
) -> ApiResult<(StatusCode, Json<UnitRequestView>)> {
    let unit = caller.unit_named(&d, &name, Action::Read).await?;
    caller.check(Action::Create, crate::tenancy::Kind::Request)?;
    Ok((
        StatusCode::CREATED,
        Json(units::request(&d, &caller, &unit, req).await?),
    ))
}

/// Request list options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    /// Only the pending ones.
    pending: Option<bool>,
}

/// Lists requests: of the caller's unit, or (an administrator) all.
#[utoipa::path(
    get,
    path = "/v1/requests",
    tag = "units",
    operation_id = "list_requests",
    params(RequestsQuery),
    responses(
        (status = 200, description = "Requests, oldest first", body = UnitRequestList),
        (status = 400, description = "an unknown query parameter or a `pending` that is not a boolean", body = ErrorBody),
        Common
    )
)]
async fn requests(
    State(d): D,
    caller: Auth,
    Query(q): Query<RequestsQuery>,
) -> ApiResult<Json<UnitRequestList>> {
    Ok(Json(
        units::requests(&d, &caller, q.pending.unwrap_or(false)).await?,
    ))
}

/// Shows a request.
#[utoipa::path(
    get,
    path = "/v1/requests/{id}",
    tag = "units",
    operation_id = "show_request",
    params(("id" = u64, Path, description = "Request number")),
    responses(
        (status = 200, description = "The request", body = UnitRequestView),
        (status = 400, description = "the number in the path is not a number", body = ErrorBody),
        (status = 404, description = "no request the caller may see has that number (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show_request(
    State(d): D,
    caller: Auth,
    Path(id): Path<u64>,
) -> ApiResult<Json<UnitRequestView>> {
    let r = caller.request(&d, id, Action::Read).await?;
    Ok(Json(units::request_view(&d, &r).await?))
}

/// Approves a request, in part when amounts are given: the capacity moves
/// from `available` to the unit in the same ledger transaction.
#[utoipa::path(
    post,
    path = "/v1/requests/{id}/approve",
    tag = "units",
    operation_id = "approve_request",
    request_body(content = ApproveRequest, description = "Optional: an empty body grants the request as asked"),
    params(("id" = u64, Path, description = "Request number")),
    responses(
        (status = 200, description = "The request, approved or partially approved", body = UnitRequestView),
        (status = 400, description = "malformed JSON, an unknown field, or a grant outside the allocation and the request", body = ErrorBody),
        (status = 404, description = "no request the caller may see has that number (`not_found`)", body = ErrorBody),
        (status = 409, description = "decided already, the host lacks the capacity, or a shrink would take what the unit's VMs hold (the message names them)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn approve(
    State(d): D,
    caller: Auth,
    Path(id): Path<u64>,
    OptionalJson(req): OptionalJson<ApproveRequest>,
) -> ApiResult<Json<UnitRequestView>> {
    let r = caller.request(&d, id, Action::Manage).await?;
    let w = r.want;
    let grant = Resources {
        memory_mib: req.memory_mib.unwrap_or(w.memory_mib),
        vcpus: req.vcpus.unwrap_or(w.vcpus),
        disk_gib: req.disk_gib.unwrap_or(w.disk_gib),
        nics: req.nics.unwrap_or(w.nics),
    };
    Ok(Json(
        units::decide(&d, &caller, &r, Some(grant), req.note).await?,
    ))
}

/// Rejects a request.
#[utoipa::path(
    post,
    path = "/v1/requests/{id}/reject",
    tag = "units",
    operation_id = "reject_request",
    request_body(content = RejectRequest, description = "Optional: an empty body rejects without a note"),
    params(("id" = u64, Path, description = "Request number")),
    responses(
        (status = 200, description = "The request, rejected", body = UnitRequestView),
        (status = 400, description = "malformed JSON or an unknown field", body = ErrorBody),
        (status = 404, description = "no request the caller may see has that number (`not_found`)", body = ErrorBody),
        (status = 409, description = "decided already (`conflict`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn reject(
    State(d): D,
    caller: Auth,
    Path(id): Path<u64>,
    OptionalJson(req): OptionalJson<RejectRequest>,
) -> ApiResult<Json<UnitRequestView>> {
    let r = caller.request(&d, id, Action::Manage).await?;
    Ok(Json(units::decide(&d, &caller, &r, None, req.note).await?))
}

/// The infrastructure hierarchy (datacenter, infrastructures, services,
/// roles, VMs); a unit sees only its exposed portion.
#[utoipa::path(
    get,
    path = "/v1/infra",
    tag = "units",
    operation_id = "show_infra",
    responses(
        (status = 200, description = "The hierarchy as the caller may see it", body = InfraView),
        Common
    )
)]
async fn infra(State(d): D, caller: Auth) -> ApiResult<Json<InfraView>> {
    Ok(Json(units::infra(&d, &caller).await?))
}

/// Replaces the infrastructure hierarchy.
#[utoipa::path(
    put,
    path = "/v1/infra",
    tag = "units",
    operation_id = "set_infra",
    request_body = Datacenter,
    responses(
        (status = 200, description = "The hierarchy as stored", body = InfraView),
        (status = 400, description = "malformed JSON, an unknown field, or a document over 256 KiB", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn set_infra(
    State(d): D,
    caller: Auth,
    ApiJson(dc): ApiJson<Datacenter>,
) -> ApiResult<Json<InfraView>> {
    Ok(Json(units::set_infra(&d, &caller, dc).await?))
}
