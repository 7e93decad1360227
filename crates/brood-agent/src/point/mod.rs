//! Named points: a guest process announces a name and blocks until the host
//! answers it with a message. Fork builds on this: a guest waits at a fork
//! point (`brood-agent fork-point`, or the agent itself after
//! `PrepareFork`) and each child releases it with its identity.
//!
//! Guest processes reach the agent over a local unix socket
//! ([`POINT_SOCKET`], mode 0600). The protocol on it is one exchange per
//! connection, all integers little-endian:
//!
//! ```text
//! caller -> agent   kind (u8) | length (u32) | body
//!                   kind 1, announce:   body = name (1-64 B of [A-Za-z0-9_.-])
//!                   kind 2, fork-point: body empty
//! agent -> caller   status (u8) | length (u32) | bytes
//!                   0 answered: the host's message, or the child's JSON
//!                   1 refused:  a reason in UTF-8
//!                   2 fork failed: why the child is not ready, in UTF-8
//! ```
//!
//! An answer is at most [`brood_proto::MAX_DATA_CHUNK`] bytes. The agent
//! closes the connection after replying. It keeps each waiting caller under
//! a sequence number and tells the host with `GuestMsg::Point`; a named
//! point is released by `HostMsg::AnswerPoint`, a fork point by
//! `HostMsg::CompleteFork` ([`crate::fork`]). A point announced with the
//! name [`FORK_POINT`] may be released either way, so every `Point` named
//! `fork` can be completed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use brood_proto::{
    AgentError, ErrorKind, FORK_POINT, GuestMsg, MAX_DATA_CHUNK, MAX_POINT_NAME, Point,
};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::fork::Fork;
use crate::link::{Link, LinkError};

mod client;

pub use client::{announce, fork_point};

/// Where the agent listens for `brood-agent announce`.
pub const POINT_SOCKET: &str = "/run/brood-agent.sock";
/// Request kinds on the local socket.
const KIND_ANNOUNCE: u8 = 1;
const KIND_FORK_POINT: u8 = 2;
const STATUS_ANSWERED: u8 = 0;
const STATUS_REFUSED: u8 = 1;
const STATUS_FORK_FAILED: u8 = 2;
/// Longest refusal or failure text a caller shows (a failed service's
/// output tail is up to 64 KiB).
const MAX_REASON: usize = 128 * 1024;
/// How long a caller may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may take to be written to a caller.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most callers waiting at once.
const MAX_WAITING: usize = 1024;

/// Errors of named points, on the agent side and in the `announce` client.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    /// The name is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid point name {name:?}: want 1-{MAX_POINT_NAME} characters of [A-Za-z0-9_.-]")]
    InvalidName {
        /// The refused name, cut for display.
        name: String,
    },
    /// The local socket could not be set up.
    #[error("listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What bind or chmod reported.
        #[source]
        source: io::Error,
    },
    /// Nobody waits at this sequence number.
    #[error("no caller waits at point {seq}")]
    NoSuchPoint {
        /// The sequence number.
        seq: u32,
    },
    /// `AnswerPoint` named a fork point.
    #[error("point {seq} is a fork point: release it with CompleteFork")]
    ForkPoint {
        /// The sequence number.
        seq: u32,
    },
    /// `CompleteFork` named a point that is not a fork point.
    #[error("point {seq} is not a fork point: answer it with AnswerPoint")]
    NotForkPoint {
        /// The sequence number.
        seq: u32,
    },
    /// The caller waiting at this sequence number went away.
    #[error("the caller at point {seq} went away")]
    CallerGone {
        /// The sequence number.
        seq: u32,
        /// What writing to it reported.
        #[source]
        source: io::Error,
    },
    /// A message is over the size limit.
    #[error("{len}-byte message is over the {MAX_DATA_CHUNK}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Too many callers are waiting already.
    #[error("{MAX_WAITING} callers are waiting already")]
    Busy,
    /// The host could not be told about the point.
    #[error("tell the host about point {seq}")]
    Notify {
        /// The sequence number.
        seq: u32,
        /// What the link reported.
        #[source]
        source: LinkError,
    },
    /// The agent's socket could not be reached.
    #[error("connect to the agent at {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What connect reported.
        #[source]
        source: io::Error,
    },
    /// No answer came before the deadline.
    #[error("no answer within {after:?}")]
    Timeout {
        /// The deadline.
        after: Duration,
    },
    /// The agent closed the connection without answering.
    #[error("the agent closed the connection without an answer")]
    AgentGone,
    /// The agent refused the request.
    #[error("the agent refused: {reason}")]
    Refused {
        /// The agent's reason.
        reason: String,
    },
    /// The fork completed but the child is not ready.
    #[error("the child is not ready: {reason}")]
    ForkFailed {
        /// What failed.
        reason: String,
    },
    /// The peer broke the local protocol.
    #[error("bad message on the point socket: {what}")]
    Protocol {
        /// What was wrong.
        what: &'static str,
    },
    /// Reading or writing the local socket failed.
    #[error("point socket i/o")]
    Io(#[source] io::Error),
}

