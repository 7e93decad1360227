//! The QEMU backend: one QEMU process per VM, driven over QMP.
//!
//! `QemuEngine::launch` is the single path every VM takes: validate the
//! spec, check the host, create the run directory, overlays and taps, open
//! the disk images, bind the sockets, lay out the jail, spawn QEMU confined,
//! connect console, agent and QMP, and start the exit watcher. Any failure on the way drops `VmResources`, which kills
//! whatever was started and removes what was created.

pub mod argv;
mod engine;
mod exit;
mod fdpass;
pub mod fork;
pub mod hotplug;
mod image;
pub mod jail;
pub mod keep;
pub mod migrate;
pub mod process;
pub mod snapshot;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brood_qmp::{MigrationStatus, QmpClient};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, info, instrument};

use self::argv::{
    AGENT_FD, CONSOLE_FD, FDMON_FD, FIRST_TAP_FD, Launch, LaunchDisk, LaunchLayer, LaunchNic,
    QMP_FD,
};
use self::exit::ExitSource;
use self::process::VmResources;
use crate::EngineError;
use crate::agent::AgentClient;
use crate::cgroup::Cgroup;
use crate::console::Console;
use crate::host;
use crate::host::Accel;
use crate::spec::{DiskFormat, NicBackend, VmSpec};
use crate::vm::Vm;

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
            tb_size_mib: std::env::var("BROOD_TB_SIZE_MIB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
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

    /// Starts QEMU for `spec`. With `incoming` it waits in `-incoming
    /// defer`; with `template_mem` its guest memory is that file mapped
    /// private (a forked child) instead of a fresh file of its own.
    #[instrument(skip_all, fields(vm = %spec.name))]
    pub(crate) async fn launch(
        &self,
        spec: &VmSpec,
        incoming: bool,
        template_mem: Option<&Path>,
    ) -> Result<Vm, EngineError> {
        let t0 = Instant::now();
        spec.validate()?;
        let accel = host::resolve_accel(spec.accel)?;
        process::private_dir(&self.cfg.run_root)?;
        if template_mem.is_none() {
            // A child's memory is its template's file, shared until written.
            self.check_memory(spec)?;
        }
        let mut res = VmResources::create(&self.cfg.run_root, &spec.name)?;
        let run = res.run_dir.clone();
        let mut chains = Vec::with_capacity(spec.disks.len());
        for (i, d) in spec.disks.iter().enumerate() {
            if d.nbd.is_some() {
                // The storage I/O partition opens the image, not QEMU.
                chains.push(Vec::new());
                continue;
            }
            let mut layers = image::backing_chain(d).await?;
            if d.overlay {
                let overlay = run.join(format!("disk{i}.qcow2"));
                create_overlay(&d.path, d.format, &overlay).await?;
                layers.insert(
                    0,
                    image::Layer {
                        path: overlay,
                        format: DiskFormat::Qcow2,
                    },
                );
            }
            chains.push(layers);
        }

        let mut nics = Vec::with_capacity(spec.nics.len());
        let mut switch_ports: Vec<OwnedFd> = Vec::new();
        for n in &spec.nics {
            let mac = match n.mac {
                Some(m) => m,
                None => crate::spec::MacAddr::random()?,
            };
            let tap_fd = match &n.backend {
                NicBackend::Bridge(br) => {
                    // A child joins the bridge once it has its own MAC.
                    res.taps.push(if template_mem.is_some() {
                        crate::net::create_detached_tap()?
                    } else {
                        crate::net::create_tap(br)?
                    });
                    let fd = FIRST_TAP_FD + i32::try_from(res.taps.len() - 1).unwrap_or(0);
                    Some(fd)
                }
                NicBackend::User | NicBackend::UserUnrestricted | NicBackend::Switch => None,
            };
            let stream = match n.backend {
                NicBackend::Switch => {
                    let path = crate::spec::switch_socket(&run, nics.len());
                    switch_ports.push(OwnedFd::from(bind(&path)?));
                    Some(switch_ports.len() - 1)
                }
                _ => None,
            };
            let restrict = n.backend == NicBackend::User;
            nics.push(LaunchNic {
                tap_fd,
                // Numbered below, after the taps.
                stream_fd: stream.and_then(|j| i32::try_from(j).ok()),
                mac,
                restrict,
            });
        }
        // Switch ports follow the taps, disk images follow them; brood
        // opens them all, QEMU gets descriptors.
        let mut next_fd = FIRST_TAP_FD + i32::try_from(res.taps.len()).unwrap_or(0);
        for n in &mut nics {
            n.stream_fd = n.stream_fd.map(|j| next_fd + j);
        }
        let port_fds: Vec<(&OwnedFd, i32)> = switch_ports.iter().zip(next_fd..).collect();
        next_fd += i32::try_from(switch_ports.len()).unwrap_or(0);
        let mut disk_files = Vec::new();
        let mut disks = Vec::with_capacity(chains.len());
        for (d, chain) in spec.disks.iter().zip(&chains) {
            let mut layers = Vec::with_capacity(chain.len());
            for (j, layer) in chain.iter().enumerate() {
                let writable = j == 0 && !d.read_only;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(&layer.path)
                    .map_err(|e| {
                        EngineError::host(format!("open disk {}", layer.path.display()), e)
                    })?;
                disk_files.push((OwnedFd::from(f), next_fd));
                layers.push(LaunchLayer {
                    fd: next_fd,
                    format: layer.format,
                });
                next_fd += 1;
            }
            let nbd = match &d.nbd {
                Some(n) => Some((
                    link_nbd_socket(&run, disks.len(), &n.socket)?,
                    n.export.clone(),
                )),
                None => None,
            };
            disks.push(LaunchDisk {
                layers,
                read_only: d.read_only,
                nbd,
                throttle: d.throttle,
            });
        }

        let own_network = !spec
            .nics
            .iter()
            .any(|n| n.backend == NicBackend::UserUnrestricted);
        let confined = jail::confine(&jail::Setup {
            res: &res,
            spec,
            qemu: &self.cfg.qemu,
            firmware: self.cfg.firmware.as_deref(),
            template_mem,
            kvm: accel == Accel::Kvm,
            own_network,
        })?;
        let jail = confined.jail;

        let qmp_l = bind(&run.join("qmp.sock"))?;
        let con_l = bind(&run.join("console.sock"))?;
        let agent_l = bind(&run.join("agent.sock"))?;
        let fdmon_l = bind(&run.join("fdmon.sock"))?;
        let launch = Launch {
            spec,
            accel,
            kernel: confined.kernel,
            initrd: confined.initrd,
            mem_path: confined.mem,
            mem_shared: template_mem.is_none(),
            firmware: confined.firmware,
            tb_size_mib: self.cfg.tb_size_mib,
            disks,
            nics,
            incoming,
        };
        let argv = argv::qemu_argv(&launch);
        debug!(?argv, ident = ?jail.ident(), "starting QEMU");
        let (qmp_fd, con_fd, agent_fd, fdmon_fd) = (
            OwnedFd::from(qmp_l),
            OwnedFd::from(con_l),
            OwnedFd::from(agent_l),
            OwnedFd::from(fdmon_l),
        );
        let mut fds: Vec<(&OwnedFd, i32)> = vec![
            (&qmp_fd, QMP_FD),
            (&con_fd, CONSOLE_FD),
            (&fdmon_fd, FDMON_FD),
        ];
        if spec.agent {
            fds.push((&agent_fd, AGENT_FD));
        }
        for (i, t) in res.taps.iter().enumerate() {
            fds.extend(
                t.fd.as_ref()
                    .map(|fd| (fd, FIRST_TAP_FD + i32::try_from(i).unwrap_or(0))),
            );
        }
        fds.extend(port_fds.iter().copied());
        fds.extend(disk_files.iter().map(|(fd, n)| (fd, *n)));
        if !spec.limits.is_empty() {
            let leaf = format!("{}-{}", spec.name, nonce()?);
            res.cgroup = Some(Cgroup::create(&leaf, &spec.limits)?);
        }
        let join: Vec<std::fs::File> = match &res.cgroup {
            Some(cg) => cg
                .procs_files()
                .iter()
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .map_err(|e| EngineError::host(format!("open {}", p.display()), e))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let arg0 = run.join(
            jail.program()
                .file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("qemu-system")),
        );
        let child = process::spawn(
            &argv,
            &fds,
            &process::SpawnOpts {
                stderr_log: &run.join("qemu.log"),
                arg0: &arg0,
                die_with_parent: spec.die_with_parent,
                cgroups: &join,
                no_thp: template_mem.is_some(),
            },
            jail,
        )?;
        drop(fds);
        drop(port_fds);
        drop(switch_ports);
        drop(disk_files);
        let pid = child.id().unwrap_or(0);
        res.pgid = i32::try_from(pid).ok();
        let _ = process::private_file(&run.join("pid")).and_then(|mut f| {
            std::io::Write::write_all(&mut f, pid.to_string().as_bytes())
                .map_err(|e| EngineError::host("write the pid file", e))
        });
        // QEMU holds the taps now; when it exits the kernel removes them.
        for t in res.taps.iter_mut() {
            t.fd = None;
        }

        // The listeners are bound, so these connects complete at once and
        // QEMU accepts them before the guest starts: no console byte is lost.
        let (console, agent, qmp_stream) = connect_sockets(spec, &run).await?;
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
        let vm = assemble(
            spec,
            accel,
            pid,
            qmp,
            agent,
            console,
            res,
            ExitSource::Child(child),
        );
        info!(
            pid,
            accel = accel.name(),
            elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "QEMU started"
        );
        Ok(vm)
    }

    /// Takes charge of a VM whose QEMU is already running in this engine's
    /// run root: started by an earlier process (broodd before a restart) with
    /// `spec`. Reconnects QMP, console and agent, watches the process through
    /// a pidfd, and treats the agent as ready once it answers.
    #[instrument(skip_all, fields(vm = %spec.name))]
    pub async fn attach(&self, spec: &VmSpec) -> Result<Vm, EngineError> {
        let run = self.cfg.run_root.join(&spec.name);
        let pid = process::live_pid(&run).ok_or_else(|| EngineError::InvalidState {
            op: "attach to",
            state: format!("not running (no live QEMU for {})", run.display()),
        })?;
        let source = ExitSource::Pidfd(
            exit::pidfd_open(pid)
                .map_err(|e| EngineError::host(format!("open a pidfd for QEMU {pid}"), e))?,
        );
        let mut res = VmResources {
            run_dir: run.clone(),
            pgid: Some(pid),
            reaped: Arc::new(AtomicBool::new(false)),
            taps: Vec::new(),
            keep_run_dir: false,
            kill_on_drop: false,
            cgroup: None,
            claim: process::claim_run_dir(&run),
        };
        let upid = u32::try_from(pid).unwrap_or(0);
        res.cgroup = Cgroup::of_pid(upid);
        let (console, agent, qmp_stream) = connect_sockets(spec, &run).await?;
        let (qmp, _greeting) =
            tokio::time::timeout(QMP_HANDSHAKE_TIMEOUT, QmpClient::connect(qmp_stream))
                .await
                .map_err(|_| EngineError::Timeout {
                    op: "QMP handshake",
                    after: QMP_HANDSHAKE_TIMEOUT,
                })??;
        let accel = if qmp
            .human_monitor_command("info kvm")
            .await
            .is_ok_and(|s| s.contains("enabled"))
        {
            Accel::Kvm
        } else {
            Accel::Tcg {
                tsc_khz: host::host_tsc_khz(),
            }
        };
        if let Some(a) = &agent {
            // The agent said Ready to the old connection; ask until it answers.
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..120 {
                    if a.ready_info().is_some() || a.is_closed() {
                        return;
                    }
                    if tokio::time::timeout(Duration::from_secs(1), a.assume_ready())
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        return;
                    }
                }
            });
        }
        let vm = assemble(spec, accel, upid, qmp, agent, console, res, source);
        info!(pid, "attached to running QEMU");
        Ok(vm)
    }
}

