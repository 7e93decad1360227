//! [`QmpClient`]: the connection, the handshake and the one I/O task.
//!
//! One spawned task owns the socket. It takes commands from an mpsc channel,
//! writes them, reads every line QEMU sends, routes replies by `id` to the
//! oneshot channel of the command that is waiting, and fans events out on a
//! broadcast channel. No lock is shared between the task and the handles; the
//! map of pending commands belongs to the task. When the socket ends, the task
//! drops that map, so every pending command fails with
//! [`QmpError::Closed`] instead of hanging, and event receivers see the
//! channel close. The task also ends when the last handle is dropped.
//!
//! Typed commands live in [`crate::command`], waits for events and migration
//! in [`crate::wait`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, trace, warn};

use crate::QmpError;
use crate::command::{QmpCapabilities, QmpCommand};
use crate::line::LineReader;
use crate::message::{Greeting, MAX_LINE_LEN, QmpEvent, QmpMessage, parse_message};

/// How long [`QmpClient::connect`] waits for the greeting and the capabilities reply.
pub const QMP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of one command, from sending to reply (see [`QmpClient::with_command_timeout`]).
pub const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How many events a slow receiver may fall behind before it misses some.
pub const EVENT_CAPACITY: usize = 256;
/// How many commands may queue for the I/O task before `execute` waits.
const REQUEST_QUEUE: usize = 64;
/// Longest stretch of a QEMU line written to the trace log.
const LOG_CUT: usize = 512;
/// First pause between connection attempts in [`QmpClient::connect_path`]; it doubles.
const CONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// Largest pause between connection attempts.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// A cheap, cloneable handle to one QMP connection.
///
/// All clones share the connection; each clone has its own command timeout.
#[derive(Debug, Clone)]
pub struct QmpClient {
    shared: Arc<Shared>,
    command_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    requests: mpsc::Sender<Request>,
    next_id: AtomicU64,
    /// Kept only to `resubscribe`; the I/O task holds the one sender.
    events: broadcast::Receiver<QmpEvent>,
    closed: watch::Receiver<bool>,
    greeting: Greeting,
}

/// A command on its way to the I/O task.
#[derive(Debug)]
struct Request {
    id: u64,
    line: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

/// What the I/O task sends back for one command.
#[derive(Debug)]
enum Reply {
    Return(Value),
    Error { class: String, desc: String },
}

impl QmpClient {
    /// Reads the greeting from `stream`, negotiates capabilities and starts the I/O task.
    ///
    /// Both steps together must finish within [`QMP_HANDSHAKE_TIMEOUT`].
    pub async fn connect(stream: UnixStream) -> Result<(QmpClient, Greeting), QmpError> {
        Self::handshake(stream, until(QMP_HANDSHAKE_TIMEOUT)).await
    }

    /// Connects to the QMP socket at `path` and runs the handshake, all within `deadline`.
    ///
    /// While the socket does not exist yet or refuses connections (QEMU still
    /// starting), it retries with a short backoff; when the deadline passes it
    /// returns [`QmpError::Connect`] with the last error.
    pub async fn connect_path(
        path: impl AsRef<Path>,
        deadline: Duration,
    ) -> Result<(QmpClient, Greeting), QmpError> {
        let path = path.as_ref();
        let until = until(deadline);
        let mut backoff = CONNECT_BACKOFF_FIRST;
        let stream = loop {
            let err = match timeout_at(until, UnixStream::connect(path)).await {
                Ok(Ok(stream)) => break stream,
                Ok(Err(err)) => err,
                Err(_elapsed) => std::io::Error::from(std::io::ErrorKind::TimedOut),
            };
            let retry = matches!(
                err.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::WouldBlock
            );
            if !retry || Instant::now() + backoff >= until {
                return Err(QmpError::Connect {
                    path: path.to_owned(),
                    source: err,
                });
            }
            debug!(path = %path.display(), error = %err, "QMP socket not ready, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
        };
        Self::handshake(stream, until).await
    }

    async fn handshake(
        stream: UnixStream,
        until: Instant,
    ) -> Result<(QmpClient, Greeting), QmpError> {
        let started = Instant::now();
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(read, MAX_LINE_LEN);
        let greeting = timeout_at(until, read_greeting(&mut lines))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(QmpError::Timeout {
                    op: "read QMP greeting".into(),
                    after: started.elapsed(),
                })
            })
            .map_err(|source| QmpError::Handshake {
                step: "reading the greeting",
                source: Box::new(source),
            })?;
        debug!(qemu = %greeting.version.qemu, "QMP greeting");

        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (events_tx, events) = broadcast::channel(EVENT_CAPACITY);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(run_io(lines, write, requests_rx, events_tx, closed_tx));

