//! `Exec`: run a command, feed its stdin, stream its stdout and stderr back
//! as they come, enforce the output limit and the timeout, and report how it
//! ended.
//!
//! One worker thread per command runs a `poll(2)` loop over the command's
//! pipes and a pidfd (Linux 5.3+) that becomes readable when it exits, so no
//! extra thread is needed and a command that never reads its stdin cannot
//! leave a writer thread blocked. The command runs in its own session
//! (`setsid`), so the timeout can kill its whole process group.
//!
//! After the command exits its pipes are read until end of file, but a
//! background grandchild (`sleep 100 &`) can keep them open: reading stops
//! after [`DRAIN_IDLE`] without a byte, or [`DRAIN_MAX`] after the exit at
//! the latest, and the grandchild is left running.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use brood_proto::{AgentError, Command, ErrorKind, ExecRequest, ExecStatus, OUTPUT_CHUNK, Stream};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::link::LinkError;

/// How long the pipes may stay silent after the command exited before the
/// agent stops reading them.
pub const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// The longest the agent reads the pipes after the command exited, however
/// much a background process keeps writing.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Poll interval when no pidfd is available (kernels before 5.3).
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Receives each chunk of output as it is read.
pub type OutputSink<'a> = dyn FnMut(Stream, &[u8]) -> Result<(), LinkError> + 'a;

/// Errors of running a command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `Argv` was empty or its program name was empty.
    #[error("empty command")]
    EmptyCommand,
    /// An environment variable name was empty or contained `=` or NUL.
    #[error("invalid environment variable name {name:?}")]
    BadEnv {
        /// The name, cut for display.
        name: String,
    },
    /// The working directory is not usable.
    #[error("working directory {cwd:?}")]
    Cwd {
        /// The directory, cut for display.
        cwd: String,
        /// What looking it up reported.
        #[source]
        source: io::Error,
    },
    /// The process could not be started.
    #[error("spawn {program:?}")]
    Spawn {
        /// The program, cut for display.
        program: String,
        /// What spawning reported.
        #[source]
        source: io::Error,
    },
    /// Waiting for the pipes or the process failed.
    #[error("wait for the command")]
    Wait(#[source] io::Error),
    /// The host could not be sent the output; the command was killed.
    #[error("send output")]
    Link(#[source] LinkError),
}

impl ExecError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        let kind = match self {
            ExecError::EmptyCommand | ExecError::BadEnv { .. } => ErrorKind::BadRequest,
            ExecError::Spawn { source, .. }
            | ExecError::Cwd { source, .. }
            | ExecError::Wait(source) => crate::serve::io_kind(source),
            ExecError::Link(_) => ErrorKind::Io,
        };
        AgentError::new(kind, crate::console::chain(self))
    }
}

/// Runs `req`, handing each output chunk (at most [`OUTPUT_CHUNK`] bytes) to
/// `sink` and the command's process group to `started` once it runs, so that
/// another thread can kill it (`HostMsg::CancelExec`).
pub fn run(
    req: &ExecRequest,
    sink: &mut OutputSink<'_>,
    started: &mut dyn FnMut(Pid),
) -> Result<ExecStatus, ExecError> {
    let (mut command, program) = build(req)?;
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        program: crate::console::cut(&program, 256).to_owned(),
        source,
    })?;
    if let Ok(pid) = i32::try_from(child.id()) {
        // The command is its own session and process group leader (setsid).
        started(Pid::from_raw(pid));
    }
    let mut run = match Running::new(&mut child, req) {
        Ok(run) => run,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
    };
    let result = run.pump(&mut child, sink);
    if result.is_err() {
        // Do not leave an unsupervised command behind.
        run.kill_group();
        let _ = child.wait();
    }
    result
}

