//! `ApiError`: the one error type of broodd's request path. Each carries an
//! HTTP status, a stable code and a message that says what to do; the full
//! cause chain goes to the log, not to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use brood_api::{ErrorBody, ErrorCode, ErrorDetail};
use brood_engine::EngineError;
use brood_ledger::LedgerError;
use tracing::{error, warn};

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: ErrorCode,
    /// Message for the client.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 404: no such partition.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no partition named {what:?}: `brood vm list` shows the partitions"),
        )
    }

    /// 409: not allowed in the current state.
    pub fn transition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::InvalidTransition, message)
    }

    /// 409: another operation holds the partition or the name is taken.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    /// 502: the engine failed.
    pub fn engine(what: &str, e: &EngineError) -> Self {
        crate::metrics::engine_error(e);
        warn!("{what}: {}", chain(e));
        Self::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::EngineFailed,
            format!("{what}: {}", chain(e)),
        )
    }

    /// 500: a bug or a broken store; details only in the log.
    pub fn internal(what: &str, e: &dyn std::error::Error) -> Self {
        error!("{what}: {}", chain(e));
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("{what} failed inside broodd; its log has the details"),
        )
    }
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match &e {
            LedgerError::Insufficient { .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::CapacityExceeded,
                format!("{e}: stop or delete other partitions, or ask for less"),
            ),
            LedgerError::NameTaken { .. } => Self::conflict(format!("{e}: pick another name")),
            LedgerError::Transition { .. } => Self::transition(e.to_string()),
            LedgerError::PoolExhausted { .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::CapacityExceeded,
                format!(
                    "{e}: add values to the pool or delete children that hold them; no child was made"
                ),
            ),
            LedgerError::PoolExists { .. }
            | LedgerError::PoolInUse { .. }
            | LedgerError::ValueTaken { .. }
            | LedgerError::HasDescendants { .. }
            | LedgerError::StillHoldsPoolItems { .. } => Self::conflict(e.to_string()),
            LedgerError::NoSuchPool { .. } | LedgerError::NotInPool { .. } => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("{e}: `brood pool list` shows the pools"),
            ),
            LedgerError::InvalidOp { .. } => Self::bad_request(e.to_string()),
            LedgerError::Precondition { .. } => Self::conflict(format!(
                "{e}: the partition changed while this request ran; retry it"
            )),
            _ => Self::internal("the ledger", &e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
