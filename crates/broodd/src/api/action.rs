//! `/v1/templates/{name}/actions`: actions bound to templates (issue 13).
//! An action such as "create web server" is a stored workflow bound to a
//! template under a name; running it runs the workflow as a job with
//! `${data.template}` set to the template. The bindings are the ledger's
//! (`template_action`), the workflows and jobs `job`'s.
//!
//! Reading a template's actions needs `read` on the template, binding and
//! unbinding `manage`, running `operate` (a template the caller may not
//! read answers 404).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use brood_api::ErrorBody;
use brood_api::WorkflowRunRequest;
use brood_api::job::{ActionBindRequest, TemplateAction, TemplateActionList};
use brood_ledger::ActionRecord;
use brood_workflow::Workflow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JobStoreDown, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, OptionalJson};
use super::jobs::{WaitQuery, check_data, no_workflow};
use super::templates::template_rec;
use crate::host::Host;
use crate::job;
use crate::tenancy::{Action, Kind};

type D = State<Arc<Host>>;

/// The input a bound workflow must declare: the template's name.
pub const TEMPLATE_INPUT: &str = "template";

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list_actions))
        .routes(routes!(bind_action, unbind_action))
        .routes(routes!(run_action))
}

fn view(template: &str, a: ActionRecord) -> TemplateAction {
    TemplateAction {
        template: template.to_owned(),
        action: a.action,
        workflow: a.workflow,
        created_by: a.created_by,
        created_at: a.created_at,
    }
}

fn no_action(template: &str, action: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        brood_api::ErrorCode::NotFound,
        format!(
            "template {template} has no action {action:?}: `brood workflow actions --template \
             {template}` lists them"
        ),
    )
}

fn check_action_name(action: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&action.len())
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "action name {action:?} is not valid: use 1-64 of a-z, 0-9, '_', '.', '-'"
        )))
    }
}

/// Lists a template's actions.
#[utoipa::path(
    get,
    path = "/v1/templates/{name}/actions",
    tag = "jobs",
    operation_id = "list_template_actions",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "Its actions, by name", body = TemplateActionList),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no template of that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn list_actions(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateActionList>> {
    let tpl = template_rec(&d, &caller, &name, Action::Read).await?;
    let items = d
        .ledger
        .actions(tpl.uuid)
        .await?
        .into_iter()
        .map(|a| view(&tpl.name, a))
        .collect();
    Ok(Json(TemplateActionList { items }))
}

/// Binds a stored workflow to a template as an action (replacing an
/// earlier binding of that name).
#[utoipa::path(
    put,
    path = "/v1/templates/{name}/actions/{action}",
    tag = "jobs",
    operation_id = "bind_template_action",
    request_body = ActionBindRequest,
    params(
        ("name" = String, Path, description = "Template name"),
        ("action" = String, Path, description = "Action name: 1-64 of a-z, 0-9, '_', '.', '-'", max_length = 64, min_length = 1)
    ),
    responses(
        (status = 200, description = "Bound", body = TemplateAction),
        (status = 400, description = "malformed JSON, an unknown field, a bad action name, or a workflow without an input `template`", body = ErrorBody),
        (status = 404, description = "no template or no workflow of that name (`not_found`)", body = ErrorBody),
        JsonBody,
        Common,
        JobStoreDown
    )
)]
async fn bind_action(
    State(d): D,
    caller: Auth,
    Path((name, action)): Path<(String, String)>,
    ApiJson(req): ApiJson<ActionBindRequest>,
) -> ApiResult<Json<TemplateAction>> {
    check_action_name(&action)?;
    let tpl = template_rec(&d, &caller, &name, Action::Manage).await?;
    caller.check(Action::Read, Kind::Workflow)?;
    let stored = d
        .jobs
        .workflow(&req.workflow, None)
        .await?
        .ok_or_else(|| no_workflow(&req.workflow))?;
    let wf: Workflow = serde_json::from_value(stored.definition)
        .map_err(|e| ApiError::internal(&format!("read workflow {}", req.workflow), &e))?;
    if !wf.inputs.contains_key(TEMPLATE_INPUT) {
        return Err(ApiError::bad_request(format!(
            "workflow {} has no input {TEMPLATE_INPUT:?}, so it cannot be told its template: \
             add `inputs: {{{TEMPLATE_INPUT}: {{}}}}` and use ${{data.{TEMPLATE_INPUT}}}",
            wf.name
        )));
    }
    let a = d
        .ledger
        .bind_action(tpl.uuid, &action, &wf.name, caller.actor())
        .await?;
    Ok(Json(view(&tpl.name, a)))
}

