//! `FakeEngine`: an [`Engine`] whose VMs are models, not processes. It
//! implements the same `Engine` and `VmHandle` traits as the QEMU backend,
//! so a change to the boundary breaks this crate too.
//!
//! Each fake VM (`vm`) has a phase (running, paused, exited), a pid, a run
//! directory with a console log, and a guest agent (`agent`) that
//! speaks real brood-proto frames to a real [`brood_engine::AgentClient`] over a socket
//! pair. The VM table lives in an `Arc` the test keeps: a second broodd
//! started on the same engine finds the VMs that are "still running"
//! through `find_vms` and `attach`, as after a real restart.
//!
//! In [`Mode::Auto`] transitions finish by themselves (boot becomes ready
//! after a short timer, a child applies its identity at once, a graceful
//! stop powers off); in [`Mode::Explicit`] they wait until the test says so
//! through [`FakeVm`]. Failures are injected per call with
//! [`FakeEngine::fail_next`] or a rule ([`FakeEngine::fail_when`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use brood_engine::{
    Accel, AccelKind, BoxedVm, DiskSnapshotOp, DiskSpec, Engine, EngineCaps, EngineError, ExitKind,
    FoundVm, Template, VmHandle, VmSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::agent;
use crate::vm::{FakeHandle, FakeVm, GuestState, Phase, VmModel, exited};

/// An engine call, as failures are injected on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Engine::boot`].
    Boot,
    /// [`Engine::restore`].
    Restore,
    /// [`Engine::attach`].
    Attach,
    /// [`Engine::kill_found`].
    KillFound,
    /// [`Engine::save_template`].
    SaveTemplate,
    /// [`Engine::fork`].
    Fork,
    /// [`Engine::join_networks`].
    JoinNetworks,
    /// [`Engine::rehost`].
    Rehost,
    /// [`VmHandle::pause`].
    Pause,
    /// [`VmHandle::resume`].
    Resume,
    /// [`VmHandle::status`].
    Status,
    /// [`VmHandle::save`].
    Save,
    /// [`VmHandle::snapshot`].
    Snapshot,
    /// [`Engine::disk_snapshot`] and [`Engine::disk_snapshot_names`].
    DiskSnapshot,
    /// [`VmHandle::shutdown`].
    Shutdown,
    /// [`VmHandle::kill`].
    Kill,
}

/// How transitions finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On a short timer, by themselves.
    Auto,
    /// Only when the test says so ([`FakeVm::finish_boot`],
    /// [`FakeVm::finish_identity`], [`FakeVm::power_off`]).
    Explicit,
}

/// One engine call the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub op: Op,
    /// The VM it was about (its spec name; broodd uses partition uuids).
    pub vm: String,
}

/// How a child's agent answers `CompleteFork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Applies the identity and reports success (in explicit mode, once
    /// the test calls [`FakeVm::finish_identity`]).
    Apply,
    /// Applies nothing and reports this failure, as a failing
    /// identity-dependent service would.
    Fail(String),
    /// Applies it after this long.
    Delay(Duration),
    /// Never answers.
    Never,
}

/// What a command run through the fake agent prints and how it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecReply {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub code: i32,
    /// The agent fails the request with this message instead (an I/O
    /// error in the guest).
    pub agent_error: Option<String>,
}

type Rule = Box<dyn Fn(&Call) -> Option<EngineError> + Send + Sync>;
/// Scripted exec: `(vm name, command text)` to a reply, or `None` for the default.
pub type ExecRule = Arc<dyn Fn(&str, &str) -> Option<ExecReply> + Send + Sync>;

#[derive(Default)]
struct Faults {
    next: Vec<(Op, EngineError)>,
    rules: Vec<Rule>,
}

