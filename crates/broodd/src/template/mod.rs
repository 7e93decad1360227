//! Templates: a running partition frozen at its fork point ([`freeze`]),
//! the registry of templates broodd can fork from ([`Templates`]), and the
//! warm children each template keeps: child VMs that have loaded its
//! state, rehearsed the identity step and wait paused, so a fork only
//! resumes one. A guest that asks to be forked itself (`brood-agent
//! fork-point`) is frozen by [`points`].

pub mod freeze;
pub mod keep;
pub mod points;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use brood_engine::{BoxedVm, DiskSpec, Template};
use tracing::warn;
use uuid::Uuid;

use crate::host::config::QEMU_OVERHEAD_MIB;
use crate::host::{Host, HostError, HostResult, chain, disk};

/// Warm children kept per template unless the template says otherwise.
pub const DEFAULT_WARM: u32 = 2;
/// Most warm children a template may keep.
pub const MAX_WARM: u32 = 64;
/// How long a warm child may take to rehearse its identity step.
const WARM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long deleting a template waits for its filler to stand down.
const FILLER_STOP: Duration = Duration::from_secs(60);

/// The templates broodd can fork from, by uuid (a feature's shared state).
#[derive(Debug, Default)]
pub struct Templates {
    by_uuid: Mutex<HashMap<Uuid, Arc<TemplateRt>>>,
}

impl Templates {
    /// A template's runtime state.
    pub fn get(&self, uuid: Uuid) -> Option<Arc<TemplateRt>> {
        self.by_uuid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uuid)
            .cloned()
    }

    /// Records a template.
    pub fn insert(&self, t: Arc<TemplateRt>) {
        self.by_uuid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(t.uuid, t);
    }

    /// Every template.
    pub fn all(&self) -> Vec<Arc<TemplateRt>> {
        self.by_uuid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Forgets a template.
    pub fn remove(&self, uuid: Uuid) -> Option<Arc<TemplateRt>> {
        self.by_uuid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uuid)
    }
}

/// A warm child, named by the uuid it will have as a partition: its VM has
/// loaded the template's state, its agent has rehearsed the identity step
/// (so under TCG the real one runs on translated code), and it is paused,
/// its NICs off the network, until a fork hands it out.
#[derive(Debug)]
pub struct Warm {
    /// The future child's uuid.
    pub uuid: Uuid,
    /// The paused VM.
    pub vm: BoxedVm,
}

/// A template's runtime state.
#[derive(Debug)]
pub struct TemplateRt {
    /// The template partition.
    pub uuid: Uuid,
    /// The engine's template.
    pub tpl: Template,
    /// The agent's fork point.
    pub seq: u32,
    /// Warm children waiting.
    warm: tokio::sync::Mutex<VecDeque<Warm>>,
    /// How many warm children it is refilled to.
    pub warm_target: AtomicU32,
    /// Whether a filler task runs (true) or not.
    filling: tokio::sync::watch::Sender<bool>,
    /// Forks in progress: warm children are made only when there are none,
    /// so a refill does not take CPU from children being started.
    forking: AtomicUsize,
    fork_done: tokio::sync::Notify,
    /// The warm child being made right now, if any.
    preparing: Mutex<Option<Uuid>>,
    /// Serializes child indices.
    pub fork_lock: tokio::sync::Mutex<()>,
}

impl TemplateRt {
    /// A template with no warm children yet.
    pub fn new(uuid: Uuid, tpl: Template, seq: u32, warm_target: u32) -> Self {
        Self {
            uuid,
            tpl,
            seq,
            warm: tokio::sync::Mutex::default(),
            warm_target: AtomicU32::new(warm_target),
            filling: tokio::sync::watch::channel(false).0,
            forking: AtomicUsize::new(0),
            fork_done: tokio::sync::Notify::new(),
            preparing: Mutex::new(None),
            fork_lock: tokio::sync::Mutex::default(),
        }
    }

