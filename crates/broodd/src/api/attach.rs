//! Attached connections and file transfer: an interactive command
//! (`POST /v1/partitions/{name}/session`), the serial console both ways
//! (`GET /v1/partitions/{name}/console/attach`), both HTTP upgrades that
//! then carry `brood_api::attach` frames; and a guest file read or written
//! as a stream of any size (`GET`/`PUT /v1/partitions/{name}/files`).
//!
//! Everything is checked before the `101`: a request that cannot be served
//! gets an ordinary error response. After it, a failure is an `ERROR`
//! frame. The client going away kills the command (its `ExecStream` is
//! dropped). A write goes to a scratch file next to the target, renamed
//! over it only when every byte arrived, so a failed copy leaves the
//! target as it was.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use brood_api::attach::{self, ATTACH_PROTOCOL, SessionRequest};
use brood_api::{ErrorBody, ErrorCode, ErrorDetail};
use brood_engine::agent::{AgentClient, ExecEvent, ExecStream, SessionControl};
use brood_proto::{FileKind, Stream, WinSize};
use futures::StreamExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::host::{Host, chain};
use crate::tenancy::Action;

type D = State<Arc<Host>>;

/// Bytes read from or written to the guest per agent request.
const FILE_CHUNK: usize = 1 << 20;
/// [`FILE_CHUNK`] as an agent read length.
const FILE_CHUNK_U32: u32 = 1 << 20;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(session))
        .routes(routes!(console_attach))
        .routes(routes!(read_file, write_file))
}

/// The connection's upgrade, if the request asks for `Upgrade:
/// brood-attach`. Never rejects: a handler checks the partition first (a
/// 404 or 409 says more than "not an upgrade"), then [`Upgrade::check`].
pub struct Upgrade {
    asked: bool,
    on: Option<OnUpgrade>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> Result<Self, std::convert::Infallible> {
        let asked = parts
            .headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_PROTOCOL));
        Ok(Upgrade {
            asked,
            on: parts.extensions.remove::<OnUpgrade>(),
        })
    }
}

impl Upgrade {
    /// Refuses a request that does not ask for the upgrade.
    fn check(&self) -> ApiResult<()> {
        if self.asked {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "this route attaches: send `Connection: Upgrade` and `Upgrade: {ATTACH_PROTOCOL}` \
                 over HTTP/1.1 (`brood vm console` and `brood vm exec -t` do)"
            )))
        }
    }

    /// The upgrade itself: absent when the connection cannot be upgraded
    /// (HTTP/2, or a request that never came over a connection).
    fn take(self) -> ApiResult<OnUpgrade> {
        self.on.ok_or_else(|| {
            ApiError::bad_request("this connection cannot be upgraded: attach over HTTP/1.1")
        })
    }
}

fn switching() -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static(ATTACH_PROTOCOL));
    resp
}

fn error_frame(code: ErrorCode, message: String) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorDetail { code, message }).unwrap_or_default();
    attach::frame(attach::ERROR, &body)
}

/// The agent of a running partition, ready within `ready`.
async fn ready_agent(
    d: &Host,
    name: &str,
    ready: Duration,
) -> ApiResult<(brood_ledger::PartitionRecord, AgentClient)> {
    let rec = d.find(name).await?;
    let running = d.registry.running(rec.uuid).ok_or_else(|| {
        ApiError::transition(format!("{} is {}: start it first", rec.name, rec.run_state))
    })?;
    crate::host::boot_disk::needs_agent(&rec, "a session or a file transfer")?;
    running
        .vm
        .wait_ready(ready)
        .await
        .map_err(|e| ApiError::engine(&format!("the agent of {}", rec.name), &e))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| ApiError::engine("the agent", &e))?;
    Ok((rec, agent.clone()))
}

