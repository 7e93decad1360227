//! The serving loop, generic over the transport: the calling thread reads
//! the transport into a [`FrameDecoder`] and hands each request to a worker
//! thread of its own; every reply goes through the shared [`Link`].
//!
//! What is transport-specific is only what end of file means ([`OnEof`]):
//! on a virtio-serial port read(2) returns 0 while the host side is not
//! connected (`port_fops_read()` in Linux `drivers/char/virtio_console.c`),
//! which is not the end. Finding and opening the port is [`crate::port`]'s
//! job; the handlers live in `exec`, `file`, [`crate::system`],
//! [`crate::point`] and [`crate::fork`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brood_proto::{
    AgentError, Decoded, ErrorKind, FrameDecoder, FrameFault, GuestMsg, HostMsg, PROTOCOL_VERSION,
    RawFrame, Ready,
};

use nix::unistd::Pid;

use crate::console::RateLimit;
use crate::fork::{Fork, ForkSettings};
use crate::link::{Link, LinkError};
use crate::point::{PointListener, Points};
use crate::system::{self, Machine};

/// How long to wait before reading again after end of file on a transport
/// whose host side is not connected.
const RECONNECT_POLL: Duration = Duration::from_millis(10);
/// Size of the transport read buffer.
const READ_BUF: usize = 64 * 1024;

/// Errors that end the serving loop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `Ready` could not be sent.
    #[error("announce readiness")]
    Ready(#[source] LinkError),
    /// Reading the transport failed.
    #[error("read the control channel")]
    Read(#[source] io::Error),
}

/// What end of file on the transport means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEof {
    /// The peer is gone: stop serving (a socket).
    Stop,
    /// The host side is not connected: drop any partial frame, wait and read
    /// again (a virtio-serial port).
    WaitForHost,
}

/// How to serve.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where to listen for `brood-agent announce`; `None` disables points.
    pub point_socket: Option<PathBuf>,
    /// What end of file on the transport means.
    pub on_eof: OnEof,
    /// Machine-wide actions (hostname, power, network identity, RNG).
    pub machine: Arc<dyn Machine>,
    /// Where fork finds its services and writes the child's files.
    pub fork: ForkSettings,
}

/// Maps an I/O error to the kind the host branches on.
pub(crate) fn io_kind(err: &io::Error) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::InvalidInput => ErrorKind::BadRequest,
        io::ErrorKind::FileTooLarge => ErrorKind::TooLarge,
        _ => ErrorKind::Io,
    }
}

/// State shared by the reader and the workers.
#[derive(Debug)]
struct Agent {
    link: Arc<Link>,
    points: Arc<Points>,
    machine: Arc<dyn Machine>,
    fork: Arc<Fork>,
    workers: Arc<crate::workers::Workers>,
    /// The process group of each running exec, by its request's frame id.
    execs: Mutex<HashMap<u32, Pid>>,
    /// The running interactive sessions.
    sessions: crate::pty::Sessions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every use is a single insert, remove or lookup: a poisoned map is consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `Ready`, then serves requests read from `reader` until the transport
/// ends (with [`OnEof::Stop`]) or fails. Replies go to `writer`.
pub fn serve(
    mut reader: impl Read,
    writer: impl Write + Send + 'static,
    config: ServeConfig,
) -> Result<(), ServeError> {
    let link = Arc::new(Link::new(writer));
    let points = Arc::new(Points::new(Arc::clone(&link)));
    let fork = Arc::new(Fork::new(
        Arc::clone(&points),
        Arc::clone(&config.machine),
        config.fork,
    ));
    // Listen before Ready, so the host may run `announce` as soon as it sees Ready.
    let _listener = config.point_socket.as_deref().and_then(|path| {
        match PointListener::start(path, Arc::clone(&fork)) {
            Ok(listener) => Some(listener),
            Err(err) => {
                log!(
                    "named points are unavailable: {}",
                    crate::console::chain(&err)
                );
                None
            }
        }
    });
    let agent = Arc::new(Agent {
        link,
        points,
        machine: config.machine,
        fork,
        workers: Arc::default(),
        execs: Mutex::default(),
        sessions: crate::pty::Sessions::default(),
    });
    let ready = GuestMsg::Ready(Ready {
        proto_version: PROTOCOL_VERSION,
        agent_version: crate::VERSION.to_owned(),
        uptime_ms: system::uptime_ms(),
    });
    agent.link.send(0, &ready).map_err(ServeError::Ready)?;

    let mut decoder = FrameDecoder::new();
    let mut garbage = GarbageLog::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut host_away = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => match config.on_eof {
                OnEof::Stop => return Ok(()),
                OnEof::WaitForHost => {
                    if !host_away {
                        log!("host disconnected; waiting for it");
                        host_away = true;
                        // A frame cut by the disconnect must not swallow the
                        // start of the next connection's bytes.
                        decoder = FrameDecoder::new();
                    }
                    std::thread::sleep(RECONNECT_POLL);
                    continue;
                }
            },
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ServeError::Read(err)),
        };
        host_away = false;
        decoder.push(buf.get(..n).unwrap_or_default());
        while let Some(decoded) = decoder.next_frame() {
            match decoded {
                Decoded::Frame(frame) => agent.dispatch(frame),
                Decoded::Fault(fault) => agent.fault(fault, &mut garbage),
            }
        }
    }
}

