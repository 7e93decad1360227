//! Named snapshots of a partition (`brood vm snapshot create|list|revert|
//! delete`): of a running or paused VM, its disks and its whole state of one
//! instant, and the VM carries on; of a stopped one, its disks.
//!
//! The disks hold them as qcow2 internal snapshots; the state and a small
//! description live in `DATA_DIR/disks/<uuid>/snapshots/<name>/`, so they
//! go with the partition's disks when it is deleted. A snapshot is written
//! under a `.partial` name and renamed when complete: after a crash a
//! partial one is no snapshot (and is removed the next time snapshots are
//! listed or taken). Revert puts the disks back and, for a snapshot with
//! state, starts the VM from it (like `restore`, holding what a start
//! holds); with no state it leaves the partition stopped. Each change is
//! an audit record in the ledger, naming who made it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use brood_api::Snapshot;
use brood_engine::{DiskFormat, DiskSnapshotOp, DiskSpec};
use brood_ledger::{PartitionPatch, PartitionRecord, PendingOp, RunState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::host::config::vm_spec;
use crate::host::runstate::{EndMode, Settle};
use crate::host::{Host, HostError, HostResult, Kind, chain};
use crate::wire;

/// Snapshots a partition may hold.
const MAX_SNAPSHOTS: usize = 32;

/// What `meta.json` records of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    created_at: String,
    /// Whether it holds the VM's state (taken live) or only its disks.
    state: bool,
    /// The run state it was taken in.
    taken_while: String,
    /// The disk files it covers (names in the partition's disk directory).
    disks: Vec<String>,
    /// The active configuration and its memory and vCPUs: a revert with
    /// state needs the same devices.
    config: String,
    memory_mib: u64,
    vcpus: u32,
}

fn snapshots_dir(host: &Host, uuid: Uuid) -> PathBuf {
    host.paths.disk_dir(uuid).join("snapshots")
}

/// A snapshot name: what a file name and a qcow2 snapshot tag can hold.
fn check_name(name: &str) -> HostResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(HostError::invalid(format!(
            "snapshot name {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', \
             not starting with '.' or '-'"
        )))
    }
}

