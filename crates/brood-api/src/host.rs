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
    /// Where jobs and workflows are stored: `sqlite` (this host's ledger)
    /// or `postgresql` (the cluster catalog, with `broodd --catalog`).
    pub job_store: String,
    /// What the engine supports on this host.
    pub engine: EngineInfo,
}

/// What the VM engine supports on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EngineInfo {
    /// The engine (`qemu`).
    pub name: String,
    /// Accelerator VMs get by default: `kvm` or `tcg`.
    pub accel: String,
    /// Hardware virtualization is usable here.
    pub kvm: bool,
    /// VM state can be saved and restored.
    pub save_restore: bool,
    /// Running VMs can become templates and be forked.
    pub fork: bool,
    /// A forked child can become a template in turn.
    pub rehost: bool,
    /// VMs survive a restart of broodd, which takes them over again.
    pub attach: bool,
    /// Most vCPUs one VM may have.
    pub max_vcpus: u32,
}