        let client = QmpClient {
            shared: Arc::new(Shared {
                requests,
                next_id: AtomicU64::new(1),
                events,
                closed,
                greeting: greeting.clone(),
            }),
            command_timeout: until.saturating_duration_since(Instant::now()),
        };
        client
            .execute(&QmpCapabilities::default())
            .await
            .map_err(|source| QmpError::Handshake {
                step: "negotiating capabilities",
                source: Box::new(source),
            })?;
        Ok((client.with_command_timeout(QMP_COMMAND_TIMEOUT), greeting))
    }

    /// Returns a handle to the same connection whose commands time out after `after`.
    pub fn with_command_timeout(mut self, after: Duration) -> QmpClient {
        self.command_timeout = after;
        self
    }

    /// The deadline of one command on this handle.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &Greeting {
        &self.shared.greeting
    }

    /// Runs a typed command and decodes its reply.
    pub async fn execute<C: QmpCommand>(&self, cmd: &C) -> Result<C::Reply, QmpError> {
        let args = serde_json::to_value(cmd).map_err(|source| QmpError::Encode {
            command: C::NAME.into(),
            source,
        })?;
        // A unit struct (null) or a struct whose members are all unset ({})
        // sends no `arguments` at all, as QEMU's own tools do.
        let args = match args {
            Value::Null => None,
            Value::Object(members) if members.is_empty() => None,
            args => Some(args),
        };
        let value = self.execute_raw(C::NAME, args).await?;
        C::Reply::deserialize(value).map_err(|source| QmpError::Decode {
            what: format!("reply to {}", C::NAME),
            source,
        })
    }

    /// Runs command `name` with optional `arguments` and returns the `return` member.
    ///
    /// Fails with [`QmpError::Command`] on an error reply, [`QmpError::Closed`]
    /// if the connection ends first, and [`QmpError::Timeout`] after
    /// [`QmpClient::command_timeout`].
    pub async fn execute_raw(&self, name: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": name, "id": id });
        if let (Some(args), Some(obj)) = (args, msg.as_object_mut()) {
            obj.insert("arguments".into(), args);
        }
        let mut line = serde_json::to_vec(&msg).map_err(|source| QmpError::Encode {
            command: name.into(),
            source,
        })?;
        line.push(b'\n');
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            id,
            line,
            reply: reply_tx,
        };
        let exchange = async {
            // Both fail only when the I/O task is gone: the connection is closed.
            if self.shared.requests.send(request).await.is_err() {
                return Err(QmpError::Closed);
            }
            reply_rx.await.or(Err(QmpError::Closed))
        };
        let reply = timeout(self.command_timeout, exchange)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(QmpError::Timeout {
                    op: format!("QMP command {name}"),
                    after: self.command_timeout,
                })
            })?;
        match reply {
            Reply::Return(value) => Ok(value),
            Reply::Error { class, desc } => Err(QmpError::Command {
                command: name.into(),
                class,
                desc,
            }),
        }
    }

    /// A new receiver of the events that arrive from now on.
    ///
    /// Subscribe before sending the command whose event you want to see. The
    /// receiver reports `Closed` once the connection ended and it has been drained.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.shared.events.resubscribe()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Completes when the connection has ended (QEMU exited or closed the socket).
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.clone();
        // An error means the I/O task dropped the sender: closed as well.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

