//! Service scripts: the executable files of one directory
//! (`/etc/brood/services/{independent,dependent}/`, written by brood-image),
//! run one after the other in lexical order until one fails.
//!
//! Each script runs in its own session with stdin on /dev/null and stdout
//! and stderr on one pipe, so the combined output keeps its order; the agent
//! keeps the last [`OUTPUT_TAIL`] bytes. A script that outlives its timeout
//! is killed with its process group.
//!
//! Scripts commonly start daemons in the background, and those inherit the
//! pipe. The agent stops waiting for the pipe as soon as the script itself
//! has exited and hands what is left of it to a thread that reads and drops
//! it, so the daemon neither blocks on a full pipe nor dies of SIGPIPE, and
//! the fork path never waits for a daemon. What to run and in which
//! environment is [`crate::fork`]'s business.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use brood_proto::ServiceResult;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The most output kept per script: its last 64 KiB.
pub const OUTPUT_TAIL: usize = 64 * 1024;
/// The most output kept over all the scripts of one run, so a reply that
/// carries every [`ServiceResult`] stays well inside one frame.
pub const OUTPUT_BUDGET: usize = 1 << 20;
/// Poll interval for the exit when no pidfd is available (kernels before 5.3).
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Errors of listing a services directory. A script that fails is not an
/// error but an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The directory exists but could not be read.
    #[error("read services directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// What reading it reported.
        #[source]
        source: io::Error,
    },
}

/// How one script ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// It could not be started or watched.
    Failed(io::Error),
}

impl Outcome {
    /// Whether the script succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited {code}"),
            Outcome::Killed(signal) => write!(f, "was killed by signal {signal}"),
            Outcome::TimedOut(after) => write!(f, "timed out after {after:?}"),
            Outcome::Failed(err) => write!(f, "could not run: {err}"),
        }
    }
}

/// The first script of a run that did not succeed.
#[derive(Debug)]
pub struct Failure {
    /// Its file name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its output tail (also in its [`ServiceResult`]).
    pub output: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Run {
    /// The scripts that ran, in order, the failed one last.
    pub results: Vec<ServiceResult>,
    /// The script that failed, which ended the run.
    pub failure: Option<Failure>,
}

/// Runs the executable files of `dir` in lexical order with `env` added to
/// the agent's environment, each for at most `timeout`, stopping at the
/// first that fails. A missing directory has no scripts.
pub fn run_dir(
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Run, ServiceError> {
    let mut run = Run::default();
    for path in scripts(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let started = Instant::now();
        let (outcome, output) = run_one(&path, env, timeout);
        let output = tail_text(&output);
        run.results.push(ServiceResult {
            name: name.clone(),
            code: match outcome {
                Outcome::Exited(code) => Some(code),
                _ => None,
            },
            output: output.clone(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        if !outcome.is_success() {
            run.failure = Some(Failure {
                name,
                outcome,
                output,
            });
            break;
        }
    }
    fit_budget(&mut run.results, OUTPUT_BUDGET);
    Ok(run)
}

/// The service scripts of `dir`, in the order they run (none when it is missing).
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, ServiceError> {
    scripts(dir)
}

/// The executable regular files of `dir` (symlinks followed), sorted by name.
fn scripts(dir: &Path) -> Result<Vec<PathBuf>, ServiceError> {
    let read_err = |source| ServiceError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(read_err(err)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        let executable = std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            found.push(path);
        }
    }
    found.sort_by(|a, b| {
        let name = |p: &PathBuf| p.file_name().map(|n| n.as_bytes().to_vec());
        name(a).cmp(&name(b))
    });
    Ok(found)
}

/// Runs one script; returns how it ended and its raw output tail.
fn run_one(path: &Path, env: &[(String, String)], timeout: Duration) -> (Outcome, Vec<u8>) {
    let mut output = Vec::new();
    let (mut child, pipe) = match spawn(path, env) {
        Ok(spawned) => spawned,
        Err(err) => return (Outcome::Failed(err), output),
    };
    let outcome = match watch(&mut child, pipe, timeout, &mut output) {
        Ok(outcome) => outcome,
        Err(err) => {
            kill_group(&child);
            let _ = child.wait();
            Outcome::Failed(err)
        }
    };
    (outcome, output)
}

fn spawn(path: &Path, env: &[(String, String)]) -> io::Result<(Child, OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // O_NONBLOCK is per open file description: clear it on the write end,
    // which the script gets as its stdout and stderr.
    nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
    let mut command = Command::new(path);
    command
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone()?))
        .stderr(Stdio::from(write_end));
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", crate::init::PATH);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; setsid(2) is one and the closure
    // allocates nothing (io::Error::from(Errno) stores the raw code).
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let child = command.spawn()?;
    // The Command keeps our copies of the write end until it is dropped; the
    // pipe reaches end of file only once they are closed.
    drop(command);
    Ok((child, read_end))
}

fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // ESRCH: the group is already gone.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Reads the pipe into `output` until the script exits or its timeout passes.
fn watch(
    child: &mut Child,
    pipe: OwnedFd,
    timeout: Duration,
    output: &mut Vec<u8>,
) -> io::Result<Outcome> {
    let deadline = Instant::now().checked_add(timeout);
    let pidfd = i32::try_from(child.id())
        .ok()
        .and_then(|pid| crate::exec::pidfd_open(Pid::from_raw(pid)));
    let mut pipe = Some(pipe);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(status) = child.try_wait()? {
            if let Some(fd) = pipe.take() {
                drain_then_discard(fd, &mut buf, output);
            }
            return Ok(outcome(status));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            kill_group(child);
            child.wait()?;
            if let Some(fd) = pipe.take() {
                drain_then_discard(fd, &mut buf, output);
            }
            return Ok(Outcome::TimedOut(timeout));
        }
        let mut wait = deadline.map_or(Duration::from_secs(3600), |d| d - now);
        if pidfd.is_none() {
            wait = wait.min(EXIT_POLL);
        }
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = &pipe {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = &pidfd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let ms = wait.as_millis().saturating_add(1);
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        drop(fds);
        if let Some(fd) = &pipe
            && read_available(fd, &mut buf, output) == Pipe::Closed
        {
            pipe = None;
        }
    }
}

#[derive(PartialEq)]
enum Pipe {
    Open,
    Closed,
}

/// Reads what the (non-blocking) pipe holds now into `output`.
fn read_available(fd: &OwnedFd, buf: &mut [u8], output: &mut Vec<u8>) -> Pipe {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return Pipe::Closed,
            Ok(n) => push_tail(output, buf.get(..n).unwrap_or_default()),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Pipe::Open,
            Err(_) => return Pipe::Closed,
        }
    }
}

