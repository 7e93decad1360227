//! `/v1/users`, `/v1/tokens`, `/v1/prices` and `/v1/chargeback`: users
//! and their roles, tokens (shown once), prices, chargeback reports and
//! refunds. Each handler takes the [`Auth`] caller; the work is
//! `tenancy::accounts`'.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::{
    ChargebackReport, ErrorBody, PriceList, PriceRequest, Refund, RefundRequest, Token,
    TokenCreateRequest, TokenCreated, TokenList, User, UserCreateRequest, UserList,
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
use crate::tenancy::{Action, accounts};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(prices, set_price))
        .routes(routes!(chargeback))
        .routes(routes!(refund))
}

/// Lists the users the caller may see.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "accounts",
    operation_id = "list_users",
    responses(
        (status = 200, description = "Users, by name", body = UserList),
        Common
    )
)]
async fn list_users(State(d): D, caller: Auth) -> ApiResult<Json<UserList>> {
    Ok(Json(accounts::list_users(&d, &caller).await?))
}

/// Creates a user with a role (and, for the unit roles, a unit).
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "accounts",
    operation_id = "create_user",
    request_body = UserCreateRequest,
    responses(
        (status = 201, description = "The user", body = User),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name, or a role without its unit (or a host-wide role with one)", body = ErrorBody),
        (status = 404, description = "no unit the caller may see has that name (`not_found`)", body = ErrorBody),
        (status = 409, description = "a user of that name exists (`conflict`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create_user(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<UserCreateRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((
        StatusCode::CREATED,
        Json(accounts::create_user(&d, &caller, req).await?),
    ))
}

/// Deletes a user and its tokens.
#[utoipa::path(
    delete,
    path = "/v1/users/{name}",
    tag = "accounts",
    operation_id = "delete_user",
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Deleted, with its tokens"),
        (status = 400, description = "the name in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no user the caller may see has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn delete_user(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let user = caller.user(&d, &name, Action::Delete).await?;
    accounts::delete_user(&d, &caller, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists tokens (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "accounts",
    operation_id = "list_tokens",
    responses(
        (status = 200, description = "Tokens the caller may see, with their state", body = TokenList),
        Common
    )
)]
async fn list_tokens(State(d): D, caller: Auth) -> ApiResult<Json<TokenList>> {
    Ok(Json(accounts::list_tokens(&d, &caller).await?))
}

/// Makes a token for a user; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "accounts",
    operation_id = "create_token",
    request_body = TokenCreateRequest,
    responses(
        (status = 201, description = "The token, with its secret (shown once)", body = TokenCreated),
        (status = 400, description = "malformed JSON, an unknown field, or `expires_in_s` outside 1-315360000", body = ErrorBody),
        (status = 404, description = "no user the caller may see has that name (`not_found`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn create_token(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<TokenCreateRequest>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    Ok((
        StatusCode::CREATED,
        Json(accounts::create_token(&d, &caller, req).await?),
    ))
}

/// Revokes a token.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "accounts",
    operation_id = "revoke_token",
    params(("id" = String, Path, description = "Token id (its first 16 hex digits)")),
    responses(
        (status = 200, description = "The token, revoked", body = Token),
        (status = 400, description = "the id in the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no token the caller may see has that id (`not_found`)", body = ErrorBody),
        (status = 409, description = "revoked already (`conflict`)", body = ErrorBody),
        Common
    )
)]
async fn revoke_token(State(d): D, caller: Auth, Path(id): Path<String>) -> ApiResult<Json<Token>> {
    let t = caller.token(&d, &id, Action::Delete).await?;
    Ok(Json(accounts::revoke_token(&d, &caller, &t).await?))
}

/// Prices, in micro-units of money per hour.
#[utoipa::path(
    get,
    path = "/v1/prices",
    tag = "accounts",
    operation_id = "list_prices",
    responses(
        (status = 200, description = "Every price", body = PriceList),
        Common
    )
)]
async fn prices(State(d): D, caller: Auth) -> ApiResult<Json<PriceList>> {
    Ok(Json(accounts::prices(&d, &caller).await?))
}

/// Sets the price of one item.
#[utoipa::path(
    put,
    path = "/v1/prices",
    tag = "accounts",
    operation_id = "set_price",
    request_body = PriceRequest,
    responses(
        (status = 200, description = "Every price, after the change", body = PriceList),
        (status = 400, description = "malformed JSON, an unknown field, or no such price item", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn set_price(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<PriceRequest>,
) -> ApiResult<Json<PriceList>> {
    Ok(Json(accounts::set_price(&d, &caller, req).await?))
}

/// Chargeback period.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ChargebackQuery {
    /// Start, RFC 3339.
    from: String,
    /// End, RFC 3339.
    to: String,
    /// One unit only.
    unit: Option<String>,
}

/// The chargeback for a period, both models, derived from the audit log.
#[utoipa::path(
    get,
    path = "/v1/chargeback",
    tag = "accounts",
    operation_id = "chargeback_report",
    params(ChargebackQuery),
    responses(
        (status = 200, description = "Charges per unit: reservation- and allocation-based, refunds", body = ChargebackReport),
        (status = 400, description = "a missing or unknown query parameter, or a time that is not RFC 3339, or `to` before `from`", body = ErrorBody),
        (status = 404, description = "no unit the caller may see has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn chargeback(
    State(d): D,
    caller: Auth,
    Query(q): Query<ChargebackQuery>,
) -> ApiResult<Json<ChargebackReport>> {
    Ok(Json(
        accounts::report(&d, &caller, (q.from, q.to), q.unit).await?,
    ))
}

/// Refunds (reverses) part of a unit's charges; audited like every change.
#[utoipa::path(
    post,
    path = "/v1/chargeback/refunds",
    tag = "accounts",
    operation_id = "refund",
    request_body = RefundRequest,
    responses(
        (status = 201, description = "The refund and its audit entry", body = Refund),
        (status = 400, description = "malformed JSON, an unknown field, a zero amount, or a reason over 512 bytes", body = ErrorBody),
        (status = 404, description = "no unit the caller may see has that name (`not_found`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn refund(
    State(d): D,
    caller: Auth,
    ApiJson(req): ApiJson<RefundRequest>,
) -> ApiResult<(StatusCode, Json<Refund>)> {
    Ok((
        StatusCode::CREATED,
        Json(accounts::refund(&d, &caller, req).await?),
    ))
}
