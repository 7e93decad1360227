//! The serial console: a task reads QEMU's console socket, appends to a
//! size-capped log file, keeps the last few KiB in memory for error
//! messages, and forwards chunks to whoever subscribed (`brood run
//! --console`). The log is capped by rotation: when `console.log` would pass
//! half the limit it becomes `console.log.1`, so the two never hold more than
//! the limit together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};

/// Bytes of recent console output kept in memory.
const TAIL_LEN: usize = 8 * 1024;

/// Handle on a VM's console. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Console {
    log_path: PathBuf,
    tail: Arc<Mutex<Vec<u8>>>,
    chunks: broadcast::Sender<Arc<[u8]>>,
    done: watch::Receiver<bool>,
}

impl Console {
    /// Starts copying `stream` to `log_path`, keeping at most `limit` bytes on disk.
    pub fn start(stream: UnixStream, log_path: PathBuf, limit: u64) -> Self {
        let tail = Arc::new(Mutex::new(Vec::with_capacity(TAIL_LEN)));
        let (chunks, _) = broadcast::channel(256);
        let (done_tx, done) = watch::channel(false);
        tokio::spawn(copy_loop(
            stream,
            log_path.clone(),
            limit,
            tail.clone(),
            chunks.clone(),
            done_tx,
        ));
        Self {
            log_path,
            tail,
            chunks,
            done,
        }
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Receives console output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[u8]>> {
        self.chunks.subscribe()
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

async fn copy_loop(
    mut stream: UnixStream,
    path: PathBuf,
    limit: u64,
    tail: Arc<Mutex<Vec<u8>>>,
    chunks: broadcast::Sender<Arc<[u8]>>,
    done: watch::Sender<bool>,
) {
    let half = (limit / 2).max(1);
    let mut file = open_log(&path).await;
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = buf.get(..n).unwrap_or_default();
        {
            let mut t = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.extend_from_slice(data);
            let excess = t.len().saturating_sub(TAIL_LEN);
            t.drain(..excess);
        }
        let _ = chunks.send(Arc::from(data));
        if limit == 0 {
            continue;
        }
        if written + n as u64 > half {
            let rotated = path.with_extension("log.1");
            let _ = tokio::fs::rename(&path, &rotated).await;
            file = open_log(&path).await;
            written = 0;
        }
        if let Some(f) = file.as_mut() {
            // A chunk larger than the cap keeps its newest bytes.
            let cap = usize::try_from(half).unwrap_or(usize::MAX);
            let keep = data
                .get(data.len().saturating_sub(cap)..)
                .unwrap_or_default();
            if f.write_all(keep).await.is_ok() {
                written += keep.len() as u64;
            }
        }
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
        assert!(first.starts_with(b"line 0000"));
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
    fn escapes_are_stripped() {
        assert_eq!(strip_escapes("a\u{1b}[?7l\u{1b}[2Jb\u{1b}cc\r\n"), "abc\n");
    }
}
