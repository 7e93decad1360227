//! Storage I/O partitions: one supervised `qemu-storage-daemon` per
//! storage zone (`storage-ZONE`) owns the images of the disks that say
//! `io_zone` (`--disk NAME:SIZE,via=io[:ZONE]`) and exports them to their
//! guests over NBD on one unix socket (see `brood_engine::storage`).
//!
//! - Channels: a disk channel is opened in the transaction that starts the
//!   guest ([`open_op`]) and closed in the one that settles it, so the
//!   guest's resources go back only with its channels closed.
//! - Before the guest's QEMU starts, [`use_disks`] makes sure the zone's
//!   daemon serves its exports (the supervisor restarts the daemon when the
//!   set of exports changes: clients stall and reconnect, nothing is lost,
//!   because every export writes through and QEMU's NBD client waits
//!   `reconnect-delay` for its server).
//! - The listening socket is the supervisor's, not the daemon's: a daemon
//!   that is killed is replaced on the same socket, and a broodd that was
//!   killed takes the socket back from the daemon it adopts
//!   (pidfd_getfd), so the links in the guests' run directories stay good.
//! - Transport: NBD for every guest, parents and forked children alike.
//!   A child must have its template's devices (its state is the
//!   template's migration stream), and a child's memory is a private
//!   copy-on-write mapping that vhost-user cannot share with a server;
//!   so a disk that may end up in a template (any disk) is a virtio-blk
//!   device with an NBD backend, which every child can keep.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brood_api as api;
use brood_engine::storage::{self as engine_storage, StorageExport};
use brood_engine::{DiskFormat, NbdExport, VmSpec};
use brood_ledger::{DiskChannelSpec, IoState, NetOp, Op, PartitionRecord, Transport};
use tracing::{info, warn};
use uuid::Uuid;

use super::supervise::{self, Proc, Supervisor};
use crate::host::{Host, HostError, HostResult};

/// How long a starting guest waits for its zone's daemon to serve its disks.
const SERVE_WAIT: Duration = Duration::from_secs(30);

/// The directory of a storage I/O partition's socket: beside the run root
/// (the same file system, so the engine can hard-link the socket into each
/// guest's run directory; not inside it, where reconciliation removes what
/// is not a VM's).
pub fn socket_dir(host: &Host, name: &str) -> PathBuf {
    let root = host.engine.run_root();
    PathBuf::from(format!("{}-io", root.display())).join(name)
}

/// The op that opens the disk channels of `rec`'s active configuration
/// (none when no disk asks for a storage I/O partition).
pub fn open_op(host: &Host, rec: &PartitionRecord) -> HostResult<Option<Op>> {
    let Ok(c) = crate::host::config::active_config(rec) else {
        return Ok(None);
    };
    if c.disks.iter().all(|d| d.io_zone.is_none()) {
        return Ok(None);
    }
    let spec = crate::host::config::vm_spec(rec, &host.paths)?;
    let first = crate::host::config::first_config_disk(spec.disks.len(), &c);
    let mut disks = Vec::new();
    for (j, d) in c.disks.iter().enumerate() {
        let Some(zone) = &d.io_zone else { continue };
        let disk = first + j;
        let image = spec
            .disks
            .get(disk)
            .map(|s| s.path.clone())
            .ok_or_else(|| {
                HostError::corrupt(format!("partition {}", rec.name), "a disk has no image")
            })?;
        disks.push(DiskChannelSpec {
            disk: u32::try_from(disk).unwrap_or(u32::MAX),
            zone: zone.clone(),
            export: engine_storage::export_name()
                .map_err(|e| HostError::engine("make an export name", e))?,
            image: image.display().to_string(),
            format: DiskFormat::Qcow2.as_str().into(),
            transport: Transport::Nbd,
        });
    }
    Ok(Some(Op::Net(NetOp::OpenDiskChannels {
        partition: rec.uuid,
        disks,
    })))
}

