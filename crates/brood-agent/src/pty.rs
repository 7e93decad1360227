//! Interactive commands (`HostMsg::Session`) and the serial console's shell.
//!
//! A session is a command whose stdin stays open. With a terminal size it
//! runs on a pseudo-terminal (`openpty(3)`), as the session leader with the
//! terminal as its controlling terminal, so job control, Ctrl-C and
//! `SIGWINCH` work as on a console; its output comes back as `Stdout`.
//! Without one it has pipes. The worker thread of the `Session` request
//! runs a `poll(2)` loop over the output descriptors and a pidfd; the
//! `SessionInput`, `SessionResize` and `SessionSignal` requests, each on a
//! worker thread of its own, reach the command through [`Sessions`]. An
//! input is answered only once the command took it (a blocking write), so
//! a host that waits for each answer cannot flood the guest.
//!
//! [`spawn_console_shell`] keeps a shell on the serial port (`/dev/ttyS0`),
//! which `brood vm console` attaches to; the host side of the serial port is
//! reachable only through broodd.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use brood_proto::{
    AgentError, ErrorKind, ExecStatus, OUTPUT_CHUNK, SessionRequest, Stream, WinSize,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::exec::{DRAIN_IDLE, DRAIN_MAX, ExecError, OutputSink};

/// How long an input, resize or signal waits for its session to start (its
/// request and the `Session` run on different worker threads).
const START_WAIT: Duration = Duration::from_secs(10);
/// The serial port the console shell runs on (`console=ttyS0`).
const CONSOLE_TTY: &str = "/dev/ttyS0";
/// Pause before the console shell is started again after it ended.
const CONSOLE_RESPAWN: Duration = Duration::from_secs(1);
/// The end-of-file character of a terminal in canonical mode (Ctrl-D).
const VEOF: u8 = 0x04;

/// The sessions running, by the frame id of their `Session` request.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<u32, Arc<Handle>>>,
    changed: Condvar,
}

/// What other requests need of a running session.
#[derive(Debug)]
struct Handle {
    pgid: Pid,
    /// Where input goes: the stdin pipe, or a copy of the terminal's master
    /// side; `None` once closed.
    input: Mutex<Option<File>>,
    /// The terminal's master side, for resizes.
    master: Option<OwnedFd>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each use is one insert, remove, lookup or write: a poisoned value is consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    fn insert(&self, id: u32, handle: Handle) {
        lock(&self.map).insert(id, Arc::new(handle));
        self.changed.notify_all();
    }

    fn remove(&self, id: u32) {
        lock(&self.map).remove(&id);
    }

    /// The session of request `id`, waiting a little for one that is starting.
    fn find(&self, id: u32) -> Result<Arc<Handle>, AgentError> {
        let map = lock(&self.map);
        let (map, _) = self
            .changed
            .wait_timeout_while(map, START_WAIT, |m| !m.contains_key(&id))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&id).cloned().ok_or_else(|| {
            AgentError::new(
                ErrorKind::NotFound,
                format!("no session runs for request {id} (it ended)"),
            )
        })
    }

    /// Hands `data` to session `id`'s stdin, then closes it when `eof`.
    pub fn input(&self, id: u32, data: &[u8], eof: bool) -> Result<(), AgentError> {
        let h = self.find(id)?;
        let mut input = lock(&h.input);
        let Some(file) = input.as_mut() else {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!("the stdin of session {id} is closed already"),
            ));
        };
        file.write_all(data).map_err(|e| {
            AgentError::new(
                crate::serve::io_kind(&e),
                format!("write to the stdin of session {id}: {e}"),
            )
        })?;
        if eof {
            if h.master.is_some() {
                // A terminal has no half-close: its line discipline turns
                // VEOF into end of file for the reader.
                file.write_all(&[VEOF]).map_err(|e| {
                    AgentError::new(ErrorKind::Io, format!("send end of file: {e}"))
                })?;
            } else {
                *input = None;
            }
        }
        Ok(())
    }

    /// Resizes session `id`'s terminal.
    pub fn resize(&self, id: u32, size: WinSize) -> Result<(), AgentError> {
        let h = self.find(id)?;
        let Some(master) = &h.master else {
            return Err(AgentError::new(
                ErrorKind::BadRequest,
                format!("session {id} has no terminal to resize"),
            ));
        };
        set_size(master, size)
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("resize the terminal: {e}")))
    }

    /// Sends `signal` to session `id`'s process group.
    pub fn signal(&self, id: u32, signal: i32) -> Result<(), AgentError> {
        let sig = Signal::try_from(signal).map_err(|_| {
            AgentError::new(
                ErrorKind::BadRequest,
                format!("{signal} is not a signal number"),
            )
        })?;
        let h = self.find(id)?;
        // ESRCH: the group is gone; its Exited follows.
        let _ = killpg(h.pgid, sig);
        Ok(())
    }
}

