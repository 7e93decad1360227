//! The serial console: a task reads QEMU's console socket, appends to a
//! size-capped log file, keeps the last few KiB in memory for error
//! messages, and forwards chunks to whoever subscribed (`brood run
//! --console`, `brood vm console --follow`). The log is capped by rotation:
//! when `console.log` would pass half the limit it becomes `console.log.1`,
//! so the two never hold more than the limit together.
//!
//! The reader has a budget ([`CONSOLE_RATE`] bytes a second after a burst of
//! [`CONSOLE_BURST`], each read costing at least 8 KiB of it): a guest that floods its console finds the reader
//! pausing, so QEMU's serial device stops draining the guest's UART and the
//! guest's own vCPU waits, instead of the host spending a core on the copy.
//! Time spent paused is counted ([`Console::throttled`]) and reported in one
//! rate-limited log line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::info;

/// Bytes of recent console output kept in memory.
const TAIL_LEN: usize = 8 * 1024;
/// Sustained console bytes read per second (a 115200-baud UART moves 11.5 KB/s).
pub const CONSOLE_RATE: u64 = 512 * 1024;
/// Bytes a guest may write at once before the rate applies (a verbose boot fits).
pub const CONSOLE_BURST: u64 = 2 << 20;
/// Size of one read from the console socket.
const READ_LEN: usize = 16 * 1024;
/// What one read costs from the budget at least. QEMU's serial device
/// writes a few bytes at a time, so under a flood the cost is per read
/// (wake-up, log write) more than per byte; charging a floor caps reads at
/// `CONSOLE_RATE / READ_COST_MIN` a second once the burst is spent, and each
/// read after a pause takes what piled up meanwhile.
const READ_COST_MIN: u64 = 8 * 1024;
/// At most one throttling report per this interval.
const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// A chunk of console output and the offset of its end in the VM's output.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Bytes the console produced before and including this chunk.
    pub end: u64,
    /// The bytes.
    pub data: Arc<[u8]>,
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

/// Handle on a VM's console. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Console {
    log_path: PathBuf,
    tail: Arc<Mutex<Vec<u8>>>,
    chunks: broadcast::Sender<Chunk>,
    done: watch::Receiver<bool>,
    counters: Arc<Counters>,
    /// The socket's write half: what is written reaches the guest's serial port.
    input: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Bytes read and written to the log (or dropped by its cap).
    total: AtomicU64,
    /// Milliseconds the reader paused for the budget.
    throttled_ms: AtomicU64,
}

impl Console {
    /// Starts copying `stream` to `log_path`, keeping at most `limit` bytes on disk.
    pub fn start(stream: UnixStream, log_path: PathBuf, limit: u64) -> Self {
        Self::start_with_rate(stream, log_path, limit, CONSOLE_RATE, CONSOLE_BURST)
    }

    /// As [`Console::start`] with another budget: `rate` bytes a second after `burst`.
    pub fn start_with_rate(
        stream: UnixStream,
        log_path: PathBuf,
        limit: u64,
        rate: u64,
        burst: u64,
    ) -> Self {
        let tail = Arc::new(Mutex::new(Vec::with_capacity(TAIL_LEN)));
        let (chunks, _) = broadcast::channel(256);
        let (done_tx, done) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let (stream, input) = stream.into_split();
        tokio::spawn(copy_loop(
            stream,
            Copy {
                path: log_path.clone(),
                limit,
                tail: tail.clone(),
                chunks: chunks.clone(),
                counters: counters.clone(),
                budget: Budget::new(rate, burst, Instant::now()),
            },
            done_tx,
        ));
        Self {
            log_path,
            tail,
            chunks,
            done,
            counters,
            input: Arc::new(tokio::sync::Mutex::new(input)),
        }
    }

    /// Types `data` into the guest's serial port (`brood vm console`
    /// attached); writers take turns, each write whole.
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        let mut input = self.input.lock().await;
        input.write_all(data).await?;
        input.flush().await
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Receives console output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Chunk> {
        self.chunks.subscribe()
    }

    /// Bytes of console output so far; every byte up to here is in the log
    /// files (unless their cap dropped it) before any chunk ending later is sent.
    pub fn total(&self) -> u64 {
        self.counters.total.load(Ordering::SeqCst)
    }

    /// How long the reader has paused because the guest wrote faster than
    /// its budget.
    pub fn throttled(&self) -> Duration {
        Duration::from_millis(self.counters.throttled_ms.load(Ordering::Relaxed))
    }

    /// Whether the console stream ended (QEMU exited).
    pub fn is_finished(&self) -> bool {
        *self.done.borrow()
    }
    /// The last few KiB of output, as text.
    pub fn tail(&self) -> String {
        let t = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&t).into_owned()
    }

    /// The last `n` non-empty lines of output, without terminal escapes.
    pub fn tail_lines(&self, n: usize) -> Vec<String> {
        let text = strip_escapes(&self.tail());
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Waits until the console stream ended (QEMU exited) and the log is flushed.
    pub async fn finished(&self) {
        let mut d = self.done.clone();
        let _ = d.wait_for(|v| *v).await;
    }
}

/// Removes ANSI escape sequences (firmware clears the screen with them).
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\n' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// A token bucket: `rate` bytes a second, at most `burst` saved up.
#[derive(Debug)]
struct Budget {
    rate: u64,
    burst: u64,
    tokens: u64,
    at: Instant,
}