    /// Takes a warm child, if one is alive.
    pub async fn take(&self) -> Option<Warm> {
        let mut warm = self.warm.lock().await;
        while let Some(w) = warm.pop_front() {
            if w.vm.exit_status().is_none() {
                return Some(w);
            }
        }
        None
    }

    /// Returns an unused warm child.
    pub async fn put_back(&self, w: Warm) {
        self.warm.lock().await.push_front(w);
    }

    /// The uuids of the warm children, including one being made.
    ///
    /// The one being made is read first: the filler queues a child before
    /// it clears `preparing`, so a child whose QEMU was found before this
    /// call is in one list or the other. Read the other way round, a child
    /// queued between the two reads was in neither (verify called it an
    /// orphan).
    pub async fn warm_uuids(&self) -> Vec<Uuid> {
        let preparing = *self
            .preparing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<Uuid> = self.warm.lock().await.iter().map(|w| w.uuid).collect();
        v.extend(preparing);
        v
    }

    /// Warm children waiting now.
    pub async fn ready(&self) -> u32 {
        u32::try_from(self.warm.lock().await.len()).unwrap_or(u32::MAX)
    }

    /// Kills every warm child.
    pub async fn drain(&self, host: &Host) {
        let all: Vec<Warm> = self.warm.lock().await.drain(..).collect();
        for w in all {
            let _ = w.vm.kill().await;
            let _ = tokio::fs::remove_dir_all(host.paths.disk_dir(w.uuid)).await;
        }
    }

    /// Marks a fork in progress until the guard is dropped.
    pub fn forking(self: &Arc<Self>) -> ForkGuard {
        self.forking.fetch_add(1, Ordering::SeqCst);
        ForkGuard(self.clone())
    }

    /// Waits until no filler runs for this template (or `timeout` passes).
    pub async fn filler_stopped(&self, timeout: Duration) {
        let mut rx = self.filling.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|f| !*f)).await;
    }
}

/// A fork in progress on a template.
#[derive(Debug)]
pub struct ForkGuard(Arc<TemplateRt>);

impl Drop for ForkGuard {
    fn drop(&mut self) {
        if self.0.forking.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.fork_done.notify_waiters();
        }
    }
}

/// Creates a child's disks: qcow2 overlays over the template's frozen
/// disks. With `fresh` false an overlay that exists is kept (a persistent
/// child starting again).
pub async fn child_disks(
    host: &Host,
    tpl: &Template,
    uuid: Uuid,
    fresh: bool,
) -> HostResult<Vec<DiskSpec>> {
    let dir = host.paths.disk_dir(uuid);
    if !tpl.spec.disks.is_empty() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    }
    let mut disks = Vec::new();
    for base in &tpl.spec.disks {
        let file = base
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("disk.qcow2"));
        let overlay = dir.join(file);
        if fresh || !overlay.exists() {
            let _ = tokio::fs::remove_file(&overlay).await;
            disk::overlay(&base.path, &overlay).await?;
        }
        // A child keeps its template's caps on each disk.
        disks.push(DiskSpec {
            throttle: base.throttle,
            ..DiskSpec::own_qcow2(overlay)
        });
    }
    Ok(disks)
}

