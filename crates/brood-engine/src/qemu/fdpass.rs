//! Handing QEMU descriptors after start-up. A confined QEMU cannot open a
//! host path (it is chrooted into its run directory, as a user of its own),
//! so every migration stream is a descriptor brood opens and passes in over
//! a second QMP monitor (`argv::FDMON_FD`, socket `fdmon.sock`), with
//! SCM_RIGHTS. The main QMP connection (brood-qmp) stays as it is.
//!
//! - A state file (save, restore, template state, a child's load) goes in
//!   an fd set (`add-fd`) and is named `file:/dev/fdset/N`: fd sets are
//!   global, so the migration itself runs on the main connection. (`fd:`
//!   of a regular file is deprecated in QEMU 10.)
//! - A socket (the stream between two QEMUs when a child is re-hosted) is
//!   named with `getfd`, which only the monitor that received it can use,
//!   so `migrate`/`migrate-incoming fd:NAME` run on this monitor.
//!
//! Replies are read as lines of at most [`MAX_LINE`] bytes with a deadline;
//! events on this monitor are skipped.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use brood_qmp::QmpClient;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Interest};
use tokio::net::UnixStream;

use crate::EngineError;

/// Longest reply line accepted from QEMU.
const MAX_LINE: u64 = 64 * 1024;
/// How long one command on this monitor may take.
const FDMON_TIMEOUT: Duration = Duration::from_secs(15);
/// fd-set ids for migration streams start here; lower ones are the disks'
/// (their descriptor numbers).
static NEXT_FDSET: AtomicU32 = AtomicU32::new(1000);

/// A connection to a VM's descriptor monitor.
#[derive(Debug)]
pub(crate) struct FdMonitor {
    io: BufReader<UnixStream>,
    next_id: u64,
}

fn fail(what: &str, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Migration(format!("{what}: {detail}"))
}

impl FdMonitor {
    /// Connects to `<run_dir>/fdmon.sock` and negotiates capabilities.
    pub(crate) async fn connect(run_dir: &Path) -> Result<Self, EngineError> {
        let path = run_dir.join("fdmon.sock");
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| EngineError::host(format!("connect to {}", path.display()), e))?;
        let mut m = Self {
            io: BufReader::new(stream),
            next_id: 1,
        };
        tokio::time::timeout(FDMON_TIMEOUT, m.read_line())
            .await
            .map_err(|_| EngineError::Timeout {
                op: "QMP greeting on the descriptor monitor",
                after: FDMON_TIMEOUT,
            })??;
        m.execute("qmp_capabilities", None, None).await?;
        Ok(m)
    }

    async fn read_line(&mut self) -> Result<Value, EngineError> {
        let mut line = Vec::new();
        (&mut self.io)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| EngineError::host("read from the descriptor monitor", e))?;
        if !line.ends_with(b"\n") {
            return Err(fail(
                "descriptor monitor",
                "closed, or sent a line that is too long",
            ));
        }
        serde_json::from_slice(&line).map_err(|e| fail("descriptor monitor sent bad JSON", e))
    }

    /// Runs `command`, passing `fd` with it when given.
    async fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, EngineError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let run = async {
            let mut sent = 0;
            while sent < bytes.len() {
                let stream = self.io.get_ref();
                stream
                    .writable()
                    .await
                    .map_err(|e| EngineError::host("write to the descriptor monitor", e))?;
                let raw = stream.as_raw_fd();
                let fds = fd.map(|f| [f.as_raw_fd()]);
                let chunk = bytes.get(sent..).unwrap_or_default();
                let res = stream.try_io(Interest::WRITABLE, || {
                    let iov = [IoSlice::new(chunk)];
                    // The descriptor rides on the first byte only.
                    let cmsg: Vec<ControlMessage<'_>> = match (&fds, sent) {
                        (Some(f), 0) => vec![ControlMessage::ScmRights(f)],
                        _ => Vec::new(),
                    };
                    sendmsg::<()>(raw, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(std::io::Error::from)
                });
                match res {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(EngineError::host("write to the descriptor monitor", e)),
                }
            }
            loop {
                let v = self.read_line().await?;
                if v.get("id").and_then(Value::as_u64) != Some(id) {
                    continue; // an event
                }
                if let Some(err) = v.get("error") {
                    let desc = err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(fail(command, desc.chars().take(200).collect::<String>()));
                }
                return Ok(v.get("return").cloned().unwrap_or(Value::Null));
            }
        };
        tokio::time::timeout(FDMON_TIMEOUT, run)
            .await
            .map_err(|_| EngineError::Timeout {
                op: "a command on the descriptor monitor",
                after: FDMON_TIMEOUT,
            })?
    }
}