nix::ioctl_write_ptr_bad!(
    /// TIOCSWINSZ: sets a terminal's size from a `struct winsize`.
    tiocswinsz,
    libc::TIOCSWINSZ,
    libc::winsize
);

fn winsize(size: WinSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_size(master: &OwnedFd, size: WinSize) -> nix::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize`, which `ws` is, from a pointer
    // valid for the call; the descriptor is a terminal's master side.
    unsafe { tiocswinsz(master.as_raw_fd(), &ws) }.map(drop)
}

fn build(req: &SessionRequest) -> Result<(StdCommand, String), ExecError> {
    crate::exec::command_for(&req.command, &req.env, req.cwd.as_ref())
}

/// Makes the child a session leader whose controlling terminal is its stdin.
fn as_terminal_leader(command: &mut StdCommand) {
    // SAFETY: the closure runs in the child between fork and exec; setsid(2)
    // and ioctl(2) are async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One descriptor the loop reads output from.
struct Out {
    fd: Option<OwnedFd>,
    stream: Stream,
    len: u64,
}

/// Runs session `id`: registers it in `sessions`, streams its output to
/// `sink` and returns how it ended. `started` gets its process group.
pub fn run(
    id: u32,
    req: &SessionRequest,
    sessions: &Sessions,
    sink: &mut OutputSink<'_>,
    started: &mut dyn FnMut(Pid),
) -> Result<ExecStatus, ExecError> {
    let (mut command, program) = build(req)?;
    let spawn_err = |source| ExecError::Spawn {
        program: crate::console::cut(&program, 256).to_owned(),
        source,
    };
    let (mut child, outs, input, master) = match req.tty {
        Some(size) => {
            let pty =
                nix::pty::openpty(Some(&winsize(size)), None).map_err(|e| spawn_err(e.into()))?;
            let slave = File::from(pty.slave);
            let clone = |f: &File| f.try_clone().map(Stdio::from).map_err(spawn_err);
            command
                .stdin(clone(&slave)?)
                .stdout(clone(&slave)?)
                .stderr(Stdio::from(slave));
            if !req.env.iter().any(|(k, _)| k == "TERM") {
                command.env("TERM", "xterm");
            }
            as_terminal_leader(&mut command);
            let child = command.spawn().map_err(spawn_err)?;
            // The parent's copies of the slave side are closed now (they
            // moved into `command`, dropped after spawn below), so reading
            // the master ends (EIO) when the command and its children are gone.
            drop(command);
            let input = pty.master.try_clone().map_err(spawn_err)?;
            let resize = pty.master.try_clone().map_err(spawn_err)?;
            let out = Out {
                fd: Some(pty.master),
                stream: Stream::Stdout,
                len: 0,
            };
            (child, vec![out], File::from(input), Some(resize))
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: as in `as_terminal_leader`: setsid(2) only.
            unsafe {
                command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
            }
            let mut child = command.spawn().map_err(spawn_err)?;
            let stdin = child
                .stdin
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| spawn_err(io::Error::other("no stdin pipe")))?;
            let outs = [
                (child.stdout.take().map(OwnedFd::from), Stream::Stdout),
                (child.stderr.take().map(OwnedFd::from), Stream::Stderr),
            ]
            .into_iter()
            .map(|(fd, stream)| Out { fd, stream, len: 0 })
            .collect();
            (child, outs, File::from(stdin), None)
        }
    };
    let Some(pgid) = i32::try_from(child.id()).ok().map(Pid::from_raw) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ExecError::Wait(io::Error::other("pid out of range")));
    };
    started(pgid);
    // The host waits for this before it attaches its user.
    if let Err(err) = sink(Stream::Stdout, &[]) {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait();
        return Err(ExecError::Link(err));
    }
    sessions.insert(
        id,
        Handle {
            pgid,
            input: Mutex::new(Some(input)),
            master,
        },
    );
    let deadline = req
        .timeout_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
    let result = pump(&mut child, pgid, outs, deadline, sink);
    sessions.remove(id);
    if result.is_err() {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait();
    }
    result
}

fn pump(
    child: &mut Child,
    pgid: Pid,
    mut outs: Vec<Out>,
    deadline: Option<Instant>,
    sink: &mut OutputSink<'_>,
) -> Result<ExecStatus, ExecError> {
    let mut pidfd = crate::exec::pidfd_open(pgid);
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut status = None;
    let mut timed_out = false;
    let mut exited_at = Instant::now();
    let mut last_byte = Instant::now();
    loop {
        if status.is_none()
            && let Some(st) = child.try_wait().map_err(ExecError::Wait)?
        {
            status = Some(st);
            pidfd = None;
            exited_at = Instant::now();
            last_byte = exited_at;
        }
        let now = Instant::now();
        if status.is_none() && !timed_out && deadline.is_some_and(|d| now >= d) {
            let _ = killpg(pgid, Signal::SIGKILL);
            timed_out = true;
        }
        let open = outs.iter().any(|o| o.fd.is_some());
        let mut wait = Duration::from_secs(3600);
        if let Some(d) = deadline.filter(|_| status.is_none() && !timed_out) {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if status.is_some() {
            let (idle_end, hard_end) = (last_byte + DRAIN_IDLE, exited_at + DRAIN_MAX);
            if !open || now >= idle_end || now >= hard_end {
                break;
            }
            wait = wait.min(idle_end - now).min(hard_end - now);
        } else if pidfd.is_none() {
            wait = wait.min(Duration::from_millis(20));
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        for (i, o) in outs.iter().enumerate() {
            if let Some(fd) = &o.fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(Some(i));
            }
        }
        if let Some(fd) = &pidfd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            which.push(None);
        }
        let ms = wait.as_millis().saturating_add(1);
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(ExecError::Wait(errno.into())),
        }
        let ready: Vec<usize> = which
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .filter_map(|(w, _)| *w)
            .collect();
        drop(fds);
        for i in ready {
            let Some(o) = outs.get_mut(i) else { continue };
            let Some(fd) = &o.fd else { continue };
            match nix::unistd::read(fd, &mut buf) {
                // EIO: a terminal whose slave side every process closed.
                Ok(0) | Err(Errno::EIO) => o.fd = None,
                Ok(n) => {
                    o.len = o.len.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    sink(o.stream, buf.get(..n).unwrap_or_default()).map_err(ExecError::Link)?;
                    if status.is_some() {
                        last_byte = Instant::now();
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(errno) => {
                    log!("session: read {:?}: {errno}", o.stream);
                    o.fd = None;
                }
            }
        }
    }
    let status = status.ok_or_else(|| ExecError::Wait(io::Error::other("no exit status")))?;
    let len = |s| {
        outs.iter()
            .filter(|o| o.stream == s)
            .map(|o| o.len)
            .sum::<u64>()
    };
    Ok(ExecStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout_len: len(Stream::Stdout),
        stderr_len: len(Stream::Stderr),
        stdout_truncated: false,
        stderr_truncated: false,
    })
}

/// Starts a thread that keeps a shell on the serial console: started again
/// a second after it ends, and killed with the agent (the next agent starts
/// its own), so there is one at a time. A console without a shell is
/// reported on the console; serving goes on.
pub fn spawn_console_shell() {
    let spawned = std::thread::Builder::new()
        .name("console-shell".into())
        .spawn(|| {
            loop {
                if let Err(err) = console_shell_once() {
                    log!("console shell on {CONSOLE_TTY}: {err}; not started again");
                    return;
                }
                std::thread::sleep(CONSOLE_RESPAWN);
            }
        });
    if let Err(err) = spawned {
        log!("console shell: start its thread: {err}");
    }
}

fn console_shell_once() -> io::Result<()> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONSOLE_TTY)?;
    let mut command = StdCommand::new("/bin/sh");
    command
        .arg("-l")
        .env("TERM", "vt220")
        .env("HOME", "/")
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty));
    // SAFETY: between fork and exec; prctl(2), setsid(2) and ioctl(2) are
    // async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            // The shell dies with the agent that started it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            nix::unistd::setsid().map_err(io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop(command);
    // PID 1 reaps orphans with waitpid(-1); the agent is not PID 1, so its
    // own children are its own to wait for.
    child.wait().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_proto::Command;

    fn collect(req: &SessionRequest, sessions: &Sessions, id: u32) -> (Vec<u8>, ExecStatus) {
        let mut out = Vec::new();
        let status = run(
            id,
            req,
            sessions,
            &mut |_, d| {
                out.extend_from_slice(d);
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        (out, status)
    }

    fn shell(cmd: &str, tty: Option<WinSize>) -> SessionRequest {
        SessionRequest {
            command: Command::Shell(cmd.into()),
            env: Vec::new(),
            cwd: None,
            tty,
            timeout_ms: Some(20_000),
        }
    }

    #[test]
    fn piped_session_reads_streamed_input_to_its_end() {
        let sessions = Arc::new(Sessions::default());
        let s2 = Arc::clone(&sessions);
        let feeder = std::thread::spawn(move || {
            for i in 0..50 {
                s2.input(7, format!("line {i}\n").as_bytes(), false)
                    .unwrap();
            }
            s2.input(7, b"", true).unwrap();
        });
        let (out, status) = collect(&shell("wc -l; exit 3", None), &sessions, 7);
        feeder.join().unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "50");
        assert_eq!(status.code, Some(3));
    }

    #[test]
    fn terminal_session_has_a_tty_its_size_and_takes_resizes_and_signals() {
        let sessions = Arc::new(Sessions::default());
        let s2 = Arc::clone(&sessions);
        let feeder = std::thread::spawn(move || {
            s2.resize(
                9,
                WinSize {
                    rows: 33,
                    cols: 101,
                },
            )
            .unwrap();
            s2.input(9, b"go\n", false).unwrap();
        });
        let (out, status) = collect(
            &shell(
                "test -t 0 && echo tty; read x; stty size; kill -TERM $$",
                Some(WinSize { rows: 10, cols: 20 }),
            ),
            &sessions,
            9,
        );
        feeder.join().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("tty"), "{text:?}");
        assert!(text.contains("33 101"), "{text:?}");
        assert_eq!(status.signal, Some(libc::SIGTERM));
    }

    #[test]
    fn unknown_sessions_and_bad_signals_are_refused() {
        let sessions = Sessions {
            map: Mutex::default(),
            changed: Condvar::new(),
        };
        assert_eq!(
            sessions.signal(1, 999).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let empty = run(
            1,
            &SessionRequest {
                command: Command::Argv(Vec::new()),
                ..shell("", None)
            },
            &sessions,
            &mut |_, _| Ok(()),
            &mut |_| {},
        );
        assert!(matches!(empty, Err(ExecError::EmptyCommand)));
    }
}
