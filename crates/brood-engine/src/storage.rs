//! The storage I/O partition: a `qemu-storage-daemon` that owns disk
//! images and exports them over NBD on one unix socket, for every VM of
//! its storage zone.
//!
//! Restart without loss is the point:
//!
//! - The listening socket is made (and kept) by [`StorageServer`], and each
//!   daemon it starts gets it as a descriptor (`addr.type=fd`). The socket
//!   file never changes, so the hard links the engine puts in each VM's run
//!   directory (QEMU's root) stay good, and a connect while no daemon runs
//!   waits in the backlog.
//! - Every export is `writethrough=on`: the daemon flushes each write
//!   before it completes it, so a write the guest saw completed is on disk
//!   even if the daemon is killed -9 the next instant.
//! - QEMU's NBD client runs with `reconnect-delay` (see
//!   `qemu::argv::NBD_RECONNECT_S`): while the server is away, requests
//!   wait and are sent again on reconnect; the guest sees a stall, not an
//!   I/O error.
//!
//! Why NBD and not vhost-user-blk: vhost-user needs the guest's memory
//! shared with the server (`memory-backend-memfd,share=on`), which a forked
//! child's private copy-on-write mapping of its template's memory cannot
//! be; NBD copies the data over the socket and works for every VM, parent
//! or child, at the cost of a copy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::spec::DiskFormat;

/// The descriptor number the daemon finds its listening socket at.
const LISTEN_FD: i32 = 3;

/// One image a storage server exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageExport {
    /// The export's name (a random secret: any client may name any export).
    pub name: String,
    /// The image.
    pub path: PathBuf,
    /// Its format; a qcow2 image's backing chain is opened by the daemon.
    pub format: DiskFormat,
}

/// A storage server: its listening socket, and its daemon while it runs.
#[derive(Debug)]
pub struct StorageServer {
    socket: PathBuf,
    listener: OwnedFd,
    child: Option<tokio::process::Child>,
}

impl StorageServer {
    /// Binds the server's socket at `socket` (mode 0666: the VMs' QEMUs,
    /// each its own user, connect through links in their run directories;
    /// the directories keep everyone else out).
    pub fn create(socket: &Path) -> Result<Self, EngineError> {
        let _ = std::fs::remove_file(socket);
        let l = std::os::unix::net::UnixListener::bind(socket)
            .map_err(|e| EngineError::host(format!("bind {}", socket.display()), e))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| EngineError::host(format!("open {} to QEMU", socket.display()), e))?;
        Ok(Self {
            socket: socket.to_path_buf(),
            listener: OwnedFd::from(l),
            child: None,
        })
    }

    /// The listening socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// A server on a listening socket made earlier (taken back from a
    /// running daemon with [`take_listener`]).
    pub fn from_listener(socket: &Path, listener: OwnedFd) -> Self {
        Self {
            socket: socket.to_path_buf(),
            listener,
            child: None,
        }
    }

    /// Gives up the server, keeping its listening socket.
    pub fn into_listener(mut self) -> OwnedFd {
        // A daemon it started would be killed on drop; there is none here
        // for the callers that want the socket alone.
        self.child = None;
        self.listener
    }

    /// The listening socket's descriptor (a daemon gets a copy).
    pub fn listener(&self) -> &OwnedFd {
        &self.listener
    }

    /// Starts a daemon serving `exports` on the socket (a running one is
    /// killed first).
    pub async fn start(&mut self, exports: &[StorageExport]) -> Result<(), EngineError> {
        self.kill().await;
        let mut cmd = daemon_command(&self.listener, exports, &[]);
        cmd.stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(spawn_error)?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the daemon (SIGKILL) and reaps it; the socket stays.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Waits until the daemon ends on its own; returns how.
    pub async fn wait(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let s = c.wait().await.ok();
        self.child = None;
        s
    }
}

/// The program: `BROOD_STORAGE_DAEMON`, or `qemu-storage-daemon`.
pub fn daemon_program() -> std::ffi::OsString {
    std::env::var_os("BROOD_STORAGE_DAEMON").unwrap_or_else(|| "qemu-storage-daemon".into())
}

