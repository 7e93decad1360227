//! Templates: a running partition frozen at its fork point, and the pool of
//! child QEMUs each template keeps started and waiting.
//!
//! A template is the partition itself, moved to stage `template` in one
//! ledger transaction that keeps its memory (the memory file children map)
//! and its disks (now read-only bases) and returns its vCPUs and NICs. Its
//! directory on the tmpfs holds the memory file and the device state. A
//! child made a template in turn is first re-hosted into a QEMU with a
//! memory file of its own. Templates survive broodd restarts: the ledger
//! says which partitions are templates, the directory holds the rest.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use brood_api as api;
use brood_engine::DiskSpec;
use brood_engine::qemu::fork::Template;
use brood_ledger::{Op, PartitionPatch, PartitionRecord, Resources, RunState, Stage};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use crate::daemon::Daemon;
use crate::error::{ApiError, ApiResult, chain};
use crate::{convert, ops};

/// Children kept waiting per template unless the template says otherwise.
pub const DEFAULT_POOL: u32 = 2;
/// Largest pool a template may ask for.
pub const MAX_POOL: u32 = 64;
/// How long a pool child may take to rehearse its identity step.
const WARM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long the agent may take to reach its fork point (independent services run first).
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What the ledger keeps about a template or a child (`PartitionRecord.fork`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForkData {
    /// A template.
    Template(TemplateData),
    /// A forked child.
    Child(Box<ChildData>),
}

/// A template's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateData {
    /// Its directory (memory file, device state).
    pub dir: PathBuf,
    /// The agent's fork point.
    pub seq: u32,
    /// Children kept waiting.
    pub pool_size: u32,
    /// The index the next child gets.
    pub next_index: u32,
    /// Size of the device state.
    pub state_bytes: u64,
}

/// A child's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildData {
    /// Its number among the template's children.
    pub index: u32,
    /// How far it is.
    pub status: api::ChildStatus,
    /// What failed.
    pub error: Option<String>,
    /// Its MACs, one per NIC.
    pub macs: Vec<String>,
    /// IPv4 address/prefix.
    pub ipv4: Option<String>,
    /// Gateway.
    pub gateway: Option<String>,
    /// Domain identity.
    pub identity: Option<String>,
    /// The pool its identity came from.
    pub identity_pool: Option<String>,
    /// The pool its address came from.
    pub ip_pool: Option<String>,
    /// Key-values for its services.
    pub values: BTreeMap<String, String>,
    /// Its overlay survives stop and start.
    pub persistent: bool,
    /// Its machine-id.
    pub machine_id: String,
    /// Request to running, ms.
    pub running_ms: Option<f64>,
    /// Request to ready, ms.
    pub ready_ms: Option<f64>,
}

