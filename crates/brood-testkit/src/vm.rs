//! One fake VM: its process model (`VmModel`: phase, pid, run directory,
//! guest state, agent connections), the handle broodd holds on it
//! (`FakeHandle`, a `VmHandle`), and the handle a test drives it with
//! ([`FakeVm`]). The engine that makes them is in `engine`.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use brood_engine::{AgentClient, EngineError, ExitKind, VmExit, VmHandle, VmSpec, VmStatus};
use brood_proto::{ChildConfig, Ready};
use tokio::sync::{Notify, mpsc, watch};

use crate::engine::{FakeEngine, Identity, Mode, Op, Shared, enter, lock, qmp_timeout};

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// vCPUs run.
    Running,
    /// vCPUs stopped.
    Paused,
    /// The process ended.
    Exited(VmExit),
}

/// The guest's side of a fake VM: what its agent knows.
#[derive(Debug, Default, Clone)]
pub(crate) struct GuestState {
    pub(crate) hostname: String,
    pub(crate) files: HashMap<String, Vec<u8>>,
    /// The seq of the fork point a guest process waits at.
    pub(crate) fork_point: Option<u32>,
    pub(crate) next_seq: u32,
    /// The identity a child applied.
    pub(crate) child: Option<ChildConfig>,
    pub(crate) execs: Vec<String>,
    pub(crate) identity: Option<Identity>,
    pub(crate) warmed: u32,
}

/// One fake VM process.
pub(crate) struct VmModel {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) spec: VmSpec,
    pub(crate) run_dir: PathBuf,
    pub(crate) phase: watch::Sender<Phase>,
    /// The agent is up (it has sent, or will send, `Ready`) or waits at
    /// a fork point: requests are answered.
    pub(crate) serving: watch::Sender<bool>,
    /// QMP and agent calls never answer.
    pub(crate) hung: watch::Sender<bool>,
    pub(crate) guest: Mutex<GuestState>,
    /// Open agent connections (their outgoing frame queues).
    pub(crate) conns: Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>,
    pub(crate) joined: AtomicBool,
    pub(crate) forked: bool,
    pub(crate) identity_go: Notify,
    pub(crate) power_go: Notify,
    /// The memory limit it runs under, as a cgroup would hold it (MiB).
    pub(crate) memory_limit_mib: Mutex<Option<u64>>,
    /// Memory of its own it uses, as a test sets it (bytes).
    pub(crate) memory_private_bytes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for VmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmModel")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("phase", &*self.phase.borrow())
            .finish_non_exhaustive()
    }
}

impl VmModel {
    fn memory_limit_mib(&self) -> Option<u64> {
        *lock(&self.memory_limit_mib)
    }