impl Budget {
    fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.max(1),
            burst: burst.max(1),
            tokens: burst.max(1),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ms =
            u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        let add = ms.saturating_mul(self.rate) / 1000;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.burst);
            self.at = now;
        }
    }

    /// How long to wait before `want` bytes may be read (zero: now).
    fn wait_for(&mut self, want: u64, now: Instant) -> Duration {
        self.refill(now);
        let want = want.min(self.burst);
        if self.tokens >= want {
            return Duration::ZERO;
        }
        let missing = want - self.tokens;
        Duration::from_millis(missing.saturating_mul(1000).div_ceil(self.rate))
    }

    fn spend(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }
}

/// What the copy task owns.
struct Copy {
    path: PathBuf,
    limit: u64,
    tail: Arc<Mutex<Vec<u8>>>,
    chunks: broadcast::Sender<Chunk>,
    counters: Arc<Counters>,
    budget: Budget,
}

async fn copy_loop(
    mut stream: tokio::net::unix::OwnedReadHalf,
    mut c: Copy,
    done: watch::Sender<bool>,
) {
    let half = (c.limit / 2).max(1);
    let mut file = open_log(&c.path).await;
    let mut written = 0u64;
    let mut buf = vec![0u8; READ_LEN];
    let mut reported: Option<Instant> = None;
    loop {
        let pause = c.budget.wait_for(READ_LEN as u64, Instant::now());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
            let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
            c.counters.throttled_ms.fetch_add(ms, Ordering::Relaxed);
            if reported.is_none_or(|r| r.elapsed() >= REPORT_INTERVAL) {
                reported = Some(Instant::now());
                info!(
                    log = %c.path.display(),
                    "a guest writes its console faster than {CONSOLE_RATE} bytes/s; reading \
                     it is throttled ({} ms so far)",
                    c.counters.throttled_ms.load(Ordering::Relaxed)
                );
            }
            continue;
        }
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        c.budget.spend((n as u64).max(READ_COST_MIN));
        let data = buf.get(..n).unwrap_or_default();
        {
            let mut t = c
                .tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.extend_from_slice(data);
            let excess = t.len().saturating_sub(TAIL_LEN);
            t.drain(..excess);
        }
        if c.limit > 0 {
            if written + n as u64 > half {
                let rotated = c.path.with_extension("log.1");
                let _ = tokio::fs::rename(&c.path, &rotated).await;
                file = open_log(&c.path).await;
                written = 0;
            }
            if let Some(f) = file.as_mut() {
                // A chunk larger than the cap keeps its newest bytes.
                let cap = usize::try_from(half).unwrap_or(usize::MAX);
                let keep = data
                    .get(data.len().saturating_sub(cap)..)
                    .unwrap_or_default();
                // Flushed, so that whoever reads the log next sees these bytes.
                if f.write_all(keep).await.is_ok() && f.flush().await.is_ok() {
                    written += keep.len() as u64;
                }
            }
        }
        // In the log first, then counted, then sent: a follower that read the
        // log after reading `total` skips the chunks ending at or before it.
        let end = c.counters.total.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let _ = c.chunks.send(Chunk {
            end,
            data: Arc::from(data),
        });
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
    done.send_replace(true);
}

async fn open_log(path: &Path) -> Option<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn log_is_capped_and_tail_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (mut a, b) = UnixStream::pair().unwrap();
        let c = Console::start(b, path.clone(), 1000);
        let mut sub = c.subscribe();
        for i in 0..100 {
            a.write_all(format!("line {i:04} \x1b[2Jxx\n").as_bytes())
                .await
                .unwrap();
        }
        let first = sub.recv().await.unwrap();
        assert!(first.data.starts_with(b"line 0000"));
        drop(a);
        c.finished().await;
        let main = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(path.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(main + old <= 1000, "{main} + {old}");
        assert_eq!(c.tail_lines(1), vec!["line 0099 xx".to_string()]);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("line 0099 \x1b[2Jxx\n")
        );
    }

    #[test]
    fn budget_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Budget::new(1000, 4000, t0);
        assert_eq!(b.wait_for(4000, t0), Duration::ZERO);
        b.spend(4000);
        assert_eq!(b.wait_for(500, t0), Duration::from_millis(500));
        assert_eq!(
            b.wait_for(500, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
        // Saved-up tokens never pass the burst.
        assert_eq!(
            b.wait_for(1, t0 + Duration::from_secs(3600)),
            Duration::ZERO
        );
        assert_eq!(b.tokens, 4000);
    }

    #[tokio::test]
    async fn a_flood_is_read_at_the_budget_and_the_rest_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let (rate, burst) = (256 * 1024, 256 * 1024);
        let started = Instant::now();
        let c = Console::start_with_rate(b, dir.path().join("console.log"), 1 << 20, rate, burst);
        let flood = tokio::spawn(async move {
            let junk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if a.write_all(&junk).await.is_err() {
                    break;
                }
            }
            a
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        let read = c.total();
        let secs = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let allowed = burst + (rate as f64 * secs) as u64 + READ_LEN as u64;
        assert!(read <= allowed, "read {read} bytes, budget {allowed}");
        assert!(read >= burst, "read only {read} bytes");
        assert!(c.throttled() > Duration::ZERO);
        assert!(!flood.is_finished(), "4 MiB went through unthrottled");
        flood.abort();
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(strip_escapes("a\u{1b}[?7l\u{1b}[2Jb\u{1b}cc\r\n"), "abc\n");
    }
}
