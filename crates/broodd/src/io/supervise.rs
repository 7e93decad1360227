//! One supervisor task per I/O partition: starts (or adopts) its process,
//! records each start and end in the ledger, restarts it after a failure
//! (at once, then with a doubling backoff while it keeps failing), and
//! keeps its configuration file in step with the ledger's channels.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brood_engine::switch::SwitchConfig;
use brood_ledger::{IoKind, IoState, NetOp, Op, Tx};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::host::Host;

/// Longest wait before restarting a process that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A process that ran this long before failing starts a fresh backoff.
pub(crate) const STABLE: Duration = Duration::from_secs(10);
/// How often the configuration is compared with the ledger without a nudge.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long a process is given to end after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// The ledger's actor for supervision.
const ACTOR: &str = "broodd";

/// A supervisor's handles.
#[derive(Debug)]
pub struct Supervisor {
    /// The I/O partition.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Re-read the ledger and rewrite the configuration now.
    pub nudge: Notify,
    /// End the process and the supervisor.
    pub stop: Notify,
    /// End the process; the supervisor starts it again.
    pub restart: Notify,
    /// The supervisor has ended.
    pub done: AtomicBool,
    /// What it serves.
    pub kind: IoKind,
    /// A storage partition's exports its daemon serves now (empty while
    /// none runs).
    pub served: tokio::sync::watch::Sender<Vec<String>>,
}

impl Supervisor {
    /// Whether the task has ended.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the task has ended.
    pub async fn wait_done(&self) {
        let deadline = Instant::now() + TERM_GRACE * 3;
        let mut pause = Duration::from_millis(5);
        while !self.is_done() && Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// The CPUs broodd may use (its own affinity), in order.
pub(crate) fn host_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect()
}

/// The CPUs an I/O partition with `cpus` dedicated CPUs runs on: the last
/// `cpus` of broodd's, or all of them.
pub(crate) fn dedicated(cpus: Option<u32>) -> Vec<usize> {
    let all = host_cpus();
    match cpus.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n < all.len() => all.get(all.len() - n..).unwrap_or_default().to_vec(),
        _ => all,
    }
}

/// The CPUs process `pid`'s main thread may run on.
pub(crate) fn allowed(pid: u32) -> Option<Vec<usize>> {
    let raw = i32::try_from(pid).ok()?;
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(raw)).ok()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|c| set.is_set(*c).unwrap_or(false))
            .collect(),
    )
}

/// Process `pid`'s `Cpus_allowed_list`, as `/proc/PID/status` shows it.
pub(crate) fn cpu_list(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// Pins every thread of process `pid` to `cpus` (threads it makes later
/// inherit the set from the thread that makes them).
fn pin(pid: u32, cpus: &[usize]) -> std::io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(*c).map_err(std::io::Error::from)?;
    }
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok());
        if let Some(tid) = tid {
            // A thread that ended meanwhile is no error.
            match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Keeps the process `pid` of I/O partition `name` on its dedicated CPUs:
/// pins it when the ledger's number, or the process, changed since `last`.
pub(crate) async fn keep_pinned(
    host: &Host,
    name: &str,
    pid: u32,
    last: &mut Option<(u32, Option<u32>)>,
) {
    let Ok(Some(rec)) = host.ledger.io_partition(name).await else {
        return;
    };
    if *last == Some((pid, rec.cpus)) {
        return;
    }
    let cpus = dedicated(rec.cpus);
    match pin(pid, &cpus) {
        Ok(()) => {
            *last = Some((pid, rec.cpus));
            if rec.cpus.is_some() {
                info!(io = %name, pid, ?cpus, "pinned to its dedicated CPUs");
            }
        }
        Err(e) => warn!(io = %name, pid, "pin to CPUs {cpus:?}: {e}"),
    }
}

/// The switch program: `BROOD_SWITCH`, or `brood-switch` beside broodd.
fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("BROOD_SWITCH") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("brood-switch")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("brood-switch"))
}

/// The directory of I/O partition `name`: its configuration and log.
pub fn dir(host: &Host, name: &str) -> PathBuf {
    host.paths.data.join("io").join(name)
}

/// The wait before restarting a process that failed `failures` times in a row.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF)
}

/// A running process of an I/O partition.
pub(crate) enum Proc {
    /// Started by this broodd.
    Child(tokio::process::Child),
    /// Started by an earlier broodd: watched through a pidfd.
    Adopted { pid: u32, fd: AsyncFd<OwnedFd> },
}