/// The command a request names, with its environment and working
/// directory checked and set: what exec and pty sessions share.
pub(crate) fn command_for(
    what: &Command,
    env: &[(String, String)],
    cwd: Option<&String>,
) -> Result<(StdCommand, String), ExecError> {
    let (mut command, program) = match what {
        Command::Argv(argv) => {
            let (program, args) = argv.split_first().ok_or(ExecError::EmptyCommand)?;
            if program.is_empty() {
                return Err(ExecError::EmptyCommand);
            }
            let mut c = StdCommand::new(program);
            c.args(args);
            (c, program.clone())
        }
        Command::Shell(script) => {
            let mut c = StdCommand::new("/bin/sh");
            c.arg("-c").arg(script);
            (c, "/bin/sh".to_owned())
        }
    };
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ExecError::BadEnv {
                name: crate::console::cut(name, 64).to_owned(),
            });
        }
        command.env(name, value);
    }
    if let Some(cwd) = cwd {
        // Checked here because a failed chdir in the child is reported as a
        // failure to spawn the program, which misleads.
        let cwd_err = |source| ExecError::Cwd {
            cwd: crate::console::cut(cwd, 256).to_owned(),
            source,
        };
        let meta = std::fs::metadata(cwd).map_err(cwd_err)?;
        if !meta.is_dir() {
            return Err(cwd_err(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        command.current_dir(cwd);
    }
    Ok((command, program))
}

fn build(req: &ExecRequest) -> Result<(StdCommand, String), ExecError> {
    let (mut command, program) = command_for(&req.command, &req.env, req.cwd.as_ref())?;
    command
        .stdin(if req.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; setsid(2) is one and the closure
    // allocates nothing (io::Error::from(Errno) stores the raw code).
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    Ok((command, program))
}

/// One output pipe and its accounting.
struct Pipe {
    fd: Option<OwnedFd>,
    stream: Stream,
    /// Every byte the command produced.
    len: u64,
    /// Bytes handed to the sink.
    sent: u64,
    truncated: bool,
}

impl Pipe {
    fn new(fd: Option<OwnedFd>, stream: Stream) -> Self {
        Self {
            fd,
            stream,
            len: 0,
            sent: 0,
            truncated: false,
        }
    }

    /// Reads once from a readable pipe; returns how many bytes arrived.
    fn read_once(
        &mut self,
        buf: &mut [u8],
        limit: u64,
        sink: &mut OutputSink<'_>,
    ) -> Result<usize, ExecError> {
        let Some(fd) = &self.fd else { return Ok(0) };
        let n = match nix::unistd::read(fd, buf) {
            Ok(0) => {
                self.fd = None;
                return Ok(0);
            }
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => return Ok(0),
            Err(errno) => {
                // A broken pipe ends this stream, not the exec.
                log!("exec: read {:?}: {errno}", self.stream);
                self.fd = None;
                return Ok(0);
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        self.len = self.len.saturating_add(len_u64(n));
        let room = usize::try_from(limit.saturating_sub(self.sent)).unwrap_or(usize::MAX);
        let take = room.min(n);
        if take < n {
            self.truncated = true;
        }
        if take > 0 {
            sink(self.stream, data.get(..take).unwrap_or_default()).map_err(ExecError::Link)?;
            self.sent = self.sent.saturating_add(len_u64(take));
        }
        Ok(n)
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Which descriptor a poll slot watches.
#[derive(Clone, Copy)]
enum Slot {
    Stdout,
    Stderr,
    Stdin,
    Exit,
}

/// A started command and what the loop knows about it.
struct Running<'a> {
    pgid: Option<Pid>,
    pidfd: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_data: &'a [u8],
    stdin_pos: usize,
    stdout: Pipe,
    stderr: Pipe,
    limit: u64,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<'a> Running<'a> {
    fn new(child: &mut Child, req: &'a ExecRequest) -> Result<Self, ExecError> {
        let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        let stdin = child.stdin.take().map(OwnedFd::from);
        if let Some(fd) = &stdin {
            // Non-blocking, so a command that does not read its stdin cannot
            // stall the loop.
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(|e| ExecError::Wait(e.into()))?;
        }
        Ok(Self {
            pgid: pid,
            pidfd: pid.and_then(pidfd_open),
            stdin,
            stdin_data: &req.stdin,
            stdin_pos: 0,
            stdout: Pipe::new(child.stdout.take().map(OwnedFd::from), Stream::Stdout),
            stderr: Pipe::new(child.stderr.take().map(OwnedFd::from), Stream::Stderr),
            limit: req.output_limit,
            deadline: req
                .timeout_ms
                .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms))),
            timed_out: false,
        })
    }

    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH: the group is already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn pump(
        &mut self,
        child: &mut Child,
        sink: &mut OutputSink<'_>,
    ) -> Result<ExecStatus, ExecError> {
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        let mut status: Option<ExitStatus> = None;
        let mut exited_at = Instant::now();
        let mut last_byte = Instant::now();
        let mut exit_ready = true;
        loop {
            if status.is_none()
                && (exit_ready || self.pidfd.is_none())
                && let Some(st) = child.try_wait().map_err(ExecError::Wait)?
            {
                status = Some(st);
                exited_at = Instant::now();
                last_byte = exited_at;
                // Nobody will read what is left of stdin.
                self.stdin = None;
                self.pidfd = None;
            }
            let now = Instant::now();
            if status.is_none() && !self.timed_out && self.deadline.is_some_and(|d| now >= d) {
                self.kill_group();
                self.timed_out = true;
            }
            let open = self.stdout.fd.is_some() || self.stderr.fd.is_some();
            let mut wait = Duration::from_secs(3600);
            if let Some(d) = self
                .deadline
                .filter(|_| status.is_none() && !self.timed_out)
            {
                wait = wait.min(d.saturating_duration_since(now));
            }
            if status.is_some() {
                let idle_end = last_byte + DRAIN_IDLE;
                let hard_end = exited_at + DRAIN_MAX;
                if !open || now >= idle_end || now >= hard_end {
                    break;
                }
                wait = wait.min(idle_end - now).min(hard_end - now);
            } else if self.pidfd.is_none() {
                wait = wait.min(EXIT_POLL);
            }
            let ready = self.poll_once(wait)?;
            exit_ready = false;
            for (slot, revents) in ready {
                if revents.is_empty() {
                    continue;
                }
                match slot {
                    Slot::Stdout | Slot::Stderr => {
                        let pipe = if matches!(slot, Slot::Stdout) {
                            &mut self.stdout
                        } else {
                            &mut self.stderr
                        };
                        if pipe.read_once(&mut buf, self.limit, sink)? > 0 && status.is_some() {
                            last_byte = Instant::now();
                        }
                    }
                    Slot::Stdin => self.feed_stdin(),
                    Slot::Exit => exit_ready = true,
                }
            }
        }
        let status = status.ok_or_else(|| ExecError::Wait(io::Error::other("no exit status")))?;
        Ok(ExecStatus {
            code: status.code(),
            signal: status.signal(),
            timed_out: self.timed_out,
            stdout_len: self.stdout.len,
            stderr_len: self.stderr.len,
            stdout_truncated: self.stdout.truncated,
            stderr_truncated: self.stderr.truncated,
        })
    }

    /// Polls every open descriptor once; returns the events of each slot.
    fn poll_once(&self, wait: Duration) -> Result<Vec<(Slot, PollFlags)>, ExecError> {
        let mut slots = Vec::with_capacity(4);
        let mut fds = Vec::with_capacity(4);
        let watched = [
            (Slot::Stdout, self.stdout.fd.as_ref(), PollFlags::POLLIN),
            (Slot::Stderr, self.stderr.fd.as_ref(), PollFlags::POLLIN),
            (Slot::Stdin, self.stdin.as_ref(), PollFlags::POLLOUT),
            (Slot::Exit, self.pidfd.as_ref(), PollFlags::POLLIN),
        ];
        for (slot, fd, events) in watched {
            if let Some(fd) = fd {
                slots.push(slot);
                fds.push(PollFd::new(fd.as_fd(), events));
            }
        }
        // Round up so a deadline a fraction of a millisecond away is not
        // polled with a zero timeout in a busy loop.
        let ms = wait.as_millis().saturating_add(1);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(errno) => return Err(ExecError::Wait(errno.into())),
        }
        Ok(slots
            .into_iter()
            .zip(&fds)
            .map(|(slot, fd)| (slot, fd.revents().unwrap_or(PollFlags::empty())))
            .collect())
    }

    /// Writes as much of the remaining stdin as the pipe takes; closes it when done.
    fn feed_stdin(&mut self) {
        let Some(fd) = &self.stdin else { return };
        let rest = self.stdin_data.get(self.stdin_pos..).unwrap_or_default();
        match nix::unistd::write(fd, rest) {
            Ok(n) => self.stdin_pos = self.stdin_pos.saturating_add(n),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // EPIPE: the command closed its stdin; the rest is not wanted.
            Err(_) => self.stdin_pos = self.stdin_data.len(),
        }
        if self.stdin_pos >= self.stdin_data.len() {
            self.stdin = None;
        }
    }
}

/// A pidfd for `pid`, readable once it exits; `None` before Linux 5.3.
pub(crate) fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(req: &ExecRequest) -> (Vec<u8>, Vec<u8>, ExecStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = run(
            req,
            &mut |stream, data| {
                assert!(data.len() <= OUTPUT_CHUNK);
                match stream {
                    Stream::Stdout => out.extend_from_slice(data),
                    Stream::Stderr => err.extend_from_slice(data),
                }
                Ok(())
            },
            &mut |_| {},
        )
        .unwrap();
        (out, err, status)
    }

    #[test]
    fn shell_exit_code_and_streams() {
        let (out, err, st) = collect(&ExecRequest::shell("echo out; echo err >&2; exit 3"));
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert_eq!((st.code, st.signal, st.timed_out), (Some(3), None, false));
    }

    #[test]
    fn runs_in_its_own_session() {
        let (out, _, _) = collect(&ExecRequest::shell(
            "read -r _ _ _ _ _ sid _ < /proc/$$/stat; echo $sid $$",
        ));
        let text = String::from_utf8(out).unwrap();
        let mut words = text.split_whitespace();
        assert_eq!(words.next(), words.next(), "{text}");
    }

    #[test]
    fn stdin_larger_than_a_pipe_buffer() {
        let mut req = ExecRequest::shell("wc -c");
        req.stdin = vec![b'x'; 300_000];
        let (out, _, st) = collect(&req);
        assert_eq!(String::from_utf8(out).unwrap().trim(), "300000");
        assert_eq!(st.code, Some(0));
    }

    #[test]
    fn unread_stdin_does_not_block() {
        let mut req = ExecRequest::shell("exit 0");
        req.stdin = vec![b'x'; 1 << 20];
        let (_, _, st) = collect(&req);
        assert_eq!(st.code, Some(0));
    }

    #[test]
    fn bad_requests() {
        let mut req = ExecRequest::shell("true");
        req.command = Command::Argv(vec![]);
        let err = run(&req, &mut |_, _| Ok(()), &mut |_| {}).unwrap_err();
        assert_eq!(err.agent_error().kind, ErrorKind::BadRequest);
        let mut req = ExecRequest::shell("true");
        req.env = vec![("A=B".into(), "c".into())];
        let err = run(&req, &mut |_, _| Ok(()), &mut |_| {}).unwrap_err();
        assert_eq!(err.agent_error().kind, ErrorKind::BadRequest);
        let mut req = ExecRequest::shell("true");
        req.cwd = Some("/nonexistent/brood".into());
        let err = run(&req, &mut |_, _| Ok(()), &mut |_| {}).unwrap_err();
        assert_eq!(err.agent_error().kind, ErrorKind::NotFound);
    }
}
