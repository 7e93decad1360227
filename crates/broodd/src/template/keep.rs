//! `brood template create NAME --from VM --keep`: a template of a running
//! VM that goes on running, as a partition of its own.
//!
//! The VM reaches its fork point as for any template; then, stopped for
//! the engine's save (`qemu::keep`), each writable disk's image is frozen
//! and the VM writes a new overlay over it. broodd lays out the files:
//!
//! ```text
//!  disks/<vm>/F            the VM's new overlay (backing: F's stem.kept-<tpl>.qcow2, relative)
//!  disks/<vm>/F.kept-…     the VM's link to the frozen image
//!  disks/<tpl>/F           the template's link to the same frozen image
//!  disks/<tpl>/B           links to the files F names relatively (an image's root disk)
//!  disks/<tpl>/image.*     links to the kernel and initramfs the VM boots from its own directory
//! ```
//!
//! so the template owns everything its children open, and deleting the VM
//! (or the template) leaves the other whole. The template is recorded
//! first with a `create` pending (a restart in the middle removes it), is
//! charged the VM's memory and disk space, and becomes a template in the
//! same way `freeze` makes one. The VM keeps its name, identity, files and
//! its own fork waiter (an unanswered point in its agent's table).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brood_engine::{KeepDisk, KeepPlan};
use brood_ledger::{
    Lineage, Op, PartitionRecord, PendingOp, Resources, RunState, Stage, TemplateLineage, Tx,
};
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

use super::{TemplateRt, Templates, refill};
use crate::convert;
use crate::host::config::active_config;
use crate::host::{Host, HostError, HostResult, Kind, chain};
use crate::wire;

/// How long `qemu-img` may take on one disk.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// A template made of a VM that runs on.
#[derive(Debug)]
pub struct KeptTemplate {
    /// The new template partition.
    pub rec: PartitionRecord,
    /// How long the VM's vCPUs were stopped.
    pub downtime: Duration,
}

/// Makes template `name` of the running partition `key`, which goes on
/// running; `warm` warm children.
pub async fn create(
    host: &Arc<Host>,
    actor: &str,
    key: &str,
    name: &str,
    warm: u32,
) -> HostResult<KeptTemplate> {
    let rec = host.find(key).await?;
    convert::check_template_name(name)?;
    if name == rec.name {
        return Err(HostError::invalid(format!(
            "--keep makes a new template beside {0}, which keeps its name: give the template \
             another name (`brood template create NAME --from {0} --keep`)",
            rec.name
        )));
    }
    if host.ledger.partition_by_name(name).await?.is_some() {
        return Err(HostError::conflict(format!(
            "the name {name:?} is taken; choose another for the template"
        )));
    }
    if !(rec.run_state == RunState::Running
        && matches!(rec.stage, Stage::Operating | Stage::Manual))
    {
        return Err(HostError::transition(format!(
            "only a running partition can become a template; {} is {}, {}",
            rec.name, rec.stage, rec.run_state
        )));
    }
    if Kind::of(&rec) == Kind::Child {
        return Err(HostError::transition(format!(
            "{} is a forked child: its memory is its template's, mapped copy-on-write, so it \
             cannot be copied while it runs; make it a template without --keep",
            rec.name
        )));
    }
    // `at` keeps the partition's lock until the template is made.
    let at = super::freeze::to_fork_point(host, &rec, "the template gets").await?;
    let super::freeze::AtForkPoint {
        running, seq, rec, ..
    } = &at;
    let (running, seq, rec) = (running.clone(), *seq, rec.clone());
    let tpl = record(host, actor, &rec, name).await?;
    let tlock = host.registry.lock(tpl.uuid);
    let _tg = tlock.lock().await;
    match save(host, &rec, &tpl, running.vm.as_ref()).await {
        Ok(kept) => {
            let lineage = Lineage::Template(TemplateLineage {
                dir: kept.template.dir.clone(),
                seq,
                warm,
                next_index: 0,
                state_bytes: kept.template.state_bytes,
                created_at: wire::now(),
            });
            // As `Host::freeze` records a template, but it never ran: its
            // run state stays `stopped`, it holds what `record` reserved.
            let patch = brood_ledger::PartitionPatch {
                stage: Some(Stage::Template),
                pending_op: Some(None),
                lineage: Some(Some(lineage)),
                last_exit: Some(Some(format!("a template of {}, which runs on", rec.name))),
                ..Default::default()
            };
            let trec = host
                .update(
                    actor,
                    format!("{} is a template", tpl.name),
                    &tpl,
                    patch,
                    Vec::new(),
                )
                .await?;
            let rt = Arc::new(TemplateRt::new(trec.uuid, kept.template, seq, warm));
            host.feature::<Templates>().insert(rt.clone());
            refill(host.clone(), rt);
            info!(template = %trec.name, vm = %rec.name,
                  downtime_ms = u64::try_from(kept.downtime.as_millis()).unwrap_or(u64::MAX),
                  "template made; its VM runs on");
            Ok(KeptTemplate {
                rec: trec,
                downtime: kept.downtime,
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(host.paths.template_dir(tpl.uuid)).await;
            if let Err(r) = host
                .remove(actor, tpl.uuid, "its template could not be made")
                .await
            {
                tracing::warn!(template = %tpl.name, "removing it: {}", chain(&r));
            }
            Err(e)
        }
    }
}

/// Records the template partition: the VM's definition under the new name,
/// charged the VM's memory and disk space, with `create` pending.
async fn record(
    host: &Host,
    actor: &str,
    rec: &PartitionRecord,
    name: &str,
) -> HostResult<PartitionRecord> {
    let uuid = Uuid::new_v4();
    let now = wire::now();
    let demand = Resources {
        memory_mib: active_config(rec)?.memory_mib,
        disk_gib: rec.demand.disk_gib,
        ..Resources::default()
    };
    let tpl = PartitionRecord {
        uuid,
        name: name.to_string(),
        stage: Stage::Operating,
        run_state: RunState::Stopped,
        active_config: rec.active_config.clone(),
        configs: rec.configs.clone(),
        demand,
        pid: None,
        pending_op: Some(PendingOp::Create),
        restart_count: 0,
        last_exit: None,
        created_at: now.clone(),
        updated_at: now,
        generation: 0,
        parent: None,
        lineage: None,
    };
    let mut ops = vec![Op::InsertPartition(tpl.clone())];
    // The template of a unit's VM is the unit's, charged to its allocation.
    if let Some(unit) = host.ledger.unit_of(rec.uuid).await? {
        ops.push(Op::Unit(brood_ledger::UnitOp::Join {
            partition: uuid,
            unit,
        }));
    }
    ops.extend(Op::reserve(uuid, &demand));
    host.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("template {name} of {}, which runs on", rec.name),
            ops,
        })
        .await?;
    host.reload(uuid).await
}

