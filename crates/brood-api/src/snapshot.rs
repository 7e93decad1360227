//! Named snapshots of a partition: `/v1/partitions/{name}/snapshots`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One snapshot of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Its name, unique within the partition.
    pub name: String,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// Whether it holds the VM's memory and device state (taken while the
    /// VM ran or was paused; a revert starts the VM from it) or only the
    /// disks (taken while it was stopped).
    pub memory: bool,
    /// The run state the partition was in when it was taken.
    pub taken_while: String,
    /// The disk files it covers.
    pub disks: Vec<String>,
}

/// `GET /v1/partitions/{name}/snapshots`: oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// The snapshots.
    pub items: Vec<Snapshot>,
}

/// Body of `POST /v1/partitions/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateRequest {
    /// The new snapshot's name: 1 to 64 letters, digits, `-`, `_` or `.`,
    /// not starting with `.` or `-`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
    )]
    pub name: String,
}