/// State the engine shares with its VMs and their agents.
pub(crate) struct Shared {
    pub(crate) mode: Mode,
    run_root: PathBuf,
    vms: Mutex<HashMap<String, Arc<VmModel>>>,
    faults: Mutex<Faults>,
    calls: Mutex<Vec<Call>>,
    next_pid: AtomicU32,
    pub(crate) identity: Mutex<Identity>,
    pub(crate) exec_rule: Mutex<Option<ExecRule>>,
    pub(crate) prepare_failure: Mutex<Option<String>>,
    pub(crate) boot_delay: Mutex<Duration>,
    /// How long a QMP command of a hung VM waits before it fails, as the
    /// real client's command timeout (30 s) would, shortened for tests.
    qmp_timeout: Mutex<Duration>,
    /// Calls held at their start until released ([`FakeEngine::hold`]).
    held: watch::Sender<std::collections::HashSet<Op>>,
    /// The internal snapshots of each disk file, as `qemu-img` would keep them.
    disk_snapshots: Mutex<HashMap<PathBuf, Vec<String>>>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not
/// hide the first failure behind others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine. Cheap to clone; clones share the VM table.
#[derive(Clone)]
pub struct FakeEngine {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEngine")
            .field("mode", &self.shared.mode)
            .field("run_root", &self.shared.run_root)
            .finish_non_exhaustive()
    }
}

/// What a fake state file (a saved VM, a template's device state) holds.
#[derive(Debug, Serialize, Deserialize)]
struct FakeState {
    fake_state: u32,
    vm: String,
    fork_point: Option<u32>,
    hostname: String,
}

impl FakeEngine {
    /// An engine whose run directories go under `run_root`.
    pub fn new(run_root: impl Into<PathBuf>, mode: Mode) -> Self {
        Self {
            shared: Arc::new(Shared {
                mode,
                run_root: run_root.into(),
                vms: Mutex::default(),
                faults: Mutex::default(),
                calls: Mutex::default(),
                next_pid: AtomicU32::new(100_000),
                identity: Mutex::new(Identity::Apply),
                exec_rule: Mutex::new(None),
                prepare_failure: Mutex::new(None),
                boot_delay: Mutex::new(Duration::from_millis(5)),
                qmp_timeout: Mutex::new(Duration::from_millis(200)),
                held: watch::Sender::new(std::collections::HashSet::new()),
                disk_snapshots: Mutex::default(),
            }),
        }
    }

    /// Its mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// The next call of `op` (on any VM) fails with `err`.
    pub fn fail_next(&self, op: Op, err: EngineError) {
        lock(&self.shared.faults).next.push((op, err));
    }

    /// Every call for which `rule` returns an error fails with it.
    pub fn fail_when(&self, rule: impl Fn(&Call) -> Option<EngineError> + Send + Sync + 'static) {
        lock(&self.shared.faults).rules.push(Box::new(rule));
    }

    /// How long a booted VM's agent takes to become ready in
    /// [`Mode::Auto`] from now on (5 ms unless set): a test can make a wait
    /// for the agent time out.
    pub fn set_boot_delay(&self, delay: Duration) {
        *lock(&self.shared.boot_delay) = delay;
    }

    /// How long a call to a hung VM waits before it fails with a timeout
    /// (200 ms unless set; QEMU's real client waits 30 s).
    pub fn set_qmp_timeout(&self, after: Duration) {
        *lock(&self.shared.qmp_timeout) = after;
    }

    /// Calls of `op` from now on wait (after being recorded) until
    /// [`FakeEngine::release`]: a test can stop an operation half done,
    /// for instance to drop it as if broodd died there.
    pub fn hold(&self, op: Op) {
        self.shared.held.send_modify(|h| {
            h.insert(op);
        });
    }

