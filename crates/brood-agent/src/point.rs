//! Named points: a guest process announces a name and blocks until the host
//! answers it with a message. Fork and pools build on this: a template's
//! agent announces `fork`, and each child receives its identity as the answer.
//!
//! Guest processes reach the agent over a local unix socket
//! ([`POINT_SOCKET`], mode 0600). The protocol on it is one exchange per
//! connection, all integers little-endian:
//!
//! ```text
//! caller -> agent   version (u8 = 1) | name length (u32) | name (1-64 B of [A-Za-z0-9_.-])
//! agent -> caller   status (u8: 0 answered, 1 refused) | length (u32) | bytes
//! ```
//!
//! The answer's bytes are the host's message (at most
//! [`brood_proto::MAX_DATA_CHUNK`]); a refusal carries a reason in UTF-8. The
//! agent closes the connection after replying. The agent side keeps each
//! waiting connection under a sequence number, tells the host with
//! `GuestMsg::Point`, and replies when `HostMsg::AnswerPoint` names it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use brood_proto::{AgentError, ErrorKind, GuestMsg, MAX_DATA_CHUNK, MAX_POINT_NAME, Point};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::link::{Link, LinkError};

/// Where the agent listens for `brood-agent announce`.
pub const POINT_SOCKET: &str = "/run/brood-agent.sock";
/// Version byte that starts a request on the local socket.
const WIRE_VERSION: u8 = 1;
const STATUS_ANSWERED: u8 = 0;
const STATUS_REFUSED: u8 = 1;
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
            PointError::NoSuchPoint { .. } | PointError::CallerGone { .. } => {
                ErrorKind::NoSuchPoint
            }
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

/// The callers waiting for an answer, by sequence number.
#[derive(Debug)]
pub struct Points {
    link: Arc<Link>,
    next_seq: AtomicU32,
    waiting: Mutex<HashMap<u32, UnixStream>>,
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

    /// Keeps `stream` waiting at a new point and tells the host.
    fn register(&self, name: String, stream: UnixStream) -> Result<(), PointError> {
        let seq = self.seq();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.retain(|_, s| is_alive(s));
            if waiting.len() >= MAX_WAITING {
                return Err(PointError::Busy);
            }
            // Insert before telling the host, so an answer cannot overtake it.
            waiting.insert(seq, stream);
        }
        if let Err(source) = self.link.send(0, &GuestMsg::Point(Point { seq, name })) {
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&seq);
            return Err(PointError::Notify { seq, source });
        }
        Ok(())
    }

    /// Hands `message` to the caller waiting at `seq` and closes its connection.
    pub fn answer(&self, seq: u32, message: &[u8]) -> Result<(), PointError> {
        if message.len() > MAX_DATA_CHUNK {
            return Err(PointError::TooLarge { len: message.len() });
        }
        let stream = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq)
            .ok_or(PointError::NoSuchPoint { seq })?;
        if !is_alive(&stream) {
            return Err(PointError::NoSuchPoint { seq });
        }
        let mut stream = stream;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.write_all(&encode(STATUS_ANSWERED, message)))
            .map_err(|source| PointError::CallerGone { seq, source })
    }
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
    /// serves callers on a thread of its own.
    pub fn start(path: &Path, points: Arc<Points>) -> Result<Self, PointError> {
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
            .spawn(move || accept_loop(&accept, &points, &stop_flag))
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

fn accept_loop(listener: &UnixListener, points: &Arc<Points>, stop: &AtomicBool) {
    let mut limit = crate::console::RateLimit::new(Duration::from_secs(10));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let points = Arc::clone(points);
                let spawned = std::thread::Builder::new()
                    .name("point".into())
                    .spawn(move || serve_caller(&points, stream));
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

fn serve_caller(points: &Points, mut stream: UnixStream) {
    let name = stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(PointError::Io)
        .and_then(|()| read_request(&mut stream));
    let refusal = match name {
        Ok(name) => match stream.try_clone() {
            Ok(clone) => match points.register(name, clone) {
                Ok(()) => return,
                Err(err) => err,
            },
            Err(err) => PointError::Io(err),
        },
        Err(err) => err,
    };
    let reason = crate::console::chain(&refusal);
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let _ = stream.write_all(&encode(STATUS_REFUSED, reason.as_bytes()));
    let _ = stream.shutdown(Shutdown::Both);
}

fn read_request(stream: &mut UnixStream) -> Result<String, PointError> {
    let (version, body) = read_message(stream, MAX_POINT_NAME)?;
    if version != WIRE_VERSION {
        return Err(PointError::Protocol {
            what: "unknown version",
        });
    }
    let name = String::from_utf8(body).map_err(|_| PointError::InvalidName {
        name: "(not UTF-8)".into(),
    })?;
    validate_name(&name)?;
    Ok(name)
}

/// Announces point `name` to the agent listening on `socket` and waits for
/// the host's answer, at most `timeout` if given.
pub fn announce(
    socket: &Path,
    name: &str,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, PointError> {
    validate_name(name)?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut stream = UnixStream::connect(socket).map_err(|source| PointError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.write_all(&encode(WIRE_VERSION, name.as_bytes())))
        .map_err(PointError::Io)?;
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(PointError::Io)?;
    }
    let timed_out = PointError::Timeout {
        after: timeout.unwrap_or_default(),
    };
    match read_message(&mut stream, MAX_DATA_CHUNK) {
        Ok((STATUS_ANSWERED, body)) => Ok(body),
        Ok((STATUS_REFUSED, reason)) => Err(PointError::Refused {
            reason: crate::console::cut(&String::from_utf8_lossy(&reason), 1024).to_owned(),
        }),
        Ok(_) => Err(PointError::Protocol {
            what: "unknown status",
        }),
        Err(PointError::Io(err))
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(timed_out)
        }
        Err(err) => Err(err),
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
        let bytes = encode(WIRE_VERSION, b"fork");
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
        let listener = PointListener::start(&path, Arc::new(Points::new(link))).unwrap();
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
