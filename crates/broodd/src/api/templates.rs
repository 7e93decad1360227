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

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::host::Host;
use crate::job::{self, Done};
use crate::template::freeze;
use crate::tenancy::{Action, Caller, Kind};
use crate::{fork, identity_pool};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, create))
        .routes(routes!(show, delete))
        .routes(routes!(fork_children))
        .routes(routes!(identity_pools, create_identity_pool))
        .routes(routes!(show_identity_pool, delete_identity_pool))
}

pub(super) async fn template_rec(
    d: &Host,
    caller: &Caller,
    name: &str,
    action: Action,
) -> ApiResult<crate::tenancy::Authorized<brood_ledger::PartitionRecord>> {
    let rec = caller.template(d, name, action).await?;
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
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "list_templates",
    responses(
        (status = 200, description = "Every template, by name", body = TemplateList),
        Common
    )
)]
async fn list(State(d): D, caller: Auth) -> ApiResult<Json<TemplateList>> {
    let mut items = Vec::new();
    for rec in d.ledger.all_partitions().await? {
        if rec.stage == Stage::Template
            && caller.template(&d, &rec.name, Action::Read).await.is_ok()
        {
            items.push(freeze::view(&d, &rec).await?);
        }
    }
    Ok(Json(TemplateList { items }))
}