impl PointError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        let kind = match self {
            PointError::NoSuchPoint { .. }
            | PointError::CallerGone { .. }
            | PointError::ForkPoint { .. }
            | PointError::NotForkPoint { .. } => ErrorKind::NoSuchPoint,
            PointError::TooLarge { .. } => ErrorKind::TooLarge,
            PointError::InvalidName { .. } | PointError::Protocol { .. } => ErrorKind::BadRequest,
            _ => ErrorKind::Io,
        };
        AgentError::new(kind, crate::console::chain(self))
    }
}

/// Checks a point name: 1-[`MAX_POINT_NAME`] characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), PointError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_POINT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(PointError::InvalidName {
            name: crate::console::cut(name, 2 * MAX_POINT_NAME).to_owned(),
        })
    }
}

fn encode(lead: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(lead);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads `lead (u8) | len (u32) | body`, refusing bodies over `max`.
fn read_message(r: &mut impl Read, max: usize) -> Result<(u8, Vec<u8>), PointError> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).map_err(read_error)?;
    let [lead, a, b, c, d] = header;
    let len = usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if len > max {
        return Err(PointError::Protocol {
            what: "length over the limit",
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(read_error)?;
    Ok((lead, body))
}

fn read_error(err: io::Error) -> PointError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => PointError::AgentGone,
        _ => PointError::Io(err),
    }
}

/// What waits at a sequence number.
#[derive(Debug)]
enum Waiter {
    /// `brood-agent announce NAME`.
    Named { name: String, caller: UnixStream },
    /// A fork point: the agent's own after `PrepareFork` (no caller) or a
    /// `brood-agent fork-point` caller's.
    Fork(Option<UnixStream>),
}

impl Waiter {
    fn is_alive(&self) -> bool {
        match self {
            Waiter::Named { caller, .. } | Waiter::Fork(Some(caller)) => is_alive(caller),
            Waiter::Fork(None) => true,
        }
    }

    fn is_fork(&self) -> bool {
        match self {
            Waiter::Named { name, .. } => name == FORK_POINT,
            Waiter::Fork(_) => true,
        }
    }
}

/// The callers waiting for an answer, by sequence number.
#[derive(Debug)]
pub struct Points {
    link: Arc<Link>,
    next_seq: AtomicU32,
    waiting: Mutex<HashMap<u32, Waiter>>,
}

