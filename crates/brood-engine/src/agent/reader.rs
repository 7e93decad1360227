//! The two tasks of an agent connection: the writer owns the write half,
//! the reader decodes what the guest sends, routes replies to the requests
//! waiting for them, and counts and reports (rate-limited) whatever is not
//! a valid frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brood_proto::{
    AgentError, Decoded, ErrorKind, FrameDecoder, FrameFault, GuestMsg, Point, Ready,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, trace, warn};

use super::{NoiseCounters, Pending, PortState, cut, forget_agent, lock};

/// Allows one log line per interval and counts the ones it held back.
#[derive(Debug)]
pub(super) struct LogLimit {
    interval: Duration,
    next: Option<std::time::Instant>,
    held: u64,
}

impl LogLimit {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: None,
            held: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back since the last one; `None` (and one more held) otherwise.
    pub(super) fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.next.is_some_and(|n| now < n) {
            self.held = self.held.saturating_add(1);
            return None;
        }
        self.next = now.checked_add(self.interval);
        Some(std::mem::take(&mut self.held))
    }
}

pub(super) async fn write_loop(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(frame) = rx.recv().await {
        trace!(len = frame.len(), "agent <- host");
        if let Err(e) = wr.write_all(&frame).await {
            debug!("agent channel write failed: {e}");
            return;
        }
    }
}

/// What the reader task shares with the client.
pub(super) struct Reader {
    pub(super) pending: Pending,
    pub(super) ready: Arc<watch::Sender<Option<Ready>>>,
    pub(super) points: mpsc::Sender<Point>,
    pub(super) closed: watch::Sender<bool>,
    pub(super) port: watch::Receiver<PortState>,
    pub(super) noise: Arc<NoiseCounters>,
    pub(super) epoch: Arc<AtomicU64>,
    pub(super) log: LogLimit,
}

impl Reader {
    /// Counts something bad the guest sent and logs it, rate-limited.
    fn noise(&mut self, garbage_bytes: usize, what: impl FnOnce() -> String) {
        if garbage_bytes > 0 {
            self.noise
                .garbage_bytes
                .fetch_add(garbage_bytes as u64, Ordering::Relaxed);
        } else {
            self.noise.bad_frames.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(held) = self.log.allow(std::time::Instant::now()) {
            self.noise.warnings.fetch_add(1, Ordering::Relaxed);
            let n = self.noise.garbage_bytes.load(Ordering::Relaxed);
            let f = self.noise.bad_frames.load(Ordering::Relaxed);
            warn!(
                "guest agent channel: {} ({held} similar reports held back; {n} bad bytes \
                 and {f} bad frames from this guest so far)",
                what()
            );
        }
    }

    /// Routes one decoded frame.
    async fn route(&mut self, frame: brood_proto::RawFrame) {
        let msg = match frame.decode::<GuestMsg>() {
            Ok(m) => m,
            Err(e) => {
                self.noise(0, || format!("an undecodable frame: {e}"));
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
                    // A second Ready is a new agent: nothing asked of the
                    // old one will be answered.
                    if self.ready.borrow().is_some() {
                        debug!("the guest agent started again");
                        forget_agent(&self.pending, &self.ready, &self.epoch);
                    }
                    self.ready.send_replace(Some(r));
                }
                GuestMsg::Point(p) => {
                    if self.points.try_send(p).is_err() {
                        self.noise(0, || "more announced points than the host queues".into());
                    }
                }
                other => {
                    self.noise(0, || {
                        format!("an unsolicited message: {}", cut(&format!("{other:?}")))
                    });
                }
            }
            return;
        }
        let is_final = msg.is_final();
        let tx = lock(&self.pending).get(&frame.id).cloned();
        let Some(tx) = tx else {
            trace!(id = frame.id, "agent reply for no pending request");
            return;
        };
        if is_final {
            lock(&self.pending).remove(&frame.id);
        }
        // Waits while the request's queue is full: the guest waits with it.
        if tx.send(msg).await.is_err() {
            lock(&self.pending).remove(&frame.id);
        }
    }
}

pub(super) async fn read_loop(mut rd: tokio::net::unix::OwnedReadHalf, mut r: Reader) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            c = r.port.changed() => {
                if c.is_err() {
                    // Every client is gone: nobody reads the replies.
                    break;
                }
                if *r.port.borrow_and_update() == PortState::Closed {
                    // A frame the old agent left half-sent must not swallow
                    // the start of its successor's first one.
                    dec = FrameDecoder::new();
                }
                continue;
            }
        };
        dec.push(buf.get(..n).unwrap_or_default());
        while let Some(item) = dec.next_frame() {
            match item {
                Decoded::Frame(f) => r.route(f).await,
                Decoded::Fault(fault) => {
                    let skipped = match fault {
                        FrameFault::Garbage { skipped } => skipped.max(1),
                        _ => 0,
                    };
                    r.noise(skipped, || format!("a bad frame: {fault}"));
                }
            }
            if r.closed.is_closed() {
                break;
            }
        }
        if r.closed.is_closed() {
            break;
        }
    }
    r.closed.send_replace(true);
    lock(&r.pending).clear();
}