/// Takes what the script left in the pipe; if a background process still
/// holds the pipe open, reads and drops its output on a thread of its own
/// until it closes.
fn drain_then_discard(fd: OwnedFd, buf: &mut [u8], output: &mut Vec<u8>) {
    if read_available(&fd, buf, output) == Pipe::Closed {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("svc-drain".into())
        .spawn(move || discard(&fd));
    if let Err(err) = spawned {
        // Dropping the read end instead: the background writer gets EPIPE.
        log!("services: cannot start a drain thread: {err}");
    }
}

fn discard(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, PollTimeout::NONE), Err(e) if e != Errno::EINTR) {
            return;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return,
            Ok(_) | Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return,
        }
    }
}

fn outcome(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Killed(signal),
        (None, None) => Outcome::Failed(io::Error::other("no exit status")),
    }
}

/// Appends `data`, keeping only the last [`OUTPUT_TAIL`] bytes.
fn push_tail(output: &mut Vec<u8>, data: &[u8]) {
    output.extend_from_slice(data);
    if output.len() > OUTPUT_TAIL {
        let excess = output.len() - OUTPUT_TAIL;
        output.drain(..excess);
    }
}

/// The output tail as text of at most [`OUTPUT_TAIL`] bytes: a character cut
/// at the front is dropped, invalid UTF-8 is replaced.
fn tail_text(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xc0) == 0x80)
        .count();
    let text = String::from_utf8_lossy(raw.get(start..).unwrap_or_default()).into_owned();
    keep_tail(text, OUTPUT_TAIL)
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn keep_tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().to_owned()
}