impl Points {
    /// An empty table that announces points on `link`.
    pub fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            next_seq: AtomicU32::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn seq(&self) -> u32 {
        loop {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if seq != 0 {
                return seq;
            }
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Waiter>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `waiter` at a new sequence number; tells the host with a
    /// `Point` named `announce` when given.
    fn register(&self, waiter: Waiter, announce: Option<String>) -> Result<u32, PointError> {
        let seq = self.seq();
        {
            let mut waiting = self.table();
            waiting.retain(|_, w| w.is_alive());
            if waiting.len() >= MAX_WAITING {
                return Err(PointError::Busy);
            }
            // Insert before telling the host, so an answer cannot overtake it.
            waiting.insert(seq, waiter);
        }
        if let Some(name) = announce
            && let Err(source) = self.link.send(0, &GuestMsg::Point(Point { seq, name }))
        {
            self.table().remove(&seq);
            return Err(PointError::Notify { seq, source });
        }
        Ok(seq)
    }

    /// Keeps a fork waiter: `caller` is a `fork-point` caller, announced to
    /// the host as a point named [`FORK_POINT`]; without one it is the
    /// agent's own, which the host learns from the `AtForkPoint` reply.
    pub(crate) fn register_fork(&self, caller: Option<UnixStream>) -> Result<u32, PointError> {
        let announce = caller.is_some().then(|| FORK_POINT.to_owned());
        self.register(Waiter::Fork(caller), announce)
    }

    /// Checks that a fork waiter whose caller (if any) still waits is at `seq`.
    pub(crate) fn check_fork(&self, seq: u32) -> Result<(), PointError> {
        let mut waiting = self.table();
        match waiting.get(&seq) {
            None => Err(PointError::NoSuchPoint { seq }),
            Some(w) if !w.is_fork() => Err(PointError::NotForkPoint { seq }),
            Some(w) if !w.is_alive() => {
                waiting.remove(&seq);
                Err(PointError::NoSuchPoint { seq })
            }
            Some(_) => Ok(()),
        }
    }

    /// Removes the fork waiter at `seq`; returns its caller, if it has one.
    pub(crate) fn take_fork(&self, seq: u32) -> Result<Option<UnixStream>, PointError> {
        let mut waiting = self.table();
        match waiting.get(&seq) {
            None => return Err(PointError::NoSuchPoint { seq }),
            Some(w) if !w.is_fork() => return Err(PointError::NotForkPoint { seq }),
            Some(_) => {}
        }
        match waiting.remove(&seq) {
            Some(Waiter::Fork(caller)) => Ok(caller),
            Some(Waiter::Named { caller, .. }) => Ok(Some(caller)),
            None => Err(PointError::NoSuchPoint { seq }),
        }
    }

    /// Hands `message` to the caller waiting at `seq` and closes its connection.
    pub fn answer(&self, seq: u32, message: &[u8]) -> Result<(), PointError> {
        if message.len() > MAX_DATA_CHUNK {
            return Err(PointError::TooLarge { len: message.len() });
        }
        let caller = {
            let mut waiting = self.table();
            if let Some(Waiter::Fork(_)) = waiting.get(&seq) {
                return Err(PointError::ForkPoint { seq });
            }
            match waiting.remove(&seq) {
                Some(Waiter::Named { caller, .. }) => caller,
                _ => return Err(PointError::NoSuchPoint { seq }),
            }
        };
        if !is_alive(&caller) {
            return Err(PointError::NoSuchPoint { seq });
        }
        reply(caller, STATUS_ANSWERED, message)
            .map_err(|source| PointError::CallerGone { seq, source })
    }
}

/// Releases a fork-point caller: the child's JSON, or why it is not ready.
pub(crate) fn release_fork(caller: UnixStream, outcome: Result<&[u8], &str>) -> io::Result<()> {
    match outcome {
        Ok(json) => reply(caller, STATUS_ANSWERED, json),
        Err(reason) => reply(caller, STATUS_FORK_FAILED, reason.as_bytes()),
    }
}

fn reply(mut caller: UnixStream, status: u8, body: &[u8]) -> io::Result<()> {
    caller.set_write_timeout(Some(REPLY_TIMEOUT))?;
    caller.write_all(&encode(status, body))
}

/// Whether the caller still waits: it sends nothing after its request, so a
/// readable socket means end of file (or a misbehaving caller).
fn is_alive(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds
            .first()
            .and_then(PollFd::revents)
            .is_some_and(|r| r.is_empty()),
        Err(_) => false,
    }
}

/// The agent's listening socket; closing it stops its accept thread.
#[derive(Debug)]
pub struct PointListener {
    listener: UnixListener,
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl PointListener {
    /// Binds `path` (replacing a stale socket), restricts it to its owner and
    /// serves callers on a thread of its own; `fork-point` callers go to `fork`.
    pub fn start(path: &Path, fork: Arc<Fork>) -> Result<Self, PointError> {
        let listen_err = |source| PointError::Listen {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(listen_err(err)),
        }
        // bind(2) creates the socket with 0777 & ~umask; connecting needs
        // write permission, so with the usual umask only root can connect
        // before the chmod below.
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let accept = listener.try_clone().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("points".into())
            .spawn(move || accept_loop(&accept, &fork, &stop_flag))
            .map_err(listen_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            stop,
        })
    }
}

impl Drop for PointListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening unix socket wakes a blocked accept(2),
        // which then fails with EINVAL.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            nix::sys::socket::Shutdown::Both,
        );
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, fork: &Arc<Fork>, stop: &AtomicBool) {
    let mut limit = crate::console::RateLimit::new(Duration::from_secs(10));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let fork = Arc::clone(fork);
                let spawned = std::thread::Builder::new()
                    .name("point".into())
                    .spawn(move || serve_caller(&fork, stream));
                if let Err(err) = spawned {
                    log!("points: cannot start a thread for a caller: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                if limit.allow(Instant::now()).is_some() {
                    log!("points: accept: {err}");
                }
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a caller asked for.
#[derive(Debug)]
enum Request {
    Announce(String),
    ForkPoint,
}

fn serve_caller(fork: &Fork, mut stream: UnixStream) {
    if let Err(refusal) = wait_at_point(fork, &mut stream) {
        let _ = reply(stream, STATUS_REFUSED, refusal.as_bytes());
    }
}

/// Reads a caller's request and leaves a copy of its connection waiting;
/// returns the reason for refusing it.
fn wait_at_point(fork: &Fork, stream: &mut UnixStream) -> Result<(), String> {
    let chain = |err: PointError| crate::console::chain(&err);
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| chain(PointError::Io(e)))?;
    let request = read_request(stream).map_err(chain)?;
    let caller = stream.try_clone().map_err(|e| chain(PointError::Io(e)))?;
    match request {
        Request::Announce(name) => {
            let waiter = Waiter::Named {
                name: name.clone(),
                caller,
            };
            fork.points()
                .register(waiter, Some(name))
                .map(drop)
                .map_err(chain)
        }
        Request::ForkPoint => fork
            .prepare_local(caller)
            .map_err(|err| crate::console::chain(&err)),
    }
}

fn read_request(stream: &mut UnixStream) -> Result<Request, PointError> {
    let (kind, body) = read_message(stream, MAX_POINT_NAME)?;
    match kind {
        KIND_ANNOUNCE => {
            let name = String::from_utf8(body).map_err(|_| PointError::InvalidName {
                name: "(not UTF-8)".into(),
            })?;
            validate_name(&name)?;
            Ok(Request::Announce(name))
        }
        KIND_FORK_POINT if body.is_empty() => Ok(Request::ForkPoint),
        KIND_FORK_POINT => Err(PointError::Protocol {
            what: "fork-point request with a body",
        }),
        _ => Err(PointError::Protocol {
            what: "unknown request kind",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["fork", "a", "pool.dns-1_x", &"n".repeat(MAX_POINT_NAME)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            &"n".repeat(MAX_POINT_NAME + 1),
            "x\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wire_round_trip_and_bounds() {
        let bytes = encode(KIND_ANNOUNCE, b"fork");
        assert_eq!(bytes, b"\x01\x04\0\0\0fork");
        let (lead, body) = read_message(&mut &bytes[..], 64).unwrap();
        assert_eq!((lead, body.as_slice()), (1, &b"fork"[..]));
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut &huge[..], 64),
            Err(PointError::Protocol { .. })
        ));
        assert!(matches!(
            read_message(&mut &bytes[..6], 64),
            Err(PointError::AgentGone)
        ));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            PointError::NoSuchPoint { seq: 3 }.agent_error().kind,
            ErrorKind::NoSuchPoint
        );
        assert_eq!(
            PointError::TooLarge { len: 1 }.agent_error().kind,
            ErrorKind::TooLarge
        );
    }

    fn accept_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "points")
            })
            .count()
    }

    #[test]
    fn dropping_the_listener_stops_its_thread_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let link = Arc::new(Link::new(io::sink()));
        let points = Arc::new(Points::new(link));
        let machine = Arc::new(crate::system::LinuxMachine::new());
        let fork = Arc::new(Fork::new(
            points,
            machine,
            crate::fork::ForkSettings::default(),
        ));
        let listener = PointListener::start(&path, fork).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while accept_threads() == 0 {
            assert!(Instant::now() < deadline, "accept thread never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(listener);
        assert!(!path.exists());
        while accept_threads() > 0 {
            assert!(Instant::now() < deadline, "accept thread still running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