/// A descriptor in one of QEMU's fd sets, removed again on [`FdSet::remove`].
#[derive(Debug)]
pub(crate) struct FdSet {
    id: u32,
}

impl FdSet {
    /// Puts `fd` in a new fd set of the VM whose run directory is `run_dir`.
    pub(crate) async fn add(run_dir: &Path, fd: BorrowedFd<'_>) -> Result<Self, EngineError> {
        let id = NEXT_FDSET.fetch_add(1, Ordering::Relaxed);
        let mut m = FdMonitor::connect(run_dir).await?;
        m.execute("add-fd", Some(json!({ "fdset-id": id })), Some(fd))
            .await?;
        Ok(Self { id })
    }

    /// The migration URI naming it.
    pub(crate) fn uri(&self) -> String {
        format!("file:/dev/fdset/{}", self.id)
    }

    /// Drops QEMU's copy (closed once nothing in QEMU uses it).
    pub(crate) async fn remove(self, qmp: &QmpClient) {
        let _ = qmp
            .execute_raw("remove-fd", Some(json!({ "fdset-id": self.id })))
            .await;
    }
}

/// Starts a migration over a socket: `migrate-incoming` (on a VM waiting in
/// `-incoming defer`) or `migrate`, with `sock` as its stream.
pub(crate) async fn migrate_over_socket(
    run_dir: &Path,
    sock: BorrowedFd<'_>,
    incoming: bool,
) -> Result<(), EngineError> {
    let mut m = FdMonitor::connect(run_dir).await?;
    m.execute("getfd", Some(json!({ "fdname": "migration" })), Some(sock))
        .await?;
    let cmd = if incoming {
        "migrate-incoming"
    } else {
        "migrate"
    };
    m.execute(cmd, Some(json!({ "uri": "fd:migration" })), None)
        .await?;
    Ok(())
}

/// Opens `path` for QEMU to write a state file into (created 0600, emptied).
pub(crate) fn create_state_file(path: &Path) -> Result<std::fs::File, EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| EngineError::host(format!("create {}", path.display()), e))
}

/// Opens the state file at `path` for QEMU to read.
pub(crate) fn open_state_file(path: &Path) -> Result<std::fs::File, EngineError> {
    std::fs::File::open(path).map_err(|e| EngineError::host(format!("open {}", path.display()), e))
}

/// Saves the VM's migration stream (QEMU must be stopped or it keeps
/// running through it) into a new file at `path` and waits for the end.
pub(crate) async fn save_to_file(
    qmp: &QmpClient,
    run_dir: &Path,
    path: &Path,
    timeout: Duration,
) -> Result<(), EngineError> {
    use std::os::fd::AsFd;
    let file = create_state_file(path)?;
    let set = FdSet::add(run_dir, file.as_fd()).await?;
    drop(file);
    let r = async {
        qmp.migrate(&set.uri()).await?;
        super::finish_migration(qmp, timeout).await
    }
    .await;
    set.remove(qmp).await;
    r
}

/// Loads the state file at `path` into a VM waiting in `-incoming defer`
/// and waits for the end.
pub(crate) async fn load_from_file(
    qmp: &QmpClient,
    run_dir: &Path,
    path: &Path,
    timeout: Duration,
) -> Result<(), EngineError> {
    use std::os::fd::AsFd;
    let file = open_state_file(path)?;
    let set = FdSet::add(run_dir, file.as_fd()).await?;
    drop(file);
    let r = async {
        qmp.migrate_incoming(&set.uri()).await?;
        super::finish_migration(qmp, timeout).await
    }
    .await;
    set.remove(qmp).await;
    r
}
