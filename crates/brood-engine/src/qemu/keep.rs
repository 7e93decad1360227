//! Live templates (`brood template create --keep`): a template of a running
//! VM that goes on running.
//!
//! ```text
//!  VM (agent at its fork point)      QMP stop                       ─┐
//!    each writable disk F:            F linked as <tpl>/F and as F.kept (same inode, frozen)
//!                                     the caller's overlay over F.kept renamed to F
//!                                     blockdev-add it (a descriptor), one `transaction`
//!                                     of blockdev-snapshot: the VM now writes the overlay
//!    device state                     migrate with x-ignore-shared → <tpl>/state
//!    memory                           <run>/mem copied to <tpl>/mem (the VM's stays its own)
//!                                     x-ignore-shared off, QMP cont  ─┘ downtime
//! ```
//!
//! The template owns what it needs: hard links to the frozen images (and to
//! the backing files they name relatively, which the caller lays out) in
//! its own directory, its own copy of the memory, its own state. The VM
//! owns its new overlays and a link of its own to each frozen image, so
//! deleting either leaves the other whole. The frozen image is the one the
//! VM wrote until the stop: nothing is copied but the memory file.
//!
//! After the switch a disk's top node is `disk{i}k{n}` rather than
//! `disk{i}` (node names cannot be reused while the old node is the new
//! one's backing); [`top_node`] finds it for `block_resize` and snapshots.
//! A restart of the VM opens its chain afresh with the usual names.

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brood_qmp::MigrationCapabilityName;
use serde_json::{Value, json};
use tracing::info;

use super::QemuEngine;
use super::fdpass::FdSet;
use crate::EngineError;
use crate::spec::{DiskFormat, VmSpec};
pub use crate::template::{TEMPLATE_FILE, Template};
use crate::vm::Vm;

/// How long saving the device state may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What happens to one writable disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepDisk {
    /// The disk's index in the VM's spec.
    pub index: usize,
    /// The template's hard link to the disk's image as it is at the stop.
    pub frozen: PathBuf,
    /// The VM's own hard link to that image, which `next` backs onto.
    pub backing_link: PathBuf,
    /// A qcow2 overlay the caller made over `backing_link` (by a name
    /// relative to its directory); it becomes the disk's file.
    pub next: PathBuf,
}

/// How a VM is kept while its template is made.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepPlan {
    /// Every writable disk of the VM.
    pub disks: Vec<KeepDisk>,
    /// The template's spec: the VM's devices, with the template's own
    /// files (its frozen disks, its links to kernel and initramfs).
    pub spec: VmSpec,
}

/// A template made of a VM that went on running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The template.
    pub template: Template,
    /// How long the VM's vCPUs were stopped.
    pub downtime: Duration,
}

/// The node the guest writes for disk `index` now: `disk{i}`, or the
/// newest `disk{i}k{n}` a keep put above it.
pub(crate) async fn top_node(vm: &Vm, index: usize) -> String {
    let base = format!("disk{index}");
    let Ok(nodes) = vm
        .qmp
        .execute_raw("query-named-block-nodes", Some(json!({"flat": true})))
        .await
    else {
        return base;
    };
    newest_node(&nodes, index).unwrap_or(base)
}

