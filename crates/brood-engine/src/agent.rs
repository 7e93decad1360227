//! `AgentClient`: the host end of the brood-agent control channel.
//!
//! One reader task decodes frames from the guest and routes each reply to
//! the request that carries its id; one writer task owns the write half.
//! Everything the guest sends is hostile: frames are bounded by
//! brood-proto's decoder, replies to unknown ids are dropped, unsolicited
//! points are queued in a bounded channel, command output is capped on the
//! host side too, whatever the agent claims, and warnings about what the
//! guest sent are rate-limited ([`LOG_INTERVAL`]) with a count.
//!
//! The host side of the socket stays connected while the guest agent comes
//! and goes: QEMU keeps the chardev open and only reports the guest end of
//! the virtio-serial port in QMP `VSERPORT_CHANGE` events. [`AgentClient::follow_port`]
//! watches them; when the guest closes the port (its agent exited or was
//! killed) every request in flight fails at once, and new ones fail at once,
//! until the agent opens the port again and says `Ready`. An agent that is
//! stopped but keeps the port open is caught by deadlines: every request has
//! one, and an exec with a timeout gets [`EXEC_REPORT_GRACE`] beyond it.
//!
//! Exec output is streamed ([`ExecStream`]): at most [`REPLY_QUEUE`] chunks
//! wait per command, after which the reader stops reading the guest until
//! the consumer catches up, so a slow consumer throttles the guest rather
//! than the host's memory. Dropping an unfinished stream kills the command
//! in the guest (`HostMsg::CancelExec`). Commands live in `agent/exec.rs`,
//! the reader and writer tasks in `agent/reader.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brood_proto::{
    AgentError, AgentInfo, ChildConfig, ErrorKind, ForkReport, GuestMsg, HostMsg, MAX_DATA_CHUNK,
    Point, ReadFileRequest, Ready, ServiceResult, WriteFileRequest, encode_frame,
};
use brood_qmp::QmpEvent;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::debug;

use crate::EngineError;

mod exec;
mod reader;
mod session;

pub use exec::{ExecEvent, ExecOutput, ExecStream};
use reader::{LogLimit, Reader, read_loop, write_loop};
pub use session::SessionControl;

/// Deadline for requests that do not carry their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after an exec's own timeout the agent has to report that it
/// killed the command (it kills the process group at the timeout and reads
/// the pipes for at most half a second more).
pub const EXEC_REPORT_GRACE: Duration = Duration::from_secs(5);
/// The QEMU device id of the agent's virtio-serial port, as QMP
/// `VSERPORT_CHANGE` events name it.
pub const AGENT_PORT_ID: &str = "agentport";
/// At most one warning per this interval about what one guest sent.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Reply frames buffered per request before the reader waits for the caller.
const REPLY_QUEUE: usize = 16;
/// Announced points buffered before further ones are dropped.
const POINT_QUEUE: usize = 64;
/// Longest guest string put in a log line.
const LOG_CUT: usize = 200;

type Pending = Arc<Mutex<HashMap<u32, mpsc::Sender<GuestMsg>>>>;

/// The guest end of the agent's port, as QMP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// No event seen yet (the agent has not opened it since this client started).
    Unknown,
    /// A guest process holds the port open.
    Open,
    /// The guest closed it: the agent exited or was killed.
    Closed,
}

/// What a guest sent that was not a valid frame, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestNoise {
    /// Bytes discarded because they did not start a frame.
    pub garbage_bytes: u64,
    /// Frames discarded: oversized, of another version, undecodable or unsolicited.
    pub bad_frames: u64,
    /// Warnings logged about them (at most one per [`LOG_INTERVAL`]).
    pub warnings: u64,
}

#[derive(Debug, Default)]
struct NoiseCounters {
    garbage_bytes: AtomicU64,
    bad_frames: AtomicU64,
    warnings: AtomicU64,
}

/// A connection to one guest's agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentClient {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: Arc<AtomicU32>,
    ready: watch::Receiver<Option<Ready>>,
    ready_tx: Arc<watch::Sender<Option<Ready>>>,
    points: Arc<tokio::sync::Mutex<mpsc::Receiver<Point>>>,
    closed: watch::Receiver<bool>,
    port: Arc<watch::Sender<PortState>>,
    noise: Arc<NoiseCounters>,
    /// Raised each time the agent is found gone; a request sent before
    /// the last raise will not be answered.
    epoch: Arc<AtomicU64>,
}