    pub(crate) fn exit_status(&self) -> Option<VmExit> {
        match &*self.phase.borrow() {
            Phase::Exited(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Ends the process (idempotent): agents lose their connections.
    pub(crate) fn exit(&self, kind: ExitKind) -> VmExit {
        let mut out = None;
        self.phase.send_if_modified(|p| match p {
            Phase::Exited(e) => {
                out = Some(e.clone());
                false
            }
            _ => {
                let e = VmExit {
                    kind,
                    code: matches!(kind, ExitKind::Poweroff | ExitKind::Quit).then_some(0),
                    signal: matches!(kind, ExitKind::Killed | ExitKind::Crashed).then_some(9),
                    shutdown_reason: (kind == ExitKind::Poweroff).then(|| "guest-shutdown".into()),
                };
                out = Some(e.clone());
                *p = Phase::Exited(e);
                true
            }
        });
        lock(&self.conns).clear();
        self.console(&format!("fake: process ended ({kind:?})"));
        out.unwrap_or(VmExit {
            kind,
            code: None,
            signal: None,
            shutdown_reason: None,
        })
    }

    pub(crate) async fn wait_exit(&self) -> VmExit {
        let mut rx = self.phase.subscribe();
        loop {
            if let Phase::Exited(e) = &*rx.borrow_and_update() {
                return e.clone();
            }
            if rx.changed().await.is_err() {
                return VmExit {
                    kind: ExitKind::Crashed,
                    code: None,
                    signal: None,
                    shutdown_reason: None,
                };
            }
        }
    }

    /// Waits while the VM is hung: errs when it ends meanwhile, or with a
    /// timeout after `after`, as a QMP command nobody answers does.
    pub(crate) async fn unless_hung(&self, after: Duration) -> Result<(), EngineError> {
        let mut hung = self.hung.subscribe();
        tokio::select! {
            _ = hung.wait_for(|h| !*h) => Ok(()),
            e = self.wait_exit() => Err(exited(&e)),
            () = tokio::time::sleep(after) => Err(EngineError::Timeout { op: "QMP command", after }),
        }
    }

    pub(crate) fn console(&self, line: &str) {
        use std::io::Write;
        let path = self.run_dir.join("console.log");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Sends an unsolicited frame to every open agent connection.
    pub(crate) fn announce(&self, frame: &[u8]) {
        lock(&self.conns).retain(|c| c.send(frame.to_vec()).is_ok());
    }

    fn ready_frame(&self) -> Option<Vec<u8>> {
        brood_proto::encode_frame(
            0,
            &brood_proto::GuestMsg::Ready(Ready {
                proto_version: brood_proto::PROTOCOL_VERSION,
                agent_version: "fake".into(),
                uptime_ms: 1,
            }),
        )
        .ok()
    }

    /// The agent comes up and says `Ready` to the connections open now.
    /// Its agent announces the point `name` (a new seq).
    pub(crate) fn announce_point(&self, name: &str) -> u32 {
        let seq = {
            let mut g = lock(&self.guest);
            let seq = g.next_seq;
            g.next_seq += 1;
            seq
        };
        let point = brood_proto::GuestMsg::Point(brood_proto::Point {
            seq,
            name: name.into(),
        });
        if let Ok(f) = brood_proto::encode_frame(0, &point) {
            self.announce(&f);
        }
        seq
    }

    pub(crate) fn become_ready(&self) {
        if self.exit_status().is_some() {
            return;
        }
        self.serving.send_replace(true);
        if let Some(f) = self.ready_frame() {
            self.announce(&f);
        }
        self.console("fake: agent ready");
    }
}

pub(crate) fn exited(e: &VmExit) -> EngineError {
    EngineError::ProcessExited {
        status: e.to_string(),
        detail: String::new(),
    }
}

/// The engine's handle on one fake VM, as broodd holds it.
pub(crate) struct FakeHandle {
    pub(crate) model: Arc<VmModel>,
    pub(crate) agent: AgentClient,
    pub(crate) shared: Arc<Shared>,
    pub(crate) kill_on_drop: bool,
}

impl std::fmt::Debug for FakeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHandle")
            .field("model", &self.model)
            .field("kill_on_drop", &self.kill_on_drop)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.model.exit(ExitKind::Killed);
        }
    }
}

impl FakeHandle {
    /// Records a call on this VM, fails it as injected, waits while hung,
    /// and refuses it once the VM has ended.
    async fn qmp(&self, op: Op) -> Result<(), EngineError> {
        enter(&self.shared, op, &self.model.name).await?;
        self.model.unless_hung(qmp_timeout(&self.shared)).await?;
        match self.model.exit_status() {
            Some(e) => Err(exited(&e)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl VmHandle for FakeHandle {
    fn name(&self) -> &str {
        &self.model.name
    }
    fn spec(&self) -> &VmSpec {
        &self.model.spec
    }
    fn pid(&self) -> u32 {
        self.model.pid
    }
    fn exit_status(&self) -> Option<VmExit> {
        self.model.exit_status()
    }
    fn agent(&self) -> Result<&AgentClient, EngineError> {
        if self.model.spec.agent {
            Ok(&self.agent)
        } else {
            Err(EngineError::AgentChannel("this VM has no agent".into()))
        }
    }
    fn console_log(&self) -> PathBuf {
        self.model.run_dir.join("console.log")
    }
    fn memory_limit_mib(&self) -> Option<u64> {
        *lock(&self.model.memory_limit_mib)
    }
    fn memory_private_bytes(&self) -> Option<u64> {
        self.model
            .memory_limit_mib()
            .map(|_| self.model.memory_private_bytes.load(Ordering::SeqCst))
    }
    fn set_memory_limit_mib(&self, mib: u64) -> Result<(), EngineError> {
        *lock(&self.model.memory_limit_mib) = Some(mib);
        Ok(())
    }
    fn kill_now(&self) {
        // SIGKILL needs no control channel: a hung fake dies too.
        self.model.exit(ExitKind::Killed);
    }
    fn set_kill_on_drop(&mut self, kill: bool) {
        self.kill_on_drop = kill;
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    async fn wait_exit(&self) -> VmExit {
        self.model.wait_exit().await
    }
    async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError> {
        tokio::select! {
            r = self.agent.wait_ready(timeout) => r,
            e = self.model.wait_exit() => Err(exited(&e)),
        }
    }
    async fn pause(&self) -> Result<(), EngineError> {
        self.qmp(Op::Pause).await?;
        self.model.phase.send_if_modified(|p| {
            let was = *p == Phase::Running;
            if was {
                *p = Phase::Paused;
            }
            was
        });
        Ok(())
    }
    async fn resume(&self) -> Result<(), EngineError> {
        self.qmp(Op::Resume).await?;
        self.model.phase.send_if_modified(|p| {
            let was = *p == Phase::Paused;
            if was {
                *p = Phase::Running;
            }
            was
        });
        Ok(())
    }
    async fn status(&self) -> Result<VmStatus, EngineError> {
        enter(&self.shared, Op::Status, &self.model.name).await?;
        self.model.unless_hung(qmp_timeout(&self.shared)).await?;
        Ok(match &*self.model.phase.borrow() {
            Phase::Running => VmStatus::Running,
            Phase::Paused => VmStatus::Paused,
            Phase::Exited(e) => VmStatus::Exited(e.clone()),
        })
    }
    async fn save(&self, path: &Path) -> Result<(), EngineError> {
        self.qmp(Op::Save).await?;
        FakeEngine::write_state(path, &self.model)?;
        self.model.phase.send_if_modified(|p| {
            let was = *p == Phase::Running;
            if was {
                *p = Phase::Paused;
            }
            was
        });
        Ok(())
    }
    async fn snapshot(&self, name: &str, state: &Path) -> Result<(), EngineError> {
        self.qmp(Op::Snapshot).await?;
        let _ = name;
        FakeEngine::write_state(state, &self.model)
    }
    async fn shutdown(&self, deadline: Duration) -> Result<VmExit, EngineError> {
        enter(&self.shared, Op::Shutdown, &self.model.name).await?;
        if let Some(e) = self.model.exit_status() {
            return Ok(e);
        }
        let hung = *self.model.hung.borrow();
        let powered = async {
            if self.shared.mode == Mode::Auto && !hung {
                self.model.exit(ExitKind::Poweroff)
            } else {
                tokio::select! {
                    () = self.model.power_go.notified() => self.model.exit(ExitKind::Poweroff),
                    e = self.model.wait_exit() => e,
                }
            }
        };
        match tokio::time::timeout(deadline, powered).await {
            Ok(e) => Ok(e),
            Err(_) => Ok(self.model.exit(ExitKind::Killed)),
        }
    }
    async fn kill(&self) -> Result<VmExit, EngineError> {
        enter(&self.shared, Op::Kill, &self.model.name).await?;
        Ok(self.model.exit(ExitKind::Killed))
    }
}

/// The test's handle on one fake VM: look at it and drive it.
#[derive(Clone)]
pub struct FakeVm {
    pub(crate) model: Arc<VmModel>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.model.fmt(f)
    }
}

impl FakeVm {
    /// The memory limit the VM runs under now (MiB), as its cgroup would.
    pub fn memory_limit_mib(&self) -> Option<u64> {
        *lock(&self.model.memory_limit_mib)
    }

    /// Makes the VM use `bytes` of memory of its own (what a child dirties).
    pub fn use_memory(&self, bytes: u64) {
        self.model
            .memory_private_bytes
            .store(bytes, Ordering::SeqCst);
    }

    /// Its name (the partition's uuid, or a pool child's future uuid).
    pub fn name(&self) -> &str {
        &self.model.name
    }
    /// Its fake pid.
    pub fn pid(&self) -> u32 {
        self.model.pid
    }
    /// The spec it was started with.
    pub fn spec(&self) -> &VmSpec {
        &self.model.spec
    }
    /// Where it is in its life.
    pub fn phase(&self) -> Phase {
        self.model.phase.borrow().clone()
    }
    /// Whether its process runs.
    pub fn is_alive(&self) -> bool {
        self.model.exit_status().is_none()
    }
    /// How it ended, if it has.
    pub fn exit_status(&self) -> Option<VmExit> {
        self.model.exit_status()
    }
    /// Its console log file.
    pub fn console_log(&self) -> PathBuf {
        self.model.run_dir.join("console.log")
    }
    /// Appends a line to its console log, as the guest printing it.
    pub fn console(&self, line: &str) {
        self.model.console(line);
    }
    /// Finishes booting (explicit mode): the agent says `Ready`.
    pub fn finish_boot(&self) {
        self.model.become_ready();
    }
    /// Lets a waiting `CompleteFork` answer (explicit mode).
    pub fn finish_identity(&self) {
        self.model.identity_go.notify_one();
    }
    /// Lets a waiting graceful stop power the guest off (explicit mode).
    pub fn finish_power_off(&self) {
        self.model.power_go.notify_one();
    }
    /// The guest powers itself off.
    pub fn power_off(&self) -> VmExit {
        self.model.exit(ExitKind::Poweroff)
    }
    /// The VM process dies on its own.
    pub fn crash(&self) -> VmExit {
        self.model.exit(ExitKind::Crashed)
    }
    /// From now on its QMP and agent calls never answer (kill still works).
    pub fn hang(&self) {
        self.model.hung.send_replace(true);
    }
    /// Its calls answer again.
    pub fn unhang(&self) {
        self.model.hung.send_replace(false);
    }
    /// How its agent answers `CompleteFork` (overrides the engine's setting).
    pub fn set_identity(&self, identity: Identity) {
        lock(&self.model.guest).identity = Some(identity);
    }
    /// The identity a child applied, once it has.
    pub fn child_config(&self) -> Option<ChildConfig> {
        lock(&self.model.guest).child.clone()
    }
    /// Its hostname as the guest knows it.
    pub fn hostname(&self) -> String {
        lock(&self.model.guest).hostname.clone()
    }
    /// A file in the guest.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.model.guest).files.get(path).cloned()
    }
    /// The commands run in it, in order.
    pub fn execs(&self) -> Vec<String> {
        lock(&self.model.guest).execs.clone()
    }
    /// How many times a pool child rehearsed its identity step.
    pub fn warmed(&self) -> u32 {
        lock(&self.model.guest).warmed
    }
    /// Whether its NICs are on their networks (a forked child's join after start).
    pub fn networks_joined(&self) -> bool {
        self.model.joined.load(Ordering::SeqCst)
    }
    /// Whether it was forked from a template.
    pub fn is_forked(&self) -> bool {
        self.model.forked
    }
    /// A guest process asks to be forked (`brood-agent fork-point`): the
    /// agent announces a fork point and returns its seq.
    pub fn announce_fork_point(&self) -> u32 {
        let seq = {
            let mut g = lock(&self.model.guest);
            let seq = g.next_seq;
            g.next_seq += 1;
            g.fork_point = Some(seq);
            seq
        };
        let point = brood_proto::GuestMsg::Point(brood_proto::Point {
            seq,
            name: brood_proto::FORK_POINT.into(),
        });
        if let Ok(f) = brood_proto::encode_frame(0, &point) {
            self.model.announce(&f);
        }
        seq
    }
    /// The engine it belongs to runs in this mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
}
