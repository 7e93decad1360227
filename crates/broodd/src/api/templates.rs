//! `/v1/templates` and `/v1/identity-pools`: making templates, forking children,
//! and the identity pools children take their identities from.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::{
    ErrorBody, ForkRequest, ForkResponse, IdentityPool, IdentityPoolCreateRequest,
    IdentityPoolList, Template, TemplateCreateRequest, TemplateList,
};
use brood_ledger::Stage;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::host::Host;
use crate::template::freeze;
use crate::{fork, identity_pool};

type D = State<Arc<Host>>;
const ACTOR: &str = "api";

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, create))
        .routes(routes!(show, delete))
        .routes(routes!(fork_children))
        .routes(routes!(identity_pools, create_identity_pool))
        .routes(routes!(show_identity_pool, delete_identity_pool))
}

async fn template_rec(d: &Host, name: &str) -> ApiResult<brood_ledger::PartitionRecord> {
    let rec = d.find(name).await?;
    if rec.stage != Stage::Template {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            brood_api::ErrorCode::NotFound,
            format!(
                "{name:?} is a partition, not a template: `brood template list` shows the templates"
            ),
        ));
    }
    Ok(rec)
}

/// Lists templates.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, body = TemplateList)))]
async fn list(State(d): D) -> ApiResult<Json<TemplateList>> {
    let mut items = Vec::new();
    for rec in d.ledger.all_partitions().await? {
        if rec.stage == Stage::Template {
            items.push(freeze::view(&d, &rec).await?);
        }
    }
    Ok(Json(TemplateList { items }))
}

/// Makes a running partition a template: its agent runs the identity-independent
/// services and waits at its fork point; broodd freezes it there.
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateCreateRequest,
    responses((status = 201, body = Template), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn create(
    State(d): D,
    ApiJson(req): ApiJson<TemplateCreateRequest>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let rec = freeze::create(&d, ACTOR, &req.vm, req.name, req.warm, req.persist).await?;
    Ok((StatusCode::CREATED, Json(freeze::view(&d, &rec).await?)))
}

/// Shows a template.
#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name or uuid")),
    responses((status = 200, body = Template), (status = 404, body = ErrorBody)))]
async fn show(State(d): D, Path(name): Path<String>) -> ApiResult<Json<Template>> {
    let rec = template_rec(&d, &name).await?;
    Ok(Json(freeze::view(&d, &rec).await?))
}

/// Delete options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Delete its children and derived templates too.
    cascade: Option<bool>,
}

/// Deletes a template (refused while it has children or derived templates, unless `cascade`).
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name or uuid"), DeleteQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let rec = template_rec(&d, &name).await?;
    freeze::delete(&d, ACTOR, rec.uuid, q.cascade.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forks running children from a template, each with its own identity.
#[utoipa::path(post, path = "/v1/templates/{name}/fork", tag = "templates", request_body = ForkRequest,
    params(("name" = String, Path, description = "Template name or uuid")),
    responses((status = 201, body = ForkResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn fork_children(
    State(d): D,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> ApiResult<(StatusCode, Json<ForkResponse>)> {
    let rec = template_rec(&d, &name).await?;
    let children = fork::fork(&d, ACTOR, rec.uuid, req).await?;
    Ok((StatusCode::CREATED, Json(ForkResponse { children })))
}

/// Lists identity pools.
#[utoipa::path(get, path = "/v1/identity-pools", tag = "templates", responses((status = 200, body = IdentityPoolList)))]
async fn identity_pools(State(d): D) -> ApiResult<Json<IdentityPoolList>> {
    Ok(Json(identity_pool::list(&d).await?))
}

/// Creates an identity pool (identities, or a range of IPv4 addresses).
#[utoipa::path(post, path = "/v1/identity-pools", tag = "templates", request_body = IdentityPoolCreateRequest,
    responses((status = 201, body = IdentityPool), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_identity_pool(
    State(d): D,
    ApiJson(req): ApiJson<IdentityPoolCreateRequest>,
) -> ApiResult<(StatusCode, Json<IdentityPool>)> {
    Ok((
        StatusCode::CREATED,
        Json(identity_pool::create(&d, ACTOR, req).await?),
    ))
}

/// Shows an identity pool and who holds each value.
#[utoipa::path(get, path = "/v1/identity-pools/{name}", tag = "templates",
    params(("name" = String, Path, description = "Identity pool name")),
    responses((status = 200, body = IdentityPool), (status = 404, body = ErrorBody)))]
async fn show_identity_pool(
    State(d): D,
    Path(name): Path<String>,
) -> ApiResult<Json<IdentityPool>> {
    Ok(Json(identity_pool::show(&d, &name, true).await?))
}

/// Deletes an identity pool none of whose values is held.
#[utoipa::path(delete, path = "/v1/identity-pools/{name}", tag = "templates",
    params(("name" = String, Path, description = "Identity pool name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_identity_pool(State(d): D, Path(name): Path<String>) -> ApiResult<StatusCode> {
    identity_pool::delete(&d, ACTOR, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
