//! Making, loading, showing and deleting templates.
//!
//! A template is the partition itself, moved to stage `template` by the
//! core's `freeze` (its memory kept, its vCPUs and NICs given back). Its
//! directory holds the memory file and the device state; a child made a
//! template in turn is first re-hosted into a VM with memory of its own.
//! Templates survive broodd restarts: the ledger says which partitions are
//! templates, the directory holds the rest.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brood_api as api;
use brood_engine::Template;
use brood_engine::template::TEMPLATE_FILE;
use brood_ledger::{Lineage, PartitionRecord, PendingOp, RunState, Stage, TemplateLineage};
use tracing::{info, warn};
use uuid::Uuid;

use super::{DEFAULT_WARM, MAX_WARM, TemplateRt, Templates, refill};
use crate::convert;
use crate::host::config::{active_config, vm_spec};
use crate::host::runstate::{EndMode, Settle};
use crate::host::{Host, HostError, HostResult, Kind, Running, chain};
use crate::partition::lifecycle;
use crate::wire;

/// How long the agent may take to reach its fork point (the
/// identity-independent services run first).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// Makes the running partition `key` a template (through its agent's fork
/// point), optionally renamed, keeping `warm` warm children; with `persist`
/// its memory and state are kept in the data directory, not on the tmpfs.
pub async fn create(
    host: &Arc<Host>,
    actor: &str,
    key: &str,
    name: Option<String>,
    warm: Option<u32>,
    persist: bool,
) -> HostResult<PartitionRecord> {
    let rec = host.find(key).await?;
    let warm = warm.unwrap_or(DEFAULT_WARM);
    if warm > MAX_WARM {
        return Err(HostError::invalid(format!(
            "warm {warm} is over the limit of {MAX_WARM}"
        )));
    }
    let tpl_name = name.as_deref().unwrap_or(&rec.name);
    convert::check_template_name(tpl_name)?;
    if !(rec.run_state == RunState::Running
        && matches!(rec.stage, Stage::Operating | Stage::Manual))
    {
        return Err(HostError::transition(format!(
            "only a running partition can become a template; {} is {}, {}",
            rec.name, rec.stage, rec.run_state
        )));
    }
    // `at` keeps the partition's lock until the template is made.
    let at = to_fork_point(host, &rec, "its children get").await?;
    let AtForkPoint {
        running, seq, rec, ..
    } = &at;
    let (running, seq, rec) = (running.clone(), *seq, rec.clone());
    let shape = Shape {
        name,
        warm,
        persist,
    };
    freeze(host, actor, rec, running, seq, shape).await
}

/// A running partition at its agent's fork point, under its lock (held as
/// long as this lives).
pub(super) struct AtForkPoint {
    pub running: Arc<Running>,
    pub seq: u32,
    /// The record reloaded under the lock.
    pub rec: PartitionRecord,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Brings the running partition `rec` to its agent's fork point (the guest
/// waits happen without its lock: a stop or kill meanwhile acts at once and
/// is noticed), then takes its lock and checks that it still runs the same
/// VM. Refused while a change waits for its next start: what the template
/// is made of (`gets`: who gets what it runs) must be what it runs.
pub(super) async fn to_fork_point(
    host: &Arc<Host>,
    rec: &PartitionRecord,
    gets: &str,
) -> HostResult<AtForkPoint> {
    let config = crate::host::config::active_config(rec)?;
    if config.boot_disk.is_some() || config.init == Some(brood_api::GuestInit::Systemd) {
        return Err(HostError::transition(format!(
            "{} runs its image's own init (systemd), where brood's agent is a service and \
             cannot hold the guest at a fork point: templates are made of VMs whose init is \
             the agent (a brood image without `--init systemd`)",
            rec.name
        )));
    }
    if host
        .feature::<crate::partition::change::Changes>()
        .of(rec.uuid)
        .is_some()
    {
        return Err(HostError::transition(format!(
            "{} runs other devices than its definition says (a change waits for its next \
             start): stop and start it first, so {gets} what it runs",
            rec.name
        )));
    }
    let running = host
        .registry
        .running(rec.uuid)
        .ok_or_else(|| HostError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine(format!("the agent of {}", rec.name), e))?;
    running
        .vm
        .wait_ready(PREPARE_TIMEOUT)
        .await
        .map_err(|e| HostError::engine(format!("the agent of {}", rec.name), e))?;
    let (seq, _services) = agent
        .prepare_fork(PREPARE_TIMEOUT)
        .await
        .map_err(|e| HostError::engine(format!("bring {} to its fork point", rec.name), e))?;
    let guard = host.registry.lock(rec.uuid).lock_owned().await;
    let rec = host.reload(rec.uuid).await?;
    if rec.run_state != RunState::Running || rec.pid != Some(running.vm.pid()) {
        return Err(HostError::conflict(format!(
            "{} changed while it reached its fork point ({}); nothing was made",
            rec.name, rec.run_state
        )));
    }
    Ok(AtForkPoint {
        running,
        seq,
        rec,
        _guard: guard,
    })
}

/// Allocates the holes of a template's memory file (guest memory its parent
/// never touched). The template is charged its whole memory, and this makes
/// it hold it: otherwise the first child to read a hole allocates the
/// template's page in the child's own memory cgroup, which a child at its
/// charge cannot afford (it is OOM-killed for its template's pages).
async fn prefill(tpl: &Template) -> HostResult<()> {
    let mem = tpl.mem_path();
    let path = mem.clone();
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = i64::try_from(f.metadata()?.len()).unwrap_or(i64::MAX);
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len)
            .map_err(std::io::Error::from)
    })
    .await
    .map_err(|e| HostError::io(format!("fill {}", mem.display()), std::io::Error::other(e)))?;
    done.map_err(|e| HostError::io(format!("fill {}", mem.display()), e))
}