/// The highest `disk{index}k{n}` in a `query-named-block-nodes` answer.
fn newest_node(nodes: &Value, index: usize) -> Option<String> {
    let prefix = format!("disk{index}k");
    nodes
        .as_array()?
        .iter()
        .filter_map(|n| n.get("node-name")?.as_str())
        .filter_map(|name| {
            let n: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

/// The next free generation of disk `index`'s top node.
fn next_generation(nodes: &Value, index: usize) -> u32 {
    newest_node(nodes, index)
        .and_then(|n| n.rsplit('k').next()?.parse::<u32>().ok())
        .map_or(1, |n| n.saturating_add(1))
}

/// The file operations done so far for one disk, undone in reverse.
#[derive(Debug, Default)]
struct Done {
    frozen: Option<PathBuf>,
    backing_link: Option<PathBuf>,
    /// The disk's path, now naming the new overlay.
    switched: Option<PathBuf>,
}

fn undo_files(done: &[Done]) {
    for d in done.iter().rev() {
        if let (Some(path), Some(link)) = (&d.switched, &d.backing_link) {
            // Back to the image the VM still writes.
            let _ = std::fs::rename(link, path);
        } else if let Some(link) = &d.backing_link {
            let _ = std::fs::remove_file(link);
        }
        if let Some(f) = &d.frozen {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl QemuEngine {
    /// Makes a template in `dir` of `vm`, whose agent waits at its fork
    /// point, and lets the VM go on (see the module docs). On failure the
    /// VM runs on as it was and nothing of the template is left in `dir`.
    pub async fn save_template_keep(
        &self,
        vm: &Vm,
        dir: &Path,
        plan: &KeepPlan,
    ) -> Result<Kept, EngineError> {
        let mem = vm.run_dir().join("mem");
        if !mem.is_file() {
            return Err(EngineError::InvalidState {
                op: "make a template of",
                state: "a VM whose memory is not its own file (a forked child)".into(),
            });
        }
        check_plan(vm, plan)?;
        super::process::private_dir(dir)?;
        // Opened before the stop: the downtime is QMP and the memory copy.
        let mut next_files = Vec::with_capacity(plan.disks.len());
        for d in &plan.disks {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&d.next)
                .map_err(|e| EngineError::host(format!("open {}", d.next.display()), e))?;
            next_files.push(f);
        }
        let nodes = vm
            .qmp
            .execute_raw("query-named-block-nodes", Some(json!({"flat": true})))
            .await?;
        let was_running = matches!(vm.status().await?, crate::VmStatus::Running);
        let t0 = Instant::now();
        vm.qmp.stop().await?;
        let mut done: Vec<Done> = Vec::new();
        let mut switched = false;
        let mut fdsets = Vec::new();
        let r = async {
            for d in &plan.disks {
                let path = &vm.spec.disks[d.index].path;
                let mut step = Done::default();
                let linked = std::fs::hard_link(path, &d.frozen);
                if linked.is_ok() {
                    step.frozen = Some(d.frozen.clone());
                }
                let linked = linked.and_then(|()| {
                    std::fs::hard_link(path, &d.backing_link)?;
                    step.backing_link = Some(d.backing_link.clone());
                    std::fs::rename(&d.next, path)?;
                    step.switched = Some(path.clone());
                    Ok(())
                });
                done.push(step);
                linked.map_err(|e| {
                    EngineError::host(format!("freeze {} for the template", path.display()), e)
                })?;
            }
            let mut actions = Vec::new();
            for (d, f) in plan.disks.iter().zip(&next_files) {
                let set = FdSet::add(vm.run_dir(), f.as_fd()).await?;
                let filename = set.uri().trim_start_matches("file:").to_string();
                fdsets.push(set);
                let g = next_generation(&nodes, d.index);
                let (file, node) = (
                    format!("file{}k{g}", d.index),
                    format!("disk{}k{g}", d.index),
                );
                vm.qmp
                    .execute_raw(
                        "blockdev-add",
                        Some(json!({"driver": "file", "node-name": file,
                                    "filename": filename, "discard": "unmap"})),
                    )
                    .await?;
                vm.qmp
                    .execute_raw(
                        "blockdev-add",
                        Some(json!({"driver": "qcow2", "node-name": node,
                                    "file": file, "backing": null})),
                    )
                    .await?;
                let top = newest_node(&nodes, d.index).unwrap_or(format!("disk{}", d.index));
                actions.push(json!({"type": "blockdev-snapshot",
                                    "data": {"node": top, "overlay": node}}));
            }
            if !actions.is_empty() {
                // All disks or none: a template of disks from one instant.
                vm.qmp
                    .execute_raw("transaction", Some(json!({ "actions": actions })))
                    .await?;
            }
            switched = true;
            vm.qmp
                .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, true)])
                .await?;
            super::fdpass::save_to_file(&vm.qmp, vm.run_dir(), &dir.join("state"), STATE_TIMEOUT)
                .await?;
            copy_memory(&mem, &dir.join("mem")).await
        }
        .await;
        // The VM's own later saves are full ones (see `save_state`).
        let _ = vm
            .qmp
            .migrate_set_capabilities(&[(MigrationCapabilityName::XIgnoreShared, false)])
            .await;
        if !switched {
            undo_files(&done);
            for d in &plan.disks {
                for n in [format!("disk{}k", d.index), format!("file{}k", d.index)] {
                    let g = next_generation(&nodes, d.index);
                    let _ = vm
                        .qmp
                        .execute_raw(
                            "blockdev-del",
                            Some(json!({"node-name": format!("{n}{g}")})),
                        )
                        .await;
                }
            }
        }
        if !switched {
            for set in fdsets {
                set.remove(&vm.qmp).await;
            }
        }
        // Otherwise the sets stay: QEMU opened its overlays through them and
        // would reopen them there.
        let resumed = if was_running {
            // After the migration QEMU waits in `postmigrate`; `cont` takes
            // its disks back and runs the guest on.
            vm.qmp.cont().await.map_err(EngineError::from)
        } else {
            Ok(())
        };
        let downtime = t0.elapsed();
        if let Err(e) = r.and(resumed) {
            if switched {
                // The VM writes its new overlays; only the template goes.
                for d in &plan.disks {
                    let _ = std::fs::remove_file(&d.frozen);
                }
            }
            let _ = std::fs::remove_dir_all(dir);
            return Err(vm.explain(e).await);
        }
        let t = match finish(vm, dir, plan) {
            Ok(t) => t,
            Err(e) => {
                for d in &plan.disks {
                    let _ = std::fs::remove_file(&d.frozen);
                }
                let _ = std::fs::remove_dir_all(dir);
                return Err(e);
            }
        };
        info!(template = %dir.display(), state_bytes = t.state_bytes,
              downtime_ms = u64::try_from(downtime.as_millis()).unwrap_or(u64::MAX),
              "template saved; the VM runs on");
        Ok(Kept {
            template: t,
            downtime,
        })
    }
}

/// Refuses a plan that does not cover exactly the VM's writable qcow2 disks.
fn check_plan(vm: &Vm, plan: &KeepPlan) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidSpec(m));
    let mut want = Vec::new();
    for (i, d) in vm.spec.disks.iter().enumerate() {
        if d.read_only {
            continue;
        }
        if d.nbd.is_some() || d.overlay || d.format != DiskFormat::Qcow2 {
            return bad(format!(
                "disk {} cannot be switched to a new overlay while the VM runs (it is {}): \
                 make the template without --keep",
                d.path.display(),
                if d.nbd.is_some() {
                    "served by a storage I/O partition"
                } else if d.overlay {
                    "used through a throw-away overlay"
                } else {
                    "raw"
                }
            ));
        }
        want.push(i);
    }
    let got: Vec<usize> = plan.disks.iter().map(|d| d.index).collect();
    if got != want {
        return bad(format!(
            "a keep plan must cover the writable disks {want:?}, got {got:?}"
        ));
    }
    if plan.spec.disks.len() != vm.spec.disks.len() {
        return bad("the template's spec must have the VM's disks".into());
    }
    Ok(())
}

