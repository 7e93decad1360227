//! Starting QEMU and owning what a VM leaves on the host.
//!
//! `spawn` starts QEMU in its own process group with the listening sockets,
//! taps and disk images at fixed descriptor numbers, confined by a `Jail`. `VmResources` is the RAII guard for
//! everything a VM created (process group, run directory with sockets,
//! memory file and overlays, taps): dropping it kills the group and removes
//! the rest, so a failed boot, a panicking test and a finished VM all clean
//! up the same way.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use super::jail::Jail;
use crate::EngineError;
use crate::net::Tap;

/// Descriptors at or above this are free for the dance in `spawn`.
const HIGH_FD: RawFd = 100;

/// The run directory of one VM and what lives in it.
#[derive(Debug)]
pub struct VmResources {
    /// `<run_root>/<name>`: sockets, memory file, overlays, logs.
    pub run_dir: PathBuf,
    /// QEMU's pid, which is also its process group id.
    pub pgid: Option<i32>,
    /// Set once QEMU has been reaped: the pid may be reused after that.
    pub reaped: Arc<AtomicBool>,
    /// Taps the VM's NICs use.
    pub taps: Vec<Tap>,
    /// Leave the run directory in place on drop (broodd keeps logs of crashed VMs).
    pub keep_run_dir: bool,
    /// Kill QEMU and remove everything on drop; off for VMs that must outlive
    /// this process (broodd's, which it finds again after a restart).
    pub kill_on_drop: bool,
    /// The VM's cgroups, removed once QEMU is gone.
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// Which claim on `run_dir` this is (see [`claim_run_dir`]): a VM that
    /// ended but is dropped only after the next VM of the same name made
    /// its run directory must not remove that one.
    pub claim: u64,
}

/// The run directories this process's VMs own, each with the claim of the
/// newest owner. `create` and `Drop` hold the lock while they make or remove
/// a run directory, so an old owner dropped late (the exit watcher holds the
/// last reference a moment after a stop returned) leaves the new owner's
/// directory alone.
static RUN_DIRS: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, u64>>> =
    std::sync::Mutex::new(None);
static NEXT_CLAIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn run_dirs() -> std::sync::MutexGuard<'static, Option<std::collections::HashMap<PathBuf, u64>>> {
    RUN_DIRS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a new owner of `dir` and returns its claim.
pub fn claim_run_dir(dir: &Path) -> u64 {
    let claim = NEXT_CLAIM.fetch_add(1, Ordering::Relaxed);
    run_dirs()
        .get_or_insert_with(Default::default)
        .insert(dir.to_path_buf(), claim);
    claim
}

