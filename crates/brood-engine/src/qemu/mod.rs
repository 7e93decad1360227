//! The QEMU backend: one QEMU process per VM, driven over QMP.
//!
//! `QemuEngine::launch` is the single path every VM takes: validate the
//! spec, check the host, create the run directory, overlays and taps, bind
//! the sockets, spawn QEMU, connect console, agent and QMP, and start the
//! exit watcher. Any failure on the way drops `VmResources`, which kills
//! whatever was started and removes what was created.

pub mod argv;
pub mod process;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use brood_qmp::{MigrationStatus, QmpClient, QmpEvent};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, instrument};

use self::argv::{AGENT_FD, CONSOLE_FD, FIRST_TAP_FD, Launch, LaunchDisk, LaunchNic, QMP_FD};
use self::process::VmResources;
use crate::agent::AgentClient;
use crate::console::Console;
use crate::host;
use crate::spec::{DiskFormat, NicBackend, VmSpec};
use crate::vm::{ExitKind, Vm, VmExit};
use crate::{Engine, EngineCaps, EngineError};

/// How long QEMU gets to answer on QMP after it was spawned.
const QMP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Memory kept free for the host beyond the guest's own.
const HOST_RESERVE_MIB: u64 = 64;

/// Where and how the engine runs QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Parent of the per-VM run directories; guest memory files live there,
    /// so it should be a tmpfs.
    pub run_root: PathBuf,
    /// Firmware for microvm; QEMU's default when `None`.
    pub firmware: Option<PathBuf>,
    /// TCG translation-cache size in MiB.
    pub tb_size_mib: u32,
}

/// qboot: a minimal firmware that starts a Linux kernel faster than SeaBIOS.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

impl QemuConfig {
    /// The defaults for this host: `qemu-system-x86_64` from `PATH`, run
    /// directories under `$BROOD_RUN_DIR` or `/dev/shm/brood`, qboot when installed.
    pub fn detect() -> Self {
        let run_root = std::env::var_os("BROOD_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/dev/shm/brood"));
        Self {
            qemu: std::env::var_os("BROOD_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            run_root,
            firmware: Path::new(QBOOT).exists().then(|| PathBuf::from(QBOOT)),
            tb_size_mib: 64,
        }
    }
}

/// The QEMU engine.
#[derive(Debug, Clone)]
pub struct QemuEngine {
    cfg: QemuConfig,
}

impl QemuEngine {
    /// An engine with this configuration.
    pub fn new(cfg: QemuConfig) -> Self {
        Self { cfg }
    }

