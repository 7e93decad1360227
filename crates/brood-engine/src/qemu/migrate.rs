//! Live migration over TCP between two QEMUs, possibly on two hosts.
//!
//! ```text
//!  target host                               source host
//!  prepare_incoming: QEMU with the spec's     │
//!    memory and vCPUs, -incoming defer        │
//!  accept_incoming: brood accepts one TCP  ◀──┤ migrate_out: brood connects,
//!    connection and hands it to QEMU          │   hands the socket to QEMU,
//!    (getfd + migrate-incoming fd:)           │   migrate fd: (pre-copy while
//!                                             │   the guest runs; QEMU pauses
//!                                             │   it for the last pages)
//!  finish_incoming: wait for completed, cont  │ completed: the source is left
//!                                             ▼   paused for the caller to end
//! ```
//!
//! Both QEMUs are confined without network access of their own (`jail`):
//! brood opens the TCP stream and passes the descriptor, as `rehost` does
//! with a socket pair. A failure before the switch leaves the source
//! running (QEMU resumes it; [`QemuEngine::migrate_out`] resumes it if it
//! was left paused) and the target is killed on drop. Disks are not
//! copied: both sides must reach the same storage (the caller's business).
//! A forked child migrates whole: x-ignore-shared is turned off for the
//! stream, so its private pages and the template's shared ones it maps
//! both travel and the target owns plain memory of its own.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use brood_qmp::{MigrationCapabilityName, MigrationStatus};
use tokio::net::{TcpListener, TcpStream};

use super::{QemuEngine, finish_migration};
use crate::EngineError;
use crate::spec::VmSpec;
use crate::vm::Vm;

/// A target QEMU waiting in `-incoming defer` for a live migration.
#[derive(Debug)]
pub struct IncomingVm {
    vm: Vm,
    // The accepted stream stays open until the migration ends.
    stream: Option<std::net::TcpStream>,
}

/// How a live migration went, as the source's QEMU measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationStats {
    /// From `migrate` to completed, in milliseconds (`total-time`).
    pub total_ms: u64,
    /// The guest's pause for the switch, in milliseconds (`downtime`).
    pub downtime_ms: u64,
    /// What brood measured around it, in milliseconds.
    pub wall_ms: u64,
}

impl IncomingVm {
    /// The waiting VM itself, for a caller that accepts the stream on its
    /// own ([`QemuEngine::load_incoming`]); it is killed on drop until the
    /// caller says otherwise.
    pub fn into_vm(self) -> Vm {
        self.vm
    }
}

impl QemuEngine {
    /// Starts the target QEMU for `spec` (its memory and vCPUs reserved
    /// now), waiting for a migration stream.
    pub async fn prepare_incoming(&self, spec: &VmSpec) -> Result<IncomingVm, EngineError> {
        let mut vm = self.launch(spec, true, None).await?;
        vm.set_kill_on_drop(true);
        if let Err(e) = vm
            .qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, false)])
            .await
        {
            return Err(vm.explain(e.into()).await);
        }
        Ok(IncomingVm { vm, stream: None })
    }

    /// Accepts the source's connection on `listener` (within `timeout`) and
    /// hands it to the waiting QEMU.
    pub async fn accept_incoming(
        &self,
        inc: &mut IncomingVm,
        listener: &TcpListener,
        timeout: Duration,
    ) -> Result<SocketAddr, EngineError> {
        let (stream, peer) = tokio::time::timeout(timeout, listener.accept())
            .await
            .map_err(|_| {
                EngineError::Migration(format!("no migration stream arrived within {timeout:?}"))
            })?
            .map_err(|e| EngineError::host("accept the migration stream", e))?;
        let stream = stream
            .into_std()
            .map_err(|e| EngineError::host("take the migration stream", e))?;
        super::fdpass::migrate_over_socket(inc.vm.run_dir(), stream.as_fd(), true).await?;
        inc.stream = Some(stream);
        Ok(peer)
    }

    /// Hands `stream` (the source's connection, accepted by the caller) to
    /// a VM from [`QemuEngine::prepare_incoming`] and waits until the whole
    /// state has arrived; the guest is left paused for the caller to run
    /// once it has decided the move (broodd commits it in the catalog first).
    pub async fn load_incoming(
        &self,
        vm: &Vm,
        stream: std::net::TcpStream,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let done = async {
            super::fdpass::migrate_over_socket(vm.run_dir(), stream.as_fd(), true).await?;
            finish_migration(&vm.qmp, timeout).await
        }
        .await;
        drop(stream);
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(vm.explain(e).await),
        }
    }

    /// Waits for the stream to complete and runs the migrated guest.
    pub async fn finish_incoming(
        &self,
        inc: IncomingVm,
        timeout: Duration,
    ) -> Result<Vm, EngineError> {
        let IncomingVm { mut vm, stream } = inc;
        let done = async {
            finish_migration(&vm.qmp, timeout).await?;
            vm.qmp.cont().await?;
            Ok::<(), EngineError>(())
        }
        .await;
        drop(stream);
        if let Err(e) = done {
            return Err(vm.explain(e).await);
        }
        vm.set_kill_on_drop(false);
        Ok(vm)
    }

    /// Live-migrates `vm` to the target listening at `to`: pre-copy while
    /// the guest runs, then QEMU's own pause for the last pages. On success
    /// the source is paused and the caller ends it; on failure it runs on.
    pub async fn migrate_out(
        &self,
        vm: &Vm,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<MigrationStats, EngineError> {
        let t0 = Instant::now();
        let sent = async {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(to))
                .await
                .map_err(|_| {
                    EngineError::Migration(format!("{to} did not answer within {timeout:?}"))
                })?
                .map_err(|e| EngineError::host(format!("connect to the migration target {to}"), e))?
                .into_std()
                .map_err(|e| EngineError::host("take the migration stream", e))?;
            // A forked child maps its template's memory: send it too.
            vm.qmp
                .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, false)])
                .await?;
            super::fdpass::migrate_over_socket(vm.run_dir(), stream.as_fd(), false).await?;
            drop(stream);
            finish_migration(&vm.qmp, timeout).await?;
            Ok::<_, EngineError>(vm.qmp.query_migrate().await?)
        }
        .await;
        match sent {
            Ok(info) => Ok(MigrationStats {
                total_ms: info.total_time_ms.unwrap_or(0),
                downtime_ms: info.downtime_ms.unwrap_or(0),
                wall_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            Err(e) => {
                // A stream that did not complete (QEMU reports it failed or
                // cancelled, or it still runs past the deadline) means the
                // target lacks its end and cannot run: the source runs on.
                // One QEMU reports completed is left paused: the target has
                // everything, and the caller decides which copy runs.
                let status = vm.qmp.query_migrate().await.ok().and_then(|i| i.status);
                if status != Some(MigrationStatus::Completed) {
                    if matches!(&status, Some(s) if !s.is_final() && *s != MigrationStatus::None) {
                        let _ = vm.qmp.execute_raw("migrate_cancel", None).await;
                        let _ = vm.qmp.wait_migration(timeout).await;
                    }
                    let _ = vm.qmp.cont().await;
                }
                Err(vm.explain(e).await)
            }
        }
    }
}