async fn read_greeting(lines: &mut LineReader<OwnedReadHalf>) -> Result<Greeting, QmpError> {
    let line = lines.next_line().await?.ok_or(QmpError::Closed)?;
    trace!(line = ?cut(&line), "QMP <");
    match parse_message(&line)? {
        QmpMessage::Greeting(greeting) => Ok(greeting),
        other => Err(QmpError::Unexpected {
            expected: "greeting",
            got: other.kind(),
        }),
    }
}

/// The I/O task: writes requests, reads lines, routes replies and events.
async fn run_io(
    mut lines: LineReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    mut requests: mpsc::Receiver<Request>,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    let mut pending: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
    // The line being written and how much of it is out; one at a time.
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => route(&line, &mut pending, &events),
                Ok(None) => {
                    debug!("QMP socket closed by QEMU");
                    break;
                }
                Err(err @ QmpError::LineTooLong { .. }) => {
                    warn!(error = %err, "discarded a QMP line");
                }
                Err(err) => {
                    debug!(error = %err, "QMP read failed");
                    break;
                }
            },
            request = requests.recv(), if out.is_empty() => match request {
                Some(request) => {
                    trace!(line = ?cut(&request.line), "QMP >");
                    // Forget commands whose caller gave up (timed out or dropped).
                    pending.retain(|_, reply| !reply.is_closed());
                    pending.insert(request.id, request.reply);
                    out = request.line;
                    written = 0;
                }
                None => {
                    debug!("last QMP handle dropped, closing");
                    break;
                }
            },
            n = write.write(out.get(written..).unwrap_or_default()), if !out.is_empty() => match n {
                Ok(0) => break,
                Ok(n) => {
                    written += n;
                    if written >= out.len() {
                        out.clear();
                    }
                }
                Err(err) => {
                    debug!(error = %err, "QMP write failed");
                    break;
                }
            },
        }
    }
    // Mark the connection closed first, so a caller whose command fails with
    // `Closed` (by the drop of `pending` below) also sees `is_closed()`.
    closed.send_replace(true);
    drop(pending);
}

/// Hands one line from QEMU to whoever waits for it.
fn route(
    line: &[u8],
    pending: &mut HashMap<u64, oneshot::Sender<Reply>>,
    events: &broadcast::Sender<QmpEvent>,
) {
    trace!(line = ?cut(line), "QMP <");
    let (id, reply) = match parse_message(line) {
        Ok(QmpMessage::Event(event)) => {
            // No receivers is fine: nobody is interested right now.
            let _ = events.send(event);
            return;
        }
        Ok(QmpMessage::Return { id, value }) => (id, Reply::Return(value)),
        Ok(QmpMessage::Error { id, class, desc }) => (id, Reply::Error { class, desc }),
        Ok(QmpMessage::Greeting(_)) => {
            warn!("unexpected second QMP greeting, ignored");
            return;
        }
        Err(err) => {
            warn!(error = %err, line = ?cut(line), "ignored a QMP line");
            return;
        }
    };
    let Some(id) = id.as_ref().and_then(Value::as_u64) else {
        warn!(id = ?id, "QMP reply without a known id, ignored");
        return;
    };
    match pending.remove(&id) {
        Some(waiter) => {
            if waiter.send(reply).is_err() {
                debug!(id, "QMP reply arrived after its caller gave up");
            }
        }
        None => warn!(id, "QMP reply to no pending command, ignored"),
    }
}

/// The instant `after` from now; a duration too large to add means "no deadline".
pub(crate) fn until(after: Duration) -> Instant {
    let now = Instant::now();
    // About 30 years: tokio's own stand-in for "never".
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(86400 * 365 * 30))
}

/// A loggable prefix of a line from QEMU (which may carry guest-controlled strings).
fn cut(line: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(line.get(..LOG_CUT).unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn huge_deadlines_do_not_overflow() {
        assert!(until(Duration::MAX) > Instant::now() + Duration::from_secs(86400));
    }

    #[test]
    fn cut_bounds_log_lines() {
        let long = vec![b'x'; LOG_CUT * 2];
        assert_eq!(cut(&long).len(), LOG_CUT);
        assert_eq!(cut(b"short"), "short");
        assert_eq!(cut(b"\xff"), "\u{fffd}");
    }
}
