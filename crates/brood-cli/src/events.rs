//! `brood events`: follows broodd's server-sent event stream (`GET
//! /v1/events`) and prints one line per event until Ctrl-C. Only the `data:`
//! field of the SSE format matters here; broodd's keep-alive comments are skipped.
//! When the stream breaks (broodd restarted, say), it says so on stderr and
//! reconnects with backoff until broodd answers again (or Ctrl-C); events
//! in between are missed, and sequence numbers start again with each broodd.

use std::io::{ErrorKind, Write};
use std::time::Duration;

use anyhow::{Result, bail};
use brood_api::{Event, EventKind};
use clap::Args;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::Output;
use crate::client::{Client, ClientError};
use crate::render::wire_name;

/// Longest SSE line or event accepted, so a broken stream cannot fill memory.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Arguments of `brood events`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood events
  brood events -o json | jq -c 'select(.kind.type == \"partition\")'

Ctrl-C ends it. When the stream breaks (broodd restarted), brood says so on
stderr and reconnects, retrying until broodd answers; events in between are
missed (`brood ledger log` has every transaction). With --no-reconnect it
ends instead (exit status 125).")]
pub struct EventsArgs {
    /// End when the stream breaks instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// First wait before reconnecting; doubled up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Splits a byte stream into SSE events and yields each event's data.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
    data_len: usize,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they complete (the
    /// `data:` lines of one event joined with newlines).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                    self.data_len = 0;
                }
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            // An empty field name is a comment (keep-alive); `event:`, `id:`
            // and `retry:` carry nothing brood needs.
            if field == "data" {
                self.data_len += value.len();
                self.data.push(value.to_string());
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES || self.data_len > MAX_EVENT_BYTES {
            bail!("an event from broodd is larger than {MAX_EVENT_BYTES} bytes");
        }
        Ok(events)
    }
}

/// One line for an event in text mode.
pub fn line(e: &Event) -> String {
    let what = match &e.kind {
        EventKind::Partition {
            name,
            stage,
            run_state,
            detail,
            ..
        } => {
            let detail = detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!(
                "{name}: {}, {}{detail}",
                wire_name(stage),
                wire_name(run_state)
            )
        }
        EventKind::PartitionDeleted { name, .. } => format!("{name}: deleted"),
        EventKind::Ledger { tx, reason, actor } if !actor.is_empty() => {
            format!("ledger tx {tx} by {actor}: {reason}")
        }
        EventKind::Ledger { tx, reason, .. } => format!("ledger tx {tx}: {reason}"),
        EventKind::Job {
            id,
            kind,
            target,
            state,
            ..
        } => format!("job {id} {kind} {target}: {}", state.as_str()),
    };
    format!("{}  #{}  {what}", e.time, e.seq)
}

/// How one event's data is printed: compact JSON or a text line; data that
/// is not an [`Event`] (a newer broodd) is printed as it came.
fn render(data: &str, out: Output) -> String {
    match (serde_json::from_str::<Event>(data), out) {
        (Ok(e), Output::Text) => line(&e),
        (Ok(e), Output::Json) => serde_json::to_string(&e).unwrap_or_else(|_| data.to_string()),
        (Err(_), _) => data.replace('\n', " "),
    }
}

/// How one connection to the event stream ended.
enum Ended {
    /// Ctrl-C, or stdout closed: brood is done.
    Done,
    /// The stream broke: why.
    Broken(String),
}

/// Runs `brood events` until Ctrl-C, reconnecting when the stream breaks.
pub async fn run(args: EventsArgs, client: &Client, out: Output) -> Result<i32> {
    // The first connection must work: a wrong host or token is an error.
    let mut body = client.stream("/v1/events").await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let why = match follow(&mut body, out, &mut ctrl_c).await? {
            Ended::Done => return Ok(0),
            Ended::Broken(why) if args.no_reconnect => {
                bail!("broodd ended the event stream ({why}); did it stop?")
            }
            Ended::Broken(why) => why,
        };
        eprintln!("brood: the event stream ended ({why}); reconnecting to broodd");
        let mut wait = RECONNECT_FIRST;
        body = loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = &mut ctrl_c => return Ok(0),
            }
            match client.stream("/v1/events").await {
                Ok(b) => break b,
                Err(_) => wait = (wait * 2).min(RECONNECT_MAX),
            }
        };
        eprintln!("brood: reconnected to broodd; events in between were missed");
    }
}

/// Prints the events of one connection until it ends.
async fn follow(
    body: &mut Incoming,
    out: Output,
    ctrl_c: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<()>>>,
) -> Result<Ended> {
    let mut parser = SseParser::default();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = ctrl_c.as_mut() => return Ok(Ended::Done),
        };
        let frame = match frame {
            None => return Ok(Ended::Broken("the connection closed".into())),
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                let e = ClientError::Body {
                    what: "GET /v1/events".to_string(),
                    source: e,
                };
                return Ok(Ended::Broken(format!("{:#}", anyhow::Error::new(e))));
            }
        };
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        let mut stdout = std::io::stdout().lock();
        for data in parser.push(&bytes)? {
            match writeln!(stdout, "{}", render(&data, out)) {
                Ok(()) => {}
                // `brood events | head` closed its end: that is the end.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(Ended::Done),
                Err(e) => return Err(anyhow::Error::new(e).context("write an event")),
            }
        }
        // Each event is seen as it comes, also through a pipe.
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nda").unwrap().is_empty());
        assert!(p.push(b"ta: {\"a\":1}\r\n").unwrap().is_empty());
        assert_eq!(p.push(b"\r\n").unwrap(), [r#"{"a":1}"#]);
        let two = p
            .push(b"event: x\nid: 3\ndata:one\ndata: two\n\ndata\n\n")
            .unwrap();
        assert_eq!(two, ["one\ntwo", ""]);
        assert!(p.push(b"\n\n").unwrap().is_empty());
    }

    #[test]
    fn sse_rejects_endless_lines() {
        let mut p = SseParser::default();
        assert!(p.push(&vec![b'x'; MAX_EVENT_BYTES + 1]).is_err());
    }

    #[test]
    fn events_render() {
        let data = r#"{"seq":4,"time":"2025-01-01T00:00:00Z","kind":{"type":"partition",
            "name":"web","uuid":"00000000-0000-4000-8000-000000000001","stage":"operating",
            "run_state":"crashed","detail":"signal 9"}}"#;
        assert_eq!(
            render(data, Output::Text),
            "2025-01-01T00:00:00Z  #4  web: operating, crashed (signal 9)"
        );
        let json = render(data, Output::Json);
        assert!(
            json.starts_with(r#"{"seq":4,"#) && !json.contains('\n'),
            "{json}"
        );
        let ledger = r#"{"seq":5,"time":"t","kind":{"type":"ledger","tx":9,"reason":"start web"}}"#;
        assert_eq!(
            render(ledger, Output::Text),
            "t  #5  ledger tx 9: start web"
        );
        let ledger = r#"{"seq":5,"time":"t","kind":{"type":"ledger","tx":9,"reason":"start web","actor":"api"}}"#;
        assert_eq!(
            render(ledger, Output::Text),
            "t  #5  ledger tx 9 by api: start web"
        );
        let deleted = r#"{"seq":6,"time":"t","kind":{"type":"partition_deleted","name":"web",
            "uuid":"00000000-0000-4000-8000-000000000001"}}"#;
        assert_eq!(render(deleted, Output::Text), "t  #6  web: deleted");
        assert_eq!(render("{\"new\":\n1}", Output::Text), "{\"new\": 1}");
    }
}