/// Runs an interactive command in a partition's guest, attached.
#[utoipa::path(
    post,
    path = "/v1/partitions/{name}/session",
    tag = "partitions",
    operation_id = "attach_session",
    request_body = SessionRequest,
    params(("name" = String, Path, description = "Partition name or uuid")),
    responses(
        (status = 101, description = "Attached: the connection now carries attach frames (`STDIN`, `EOF`, `RESIZE`, `SIGNAL` from the client; `STDOUT`, `STDERR`, then `EXIT` or `ERROR` from broodd)"),
        (status = 400, description = "not an upgrade to `brood-attach`, malformed JSON, an unknown field, neither or both of `command` and `argv`, or a terminal size outside 1-1000", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is not running (`invalid_transition`)", body = ErrorBody),
        (status = 502, description = "its agent did not become ready or could not start the command (`engine_failed`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn session(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    upgrade: Upgrade,
    ApiJson(req): ApiJson<SessionRequest>,
) -> ApiResult<Response> {
    caller.partition(&d, &name, Action::Operate).await?;
    let check = brood_api::ExecRequest {
        command: req.command.clone(),
        argv: req.argv.clone(),
        env: req.env.clone(),
        stdin_base64: None,
        timeout_ms: req.timeout_ms,
        ready_timeout_ms: req.ready_timeout_ms,
    };
    crate::convert::validate_exec(&check)?;
    let command = match (req.command, req.argv) {
        (Some(c), None) => brood_proto::Command::Shell(c),
        (None, Some(a)) if !a.is_empty() => brood_proto::Command::Argv(a),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `command` (a shell string) or `argv`",
            ));
        }
    };
    let tty = req.tty.map(term_size).transpose()?;
    let ready = Duration::from_millis(req.ready_timeout_ms.unwrap_or(60_000).min(600_000));
    let (rec, agent) = ready_agent(&d, &name, ready).await?;
    upgrade.check()?;
    let what = format!("session in {}", rec.name);
    let (stream, control) = agent
        .session(&brood_proto::SessionRequest {
            command,
            env: req.env.into_iter().collect(),
            cwd: None,
            tty,
            timeout_ms: req.timeout_ms,
        })
        .await
        .map_err(|e| ApiError::engine(&what, &e))?;
    // Dropping the stream on this error kills the command just started
    // (only a connection that cannot be upgraded, such as HTTP/2, gets here).
    let on = upgrade.take()?;
    tokio::spawn(async move {
        match on.await {
            Ok(io) => pump_session(TokioIo::new(io), stream, control, &what).await,
            Err(e) => tracing::debug!("{what}: the upgrade failed: {e}"),
        }
    });
    Ok(switching())
}

fn term_size(t: attach::TermSize) -> ApiResult<WinSize> {
    if !(1..=1000).contains(&t.rows) || !(1..=1000).contains(&t.cols) {
        return Err(ApiError::bad_request(format!(
            "tty {}x{}: rows and cols must be 1-1000",
            t.rows, t.cols
        )));
    }
    Ok(WinSize {
        rows: t.rows,
        cols: t.cols,
    })
}

