//! The resource ledger on the wire: who holds what, the audit log, and the
//! result of `verify`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Amounts of each resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs (capacity counts the overcommit ratio).
    pub vcpus: u64,
    /// Disk space in GiB.
    pub disk_gib: u64,
    /// Network interfaces.
    pub nics: u64,
}

/// What one owner holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OwnerHoldings {
    /// `available`, or a partition's name.
    pub owner: String,
    /// The partition's uuid; absent for `available`.
    pub uuid: Option<uuid::Uuid>,
    /// What it holds.
    pub holds: Resources,
}

/// The whole ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    /// The host's capacity.
    pub capacity: Resources,
    /// Every owner's holdings, `available` first.
    pub owners: Vec<OwnerHoldings>,
}

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Transaction id, increasing.
    pub id: u64,
    /// Commit time (RFC 3339).
    pub time: String,
    /// Who asked for it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What it changed, in order: one object per operation, with `op` (what
    /// it did) and the before- and after-images it checked and wrote.
    #[schema(value_type = Vec<Object>)]
    pub changes: serde_json::Value,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// Entries.
    pub items: Vec<AuditEntry>,
    /// Pass as `before` to get the next (older) page.
    pub next: Option<u64>,
}

/// An invariant that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable code, e.g. `sum_mismatch`, `orphan_qemu`.
    pub code: String,
    /// What is wrong.
    pub message: String,
}

/// Result of `GET /v1/ledger/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// Whether every invariant holds.
    pub ok: bool,
    /// The invariants that do not.
    pub problems: Vec<Problem>,
    /// How many invariants were checked, by kind.
    pub checked: BTreeMap<String, u64>,
}