/// Where a persistent template's files live: the data directory, so a host
/// reboot (which empties the tmpfs) keeps them.
pub fn persistent_dir(host: &Host, uuid: Uuid) -> std::path::PathBuf {
    host.paths.data.join("templates").join(uuid.to_string())
}

/// Moves a template saved on the tmpfs into `dest` in the data directory:
/// its files are copied (another file system: no rename), its description
/// rewritten to name `dest`, and the tmpfs copy removed. On failure nothing
/// is left in `dest`.
async fn persist_template(tpl: Template, dest: &Path) -> HostResult<Template> {
    let copied = async {
        let parent = dest.parent().unwrap_or(dest);
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| HostError::io(format!("create {}", parent.display()), e))?;
        let _ = tokio::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).await;
        let _ = tokio::fs::remove_dir_all(dest).await;
        tokio::fs::create_dir(dest)
            .await
            .map_err(|e| HostError::io(format!("create {}", dest.display()), e))?;
        tokio::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(|e| HostError::io(format!("restrict {}", dest.display()), e))?;
        for (from, to) in [
            (tpl.mem_path(), dest.join("mem")),
            (tpl.state_path(), dest.join("state")),
        ] {
            tokio::fs::copy(&from, &to).await.map_err(|e| {
                HostError::io(format!("copy {} to {}", from.display(), to.display()), e)
            })?;
            tokio::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .await
                .map_err(|e| HostError::io(format!("restrict {}", to.display()), e))?;
        }
        let moved = Template {
            dir: dest.to_path_buf(),
            ..tpl.clone()
        };
        let json = serde_json::to_vec_pretty(&moved)
            .map_err(|e| HostError::corrupt("a template description", e))?;
        let file = dest.join(TEMPLATE_FILE);
        tokio::fs::write(&file, json)
            .await
            .map_err(|e| HostError::io(format!("write {}", file.display()), e))?;
        // Flushed before the ledger names it: a reboot right after the
        // template is made must find whole files.
        for f in ["mem", "state", TEMPLATE_FILE] {
            let path = dest.join(f);
            let fsync = tokio::task::spawn_blocking(move || {
                std::fs::File::open(&path).and_then(|f| f.sync_all())
            })
            .await;
            if let Ok(Err(e)) = fsync {
                return Err(HostError::io(
                    format!("flush {}", dest.join(f).display()),
                    e,
                ));
            }
        }
        Ok(moved)
    }
    .await;
    match copied {
        Ok(moved) => {
            let _ = tokio::fs::remove_dir_all(&tpl.dir).await;
            Ok(moved)
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(dest).await;
            Err(e)
        }
    }
}

/// What a template is made as.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Its new name (the partition's own when `None`).
    pub name: Option<String>,
    /// Warm children it keeps.
    pub warm: u32,
    /// Whether its files live in the data directory (surviving a reboot).
    pub persist: bool,
}

