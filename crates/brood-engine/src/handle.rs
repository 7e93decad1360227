//! `VmHandle`: the operations on one live VM, as broodd sees them, whatever
//! engine runs it. The QEMU backend's [`Vm`] implements it by delegating to
//! its own methods; a test engine implements it with a model of a VM. An
//! engine that needs its own handle back (to save a template of it, or to
//! re-host it) downcasts through [`VmHandle::as_any`].

use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use brood_proto::Ready;

use crate::EngineError;
use crate::agent::AgentClient;
use crate::console::Console;
use crate::spec::VmSpec;
use crate::vm::{Vm, VmExit, VmStatus};

/// A live VM, boxed behind the engine boundary.
pub type BoxedVm = Box<dyn VmHandle>;

/// The operations on one live VM.
#[async_trait]
pub trait VmHandle: Send + Sync + std::fmt::Debug + 'static {
    /// The VM's name (broodd uses the partition's uuid).
    fn name(&self) -> &str;
    /// The spec it was started from.
    fn spec(&self) -> &VmSpec;
    /// The VMM process id (also its process group).
    fn pid(&self) -> u32;
    /// How the VM ended, if it has.
    fn exit_status(&self) -> Option<VmExit>;
    /// The guest agent; an error when the VM has no agent channel.
    fn agent(&self) -> Result<&AgentClient, EngineError>;
    /// The file the serial console is logged to during this run (the
    /// newest bytes; an older rotation sits beside it as `.log.1`).
    fn console_log(&self) -> PathBuf;
    /// The live serial console, for following it as it grows (`None` when
    /// the engine keeps only the log file).
    fn console(&self) -> Option<&Console> {
        None
    }
    /// Sends SIGKILL at once, without the VMM's control channel and without
    /// waiting: safe while another call on this VM waits on a hung VMM.
    fn kill_now(&self);
    /// The memory limit the VM runs under (its cgroup's), in MiB.
    fn memory_limit_mib(&self) -> Option<u64> {
        None
    }
    /// Memory the VM uses that is its own (anonymous and shared-memory
    /// pages of its cgroup), in bytes.
    fn memory_private_bytes(&self) -> Option<u64> {
        None
    }
    /// Changes the memory limit of the live VM.
    fn set_memory_limit_mib(&self, _mib: u64) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "change the memory limit of a VM",
        })
    }
    /// Resizes disk `index` of the live VM to `bytes`.
    async fn resize_disk(&self, _index: usize, _bytes: u64) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "resize a disk of a live VM",
        })
    }
    /// Sets the link of NIC `index` of the live VM up or down (the cable
    /// plugged or pulled: the guest sees its carrier change).
    async fn set_link(&self, _index: usize, _up: bool) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "set a NIC's link",
        })
    }
    /// Changes the CPU cap of the live VM (percent of one CPU; `None` lifts it).
    fn set_cpu_cap(&self, _pct: Option<u32>) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "change the CPU cap of a VM",
        })
    }
    /// Whether dropping the handle kills the VM.
    fn set_kill_on_drop(&mut self, kill: bool);
    /// The concrete handle, for the engine that made it.
    fn as_any(&self) -> &dyn Any;
    /// Waits for the VM to end.
    async fn wait_exit(&self) -> VmExit;
    /// Waits for the agent's `Ready`, failing early if the VM ends first.
    async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError>;
    /// Stops the vCPUs.
    async fn pause(&self) -> Result<(), EngineError>;
    /// Continues the vCPUs.
    async fn resume(&self) -> Result<(), EngineError>;
    /// The run state the VMM reports.
    async fn status(&self) -> Result<VmStatus, EngineError>;
    /// Saves the whole VM state to `path`; the VM is left paused.
    async fn save(&self, path: &Path) -> Result<(), EngineError>;
    /// Takes snapshot `name`: the writable disks' internal snapshots and the
    /// whole state into `state`, of one instant; the VM carries on.
    async fn snapshot(&self, _name: &str, _state: &Path) -> Result<(), EngineError> {
        Err(EngineError::Unsupported {
            op: "snapshot a live VM",
        })
    }
    /// Powers the guest off, killing it after `deadline`.
    async fn shutdown(&self, deadline: Duration) -> Result<VmExit, EngineError>;
    /// Kills the VM at once and waits until it is gone.
    async fn kill(&self) -> Result<VmExit, EngineError>;
}

#[async_trait]
impl VmHandle for Vm {
    fn name(&self) -> &str {
        Vm::name(self)
    }
    fn spec(&self) -> &VmSpec {
        Vm::spec(self)
    }
    fn pid(&self) -> u32 {
        Vm::pid(self)
    }
    fn exit_status(&self) -> Option<VmExit> {
        Vm::exit_status(self)
    }
    fn agent(&self) -> Result<&AgentClient, EngineError> {
        Vm::agent(self)
    }
    fn console_log(&self) -> PathBuf {
        self.console().log_path().to_path_buf()
    }
    fn console(&self) -> Option<&Console> {
        Some(Vm::console(self))
    }
    fn kill_now(&self) {
        Vm::kill_now(self);
    }
    fn memory_limit_mib(&self) -> Option<u64> {
        self.cgroup()?.memory_limit_mib()
    }
    fn memory_private_bytes(&self) -> Option<u64> {
        self.cgroup()?.memory_private_bytes()
    }
    fn set_memory_limit_mib(&self, mib: u64) -> Result<(), EngineError> {
        match self.cgroup() {
            Some(cg) => cg.set_memory_limit(mib),
            None => Err(EngineError::InvalidState {
                op: "change the memory limit of",
                state: "not in a memory cgroup".into(),
            }),
        }
    }
    fn set_kill_on_drop(&mut self, kill: bool) {
        Vm::set_kill_on_drop(self, kill);
    }
    async fn resize_disk(&self, index: usize, bytes: u64) -> Result<(), EngineError> {
        Vm::block_resize(self, index, bytes).await
    }
    async fn set_link(&self, index: usize, up: bool) -> Result<(), EngineError> {
        Vm::set_link(self, index, up).await
    }
    fn set_cpu_cap(&self, pct: Option<u32>) -> Result<(), EngineError> {
        Vm::set_cpu_cap(self, pct)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    async fn wait_exit(&self) -> VmExit {
        Vm::wait_exit(self).await
    }
    async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError> {
        Vm::wait_ready(self, timeout).await
    }
    async fn pause(&self) -> Result<(), EngineError> {
        Vm::pause(self).await
    }
    async fn resume(&self) -> Result<(), EngineError> {
        Vm::resume(self).await
    }
    async fn status(&self) -> Result<VmStatus, EngineError> {
        Vm::status(self).await
    }
    async fn save(&self, path: &Path) -> Result<(), EngineError> {
        Vm::save(self, path).await
    }
    async fn snapshot(&self, name: &str, state: &Path) -> Result<(), EngineError> {
        crate::qemu::snapshot::snapshot_live(self, name, state).await
    }
    async fn shutdown(&self, deadline: Duration) -> Result<VmExit, EngineError> {
        Vm::shutdown(self, deadline).await
    }
    async fn kill(&self) -> Result<VmExit, EngineError> {
        Vm::kill(self).await
    }
}