/// Lays out the template's files and has the engine save it.
async fn save(
    host: &Host,
    rec: &PartitionRecord,
    tpl: &PartitionRecord,
    vm: &dyn brood_engine::VmHandle,
) -> HostResult<brood_engine::Kept> {
    let src_dir = host.paths.disk_dir(rec.uuid);
    let tpl_dir = host.paths.disk_dir(tpl.uuid);
    tokio::fs::create_dir_all(&tpl_dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", tpl_dir.display()), e))?;
    let mut spec = vm.spec().clone();
    spec.name = tpl.uuid.to_string();
    // The kernel and initramfs a partition boots from its own directory
    // (its links to an image's) must be the template's own too.
    if let Some(own) = relink(&spec.kernel, &src_dir, &tpl_dir).await? {
        spec.kernel = own;
    }
    if let Some(initrd) = &spec.initrd
        && let Some(own) = relink(initrd, &src_dir, &tpl_dir).await?
    {
        spec.initrd = Some(own);
    }
    let short = &tpl.uuid.simple().to_string()[..8];
    let mut disks = Vec::new();
    let mut nexts = Vec::new();
    let result = async {
        for (index, d) in vm.spec().disks.iter().enumerate() {
            if d.read_only || d.nbd.is_some() || d.overlay {
                // Read-only: shared as it is; the others the engine refuses.
                continue;
            }
            let Some(file) = d.path.file_name() else {
                continue;
            };
            if d.path.parent() != Some(src_dir.as_path()) {
                return Err(HostError::invalid(format!(
                    "disk {} is not one of {}'s own: --keep switches only the disks brood made for it",
                    d.path.display(),
                    rec.name
                )));
            }
            let info = qemu_img_info(&d.path).await?;
            own_backing_files(&info, &d.path, &src_dir, &tpl_dir).await?;
            let stem = file.to_string_lossy();
            let stem = stem.strip_suffix(".qcow2").unwrap_or(&stem);
            let link_name = format!("{stem}.kept-{short}.qcow2");
            let next = src_dir.join(format!("{stem}.keep-next.qcow2"));
            let size = info
                .first()
                .and_then(|i| i.get("virtual-size"))
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    HostError::invalid(format!("qemu-img info of {} has no size", d.path.display()))
                })?;
            let _ = tokio::fs::remove_file(&next).await;
            new_overlay(&link_name, &next, size).await?;
            nexts.push(next.clone());
            let frozen = tpl_dir.join(file);
            disks.push(KeepDisk {
                index,
                frozen: frozen.clone(),
                backing_link: src_dir.join(&link_name),
                next,
            });
            if let Some(t) = spec.disks.get_mut(index) {
                t.path = frozen;
                // Children back onto the frozen image; the template itself
                // is never written.
                t.allow_backing = true;
            }
        }
        let plan = KeepPlan { disks, spec };
        let dir = host.paths.template_dir(tpl.uuid);
        host.engine
            .save_template_keep(vm, &dir, &plan)
            .await
            .map_err(|e| HostError::engine("save the template", e))
    }
    .await;
    // An overlay not switched in (a failure before the switch) goes.
    for n in nexts {
        let _ = tokio::fs::remove_file(n).await;
    }
    if let Ok(kept) = &result {
        for d in &kept.template.spec.disks {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                tokio::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(0o400)).await;
        }
    }
    result
}

