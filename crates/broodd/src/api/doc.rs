//! Responses the OpenAPI document declares on many routes: what the
//! middleware and the extractors answer before a handler runs. Each route's
//! own responses are declared on its handler.

// These types only describe responses; nothing constructs them.
#![allow(dead_code)]

use brood_api::ErrorBody;
use utoipa::IntoResponses;
use utoipa::openapi::{RefOr, Required};

/// What every route under `/v1` can answer besides its own responses.
#[derive(IntoResponses)]
pub enum Common {
    /// No or a wrong, revoked or expired bearer token (`unauthorized`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The caller's role may not do this (`forbidden`); an object the
    /// caller may not see answers 404 instead, as if it did not exist.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// A bug in broodd or a broken ledger (`internal`); broodd's log has the details.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// What a route that reads or writes only the job store (jobs, workflow
/// definitions) can answer besides [`Common`]: on a cluster member they
/// live in the catalog (PostgreSQL), which may not answer.
#[derive(IntoResponses)]
pub enum JobStoreDown {
    /// broodd runs with `--catalog` and the catalog did not answer within
    /// `--catalog-retry` (`unavailable`); retry when PostgreSQL is back.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What a route that takes a JSON body can answer about the body itself
/// (a malformed body or field is a 400, declared on each route).
#[derive(IntoResponses)]
pub enum JsonBody {
    /// The body is over 1 MiB (`payload_too_large`).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// Operations whose JSON body may be left out (`OptionalJson`): utoipa marks
/// every body required, so this clears the flag on them. It runs on the
/// whole document, once the routes have added their paths.
pub struct OptionalBodies;

/// The operation ids of routes that take an `OptionalJson` body.
const OPTIONAL_BODIES: &[&str] = &["stop_partition", "approve_request", "reject_request"];

impl utoipa::Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.post, &mut item.put];
            for op in ops.into_iter().flatten() {
                let optional = op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| OPTIONAL_BODIES.contains(&id));
                if let (true, Some(RefOr::T(body))) = (optional, op.request_body.as_mut()) {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

/// Adds `GET /v1/openapi.json`, which `router` serves outside utoipa's
/// routes: the document itself, behind the same token.
pub struct ServedDocument;

impl utoipa::Modify for ServedDocument {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{Content, Ref, ResponseBuilder, ResponsesBuilder};
        let json = |schema: RefOr<utoipa::openapi::Schema>| Content::new(Some(schema));
        let document = ResponseBuilder::new()
            .description("This OpenAPI document")
            .content(
                "application/json",
                json(ObjectBuilder::new().schema_type(Type::Object).into()),
            );
        let unauthorized = ResponseBuilder::new()
            .description("No or a wrong bearer token (`unauthorized`).")
            .content(
                "application/json",
                json(Ref::from_schema_name("ErrorBody").into()),
            );
        let op = OperationBuilder::new()
            .tag("host")
            .summary(Some("The OpenAPI document of this API (this document)."))
            .operation_id(Some("openapi_document"))
            .responses(
                ResponsesBuilder::new()
                    .response("200", document)
                    .response("401", unauthorized)
                    .build(),
            );
        openapi
            .paths
            .add_path_operation("/v1/openapi.json", vec![HttpMethod::Get], op);
    }
}