/// Removes an action from a template (the workflow stays). Idempotent: an
/// action that is not bound is removed already.
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}/actions/{action}",
    tag = "jobs",
    operation_id = "unbind_template_action",
    params(
        ("name" = String, Path, description = "Template name"),
        ("action" = String, Path, description = "Action name: 1-64 of a-z, 0-9, '_', '.', '-'", max_length = 64, min_length = 1)
    ),
    responses(
        (status = 204, description = "Removed (or it was not bound)"),
        (status = 400, description = "a bad action name, or a path that is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no template of that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn unbind_action(
    State(d): D,
    caller: Auth,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_action_name(&action)?;
    let tpl = template_rec(&d, &caller, &name, Action::Manage).await?;
    d.ledger.unbind_action(tpl.uuid, &action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a template's action: its workflow, as a job, with `data.template`
/// set to the template.
#[utoipa::path(
    post,
    path = "/v1/templates/{name}/actions/{action}/run",
    tag = "jobs",
    operation_id = "run_template_action",
    request_body(content = WorkflowRunRequest, description = "Optional: the other data items (`template` is set by brood); an empty body means none"),
    params(
        ("name" = String, Path, description = "Template name"),
        ("action" = String, Path, description = "Action name"),
        WaitQuery
    ),
    responses(
        (status = 200, description = "The workflow ran: `{workflow, outputs}`, its tasks' outputs (secrets as `***`)", content_type = "application/json"),
        (status = 202, description = "With `wait=false`: the job, queued", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, data that does not fit the workflow's inputs, or data that sets `template`", body = ErrorBody),
        (status = 404, description = "no template of that name, no such action, or its workflow was deleted (`not_found`)", body = ErrorBody),
        (status = 409, description = "a task failed (what the job had done was undone; the message names the task), or the job was cancelled (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn run_action(
    State(d): D,
    caller: Auth,
    Path((name, action)): Path<(String, String)>,
    Query(w): Query<WaitQuery>,
    OptionalJson(req): OptionalJson<WorkflowRunRequest>,
) -> ApiResult<Response> {
    let tpl = template_rec(&d, &caller, &name, Action::Operate).await?;
    let bound = d
        .ledger
        .action(tpl.uuid, &action)
        .await?
        .ok_or_else(|| no_action(&tpl.name, &action))?;
    let stored = d
        .jobs
        .workflow(&bound.workflow, req.version)
        .await?
        .ok_or_else(|| no_workflow(&bound.workflow))?;
    let wf: Workflow = serde_json::from_value(stored.definition)
        .map_err(|e| ApiError::internal(&format!("read workflow {}", bound.workflow), &e))?;
    let mut data = req.data;
    if data.contains_key(TEMPLATE_INPUT) {
        return Err(ApiError::bad_request(format!(
            "data item {TEMPLATE_INPUT:?} is set by the action to {}: leave it out",
            tpl.name
        )));
    }
    data.insert(TEMPLATE_INPUT.into(), tpl.name.clone().into());
    check_data(&wf, &data)?;
    let s = job::Submit {
        kind: "workflow.run".into(),
        target: wf.name.clone(),
        unit: caller.scope(),
        priority: 0,
        params: job::workflow::params(&wf, stored.version, &data),
    };
    job::submit(
        &d,
        caller.actor(),
        s,
        w.wait(),
        Box::new(move |ctx| Box::pin(job::workflow::run(ctx, Some(data)))),
    )
    .await
}
