//! Fork: a running VM becomes a template; children start from it in
//! milliseconds, sharing its memory copy-on-write.
//!
//! ```text
//!  parent VM (memory-backend-file share=on, <run>/mem)
//!    │ agent waits at its fork point; QMP stop
//!    │ migrate with x-ignore-shared → <tpl>/state  (device state only, tens of KiB)
//!    │ <run>/mem renamed to <tpl>/mem; parent QEMU killed: it never runs again
//!    ▼
//!  template dir (0700): mem (0440, root and the template's group) + state + template.json
//!    │ prepare_child: QEMU with the same devices, memory = <tpl>/mem share=off, read-only
//!    │   (MAP_PRIVATE: pages shared until the child writes them), -incoming defer,
//!    │   x-ignore-shared on: this is what a pool keeps ready
//!    │ start_child: migrate-incoming file:<tpl>/state, cont
//!    ▼
//!  child VM: the guest resumes inside the agent's fork-point wait
//!    │ Vm::save: x-ignore-shared off, a full save (its private memory is
//!    ▼   in the stream anyway); restore: a fresh QEMU with memory of its own
//!  restored child: no longer copy-on-write over the template
//! ```
//!
//! A failure on the way says what QEMU printed last (`Vm::explain`).
//!
//! Every QEMU is confined (see `jail`): the state goes in and out through
//! descriptors brood opens (`fdpass`), and a child, running as a user of its
//! own in its template's group, reaches the template's memory only through
//! a read-only bind in its root.
//!
//! Identity (hostname, MAC, IP, entropy) is the agent's business, driven by
//! the caller through `AgentClient::complete_fork`; disks (frozen bases and
//! the children's overlays) are the caller's too.

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
        super::process::private_dir(dir)?;
        let state = dir.join("state");
        let saved = async {
            vm.qmp.stop().await?;
            vm.qmp
                .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, true)])
                .await?;
            super::fdpass::save_to_file(&vm.qmp, vm.run_dir(), &state, STATE_TIMEOUT).await
        }
        .await;
        if let Err(e) = saved {
            return Err(vm.explain(e).await);
        }
        // Same tmpfs: a rename, not a copy. The parent still maps it; its
        // pages stay as they are.
        let kept = dir.join("mem");
        std::fs::rename(&mem, &kept).map_err(|e| {
            EngineError::host(format!("keep the template memory in {}", dir.display()), e)
        })?;
        // Children run in the parent's group (see `launch`) and map the file
        // read-only; no one else may read it.
        let gid = std::fs::metadata(&kept)
            .map_err(|e| EngineError::host(format!("stat {}", kept.display()), e))?
            .gid();
        // (Not run by root, QEMU runs as the caller and the file stays 0600.)
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&kept, Some(0), Some(gid))
                .and_then(|()| {
                    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o440))
                })
                .map_err(|e| EngineError::host(format!("restrict {}", kept.display()), e))?;
        }
        let state_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
        let t = Template {
            dir: dir.to_path_buf(),
            spec: vm.spec.clone(),
            accel: vm.accel,
            state_bytes,
        };
        let json =
            serde_json::to_vec_pretty(&t).map_err(|e| EngineError::InvalidSpec(e.to_string()))?;
        super::process::private_file(&dir.join(TEMPLATE_FILE)).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &json)
                .map_err(|e| EngineError::host("write the template description", e))
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
        let mut vm = self.launch(spec, true, Some(&tpl.mem_path())).await?;
        // Nobody's VM until it has started: a failure on the way (or a
        // caller that drops it) must not leave its QEMU running.
        vm.set_kill_on_drop(true);
        if let Err(e) = vm
            .qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, true)])
            .await
        {
            return Err(vm.explain(e.into()).await);
        }
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
        let mut target = self.launch(spec, true, None).await?;
        // Killed if the move fails half way; the caller decides after.
        target.set_kill_on_drop(true);
        // Neither QEMU can reach the other's run directory: the stream is
        // a socket pair brood hands to both.
        let (into, from) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| EngineError::host("make a migration socket pair", e.into()))?;
        super::fdpass::migrate_over_socket(target.run_dir(), into.as_fd(), true).await?;
        drop(into);
        let sent = async {
            vm.qmp.stop().await?;
            // The child was made with x-ignore-shared on (for its own incoming
            // state); its memory must travel now.
            vm.qmp
                .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, false)])
                .await?;
            super::fdpass::migrate_over_socket(vm.run_dir(), from.as_fd(), false).await?;
            drop(from);
            finish_migration(&vm.qmp, STATE_TIMEOUT).await
        }
        .await;
        if let Err(e) = sent {
            return Err(vm.explain(e).await);
        }
        if let Err(e) = finish_migration(&target.qmp, STATE_TIMEOUT).await {
            return Err(target.explain(e).await);
        }
        vm.kill().await?;
        Ok(target)
    }

    /// Connects a forked child's taps to their bridges (they are created
    /// detached, so a child never shows its template's MAC on the network).
    pub fn attach_child_nics(&self, vm: &Vm) -> Result<(), EngineError> {
        let bridges = vm.spec.nics.iter().filter_map(|n| match &n.backend {
            crate::spec::NicBackend::Bridge(b) => Some(b.as_str()),
            crate::spec::NicBackend::User
            | crate::spec::NicBackend::UserUnrestricted
            | crate::spec::NicBackend::Switch => None,
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
        let started = async {
            super::fdpass::load_from_file(&vm.qmp, vm.run_dir(), &tpl.state_path(), STATE_TIMEOUT)
                .await?;
            vm.qmp.cont().await?;
            Ok::<(), EngineError>(())
        }
        .await;
        if let Err(e) = started {
            let e = vm.explain(e).await;
            let _ = vm.kill().await;
            return Err(e);
        }
        Ok(vm)
    }
}
