//! The host as broodd describes it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ledger::Resources;

/// Body of `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// The host's name.
    pub hostname: String,
    /// broodd's version.
    pub version: String,
    /// Accelerator VMs get by default: `kvm` or `tcg`.
    pub accel: String,
    /// Total capacity in the ledger.
    pub capacity: Resources,
    /// Held by partitions.
    pub used: Resources,
    /// Held by `available`.
    pub available: Resources,
    /// vCPUs of capacity per host CPU.
    pub vcpu_overcommit: f64,
    /// Number of partitions.
    pub partitions: u64,
    /// Number of running or paused partitions.
    pub active: u64,
    /// broodd's data directory.
    pub data_dir: String,
    /// Where VM run directories (memory files, sockets) live.
    pub run_dir: String,
}