/// Copies the guest memory file (a tmpfs file, so no reflink: a copy).
async fn copy_memory(from: &Path, to: &Path) -> Result<(), EngineError> {
    let (f, t) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut src = std::fs::File::open(&f)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&t)?;
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600))?;
        std::io::copy(&mut src, &mut dst)?;
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|e| EngineError::host("copy the guest memory", std::io::Error::other(e)))?
    .map_err(|e| EngineError::host(format!("copy {} to {}", from.display(), to.display()), e))
}

/// Restricts the template's memory like `save_template` does and writes its
/// description.
fn finish(vm: &Vm, dir: &Path, plan: &KeepPlan) -> Result<Template, EngineError> {
    let kept = dir.join("mem");
    let gid = std::fs::metadata(vm.run_dir().join("mem"))
        .map_err(|e| EngineError::host("stat the VM's memory file", e))?
        .gid();
    if nix::unistd::geteuid().is_root() {
        // Children run in the VM's group (see `launch`) and map it read-only.
        std::os::unix::fs::chown(&kept, Some(0), Some(gid))
            .and_then(|()| std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o440)))
            .map_err(|e| EngineError::host(format!("restrict {}", kept.display()), e))?;
    }
    let state_bytes = std::fs::metadata(dir.join("state"))
        .map(|m| m.len())
        .unwrap_or(0);
    let t = Template {
        dir: dir.to_path_buf(),
        spec: plan.spec.clone(),
        accel: vm.accel,
        state_bytes,
    };
    let json =
        serde_json::to_vec_pretty(&t).map_err(|e| EngineError::InvalidSpec(e.to_string()))?;
    super::process::private_file(&dir.join(TEMPLATE_FILE)).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &json)
            .map_err(|e| EngineError::host("write the template description", e))
    })?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_node_is_the_newest_generation() {
        let nodes = json!([
            {"node-name": "disk0"}, {"node-name": "disk0k1"}, {"node-name": "disk0k12"},
            {"node-name": "disk1"}, {"node-name": "disk10k3"}, {"node-name": "disk0b1"},
            {"node-name": "file0k2"}
        ]);
        assert_eq!(newest_node(&nodes, 0).as_deref(), Some("disk0k12"));
        assert_eq!(next_generation(&nodes, 0), 13);
        assert_eq!(newest_node(&nodes, 1), None);
        assert_eq!(next_generation(&nodes, 1), 1);
        assert_eq!(newest_node(&nodes, 10).as_deref(), Some("disk10k3"));
        assert_eq!(newest_node(&json!({"odd": 1}), 0), None);
    }
}
