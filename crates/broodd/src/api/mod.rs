//! The REST API: the router, its OpenAPI document (derived from the
//! handlers by utoipa), bearer-token authentication, body limits, and the
//! rule that every error, whoever produced it, leaves as JSON with a code.

mod extract;
mod ledger;
mod partitions;
mod stream;
mod templates;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use brood_api::{ErrorBody, ErrorCode};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::daemon::Daemon;
use crate::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "broodd", description = "brood's host daemon: partitions, the resource ledger, VMs."),
    modifiers(&Bearer),
    tags(
        (name = "partitions", description = "Partitions and their VMs"),
        (name = "ledger", description = "The resource ledger and its audit log"),
        (name = "host", description = "The host and its event stream"),
        (name = "templates", description = "Templates, forks and identity pools"),
    )
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The OpenAPI document and the routes it describes.
pub fn openapi_router() -> (Router<Arc<Daemon>>, utoipa::openapi::OpenApi) {
    let r = OpenApiRouter::with_openapi(ApiDoc::openapi());
    let r = partitions::routes(r);
    let r = ledger::routes(r);
    let r = templates::routes(r);
    r.split_for_parts()
}

/// The whole application.
pub fn router(d: Arc<Daemon>) -> Router {
    let (routes, doc) = openapi_router();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such route: the API is under /v1 (see /v1/openapi.json)",
            )
        })
        .layer(middleware::from_fn_with_state(d.clone(), authenticate))
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(brood_api::MAX_BODY_BYTES))
        .with_state(d)
}

/// Refuses requests without the daemon's bearer token.
async fn authenticate(State(d): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), d.token.as_bytes()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token \
             from broodd's data directory (brood finds it by itself)",
        )
        .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns error responses that are not JSON (axum's own rejections: a bad
/// path, a wrong method, a body over the limit) into `ErrorBody`.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let body = ErrorBody {
        error: brood_api::ErrorDetail { code, message },
    };
    let mut out = Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    );
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.headers_mut().remove(header::CONTENT_LENGTH);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document is derived from the handlers; this pins it, so a
    /// change to the API shows up in review (`cargo insta review` updates it).
    #[test]
    fn openapi_document_is_stable() {
        let (_, doc) = openapi_router();
        insta::assert_snapshot!(doc.to_pretty_json().unwrap());
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