impl Agent {
    /// Decodes one frame and runs it on a worker thread.
    fn dispatch(self: &Arc<Self>, frame: RawFrame) {
        let id = frame.id;
        if id == 0 {
            // Id 0 is reserved for unsolicited guest messages; a reply to it
            // could not be told apart from them.
            log!("ignoring a request with frame id 0");
            return;
        }
        let msg: HostMsg = match frame.decode() {
            Ok(msg) => msg,
            Err(err) => {
                let error = AgentError::new(ErrorKind::BadRequest, crate::console::chain(&err));
                return self.finish(id, Err(error));
            }
        };
        let agent = Arc::clone(self);
        let spawned = self
            .workers
            .run(format!("req-{id}"), Box::new(move || agent.handle(id, msg)));
        if let Err(err) = spawned {
            let error = AgentError::new(ErrorKind::Io, format!("start a worker thread: {err}"));
            self.finish(id, Err(error));
        }
    }

    /// Answers a stream fault that carries a frame id; logs the rest.
    fn fault(&self, fault: FrameFault, garbage: &mut GarbageLog) {
        match fault {
            FrameFault::Garbage { skipped } => garbage.note(skipped),
            FrameFault::Oversized { id, .. } => {
                self.finish(
                    id,
                    Err(AgentError::new(ErrorKind::TooLarge, fault.to_string())),
                );
            }
            FrameFault::Version { id, .. } => {
                self.finish(
                    id,
                    Err(AgentError::new(ErrorKind::BadRequest, fault.to_string())),
                );
            }
        }
    }