/// Freezes a partition whose agent waits at fork point `seq` into a
/// template. The caller holds the partition lock.
pub async fn freeze(
    host: &Arc<Host>,
    actor: &str,
    rec: PartitionRecord,
    running: Arc<Running>,
    seq: u32,
    shape: Shape,
) -> HostResult<PartitionRecord> {
    let Shape {
        name,
        warm,
        persist,
    } = shape;
    let rec = host
        .set_pending(
            actor,
            &rec,
            Some(PendingOp::Template),
            format!("make {} a template", rec.name),
        )
        .await?;
    running.expect_exit();
    let dir = host.paths.template_dir(rec.uuid);
    let _ = tokio::fs::remove_dir_all(&dir).await;
    // A child maps its template's memory privately: move it into a VM
    // with memory of its own first.
    let saved = async {
        if Kind::of(&rec) == Kind::Child {
            let spec = brood_engine::VmSpec {
                name: format!("{}-rehost", rec.uuid),
                ..vm_spec(&rec, &host.paths)?
            };
            let rehosted = host
                .engine
                .rehost(running.vm.as_ref(), &spec)
                .await
                .map_err(|e| HostError::engine("re-host the child", e))?;
            host.engine
                .save_template(rehosted.as_ref(), &dir)
                .await
                .map_err(|e| HostError::engine("save the template", e))
        } else {
            host.engine
                .save_template(running.vm.as_ref(), &dir)
                .await
                .map_err(|e| HostError::engine("save the template", e))
        }
    }
    .await;
    host.end_vm(rec.uuid, EndMode::Kill).await;
    let saved = match saved {
        Ok(t) => prefill(&t).await.map(|()| t),
        e => e,
    };
    let saved = match saved {
        Ok(t) if persist => persist_template(t, &persistent_dir(host, rec.uuid)).await,
        other => other,
    };
    let tpl = match saved {
        Ok(t) => t,
        Err(e) => {
            let why = format!("making a template failed: {}", chain(&e));
            host.settle(actor, &rec, Settle::to(RunState::Crashed, why))
                .await?;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
    };
    for disk in &tpl.spec.disks {
        let _ =
            tokio::fs::set_permissions(&disk.path, std::fs::Permissions::from_mode(0o400)).await;
    }
    let memory = active_config(&rec)?.memory_mib;
    let lineage = Lineage::Template(TemplateLineage {
        dir: tpl.dir.clone(),
        seq,
        warm,
        next_index: 0,
        state_bytes: tpl.state_bytes,
        created_at: wire::now(),
    });
    let rec = host.freeze(actor, &rec, memory, lineage, name).await?;
    let rt = Arc::new(TemplateRt::new(rec.uuid, tpl, seq, warm));
    host.feature::<Templates>().insert(rt.clone());
    refill(host.clone(), rt);
    info!(template = %rec.name, "template made");
    Ok(rec)
}

/// Loads the templates recorded in the ledger (at start-up, before reconciliation).
pub async fn load_all(host: &Host) -> HostResult<()> {
    let templates = host.feature::<Templates>();
    for rec in host.ledger.all_partitions().await? {
        if rec.stage != Stage::Template {
            continue;
        }
        let Some(Lineage::Template(t)) = &rec.lineage else {
            warn!(template = %rec.name, "a template without its details in the ledger; it cannot fork");
            continue;
        };
        match host.engine.load_template(&t.dir) {
            Ok(tpl) => templates.insert(Arc::new(TemplateRt::new(rec.uuid, tpl, t.seq, t.warm))),
            Err(e) => warn!(template = %rec.name, "cannot fork from it any more: {e}"),
        }
    }
    Ok(())
}

/// Deletes a template; with `cascade`, its children and derived templates first.
pub async fn delete(host: &Arc<Host>, actor: &str, uuid: Uuid, cascade: bool) -> HostResult<()> {
    let rec = host.reload(uuid).await?;
    if rec.stage != Stage::Template {
        return Err(HostError::invalid(format!(
            "{} is not a template (use `brood vm delete`)",
            rec.name
        )));
    }
    let descendants = host.ledger.children_of(uuid).await?;
    if !descendants.is_empty() && !cascade {
        let (tpls, kids): (Vec<_>, Vec<_>) =
            descendants.iter().partition(|r| r.stage == Stage::Template);
        let names = |v: &[&PartitionRecord]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        return Err(HostError::transition(format!(
            "template {} has live children ({}) and derived templates ({}): delete them first or use --cascade",
            rec.name,
            names(&kids),
            names(&tpls),
        )));
    }
    for child in descendants {
        if child.stage == Stage::Template {
            Box::pin(delete(host, actor, child.uuid, true)).await?;
        } else {
            lifecycle::delete(host, actor, child.uuid, true).await?;
        }
    }
    super::forget(host, uuid).await;
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let _ = tokio::fs::remove_dir_all(host.paths.template_dir(uuid)).await;
    let _ = tokio::fs::remove_dir_all(persistent_dir(host, uuid)).await;
    host.remove(actor, uuid, "template deleted").await
}

/// A template as the API shows it.
pub async fn view(host: &Host, rec: &PartitionRecord) -> HostResult<api::Template> {
    let config = active_config(rec)?;
    let t = rec.lineage.as_ref().and_then(Lineage::as_template);
    let descendants = host.ledger.children_of(rec.uuid).await?;
    let parent = match rec.parent {
        Some(p) => host.ledger.partition_by_uuid(p).await?.map(|r| r.name),
        None => None,
    };
    let rt = host.feature::<Templates>().get(rec.uuid);
    let warm_ready = match &rt {
        Some(rt) => rt.ready().await,
        None => 0,
    };
    Ok(api::Template {
        name: rec.name.clone(),
        uuid: rec.uuid,
        parent,
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        state_bytes: t.map_or(0, |t| t.state_bytes),
        fork_point: t.map_or(0, |t| t.seq),
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
        warm_ready,
        warm: t.map_or(0, |t| t.warm),
        disks: rt
            .map(|rt| {
                rt.tpl
                    .spec
                    .disks
                    .iter()
                    .map(|x| x.path.display().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        // Older ledgers did not record it: the partition's own creation.
        created_at: t
            .map(|t| t.created_at.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| rec.created_at.clone()),
        persistent: t.is_some_and(|t| t.dir == persistent_dir(host, rec.uuid)),
        downtime_ms: None,
    })
}
