//! The error body every failed request gets: a stable code and a message
//! that says what to do.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a field is invalid (400).
    BadRequest,
    /// No or a wrong bearer token (401).
    Unauthorized,
    /// The caller's role may see the object but not do this (403).
    Forbidden,
    /// No such partition or route (404).
    NotFound,
    /// The name is taken, or another operation is in progress (409).
    Conflict,
    /// The operation is not allowed in the partition's stage or run state (409).
    InvalidTransition,
    /// The host has not enough free capacity (409).
    CapacityExceeded,
    /// The body is too large (413).
    PayloadTooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// The VM engine failed: QEMU would not start, the agent did not answer (502).
    EngineFailed,
    /// The daemon is starting or shutting down (503).
    Unavailable,
    /// A bug in broodd (500); the log has details.
    Internal,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people.
    pub message: String,
}