impl Proc {
    /// Its pidfd, when adopted.
    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        match self {
            Proc::Child(_) => None,
            Proc::Adopted { fd, .. } => Some(fd.get_ref()),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id().unwrap_or(0),
            Proc::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits until it ends and says how.
    pub(crate) async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("lost: {e}"),
            },
            Proc::Adopted { fd, .. } => {
                // A pidfd turns readable when its process ends.
                let _ = fd.readable().await;
                "ended (adopted: status unknown)".into()
            }
        }
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.pid())
            && pid > 0
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Ends it: SIGTERM, then SIGKILL after a grace period.
    pub(crate) async fn end(&mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(TERM_GRACE, self.wait()).await {
            Ok(how) => how,
            Err(_) => {
                self.signal(nix::sys::signal::Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// Adopts the process a previous broodd recorded, if it is still this
/// I/O partition's switch (not a recycled pid).
fn adopt(pid: u32, config: &Path) -> Option<Proc> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.first().is_some_and(|a| a.ends_with(b"brood-switch"))
        && args.contains(&config.as_os_str().as_encoded_bytes());
    if !ours {
        return None;
    }
    adopt_pid(pid)
}

/// Watches process `pid` (checked to be ours by the caller) through a pidfd.
pub(crate) fn adopt_pid(pid: u32) -> Option<Proc> {
    let raw = i32::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the descriptor until it is dropped.
    let fd = unsafe { AsyncFd::register(owned) }.ok()?;
    Some(Proc::Adopted { pid, fd })
}

fn spawn(config: &Path, log: &Path) -> std::io::Result<Proc> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(program());
    super::confine::confine(&mut cmd, super::confine::SWITCH_CAPS);
    let child = cmd
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for broodd does not reach it,
        // and it outlives a broodd that is killed (guests keep their network).
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    Ok(Proc::Child(child))
}

pub(crate) async fn record(
    host: &Host,
    name: &str,
    state: IoState,
    pid: Option<u32>,
    restarts: Option<u32>,
    exit: Option<String>,
) {
    let reason = format!("{name} {}", state.as_str());
    let op = Op::Net(NetOp::SetIoState {
        name: name.to_owned(),
        run_state: state,
        pid,
        restart_count: restarts,
        last_exit: exit,
    });
    if let Err(e) = host.ledger.commit(Tx::new(ACTOR, reason, vec![op])).await {
        warn!(io = %name, "record the I/O partition's state: {}", crate::host::chain(&e));
    }
}

/// Writes the switch configuration when the ledger's channels changed it.
async fn sync(host: &Host, sup: &Supervisor, path: &Path, last: &mut Option<SwitchConfig>) {
    match super::switch::switch_config(host, &sup.zone).await {
        Ok(c) if last.as_ref() != Some(&c) => match c.store(path) {
            Ok(()) => *last = Some(c),
            Err(e) => warn!(io = %sup.name, "write the switch configuration: {e}"),
        },
        Ok(_) => {}
        Err(e) => warn!(io = %sup.name, "read the switch's channels: {}", crate::host::chain(&e)),
    }
}

/// The supervisor task.
pub async fn run(host: Arc<Host>, sup: Arc<Supervisor>) {
    match sup.kind {
        IoKind::Switch => supervise(&host, &sup).await,
        IoKind::Storage => super::storage::supervise(&host, &sup).await,
    }
    sup.done.store(true, Ordering::SeqCst);
}

async fn supervise(host: &Arc<Host>, sup: &Supervisor) {
    let dir = dir(host, &sup.name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(io = %sup.name, "create {}: {e}", dir.display());
        return;
    }
    let config = dir.join("switch.json");
    let log = dir.join("switch.log");
    let mut last = None;
    sync(host, sup, &config, &mut last).await;
    let rec = host.ledger.io_partition(&sup.name).await.ok().flatten();
    let mut restarts = rec.as_ref().map_or(0, |r| r.restart_count);
    let mut proc = rec.and_then(|r| r.pid).and_then(|pid| adopt(pid, &config));
    if let Some(p) = &proc {
        info!(io = %sup.name, pid = p.pid(), "adopted the running switch");
        record(host, &sup.name, IoState::Running, Some(p.pid()), None, None).await;
    }
    let mut failures: u32 = 0;
    loop {
        let mut p = match proc.take() {
            Some(p) => p,
            None => {
                if failures > 1 {
                    tokio::select! {
                        () = tokio::time::sleep(backoff(failures)) => {}
                        () = sup.stop.notified() => return,
                    }
                }
                record(host, &sup.name, IoState::Starting, None, None, None).await;
                match spawn(&config, &log) {
                    Ok(p) => {
                        info!(io = %sup.name, pid = p.pid(), "switch started");
                        record(host, &sup.name, IoState::Running, Some(p.pid()), None, None).await;
                        p
                    }
                    Err(e) => {
                        warn!(io = %sup.name, "start {}: {e}", program().display());
                        failures = failures.saturating_add(1);
                        record(
                            host,
                            &sup.name,
                            IoState::Crashed,
                            None,
                            None,
                            Some(format!("failed to start: {e}")),
                        )
                        .await;
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let mut pinned = None;
        keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
        loop {
            tokio::select! {
                how = p.wait() => {
                    warn!(io = %sup.name, "switch ended on its own ({how}); restarting it");
                    failures = if started.elapsed() > STABLE { 1 } else { failures.saturating_add(1) };
                    restarts = restarts.saturating_add(1);
                    record(host, &sup.name, IoState::Crashed, None, Some(restarts), Some(how)).await;
                    break;
                }
                () = sup.stop.notified() => {
                    let how = p.end().await;
                    info!(io = %sup.name, "switch stopped ({how})");
                    return;
                }
                () = sup.restart.notified() => {
                    let how = p.end().await;
                    info!(io = %sup.name, "switch restarted on request ({how})");
                    failures = 0;
                    break;
                }
                () = sup.nudge.notified() => {
                    sync(host, sup, &config, &mut last).await;
                    keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
                }
                () = tokio::time::sleep(SYNC_EVERY) => {
                    if host.is_stopping() {
                        // broodd stops; the switch keeps serving its guests.
                        return;
                    }
                    sync(host, sup, &config, &mut last).await;
                    keep_pinned(host, &sup.name, p.pid(), &mut pinned).await;
                }
            }
        }
    }
}
