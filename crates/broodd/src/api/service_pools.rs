//! `/v1/pools` (service pools; identity pools are `/v1/identity-pools`),
//! `/v1/services` and `/v1/service-classes`: pools of service domains
//! waiting at their trigger point, requests that turn one into a service,
//! and the guests each service serves.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::ErrorBody;
use brood_api::service::{
    AssociateRequest, Service, ServiceClassList, ServiceList, ServicePool,
    ServicePoolCreateRequest, ServicePoolList, ServicePoolUpdateRequest, ServiceRequest,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::ApiResult;
use super::extract::ApiJson;
use crate::host::Host;
use crate::pool;
use crate::tenancy::{Action, Kind};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list_pools, create_pool))
        .routes(routes!(show_pool, update_pool, delete_pool))
        .routes(routes!(list_services, request_service))
        .routes(routes!(show_service, release_service))
        .routes(routes!(associate_guest))
        .routes(routes!(list_classes))
}

/// Lists service pools.
#[utoipa::path(get, path = "/v1/pools", tag = "services", operation_id = "list_service_pools",
    responses((status = 200, description = "Every service pool, by name", body = ServicePoolList), Common))]
async fn list_pools(State(d): D, caller: Auth) -> ApiResult<Json<ServicePoolList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(pool::list(&d).await?))
}

/// Creates a service pool; its members start booting to the trigger point.
#[utoipa::path(post, path = "/v1/pools", tag = "services", operation_id = "create_service_pool",
    request_body = ServicePoolCreateRequest,
    responses(
        (status = 201, description = "The pool (members are still booting)", body = ServicePool),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name or size, an image broodd does not boot, or an unknown class", body = ErrorBody),
        (status = 409, description = "a service pool of that name exists (`conflict`)", body = ErrorBody),
        JsonBody, Common))]
async fn create_pool(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<ServicePoolCreateRequest>,
) -> ApiResult<(StatusCode, Json<ServicePool>)> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok((StatusCode::CREATED, Json(pool::create(&d, req).await?)))
}

/// Shows a service pool and its members.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "services", operation_id = "show_service_pool",
    params(("name" = String, Path, description = "Service pool name")),
    responses(
        (status = 200, description = "The pool", body = ServicePool),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no service pool has that name (`not_found`)", body = ErrorBody),
        Common))]
async fn show_pool(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<ServicePool>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(pool::show(&d, &name).await?))
}

/// Changes a service pool's refill policy (`min`, `max`, CPU threshold,
/// memory floor); the supervisor acts on it at once.
#[utoipa::path(patch, path = "/v1/pools/{name}", tag = "services", operation_id = "update_service_pool",
    params(("name" = String, Path, description = "Service pool name")),
    request_body = ServicePoolUpdateRequest,
    responses(
        (status = 200, description = "The pool, with its new policy", body = ServicePool),
        (status = 400, description = "malformed JSON, an unknown field, or a size or threshold out of range (`max` below `min`)", body = ErrorBody),
        (status = 404, description = "no service pool has that name (`not_found`)", body = ErrorBody),
        JsonBody, Common))]
async fn update_pool(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ServicePoolUpdateRequest>,
) -> ApiResult<Json<ServicePool>> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok(Json(pool::update(&d, &name, req).await?))
}

/// Deletes a service pool; its waiting members are torn down, its services keep running.
#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "services", operation_id = "delete_service_pool",
    params(("name" = String, Path, description = "Service pool name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no service pool has that name (`not_found`)", body = ErrorBody),
        Common))]
async fn delete_pool(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.check(Action::Configure, Kind::Infra)?;
    pool::delete(&d, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists services.
#[utoipa::path(get, path = "/v1/services", tag = "services", operation_id = "list_services",
    responses((status = 200, description = "Every service, by name", body = ServiceList), Common))]
async fn list_services(State(d): D, caller: Auth) -> ApiResult<Json<ServiceList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(pool::request::list(&d).await?))
}