/// Reads the fork details of a record.
pub fn fork_data(rec: &PartitionRecord) -> Option<ForkData> {
    rec.fork
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// A child waiting in a template's pool, named by the uuid it will have:
/// its QEMU has loaded the template's state, its agent has rehearsed the
/// identity step (so under TCG the real one runs on translated code), and
/// it is paused, with its taps off the network, until it is handed out.
#[derive(Debug)]
pub struct Prepared {
    /// The future child's uuid.
    pub uuid: Uuid,
    /// The paused VM.
    pub vm: brood_engine::Vm,
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
    /// Waiting children.
    pool: tokio::sync::Mutex<VecDeque<Prepared>>,
    /// Target pool size.
    pub pool_size: AtomicU32,
    filling: AtomicBool,
    /// Forks in progress: the pool is refilled when there are none, so the
    /// refill does not take CPU from children being started.
    pub forking: std::sync::atomic::AtomicUsize,
    /// The child being made for the pool right now, if any.
    preparing: std::sync::Mutex<Option<Uuid>>,
    /// Serializes child index and MAC allocation.
    pub fork_lock: tokio::sync::Mutex<()>,
}

impl TemplateRt {
    fn new(uuid: Uuid, tpl: Template, seq: u32, pool_size: u32) -> Self {
        Self {
            uuid,
            tpl,
            seq,
            pool: tokio::sync::Mutex::default(),
            pool_size: AtomicU32::new(pool_size),
            filling: AtomicBool::new(false),
            preparing: std::sync::Mutex::new(None),
            forking: std::sync::atomic::AtomicUsize::new(0),
            fork_lock: tokio::sync::Mutex::default(),
        }
    }

    /// Takes a waiting child, if one is alive.
    pub async fn take(&self) -> Option<Prepared> {
        let mut pool = self.pool.lock().await;
        while let Some(p) = pool.pop_front() {
            if p.vm.exit_status().is_none() {
                return Some(p);
            }
        }
        None
    }

    /// Returns an unused waiting child to the pool.
    pub async fn put_back(&self, p: Prepared) {
        self.pool.lock().await.push_front(p);
    }

    /// The uuids of the children waiting now.
    pub async fn pool_uuids(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self.pool.lock().await.iter().map(|p| p.uuid).collect();
        v.extend(
            *self
                .preparing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        v
    }

    /// Children waiting now.
    pub async fn ready(&self) -> u32 {
        u32::try_from(self.pool.lock().await.len()).unwrap_or(u32::MAX)
    }

    /// Kills every waiting child.
    pub async fn drain(&self, d: &Daemon) {
        let all: Vec<Prepared> = self.pool.lock().await.drain(..).collect();
        for p in all {
            let _ = p.vm.kill().await;
            let _ = tokio::fs::remove_dir_all(d.paths.disk_dir(p.uuid)).await;
        }
    }
}

/// Creates a child's disks: qcow2 overlays over the template's frozen disks.
pub async fn child_disks(
    d: &Daemon,
    tpl: &Template,
    uuid: Uuid,
    fresh: bool,
) -> ApiResult<Vec<DiskSpec>> {
    let dir = d.paths.disk_dir(uuid);
    if !tpl.spec.disks.is_empty() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ApiError::internal("create a disk directory", &e))?;
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
            qemu_img_overlay(&base.path, &overlay).await?;
        }
        disks.push(DiskSpec::own_qcow2(overlay));
    }
    Ok(disks)
}

async fn qemu_img_overlay(base: &Path, overlay: &Path) -> ApiResult<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| ApiError::internal("run qemu-img", &e))?;
    if !out.status.success() {
        return Err(ApiError::internal(
            "create a child overlay",
            &std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Makes a pool child for `t` that will be child `uuid`: overlays, a QEMU
/// waiting in `-incoming defer`, the template's state loaded, the identity
/// step rehearsed, paused. With `disks_fresh` false an existing overlay is
/// kept (a persistent child starting again).
pub async fn prepare(
    d: &Daemon,
    t: &TemplateRt,
    uuid: Uuid,
    disks_fresh: bool,
) -> ApiResult<Prepared> {
    let disks = child_disks(d, &t.tpl, uuid, disks_fresh).await?;
    let spec = t
        .tpl
        .child_spec(&uuid.to_string(), disks)
        .map_err(|e| ApiError::engine("a child spec", &e))?;
    let vm = async {
        let inc = d.engine.prepare_child(&t.tpl, &spec).await?;
        d.engine.start_child(&t.tpl, inc).await
    }
    .await;
    let mut vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            if disks_fresh {
                let _ = tokio::fs::remove_dir_all(d.paths.disk_dir(uuid)).await;
            }
            return Err(ApiError::engine("start a child", &e));
        }
    };
    // Nobody's VM yet: if broodd drops it (shutting down), it goes.
    vm.set_kill_on_drop(true);
    if let Ok(agent) = vm.agent()
        && let Err(e) = agent.warm_fork(t.seq, WARM_TIMEOUT).await
    {
        // Only slower: the identity step will be translated when it runs.
        warn!(template = %t.uuid, "a pool child could not rehearse its identity step: {e}");
    }
    if let Err(e) = vm.pause().await {
        let _ = vm.kill().await;
        return Err(ApiError::engine("pause a pool child", &e));
    }
    Ok(Prepared { uuid, vm })
}

/// Tops the template's pool up in the background (one filler at a time).
pub fn refill(d: Arc<Daemon>, t: Arc<TemplateRt>) {
    if t.filling.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        loop {
            if d.stopping.load(Ordering::SeqCst) || d.template(t.uuid).is_none() {
                break;
            }
            if t.forking.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            let have = t.pool.lock().await.len();
            if have >= t.pool_size.load(Ordering::SeqCst) as usize {
                break;
            }
            let uuid = Uuid::new_v4();
            *t.preparing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(uuid);
            // Into the pool before it stops being "preparing": verify must
            // see it in one place or the other.
            let made = prepare(&d, &t, uuid, true).await;
            let failed = match made {
                Ok(p) => {
                    t.pool.lock().await.push_back(p);
                    None
                }
                Err(e) => Some(e),
            };
            *t.preparing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            if let Some(e) = failed {
                warn!(template = %t.uuid, "refilling the pool failed: {}", e.message);
                break;
            }
        }
        t.filling.store(false, Ordering::SeqCst);
        // A template deleted while we filled: kill what we made.
        if d.template(t.uuid).is_none() {
            t.drain(&d).await;
        }
    });
}