/// Carries one session's frames until its command ends or the client leaves.
async fn pump_session<IO>(io: IO, mut stream: ExecStream, control: SessionControl, what: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let feed = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            loop {
                let (kind, payload) = match attach::take_frame(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                };
                client_frame(&control, kind, &payload)
                    .await
                    .map_err(|e| chain(&e))?;
            }
            match rd.read(&mut chunk).await {
                // The client went away (or half-closed): nothing more comes.
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    let drain = async {
        while let Some(ev) = stream.next().await {
            let bytes = match ev {
                Ok(ExecEvent::Output { stream, data }) => {
                    let kind = match stream {
                        Stream::Stdout => attach::STDOUT,
                        Stream::Stderr => attach::STDERR,
                    };
                    attach::frames(kind, &data)
                }
                Ok(ExecEvent::Exited(status)) => {
                    let end = super::stream::end(&status);
                    attach::frame(attach::EXIT, &serde_json::to_vec(&end).unwrap_or_default())
                }
                Err(e) => error_frame(ErrorCode::EngineFailed, format!("{what}: {}", chain(&e))),
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::pin!(drain);
    tokio::select! {
        () = &mut drain => {}
        fed = feed => match fed {
            // The client sent all it had: its output still comes.
            Ok(()) => drain.await,
            Err(e) => tracing::debug!("{what}: input failed: {e}"),
        },
    }
}

async fn client_frame(
    control: &SessionControl,
    kind: u8,
    payload: &[u8],
) -> Result<(), brood_engine::EngineError> {
    match kind {
        attach::STDIN => control.input(payload, false).await,
        attach::EOF => control.input(&[], true).await,
        attach::RESIZE => match payload {
            [r0, r1, c0, c1] => {
                let rows = u16::from_be_bytes([*r0, *r1]).clamp(1, 1000);
                let cols = u16::from_be_bytes([*c0, *c1]).clamp(1, 1000);
                control.resize(WinSize { rows, cols }).await
            }
            _ => Ok(()),
        },
        attach::SIGNAL => match <[u8; 4]>::try_from(payload) {
            Ok(b) => control.signal(i32::from_be_bytes(b)).await,
            Err(_) => Ok(()),
        },
        // Unknown kinds are skipped: a newer client may send more.
        _ => Ok(()),
    }
}

/// Attaches to a running partition's serial console: what the guest
/// writes comes as `STDOUT` frames, `STDIN` frames are typed into it.
#[utoipa::path(
    get,
    path = "/v1/partitions/{name}/console/attach",
    tag = "partitions",
    operation_id = "attach_console",
    params(("name" = String, Path, description = "Partition name or uuid")),
    responses(
        (status = 101, description = "Attached: `STDIN` frames from the client go to the serial port, the console's output comes as `STDOUT` frames until the VM ends"),
        (status = 400, description = "not an upgrade to `brood-attach`, or the name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is not running (`invalid_transition`)", body = ErrorBody),
        Common
    )
)]
async fn console_attach(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    upgrade: Upgrade,
) -> ApiResult<Response> {
    caller.partition(&d, &name, Action::Operate).await?;
    let rec = d.find(&name).await?;
    let console = d
        .registry
        .running(rec.uuid)
        .and_then(|r| r.vm.console().cloned())
        .ok_or_else(|| {
            ApiError::transition(format!("{} is {}: start it first", rec.name, rec.run_state))
        })?;
    upgrade.check()?;
    let on = upgrade.take()?;
    let mut rx = console.subscribe();
    tokio::spawn(async move {
        let Ok(io) = on.await else { return };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
        let typing = async {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                while let Ok(Some((kind, payload))) = attach::take_frame(&mut buf) {
                    if kind == attach::STDIN && console.write(&payload).await.is_err() {
                        return;
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
                if buf.len() > attach::MAX_FRAME_PAYLOAD + attach::FRAME_HEADER {
                    // A frame over the limit: take_frame refuses it forever.
                    return;
                }
            }
        };
        let showing = async {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(c) => {
                        if wr
                            .write_all(&attach::frame(attach::STDOUT, &c))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = typing => {}
            () = showing => {}
        }
    });
    Ok(switching())
}

/// Which guest file.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    /// Absolute path in the guest (required).
    path: Option<String>,
    /// For a write: the file's permission bits, octal (default 644).
    mode: Option<String>,
}

fn absolute(path: Option<&str>) -> ApiResult<&str> {
    let Some(path) = path else {
        return Err(ApiError::bad_request(
            "give the guest file as `?path=/absolute/path`",
        ));
    };
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return Err(ApiError::bad_request(format!(
            "path {path:?}: give an absolute guest path (at most 4096 bytes, no NUL)"
        )));
    }
    Ok(path)
}

fn guest_err(what: &str, e: &brood_engine::EngineError) -> ApiError {
    use brood_engine::EngineError;
    use brood_proto::ErrorKind;
    match e {
        EngineError::Agent(a) => match a.kind {
            ErrorKind::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("{what}: {}", a.message),
            ),
            ErrorKind::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("{what}: the guest refused the size: {}", a.message),
            ),
            ErrorKind::BadRequest | ErrorKind::PermissionDenied => {
                ApiError::bad_request(format!("{what}: {}", a.message))
            }
            _ => ApiError::engine(what, e),
        },
        _ => ApiError::engine(what, e),
    }
}

