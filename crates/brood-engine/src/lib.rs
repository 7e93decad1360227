//! brood's VM engine: the narrow interface everything above it uses to run
//! VMs, and its QEMU backend.
//!
//! The [`Engine`] trait creates VMs ([`Engine::boot`], [`Engine::restore`],
//! [`Engine::fork`]...); the [`VmHandle`] it returns runs the operations on
//! a live VM. The QEMU backend's handle, [`Vm`], owns every host resource
//! the VM uses and releases them when dropped. A VM is
//! described by a [`VmSpec`]; the QEMU command line is derived from it by a
//! pure function (`qemu::argv`). The engine never touches the ledger: what a
//! VM is allowed to use is decided above it, in broodd.

#![warn(missing_docs)]

pub mod agent;
pub mod cgroup;
pub mod console;
mod error;
mod handle;
pub mod host;
pub mod net;
pub mod qemu;
mod random;
pub mod spec;
pub mod storage;
pub mod switch;
pub mod template;
mod vm;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

pub use agent::{AgentClient, ExecOutput};
pub use cgroup::Limits;
pub use error::EngineError;
pub use handle::{BoxedVm, VmHandle};
pub use host::Accel;
pub use qemu::keep::{KeepDisk, KeepPlan, Kept};
pub use qemu::snapshot::DiskSnapshotOp;
pub use qemu::{QemuConfig, QemuEngine};
pub use spec::{
    AccelChoice, DiskFormat, DiskSpec, MacAddr, Machine, NbdExport, NicBackend, NicSpec, Throttle,
    VmSpec, switch_socket,
};
pub use template::Template;
pub use vm::{ExitKind, Vm, VmExit, VmStatus};

/// The accelerator family VMs get when their spec leaves it to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    /// Hardware virtualization (KVM).
    Kvm,
    /// Software emulation (QEMU's TCG).
    Tcg,
}

impl AccelKind {
    /// "kvm" or "tcg".
    pub fn name(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }
}

/// What an engine can do on this host, checked when work is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCaps {
    /// The engine's name ("qemu").
    pub engine: &'static str,
    /// The accelerator VMs run with by default here.
    pub accel: AccelKind,
    /// Hardware virtualization is usable (vmx/svm and /dev/kvm).
    pub kvm: bool,
    /// Full VM state can be saved to a file and restored.
    pub save_restore: bool,
    /// Running VMs can be frozen into templates and forked.
    pub fork: bool,
    /// A forked child can be moved into memory of its own (to become a template).
    pub rehost: bool,
    /// VMs started by an earlier process can be taken over.
    pub attach: bool,
    /// Most vCPUs one VM may have.
    pub max_vcpus: u32,
}

/// A VM process of this engine found running on the host, by what it is
/// (not by a pid anyone recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVm {
    /// The VM's name (its spec's `name`).
    pub name: String,
    /// Its process id.
    pub pid: i32,
}