/// The partition's disks as brood made them (qcow2 files in its disk
/// directory), never the hard link to its image's root disk: that is the
/// image itself, shared by every partition of it, and read-only to them.
async fn disk_files(host: &Host, uuid: Uuid) -> HostResult<Vec<PathBuf>> {
    let dir = host.paths.disk_dir(uuid);
    let image_base = host.paths.image_base(uuid);
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(&dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(HostError::io(format!("read {}", dir.display()), e)),
    };
    while let Some(e) = rd
        .next_entry()
        .await
        .map_err(|e| HostError::io(format!("read {}", dir.display()), e))?
    {
        let p = e.path();
        // Nor a frozen image a `--keep` template shares (`template::keep`).
        if p.extension().is_some_and(|x| x == "qcow2")
            && p.is_file()
            && p != image_base
            && !crate::template::keep::is_kept_link(&p)
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn qcow2(path: &Path) -> DiskSpec {
    let mut d = DiskSpec::own_qcow2(path);
    d.format = DiskFormat::Qcow2;
    d
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn read_meta(dir: &Path) -> Option<Meta> {
    let text = tokio::fs::read(dir.join("meta.json")).await.ok()?;
    serde_json::from_slice(&text).ok()
}

fn view(m: &Meta) -> Snapshot {
    Snapshot {
        name: m.name.clone(),
        created_at: m.created_at.clone(),
        memory: m.state,
        taken_while: m.taken_while.clone(),
        disks: m.disks.clone(),
    }
}

/// The partition's snapshots, oldest first; partial ones left by a crash are removed.
pub async fn list(host: &Host, rec: &PartitionRecord) -> HostResult<Vec<Snapshot>> {
    let dir = snapshots_dir(host, rec.uuid);
    let mut metas = Vec::new();
    let mut rd = match tokio::fs::read_dir(&dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io(format!("read {}", dir.display()), e)),
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial") {
            let _ = tokio::fs::remove_dir_all(e.path()).await;
            continue;
        }
        if let Some(m) = read_meta(&e.path()).await {
            metas.push(m);
        }
    }
    metas.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(metas.iter().map(view).collect())
}

fn not_a_template(rec: &PartitionRecord) -> HostResult<()> {
    if Kind::of(rec) == Kind::Template {
        return Err(HostError::transition(format!(
            "{} is a template: it has no snapshots (its children can have them)",
            rec.name
        )));
    }
    Ok(())
}

/// Takes snapshot `name` of a partition.
pub async fn create(host: &Arc<Host>, actor: &str, uuid: Uuid, name: &str) -> HostResult<Snapshot> {
    check_name(name)?;
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    not_a_template(&rec)?;
    let existing = list(host, &rec).await?;
    if existing.iter().any(|s| s.name == name) {
        return Err(HostError::conflict(format!(
            "{} already has a snapshot {name}: delete it first or pick another name",
            rec.name
        )));
    }
    if existing.len() >= MAX_SNAPSHOTS {
        return Err(HostError::conflict(format!(
            "{} has {MAX_SNAPSHOTS} snapshots, the most it may hold: delete one first",
            rec.name
        )));
    }
    let c = crate::host::config::active_config(&rec)?;
    let top = snapshots_dir(host, uuid);
    let partial = top.join(format!("{name}.partial"));
    let done = top.join(name);
    let _ = tokio::fs::remove_dir_all(&partial).await;
    tokio::fs::create_dir_all(&partial)
        .await
        .map_err(|e| HostError::io(format!("create {}", partial.display()), e))?;
    let live = matches!(rec.run_state, RunState::Running | RunState::Paused);
    let taken = async {
        match rec.run_state {
            RunState::Running | RunState::Paused => {
                let running = host.registry.running(uuid).ok_or_else(|| {
                    HostError::conflict(format!("{} has no VM yet; retry", rec.name))
                })?;
                let room = crate::memory::room_to_save(&rec, running.vm.as_ref());
                let r = running.vm.snapshot(name, &partial.join("state")).await;
                drop(room);
                r.map_err(|e| HostError::engine(format!("snapshot {}", rec.name), e))?;
                Ok(running
                    .vm
                    .spec()
                    .disks
                    .iter()
                    .filter(|d| !d.read_only)
                    .map(|d| file_name(&d.path))
                    .collect::<Vec<_>>())
            }
            RunState::Stopped | RunState::Crashed => {
                let disks = disk_files(host, uuid).await?;
                let mut made: Vec<DiskSpec> = Vec::new();
                for d in &disks {
                    let spec = qcow2(d);
                    if let Err(e) = host
                        .engine
                        .disk_snapshot(&spec, DiskSnapshotOp::Create, name)
                        .await
                    {
                        for m in &made {
                            let _ = host
                                .engine
                                .disk_snapshot(m, DiskSnapshotOp::Delete, name)
                                .await;
                        }
                        return Err(HostError::engine(format!("snapshot {}", rec.name), e));
                    }
                    made.push(spec);
                }
                Ok(disks.iter().map(|d| file_name(d)).collect())
            }
            other => Err(HostError::transition(format!(
                "cannot snapshot {}: it is {other} (restore it, or stop it, first)",
                rec.name
            ))),
        }
    }
    .await;
    let disks = match taken {
        Ok(d) => d,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            return Err(e);
        }
    };
    let meta = Meta {
        name: name.to_string(),
        created_at: wire::now(),
        state: live,
        taken_while: rec.run_state.to_string(),
        disks,
        config: rec.active_config.clone(),
        memory_mib: c.memory_mib,
        vcpus: c.vcpus,
    };
    let written = async {
        let text = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        tokio::fs::write(partial.join("meta.json"), text).await?;
        tokio::fs::rename(&partial, &done).await
    }
    .await;
    if let Err(e) = written {
        drop_disk_snapshots(host, &rec, &meta).await;
        let _ = tokio::fs::remove_dir_all(&partial).await;
        return Err(HostError::io("keep the snapshot", e));
    }
    host.update(
        actor,
        format!("snapshot {name} of {} taken", rec.name),
        &rec,
        PartitionPatch::default(),
        Vec::new(),
    )
    .await?;
    Ok(view(&meta))
}

/// Deletes the internal snapshots `meta` made (best effort: a disk that no
/// longer has it is fine). A live VM's disks are open in its QEMU, which
/// `qemu-img` must not write: those are left and reported.
async fn drop_disk_snapshots(host: &Host, rec: &PartitionRecord, meta: &Meta) -> Vec<String> {
    let mut left = Vec::new();
    let dir = host.paths.disk_dir(rec.uuid);
    for d in &meta.disks {
        let spec = qcow2(&dir.join(d));
        let has = host
            .engine
            .disk_snapshot_names(&spec)
            .await
            .is_ok_and(|n| n.iter().any(|x| x == &meta.name));
        if has
            && host
                .engine
                .disk_snapshot(&spec, DiskSnapshotOp::Delete, &meta.name)
                .await
                .is_err()
        {
            left.push(d.clone());
        }
    }
    left
}

async fn find(host: &Host, rec: &PartitionRecord, name: &str) -> HostResult<(PathBuf, Meta)> {
    check_name(name)?;
    let dir = snapshots_dir(host, rec.uuid).join(name);
    match read_meta(&dir).await {
        Some(m) => Ok((dir, m)),
        None => Err(HostError::NotFound(format!(
            "{} has no snapshot {name} (`brood vm snapshot list {}` shows its snapshots)",
            rec.name, rec.name
        ))),
    }
}