    /// Its configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    fn check_memory(&self, spec: &VmSpec) -> Result<(), EngineError> {
        if let Some(avail) = host::mem_available_mib()
            && spec.mem_mib + HOST_RESERVE_MIB > avail
        {
            return Err(EngineError::InvalidSpec(format!(
                "memory {} MiB does not fit: the host has {avail} MiB available; ask for less",
                spec.mem_mib
            )));
        }
        if let Some(free) = host::fs_free_mib(&self.cfg.run_root)
            && spec.mem_mib > free
        {
            return Err(EngineError::InvalidSpec(format!(
                "memory {} MiB does not fit in {} ({free} MiB free); ask for less or set BROOD_RUN_DIR",
                spec.mem_mib,
                self.cfg.run_root.display()
            )));
        }
        Ok(())
    }

    #[instrument(skip_all, fields(vm = %spec.name))]
    async fn launch(&self, spec: &VmSpec, incoming: bool) -> Result<Vm, EngineError> {
        let t0 = Instant::now();
        spec.validate()?;
        let accel = host::resolve_accel(spec.accel)?;
        std::fs::create_dir_all(&self.cfg.run_root)
            .map_err(|e| EngineError::host(format!("create {}", self.cfg.run_root.display()), e))?;
        self.check_memory(spec)?;
        let mut res = VmResources::create(&self.cfg.run_root, &spec.name)?;
        let run = res.run_dir.clone();

        let mut disks = Vec::with_capacity(spec.disks.len());
        for (i, d) in spec.disks.iter().enumerate() {
            let format = match d.format {
                Some(f) => f,
                None => DiskFormat::detect(&d.path)?,
            };
            if d.overlay {
                let overlay = run.join(format!("disk{i}.qcow2"));
                create_overlay(&d.path, format, &overlay).await?;
                disks.push(LaunchDisk {
                    path: overlay,
                    format: DiskFormat::Qcow2,
                    read_only: d.read_only,
                });
            } else {
                disks.push(LaunchDisk {
                    path: d.path.clone(),
                    format,
                    read_only: d.read_only,
                });
            }
        }

        let mut nics = Vec::with_capacity(spec.nics.len());
        for n in &spec.nics {
            let mac = n.mac.unwrap_or_else(crate::spec::MacAddr::random);
            let tap_fd = match &n.backend {
                NicBackend::Bridge(br) => {
                    res.taps.push(crate::net::create_tap(br)?);
                    let fd = FIRST_TAP_FD + i32::try_from(res.taps.len() - 1).unwrap_or(0);
                    Some(fd)
                }
                NicBackend::User => None,
            };
            nics.push(LaunchNic { tap_fd, mac });
        }

        let qmp_l = bind(&run.join("qmp.sock"))?;
        let con_l = bind(&run.join("console.sock"))?;
        let agent_l = bind(&run.join("agent.sock"))?;
        let launch = Launch {
            spec,
            accel,
            mem_path: run.join("mem"),
            firmware: self.cfg.firmware.clone(),
            tb_size_mib: self.cfg.tb_size_mib,
            disks,
            nics,
            incoming,
        };
        let argv = argv::qemu_argv(&launch);
        debug!(?argv, "starting QEMU");
        let (qmp_fd, con_fd, agent_fd) = (
            OwnedFd::from(qmp_l),
            OwnedFd::from(con_l),
            OwnedFd::from(agent_l),
        );
        let mut fds: Vec<(&OwnedFd, i32)> = vec![(&qmp_fd, QMP_FD), (&con_fd, CONSOLE_FD)];
        if spec.agent {
            fds.push((&agent_fd, AGENT_FD));
        }
        for (i, t) in res.taps.iter().enumerate() {
            fds.extend(
                t.fd.as_ref()
                    .map(|fd| (fd, FIRST_TAP_FD + i32::try_from(i).unwrap_or(0))),
            );
        }
        let child = process::spawn(
            &self.cfg.qemu,
            &argv,
            &fds,
            &run.join("qemu.log"),
            spec.die_with_parent,
        )?;
        drop(fds);
        let pid = child.id().unwrap_or(0);
        res.pgid = i32::try_from(pid).ok();
        let _ = std::fs::write(run.join("pid"), pid.to_string());
        // QEMU holds the taps now; when it exits the kernel removes them.
        for t in res.taps.iter_mut() {
            t.fd = None;
        }

        // The listeners are bound, so these connects complete at once and
        // QEMU accepts them before the guest starts: no console byte is lost.
        let console_stream = connect(&run.join("console.sock")).await?;
        let console = Console::start(
            console_stream,
            run.join("console.log"),
            spec.console_log_limit,
        );
        let agent = if spec.agent {
            Some(AgentClient::new(connect(&run.join("agent.sock")).await?))
        } else {
            None
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let killed = Arc::new(AtomicBool::new(false));
        let qmp_stream = connect(&run.join("qmp.sock")).await?;
        let handshake =
            tokio::time::timeout(QMP_HANDSHAKE_TIMEOUT, QmpClient::connect(qmp_stream)).await;
        let qmp = match handshake {
            Ok(Ok((qmp, _greeting))) => qmp,
            Ok(Err(e)) => return Err(early_exit(child, &res, EngineError::Qmp(e)).await),
            Err(_) => {
                let timeout = EngineError::Timeout {
                    op: "QMP handshake",
                    after: QMP_HANDSHAKE_TIMEOUT,
                };
                return Err(early_exit(child, &res, timeout).await);
            }
        };
        tokio::spawn(watch_exit(
            child,
            qmp.clone(),
            qmp.events(),
            killed.clone(),
            res.reaped.clone(),
            exit_tx,
        ));
        info!(
            pid,
            accel = accel.name(),
            elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "QEMU started"
        );
        Ok(Vm {
            spec: spec.clone(),
            accel,
            pid,
            qmp,
            agent,
            console,
            exit: exit_rx,
            killed,
            res,
        })
    }
}

#[async_trait]
impl Engine for QemuEngine {
    fn caps(&self) -> EngineCaps {
        EngineCaps {
            kvm: host::kvm_usable(),
            save_restore: true,
        }
    }