    /// Runs one request on its worker thread and sends the final reply.
    fn handle(&self, id: u32, msg: HostMsg) {
        let reply = match msg {
            HostMsg::Exec(req) => {
                let link = &self.link;
                let result = crate::exec::run(
                    &req,
                    &mut |stream, data| {
                        let data = data.to_vec().into();
                        link.send(id, &GuestMsg::Output { stream, data })
                    },
                    &mut |pgid| {
                        lock(&self.execs).insert(id, pgid);
                    },
                );
                lock(&self.execs).remove(&id);
                result.map(GuestMsg::Exited).map_err(|e| e.agent_error())
            }
            HostMsg::CancelExec { exec_id } => match lock(&self.execs).get(&exec_id) {
                Some(pgid) => {
                    // ESRCH: it is exiting already; its Exited follows either way.
                    let _ = nix::sys::signal::killpg(*pgid, nix::sys::signal::Signal::SIGKILL);
                    Ok(GuestMsg::Ok)
                }
                None => Err(AgentError::new(
                    ErrorKind::NotFound,
                    format!("no command runs for request {exec_id}"),
                )),
            },
            HostMsg::ReadFile(req) => crate::file::read(&req)
                .map(GuestMsg::FileData)
                .map_err(|e| e.agent_error()),
            HostMsg::WriteFile(req) => crate::file::write(&req)
                .map(|len| GuestMsg::Written { len })
                .map_err(|e| e.agent_error()),
            HostMsg::SetHostname { hostname } => system::validate_hostname(&hostname)
                .and_then(|()| self.machine.set_hostname(&hostname))
                .map(|()| GuestMsg::Ok)
                .map_err(|e| e.agent_error()),
            HostMsg::PowerOff => {
                self.finish(id, Ok(GuestMsg::Ok));
                if let Err(err) = self.machine.power_off() {
                    log!("{}", crate::console::chain(&err));
                }
                return;
            }
            HostMsg::Info => Ok(GuestMsg::Info(system::info())),
            HostMsg::AnswerPoint { seq, message } => self
                .points
                .answer(seq, &message)
                .map(|()| GuestMsg::Ok)
                .map_err(|e| e.agent_error()),
            HostMsg::PrepareFork => self
                .fork
                .prepare()
                .map(|(seq, services)| GuestMsg::AtForkPoint { seq, services })
                .map_err(|e| e.agent_error()),
            HostMsg::CompleteFork { seq, config } => match self.fork.complete(seq, &config) {
                Ok((report, release)) => {
                    // The host hears first; a `fork-point` caller after.
                    self.finish(id, Ok(GuestMsg::ForkDone(report)));
                    release.release();
                    return;
                }
                Err(err) => Err(err.agent_error()),
            },
            HostMsg::SetIpv4 { nic, config } => system::validate_ipv4(nic, &config)
                .and_then(|()| self.machine.set_ipv4(&format!("eth{nic}"), &config))
                .map(|()| GuestMsg::Ok)
                .map_err(|e| e.agent_error()),
            HostMsg::WarmFork { seq } => self
                .fork
                .warm(seq)
                .map(|()| GuestMsg::Ok)
                .map_err(|e| e.agent_error()),
            HostMsg::Session(req) => {
                let link = &self.link;
                let result = crate::pty::run(
                    id,
                    &req,
                    &self.sessions,
                    &mut |stream, data| {
                        let data = data.to_vec().into();
                        link.send(id, &GuestMsg::Output { stream, data })
                    },
                    &mut |pgid| {
                        lock(&self.execs).insert(id, pgid);
                    },
                );
                lock(&self.execs).remove(&id);
                result.map(GuestMsg::Exited).map_err(|e| e.agent_error())
            }
            HostMsg::SessionInput { exec_id, data, eof } => self
                .sessions
                .input(exec_id, &data, eof)
                .map(|()| GuestMsg::Ok),
            HostMsg::SessionResize { exec_id, size } => {
                self.sessions.resize(exec_id, size).map(|()| GuestMsg::Ok)
            }
            HostMsg::SessionSignal { exec_id, signal } => {
                self.sessions.signal(exec_id, signal).map(|()| GuestMsg::Ok)
            }
            HostMsg::StatFile { path } => crate::file::stat(&path)
                .map(GuestMsg::FileStat)
                .map_err(|e| e.agent_error()),
        };
        self.finish(id, reply);
    }

    /// Sends the final reply of request `id`.
    fn finish(&self, id: u32, reply: Result<GuestMsg, AgentError>) {
        let msg = reply.unwrap_or_else(GuestMsg::Error);
        match self.link.send(id, &msg) {
            Ok(()) => {}
            Err(LinkError::Encode(err)) => {
                // The host still needs a final reply for this id.
                let error = AgentError::new(ErrorKind::TooLarge, crate::console::chain(&err));
                if let Err(err) = self.link.send(id, &GuestMsg::Error(error)) {
                    log!("{}", crate::console::chain(&err));
                }
            }
            Err(err) => log!("{}", crate::console::chain(&err)),
        }
    }
}

/// Rate-limited console reports of bytes that were not frames.
#[derive(Debug)]
struct GarbageLog {
    limit: RateLimit,
    skipped: u64,
}

impl GarbageLog {
    fn new() -> Self {
        Self {
            limit: RateLimit::new(Duration::from_secs(5)),
            skipped: 0,
        }
    }

    fn note(&mut self, skipped: usize) {
        self.skipped = self
            .skipped
            .saturating_add(u64::try_from(skipped).unwrap_or(u64::MAX));
        if self.limit.allow(Instant::now()).is_some() {
            log!(
                "discarded {} bytes that were not frames",
                std::mem::take(&mut self.skipped)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds() {
        let kind = |k| io_kind(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(
            kind(io::ErrorKind::PermissionDenied),
            ErrorKind::PermissionDenied
        );
        assert_eq!(kind(io::ErrorKind::InvalidInput), ErrorKind::BadRequest);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), ErrorKind::Io);
    }
}