/// Makes the running partition `key` a template (through its agent's fork
/// point), optionally renamed, with a pool of `pool_size` waiting children.
pub async fn create(
    d: &Arc<Daemon>,
    actor: &str,
    key: &str,
    name: Option<String>,
    pool_size: Option<u32>,
) -> ApiResult<PartitionRecord> {
    let rec = ops::resolve(d, key).await?;
    let pool_size = pool_size.unwrap_or(DEFAULT_POOL);
    if pool_size > MAX_POOL {
        return Err(ApiError::bad_request(format!(
            "pool_size {pool_size} is over the limit of {MAX_POOL}"
        )));
    }
    if let Some(n) = &name
        && !convert::valid_name(n)
    {
        return Err(ApiError::bad_request(format!(
            "template name {n:?} is not a valid partition name"
        )));
    }
    let lock = d.partition_lock(rec.uuid);
    let _g = lock.lock().await;
    let rec = ops::resolve(d, &rec.uuid.to_string()).await?;
    if rec.run_state != RunState::Running || !matches!(rec.stage, Stage::Operating | Stage::Manual)
    {
        return Err(ApiError::transition(format!(
            "only a running partition can become a template; {} is {}, {}",
            rec.name, rec.stage, rec.run_state
        )));
    }
    let running = d
        .running(rec.uuid)
        .ok_or_else(|| ApiError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| ApiError::engine("the agent", &e))?;
    running
        .vm
        .wait_ready(PREPARE_TIMEOUT)
        .await
        .map_err(|e| ApiError::engine(&format!("the agent of {}", rec.name), &e))?;
    let (seq, _services) = agent
        .prepare_fork(PREPARE_TIMEOUT)
        .await
        .map_err(|e| ApiError::engine(&format!("bring {} to its fork point", rec.name), &e))?;
    freeze(d, actor, rec, running, seq, name, pool_size).await
}