/// Requests a service: takes the pool's next member, configures it and
/// answers once its readiness probe does (an empty pool falls back to a
/// cold boot, said in `fallback`).
#[utoipa::path(post, path = "/v1/services", tag = "services", operation_id = "request_service",
    request_body = ServiceRequest,
    params(super::jobs::WaitQuery),
    responses(
        (status = 201, description = "The service, answering", body = Service),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        (status = 400, description = "malformed JSON, an unknown field, an unknown class or pool, a bad key-value or script, more guests than `domain_pairing`, or a class whose image the pool lacks", body = ErrorBody),
        (status = 404, description = "a guest named in `for` does not exist (`not_found`)", body = ErrorBody),
        (status = 409, description = "the name is taken, a guest is a template (`invalid_transition`), the host lacks capacity, or the service did not start or answer its probe in time", body = ErrorBody),
        (status = 502, description = "QEMU or the member's agent failed (`engine_failed`)", body = ErrorBody),
        JsonBody, Common))]
async fn request_service(
    State(d): D,
    caller: Auth,
    Query(w): Query<super::jobs::WaitQuery>,
    ApiJson(req): ApiJson<ServiceRequest>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    let s = crate::job::Submit {
        kind: "service.request".into(),
        target: req.class.clone(),
        unit: caller.scope(),
        priority: 0,
        params: serde_json::json!({"class": req.class, "name": req.name, "for": req.guests}),
    };
    crate::job::on_host(
        &d,
        caller.actor(),
        s,
        w.wait(),
        move |d, _actor| async move {
            let svc = pool::request::request(&d, req).await?;
            let body = serde_json::to_vec(&svc)
                .map_err(|e| super::error::ApiError::internal("encode the service", &e))?;
            Ok(crate::job::Done::with(StatusCode::CREATED, body))
        },
    )
    .await
}

/// Shows a service.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services", operation_id = "show_service",
    params(("name" = String, Path, description = "Service name or uuid")),
    responses(
        (status = 200, description = "The service", body = Service),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no service has that name (`not_found`)", body = ErrorBody),
        Common))]
async fn show_service(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<Service>> {
    caller.check(Action::Read, Kind::Infra)?;
    let rec = pool::request::find(&d, &name).await?;
    Ok(Json(pool::request::view(&d, &rec).await?))
}

/// Releases a service: its domain is torn down.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services", operation_id = "release_service",
    params(("name" = String, Path, description = "Service name or uuid"), super::jobs::WaitQuery),
    responses(
        (status = 204, description = "Released"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no service has that name (`not_found`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common))]
async fn release_service(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<super::jobs::WaitQuery>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    let s = crate::job::Submit::named("service.release", &name, caller.scope());
    crate::job::on_host(&d, caller.actor(), s, w.wait(), move |d, _| async move {
        pool::request::release(&d, &name).await?;
        Ok(crate::job::Done::empty())
    })
    .await
}

/// Associates a guest with a service, within its `domain_pairing`.
#[utoipa::path(post, path = "/v1/services/{name}/guests", tag = "services", operation_id = "associate_guest",
    request_body = AssociateRequest,
    params(("name" = String, Path, description = "Service name or uuid")),
    responses(
        (status = 200, description = "The service", body = Service),
        (status = 400, description = "malformed JSON or an unknown field", body = ErrorBody),
        (status = 404, description = "no such service or guest (`not_found`)", body = ErrorBody),
        (status = 409, description = "the guest is a template (`invalid_transition`), or the service serves as many guests as its `domain_pairing` allows (`conflict`)", body = ErrorBody),
        JsonBody, Common))]
async fn associate_guest(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AssociateRequest>,
) -> ApiResult<Json<Service>> {
    caller.check(Action::Configure, Kind::Infra)?;
    Ok(Json(pool::request::associate(&d, &name, &req.guest).await?))
}

/// Lists service classes (built-in and `DATA_DIR/classes/`).
#[utoipa::path(get, path = "/v1/service-classes", tag = "services", operation_id = "list_service_classes",
    responses((status = 200, description = "Every class, by name", body = ServiceClassList), Common))]
async fn list_classes(State(d): D, caller: Auth) -> ApiResult<Json<ServiceClassList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(ServiceClassList {
        items: pool::class::list(&d).await,
    }))
}
