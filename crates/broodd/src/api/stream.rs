//! Streamed answers of the partition endpoints: a command's output as the
//! guest writes it, and a console as it grows. The handlers in `partitions`
//! check the request and pick the shape; this module turns an engine stream
//! into an HTTP body.
//!
//! Nothing here holds more than a chunk or two per request: the body is
//! pulled by hyper as the client reads it, so a client that reads slowly
//! holds the guest back (through the agent's bounded reply queue) rather
//! than broodd's memory. A body that hyper drops (the client went away)
//! drops the [`ExecStream`], which kills the command in the guest.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use brood_api::{ErrorCode, ErrorDetail, ExecChunk, ExecEnd, NDJSON};
use brood_engine::agent::{ExecEvent, ExecStream};
use brood_engine::console::Console;
use brood_proto::{ExecStatus, Stream};
use futures::StreamExt as _;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{ApiError, ApiResult, chain};

/// Raw bytes of output base64-encoded per piece of a buffered answer
/// (a multiple of 3, so the pieces join into one base64 string).
const B64_PIECE: usize = 48 * 1024;

/// The end of a command as the API reports it.
pub fn end(status: &ExecStatus) -> ExecEnd {
    ExecEnd {
        exit_code: status.code,
        signal: status.signal,
        timed_out: status.timed_out,
        stdout_truncated: status.stdout_truncated,
        stderr_truncated: status.stderr_truncated,
    }
}

fn line(chunk: &ExecChunk) -> Bytes {
    let mut v = serde_json::to_vec(chunk).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    Bytes::from(v)
}

/// Streams a running command as NDJSON: one [`ExecChunk`] per line, the
/// last being the end or an error.
pub fn exec_ndjson(run: ExecStream, what: String) -> Response {
    let body = futures::stream::unfold(Some(run), move |run| {
        let what = what.clone();
        async move {
            let mut run = run?;
            let chunk = match run.next().await? {
                Ok(ExecEvent::Output { stream, data }) => match stream {
                    Stream::Stdout => ExecChunk::Stdout {
                        stdout_base64: B64.encode(&data),
                    },
                    Stream::Stderr => ExecChunk::Stderr {
                        stderr_base64: B64.encode(&data),
                    },
                },
                Ok(ExecEvent::Exited(status)) => ExecChunk::End(end(&status)),
                Err(e) => {
                    tracing::warn!("{what}: {}", chain(&e));
                    ExecChunk::Error {
                        error: ErrorDetail {
                            code: ErrorCode::EngineFailed,
                            message: format!("{what}: {}", chain(&e)),
                        },
                    }
                }
            };
            Some((Ok::<_, Infallible>(line(&chunk)), Some(run)))
        }
    });
    ([(CONTENT_TYPE, NDJSON)], Body::from_stream(body)).into_response()
}

/// Runs a command to its end and answers with one JSON `ExecResponse`,
/// encoded piece by piece as the client reads it: broodd holds the raw
/// output (at most the output limit per stream) and never a base64 copy.
pub async fn exec_buffered(mut run: ExecStream, what: &str) -> ApiResult<Response> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        match run.next().await {
            Some(Ok(ExecEvent::Output { stream, data })) => match stream {
                Stream::Stdout => stdout.extend_from_slice(&data),
                Stream::Stderr => stderr.extend_from_slice(&data),
            },
            Some(Ok(ExecEvent::Exited(status))) => break status,
            Some(Err(e)) => return Err(ApiError::engine(what, &e)),
            None => {
                return Err(ApiError::engine(
                    what,
                    &brood_engine::EngineError::AgentChannel(
                        "the exec ended without a status".into(),
                    ),
                ));
            }
        }
    };
    let end = serde_json::to_string(&end(&status))
        .map_err(|e| ApiError::internal("encode the exec result", &e))?;
    // `{"exit_code":...}` continues the object after the two strings.
    let rest = format!("\",{}", end.get(1..).unwrap_or("}"));
    let pieces = [
        Piece::Text("{\"stdout_base64\":\"".into()),
        Piece::Bytes(Arc::from(stdout)),
        Piece::Text("\",\"stderr_base64\":\"".into()),
        Piece::Bytes(Arc::from(stderr)),
        Piece::Text(rest),
    ];
    let body =
        futures::stream::iter(pieces.into_iter().flat_map(Piece::encoded)).map(Ok::<_, Infallible>);
    Ok((
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A part of a buffered answer: literal JSON or bytes to base64.
enum Piece {
    Text(String),
    Bytes(Arc<[u8]>),
}

impl Piece {
    fn encoded(self) -> Box<dyn Iterator<Item = Bytes> + Send> {
        match self {
            Piece::Text(t) => Box::new(std::iter::once(Bytes::from(t))),
            Piece::Bytes(b) => {
                let n = b.len().div_ceil(B64_PIECE);
                Box::new((0..n).map(move |i| {
                    let from = i * B64_PIECE;
                    let part = b
                        .get(from..(from + B64_PIECE).min(b.len()))
                        .unwrap_or_default();
                    Bytes::from(B64.encode(part))
                }))
            }
        }
    }
}

/// Streams `history` and then the console's output from `history_end` on,
/// until the VM ends or the client goes away. `rx` was subscribed before
/// `history_end` was read, so no chunk is missed; chunks already in the
/// history are skipped.
pub fn console_follow(
    console: Console,
    rx: tokio::sync::broadcast::Receiver<brood_engine::console::Chunk>,
    history: Vec<u8>,
    history_end: u64,
) -> Response {
    let first = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(history)) });
    let live = futures::stream::unfold(Some((console, rx)), move |st| async move {
        let (console, mut rx) = st?;
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                () = console.finished() => {
                    // Whatever was sent before the end is still queued.
                    match rx.try_recv() {
                        Ok(c) => Ok(c),
                        Err(_) => return None,
                    }
                }
            };
            match got {
                Ok(c) if c.end <= history_end => {}
                Ok(c) => {
                    let data = Bytes::copy_from_slice(&c.data);
                    return Some((Ok(data), Some((console, rx))));
                }
                Err(RecvError::Lagged(n)) => {
                    let note = format!(
                        "\r\n[brood: {n} console chunks dropped: the reader was too slow]\r\n"
                    );
                    return Some((Ok(Bytes::from(note)), Some((console, rx))));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    (
        [(CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(first.chain(live)),
    )
        .into_response()
}