/// Freezes a partition whose agent waits at fork point `seq` into a
/// template. The caller holds the partition lock.
pub async fn freeze(
    d: &Arc<Daemon>,
    actor: &str,
    rec: PartitionRecord,
    running: Arc<crate::daemon::Running>,
    seq: u32,
    name: Option<String>,
    pool_size: u32,
) -> ApiResult<PartitionRecord> {
    let patch = PartitionPatch {
        pending_op: Some(Some("template".into())),
        ..Default::default()
    };
    let rec = ops::commit(
        d,
        actor,
        format!("make {} a template", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    running.expected_exit.store(true, Ordering::SeqCst);
    let dir = d.paths.template_dir(rec.uuid);
    let _ = tokio::fs::remove_dir_all(&dir).await;
    // A child maps its template's memory privately: move it into a QEMU
    // with memory of its own first.
    let rehosted;
    let source = if rec.parent.is_some() {
        let spec = convert::vm_spec(&rec, &d.paths)?;
        let spec = brood_engine::VmSpec {
            name: format!("{}-rehost", rec.uuid),
            ..spec
        };
        rehosted = d
            .engine
            .rehost(&running.vm, &spec)
            .await
            .map_err(|e| ApiError::engine("re-host the child", &e))?;
        &rehosted
    } else {
        &running.vm
    };
    let saved = d.engine.save_template(source, &dir).await;
    ops::preserve_console(d, rec.uuid, &running).await;
    d.remove_running(rec.uuid);
    let tpl = match saved {
        Ok(t) => t,
        Err(e) => {
            // The VM is gone with the failed save; record it as crashed.
            let _ = running.vm.kill().await;
            let patch = PartitionPatch {
                run_state: Some(RunState::Crashed),
                pid: Some(None),
                pending_op: Some(None),
                last_exit: Some(Some(format!("making a template failed: {}", chain(&e)))),
                ..Default::default()
            };
            let release = Resources {
                disk_gib: 0,
                ..rec.demand
            };
            ops::commit(
                d,
                actor,
                format!("template of {} failed", rec.name),
                &rec,
                patch,
                Op::release(rec.uuid, &release),
            )
            .await?;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(ApiError::engine("save the template", &e));
        }
    };
    for disk in &tpl.spec.disks {
        let _ =
            tokio::fs::set_permissions(&disk.path, std::fs::Permissions::from_mode(0o400)).await;
    }
    // The template keeps its memory (its file lives on) and disks; a child
    // made a template holds its whole memory now, not just its charge.
    let config = convert::active_config(&rec)?;
    let mut demand = rec.demand;
    let mut ops_list = Op::release(
        rec.uuid,
        &Resources {
            memory_mib: 0,
            disk_gib: 0,
            ..rec.demand
        },
    );
    if config.memory_mib > demand.memory_mib {
        ops_list.extend(Op::reserve(
            rec.uuid,
            &Resources {
                memory_mib: config.memory_mib - demand.memory_mib,
                ..Resources::default()
            },
        ));
    }
    demand.memory_mib = config.memory_mib;
    let data = ForkData::Template(TemplateData {
        dir: dir.clone(),
        seq,
        pool_size,
        next_index: 0,
        state_bytes: tpl.state_bytes,
    });
    let patch = PartitionPatch {
        stage: Some(Stage::Template),
        run_state: Some(RunState::Stopped),
        pid: Some(None),
        pending_op: Some(None),
        demand: Some(demand),
        name,
        fork: Some(Some(
            serde_json::to_value(&data)
                .map_err(|e| ApiError::internal("encode template data", &e))?,
        )),
        last_exit: Some(Some("frozen as a template".into())),
        ..Default::default()
    };
    let rec = ops::commit(
        d,
        actor,
        format!("{} is a template", rec.name),
        &rec,
        patch,
        ops_list,
    )
    .await?;
    let rt = Arc::new(TemplateRt::new(rec.uuid, tpl, seq, pool_size));
    d.insert_template(rt.clone());
    refill(d.clone(), rt);
    info!(template = %rec.name, "template made");
    Ok(rec)
}

/// Starts refilling every template's pool (after start-up reconciliation,
/// which kills QEMUs the ledger does not know, such as an old pool's).
pub fn refill_all(d: &Arc<Daemon>) {
    for rt in d.all_templates() {
        refill(d.clone(), rt);
    }
}

/// Loads the templates recorded in the ledger (at start-up, before reconciliation).
pub async fn load_all(d: &Arc<Daemon>) -> anyhow::Result<()> {
    for rec in d.ledger.all_partitions().await? {
        if rec.stage != Stage::Template {
            continue;
        }
        let Some(ForkData::Template(t)) = fork_data(&rec) else {
            warn!(template = %rec.name, "template without its fork details");
            continue;
        };
        match Template::load(&t.dir) {
            Ok(tpl) => {
                d.insert_template(Arc::new(TemplateRt::new(rec.uuid, tpl, t.seq, t.pool_size)))
            }
            Err(e) => warn!(template = %rec.name, "cannot fork from it any more: {e}"),
        }
    }
    Ok(())
}

/// Deletes a template; with `cascade`, its children and derived templates first.
pub async fn delete(d: &Arc<Daemon>, actor: &str, uuid: Uuid, cascade: bool) -> ApiResult<()> {
    let rec = ops::resolve(d, &uuid.to_string()).await?;
    if rec.stage != Stage::Template {
        return Err(ApiError::bad_request(format!(
            "{} is not a template (use `brood vm delete`)",
            rec.name
        )));
    }
    let descendants = d.ledger.children_of(uuid).await?;
    if !descendants.is_empty() && !cascade {
        let (tpls, kids): (Vec<_>, Vec<_>) =
            descendants.iter().partition(|r| r.stage == Stage::Template);
        let names = |v: &[&PartitionRecord]| {
            v.iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ApiError::transition(format!(
            "template {} has live children ({}) and derived templates ({}): delete them first or use --cascade",
            rec.name,
            if kids.is_empty() {
                "none".into()
            } else {
                names(&kids)
            },
            if tpls.is_empty() {
                "none".into()
            } else {
                names(&tpls)
            },
        )));
    }
    for child in descendants {
        if child.stage == Stage::Template {
            Box::pin(delete(d, actor, child.uuid, true)).await?;
        } else {
            ops::delete(d, actor, child.uuid, true).await?;
        }
    }
    if let Some(rt) = d.remove_template(uuid) {
        // A pool child being made now would outlive the template: wait for
        // the filler (it stops at once when the template is gone).
        for _ in 0..3000 {
            if !rt.filling.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        rt.drain(d).await;
    }
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let dir = d.paths.template_dir(uuid);
    let _ = tokio::fs::remove_dir_all(&dir).await;
    ops::remove(d, actor, uuid, "template deleted").await
}

/// A template as the API shows it.
pub async fn template_out(d: &Daemon, rec: &PartitionRecord) -> ApiResult<api::Template> {
    let config = convert::active_config(rec)?;
    let (state_bytes, pool_size, fork_point) = match fork_data(rec) {
        Some(ForkData::Template(t)) => (t.state_bytes, t.pool_size, t.seq),
        _ => (0, 0, 0),
    };
    let descendants = d.ledger.children_of(rec.uuid).await?;
    let parent = match rec.parent {
        Some(p) => d.ledger.partition_by_uuid(p).await?.map(|r| r.name),
        None => None,
    };
    let pool_ready = match d.template(rec.uuid) {
        Some(rt) => rt.ready().await,
        None => 0,
    };
    Ok(api::Template {
        name: rec.name.clone(),
        uuid: rec.uuid,
        parent,
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        state_bytes,
        fork_point,
        children: descendants
            .iter()
            .filter(|r| r.stage != Stage::Template)
            .map(|r| r.name.clone())
            .collect(),
        derived: descendants
            .iter()
            .filter(|r| r.stage == Stage::Template)
            .map(|r| r.name.clone())
            .collect(),
        pool_ready,
        pool_size,
        disks: d
            .template(rec.uuid)
            .map(|rt| {
                rt.tpl
                    .spec
                    .disks
                    .iter()
                    .map(|x| x.path.display().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        created_at: rec.updated_at.clone(),
    })
}