/// Whether `path` is a VM's link to an image frozen for a `--keep`
/// template (the backing of its overlay, shared with the template: never
/// to be written).
pub fn is_kept_link(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".kept-"))
}

/// Hard-links `file` into `to` when it lives in `from`; its new path.
async fn relink(file: &Path, from: &Path, to: &Path) -> HostResult<Option<PathBuf>> {
    if file.parent() != Some(from) {
        return Ok(None);
    }
    let Some(name) = file.file_name() else {
        return Ok(None);
    };
    let own = to.join(name);
    match tokio::fs::hard_link(file, &own).await {
        Ok(()) => Ok(Some(own)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some(own)),
        Err(e) => Err(HostError::io(
            format!("link {} into the template", file.display()),
            e,
        )),
    }
}

/// `qemu-img info --backing-chain` of a disk (top first); `-U`: the VM has it open.
async fn qemu_img_info(path: &Path) -> HostResult<Vec<Value>> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args([
        "info",
        "--output=json",
        "-U",
        "-f",
        "qcow2",
        "--backing-chain",
    ])
    .arg(path)
    .kill_on_drop(true);
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            HostError::io(
                "qemu-img info",
                std::io::Error::other(format!("took over {QEMU_IMG_TIMEOUT:?}")),
            )
        })?
        .map_err(|e| HostError::io("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(HostError::io(
            format!("qemu-img info {}", path.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(a)) => Ok(a),
        Ok(other) => Ok(vec![other]),
        Err(e) => Err(HostError::corrupt("qemu-img info's answer", e)),
    }
}

/// Gives the template links to the backing files a frozen image names by a
/// relative name (they resolve in the template's directory the same way);
/// refuses a chain that names a file of the VM's own directory by an
/// absolute path, which the VM's delete would take from the template.
async fn own_backing_files(
    info: &[Value],
    disk: &Path,
    src_dir: &Path,
    tpl_dir: &Path,
) -> HostResult<()> {
    for (img, next) in info.iter().zip(info.iter().skip(1)) {
        let Some(recorded) = img.get("backing-filename").and_then(Value::as_str) else {
            break;
        };
        let resolved = next
            .get("filename")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_default();
        let recorded_path = Path::new(recorded);
        if recorded_path.is_absolute() {
            if resolved.starts_with(src_dir) {
                return Err(HostError::transition(format!(
                    "disk {} names its backing file {} by an absolute path in its VM's own \
                     directory (made by an older broodd): the template could not outlive the \
                     VM; make the template without --keep",
                    disk.display(),
                    recorded
                )));
            }
            // Someone else's (an image's file, a template's disk): shared.
            continue;
        }
        if recorded_path.components().count() != 1 || resolved.parent() != Some(src_dir) {
            return Err(HostError::transition(format!(
                "disk {} names its backing file {recorded:?} outside its own directory",
                disk.display()
            )));
        }
        relink(&resolved, src_dir, tpl_dir).await?;
    }
    Ok(())
}

/// Creates the VM's next overlay at `next`, backed by `backing` (a name in
/// the same directory) of `size` bytes, without opening the backing file
/// (`-u`: it is the image the VM writes until the switch).
async fn new_overlay(backing: &str, next: &Path, size: u64) -> HostResult<()> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args([
        "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", backing,
    ])
    .arg(next)
    .arg(size.to_string())
    .kill_on_drop(true);
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            HostError::io(
                "qemu-img create",
                std::io::Error::other(format!("took over {QEMU_IMG_TIMEOUT:?}")),
            )
        })?
        .map_err(|e| HostError::io("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(HostError::io(
            format!("create the overlay {}", next.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}