/// Deletes snapshot `name`. The disks' internal snapshots are deleted
/// while no VM has them open, so a running partition must be stopped.
pub async fn delete(host: &Arc<Host>, actor: &str, uuid: Uuid, name: &str) -> HostResult<()> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    let (dir, meta) = find(host, &rec, name).await?;
    if rec.run_state.is_active() {
        return Err(HostError::transition(format!(
            "cannot delete snapshot {name} of {} while it is {}: its disks are open in its VM; \
             stop it first",
            rec.name, rec.run_state
        )));
    }
    let left = drop_disk_snapshots(host, &rec, &meta).await;
    if !left.is_empty() {
        return Err(HostError::conflict(format!(
            "could not delete snapshot {name} from disk(s) {} of {}; nothing else was removed",
            left.join(", "),
            rec.name
        )));
    }
    tokio::fs::remove_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("remove {}", dir.display()), e))?;
    host.update(
        actor,
        format!("snapshot {name} of {} deleted", rec.name),
        &rec,
        PartitionPatch::default(),
        Vec::new(),
    )
    .await?;
    Ok(())
}

/// Puts a partition back to snapshot `name`: its VM (if any) is killed, its
/// disks are reverted, and a snapshot with state starts from that state.
pub async fn revert(
    host: &Arc<Host>,
    actor: &str,
    uuid: Uuid,
    name: &str,
) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    not_a_template(&rec)?;
    let (dir, meta) = find(host, &rec, name).await?;
    let c = crate::host::config::active_config(&rec)?;
    if meta.state
        && (meta.config != rec.active_config
            || meta.memory_mib != c.memory_mib
            || meta.vcpus != c.vcpus)
    {
        return Err(HostError::transition(format!(
            "snapshot {name} of {} was taken with configuration {} ({} MiB, {} vCPUs); it now \
             starts with {} ({} MiB, {} vCPUs): switch back with `brood vm set-config` first",
            rec.name,
            meta.config,
            meta.memory_mib,
            meta.vcpus,
            rec.active_config,
            c.memory_mib,
            c.vcpus
        )));
    }
    let disk_dir = host.paths.disk_dir(uuid);
    for d in &meta.disks {
        let spec = qcow2(&disk_dir.join(d));
        let names = host
            .engine
            .disk_snapshot_names(&spec)
            .await
            .map_err(|e| HostError::engine(format!("read disk {d} of {}", rec.name), e))?;
        if !names.iter().any(|n| n == name) {
            return Err(HostError::conflict(format!(
                "disk {d} of {} no longer holds snapshot {name} (a child that is not \
                 persistent gets new disks at each start); delete the snapshot",
                rec.name
            )));
        }
    }
    // End what runs now; a saved state is replaced by the snapshot.
    let mut rec = rec;
    if rec.run_state.is_active() {
        let rec2 = host
            .set_pending(
                actor,
                &rec,
                Some(PendingOp::Kill),
                format!("revert {} to {name}", rec.name),
            )
            .await?;
        let exit = host.end_vm(uuid, EndMode::Kill).await;
        let how = Settle {
            to: RunState::Stopped,
            last_exit: exit.map(|e| e.to_string()),
            reset_restarts: false,
            lineage: None,
            return_pool_values: false,
        };
        rec = host.settle(actor, &rec2, how).await?;
    } else if rec.run_state == RunState::Saved {
        let _ = tokio::fs::remove_file(host.paths.saved_state(uuid)).await;
        rec = host
            .settle(
                actor,
                &rec,
                Settle::to(
                    RunState::Stopped,
                    "its saved state was replaced by a snapshot",
                ),
            )
            .await?;
    }
    for d in &meta.disks {
        let spec = qcow2(&disk_dir.join(d));
        host.engine
            .disk_snapshot(&spec, DiskSnapshotOp::Apply, name)
            .await
            .map_err(|e| HostError::engine(format!("revert disk {d} of {}", rec.name), e))?;
    }
    if !meta.state {
        return host
            .update(
                actor,
                format!("{} reverted to snapshot {name} (disks)", rec.name),
                &rec,
                PartitionPatch::default(),
                Vec::new(),
            )
            .await;
    }
    // Not `PendingOp::Restore`: a failed or interrupted start from a
    // snapshot leaves the partition stopped, not saved (it has no saved state).
    let rec = host.begin_start(actor, &rec, rec.demand, None).await?;
    let vm = match vm_spec(&rec, &host.paths) {
        Ok(spec) => host
            .engine
            .restore(&spec, &dir.join("state"))
            .await
            .map_err(|e| HostError::engine(format!("start {} from snapshot {name}", rec.name), e)),
        Err(e) => Err(e),
    };
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            host.abandon_start(actor, uuid, "revert", &chain(&e))
                .await?;
            return Err(e);
        }
    };
    let to = if meta.taken_while == RunState::Paused.to_string() {
        RunState::Paused
    } else {
        RunState::Running
    };
    if to == RunState::Paused {
        let _ = vm.pause().await;
    }
    let (rec, _) = host.mark_running(actor, &rec, vm, to, None).await?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_file_and_tag_safe() {
        for ok in ["a", "before-upgrade", "v1.2_3", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