/// Makes a running partition a template: its agent runs the identity-independent
/// services and waits at its fork point; broodd freezes it there.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "create_template",
    request_body = TemplateCreateRequest,
    params(super::jobs::WaitQuery),
    responses(
        (status = 201, description = "The template", body = Template),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name, `pool_size` over 64, or `keep` without a new name or with `persist`", body = ErrorBody),
        (status = 404, description = "no partition has the name or uuid in `vm` (`not_found`)", body = ErrorBody),
        (status = 409, description = "the VM is not running, is a child that cannot be frozen (or kept), the name is taken, or another operation holds it", body = ErrorBody),
        (status = 502, description = "the agent did not reach its fork point or QEMU failed to save the state (`engine_failed`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create(
    State(d): D,
    caller: Auth,
    Query(w): Query<super::jobs::WaitQuery>,
    ApiJson(req): ApiJson<TemplateCreateRequest>,
) -> ApiResult<axum::response::Response> {
    let vm = caller.partition(&d, &req.vm, Action::Operate).await?;
    caller.check(Action::Create, Kind::Template)?;
    let key = vm.uuid.to_string();
    job::on_partition(
        &d,
        caller.actor(),
        "template.create",
        &vm,
        w.wait(),
        move |d, actor| async move {
            let t = if req.keep {
                create_keep(&d, &actor, &key, req).await?
            } else {
                let rec = freeze::create(&d, &actor, &key, req.name, req.warm, req.persist).await?;
                freeze::view(&d, &rec).await?
            };
            let body = serde_json::to_vec(&t)
                .map_err(|e| ApiError::internal("encode the template", &e))?;
            Ok(Done::with(StatusCode::CREATED, body))
        },
    )
    .await
}

/// `keep`: a new template beside the VM, which runs on.
async fn create_keep(
    d: &std::sync::Arc<crate::host::Host>,
    actor: &str,
    key: &str,
    req: TemplateCreateRequest,
) -> ApiResult<Template> {
    let Some(name) = req.name else {
        return Err(crate::host::HostError::invalid(
            "keep makes a new template beside the VM, which keeps its name: give the template \
             a name (`brood template create NAME --from VM --keep`)",
        )
        .into());
    };
    if req.persist {
        return Err(crate::host::HostError::invalid(
            "keep and persist cannot be combined yet: make the template with --keep, or \
             with --persist without --keep",
        )
        .into());
    }
    let warm = req.warm.unwrap_or(crate::template::DEFAULT_WARM);
    if warm > crate::template::MAX_WARM {
        return Err(crate::host::HostError::invalid(format!(
            "warm {warm} is over the limit of {}",
            crate::template::MAX_WARM
        ))
        .into());
    }
    let kept = crate::template::keep::create(d, actor, key, &name, warm).await?;
    let mut t = freeze::view(d, &kept.rec).await?;
    t.downtime_ms = Some(u64::try_from(kept.downtime.as_millis()).unwrap_or(u64::MAX));
    Ok(t)
}

/// Shows a template.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    tag = "templates",
    operation_id = "show_template",
    params(("name" = String, Path, description = "Template name or uuid")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no template has that name or uuid (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<Json<Template>> {
    let rec = template_rec(&d, &caller, &name, Action::Read).await?;
    Ok(Json(freeze::view(&d, &rec).await?))
}

/// Delete options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Delete its children and derived templates too.
    cascade: Option<bool>,
    /// Wait for the job (default); `false` answers 202 with the job.
    wait: Option<bool>,
}

/// Deletes a template (refused while it has children or derived templates, unless `cascade`).
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    tag = "templates",
    operation_id = "delete_template",
    params(("name" = String, Path, description = "Template name or uuid"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted (with its children and derived templates, with `cascade`)"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "an unknown query parameter or a `cascade` that is not a boolean", body = ErrorBody),
        (status = 404, description = "no template has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "it has children or derived templates and `cascade` is not set, or another operation holds it", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn delete(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<axum::response::Response> {
    let rec = template_rec(&d, &caller, &name, Action::Delete).await?;
    let (uuid, cascade) = (rec.uuid, q.cascade.unwrap_or(false));
    let wait = q.wait.unwrap_or(true);
    job::on_partition(
        &d,
        caller.actor(),
        "template.delete",
        &rec,
        wait,
        move |d, actor| async move {
            freeze::delete(&d, &actor, uuid, cascade).await?;
            Ok(Done::empty())
        },
    )
    .await
}

/// Forks running children from a template, each with its own identity.
#[utoipa::path(
    post,
    path = "/v1/templates/{name}/fork",
    tag = "templates",
    operation_id = "fork_template",
    request_body = ForkRequest,
    params(("name" = String, Path, description = "Template name or uuid"), super::jobs::WaitQuery),
    responses(
        (status = 201, description = "The children, in order", body = ForkResponse),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, or an invalid value (`count` outside 1-256, a bad key-value, a pool of the wrong kind)", body = ErrorBody),
        (status = 404, description = "no template, identity pool or IPv4 pool of that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "the host lacks capacity or a pool has too few free values (`capacity_exceeded`), another operation holds the template, or the services the children require (`requires`) could not be had (`conflict`; no such child stays)", body = ErrorBody),
        (status = 502, description = "a child QEMU failed to start or load the state (`engine_failed`); no child is left half-made", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn fork_children(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<super::jobs::WaitQuery>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> ApiResult<axum::response::Response> {
    let rec = template_rec(&d, &caller, &name, Action::Operate).await?;
    caller.check(Action::Create, Kind::Partition)?;
    let (uuid, unit) = (rec.uuid, caller.scope());
    let mut s = job::Submit::partition("template.fork", &rec, unit);
    s.params["count"] = serde_json::json!(req.count);
    job::on_host(
        &d,
        caller.actor(),
        s,
        w.wait(),
        move |d, actor| async move {
            let forked = fork::fork(&d, &actor, unit, uuid, req);
            // Cancelled while it ran: the children made so far go again.
            let (d2, a2) = (d.clone(), actor.clone());
            let undo = |children: Vec<brood_api::ForkChild>| async move {
                for c in children {
                    crate::partition::lifecycle::delete(&d2, &a2, c.uuid, true).await?;
                }
                Ok(())
            };
            let children = job::cancellable(forked, undo).await?;
            let body = serde_json::to_vec(&ForkResponse { children })
                .map_err(|e| ApiError::internal("encode the children", &e))?;
            Ok(Done::with(StatusCode::CREATED, body))
        },
    )
    .await
}

/// Lists identity pools.
#[utoipa::path(
    get,
    path = "/v1/identity-pools",
    tag = "templates",
    operation_id = "list_identity_pools",
    responses(
        (status = 200, description = "Every identity pool, by name", body = IdentityPoolList),
        Common
    )
)]
async fn identity_pools(State(d): D, caller: Auth) -> ApiResult<Json<IdentityPoolList>> {
    caller.check(Action::Read, Kind::IdentityPool)?;
    Ok(Json(identity_pool::list(&d).await?))
}

/// Creates an identity pool (identities, or a range of IPv4 addresses).
#[utoipa::path(
    post,
    path = "/v1/identity-pools",
    tag = "templates",
    operation_id = "create_identity_pool",
    request_body = IdentityPoolCreateRequest,
    responses(
        (status = 201, description = "The identity pool", body = IdentityPool),
        (status = 400, description = "malformed JSON, an unknown field, or an invalid name, value, range, prefix or gateway", body = ErrorBody),
        (status = 409, description = "an identity pool of that name exists (`conflict`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create_identity_pool(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<IdentityPoolCreateRequest>,
) -> ApiResult<(StatusCode, Json<IdentityPool>)> {
    caller.check(Action::Configure, Kind::IdentityPool)?;
    Ok((
        StatusCode::CREATED,
        Json(identity_pool::create(&d, caller.actor(), req).await?),
    ))
}

/// Shows an identity pool and who holds each value.
#[utoipa::path(
    get,
    path = "/v1/identity-pools/{name}",
    tag = "templates",
    operation_id = "show_identity_pool",
    params(("name" = String, Path, description = "Identity pool name")),
    responses(
        (status = 200, description = "The identity pool and who holds each value", body = IdentityPool),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no identity pool has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show_identity_pool(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<IdentityPool>> {
    caller.check(Action::Read, Kind::IdentityPool)?;
    Ok(Json(identity_pool::show(&d, &name, true).await?))
}

/// Deletes an identity pool none of whose values is held.
#[utoipa::path(
    delete,
    path = "/v1/identity-pools/{name}",
    tag = "templates",
    operation_id = "delete_identity_pool",
    params(("name" = String, Path, description = "Identity pool name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no identity pool has that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "a child holds one of its values (`conflict`)", body = ErrorBody),
        Common
    )
)]
async fn delete_identity_pool(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.check(Action::Configure, Kind::IdentityPool)?;
    identity_pool::delete(&d, caller.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
