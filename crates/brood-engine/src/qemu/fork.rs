//! Fork: a running VM becomes a template; children start from it in
//! milliseconds, sharing its memory copy-on-write.
//!
//! ```text
//!  parent VM (memory-backend-file share=on, <run>/mem)
//!    │ agent waits at its fork point; QMP stop
//!    │ migrate with x-ignore-shared → <tpl>/state  (device state only, tens of KiB)
//!    │ <run>/mem renamed to <tpl>/mem; parent QEMU killed: it never runs again
//!    ▼
//!  template dir: mem + state + template.json
//!    │ prepare_child: QEMU with the same devices, memory = <tpl>/mem share=off
//!    │   (MAP_PRIVATE: pages shared until the child writes them), -incoming defer,
//!    │   x-ignore-shared on: this is what a pool keeps ready
//!    │ start_child: migrate-incoming file:<tpl>/state, cont
//!    ▼
//!  child VM: the guest resumes inside the agent's fork-point wait
//! ```
//!
//! Identity (hostname, MAC, IP, entropy) is the agent's business, driven by
//! the caller through `AgentClient::complete_fork`; disks (frozen bases and
//! the children's overlays) are the caller's too.

use std::path::Path;
use std::time::{Duration, Instant};

use brood_qmp::MigrationCapabilityName;
use tracing::info;

use super::{QemuEngine, finish_migration};
use crate::EngineError;
use crate::spec::VmSpec;
pub use crate::template::{TEMPLATE_FILE, Template};
use crate::vm::Vm;

/// How long saving a template's device state may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// A child QEMU started and waiting in `-incoming defer`: what a pool holds.
#[derive(Debug)]
pub struct IncomingChild {
    vm: Vm,
}

impl QemuEngine {
    /// Turns `vm`, whose agent waits at its fork point, into a template in
    /// `dir`: stops it, saves its device state with x-ignore-shared, keeps
    /// its memory file, and ends its QEMU.
    pub async fn save_template(&self, vm: &Vm, dir: &Path) -> Result<Template, EngineError> {
        let t0 = Instant::now();
        let mem = vm.run_dir().join("mem");
        if !mem.is_file() {
            return Err(EngineError::InvalidState {
                op: "make a template of",
                state:
                    "a VM whose memory is not its own file (a forked child must be re-hosted first)"
                        .into(),
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::host(format!("create {}", dir.display()), e))?;
        vm.qmp.stop().await?;
        vm.qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, true)])
            .await?;
        let state = dir.join("state");
        vm.qmp.migrate(&format!("file:{}", state.display())).await?;
        finish_migration(&vm.qmp, STATE_TIMEOUT).await?;
        // Same tmpfs: a rename, not a copy. The parent still maps it; its
        // pages stay as they are.
        std::fs::rename(&mem, dir.join("mem")).map_err(|e| {
            EngineError::host(format!("keep the template memory in {}", dir.display()), e)
        })?;
        let state_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
        let t = Template {
            dir: dir.to_path_buf(),
            spec: vm.spec.clone(),
            accel: vm.accel,
            state_bytes,
        };
        let json =
            serde_json::to_vec_pretty(&t).map_err(|e| EngineError::InvalidSpec(e.to_string()))?;
        std::fs::write(dir.join(TEMPLATE_FILE), json).map_err(|e| {
            EngineError::host(format!("write {}", dir.join(TEMPLATE_FILE).display()), e)
        })?;
        vm.kill().await?;
        info!(template = %dir.display(), state_bytes, ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX), "template saved");
        Ok(t)
    }

    /// Starts a child QEMU for `tpl` that waits for its state: the slow
    /// part of a fork, done ahead of time by a pool.
    pub async fn prepare_child(
        &self,
        tpl: &Template,
        spec: &VmSpec,
    ) -> Result<IncomingChild, EngineError> {
        let vm = self.launch(spec, true, Some(&tpl.mem_path())).await?;
        vm.qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, true)])
            .await?;
        Ok(IncomingChild { vm })
    }

    /// Moves a forked child into a QEMU whose guest memory is a file of its
    /// own (shared), so that it can become a template in turn: a child maps
    /// its template's memory privately, and x-ignore-shared would not save
    /// its pages. The child is stopped and migrated whole (RAM included)
    /// over a unix socket into a new QEMU started with `spec` (the same
    /// devices and disks; QEMU hands the disk locks over at the switch),
    /// which is returned paused; the old QEMU is killed.
    pub async fn rehost(&self, vm: &Vm, spec: &VmSpec) -> Result<Vm, EngineError> {
        let target = self.launch(spec, true, None).await?;
        let sock = target.run_dir().join("migrate.sock");
        let uri = format!("unix:{}", sock.display());
        target.qmp.migrate_incoming(&uri).await?;
        vm.qmp.stop().await?;
        // The child was made with x-ignore-shared on (for its own incoming
        // state); its memory must travel now.
        vm.qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, false)])
            .await?;
        vm.qmp.migrate(&uri).await?;
        finish_migration(&vm.qmp, STATE_TIMEOUT).await?;
        finish_migration(&target.qmp, STATE_TIMEOUT).await?;
        vm.kill().await?;
        Ok(target)
    }

    /// Connects a forked child's taps to their bridges (they are created
    /// detached, so a child never shows its template's MAC on the network).
    pub fn attach_child_nics(&self, vm: &Vm) -> Result<(), EngineError> {
        let bridges = vm.spec.nics.iter().filter_map(|n| match &n.backend {
            crate::spec::NicBackend::Bridge(b) => Some(b.as_str()),
            crate::spec::NicBackend::User => None,
        });
        for (tap, bridge) in vm.res.taps.iter().zip(bridges) {
            crate::net::attach_tap(&tap.name, bridge)?;
        }
        Ok(())
    }

    /// Loads the template's state into a waiting child and runs it. The
    /// guest resumes where the template stopped: its agent waiting at the
    /// fork point.
    pub async fn start_child(
        &self,
        tpl: &Template,
        child: IncomingChild,
    ) -> Result<Vm, EngineError> {
        let vm = child.vm;
        if let Some(e) = vm.exit_status() {
            return Err(vm.exited_error(&e));
        }
        vm.qmp
            .migrate_incoming(&format!("file:{}", tpl.state_path().display()))
            .await?;
        finish_migration(&vm.qmp, STATE_TIMEOUT).await?;
        vm.qmp.cont().await?;
        Ok(vm)
    }
}
