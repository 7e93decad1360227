//! `AgentClient`: the host end of the brood-agent control channel.
//!
//! One reader task decodes frames from the guest and routes each reply to
//! the request that carries its id; one writer task owns the write half.
//! Everything the guest sends is hostile: frames are bounded by
//! brood-proto's decoder, replies to unknown ids are dropped, unsolicited
//! points are queued in a bounded channel, and collected command output is
//! capped on the host side too, whatever the agent claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brood_proto::{
    AgentError, AgentInfo, ChildConfig, Decoded, ErrorKind, ExecRequest, ExecStatus, ForkReport,
    FrameDecoder, GuestMsg, HostMsg, MAX_DATA_CHUNK, Point, ReadFileRequest, Ready, ServiceResult,
    Stream, WriteFileRequest, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, trace, warn};

use crate::EngineError;

/// Deadline for requests that do not carry their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply frames buffered per request before the reader waits for the caller.
const REPLY_QUEUE: usize = 16;
/// Announced points buffered before further ones are dropped.
const POINT_QUEUE: usize = 64;
/// Longest guest string put in a log line.
const LOG_CUT: usize = 200;

type Pending = Arc<Mutex<HashMap<u32, mpsc::Sender<GuestMsg>>>>;

/// Output of a command collected in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExecStatus,
    /// Its stdout, at most the request's output limit.
    pub stdout: Vec<u8>,
    /// Its stderr, at most the request's output limit.
    pub stderr: Vec<u8>,
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
}

