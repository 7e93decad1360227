//! brood's VM engine: the narrow interface everything above it uses to run
//! VMs, and its QEMU backend.
//!
//! The [`Engine`] trait creates VMs ([`Engine::boot`], [`Engine::restore`]);
//! the [`Vm`] handle it returns runs the operations on a live VM and owns
//! every host resource the VM uses, releasing them when dropped. A VM is
//! described by a [`VmSpec`]; the QEMU command line is derived from it by a
//! pure function (`qemu::argv`). The engine never touches the ledger: what a
//! VM is allowed to use is decided above it, in broodd.

#![warn(missing_docs)]

pub mod agent;
pub mod cgroup;
pub mod console;
mod error;
pub mod host;
pub mod net;
pub mod qemu;
pub mod spec;
mod vm;

use std::path::Path;

use async_trait::async_trait;

pub use agent::{AgentClient, ExecOutput};
pub use cgroup::Limits;
pub use error::EngineError;
pub use host::Accel;
pub use qemu::{QemuConfig, QemuEngine};
pub use spec::{AccelChoice, DiskFormat, DiskSpec, MacAddr, Machine, NicBackend, NicSpec, VmSpec};
pub use vm::{ExitKind, Vm, VmExit, VmStatus};

/// What an engine can do on this host, checked when work is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineCaps {
    /// Hardware virtualization is usable.
    pub kvm: bool,
    /// Full VM state can be saved to a file and restored.
    pub save_restore: bool,
}

/// Creates VMs. Operations on a live VM are methods of [`Vm`].
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// What this engine supports here.
    fn caps(&self) -> EngineCaps;

    /// Boots a VM from its spec.
    async fn boot(&self, spec: &VmSpec) -> Result<Vm, EngineError>;

    /// Starts a VM from a state file written by [`Vm::save`]; `spec` must
    /// describe the same devices.
    async fn restore(&self, _spec: &VmSpec, _state: &Path) -> Result<Vm, EngineError> {
        Err(EngineError::Unsupported { op: "restore" })
    }
}
