//! The REST API: the router, its OpenAPI document (derived from the
//! handlers by utoipa), bearer-token authentication, body limits, and the
//! rule that every error, whoever produced it, leaves as JSON with a code.

mod accounts;
mod action;
mod attach;
pub mod auth;
mod boot_disk;
mod change;
mod cluster;
mod doc;
pub mod error;
mod extract;
mod images;
pub mod jobs;
mod ledger;
mod network;
mod partitions;
pub mod render;
mod service_pools;
mod snapshots;
mod stream;
mod templates;
mod units;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use brood_api::{ErrorBody, ErrorCode};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use self::error::ApiError;
use crate::host::Host;

#[derive(OpenApi)]
#[openapi(
    info(title = "broodd", description = "brood's host daemon: partitions, the resource ledger, VMs."),
    modifiers(&Bearer),
    components(schemas(brood_api::Event, brood_api::EventKind)),
    tags(
        (name = "partitions", description = "Partitions and their VMs"),
        (name = "ledger", description = "The resource ledger and its audit log"),
        (name = "host", description = "The host and its event stream"),
        (name = "templates", description = "Templates, forks and identity pools"),
        (name = "networks", description = "Networks and the I/O partitions that serve them"),
        (name = "services", description = "Pools of service domains and the services they become"),
        (name = "images", description = "Guest images of the data directory, and image builds (jobs)"),
        (name = "units", description = "Business units, their allocations and requests, the infrastructure"),
        (name = "accounts", description = "Users, tokens, prices and chargeback"),
        (name = "cluster", description = "The cluster's catalog: hosts, zones, domains, placements"),
        (name = "jobs", description = "Jobs (every unit action, queued and run) and workflows"),
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
pub fn openapi_router() -> (Router<Arc<Host>>, utoipa::openapi::OpenApi) {
    let r = OpenApiRouter::with_openapi(ApiDoc::openapi());
    let r = partitions::routes(r);
    let r = ledger::routes(r);
    let r = templates::routes(r);
    let r = snapshots::routes(r);
    let r = change::routes(r);
    let r = network::routes(r);
    let r = images::routes(r);
    let r = attach::routes(r);
    let r = boot_disk::routes(r);
    let r = service_pools::routes(r);
    let r = units::routes(r);
    let r = accounts::routes(r);
    let r = cluster::routes(r);
    let r = jobs::routes(r);
    let r = action::routes(r);
    let (routes, mut doc) = r.split_for_parts();
    doc::OptionalBodies.modify(&mut doc);
    doc::ServedDocument.modify(&mut doc);
    (routes, doc)
}

/// The whole application: the API, and the web portal at `/ui/` beside it.
pub fn router(d: Arc<Host>) -> Router {
    crate::portal::mount(api_router(d.clone()), d)
}

/// The API alone (the portal calls it in process).
fn api_router(d: Arc<Host>) -> Router {
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
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such route: the API is under /v1 (see /v1/openapi.json)",
            )
        })
        .layer(middleware::from_fn_with_state(
            d.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(brood_api::MAX_BODY_BYTES))
        .with_state(d)
}