impl AgentClient {
    /// Starts serving a connected agent socket.
    pub fn new(stream: UnixStream) -> Self {
        let (rd, wr) = stream.into_split();
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(64);
        let (ready_tx, ready_rx) = watch::channel(None);
        let (point_tx, point_rx) = mpsc::channel(POINT_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let pending: Pending = Arc::default();
        let ready_tx = Arc::new(ready_tx);
        tokio::spawn(write_loop(wr, out_rx));
        tokio::spawn(read_loop(
            rd,
            pending.clone(),
            ready_tx.clone(),
            point_tx,
            closed_tx,
        ));
        Self {
            out: out_tx,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            ready: ready_rx,
            ready_tx,
            points: Arc::new(tokio::sync::Mutex::new(point_rx)),
            closed: closed_rx,
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

    /// Waits for the agent's `Ready` message.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError> {
        let mut rx = self.ready.clone();
        let mut closed = self.closed.clone();
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
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(closed_err()) },
                    r = closed.changed() => if r.is_err() { return Err(closed_err()) },
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
    async fn send(&self, msg: &HostMsg) -> Result<(u32, mpsc::Receiver<GuestMsg>), EngineError> {
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        let frame = encode_frame(id, msg).map_err(|e| EngineError::AgentChannel(e.to_string()))?;
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        lock(&self.pending).insert(id, tx);
        if self.is_closed() || self.out.send(frame).await.is_err() {
            lock(&self.pending).remove(&id);
            return Err(closed_err());
        }
        Ok((id, rx))
    }

    /// Sends a request and waits for its single final reply.
    async fn call(&self, msg: &HostMsg, timeout: Duration) -> Result<GuestMsg, EngineError> {
        let (id, mut rx) = self.send(msg).await?;
        let reply = tokio::time::timeout(timeout, rx.recv()).await;
        lock(&self.pending).remove(&id);
        match reply {
            Ok(Some(GuestMsg::Error(e))) => Err(EngineError::Agent(e)),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(closed_err()),
            Err(_) => Err(EngineError::Timeout {
                op: "guest agent request",
                after: timeout,
            }),
        }
    }

    /// Runs a command, handing each output chunk to `sink` as it arrives.
    pub async fn exec_with(
        &self,
        req: &ExecRequest,
        mut sink: impl FnMut(Stream, &[u8]),
    ) -> Result<ExecStatus, EngineError> {
        let (id, mut rx) = self.send(&HostMsg::Exec(req.clone())).await?;
        let limit = req.output_limit;
        let (mut out_n, mut err_n) = (0u64, 0u64);
        // The agent kills the command at its timeout; allow it time to report.
        let deadline = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + REQUEST_TIMEOUT);
        let result = async {
            loop {
                match rx.recv().await {
                    Some(GuestMsg::Output { stream, data }) => {
                        let seen = match stream {
                            Stream::Stdout => &mut out_n,
                            Stream::Stderr => &mut err_n,
                        };
                        let room =
                            usize::try_from(limit.saturating_sub(*seen)).unwrap_or(usize::MAX);
                        let take = data.get(..room.min(data.len())).unwrap_or_default();
                        *seen += take.len() as u64;
                        if !take.is_empty() {
                            sink(stream, take);
                        }
                    }
                    Some(GuestMsg::Exited(status)) => return Ok(status),
                    Some(GuestMsg::Error(e)) => return Err(EngineError::Agent(e)),
                    Some(other) => {
                        return Err(EngineError::AgentChannel(format!(
                            "unexpected reply to exec: {}",
                            cut(&format!("{other:?}"))
                        )));
                    }
                    None => return Err(closed_err()),
                }
            }
        };
        let r = match deadline {
            Some(d) => tokio::time::timeout(d, result)
                .await
                .unwrap_or(Err(EngineError::Timeout {
                    op: "exec in the guest",
                    after: d,
                })),
            None => result.await,
        };
        lock(&self.pending).remove(&id);
        r
    }

    /// Runs a command and collects its output.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, EngineError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self
            .exec_with(req, |s, d| match s {
                Stream::Stdout => stdout.extend_from_slice(d),
                Stream::Stderr => stderr.extend_from_slice(d),
            })
            .await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
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

fn closed_err() -> EngineError {
    EngineError::AgentChannel("connection to the guest agent closed".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map is still consistent: every operation on it is a single call.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cut(s: &str) -> String {
    s.chars().take(LOG_CUT).collect()
}

async fn write_loop(mut wr: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        trace!(len = frame.len(), "agent <- host");
        if let Err(e) = wr.write_all(&frame).await {
            debug!("agent channel write failed: {e}");
            return;
        }
    }
}

async fn read_loop(
    mut rd: tokio::net::unix::OwnedReadHalf,
    pending: Pending,
    ready: Arc<watch::Sender<Option<Ready>>>,
    points: mpsc::Sender<Point>,
    closed: watch::Sender<bool>,
) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    'outer: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.push(buf.get(..n).unwrap_or_default());
        while let Some(item) = dec.next_frame() {
            let frame = match item {
                Decoded::Frame(f) => f,
                Decoded::Fault(fault) => {
                    warn!("guest agent sent a bad frame: {fault}");
                    continue;
                }
            };
            let msg = match frame.decode::<GuestMsg>() {
                Ok(m) => m,
                Err(e) => {
                    warn!("guest agent sent an undecodable frame: {e}");
                    GuestMsg::Error(AgentError::new(
                        ErrorKind::BadRequest,
                        "undecodable reply from the agent",
                    ))
                }
            };
            trace!(id = frame.id, "agent -> host: {}", cut(&format!("{msg:?}")));
            if frame.id == 0 {
                match msg {
                    GuestMsg::Ready(r) => {
                        ready.send_replace(Some(r));
                    }
                    GuestMsg::Point(p) => {
                        if points.try_send(p).is_err() {
                            warn!(
                                "guest announced more points than the host can queue; dropped one"
                            );
                        }
                    }
                    other => warn!("unsolicited agent message: {}", cut(&format!("{other:?}"))),
                }
                continue;
            }
            let is_final = msg.is_final();
            let tx = lock(&pending).get(&frame.id).cloned();
            let Some(tx) = tx else {
                debug!(id = frame.id, "agent reply for no pending request");
                continue;
            };
            if is_final {
                lock(&pending).remove(&frame.id);
            }
            if tx.send(msg).await.is_err() {
                lock(&pending).remove(&frame.id);
            }
            if closed.is_closed() {
                break 'outer;
            }
        }
    }
    closed.send_replace(true);
    lock(&pending).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_proto::ByteBuf;
    use brood_proto::Stream;

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
