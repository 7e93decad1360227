//! What the ledger records about templates and forked children: a
//! template's fork point and warm-child target, and each child's lineage and
//! identity (index, MACs, machine-id, the identity and IPv4 address it took
//! from their pools). Stored as JSON in the `partition.fork` column, with
//! the same shape broodd wrote before these were typed, so older ledgers
//! read back unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A template's or a child's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lineage {
    /// A template.
    Template(TemplateLineage),
    /// A forked child.
    Child(Box<ChildLineage>),
}

impl Lineage {
    /// The template details, if this is a template.
    pub fn as_template(&self) -> Option<&TemplateLineage> {
        match self {
            Lineage::Template(t) => Some(t),
            Lineage::Child(_) => None,
        }
    }

    /// The child details, if this is a child.
    pub fn as_child(&self) -> Option<&ChildLineage> {
        match self {
            Lineage::Child(c) => Some(c),
            Lineage::Template(_) => None,
        }
    }
}

/// A template's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateLineage {
    /// Its directory (memory file, device state).
    pub dir: PathBuf,
    /// The agent's fork point.
    pub seq: u32,
    /// Warm children kept waiting (`pool_size` in ledgers written before
    /// the rename).
    #[serde(alias = "pool_size")]
    pub warm: u32,
    /// The index the next child gets.
    pub next_index: u32,
    /// Size of the device state.
    pub state_bytes: u64,
    /// When it became a template (RFC 3339); empty in older ledgers.
    #[serde(default)]
    pub created_at: String,
}

/// How far a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// Recorded; its VM is being started or its identity applied.
    Pending,
    /// Identity applied, identity-dependent services done.
    Ready,
    /// Applying its identity or a service failed; `error` says which.
    Failed,
}

/// A child's identity and lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildLineage {
    /// Its number among the template's children.
    pub index: u32,
    /// How far it is.
    pub status: ChildStatus,
    /// What failed.
    pub error: Option<String>,
    /// Its MACs, one per NIC, `aa:bb:cc:dd:ee:ff`.
    pub macs: Vec<String>,
    /// IPv4 address/prefix, from `ip_pool`.
    pub ipv4: Option<String>,
    /// Gateway of `ip_pool`.
    pub gateway: Option<String>,
    /// Domain identity, from `identity_pool`.
    pub identity: Option<String>,
    /// The pool its identity came from.
    pub identity_pool: Option<String>,
    /// The pool its address came from.
    pub ip_pool: Option<String>,
    /// Key-values for its services.
    pub values: BTreeMap<String, String>,
    /// Its overlay survives stop and start.
    pub persistent: bool,
    /// Its machine-id (32 hex digits).
    pub machine_id: String,
    /// Request to running, ms.
    pub running_ms: Option<f64>,
    /// Request to ready, ms.
    pub ready_ms: Option<f64>,
}

/// What operation broodd began on a partition and must finish or undo
/// after a crash (`partition.pending_op`, stored by [`PendingOp::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingOp {
    /// Disks are being created.
    Provision,
    /// Defined with `start`: removed again unless the start completes.
    Create,
    /// Being deleted.
    Delete,
    /// Being powered off.
    Stop,
    /// Being killed.
    Kill,
    /// Its state is being saved.
    Save,
    /// Being restored from its saved state.
    Restore,
    /// A child being forked: its identity is not applied yet.
    Fork,
    /// Being frozen into a template.
    Template,
}

impl PendingOp {
    /// Every operation.
    pub const ALL: [PendingOp; 9] = [
        PendingOp::Provision,
        PendingOp::Create,
        PendingOp::Delete,
        PendingOp::Stop,
        PendingOp::Kill,
        PendingOp::Save,
        PendingOp::Restore,
        PendingOp::Fork,
        PendingOp::Template,
    ];

    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingOp::Provision => "provision",
            PendingOp::Create => "create",
            PendingOp::Delete => "delete",
            PendingOp::Stop => "stop",
            PendingOp::Kill => "kill",
            PendingOp::Save => "save",
            PendingOp::Restore => "restore",
            PendingOp::Fork => "fork",
            PendingOp::Template => "template",
        }
    }
}

impl std::fmt::Display for PendingOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PendingOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PendingOp::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown pending operation {s:?}"))
    }
}

/// A value a commit took from a pool for a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The pool.
    pub pool: String,
    /// The partition that holds it now.
    pub holder: uuid::Uuid,
    /// The value.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_ops_round_trip_by_name() {
        for p in PendingOp::ALL {
            assert_eq!(p.as_str().parse::<PendingOp>(), Ok(p));
        }
        assert!("nonsense".parse::<PendingOp>().is_err());
    }

    #[test]
    fn older_template_records_read_back() {
        let old = serde_json::json!({"kind": "template", "dir": "/t", "seq": 3,
            "pool_size": 2, "next_index": 5, "state_bytes": 70000});
        let l: Lineage = serde_json::from_value(old).expect("old template record");
        let t = l.as_template().expect("a template");
        assert_eq!((t.warm, t.next_index, t.created_at.as_str()), (2, 5, ""));
    }
}
