//! Noticing that a VM's QEMU ended and saying how.
//!
//! A QEMU this process started is its child: the watcher reaps it and has
//! its exit status. A QEMU found running after a restart of the managing
//! daemon is not: the watcher waits on a pidfd instead (readable when the
//! process exits) and only QMP's last SHUTDOWN event tells a clean exit from
//! a crash. Either way the verdict is published on a watch channel, and the
//! VM's cgroups are removed once the process is gone.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brood_qmp::{QmpClient, QmpEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};
use tracing::info;

use crate::cgroup::Cgroup;
use crate::vm::{ExitKind, VmExit};

/// How the watcher learns that QEMU ended.
#[derive(Debug)]
pub(crate) enum ExitSource {
    /// Our child: reap it and read its status.
    Child(tokio::process::Child),
    /// Someone else's child: a pidfd that becomes readable when it exits.
    Pidfd(OwnedFd),
}

/// Opens a pidfd for `pid` (Linux 5.3+).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the watcher needs besides the exit source.
#[derive(Debug)]
pub(crate) struct Watch {
    pub qmp: QmpClient,
    pub events: broadcast::Receiver<QmpEvent>,
    pub killed: Arc<AtomicBool>,
    pub reaped: Arc<AtomicBool>,
    pub cgroup: Option<Cgroup>,
    pub exit: watch::Sender<Option<VmExit>>,
}

/// Waits for QEMU to end and publishes how.
pub(crate) async fn watch_exit(source: ExitSource, mut w: Watch) {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match source {
        ExitSource::Child(mut child) => match child.wait().await {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        },
        ExitSource::Pidfd(fd) => {
            // SAFETY: `fd` is an owned pidfd that AsyncFd keeps open, and
            // nothing replaces or closes it while it is registered.
            if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
                let _ = afd.readable().await;
            }
            (None, None)
        }
    };
    w.reaped.store(true, Ordering::SeqCst);
    if let Some(cg) = &w.cgroup {
        cg.remove();
    }
    // Events QEMU sent before exiting are in the socket; let the reader drain them.
    let _ = tokio::time::timeout(Duration::from_millis(500), w.qmp.closed()).await;
    let mut reason = None;
    loop {
        match w.events.try_recv() {
            Ok(ev) if ev.event == "SHUTDOWN" => {
                reason = ev
                    .data
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(String::from);
            }
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    let clean = code == Some(0) || (code.is_none() && signal.is_none());
    let kind = if w.killed.load(Ordering::SeqCst) {
        ExitKind::Killed
    } else {
        match (reason.as_deref(), clean) {
            (Some(r), true) if r.starts_with("host") => ExitKind::Quit,
            (Some("guest-reset" | "guest-panic"), true) => ExitKind::Reset,
            (Some(_), true) => ExitKind::Poweroff,
            _ => ExitKind::Crashed,
        }
    };
    let e = VmExit {
        kind,
        code,
        signal,
        shutdown_reason: reason,
    };
    info!("QEMU exited: {e}");
    w.exit.send_replace(Some(e));
}
