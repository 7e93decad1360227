//! The QEMU backend behind the [`Engine`] boundary: each trait method
//! delegates to `QemuEngine`'s own, downcasting a [`VmHandle`] to the
//! QEMU [`Vm`] where an operation needs QEMU's side of it (QMP, taps).

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{QemuEngine, process};

/// How long `kill_found` waits for a killed QEMU to be gone.
const KILL_FOUND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::handle::{BoxedVm, VmHandle};
use crate::host;
use crate::spec::{DiskSpec, VmSpec};
use crate::template::Template;
use crate::vm::Vm;
use crate::{AccelKind, DiskSnapshotOp, Engine, EngineCaps, EngineError, FoundVm};

/// The QEMU VM behind a handle, or an error naming the operation.
fn qemu_vm<'a>(vm: &'a dyn VmHandle, op: &'static str) -> Result<&'a Vm, EngineError> {
    vm.as_any()
        .downcast_ref::<Vm>()
        .ok_or(EngineError::InvalidState {
            op,
            state: "run by another engine".into(),
        })
}

#[async_trait]
impl Engine for QemuEngine {
    fn caps(&self) -> EngineCaps {
        let kvm = host::kvm_usable();
        EngineCaps {
            engine: "qemu",
            accel: if kvm { AccelKind::Kvm } else { AccelKind::Tcg },
            kvm,
            save_restore: true,
            fork: true,
            rehost: true,
            attach: true,
            max_vcpus: crate::spec::MAX_VCPUS,
        }
    }

    fn run_root(&self) -> PathBuf {
        self.config().run_root.clone()
    }

    async fn boot(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Ok(Box::new(QemuEngine::boot(self, spec).await?))
    }

    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<BoxedVm, EngineError> {
        Ok(Box::new(QemuEngine::restore(self, spec, state).await?))
    }

    async fn attach(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Ok(Box::new(QemuEngine::attach(self, spec).await?))
    }

    fn find_vms(&self) -> Vec<FoundVm> {
        process::find_qemus(&self.config().run_root)
            .into_iter()
            .map(|(pid, name)| FoundVm { name, pid })
            .collect()
    }

    fn kill_found(&self, vm: &FoundVm) -> Result<(), EngineError> {
        process::kill_group(vm.pid);
        if process::wait_gone(vm.pid, KILL_FOUND_WAIT) {
            Ok(())
        } else {
            Err(EngineError::Timeout {
                op: "the end of a killed QEMU",
                after: KILL_FOUND_WAIT,
            })
        }
    }

    fn remove_run_dirs(&self, keep: &(dyn Fn(&str) -> bool + Sync)) {
        let Ok(dir) = std::fs::read_dir(&self.config().run_root) else {
            return;
        };
        for e in dir.flatten() {
            if !keep(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn remove_idle_groups(&self, owned: &(dyn Fn(&str) -> bool + Sync)) {
        crate::cgroup::remove_idle(owned);
    }

    async fn disk_snapshot(
        &self,
        disk: &DiskSpec,
        op: DiskSnapshotOp,
        name: &str,
    ) -> Result<(), EngineError> {
        super::snapshot::disk_snapshot(disk, op, name).await
    }

    async fn disk_snapshot_names(&self, disk: &DiskSpec) -> Result<Vec<String>, EngineError> {
        super::snapshot::disk_snapshot_names(disk).await
    }

    async fn save_template(&self, vm: &dyn VmHandle, dir: &Path) -> Result<Template, EngineError> {
        QemuEngine::save_template(self, qemu_vm(vm, "make a template of")?, dir).await
    }

    async fn save_template_keep(
        &self,
        vm: &dyn VmHandle,
        dir: &Path,
        plan: &crate::KeepPlan,
    ) -> Result<crate::Kept, EngineError> {
        QemuEngine::save_template_keep(self, qemu_vm(vm, "make a template of")?, dir, plan).await
    }

    async fn fork(&self, tpl: &Template, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        let incoming = self.prepare_child(tpl, spec).await?;
        Ok(Box::new(self.start_child(tpl, incoming).await?))
    }

    fn join_networks(&self, vm: &dyn VmHandle) -> Result<(), EngineError> {
        self.attach_child_nics(qemu_vm(vm, "connect the NICs of")?)
    }

    async fn rehost(&self, vm: &dyn VmHandle, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Ok(Box::new(
            QemuEngine::rehost(self, qemu_vm(vm, "re-host")?, spec).await?,
        ))
    }

    async fn prepare_incoming(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        Ok(Box::new(
            QemuEngine::prepare_incoming(self, spec).await?.into_vm(),
        ))
    }

    async fn migrate_in(
        &self,
        vm: &dyn VmHandle,
        stream: std::net::TcpStream,
        timeout: std::time::Duration,
    ) -> Result<(), EngineError> {
        let vm = qemu_vm(vm, "receive a live migration into")?;
        self.load_incoming(vm, stream, timeout).await
    }

    async fn migrate_out(
        &self,
        vm: &dyn VmHandle,
        to: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<super::migrate::MigrationStats, EngineError> {
        let vm = qemu_vm(vm, "live-migrate")?;
        QemuEngine::migrate_out(self, vm, to, timeout).await
    }
}