/// Connects to a VM's console, agent and QMP sockets.
async fn connect_sockets(
    spec: &VmSpec,
    run: &Path,
) -> Result<(Console, Option<AgentClient>, UnixStream), EngineError> {
    let console_stream = connect(&run.join("console.sock")).await?;
    let log = run.join("console.log");
    if !log.exists() {
        // Guest output is the guest's business: 0600 whatever the umask.
        process::private_file(&log)?;
    }
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
    let qmp = connect(&run.join("qmp.sock")).await?;
    Ok((console, agent, qmp))
}

/// Builds the `Vm` handle and starts its exit watcher.
#[allow(clippy::too_many_arguments)]
fn assemble(
    spec: &VmSpec,
    accel: Accel,
    pid: u32,
    qmp: QmpClient,
    agent: Option<AgentClient>,
    console: Console,
    mut res: VmResources,
    source: ExitSource,
) -> Vm {
    if let Some(a) = &agent {
        a.follow_port(qmp.events());
    }
    let (exit_tx, exit_rx) = watch::channel(None);
    let killed = Arc::new(AtomicBool::new(false));
    res.kill_on_drop = spec.die_with_parent;
    tokio::spawn(exit::watch_exit(
        source,
        exit::Watch {
            qmp: qmp.clone(),
            events: qmp.events(),
            killed: killed.clone(),
            reaped: res.reaped.clone(),
            cgroup: res.cgroup.clone(),
            exit: exit_tx,
        },
    ));
    Vm {
        spec: spec.clone(),
        accel,
        pid,
        qmp,
        agent,
        console,
        exit: exit_rx,
        killed,
        res,
    }
}