/// The op that opens the disk channels of forked child `uuid` of a
/// template whose configuration `c` serves disks from storage I/O
/// partitions: the child's overlays (named as `template::child_disks`
/// makes them, over the template's disks `tpl_disks`) are served by the
/// same zones, over NBD. None when no disk asks for one.
pub fn child_open_op(
    host: &Host,
    uuid: Uuid,
    c: &api::PartitionConfig,
    tpl_disks: &[brood_engine::DiskSpec],
) -> HostResult<Option<Op>> {
    if c.disks.iter().all(|d| d.io_zone.is_none()) {
        return Ok(None);
    }
    let first = tpl_disks.len().saturating_sub(c.disks.len());
    let mut disks = Vec::new();
    for (j, d) in c.disks.iter().enumerate() {
        let Some(zone) = &d.io_zone else { continue };
        let disk = first + j;
        let file = tpl_disks
            .get(disk)
            .and_then(|b| b.path.file_name())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("disk.qcow2"));
        disks.push(DiskChannelSpec {
            disk: u32::try_from(disk).unwrap_or(u32::MAX),
            zone: zone.clone(),
            export: engine_storage::export_name()
                .map_err(|e| HostError::engine("make an export name", e))?,
            image: host.paths.disk_dir(uuid).join(file).display().to_string(),
            format: DiskFormat::Qcow2.as_str().into(),
            transport: Transport::Nbd,
        });
    }
    Ok(Some(Op::Net(NetOp::OpenDiskChannels {
        partition: uuid,
        disks,
    })))
}

/// Points the disks of `spec` that have a channel at their storage I/O
/// partition, starting it if needed and waiting (bounded) until its
/// daemon serves them.
pub async fn use_disks(host: &Arc<Host>, uuid: Uuid, spec: &mut VmSpec) -> HostResult<()> {
    let mine: Vec<_> = host
        .ledger
        .disk_channels()
        .await?
        .into_iter()
        .filter(|c| c.partition == uuid)
        .collect();
    let mut by_io: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &mine {
        by_io
            .entry(c.io_partition.clone())
            .or_default()
            .push(c.export.clone());
    }
    for (io, exports) in by_io {
        super::ensure(host, &io).await?;
        let sup = host
            .feature::<super::IoPartitions>()
            .get(&io)
            .ok_or_else(|| {
                HostError::corrupt(
                    format!("I/O partition {io}"),
                    "no supervisor right after start",
                )
            })?;
        sup.nudge.notify_one();
        let mut served = sup.served.subscribe();
        let wait = served.wait_for(|s| exports.iter().all(|e| s.contains(e)));
        match tokio::time::timeout(SERVE_WAIT, wait).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(HostError::conflict(format!(
                    "storage I/O partition {io} does not serve this VM's disks after {}s: see `brood io show {io}` and its log in {}",
                    SERVE_WAIT.as_secs(),
                    supervise::dir(host, &io).join("storage.log").display()
                )));
            }
        }
    }
    for c in mine {
        let socket = socket_dir(host, &c.io_partition).join("nbd.sock");
        let i = usize::try_from(c.disk).unwrap_or(usize::MAX);
        if let Some(d) = spec.disks.get_mut(i) {
            d.nbd = Some(NbdExport {
                socket,
                export: c.export,
            });
        }
    }
    Ok(())
}

/// The clients of storage I/O partition `name`.
pub async fn clients(host: &Host, name: &str) -> HostResult<Vec<api::DiskClient>> {
    let mut out = Vec::new();
    for c in host.ledger.disk_channels().await? {
        if c.io_partition != name {
            continue;
        }
        let partition = host
            .ledger
            .partition_by_uuid(c.partition)
            .await?
            .map_or_else(|| c.partition.to_string(), |p| p.name);
        out.push(api::DiskClient {
            partition,
            uuid: c.partition,
            disk: c.disk,
            image: c.image,
            transport: c.transport.as_str().into(),
        });
    }
    Ok(out)
}