    async fn boot(&self, spec: &VmSpec) -> Result<Vm, EngineError> {
        self.launch(spec, false).await
    }

    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<Vm, EngineError> {
        if !state.is_file() {
            return Err(EngineError::InvalidSpec(format!(
                "state file {} does not exist",
                state.display()
            )));
        }
        let vm = self.launch(spec, true).await?;
        vm.qmp
            .migrate_incoming(&format!("file:{}", state.display()))
            .await?;
        finish_migration(&vm.qmp, Duration::from_secs(120)).await?;
        vm.qmp.cont().await?;
        if let Some(agent) = &vm.agent {
            // The agent was ready when the state was saved and will not say so again.
            agent.assume_ready().await?;
        }
        Ok(vm)
    }
}

/// Waits for the current migration (outgoing or incoming) and turns a
/// failed or cancelled one into an error with QEMU's reason.
pub(crate) async fn finish_migration(
    qmp: &QmpClient,
    timeout: Duration,
) -> Result<(), EngineError> {
    match qmp.wait_migration(timeout).await? {
        MigrationStatus::Completed => Ok(()),
        status => {
            let why = qmp.query_migrate().await.ok().and_then(|i| i.error_desc);
            Err(EngineError::Migration(format!(
                "{status}: {}",
                why.unwrap_or_else(|| "no reason given".into())
            )))
        }
    }
}

/// Explains a QEMU that failed before QMP came up: when it exited, by what
/// it printed (most likely it refused its arguments); otherwise `fallback`.
async fn early_exit(
    mut child: tokio::process::Child,
    res: &VmResources,
    fallback: EngineError,
) -> EngineError {
    let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await else {
        return fallback;
    };
    res.reaped.store(true, Ordering::SeqCst);
    let stderr = std::fs::read_to_string(res.run_dir.join("qemu.log")).unwrap_or_default();
    let detail = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    EngineError::ProcessExited {
        status: status.to_string(),
        detail: if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        },
    }
}

/// Owns the QEMU child: reaps it and publishes how it ended.
async fn watch_exit(
    mut child: tokio::process::Child,
    qmp: QmpClient,
    mut events: broadcast::Receiver<QmpEvent>,
    killed: Arc<AtomicBool>,
    reaped: Arc<AtomicBool>,
    exit: watch::Sender<Option<VmExit>>,
) {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().await;
    reaped.store(true, Ordering::SeqCst);
    // Events QEMU sent before exiting are in the socket; let the reader drain them.
    let _ = tokio::time::timeout(Duration::from_millis(500), qmp.closed()).await;
    let mut reason = None;
    while let Ok(ev) = events.try_recv().or_else(|e| match e {
        broadcast::error::TryRecvError::Lagged(_) => events.try_recv(),
        other => Err(other),
    }) {
        if ev.event == "SHUTDOWN" {
            reason = ev
                .data
                .get("reason")
                .and_then(|r| r.as_str())
                .map(String::from);
        }
    }
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let kind = if killed.load(Ordering::SeqCst) {
        ExitKind::Killed
    } else {
        match (reason.as_deref(), code) {
            (Some(r), Some(0)) if r.starts_with("host") => ExitKind::Quit,
            (Some("guest-reset" | "guest-panic"), Some(0)) => ExitKind::Reset,
            (Some(_), Some(0)) => ExitKind::Poweroff,
            _ => ExitKind::Crashed,
        }
    };
    let e = VmExit {
        kind,
        code,
        signal,
        shutdown_reason: reason,
    };
    info!("QEMU exited: {e}");
    exit.send_replace(Some(e));
}

fn bind(path: &Path) -> Result<StdListener, EngineError> {
    StdListener::bind(path).map_err(|e| EngineError::host(format!("bind {}", path.display()), e))
}

async fn connect(path: &Path) -> Result<UnixStream, EngineError> {
    UnixStream::connect(path)
        .await
        .map_err(|e| EngineError::host(format!("connect to {}", path.display()), e))
}

async fn create_overlay(
    base: &Path,
    format: DiskFormat,
    overlay: &Path,
) -> Result<(), EngineError> {
    let base = std::fs::canonicalize(base)
        .map_err(|e| EngineError::host(format!("resolve {}", base.display()), e))?;
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| EngineError::host("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(EngineError::InvalidSpec(format!(
            "qemu-img could not create an overlay over {}: {}",
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