impl VmResources {
    /// Creates `<run_root>/<name>`, replacing a stale one left by a dead VM.
    /// Both are 0700 (guest memory lives there); `open_to_group` then lets
    /// QEMU's group search the run directory, which QEMU, chrooted there,
    /// needs to open its memory file.
    pub fn create(run_root: &Path, name: &str) -> Result<Self, EngineError> {
        private_dir(run_root)?;
        let run_dir = run_root.join(name);
        let mut dirs = run_dirs();
        if run_dir.exists() {
            if let Some(pid) = live_pid(&run_dir) {
                return Err(EngineError::InvalidSpec(format!(
                    "a VM named {name:?} is already running (QEMU pid {pid}); pick another name"
                )));
            }
            std::fs::remove_dir_all(&run_dir)
                .map_err(|e| EngineError::host(format!("remove stale {}", run_dir.display()), e))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .map_err(|e| EngineError::host(format!("create {}", run_dir.display()), e))?;
        let claim = NEXT_CLAIM.fetch_add(1, Ordering::Relaxed);
        dirs.get_or_insert_with(Default::default)
            .insert(run_dir.clone(), claim);
        drop(dirs);
        Ok(Self {
            run_dir,
            pgid: None,
            reaped: Arc::new(AtomicBool::new(false)),
            taps: Vec::new(),
            keep_run_dir: false,
            kill_on_drop: true,
            cgroup: None,
            claim,
        })
    }

    /// Lets group `gid` (QEMU's) search the run directory, and nobody else.
    pub fn open_to_group(&self, gid: u32) -> Result<(), EngineError> {
        std::os::unix::fs::chown(&self.run_dir, Some(0), Some(gid))
            .and_then(|()| {
                std::fs::set_permissions(&self.run_dir, std::fs::Permissions::from_mode(0o710))
            })
            .map_err(|e| EngineError::host(format!("hand {} to QEMU", self.run_dir.display()), e))
    }

    /// Sends SIGKILL to QEMU's process group unless it was already reaped.
    pub fn kill(&self) {
        if let Some(pgid) = self.pgid
            && !self.reaped.load(Ordering::SeqCst)
        {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for VmResources {
    fn drop(&mut self) {
        if !self.kill_on_drop && !self.reaped.load(Ordering::SeqCst) {
            return;
        }
        self.kill();
        self.taps.clear();
        let mut dirs = run_dirs();
        let map = dirs.get_or_insert_with(Default::default);
        // Only the newest owner removes the directory (or a VM whose
        // directory nobody in this process claimed).
        let newest = map.get(&self.run_dir).is_none_or(|&c| c == self.claim);
        if newest {
            map.remove(&self.run_dir);
            if !self.keep_run_dir {
                let _ = std::fs::remove_dir_all(&self.run_dir);
            }
        }
        drop(dirs);
        if let Some(cg) = &self.cgroup {
            // The group is this VM's own (its name has a nonce), whoever
            // owns the run directory now. QEMU may still be exiting after
            // the SIGKILL; the exit watcher removes the group too once it
            // has reaped it.
            cg.remove();
        }
    }
}

/// Creates `dir` (and its parents) if missing and makes it 0700: run roots
/// and template directories hold guest memory.
pub fn private_dir(dir: &Path) -> Result<(), EngineError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| EngineError::host(format!("create {}", dir.display()), e))
}

/// Creates (or empties) `path` with mode 0600.
pub fn private_file(path: &Path) -> Result<std::fs::File, EngineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| EngineError::host(format!("create {}", path.display()), e))
}

/// The pid in `run_dir/pid` if that process is alive and its command line
/// names `run_dir` (so a reused pid is not mistaken for the VM).
pub fn live_pid(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run_dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let run = run_dir.as_os_str().as_encoded_bytes();
    let is_ours = cmdline.windows(run.len().max(1)).any(|w| w == run);
    is_ours.then_some(pid)
}

/// How QEMU is started, besides its argv and descriptors.
#[derive(Debug)]
pub struct SpawnOpts<'a> {
    /// Where its stderr goes.
    pub stderr_log: &'a Path,
    /// Its argv[0]: the run directory's `qemu-system-*`, so that its command
    /// line names the run directory (how `live_pid` and `find_qemus` know it).
    pub arg0: &'a Path,
    /// Killed by SIGKILL when this process dies.
    pub die_with_parent: bool,
    /// `cgroup.procs` files to join before exec.
    pub cgroups: &'a [std::fs::File],
    /// Transparent huge pages off (forked children).
    pub no_thp: bool,
}