/// What the zone's daemon must export: every open channel's image.
async fn wanted(host: &Host, name: &str) -> HostResult<Vec<StorageExport>> {
    let mut out = Vec::new();
    for c in host.ledger.disk_channels().await? {
        if c.io_partition != name {
            continue;
        }
        let format = c
            .format
            .parse()
            .map_err(|e: String| HostError::corrupt(format!("disk channel {}", c.partition), e))?;
        out.push(StorageExport {
            name: c.export,
            path: PathBuf::from(c.image),
            format,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn names(e: &[StorageExport]) -> Vec<String> {
    e.iter().map(|x| x.name.clone()).collect()
}

/// Adopts the daemon a previous broodd recorded if it is still this
/// partition's (its `--pidfile` names our directory) and takes its
/// listening socket back; returns it with the exports it serves.
fn adopt(pid: u32, pidfile: &Path) -> Option<(Proc, OwnedFd, Vec<String>)> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&str> = cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    let ours = args
        .first()
        .is_some_and(|a| a.ends_with("qemu-storage-daemon"))
        && args
            .windows(2)
            .any(|w| w.first() == Some(&"--pidfile") && w.get(1).map(Path::new) == Some(pidfile));
    if !ours {
        return None;
    }
    let proc = supervise::adopt_pid(pid)?;
    let served = engine_storage::served_exports(args.iter().copied());
    match engine_storage::take_listener(proc.pidfd()?) {
        Ok(l) => Some((proc, l, served)),
        Err(e) => {
            warn!(
                pid,
                "cannot take the storage daemon's socket back, replacing it: {e}"
            );
            proc.signal(nix::sys::signal::Signal::SIGKILL);
            None
        }
    }
}

fn spawn(
    listener: &OwnedFd,
    exports: &[StorageExport],
    pidfile: &Path,
    log: &Path,
) -> std::io::Result<Proc> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let extra = ["--pidfile".to_string(), pidfile.display().to_string()];
    let mut cmd = engine_storage::daemon_command(listener, exports, &extra);
    super::confine::confine(&mut cmd, super::confine::STORAGE_CAPS);
    // It outlives a broodd that is killed: its guests keep their disks.
    cmd.stderr(out).kill_on_drop(false);
    Ok(Proc::Child(cmd.spawn()?))
}

/// Binds the partition's socket anew (no daemon to take it back from: it
/// died, perhaps while broodd was down) and points the guests still linked
/// to the old socket at the new one. The links in their run directories
/// (QEMU's root) name the old socket's inode, which nobody listens on any
/// more; each is replaced (link beside it, then rename over it, so the
/// name never goes missing) and QEMU's NBD client, retrying its path every
/// second within `reconnect-delay`, connects to the new socket.
async fn bind_again(host: &Host, name: &str, socket: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt;
    let old = std::fs::symlink_metadata(socket)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let server = engine_storage::StorageServer::create(socket).map_err(|e| e.to_string())?;
    if let Some(old) = old {
        let (root, socket) = (host.engine.run_root(), socket.to_path_buf());
        let moved = tokio::task::spawn_blocking(move || relink(&root, old, &socket))
            .await
            .unwrap_or_default();
        if moved > 0 {
            info!(io = %name, guests = moved, "guests linked to the storage socket again");
        }
    }
    Ok(server.into_listener())
}

/// Replaces every `nbd*.sock` link under the VMs' run directories in `root`
/// that is inode `old` with a link to `socket`; returns how many.
fn relink(root: &Path, old: (u64, u64), socket: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut moved = 0;
    let Ok(vms) = std::fs::read_dir(root) else {
        return 0;
    };
    for vm in vms.flatten() {
        let Ok(files) = std::fs::read_dir(vm.path()) else {
            continue;
        };
        for f in files.flatten() {
            let fname = f.file_name();
            let n = fname.to_string_lossy();
            if !(n.starts_with("nbd") && n.ends_with(".sock")) {
                continue;
            }
            let path = f.path();
            let same = std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == old);
            if !same {
                continue;
            }
            let tmp = vm.path().join(format!(".{n}.new"));
            let _ = std::fs::remove_file(&tmp);
            let done = std::fs::hard_link(socket, &tmp).and_then(|()| std::fs::rename(&tmp, &path));
            match done {
                Ok(()) => moved += 1,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    warn!("link {} to the new storage socket: {e}", path.display());
                }
            }
        }
    }
    moved
}