/// Saves `vm`'s whole state to a new file at `path` (0600), the VM stopped.
///
/// Always a full save with `x-ignore-shared` off, which is what a fresh
/// QEMU in `-incoming defer` (`QemuEngine::restore`) expects: QEMU 8.1+
/// sends its migration capabilities in the stream's configuration section
/// and refuses a stream whose `x-ignore-shared` differs from its own
/// ("Capability x-ignore-shared is off, but received capability is on").
/// A forked child has it on (set for loading its template's state), but
/// its guest memory is the template's file mapped private, which
/// x-ignore-shared never skips: its pages are in the stream either way,
/// and with the capability off the saved state stands alone (a fresh QEMU
/// with a memory file of its own restores it; the template need not exist
/// any more). The restored VM is no longer copy-on-write over its
/// template's memory; its memory cgroup and charge hold what it uses.
pub(crate) async fn save_state(vm: &Vm, path: &Path, timeout: Duration) -> Result<(), EngineError> {
    vm.qmp
        .migrate_set_capabilities(&[(brood_qmp::MigrationCapabilityName::XIgnoreShared, false)])
        .await?;
    fdpass::save_to_file(&vm.qmp, vm.run_dir(), path, timeout).await
}

/// A short random suffix.
fn nonce() -> Result<String, EngineError> {
    let b: [u8; 4] = crate::random::random_bytes()?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl QemuEngine {
    /// Boots a VM from its spec.
    pub async fn boot(&self, spec: &VmSpec) -> Result<Vm, EngineError> {
        self.launch(spec, false, None).await
    }

    /// Starts a VM from a state file written by [`Vm::save`]; `spec` must
    /// describe the same devices.
    pub async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<Vm, EngineError> {
        if !state.is_file() {
            return Err(EngineError::InvalidSpec(format!(
                "state file {} does not exist",
                state.display()
            )));
        }
        let mut vm = self.launch(spec, true, None).await?;
        // Nobody's VM until it runs: a failed load must not leave QEMU behind.
        vm.set_kill_on_drop(true);
        let loaded = async {
            fdpass::load_from_file(&vm.qmp, vm.run_dir(), state, Duration::from_secs(120)).await?;
            vm.qmp.cont().await?;
            Ok::<(), EngineError>(())
        }
        .await;
        if let Err(e) = loaded {
            let e = vm.explain(e).await;
            let _ = vm.kill().await;
            return Err(e);
        }
        if let Some(agent) = &vm.agent {
            // The agent was ready when the state was saved and will not say so again.
            agent.assume_ready().await?;
        }
        vm.set_kill_on_drop(spec.die_with_parent);
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

/// Hard-links a storage server's socket into the run directory (QEMU's
/// root when confined) as `nbd<i>.sock` and returns its path as QEMU sees
/// it. The server keeps its listening socket across restarts (see
/// `crate::storage`), so the link stays good.
fn link_nbd_socket(run: &Path, i: usize, socket: &Path) -> Result<PathBuf, EngineError> {
    let name = format!("nbd{i}.sock");
    std::fs::hard_link(socket, run.join(&name)).map_err(|e| {
        EngineError::host(
            format!(
                "link storage socket {} into the run directory (both must be on one file system)",
                socket.display()
            ),
            e,
        )
    })?;
    Ok(if nix::unistd::geteuid().is_root() {
        PathBuf::from("/").join(name)
    } else {
        run.join(name)
    })
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
    std::fs::set_permissions(overlay, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| EngineError::host(format!("restrict {}", overlay.display()), e))
}