/// Starts QEMU (`jail.program()`, inside `jail`) with `argv` in a new
/// process group, `fds` placed at the given descriptor numbers, stdout
/// discarded.
pub fn spawn(
    argv: &[OsString],
    fds: &[(&OwnedFd, RawFd)],
    o: &SpawnOpts<'_>,
    jail: Jail,
) -> Result<tokio::process::Child, EngineError> {
    let (die_with_parent, no_thp) = (o.die_with_parent, o.no_thp);
    let program = jail.program().to_path_buf();
    // Move every source above the targets first, so no dup2 below can
    // overwrite a source that another target still needs.
    let mut high = Vec::with_capacity(fds.len());
    for (fd, target) in fds {
        let h = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD))
            .map_err(|e| EngineError::host("duplicate a descriptor for QEMU", e.into()))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        high.push((
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(h) },
            *target,
        ));
    }
    let moves: Vec<(RawFd, RawFd)> = high.iter().map(|(h, t)| (h.as_raw_fd(), *t)).collect();
    let join: Vec<RawFd> = o.cgroups.iter().map(AsRawFd::as_raw_fd).collect();
    let stderr = private_file(o.stderr_log)?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg0(o.arg0)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (prctl, getppid, write, dup2,
    // and those of `Jail::enter`) on values computed before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Until exec, this is a piece of its parent (broodd): if the
            // parent dies while the jail is set up, the child must not go
            // on to become a QEMU nobody knows (a restarted broodd looks
            // for QEMUs by their command line, which this is not yet).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("parent exited"));
            }
            // Transparent huge pages make every 2 MiB of TCG's translation
            // buffer that a child touches resident in full; a forked child
            // touches little of it, scattered. (Inherited across exec.)
            if no_thp && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Join the VM's cgroups before exec, so QEMU is charged from its start.
            for &fd in &join {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            jail.enter()?;
            // The uid change (as root) cleared the parent-death signal: set
            // it again for a VM that dies with its parent, clear it for one
            // that outlives it; either way, a parent that died meanwhile
            // ends the start here.
            let at_exit = if die_with_parent { libc::SIGKILL } else { 0 };
            if libc::prctl(libc::PR_SET_PDEATHSIG, at_exit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| EngineError::Spawn {
        program: program.clone(),
        source,
    })?;
    drop(high);
    Ok(child)
}

/// Kills a QEMU found by [`find_qemus`]: its process group, then the
/// process itself (in case it left the group).
pub fn kill_group(pid: i32) {
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Waits (up to `timeout`) until process `pid` is no longer a live
/// process: gone, or a zombie (whose command line is empty). A killed
/// QEMU takes a while to tear its memory down, and until then it is still
/// found by [`find_qemus`]; a caller that killed one it does not own (an
/// orphan, reparented to init) waits here so that nobody finds it after.
pub fn wait_gone(pid: i32, timeout: std::time::Duration) -> bool {
    let cmdline = format!("/proc/{pid}/cmdline");
    let until = std::time::Instant::now() + timeout;
    loop {
        match std::fs::read(&cmdline) {
            Ok(c) if !c.is_empty() => {}
            _ => return true,
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every process whose command line names a directory under `run_root`,
/// with the name of that directory: the QEMUs of VMs started there, found
/// by what they are rather than by pid files that a crash may not have
/// written yet.
pub fn find_qemus(run_root: &Path) -> Vec<(i32, String)> {
    let mut prefix = run_root.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(b'/');
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // argv[0], `<run_root>/<vm>/qemu-system-*`, names the run directory.
        let Some(at) = cmdline
            .windows(prefix.len())
            .position(|w| w == prefix.as_slice())
        else {
            continue;
        };
        let rest = cmdline.get(at + prefix.len()..).unwrap_or_default();
        let name: Vec<u8> = rest
            .iter()
            .take_while(|&&b| b != b'/' && b != 0 && b != b',')
            .copied()
            .collect();
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if !name.is_empty() && base.starts_with(b"qemu-system") {
            found.push((pid, String::from_utf8_lossy(&name).into_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_vm_dropped_late_leaves_the_next_vms_run_directory_alone() {
        let root = tempfile::tempdir().unwrap();
        let old = VmResources::create(root.path(), "vm").unwrap();
        std::fs::write(old.run_dir.join("qemu.log"), "old").unwrap();
        // The next start of the same VM replaces the stale directory while
        // the old owner is still referenced (its exit watcher).
        let new = VmResources::create(root.path(), "vm").unwrap();
        std::fs::write(new.run_dir.join("qemu.log"), "new").unwrap();
        drop(old);
        assert_eq!(
            std::fs::read_to_string(new.run_dir.join("qemu.log")).unwrap(),
            "new"
        );
        let dir = new.run_dir.clone();
        drop(new);
        assert!(!dir.exists(), "the newest owner removes its directory");
    }
}
