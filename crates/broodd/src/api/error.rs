//! `ApiError`: the error of broodd's HTTP edge. Each carries an HTTP status,
//! a stable code and a message that says what to do. A `HostError` from the
//! core or a feature becomes one here, and is logged here, once: failures
//! of broodd itself (500) with their whole cause chain, engine failures
//! (502) as warnings; refusals are the client's business and not logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use brood_api::{ErrorBody, ErrorCode, ErrorDetail};
use brood_ledger::LedgerError;
use tracing::{error, warn};

use crate::host::{HostError, chain};

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

    /// 502: the engine failed while a handler used it directly.
    pub fn engine(what: &str, e: &brood_engine::EngineError) -> Self {
        crate::metrics::engine_error(e);
        let message = format!("{what}: {}", chain(e));
        warn!("{message}");
        Self::new(StatusCode::BAD_GATEWAY, ErrorCode::EngineFailed, message)
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

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Invalid(m) => Self::bad_request(m),
            HostError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, m),
            HostError::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m),
            HostError::Transition(m) => Self::transition(m),
            HostError::Conflict(m) => Self::conflict(m),
            HostError::Guest(m) => {
                warn!("{m}");
                Self::new(StatusCode::BAD_GATEWAY, ErrorCode::EngineFailed, m)
            }
            e @ HostError::Engine { .. } => {
                if let HostError::Engine { source, .. } = &e {
                    crate::metrics::engine_error(source);
                }
                let message = chain(&e);
                warn!("{message}");
                Self::new(StatusCode::BAD_GATEWAY, ErrorCode::EngineFailed, message)
            }
            HostError::Ledger(l) => l.into(),
            e @ (HostError::Io { .. } | HostError::Corrupt { .. }) => {
                let what = e.to_string();
                Self::internal(&what, &e)
            }
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match &e {
            LedgerError::Insufficient {
                owner: brood_ledger::Owner::Unit(_),
                kind,
                have,
                want,
                ..
            } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::CapacityExceeded,
                format!(
                    "the unit's allocation has {have} {kind} free, {want} wanted: stop or delete \
                     other VMs of the unit, or ask for more (`brood unit request UNIT --vcpus N \
                     --memory MIB --disk GIB`); `brood unit show UNIT` shows its use"
                ),
            ),
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
                format!("{e}: `brood identity-pool list` shows the identity pools"),
            ),
            LedgerError::InvalidOp { .. } => Self::bad_request(e.to_string()),
            LedgerError::NetworkConflict { .. } | LedgerError::Job { .. } => {
                Self::conflict(e.to_string())
            }
            LedgerError::StoreUnavailable { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                format!(
                    "{e}; this broodd keeps its jobs in the cluster catalog (--catalog): retry \
                     when PostgreSQL answers again"
                ),
            ),
            LedgerError::NoSuchNetwork { .. } => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
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
