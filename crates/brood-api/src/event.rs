//! Server-sent events of `GET /v1/events`: one JSON object per event.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::partition::{RunState, Stage};

/// A state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing sequence number (per daemon run).
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A partition was defined or changed stage or run state.
    Partition {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: Uuid,
        /// Its stage now.
        stage: Stage,
        /// Its run state now.
        run_state: RunState,
        /// How its QEMU ended, for a crash or exit.
        detail: Option<String>,
    },
    /// A partition was deleted.
    PartitionDeleted {
        /// Its name.
        name: String,
        /// Its uuid.
        uuid: Uuid,
    },
    /// A job changed state (`GET /v1/jobs/{id}` has the rest).
    Job {
        /// Its number.
        id: u64,
        /// What it does.
        kind: String,
        /// What it acts on.
        target: String,
        /// Its state now.
        state: crate::job::JobState,
        /// The unit it acts for.
        #[serde(default)]
        unit: Option<Uuid>,
    },
    /// A ledger transaction committed (one event per transaction; the
    /// audit log, `GET /v1/ledger/log`, has its changes).
    Ledger {
        /// The transaction id.
        tx: u64,
        /// Its reason.
        reason: String,
        /// Who made it (`api`, `memory`, `reconcile`, ...).
        #[serde(default)]
        actor: String,
    },
}