    /// Lets held calls of `op` go on.
    pub fn release(&self, op: Op) {
        self.shared.held.send_modify(|h| {
            h.remove(&op);
        });
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// How children's agents answer `CompleteFork` from now on (a VM's own
    /// setting, [`FakeVm::set_identity`], wins).
    pub fn set_identity(&self, identity: Identity) {
        *lock(&self.shared.identity) = identity;
    }

    /// Scripts exec: `rule(vm, command)` answers, or `None` for the default
    /// (`exit N`, `echo TEXT`, `hostname`, `cat FILE`; anything else prints
    /// nothing and exits 0).
    pub fn on_exec(&self, rule: impl Fn(&str, &str) -> Option<ExecReply> + Send + Sync + 'static) {
        *lock(&self.shared.exec_rule) = Some(Arc::new(rule));
    }

    /// Agents answer `PrepareFork` with this error (`None`: they reach the
    /// fork point).
    pub fn fail_prepare_fork(&self, message: Option<String>) {
        *lock(&self.shared.prepare_failure) = message;
    }

    /// Every engine call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// How many calls of `op` the engine saw.
    pub fn count(&self, op: Op) -> usize {
        lock(&self.shared.calls)
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    /// The newest VM named `name` (a partition's uuid), live or ended.
    pub fn vm(&self, name: &str) -> Option<FakeVm> {
        lock(&self.shared.vms).get(name).map(|m| FakeVm {
            model: m.clone(),
            shared: self.shared.clone(),
        })
    }

    /// The VMs whose process runs now.
    pub fn live(&self) -> Vec<FakeVm> {
        let mut v: Vec<FakeVm> = lock(&self.shared.vms)
            .values()
            .filter(|m| m.exit_status().is_none())
            .map(|m| FakeVm {
                model: m.clone(),
                shared: self.shared.clone(),
            })
            .collect();
        v.sort_by_key(FakeVm::pid);
        v
    }

    /// Records the call and returns the failure injected for it, if any.
    fn check(&self, op: Op, vm: &str) -> Result<(), EngineError> {
        check(&self.shared, op, vm)
    }

    fn new_model(&self, spec: &VmSpec, phase: Phase, forked: bool) -> Arc<VmModel> {
        let run_dir = self.shared.run_root.join(&spec.name);
        // A new process starts with a fresh run directory, as QEMU's does.
        let _ = std::fs::remove_dir_all(&run_dir);
        let _ = std::fs::create_dir_all(&run_dir);
        let pid = self.shared.next_pid.fetch_add(1, Ordering::SeqCst);
        let m = Arc::new(VmModel {
            name: spec.name.clone(),
            pid,
            spec: spec.clone(),
            run_dir,
            phase: watch::Sender::new(phase),
            serving: watch::Sender::new(false),
            hung: watch::Sender::new(false),
            guest: Mutex::new(GuestState {
                hostname: "brood".into(),
                next_seq: 1,
                ..GuestState::default()
            }),
            conns: Mutex::default(),
            joined: AtomicBool::new(!forked),
            forked,
            identity_go: Notify::new(),
            power_go: Notify::new(),
            memory_limit_mib: std::sync::Mutex::new(spec.limits.memory_limit_mib),
            memory_private_bytes: std::sync::atomic::AtomicU64::new(0),
        });
        m.console(&format!("fake: process {pid} started for {}", spec.name));
        lock(&self.shared.vms).insert(spec.name.clone(), m.clone());
        m
    }

    fn live_named(&self, name: &str) -> Option<Arc<VmModel>> {
        lock(&self.shared.vms)
            .get(name)
            .filter(|m| m.exit_status().is_none())
            .cloned()
    }

    fn refuse_duplicate(&self, spec: &VmSpec) -> Result<(), EngineError> {
        if self.live_named(&spec.name).is_some() {
            return Err(EngineError::InvalidState {
                op: "start",
                state: format!("already running as {}", spec.name),
            });
        }
        Ok(())
    }

    /// A handle with a fresh agent connection.
    fn handle(&self, model: Arc<VmModel>) -> Result<BoxedVm, EngineError> {
        let agent = agent::connect(self.shared.clone(), model.clone())?;
        Ok(Box::new(FakeHandle {
            model,
            agent,
            shared: self.shared.clone(),
            kill_on_drop: false,
        }))
    }

    fn read_state(path: &Path) -> Result<FakeState, EngineError> {
        let text = std::fs::read(path)
            .map_err(|e| EngineError::host(format!("read state {}", path.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| {
            EngineError::Migration(format!("{} is not a fake VM state: {e}", path.display()))
        })
    }

    pub(crate) fn write_state(path: &Path, model: &VmModel) -> Result<(), EngineError> {
        let g = lock(&model.guest);
        let st = FakeState {
            fake_state: 1,
            vm: model.name.clone(),
            fork_point: g.fork_point,
            hostname: g.hostname.clone(),
        };
        drop(g);
        let text = serde_json::to_vec(&st).map_err(|e| EngineError::Migration(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| EngineError::host(format!("write state {}", path.display()), e))
    }
}

pub(crate) fn qmp_timeout(shared: &Shared) -> Duration {
    *lock(&shared.qmp_timeout)
}

/// Records an async call, fails it as injected, and waits while it is held.
pub(crate) async fn enter(shared: &Shared, op: Op, vm: &str) -> Result<(), EngineError> {
    check(shared, op, vm)?;
    let mut rx = shared.held.subscribe();
    let _ = rx.wait_for(|h| !h.contains(&op)).await;
    Ok(())
}

pub(crate) fn check(shared: &Shared, op: Op, vm: &str) -> Result<(), EngineError> {
    let call = Call {
        op,
        vm: vm.to_string(),
    };
    lock(&shared.calls).push(call.clone());
    let mut f = lock(&shared.faults);
    if let Some(i) = f.next.iter().position(|(o, _)| *o == op) {
        let (_, e) = f.next.remove(i);
        return Err(e);
    }
    for r in &f.rules {
        if let Some(e) = r(&call) {
            return Err(e);
        }
    }
    Ok(())
}

/// The fake handle of `vm`, or an error naming the operation.
fn fake_of<'a>(vm: &'a dyn VmHandle, op: &'static str) -> Result<&'a FakeHandle, EngineError> {
    vm.as_any()
        .downcast_ref::<FakeHandle>()
        .ok_or(EngineError::InvalidState {
            op,
            state: "run by another engine".into(),
        })
}

#[async_trait]
impl Engine for FakeEngine {
    fn caps(&self) -> EngineCaps {
        EngineCaps {
            engine: "fake",
            accel: AccelKind::Tcg,
            kvm: false,
            save_restore: true,
            fork: true,
            rehost: true,
            attach: true,
            max_vcpus: brood_engine::spec::MAX_VCPUS,
        }
    }

    fn run_root(&self) -> PathBuf {
        self.shared.run_root.clone()
    }

    async fn boot(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        enter(&self.shared, Op::Boot, &spec.name).await?;
        spec.validate()?;
        self.refuse_duplicate(spec)?;
        let m = self.new_model(spec, Phase::Running, false);
        let h = self.handle(m.clone())?;
        // A service member boots to its trigger point, where the real
        // agent announces it (brood-proto `service`).
        let trigger = spec.cmdline.contains(brood_proto::service::TRIGGER_CMDLINE);
        if self.shared.mode == Mode::Auto {
            let delay = *lock(&self.shared.boot_delay);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                m.become_ready();
                if trigger {
                    m.announce_point(brood_proto::service::TRIGGER_POINT);
                }
            });
        }
        Ok(h)
    }

    async fn restore(&self, spec: &VmSpec, state: &Path) -> Result<BoxedVm, EngineError> {
        enter(&self.shared, Op::Restore, &spec.name).await?;
        spec.validate()?;
        let st = Self::read_state(state)?;
        self.refuse_duplicate(spec)?;
        let m = self.new_model(spec, Phase::Running, false);
        {
            let mut g = lock(&m.guest);
            g.hostname = st.hostname;
            g.fork_point = st.fork_point;
        }
        // The agent announced itself long ago, to the VM that was saved.
        m.serving.send_replace(true);
        let h = self.handle(m)?;
        if let Ok(a) = h.agent() {
            a.assume_ready().await?;
        }
        Ok(h)
    }

    async fn attach(&self, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        enter(&self.shared, Op::Attach, &spec.name).await?;
        let Some(m) = self.live_named(&spec.name) else {
            return Err(EngineError::ProcessExited {
                status: "no such process".into(),
                detail: String::new(),
            });
        };
        let ready = *m.serving.borrow() && !m.forked;
        let h = self.handle(m)?;
        if ready && let Ok(a) = h.agent() {
            // As the QEMU backend does: the agent said Ready to the old connection.
            let a = a.clone();
            tokio::spawn(async move {
                let _ = a.assume_ready().await;
            });
        }
        Ok(h)
    }

    fn find_vms(&self) -> Vec<FoundVm> {
        self.live()
            .into_iter()
            .map(|v| FoundVm {
                name: v.name().to_string(),
                pid: i32::try_from(v.pid()).unwrap_or(i32::MAX),
            })
            .collect()
    }

    fn kill_found(&self, vm: &FoundVm) -> Result<(), EngineError> {
        self.check(Op::KillFound, &vm.name)?;
        if let Some(m) = self.live_named(&vm.name)
            && i32::try_from(m.pid).ok() == Some(vm.pid)
        {
            m.exit(ExitKind::Killed);
        }
        Ok(())
    }

    fn remove_run_dirs(&self, keep: &(dyn Fn(&str) -> bool + Sync)) {
        let Ok(dir) = std::fs::read_dir(&self.shared.run_root) else {
            return;
        };
        for e in dir.flatten() {
            if !keep(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    async fn disk_snapshot(
        &self,
        disk: &DiskSpec,
        op: DiskSnapshotOp,
        name: &str,
    ) -> Result<(), EngineError> {
        enter(
            &self.shared,
            Op::DiskSnapshot,
            &disk.path.display().to_string(),
        )
        .await?;
        let mut all = lock(&self.shared.disk_snapshots);
        let tags = all.entry(disk.path.clone()).or_default();
        let has = tags.iter().any(|t| t == name);
        match op {
            DiskSnapshotOp::Create if has => Err(EngineError::InvalidSpec(format!(
                "{} already has snapshot {name}",
                disk.path.display()
            ))),
            DiskSnapshotOp::Create => {
                tags.push(name.to_string());
                Ok(())
            }
            DiskSnapshotOp::Apply | DiskSnapshotOp::Delete if !has => Err(
                EngineError::InvalidSpec(format!("{} has no snapshot {name}", disk.path.display())),
            ),
            DiskSnapshotOp::Apply => Ok(()),
            DiskSnapshotOp::Delete => {
                tags.retain(|t| t != name);
                Ok(())
            }
        }
    }

    async fn disk_snapshot_names(&self, disk: &DiskSpec) -> Result<Vec<String>, EngineError> {
        enter(
            &self.shared,
            Op::DiskSnapshot,
            &disk.path.display().to_string(),
        )
        .await?;
        Ok(lock(&self.shared.disk_snapshots)
            .get(&disk.path)
            .cloned()
            .unwrap_or_default())
    }

    async fn save_template(&self, vm: &dyn VmHandle, dir: &Path) -> Result<Template, EngineError> {
        enter(&self.shared, Op::SaveTemplate, vm.name()).await?;
        let h = fake_of(vm, "make a template of")?;
        let m = &h.model;
        m.unless_hung(qmp_timeout(&self.shared)).await?;
        if let Some(e) = m.exit_status() {
            return Err(exited(&e));
        }
        if lock(&m.guest).fork_point.is_none() {
            return Err(EngineError::InvalidState {
                op: "make a template of",
                state: "not waiting at its fork point".into(),
            });
        }
        let host = |what: &str, e| EngineError::host(format!("{what} {}", dir.display()), e);
        std::fs::create_dir_all(dir).map_err(|e| host("create", e))?;
        let tpl = Template {
            dir: dir.to_path_buf(),
            spec: m.spec.clone(),
            accel: Accel::Tcg { tsc_khz: None },
            state_bytes: 0,
        };
        std::fs::write(tpl.mem_path(), b"fake guest memory").map_err(|e| host("write", e))?;
        Self::write_state(&tpl.state_path(), m)?;
        let state_bytes = std::fs::metadata(tpl.state_path()).map_or(0, |md| md.len());
        let tpl = Template { state_bytes, ..tpl };
        let text = serde_json::to_vec_pretty(&tpl)
            .map_err(|e| EngineError::Migration(format!("encode the template: {e}")))?;
        std::fs::write(dir.join(brood_engine::template::TEMPLATE_FILE), text)
            .map_err(|e| host("write", e))?;
        m.exit(ExitKind::Quit);
        Ok(tpl)
    }

    async fn fork(&self, tpl: &Template, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        enter(&self.shared, Op::Fork, &spec.name).await?;
        spec.validate()?;
        if !tpl.mem_path().is_file() {
            return Err(EngineError::InvalidSpec(format!(
                "template {} has no memory file",
                tpl.dir.display()
            )));
        }
        let st = Self::read_state(&tpl.state_path())?;
        let Some(seq) = st.fork_point else {
            return Err(EngineError::Migration(
                "the template's state has no fork point".into(),
            ));
        };
        self.refuse_duplicate(spec)?;
        let m = self.new_model(spec, Phase::Running, true);
        {
            let mut g = lock(&m.guest);
            g.hostname = st.hostname;
            g.fork_point = Some(seq);
            g.next_seq = seq + 1;
        }
        // The guest resumes inside its agent's fork-point wait: it answers,
        // and says Ready only once it has its identity.
        m.serving.send_replace(true);
        self.handle(m)
    }

    fn join_networks(&self, vm: &dyn VmHandle) -> Result<(), EngineError> {
        check(&self.shared, Op::JoinNetworks, vm.name())?;
        fake_of(vm, "connect the NICs of")?
            .model
            .joined
            .store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn rehost(&self, vm: &dyn VmHandle, spec: &VmSpec) -> Result<BoxedVm, EngineError> {
        enter(&self.shared, Op::Rehost, vm.name()).await?;
        let old = &fake_of(vm, "re-host")?.model;
        old.unless_hung(qmp_timeout(&self.shared)).await?;
        if let Some(e) = old.exit_status() {
            return Err(exited(&e));
        }
        let guest = lock(&old.guest).clone();
        let m = self.new_model(spec, Phase::Paused, false);
        *lock(&m.guest) = guest;
        m.serving.send_replace(true);
        old.exit(ExitKind::Quit);
        self.handle(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_engine::VmStatus;
    use brood_proto::{ChildConfig, ErrorKind, ExecRequest};

    fn setup(mode: Mode) -> (tempfile::TempDir, FakeEngine, VmSpec) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, crate::app::fake_kernel()).unwrap();
        let fake = FakeEngine::new(dir.path().join("run"), mode);
        (dir, fake, VmSpec::new("vm1", kernel))
    }

    fn child_config(hostname: &str) -> ChildConfig {
        ChildConfig {
            index: 0,
            hostname: hostname.into(),
            macs: vec![[0x52, 0x54, 1, 2, 3, 4]],
            ipv4: None,
            identity: Some("dom-a".into()),
            entropy: vec![7; 64],
            machine_id: "0".repeat(32),
            values: Vec::new(),
            time_unix_ns: 0,
        }
    }

    #[tokio::test]
    async fn a_booted_vm_has_a_real_agent_and_is_found_and_attached() {
        let (_d, fake, spec) = setup(Mode::Auto);
        let vm = fake.boot(&spec).await.unwrap();
        vm.wait_ready(Duration::from_secs(5)).await.unwrap();
        let out = vm
            .agent()
            .unwrap()
            .exec(&ExecRequest::shell("echo hi"))
            .await
            .unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.status.code),
            (&b"hi\n"[..], Some(0))
        );
        assert_eq!(fake.find_vms().len(), 1);
        assert!(matches!(
            fake.boot(&spec).await,
            Err(EngineError::InvalidState { .. })
        ));
        // A second handle, as a restarted broodd gets.
        let again = fake.attach(&spec).await.unwrap();
        assert_eq!(again.pid(), vm.pid());
        let info = again.agent().unwrap().info().await.unwrap();
        assert_eq!(info.cpus, 1);
        std::fs::metadata(again.console_log()).unwrap();
        fake.vm("vm1").unwrap().crash();
        assert_eq!(vm.wait_exit().await.kind, ExitKind::Crashed);
        assert!(
            again.agent().unwrap().info().await.is_err(),
            "the channel closed"
        );
        assert!(fake.find_vms().is_empty());
        assert!(fake.attach(&spec).await.is_err());
    }

    #[tokio::test]
    async fn failures_are_injected_once_or_by_rule() {
        let (_d, fake, spec) = setup(Mode::Auto);
        fake.fail_next(Op::Boot, EngineError::Unsupported { op: "boot" });
        assert!(matches!(
            fake.boot(&spec).await,
            Err(EngineError::Unsupported { op: "boot" })
        ));
        let vm = fake.boot(&spec).await.unwrap();
        fake.fail_when(|c| {
            (c.op == Op::Pause && c.vm == "vm1").then_some(EngineError::Unsupported { op: "stop" })
        });
        assert!(vm.pause().await.is_err());
        assert!(vm.pause().await.is_err(), "a rule stays");
        fake.clear_failures();
        vm.pause().await.unwrap();
        assert_eq!(vm.status().await.unwrap(), VmStatus::Paused);
        assert_eq!(fake.count(Op::Boot), 2);
        assert_eq!(fake.count(Op::Pause), 3);
    }

    #[tokio::test]
    async fn explicit_mode_waits_for_the_test_and_hung_calls_time_out() {
        let (_d, fake, spec) = setup(Mode::Explicit);
        let vm = fake.boot(&spec).await.unwrap();
        assert!(vm.wait_ready(Duration::from_millis(20)).await.is_err());
        fake.vm("vm1").unwrap().finish_boot();
        vm.wait_ready(Duration::from_secs(5)).await.unwrap();
        fake.vm("vm1").unwrap().hang();
        fake.set_qmp_timeout(Duration::from_millis(10));
        assert!(matches!(
            vm.status().await,
            Err(EngineError::Timeout { .. })
        ));
        assert_eq!(vm.kill().await.unwrap().kind, ExitKind::Killed);
    }

    #[tokio::test]
    async fn a_template_forks_children_that_take_their_identity() {
        let (d, fake, spec) = setup(Mode::Auto);
        let vm = fake.boot(&spec).await.unwrap();
        vm.wait_ready(Duration::from_secs(5)).await.unwrap();
        let tdir = d.path().join("tpl");
        assert!(
            fake.save_template(vm.as_ref(), &tdir).await.is_err(),
            "not at a fork point"
        );
        let (seq, _) = vm
            .agent()
            .unwrap()
            .prepare_fork(Duration::from_secs(5))
            .await
            .unwrap();
        let tpl = fake.save_template(vm.as_ref(), &tdir).await.unwrap();
        assert!(vm.exit_status().is_some(), "the parent ends");
        assert_eq!(Template::load(&tdir).unwrap(), tpl);
        let child = fake
            .fork(&tpl, &tpl.child_spec("kid", Vec::new()).unwrap())
            .await
            .unwrap();
        let agent = child.agent().unwrap();
        agent.warm_fork(seq, Duration::from_secs(5)).await.unwrap();
        let wrong = agent
            .complete_fork(seq + 7, child_config("kid"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(wrong, EngineError::Agent(e) if e.kind == ErrorKind::NoSuchPoint));
        let report = agent
            .complete_fork(seq, child_config("kid"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(report.failed, None);
        let kid = fake.vm("kid").unwrap();
        assert_eq!(kid.hostname(), "kid");
        assert_eq!(
            kid.child_config().unwrap().identity.as_deref(),
            Some("dom-a")
        );
        assert_eq!(kid.warmed(), 1);
        assert!(!kid.networks_joined());
        fake.join_networks(child.as_ref()).unwrap();
        assert!(kid.networks_joined());
        let rehosted = fake
            .rehost(
                child.as_ref(),
                &VmSpec {
                    name: "kid-rehost".into(),
                    ..spec
                },
            )
            .await
            .unwrap();
        assert!(child.exit_status().is_some());
        assert_eq!(rehosted.status().await.unwrap(), VmStatus::Paused);
    }

    #[tokio::test]
    async fn a_held_call_waits_until_released() {
        let (_d, fake, spec) = setup(Mode::Auto);
        fake.hold(Op::Boot);
        let f2 = fake.clone();
        let s2 = spec.clone();
        let boot = tokio::spawn(async move { f2.boot(&s2).await.map(|v| v.pid()) });
        while fake.count(Op::Boot) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(fake.live().is_empty(), "held before the VM exists");
        fake.release(Op::Boot);
        let pid = boot.await.unwrap().unwrap();
        assert_eq!(fake.live()[0].pid(), pid);
    }
}
