//! A fake QMP server for the integration tests, and the transcript loader.
//!
//! Transcripts in `tests/transcripts/*.txt` were recorded from QEMU 10.0.2 by
//! `tests/transcripts/record.py`: `< ` lines came from QEMU, `> ` lines were
//! sent to it, `# ` lines are comments (`# EOF` / `# ECONNRESET`: QEMU closed
//! the socket). [`Conn::replay`] plays QEMU's side of one: it checks each
//! command the client sends against the recorded one (name and arguments) and
//! answers with the recorded lines, with the reply's `id` changed to the
//! client's. Each fake server listens in its own tempdir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use brood_qmp::{Greeting, QmpClient};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long the fake server waits for the client before failing the test.
pub const TEST_WAIT: Duration = Duration::from_secs(10);

/// One recorded command and what QEMU sent until the next command.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The command as recorded (with the recorder's id).
    pub request: Value,
    /// QEMU's lines after it: events and the reply, verbatim.
    pub responses: Vec<String>,
}

/// A recorded QMP session.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// QEMU's greeting line.
    pub greeting: String,
    /// The commands in order.
    pub exchanges: Vec<Exchange>,
    /// Whether QEMU closed the socket at the end.
    pub closes: bool,
}

impl Transcript {
    /// Loads `tests/transcripts/<name>.txt`.
    pub fn load(name: &str) -> Transcript {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts")
            .join(format!("{name}.txt"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut greeting = None;
        let mut exchanges: Vec<Exchange> = Vec::new();
        let mut closes = false;
        for line in text.lines() {
            if let Some(sent) = line.strip_prefix("> ") {
                exchanges.push(Exchange {
                    request: serde_json::from_str(sent).unwrap(),
                    responses: Vec::new(),
                });
            } else if let Some(received) = line.strip_prefix("< ") {
                match exchanges.last_mut() {
                    Some(ex) => ex.responses.push(received.to_owned()),
                    None => greeting = Some(received.to_owned()),
                }
            } else if line == "# EOF" || line == "# ECONNRESET" {
                closes = true;
            }
        }
        Transcript {
            greeting: greeting.unwrap(),
            exchanges,
            closes,
        }
    }

    /// The recorded reply line to the exchange at `index`.
    pub fn reply(&self, index: usize) -> &str {
        let ex = &self.exchanges[index];
        let id = &ex.request["id"];
        ex.responses
            .iter()
            .find(|l| serde_json::from_str::<Value>(l).unwrap().get("id") == Some(id))
            .unwrap()
    }

    /// Every recorded line that is an event, in order.
    pub fn events(&self) -> Vec<String> {
        self.exchanges
            .iter()
            .flat_map(|ex| ex.responses.iter())
            .filter(|l| l.contains("\"event\""))
            .cloned()
            .collect()
    }
}

/// A listening fake QEMU in its own tempdir.
pub struct FakeQemu {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    listener: UnixListener,
}

impl FakeQemu {
    /// Binds a socket in a fresh tempdir.
    pub fn bind() -> FakeQemu {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        FakeQemu {
            dir,
            path,
            listener,
        }
    }

    /// Accepts one client.
    pub async fn accept(&self) -> Conn {
        let (stream, _) = timeout(TEST_WAIT, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let (read, write) = stream.into_split();
        Conn {
            read: BufReader::new(read),
            write,
        }
    }
}

/// Spawns a fake QEMU running `script` on its first connection and connects a client to it.
pub async fn connected<F, Fut>(script: F) -> (QmpClient, Greeting, JoinHandle<()>)
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let fake = FakeQemu::bind();
    let path = fake.path.clone();
    let server = tokio::spawn(async move {
        let conn = fake.accept().await;
        script(conn).await;
        drop(fake);
    });
    let stream = UnixStream::connect(&path).await.unwrap();
    let (client, greeting) = QmpClient::connect(stream).await.unwrap();
    (client, greeting, server)
}

/// The server side of one connection.
pub struct Conn {
    read: BufReader<OwnedReadHalf>,
    pub write: OwnedWriteHalf,
}

impl Conn {
    /// Sends `line` followed by QEMU's `\r\n`.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Sends raw bytes; a client that already hung up is not an error.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.write.write_all(bytes).await;
    }

    /// Reads the next command, or `None` when the client closed the socket.
    pub async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = timeout(TEST_WAIT, self.read.read_line(&mut line))
            .await
            .expect("client sent nothing")
            .unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap())
    }

    /// Reads the next command and checks its name.
    pub async fn expect(&mut self, execute: &str) -> Value {
        let request = self.recv().await.expect("client closed the socket");
        assert_eq!(request["execute"], execute, "unexpected command {request}");
        request
    }

    /// Sends the recorded reply `recorded` with its id replaced by `request`'s.
    pub async fn reply(&mut self, request: &Value, recorded: &str) {
        let mut reply: Value = serde_json::from_str(recorded).unwrap();
        reply["id"] = request["id"].clone();
        self.send(&reply.to_string()).await;
    }

    /// Sends the greeting and answers `qmp_capabilities` from `t`.
    pub async fn handshake(&mut self, t: &Transcript) {
        self.send(&t.greeting).await;
        let request = self.expect("qmp_capabilities").await;
        self.reply(&request, t.reply(0)).await;
    }

    /// Plays QEMU's side of `t`, from the greeting to the end.
    pub async fn replay(mut self, t: Transcript) {
        self.send(&t.greeting).await;
        for ex in &t.exchanges {
            let request = self.recv().await.expect("client closed the socket early");
            assert_eq!(request["execute"], ex.request["execute"]);
            assert_eq!(request.get("arguments"), ex.request.get("arguments"));
            for line in &ex.responses {
                let mut msg: Value = serde_json::from_str(line).unwrap();
                if msg.get("id").is_some() && msg["id"] == ex.request["id"] {
                    msg["id"] = request["id"].clone();
                    self.send(&msg.to_string()).await;
                } else {
                    self.send(line).await;
                }
            }
        }
        if !t.closes {
            // Keep the socket open until the client hangs up.
            while self.recv().await.is_some() {}
        }
    }
}