/// `GET /metrics`: Prometheus text (README, "Metrics").
async fn metrics(State(d): State<Arc<Host>>, caller: auth::Auth) -> Result<Response, ApiError> {
    auth::require(
        &caller,
        crate::tenancy::Action::Read,
        crate::tenancy::Kind::Ledger,
    )?;
    let text = crate::metrics::scrape(&d).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme
/// is case-insensitive (RFC 9110 section 11.1) and spaces may follow it.
pub(crate) fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
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

    /// The checked-in `openapi/brood.json`, the contract clients are generated from.
    fn checked_in_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/brood.json")
    }

    /// The document as broodd serves it at `/v1/openapi.json`.
    fn document() -> serde_json::Value {
        let (_, doc) = openapi_router();
        serde_json::to_value(&doc).unwrap()
    }

    /// The document is derived from the handlers; the checked-in copy must
    /// be exactly what they derive, so an API change shows up in review and
    /// clients built from the file match the daemon.
    #[test]
    fn checked_in_openapi_document_is_current() {
        let (_, doc) = openapi_router();
        let mut text = doc.to_pretty_json().unwrap();
        text.push('\n');
        let path = checked_in_path();
        if std::env::var_os("BROOD_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &text).unwrap();
            eprintln!("wrote {}", path.display());
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            let first = on_disk
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| on_disk.lines().count().min(text.lines().count()));
            panic!(
                "openapi/brood.json differs from the document the handlers derive (first at line \
                 {}): update it with `BROOD_UPDATE_OPENAPI=1 cargo test -p broodd --lib \
                 checked_in_openapi_document_is_current`, review the diff and commit it",
                first + 1
            );
        }
    }

    fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// What the middleware and extractors answer is declared on every
    /// route it applies to, every response has a description, and
    /// operation ids are unique (they name the functions of generated clients).
    #[test]
    fn every_route_declares_its_real_status_codes() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            let responses = op["responses"].as_object().unwrap();
            for (code, r) in responses {
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {code} has no description"
                );
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {code} is not an ErrorBody"
                    );
                }
            }
            let has = |c: &str| responses.contains_key(c);
            assert!(has("401"), "{method} {path}: 401");
            // Only the document itself touches nothing that can fail.
            assert!(
                has("500") || path == "/v1/openapi.json",
                "{method} {path}: 500"
            );
            if op.get("requestBody").is_some() {
                for c in ["400", "413", "415"] {
                    assert!(
                        has(c),
                        "{method} {path} takes a body but does not declare {c}"
                    );
                }
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    p["in"] == "path",
                    in_path,
                    "{method} {path}: parameter {name} is in the wrong place"
                );
            }
            if params.iter().any(|p| p["in"] == "query") || path.contains('{') {
                assert!(has("400"), "{method} {path} has parameters but no 400");
            }
            if path.contains('{') {
                assert!(has("404"), "{method} {path} names an object but has no 404");
            }
        }
        assert!(ids.len() >= 30, "only {} operations", ids.len());
    }

    /// The bounds the handlers enforce are the ones the document declares.
    #[test]
    fn declared_bounds_match_the_enforced_ones() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        let max_page = brood_api::MAX_PAGE as u64;
        for path in ["/v1/partitions", "/v1/ledger/log"] {
            let limit = param(path, "limit");
            assert_eq!(
                (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
                (Some(1), Some(max_page)),
                "{path}"
            );
        }
        let count = &schemas["ForkRequest"]["properties"]["count"];
        assert_eq!(count["minimum"], 1);
        assert_eq!(count["maximum"], crate::fork::MAX_FORK);
        let warm = &schemas["TemplateCreateRequest"]["properties"]["warm"];
        assert_eq!(warm["maximum"], crate::template::MAX_WARM);
        let vcpus = &schemas["PartitionConfig"]["properties"]["vcpus"];
        assert_eq!(vcpus["maximum"], brood_engine::spec::MAX_VCPUS);
        let mem = &schemas["PartitionConfig"]["properties"]["memory_mib"];
        assert_eq!(mem["minimum"], brood_engine::spec::MIN_MEM_MIB);
        let changes = &schemas["AuditEntry"]["properties"]["changes"];
        assert_eq!(changes["type"], "array");
        // The name rule: what the document's pattern and length accept is
        // what broodd accepts.
        let name = &schemas["DefineRequest"]["properties"]["name"];
        assert_eq!(name["maxLength"], 64);
        assert_eq!(name["pattern"], "^[a-z0-9][a-z0-9_.-]*$");
        for (n, ok) in [
            ("web", true),
            ("0a.b-c_d", true),
            ("Web", false),
            ("-a", false),
            ("", false),
        ] {
            assert_eq!(crate::convert::valid_name(n), ok, "{n:?}");
        }
        assert!(crate::convert::valid_name(&"a".repeat(64)));
        assert!(!crate::convert::valid_name(&"a".repeat(65)));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"BEARER  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Bearer"), None);
        assert_eq!(bearer_credentials(b"Bearer "), None);
        assert_eq!(bearer_credentials(b"Bearerabc"), None);
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b""), None);
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