/// Runs VMs: creates them, and does what needs the engine on top of a live
/// one (templates, forks, re-hosting). Operations on one live VM are on the
/// [`VmHandle`] it returns. Defaults answer `Unsupported`.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// What this engine supports here.
    fn caps(&self) -> EngineCaps;

    /// Where the per-VM run directories live.
    fn run_root(&self) -> PathBuf;

    /// Boots a VM from its spec.
    async fn boot(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError>;

    /// Starts a VM from a state file written by [`VmHandle::save`]; `spec`
    /// must describe the same devices.
    async fn restore(&self, _spec: &VmSpec, _state: &Path) -> Result<BoxedVm, EngineError> {
        Err(EngineError::Unsupported { op: "restore" })
    }

    /// Takes charge of a VM started with `spec` by an earlier process.
    async fn attach(&self, _spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Err(EngineError::Unsupported { op: "attach" })
    }

    /// The VMs of this engine running on the host now.
    fn find_vms(&self) -> Vec<FoundVm> {
        Vec::new()
    }

    /// Kills a VM process [`Engine::find_vms`] found (one nobody owns) and
    /// waits until `find_vms` no longer finds it.
    fn kill_found(&self, _vm: &FoundVm) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "kill a found VM",
        })
    }

    /// Removes the run directories of VMs `keep` does not name.
    fn remove_run_dirs(&self, _keep: &(dyn Fn(&str) -> bool + Sync)) {}

    /// Removes the resource groups of the VMs `owned` names that no
    /// process is in any more (left by VMs that ended unwatched).
    fn remove_idle_groups(&self, _owned: &(dyn Fn(&str) -> bool + Sync)) {}

    /// Turns `vm`, whose agent waits at its fork point, into a template in
    /// `dir`; the VM ends.
    async fn save_template(
        &self,
        _vm: &dyn VmHandle,
        _dir: &Path,
    ) -> Result<Template, EngineError> {
        Err(EngineError::Unsupported {
            op: "save a template",
        })
    }

    /// Makes a template in `dir` of `vm`, whose agent waits at its fork
    /// point, while the VM goes on running: its writable disks switch to
    /// the overlays of `plan`, the template keeps the frozen images and a
    /// copy of the memory. Returns the template and the VM's downtime.
    async fn save_template_keep(
        &self,
        _vm: &dyn VmHandle,
        _dir: &Path,
        _plan: &KeepPlan,
    ) -> Result<Kept, EngineError> {
        Err(EngineError::Unsupported {
            op: "make a template of a VM that keeps running",
        })
    }

    /// Snapshots, applies or deletes snapshot `name` of a disk no VM has
    /// open (a stopped partition's).
    async fn disk_snapshot(
        &self,
        _disk: &DiskSpec,
        _op: DiskSnapshotOp,
        _name: &str,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "snapshot a disk",
        })
    }

    /// The names of the snapshots a disk holds.
    async fn disk_snapshot_names(&self, _disk: &DiskSpec) -> Result<Vec<String>, EngineError> {
        Err(EngineError::Unsupported {
            op: "list a disk's snapshots",
        })
    }

    /// Reads a template back from its directory.
    fn load_template(&self, dir: &Path) -> Result<Template, EngineError> {
        Template::load(dir)
    }

    /// Starts a child of `tpl` with `spec` (from [`Template::child_spec`]):
    /// the guest resumes inside its agent's fork-point wait, with its NICs
    /// off the network until [`Engine::join_networks`].
    async fn fork(&self, _tpl: &Template, _spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Err(EngineError::Unsupported { op: "fork" })
    }

    /// Connects a forked child's NICs to their networks.
    fn join_networks(&self, _vm: &dyn VmHandle) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "join networks",
        })
    }

    /// Moves a forked child into a VM whose memory is its own, returned
    /// paused; the old one ends.
    async fn rehost(&self, _vm: &dyn VmHandle, _spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Err(EngineError::Unsupported { op: "re-host" })
    }

    /// Starts a VM for `spec` that waits for a live migration stream, its
    /// memory and vCPUs taken now; it runs only once [`Engine::migrate_in`]
    /// loaded the stream and the caller resumes it. Killed on drop.
    async fn prepare_incoming(&self, _spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Err(EngineError::Unsupported {
            op: "receive a live migration",
        })
    }

    /// Feeds the source's `stream` to a VM from [`Engine::prepare_incoming`]
    /// and waits until the whole state arrived; the guest stays paused.
    async fn migrate_in(
        &self,
        _vm: &dyn VmHandle,
        _stream: std::net::TcpStream,
        _timeout: std::time::Duration,
    ) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "receive a live migration",
        })
    }

    /// Live-migrates `vm` to the target listening at `to`. On success the
    /// source is paused for the caller to end; on a failure the stream did
    /// not complete and it runs on (or, when QEMU reported the stream
    /// complete, it is left paused for the caller to decide).
    async fn migrate_out(
        &self,
        _vm: &dyn VmHandle,
        _to: std::net::SocketAddr,
        _timeout: std::time::Duration,
    ) -> Result<qemu::migrate::MigrationStats, EngineError> {
        Err(EngineError::Unsupported { op: "live-migrate" })
    }
}