/// The supervisor task of a storage I/O partition.
pub(super) async fn supervise(host: &Arc<Host>, sup: &Supervisor) {
    let dir = supervise::dir(host, &sup.name);
    let sdir = socket_dir(host, &sup.name);
    for d in [&dir, &sdir] {
        if let Err(e) = std::fs::create_dir_all(d) {
            warn!(io = %sup.name, "create {}: {e}", d.display());
            return;
        }
    }
    let (pidfile, log, socket) = (
        dir.join("qsd.pid"),
        dir.join("storage.log"),
        sdir.join("nbd.sock"),
    );
    let rec = host.ledger.io_partition(&sup.name).await.ok().flatten();
    let mut restarts = rec.as_ref().map_or(0, |r| r.restart_count);
    let mut proc = None;
    let mut listener = None;
    let mut served = Vec::new();
    if let Some((p, l, s)) = rec.and_then(|r| r.pid).and_then(|pid| adopt(pid, &pidfile)) {
        info!(io = %sup.name, pid = p.pid(), "adopted the running storage daemon");
        supervise::record(host, &sup.name, IoState::Running, Some(p.pid()), None, None).await;
        (proc, listener, served) = (Some(p), Some(l), s);
    }
    let listener = match listener {
        Some(l) => l,
        None => match bind_again(host, &sup.name, &socket).await {
            Ok(l) => l,
            Err(e) => {
                warn!(io = %sup.name, "bind the storage socket: {e}");
                supervise::record(
                    host,
                    &sup.name,
                    IoState::Crashed,
                    None,
                    None,
                    Some(format!("cannot bind {}: {e}", socket.display())),
                )
                .await;
                return;
            }
        },
    };
    let mut failures: u32 = 0;
    loop {
        let want = match wanted(host, &sup.name).await {
            Ok(w) => w,
            Err(e) => {
                warn!(io = %sup.name, "read the disk channels: {}", crate::host::chain(&e));
                tokio::select! {
                    () = tokio::time::sleep(supervise::SYNC_EVERY) => continue,
                    () = sup.stop.notified() => {
                        if let Some(mut p) = proc.take() {
                            p.end().await;
                        }
                        sup.served.send_replace(Vec::new());
                        return;
                    }
                }
            }
        };
        let mut p = match proc.take() {
            Some(p) if served == names(&want) => p,
            other => {
                if let Some(mut old) = other {
                    let how = old.end().await;
                    info!(io = %sup.name, "storage daemon replaced for a new set of exports ({how})");
                }
                sup.served.send_replace(Vec::new());
                if failures > 1 {
                    tokio::select! {
                        () = tokio::time::sleep(supervise::backoff(failures)) => {}
                        () = sup.stop.notified() => return,
                    }
                }
                supervise::record(host, &sup.name, IoState::Starting, None, None, None).await;
                match spawn(&listener, &want, &pidfile, &log) {
                    Ok(p) => {
                        info!(io = %sup.name, pid = p.pid(), exports = want.len(), "storage daemon started");
                        supervise::record(
                            host,
                            &sup.name,
                            IoState::Running,
                            Some(p.pid()),
                            None,
                            None,
                        )
                        .await;
                        served = names(&want);
                        p
                    }
                    Err(e) => {
                        warn!(io = %sup.name, "start qemu-storage-daemon: {e}");
                        failures = failures.saturating_add(1);
                        let why = format!("failed to start: {e}");
                        supervise::record(host, &sup.name, IoState::Crashed, None, None, Some(why))
                            .await;
                        continue;
                    }
                }
            }
        };
        sup.served.send_replace(served.clone());
        let started = Instant::now();
        let mut pinned = None;
        supervise::keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
        loop {
            tokio::select! {
                how = p.wait() => {
                    warn!(io = %sup.name, "storage daemon ended on its own ({how}); restarting it");
                    failures = if started.elapsed() > supervise::STABLE { 1 } else { failures.saturating_add(1) };
                    restarts = restarts.saturating_add(1);
                    sup.served.send_replace(Vec::new());
                    served.clear();
                    supervise::record(host, &sup.name, IoState::Crashed, None, Some(restarts), Some(how)).await;
                    break;
                }
                () = sup.stop.notified() => {
                    let how = p.end().await;
                    sup.served.send_replace(Vec::new());
                    info!(io = %sup.name, "storage daemon stopped ({how})");
                    return;
                }
                () = sup.restart.notified() => {
                    let how = p.end().await;
                    info!(io = %sup.name, "storage daemon restarted on request ({how})");
                    failures = 0;
                    served.clear();
                    break;
                }
                () = sup.nudge.notified() => {
                    if changed(host, sup, &served).await {
                        proc = Some(p);
                        break;
                    }
                    supervise::keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
                }
                () = tokio::time::sleep(supervise::SYNC_EVERY) => {
                    if host.is_stopping() {
                        // broodd stops; the daemon keeps serving its guests.
                        return;
                    }
                    supervise::keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
                    if changed(host, sup, &served).await {
                        proc = Some(p);
                        break;
                    }
                }
            }
        }
    }
}

/// Whether the ledger's exports differ from what the daemon serves.
async fn changed(host: &Host, sup: &Supervisor, served: &[String]) -> bool {
    match wanted(host, &sup.name).await {
        Ok(w) => names(&w) != served,
        Err(e) => {
            warn!(io = %sup.name, "read the disk channels: {}", crate::host::chain(&e));
            false
        }
    }
}