impl AgentClient {
    /// Starts serving a connected agent socket.
    pub fn new(stream: UnixStream) -> Self {
        let (rd, wr) = stream.into_split();
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(64);
        let (ready_tx, ready_rx) = watch::channel(None);
        let (point_tx, point_rx) = mpsc::channel(POINT_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (port_tx, port_rx) = watch::channel(PortState::Unknown);
        let pending: Pending = Arc::default();
        let ready_tx = Arc::new(ready_tx);
        let noise = Arc::new(NoiseCounters::default());
        let epoch = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(wr, out_rx));
        tokio::spawn(read_loop(
            rd,
            Reader {
                pending: pending.clone(),
                ready: ready_tx.clone(),
                points: point_tx,
                closed: closed_tx,
                port: port_rx,
                noise: noise.clone(),
                epoch: epoch.clone(),
                log: LogLimit::new(LOG_INTERVAL),
            },
        ));
        Self {
            out: out_tx,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            ready: ready_rx,
            ready_tx,
            points: Arc::new(tokio::sync::Mutex::new(point_rx)),
            closed: closed_rx,
            port: Arc::new(port_tx),
            noise,
            epoch,
        }
    }

    /// Follows the guest end of the agent's port through QMP events (from
    /// `QmpClient::events`, subscribed before the guest can open the port):
    /// when the guest closes it, requests in flight and new ones fail at
    /// once until the agent is back.
    pub fn follow_port(&self, mut events: broadcast::Receiver<QmpEvent>) {
        let (port, pending, ready, epoch) = (
            self.port.clone(),
            self.pending.clone(),
            self.ready_tx.clone(),
            self.epoch.clone(),
        );
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!("missed {n} QMP events while following the agent port");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if ev.event != "VSERPORT_CHANGE"
                    || ev.data.get("id").and_then(|v| v.as_str()) != Some(AGENT_PORT_ID)
                {
                    continue;
                }
                match ev.data.get("open").and_then(serde_json::Value::as_bool) {
                    Some(true) => {
                        debug!("the guest opened the agent port");
                        if port.send_replace(PortState::Open) == PortState::Open {
                            // QEMU throttles VSERPORT_CHANGE to one a second
                            // per port and sends only the latest: open after
                            // open hides a close, so the agent we knew is gone.
                            forget_agent(&pending, &ready, &epoch);
                        }
                    }
                    Some(false) => {
                        debug!("the guest closed the agent port");
                        port.send_replace(PortState::Closed);
                        forget_agent(&pending, &ready, &epoch);
                    }
                    None => {}
                }
            }
        });
    }

    /// The guest end of the agent's port.
    pub fn port_state(&self) -> PortState {
        *self.port.borrow()
    }

    /// What the guest sent that was not a valid frame, so far.
    pub fn noise(&self) -> GuestNoise {
        GuestNoise {
            garbage_bytes: self.noise.garbage_bytes.load(Ordering::Relaxed),
            bad_frames: self.noise.bad_frames.load(Ordering::Relaxed),
            warnings: self.noise.warnings.load(Ordering::Relaxed),
        }
    }

    /// The agent's `Ready`, if it has been received.
    pub fn ready_info(&self) -> Option<Ready> {
        self.ready.borrow().clone()
    }

    /// Whether the channel to the guest has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Whether the guest closed the agent's port (the agent is gone).
    fn is_gone(&self) -> bool {
        self.port_state() == PortState::Closed
    }

    /// The error for a request sent at `epoch` whose reply queue ended.
    fn lost_err(&self, epoch: u64) -> EngineError {
        if self.is_gone() || self.epoch.load(Ordering::SeqCst) != epoch {
            gone_err()
        } else {
            closed_err()
        }
    }

    /// Waits for the agent's `Ready` message; fails at once when the agent
    /// is gone (it closed its port after having opened it).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError> {
        let mut rx = self.ready.clone();
        let mut closed = self.closed.clone();
        let mut port = self.port.subscribe();
        let wait = async {
            loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return Ok(r);
                }
                if *closed.borrow_and_update() {
                    return Err(EngineError::AgentChannel(
                        "closed before the agent was ready".into(),
                    ));
                }
                if *port.borrow_and_update() == PortState::Closed {
                    return Err(gone_err());
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(closed_err()) },
                    r = closed.changed() => if r.is_err() { return Err(closed_err()) },
                    r = port.changed() => if r.is_err() { return Err(closed_err()) },
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| EngineError::Timeout {
                op: "waiting for the guest agent",
                after: timeout,
            })?
    }
    /// Marks the agent ready without its `Ready` message, after checking it
    /// answers: a VM restored from saved state has an agent that announced
    /// itself long ago, to another QEMU.
    pub async fn assume_ready(&self) -> Result<Ready, EngineError> {
        let info = self.info().await?;
        let r = Ready {
            proto_version: info.proto_version,
            agent_version: info.agent_version,
            uptime_ms: info.uptime_ms,
        };
        self.ready_tx.send_replace(Some(r.clone()));
        Ok(r)
    }

    /// Waits for the next point a guest process announces.
    pub async fn next_point(&self, timeout: Duration) -> Result<Point, EngineError> {
        let mut rx = self.points.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(closed_err()),
            Err(_) => Err(EngineError::Timeout {
                op: "waiting for an announced point",
                after: timeout,
            }),
        }
    }

    /// Sends a request and returns the queue its replies arrive on.
    async fn send(
        &self,
        msg: &HostMsg,
    ) -> Result<(u32, u64, mpsc::Receiver<GuestMsg>), EngineError> {
        if self.is_gone() {
            return Err(gone_err());
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let id = self.fresh_id();
        let frame = encode_frame(id, msg).map_err(|e| EngineError::AgentChannel(e.to_string()))?;
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        lock(&self.pending).insert(id, tx);
        if self.is_closed() || self.out.send(frame).await.is_err() {
            lock(&self.pending).remove(&id);
            return Err(closed_err());
        }
        Ok((id, epoch, rx))
    }

    fn fresh_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Asks the agent to kill the command of exec request `exec_id`,
    /// without waiting for the answer (nobody waits for that command).
    fn cancel_exec(&self, exec_id: u32) {
        if self.is_gone() || self.is_closed() {
            return;
        }
        let Ok(frame) = encode_frame(self.fresh_id(), &HostMsg::CancelExec { exec_id }) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.out.try_send(frame) {
            let out = self.out.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { out.send(frame).await });
            }
        }
    }

    /// Sends a request and waits for its single final reply.
    async fn call(&self, msg: &HostMsg, timeout: Duration) -> Result<GuestMsg, EngineError> {
        let (id, epoch, mut rx) = self.send(msg).await?;
        let reply = tokio::time::timeout(timeout, rx.recv()).await;
        lock(&self.pending).remove(&id);
        match reply {
            Ok(Some(GuestMsg::Error(e))) => Err(EngineError::Agent(e)),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.lost_err(epoch)),
            Err(_) => Err(EngineError::Timeout {
                op: "guest agent request (the agent did not answer)",
                after: timeout,
            }),
        }
    }

    /// Reads a whole file of at most `max_len` bytes.
    pub async fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>, EngineError> {
        let mut data = Vec::new();
        loop {
            let want = max_len
                .saturating_sub(data.len() as u64)
                .min(MAX_DATA_CHUNK as u64);
            let req = ReadFileRequest {
                path: path.into(),
                offset: data.len() as u64,
                max_len: u32::try_from(want).unwrap_or(u32::MAX),
            };
            let GuestMsg::FileData(fd) =
                self.call(&HostMsg::ReadFile(req), REQUEST_TIMEOUT).await?
            else {
                return Err(EngineError::AgentChannel(
                    "unexpected reply to read-file".into(),
                ));
            };
            let chunk = fd.data.into_vec();
            let got = chunk.len() as u64;
            data.extend(
                chunk
                    .into_iter()
                    .take(usize::try_from(want).unwrap_or(usize::MAX)),
            );
            if fd.eof || got == 0 {
                return Ok(data);
            }
            if data.len() as u64 >= max_len {
                return Err(EngineError::Agent(AgentError::new(
                    ErrorKind::TooLarge,
                    format!("{path} is larger than {max_len} bytes"),
                )));
            }
        }
    }

    /// Writes `data` to `path`, replacing its contents.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), EngineError> {
        let mut offset = 0usize;
        loop {
            let chunk = data.get(offset..).unwrap_or_default();
            let chunk = chunk
                .get(..chunk.len().min(MAX_DATA_CHUNK))
                .unwrap_or_default();
            let req = WriteFileRequest {
                path: path.into(),
                offset: offset as u64,
                truncate: offset == 0,
                mode,
                data: chunk.to_vec(),
            };
            self.call(&HostMsg::WriteFile(req), REQUEST_TIMEOUT).await?;
            offset += chunk.len();
            if offset >= data.len() {
                return Ok(());
            }
        }
    }

    /// Sets the guest's hostname.
    pub async fn set_hostname(&self, hostname: &str) -> Result<(), EngineError> {
        self.call(
            &HostMsg::SetHostname {
                hostname: hostname.into(),
            },
            REQUEST_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Gives NIC `nic` (`eth<nic>` in the guest) an IPv4 address.
    pub async fn set_ipv4(
        &self,
        nic: u32,
        config: brood_proto::Ipv4Config,
    ) -> Result<(), EngineError> {
        self.call(&HostMsg::SetIpv4 { nic, config }, REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Describes the guest.
    pub async fn info(&self) -> Result<AgentInfo, EngineError> {
        match self.call(&HostMsg::Info, REQUEST_TIMEOUT).await? {
            GuestMsg::Info(i) => Ok(i),
            _ => Err(EngineError::AgentChannel("unexpected reply to info".into())),
        }
    }

    /// Asks the guest to power off; returns once the agent acknowledged.
    pub async fn power_off(&self) -> Result<(), EngineError> {
        self.call(&HostMsg::PowerOff, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// Asks the agent to run the identity-independent services, sync, and
    /// wait at a fork point; returns the point's seq and the services' results.
    pub async fn prepare_fork(
        &self,
        timeout: Duration,
    ) -> Result<(u32, Vec<ServiceResult>), EngineError> {
        match self.call(&HostMsg::PrepareFork, timeout).await? {
            GuestMsg::AtForkPoint { seq, services } => Ok((seq, services)),
            _ => Err(EngineError::AgentChannel(
                "unexpected reply to prepare-fork".into(),
            )),
        }
    }

    /// Gives a forked child its identity at fork point `seq`; the agent
    /// applies it, runs the identity-dependent services and reports. A child
    /// whose report has no failure is marked ready.
    pub async fn complete_fork(
        &self,
        seq: u32,
        config: ChildConfig,
        timeout: Duration,
    ) -> Result<ForkReport, EngineError> {
        let reply = self
            .call(&HostMsg::CompleteFork { seq, config }, timeout)
            .await?;
        let GuestMsg::ForkDone(report) = reply else {
            return Err(EngineError::AgentChannel(
                "unexpected reply to complete-fork".into(),
            ));
        };
        if report.failed.is_none() {
            self.ready_tx.send_replace(Some(Ready {
                proto_version: brood_proto::PROTOCOL_VERSION,
                agent_version: String::new(),
                uptime_ms: report.uptime_ms,
            }));
        }
        Ok(report)
    }

    /// Has a forked child rehearse its identity step at fork point `seq`
    /// without consuming it, so that the real one runs warm under TCG.
    pub async fn warm_fork(&self, seq: u32, timeout: Duration) -> Result<(), EngineError> {
        self.call(&HostMsg::WarmFork { seq }, timeout).await?;
        Ok(())
    }

    /// Releases the process waiting at point `seq` with `message`.
    pub async fn answer_point(&self, seq: u32, message: &[u8]) -> Result<(), EngineError> {
        let msg = HostMsg::AnswerPoint {
            seq,
            message: message.to_vec(),
        };
        self.call(&msg, REQUEST_TIMEOUT).await?;
        Ok(())
    }
}

/// The agent we talked to is gone: every request in flight sees its queue
/// end (and reports the agent gone), and its successor has to say `Ready`.
fn forget_agent(pending: &Pending, ready: &watch::Sender<Option<Ready>>, epoch: &AtomicU64) {
    epoch.fetch_add(1, Ordering::SeqCst);
    ready.send_replace(None);
    lock(pending).clear();
}

fn closed_err() -> EngineError {
    EngineError::AgentChannel("connection to the guest agent closed".into())
}

fn gone_err() -> EngineError {
    EngineError::AgentChannel(
        "the guest agent is gone: the guest closed its port (the agent exited or was \
         killed); the guest's init restarts it, so retry in a few seconds"
            .into(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map is still consistent: every operation on it is a single call.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cut(s: &str) -> String {
    s.chars().take(LOG_CUT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_proto::ByteBuf;
    use brood_proto::Stream;
    use brood_proto::{Decoded, ExecRequest, ExecStatus, FrameDecoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A scripted agent on the other end of a socket pair.
    async fn fake_agent(mut s: UnixStream, script: impl Fn(u32, HostMsg) -> Vec<(u32, GuestMsg)>) {
        let ready = GuestMsg::Ready(Ready {
            proto_version: 1,
            agent_version: "t".into(),
            uptime_ms: 5,
        });
        s.write_all(&encode_frame(0, &ready).unwrap())
            .await
            .unwrap();
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            dec.push(&buf[..n]);
            while let Some(Decoded::Frame(frame)) = dec.next_frame() {
                let id = frame.id;
                let msg: HostMsg = frame.decode().unwrap();
                for (rid, reply) in script(id, msg) {
                    s.write_all(&encode_frame(rid, &reply).unwrap())
                        .await
                        .unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn exec_collects_and_caps_output() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(fake_agent(b, |id, msg| match msg {
            HostMsg::Exec(_) => vec![
                (
                    id,
                    GuestMsg::Output {
                        stream: Stream::Stdout,
                        data: ByteBuf::from(b"hello ".to_vec()),
                    },
                ),
                // A hostile agent ignoring the limit: the host still cuts at 8 bytes.
                (
                    id,
                    GuestMsg::Output {
                        stream: Stream::Stdout,
                        data: ByteBuf::from(b"world!!!".to_vec()),
                    },
                ),
                (
                    id,
                    GuestMsg::Output {
                        stream: Stream::Stderr,
                        data: ByteBuf::from(b"e".to_vec()),
                    },
                ),
                (999, GuestMsg::Ok),
                (
                    id,
                    GuestMsg::Exited(ExecStatus {
                        code: Some(7),
                        signal: None,
                        timed_out: false,
                        stdout_len: 14,
                        stderr_len: 1,
                        stdout_truncated: true,
                        stderr_truncated: false,
                    }),
                ),
            ],
            _ => vec![(
                id,
                GuestMsg::Error(AgentError::new(ErrorKind::Unsupported, "no")),
            )],
        }));
        let c = AgentClient::new(a);
        let r = c.wait_ready(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.uptime_ms, 5);
        let mut req = ExecRequest::shell("x");
        req.output_limit = 8;
        let out = c.exec(&req).await.unwrap();
        assert_eq!(out.stdout, b"hello wo");
        assert_eq!(out.stderr, b"e");
        assert_eq!(out.status.code, Some(7));
        let err = c.info().await.unwrap_err();
        assert!(matches!(
            err,
            EngineError::Agent(AgentError {
                kind: ErrorKind::Unsupported,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn garbage_and_points_and_close() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let c = AgentClient::new(a);
        b.write_all(b"\x00\x01garbage").await.unwrap();
        b.write_all(
            &encode_frame(
                0,
                &GuestMsg::Point(Point {
                    seq: 3,
                    name: "fork".into(),
                }),
            )
            .unwrap(),
        )
        .await
        .unwrap();
        // Undecodable body with id 0: logged and dropped.
        let mut bad = encode_frame(0, &GuestMsg::Ok).unwrap();
        bad.push(0xff);
        let n = u32::try_from(bad.len() - brood_proto::HEADER_LEN).unwrap();
        bad[8..12].copy_from_slice(&n.to_le_bytes());
        bad[12] = 200;
        b.write_all(&bad).await.unwrap();
        let p = c.next_point(Duration::from_secs(5)).await.unwrap();
        assert_eq!((p.seq, p.name.as_str()), (3, "fork"));
        drop(b);
        let err = c.wait_ready(Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        assert!(c.info().await.is_err());
    }

    #[tokio::test]
    async fn a_garbage_flood_logs_one_warning() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let c = AgentClient::new(a);
        // 6.5 MB without a frame magic: the decoder reports it in pieces.
        let junk = vec![b'x'; 6_500_000];
        b.write_all(&junk).await.unwrap();
        b.write_all(
            &encode_frame(
                0,
                &GuestMsg::Point(Point {
                    seq: 1,
                    name: "p".into(),
                }),
            )
            .unwrap(),
        )
        .await
        .unwrap();
        c.next_point(Duration::from_secs(10)).await.unwrap();
        let n = c.noise();
        assert!(n.garbage_bytes >= 6_400_000, "{n:?}");
        assert_eq!(n.warnings, 1, "{n:?}");
    }

    #[test]
    fn log_limit_counts_what_it_held_back() {
        let mut l = LogLimit::new(Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..1587 {
            assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(1587));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), None);
    }

    fn port_event(open: bool) -> QmpEvent {
        QmpEvent {
            event: "VSERPORT_CHANGE".into(),
            data: serde_json::json!({"id": AGENT_PORT_ID, "open": open}),
            timestamp: None,
        }
    }

    #[tokio::test]
    async fn a_closed_port_fails_requests_at_once_until_the_agent_is_back() {
        let (a, b) = UnixStream::pair().unwrap();
        let (events, rx) = broadcast::channel(16);
        let seen = Arc::new(Mutex::new(Vec::<HostMsg>::new()));
        let s2 = seen.clone();
        // An agent that never answers exec (it died mid-request) but answers info.
        tokio::spawn(fake_agent(b, move |id, msg| {
            s2.lock().unwrap().push(msg.clone());
            match msg {
                HostMsg::Info => vec![(
                    id,
                    GuestMsg::Info(AgentInfo {
                        agent_version: "t".into(),
                        proto_version: 1,
                        hostname: "h".into(),
                        kernel_release: "k".into(),
                        uptime_ms: 1,
                        cpus: 1,
                        mem_total_kib: 1,
                        mem_available_kib: 1,
                    }),
                )],
                _ => vec![],
            }
        }));
        let c = AgentClient::new(a);
        c.follow_port(rx);
        events.send(port_event(true)).unwrap();
        c.wait_ready(Duration::from_secs(5)).await.unwrap();
        let c2 = c.clone();
        let exec = tokio::spawn(async move { c2.exec(&ExecRequest::shell("kill -9 $PPID")).await });
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        events.send(port_event(false)).unwrap();
        let err = exec.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("agent is gone"), "{err}");
        let err = c.info().await.unwrap_err();
        assert!(err.to_string().contains("agent is gone"), "{err}");
        let err = c.wait_ready(Duration::from_secs(60)).await.unwrap_err();
        assert!(err.to_string().contains("agent is gone"), "{err}");
        assert!(c.ready_info().is_none());
        // The agent is restarted: it opens the port and answers again.
        events.send(port_event(true)).unwrap();
        while c.port_state() != PortState::Open {
            tokio::task::yield_now().await;
        }
        assert_eq!(c.info().await.unwrap().hostname, "h");
    }

    #[tokio::test]
    async fn a_close_hidden_by_qmp_throttling_or_a_second_ready_still_fails_requests() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (events, rx) = broadcast::channel(16);
        let c = AgentClient::new(a);
        c.follow_port(rx);
        let ready = |up| {
            GuestMsg::Ready(Ready {
                proto_version: 1,
                agent_version: "t".into(),
                uptime_ms: up,
            })
        };
        events.send(port_event(true)).unwrap();
        b.write_all(&encode_frame(0, &ready(1)).unwrap())
            .await
            .unwrap();
        c.wait_ready(Duration::from_secs(5)).await.unwrap();
        // QEMU sends one VSERPORT_CHANGE a second, the latest: close and
        // reopen within a second arrive as a second `open`.
        let c2 = c.clone();
        let info = tokio::spawn(async move { c2.info().await });
        while lock(&c.pending).is_empty() {
            tokio::task::yield_now().await;
        }
        events.send(port_event(true)).unwrap();
        let err = info.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("agent is gone"), "{err}");
        // Without any event, a second Ready means a new agent.
        b.write_all(&encode_frame(0, &ready(2)).unwrap())
            .await
            .unwrap();
        c.wait_ready(Duration::from_secs(5)).await.unwrap();
        let c2 = c.clone();
        let info = tokio::spawn(async move { c2.info().await });
        while lock(&c.pending).is_empty() {
            tokio::task::yield_now().await;
        }
        b.write_all(&encode_frame(0, &ready(3)).unwrap())
            .await
            .unwrap();
        let err = info.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("agent is gone"), "{err}");
        assert_eq!(c.ready_info().map(|r| r.uptime_ms), Some(3));
    }

    #[tokio::test]
    async fn an_exec_whose_end_never_comes_fails_after_its_timeout_and_grace() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(fake_agent(b, |_, _| vec![]));
        let c = AgentClient::new(a);
        let mut req = ExecRequest::shell("sleep 100");
        req.timeout_ms = Some(100);
        let err = c.exec(&req).await.unwrap_err();
        match err {
            EngineError::Timeout { after, op } => {
                assert_eq!(after, Duration::from_millis(100) + EXEC_REPORT_GRACE);
                assert!(op.contains("hung or stopped"), "{op}");
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn dropping_an_unfinished_exec_stream_cancels_the_command() {
        let (a, b) = UnixStream::pair().unwrap();
        let (tx, mut cancelled) = mpsc::unbounded_channel();
        tokio::spawn(fake_agent(b, move |id, msg| match msg {
            HostMsg::Exec(_) => vec![(
                id,
                GuestMsg::Output {
                    stream: Stream::Stdout,
                    data: ByteBuf::from(b"tick".to_vec()),
                },
            )],
            HostMsg::CancelExec { exec_id } => {
                tx.send(exec_id).unwrap();
                vec![(id, GuestMsg::Ok)]
            }
            _ => vec![],
        }));
        let c = AgentClient::new(a);
        let mut run = c.exec_stream(&ExecRequest::shell("yes")).await.unwrap();
        let first = run.next().await.unwrap().unwrap();
        assert_eq!(
            first,
            ExecEvent::Output {
                stream: Stream::Stdout,
                data: b"tick".to_vec()
            }
        );
        let id = run.id;
        drop(run);
        assert_eq!(cancelled.recv().await, Some(id));
        assert!(lock(&c.pending).is_empty());
    }

    #[tokio::test]
    async fn file_round_trip_in_chunks() {
        let (a, b) = UnixStream::pair().unwrap();
        let store = Arc::new(Mutex::new(Vec::<u8>::new()));
        let s2 = store.clone();
        tokio::spawn(fake_agent(b, move |id, msg| match msg {
            HostMsg::WriteFile(w) => {
                let mut st = s2.lock().unwrap();
                if w.truncate {
                    st.truncate(usize::try_from(w.offset).unwrap());
                }
                st.extend_from_slice(&w.data);
                vec![(
                    id,
                    GuestMsg::Written {
                        len: w.data.len() as u64,
                    },
                )]
            }
            HostMsg::ReadFile(r) => {
                let st = s2.lock().unwrap();
                let off = usize::try_from(r.offset).unwrap();
                let end = (off + r.max_len as usize).min(st.len());
                vec![(
                    id,
                    GuestMsg::FileData(brood_proto::FileData {
                        data: ByteBuf::from(st[off..end].to_vec()),
                        size: st.len() as u64,
                        eof: end == st.len(),
                    }),
                )]
            }
            _ => vec![],
        }));
        let c = AgentClient::new(a);
        let data: Vec<u8> = (0..(MAX_DATA_CHUNK * 2 + 10))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        c.write_file("/tmp/x", &data, 0o644).await.unwrap();
        assert_eq!(store.lock().unwrap().len(), data.len());
        assert_eq!(c.read_file("/tmp/x", 1 << 30).await.unwrap(), data);
        let err = c.read_file("/tmp/x", 100).await.unwrap_err();
        assert!(err.to_string().contains("larger than 100 bytes"), "{err}");
    }
}
