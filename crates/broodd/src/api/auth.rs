//! Authentication and the `Caller` extractor: the bearer token is the data
//! directory's (the bootstrap administrator) or a user's token from the
//! ledger (hashed, compared in constant time, refused when revoked or
//! expired); the `brood-unit` header picks the unit an administrator acts
//! inside. The middleware puts the [`Caller`] into the request; handlers
//! take it as an argument and reach objects only through its lookups
//! (`tenancy::lookup`).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use brood_api::ErrorCode;

use super::error::ApiError;
use crate::host::Host;
use crate::tenancy::caller::Refusal;
use crate::tenancy::{Action, Caller, Kind};

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        format!(
            "{why}: send `Authorization: Bearer <token>` with the token from broodd's data \
             directory (brood finds it by itself) or one made by `brood token create`"
        ),
    )
}

/// Who the request is from, or the 401 to answer.
async fn caller_of(
    d: &Host,
    given: &[u8],
    unit: Option<Result<String, ()>>,
) -> Result<Caller, ApiError> {
    let caller = if super::constant_time_eq(given, d.token.as_bytes()) {
        Caller::bootstrap()
    } else {
        match Caller::authenticate(d, given).await? {
            Ok(c) => c,
            Err(Refusal::Unknown) => return Err(unauthorized("missing or wrong bearer token")),
            Err(Refusal::Revoked) => {
                return Err(unauthorized("this token was revoked (`brood token list`)"));
            }
            Err(Refusal::Expired) => {
                return Err(unauthorized("this token has expired: make a new one"));
            }
        }
    };
    match unit {
        None => Ok(caller),
        Some(Ok(name)) => Ok(caller.enter(d, &name).await?),
        Some(Err(_)) => Err(ApiError::bad_request(format!(
            "the {} header is not a unit name",
            brood_api::UNIT_HEADER
        ))),
    }
}

/// Refuses requests without a valid token; gives the others their `Caller`.
pub async fn authenticate(State(d): State<Arc<Host>>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| super::bearer_credentials(v.as_bytes()))
        .unwrap_or(b"")
        .to_vec();
    let unit = req
        .headers()
        .get(brood_api::UNIT_HEADER)
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()));
    match caller_of(&d, &given, unit).await {
        Ok(c) => {
            req.extensions_mut().insert(Arc::new(c));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The authenticated caller, as put there by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Auth(pub Arc<Caller>);

impl std::ops::Deref for Auth {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Caller>>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| unauthorized("no caller"))
    }
}

/// 403 unless the caller may take `action` on the host-wide `kind`.
pub fn require(caller: &Caller, action: Action, kind: Kind) -> Result<(), ApiError> {
    caller.check(action, kind).map_err(ApiError::from)
}
