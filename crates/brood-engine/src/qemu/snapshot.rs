//! Named snapshots of a VM: its disks' qcow2 internal snapshots plus, for a
//! live VM, its whole state (devices and memory) in a file beside them.
//!
//! A live snapshot stops the vCPUs, takes an internal snapshot of every
//! writable disk in one QMP `transaction` (all or none), saves the state
//! with the migration stream brood's `save` uses, and lets the VM go on;
//! disks and memory are of the same instant. With no VM running, the
//! disks are snapshotted, applied or deleted with `qemu-img snapshot`.
//! Every disk brood makes for a partition is a qcow2 image; a raw disk or
//! one with a throw-away overlay cannot hold a snapshot and is refused
//! before anything is touched.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::spec::{DiskFormat, DiskSpec};
use crate::vm::Vm;
use crate::{EngineError, VmStatus};

/// How long `qemu-img snapshot` may take on one disk.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);
/// How long saving the state of a live VM may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// What `qemu-img snapshot` does to a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSnapshotOp {
    /// `-c`: take a snapshot of the disk as it is.
    Create,
    /// `-a`: put the disk back to the snapshot.
    Apply,
    /// `-d`: delete the snapshot.
    Delete,
}

impl DiskSnapshotOp {
    fn flag(self) -> &'static str {
        match self {
            Self::Create => "-c",
            Self::Apply => "-a",
            Self::Delete => "-d",
        }
    }
}

/// The disks a snapshot covers (writable ones; a read-only disk never
/// changes), with their QEMU node names; an error names a disk that cannot
/// hold one.
pub fn snapshot_disks(disks: &[DiskSpec]) -> Result<Vec<(String, &DiskSpec)>, EngineError> {
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        if d.read_only {
            continue;
        }
        if d.format != DiskFormat::Qcow2 || d.overlay {
            return Err(EngineError::InvalidSpec(format!(
                "disk {} is {}: snapshots need qcow2 disks that the VM writes in place \
                 (brood's own disks, `--disk NAME:SIZE`, are)",
                d.path.display(),
                if d.overlay {
                    "used through a throw-away overlay"
                } else {
                    "raw"
                }
            )));
        }
        out.push((format!("disk{i}"), d));
    }
    Ok(out)
}

/// Takes snapshot `name` of a live VM: its writable disks in one
/// transaction and its whole state into `state`. The VM carries on as it
/// was (running, or paused). On failure nothing of the snapshot is left.
pub async fn snapshot_live(vm: &Vm, name: &str, state: &Path) -> Result<(), EngineError> {
    let mut disks = snapshot_disks(&vm.spec().disks)?;
    // A disk switched by a keep has a newer top node.
    for (i, (node, _)) in disks.iter_mut().enumerate() {
        let index = node.trim_start_matches("disk").parse().unwrap_or(i);
        *node = super::keep::top_node(vm, index).await;
    }
    let was_running = matches!(vm.status().await?, VmStatus::Running);
    vm.qmp().stop().await?;
    let r = async {
        if !disks.is_empty() {
            let actions: Vec<Value> = disks
                .iter()
                .map(|(node, _)| {
                    json!({"type": "blockdev-snapshot-internal-sync",
                           "data": {"device": node, "name": name}})
                })
                .collect();
            vm.qmp()
                .execute_raw("transaction", Some(json!({ "actions": actions })))
                .await?;
        }
        let saved = super::save_state(vm, state, SAVE_TIMEOUT).await;
        if let Err(e) = saved {
            let _ = std::fs::remove_file(state);
            for (node, _) in &disks {
                let _ = vm
                    .qmp()
                    .execute_raw(
                        "blockdev-snapshot-delete-internal-sync",
                        Some(json!({"device": node, "name": name})),
                    )
                    .await;
            }
            return Err(e);
        }
        Ok(())
    }
    .await;
    if was_running {
        // After a completed migration QEMU waits in `postmigrate`; `cont`
        // takes its disks back and runs the guest on.
        let resumed = vm.qmp().cont().await;
        if r.is_ok() {
            resumed?;
        }
    }
    r
}

/// Runs `qemu-img snapshot` on a disk no QEMU has open.
pub async fn disk_snapshot(
    disk: &DiskSpec,
    op: DiskSnapshotOp,
    name: &str,
) -> Result<(), EngineError> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["snapshot", op.flag(), name, "-f", disk.format.as_str()])
        .arg(&disk.path)
        .kill_on_drop(true);
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| EngineError::Timeout {
            op: "qemu-img snapshot",
            after: QEMU_IMG_TIMEOUT,
        })?
        .map_err(|e| EngineError::host("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(EngineError::InvalidSpec(format!(
            "qemu-img snapshot {} {name} on {}: {}",
            op.flag(),
            disk.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The names of the internal snapshots a disk holds.
pub async fn disk_snapshot_names(disk: &DiskSpec) -> Result<Vec<String>, EngineError> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-U", "-f", disk.format.as_str()])
        .arg(&disk.path)
        .kill_on_drop(true);
    let out = tokio::time::timeout(QEMU_IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| EngineError::Timeout {
            op: "qemu-img info",
            after: QEMU_IMG_TIMEOUT,
        })?
        .map_err(|e| EngineError::host("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(EngineError::InvalidSpec(format!(
            "qemu-img info {}: {}",
            disk.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        EngineError::InvalidSpec(format!(
            "qemu-img info of {} is not JSON: {e}",
            disk.path.display()
        ))
    })?;
    Ok(info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_overlaid_disks_cannot_hold_a_snapshot() {
        let q = DiskSpec::own_qcow2("/d/a.qcow2");
        let mut ro = DiskSpec::own_qcow2("/d/ro.qcow2");
        ro.read_only = true;
        let disks = [q.clone(), ro, q.clone()];
        let got = snapshot_disks(&disks).unwrap();
        let nodes: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(nodes, ["disk0", "disk2"]);
        let e = snapshot_disks(&[q.clone(), DiskSpec::new("/d/raw.img")]).unwrap_err();
        assert!(e.to_string().contains("raw.img is raw"), "{e}");
        let mut ov = q;
        ov.overlay = true;
        let e = snapshot_disks(&[ov]).unwrap_err();
        assert!(e.to_string().contains("overlay"), "{e}");
    }
}