/// Reads a guest file as a stream of any size.
#[utoipa::path(
    get,
    path = "/v1/partitions/{name}/files",
    tag = "partitions",
    operation_id = "read_partition_file",
    params(("name" = String, Path, description = "Partition name or uuid"), FileQuery),
    responses(
        (status = 200, description = "The file's bytes, streamed; its permission bits in `x-brood-mode` (octal)", content_type = "application/octet-stream", body = String),
        (status = 400, description = "a relative path, a directory or special file, or one the guest refuses to open", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid, or no such file in the guest (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is not running (`invalid_transition`)", body = ErrorBody),
        (status = 502, description = "its agent did not become ready or failed (`engine_failed`)", body = ErrorBody),
        Common
    )
)]
async fn read_file(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    caller.partition(&d, &name, Action::Operate).await?;
    let (rec, agent) = ready_agent(&d, &name, Duration::from_secs(60)).await?;
    let path = absolute(q.path.as_deref())?.to_owned();
    let what = format!("read {path} in {}", rec.name);
    let st = agent
        .stat_file(&path)
        .await
        .map_err(|e| guest_err(&what, &e))?;
    if st.kind != FileKind::File {
        return Err(ApiError::bad_request(format!(
            "{what}: not a regular file (cp copies files; for a directory, use \
             `brood vm exec {} 'tar -cf - DIR' > dir.tar`)",
            rec.name
        )));
    }
    // The first chunk is read here, so an unreadable file is an error
    // response rather than a body cut short.
    let first = agent
        .read_chunk(&path, 0, FILE_CHUNK_U32)
        .await
        .map_err(|e| guest_err(&what, &e))?;
    let body = futures::stream::unfold(
        (Some(first), 0u64, false),
        move |(pending, offset, done)| {
            let agent = agent.clone();
            let path = path.clone();
            async move {
                if done {
                    return None;
                }
                let fd = match pending {
                    Some(fd) => fd,
                    None => match agent.read_chunk(&path, offset, FILE_CHUNK_U32).await {
                        Ok(fd) => fd,
                        Err(e) => {
                            tracing::warn!("read {path}: {}", chain(&e));
                            return Some((
                                Err(std::io::Error::other(chain(&e))),
                                (None, offset, true),
                            ));
                        }
                    },
                };
                let data = fd.data.into_vec();
                let next = offset.saturating_add(data.len() as u64);
                let end = fd.eof || data.is_empty();
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(data)),
                    (None, next, end),
                ))
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(attach::OCTET_STREAM));
    if let Ok(v) = HeaderValue::from_str(&format!("{:o}", st.mode)) {
        h.insert(attach::MODE_HEADER, v);
    }
    Ok(resp)
}