/// Makes a child VM of `t` that will be partition `uuid`: overlays, the
/// engine's fork, the identity step rehearsed, paused.
pub async fn prepare(
    host: &Arc<Host>,
    t: &TemplateRt,
    uuid: Uuid,
    fresh: bool,
) -> HostResult<Warm> {
    let disks = child_disks(host, &t.tpl, uuid, fresh).await?;
    let mut spec = t
        .tpl
        .child_spec(&uuid.to_string(), disks)
        .map_err(|e| HostError::engine("make a child spec", e))?;
    // A recorded child with disk channels reaches its disks through its
    // storage I/O partitions (a warm child, not recorded yet, has none).
    crate::io::storage::use_disks(host, uuid, &mut spec).await?;
    crate::network::use_channels(host, uuid, &mut spec).await?;
    // Until a fork claims it (and `memory::fit` lowers its limit to its
    // charge), a warm child is broodd's, bounded by its template's whole
    // charge: a template saved before every VM had a limit gets one here.
    let top = spec.mem_mib.saturating_add(QEMU_OVERHEAD_MIB);
    spec.limits.memory_limit_mib = Some(spec.limits.memory_limit_mib.map_or(top, |l| l.max(top)));
    let mut vm = match host.engine.fork(&t.tpl, &spec).await {
        Ok(vm) => vm,
        Err(e) => {
            if fresh {
                let _ = tokio::fs::remove_dir_all(host.paths.disk_dir(uuid)).await;
            }
            return Err(HostError::engine("start a child", e));
        }
    };
    // Nobody's VM yet: if broodd drops it (shutting down), it goes.
    vm.set_kill_on_drop(true);
    if let Ok(agent) = vm.agent()
        && let Err(e) = agent.warm_fork(t.seq, WARM_TIMEOUT).await
    {
        // Only slower: the identity step will be translated when it runs.
        warn!(template = %t.uuid, "a warm child could not rehearse its identity step: {e}");
    }
    if let Err(e) = vm.pause().await {
        let _ = vm.kill().await;
        return Err(HostError::engine("pause a warm child", e));
    }
    Ok(Warm { uuid, vm })
}

/// Tops the template's warm children up in the background (one filler at a time).
pub fn refill(host: Arc<Host>, t: Arc<TemplateRt>) {
    if t.filling.send_replace(true) {
        return;
    }
    tokio::spawn(async move {
        let templates = host.feature::<Templates>();
        loop {
            if host.is_stopping() || templates.get(t.uuid).is_none() {
                break;
            }
            if t.forking.load(Ordering::SeqCst) > 0 {
                let done = t.fork_done.notified();
                if t.forking.load(Ordering::SeqCst) > 0 {
                    // A bound, in case a guard drops between the check and the wait.
                    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
                }
                continue;
            }
            let have = t.warm.lock().await.len();
            if have >= t.warm_target.load(Ordering::SeqCst) as usize {
                break;
            }
            let uuid = Uuid::new_v4();
            *t.preparing.lock().unwrap_or_else(PoisonError::into_inner) = Some(uuid);
            // Into the queue before it stops being "preparing": verify must
            // see it in one place or the other.
            let made = prepare(&host, &t, uuid, true).await;
            let failed = match made {
                Ok(w) => {
                    t.warm.lock().await.push_back(w);
                    None
                }
                Err(e) => Some(e),
            };
            *t.preparing.lock().unwrap_or_else(PoisonError::into_inner) = None;
            if let Some(e) = failed {
                warn!(template = %t.uuid, "making a warm child failed: {}", chain(&e));
                break;
            }
        }
        // A template deleted while we filled: kill what we made, before
        // saying the filler stopped. `forget` waits for that and then
        // returns; were the drain after it, a warm child could still be
        // dying when the delete answered (verify saw an orphan QEMU).
        if templates.get(t.uuid).is_none() {
            t.drain(&host).await;
        }
        t.filling.send_replace(false);
    });
}

/// Starts refilling every template (after start-up reconciliation, which
/// kills VMs the ledger does not know, such as an old broodd's warm children).
pub fn refill_all(host: &Arc<Host>) {
    for t in host.feature::<Templates>().all() {
        refill(host.clone(), t);
    }
}

/// Kills every template's warm children (broodd's cache, not anyone's VMs).
pub async fn drain_all(host: &Host) {
    for t in host.feature::<Templates>().all() {
        t.drain(host).await;
    }
}

/// Deletes a template's runtime state: waits for its filler, kills its
/// warm children.
pub async fn forget(host: &Host, uuid: Uuid) {
    if let Some(t) = host.feature::<Templates>().remove(uuid) {
        t.filler_stopped(FILLER_STOP).await;
        t.drain(host).await;
    }
}
