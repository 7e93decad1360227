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

use super::error::{ApiError, ApiResult};
use crate::host::chain;

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
/// output (at most the output limit per stream, in the chunks it came in,
/// so nothing is over-allocated) and never a base64 copy of it.
pub async fn exec_buffered(mut run: ExecStream, what: &str) -> ApiResult<Response> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        match run.next().await {
            Some(Ok(ExecEvent::Output { stream, data })) => match stream {
                Stream::Stdout => stdout.push(data),
                Stream::Stderr => stderr.push(data),
            },
            Some(Ok(ExecEvent::Exited(status))) => break status,
            Some(Err(e)) => return Err(ApiError::engine(what, &e)),
            None => {
                let e = brood_engine::EngineError::AgentChannel(
                    "the exec ended without a status".into(),
                );
                return Err(ApiError::engine(what, &e));
            }
        }
    };
    let end = serde_json::to_string(&end(&status))
        .map_err(|e| ApiError::internal("encode the exec result", &e))?;
    // `{"exit_code":...}` continues the object after the two strings.
    let rest = format!("\",{}", end.get(1..).unwrap_or("}"));
    let text = |t: &str| Box::new(std::iter::once(Bytes::from(t.to_owned()))) as Pieces;
    let pieces: [Pieces; 5] = [
        text("{\"stdout_base64\":\""),
        base64_pieces(stdout),
        text("\",\"stderr_base64\":\""),
        base64_pieces(stderr),
        text(&rest),
    ];
    let body = futures::stream::iter(pieces.into_iter().flatten()).map(Ok::<_, Infallible>);
    Ok((
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

type Pieces = Box<dyn Iterator<Item = Bytes> + Send>;

/// The base64 of the concatenated `chunks`, one piece per chunk: each piece
/// encodes a multiple of 3 bytes (the rest carried into the next), so the
/// pieces join into one base64 string.
fn base64_pieces(chunks: Vec<Vec<u8>>) -> Pieces {
    let mut carry: Vec<u8> = Vec::new();
    let mut chunks = chunks.into_iter();
    Box::new(std::iter::from_fn(move || {
        loop {
            let Some(chunk) = chunks.next() else {
                if carry.is_empty() {
                    return None;
                }
                return Some(Bytes::from(B64.encode(std::mem::take(&mut carry))));
            };
            carry.extend_from_slice(&chunk);
            let whole = carry.len() / 3 * 3;
            if whole == 0 {
                continue;
            }
            let rest = carry.split_off(whole);
            let piece = B64.encode(&carry);
            carry = rest;
            return Some(Bytes::from(piece));
        }
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pieces_join_into_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for split in [1, 2, 3, 4, 7, 64, 999, 1000] {
            let chunks: Vec<Vec<u8>> = data.chunks(split).map(<[u8]>::to_vec).collect();
            let joined: String = base64_pieces(chunks)
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect();
            assert_eq!(joined, B64.encode(&data), "split {split}");
        }
        assert_eq!(base64_pieces(Vec::new()).count(), 0);
    }
}