/// Writes a guest file from a stream of any size (replacing it whole only
/// once every byte arrived).
#[utoipa::path(
    put,
    path = "/v1/partitions/{name}/files",
    tag = "partitions",
    operation_id = "write_partition_file",
    params(("name" = String, Path, description = "Partition name or uuid"), FileQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "The file's bytes, any size"),
    responses(
        (status = 204, description = "Written: the file holds the body, with the mode given"),
        (status = 400, description = "a relative path, a mode that is not octal up to 7777, a missing directory, or a body cut short", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition is not running (`invalid_transition`)", body = ErrorBody),
        (status = 413, description = "the guest refused a file that large (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "a `Content-Type` other than `application/octet-stream` (`unsupported_media_type`)", body = ErrorBody),
        (status = 502, description = "its agent did not become ready or failed (`engine_failed`)", body = ErrorBody),
        Common
    )
)]
async fn write_file(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    caller.partition(&d, &name, Action::Operate).await?;
    if headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() != attach::OCTET_STREAM.as_bytes())
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the file's bytes as `Content-Type: application/octet-stream`",
        ));
    }
    let mode = match q.mode.as_deref() {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "mode {m:?}: give octal permission bits such as 644"
                ))
            })?,
    };
    let (rec, agent) = ready_agent(&d, &name, Duration::from_secs(60)).await?;
    let path = absolute(q.path.as_deref())?;
    let what = format!("write {path} in {}", rec.name);
    let mut frames = body.into_data_stream();
    if let Ok(st) = agent.stat_file(path).await
        && st.kind != FileKind::File
    {
        drain(&mut frames).await;
        return Err(ApiError::bad_request(format!(
            "{what}: it is a directory or special file: name the file to write (DIR/NAME)"
        )));
    }
    let scratch = format!("{path}.brood-{}", uuid::Uuid::new_v4().simple());
    let copied = copy_in(&agent, &scratch, mode, &mut frames).await;
    let finished = match copied {
        Ok(()) => rename(&agent, &scratch, path).await,
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        drain(&mut frames).await;
        // Best effort: a scratch file that was never created is fine.
        let _ = run_argv(&agent, &["rm", "-f", &scratch]).await;
        return Err(match e {
            CopyError::Body(m) => ApiError::bad_request(format!("{what}: the body: {m}")),
            CopyError::Guest(e) => guest_err(&what, &e),
            CopyError::Rename(m) => ApiError::bad_request(format!("{what}: {m}")),
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

enum CopyError {
    Body(String),
    Guest(brood_engine::EngineError),
    Rename(String),
}

/// Most of a refused upload read (and dropped) so that its client, still
/// sending, reads the error instead of a broken pipe.
const DRAIN_MAX_BYTES: usize = 256 << 20;
/// The longest a refused upload is drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn drain(frames: &mut axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut n = 0usize;
        while let Some(Ok(b)) = frames.next().await {
            n = n.saturating_add(b.len());
            if n > DRAIN_MAX_BYTES {
                return;
            }
        }
    })
    .await;
}

async fn copy_in(
    agent: &AgentClient,
    path: &str,
    mode: u32,
    frames: &mut axum::body::BodyDataStream,
) -> Result<(), CopyError> {
    let mut pending: Vec<u8> = Vec::with_capacity(FILE_CHUNK);
    let mut offset = 0u64;
    // Created (empty) first, so an empty body makes an empty file.
    agent
        .write_chunk(path, 0, true, mode, Vec::new())
        .await
        .map_err(CopyError::Guest)?;
    loop {
        let next = frames.next().await;
        let end = next.is_none();
        if let Some(bytes) = next {
            pending.extend_from_slice(&bytes.map_err(|e| CopyError::Body(e.to_string()))?);
        }
        while pending.len() >= FILE_CHUNK || (end && !pending.is_empty()) {
            let take = pending.len().min(FILE_CHUNK);
            let rest = pending.split_off(take);
            let piece = std::mem::replace(&mut pending, rest);
            let len = piece.len() as u64;
            agent
                .write_chunk(path, offset, false, mode, piece)
                .await
                .map_err(CopyError::Guest)?;
            offset += len;
        }
        if end {
            return Ok(());
        }
    }
}

async fn rename(agent: &AgentClient, from: &str, to: &str) -> Result<(), CopyError> {
    match run_argv(agent, &["mv", "-f", from, to]).await {
        Ok(None) => Ok(()),
        Ok(Some(msg)) => Err(CopyError::Rename(msg)),
        Err(e) => Err(CopyError::Guest(e)),
    }
}

/// Runs an argv in the guest: `None` when it succeeded, else its stderr.
async fn run_argv(
    agent: &AgentClient,
    argv: &[&str],
) -> Result<Option<String>, brood_engine::EngineError> {
    let mut req = brood_proto::ExecRequest::shell("");
    req.command = brood_proto::Command::Argv(argv.iter().map(|s| (*s).to_owned()).collect());
    req.timeout_ms = Some(60_000);
    req.output_limit = 4096;
    let out = agent.exec(&req).await?;
    Ok(
        (out.status.code != Some(0))
            .then(|| String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    )
}