/// Replaces the outputs of the earliest results with a note until all of
/// them fit `budget`.
fn fit_budget(results: &mut [ServiceResult], budget: usize) {
    const DROPPED: &str = "[output dropped: too much output from the services]";
    let mut total: usize = results.iter().map(|r| r.output.len()).sum();
    for result in results.iter_mut() {
        if total <= budget {
            return;
        }
        if result.output.len() > DROPPED.len() {
            total -= result.output.len() - DROPPED.len();
            result.output = DROPPED.to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn runs_executables_in_lexical_order_with_combined_output() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "20-b", "echo b-out; echo b-err >&2; echo b2");
        script(dir.path(), "10-a", "echo \"a $BROOD_T\"");
        std::fs::write(dir.path().join("05-not-executable"), "exit 1").unwrap();
        std::fs::create_dir(dir.path().join("00-dir")).unwrap();
        let env = [("BROOD_T".to_owned(), "t".to_owned())];
        let run = run_dir(dir.path(), &env, Duration::from_secs(10)).unwrap();
        assert!(run.failure.is_none());
        let names: Vec<_> = run.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["10-a", "20-b"]);
        assert_eq!(run.results[0].output, "a t\n");
        assert_eq!(run.results[1].output, "b-out\nb-err\nb2\n");
        assert_eq!(run.results[1].code, Some(0));
    }

    #[test]
    fn missing_directory_has_no_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_dir(&dir.path().join("none"), &[], Duration::from_secs(1)).unwrap();
        assert!(run.results.is_empty() && run.failure.is_none());
    }

    #[test]
    fn stops_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "1", "echo one");
        script(dir.path(), "2", "echo broken >&2; exit 3");
        script(dir.path(), "3", "echo never");
        let run = run_dir(dir.path(), &[], Duration::from_secs(10)).unwrap();
        assert_eq!(run.results.len(), 2);
        let failure = run.failure.unwrap();
        assert_eq!(failure.name, "2");
        assert_eq!(failure.outcome.to_string(), "exited 3");
        assert_eq!(failure.output, "broken\n");
    }

    #[test]
    fn timeout_kills_the_group_and_background_daemons_do_not_hold_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let marks = tempfile::tempdir().unwrap();
        let m = marks.path().display();
        // A daemon that keeps the pipe open and writes after the script exits.
        script(
            dir.path(),
            "1",
            &format!("(sleep 0.3; echo late; sleep 30) & echo $! > {m}/daemon; echo started"),
        );
        // A slow script whose background member would leave a mark if the
        // timeout did not kill the whole group.
        script(
            dir.path(),
            "2",
            &format!("(sleep 30; touch {m}/finished) & echo $! > {m}/member; echo slow; sleep 30"),
        );
        let run = run_dir(dir.path(), &[], Duration::from_millis(500)).unwrap();
        let daemon = read_pid(&marks.path().join("daemon"));
        // The run ended while the daemon still held the pipe.
        let daemon_alive = alive(daemon);
        if let Ok(group) = nix::unistd::getpgid(Some(Pid::from_raw(daemon))) {
            let _ = killpg(group, Signal::SIGKILL);
        }
        assert!(daemon_alive, "the run waited for script 1's daemon");
        assert_eq!(run.results[0].output, "started\n");
        let failure = run.failure.unwrap();
        assert!(matches!(failure.outcome, Outcome::TimedOut(_)));
        assert_eq!(failure.output, "slow\n");
        assert_eq!(run.results[1].code, None);
        let member = read_pid(&marks.path().join("member"));
        let guard = Instant::now() + Duration::from_secs(30);
        while alive(member) {
            assert!(
                Instant::now() < guard,
                "script 2's group outlived its timeout"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!marks.path().join("finished").exists());
    }

    /// The pid a script wrote to `path`.
    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether `pid` exists and is not a zombie.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    #[test]
    fn unrunnable_script_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        std::fs::write(&path, "#!/nonexistent/interpreter\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = run_dir(dir.path(), &[], Duration::from_secs(1)).unwrap();
        let failure = run.failure.unwrap();
        assert!(matches!(failure.outcome, Outcome::Failed(_)), "{failure:?}");
    }

    #[test]
    fn output_keeps_the_tail() {
        let mut out = Vec::new();
        push_tail(&mut out, &vec![b'a'; OUTPUT_TAIL]);
        push_tail(&mut out, b"end");
        assert_eq!(out.len(), OUTPUT_TAIL);
        assert!(out.ends_with(b"aend"));
        // A character cut at the front is dropped, not replaced.
        assert_eq!(tail_text(&[0xa9, b'x', 0xff]), "x\u{fffd}");
        assert_eq!(keep_tail("aé".repeat(3), 4), "aé");
        let mut results = vec![
            ServiceResult {
                name: "a".into(),
                code: Some(0),
                output: "x".repeat(100),
                duration_ms: 0,
            };
            3
        ];
        fit_budget(&mut results, 260);
        assert!(results[0].output.starts_with("[output dropped"));
        assert_eq!(results[1].output, "x".repeat(100));
        assert_eq!(results[2].output, "x".repeat(100));
    }
}