/// The error of a daemon that did not start.
pub fn spawn_error(e: std::io::Error) -> EngineError {
    EngineError::host(
        "start qemu-storage-daemon (install qemu-system-x86, or set BROOD_STORAGE_DAEMON)",
        e,
    )
}

/// A command that runs a daemon serving `exports` on `listener` (given as
/// descriptor [`LISTEN_FD`]), in a process group of its own, with `extra`
/// arguments first. Stdin and stdout are null; stderr is the caller's.
pub fn daemon_command(
    listener: &OwnedFd,
    exports: &[StorageExport],
    extra: &[String],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(daemon_program());
    cmd.args(extra).args(daemon_args(exports));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0);
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only dup2(2), an async-signal-safe
    // call, runs; it clears close-on-exec on the copy at LISTEN_FD.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Takes a copy of the listening socket of the running daemon behind
/// `pidfd` (pidfd_getfd(2), Linux 5.6+; needs ptrace rights over it, which
/// its owner has): a broodd that was killed gets its server's socket back,
/// so the links in the VMs' run directories stay good.
pub fn take_listener(pidfd: &OwnedFd) -> Result<OwnedFd, EngineError> {
    // SAFETY: pidfd_getfd(2) takes a pidfd, a descriptor number and flags
    // and returns a new descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), LISTEN_FD, 0) };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| {
            EngineError::host(
                "take the storage daemon's listening socket",
                std::io::Error::last_os_error(),
            )
        })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: fcntl on a descriptor we own; sets close-on-exec, which a
    // descriptor from pidfd_getfd has already (the man page), to be sure.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// The export names a daemon serves, read back from its arguments (as
/// `/proc/PID/cmdline` has them): the `name=` of each `--export`.
pub fn served_exports<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a != "--export" {
            continue;
        }
        let Some(spec) = it.next() else { break };
        out.extend(
            spec.split(',')
                .filter_map(|kv| kv.strip_prefix("name="))
                .map(str::to_owned),
        );
    }
    out
}

/// The daemon's command line for `exports` on the socket at [`LISTEN_FD`].
pub fn daemon_args(exports: &[StorageExport]) -> Vec<String> {
    let mut a = vec![
        "--nbd-server".to_string(),
        format!("addr.type=fd,addr.str={LISTEN_FD}"),
    ];
    for (i, e) in exports.iter().enumerate() {
        let file = serde_json::json!({
            "driver": "file",
            "node-name": format!("file{i}"),
            "filename": e.path.display().to_string(),
        });
        let fmt = serde_json::json!({
            "driver": e.format.as_str(),
            "node-name": format!("disk{i}"),
            "file": format!("file{i}"),
        });
        a.extend([
            "--blockdev".into(),
            file.to_string(),
            "--blockdev".into(),
            fmt.to_string(),
            "--export".into(),
            // writethrough: each write is flushed before it completes, so
            // no completed write dies with the daemon.
            format!(
                "type=nbd,id=export{i},node-name=disk{i},name={},writable=on,writethrough=on",
                e.name
            ),
        ]);
    }
    a
}

/// A fresh export name: 128 random bits in hex.
pub fn export_name() -> Result<String, EngineError> {
    let b: [u8; 16] = crate::random::random_bytes()?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_written_through_on_the_inherited_socket() {
        let a = daemon_args(&[StorageExport {
            name: "abc".into(),
            path: "/d/x.qcow2".into(),
            format: DiskFormat::Qcow2,
        }]);
        let j = a.join(" ");
        assert!(
            j.starts_with("--nbd-server addr.type=fd,addr.str=3 "),
            "{j}"
        );
        assert!(j.contains(r#""driver":"qcow2""#), "{j}");
        assert!(j.contains("name=abc,writable=on,writethrough=on"), "{j}");
        assert_eq!(served_exports(a.iter().map(String::as_str)), ["abc"]);
        let n = export_name().unwrap();
        assert_eq!(n.len(), 32);
        assert_ne!(n, export_name().unwrap());
    }
}
