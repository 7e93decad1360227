//! The fake guest agent: one task per connection that reads brood-proto
//! frames from a socket pair and answers them as brood-agent would, from
//! the fake VM's guest state (hostname, files, fork point). broodd's side
//! of the pair is a real [`AgentClient`], so broodd's agent code runs.
//!
//! Requests are answered only while the agent is up, the VM is not paused
//! and not hung; each runs in its own task, so a `CompleteFork` that never
//! answers does not hold up other requests. A VM that ends closes every
//! connection.

use std::sync::Arc;

use brood_engine::{AgentClient, EngineError, ExitKind};
use brood_proto::{
    AgentError, AgentInfo, ByteBuf, Command, Decoded, ErrorKind, ExecRequest, ExecStatus, FileData,
    ForkReport, FrameDecoder, GuestMsg, HostMsg, OUTPUT_CHUNK, ServiceResult, Stream, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::engine::{ExecReply, Identity, Mode, Shared, lock};
use crate::vm::{Phase, VmModel};

/// Opens a new agent connection to `model` and returns broodd's end.
pub(crate) fn connect(
    shared: Arc<Shared>,
    model: Arc<VmModel>,
) -> Result<AgentClient, EngineError> {
    let (host, guest) =
        UnixStream::pair().map_err(|e| EngineError::host("make an agent socket pair", e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    if model.exit_status().is_none() {
        lock(&model.conns).push(tx.clone());
        tokio::spawn(serve(shared, model, guest, tx, rx));
    }
    Ok(AgentClient::new(host))
}

async fn serve(
    shared: Arc<Shared>,
    model: Arc<VmModel>,
    guest: UnixStream,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let (mut rd, mut wr) = guest.into_split();
    let writer = {
        let model = model.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => if wr.write_all(&f).await.is_err() { return },
                        None => return,
                    },
                    _ = model.wait_exit() => return,
                }
            }
        })
    };
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = model.wait_exit() => break,
        };
        dec.push(buf.get(..n).unwrap_or_default());
        while let Some(item) = dec.next_frame() {
            let Decoded::Frame(frame) = item else {
                continue;
            };
            let id = frame.id;
            let msg = match frame.decode::<HostMsg>() {
                Ok(m) => m,
                Err(e) => {
                    send(
                        &tx,
                        id,
                        &GuestMsg::Error(AgentError::new(ErrorKind::BadRequest, e.to_string())),
                    );
                    continue;
                }
            };
            let (shared, model, tx) = (shared.clone(), model.clone(), tx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = answer(&shared, &model, &tx, id, msg) => {}
                    _ = model.wait_exit() => {}
                }
            });
        }
    }
    drop(tx);
    writer.abort();
}

fn send(tx: &mpsc::UnboundedSender<Vec<u8>>, id: u32, msg: &GuestMsg) {
    if let Ok(f) = encode_frame(id, msg) {
        let _ = tx.send(f);
    }
}

/// Waits until the agent can answer: up, not paused, not hung.
async fn gate(model: &VmModel) {
    let mut serving = model.serving.subscribe();
    let mut phase = model.phase.subscribe();
    let mut hung = model.hung.subscribe();
    loop {
        let up = *serving.borrow_and_update();
        let running = *phase.borrow_and_update() == Phase::Running;
        let free = !*hung.borrow_and_update();
        if up && running && free {
            return;
        }
        tokio::select! {
            r = serving.changed() => if r.is_err() { return },
            r = phase.changed() => if r.is_err() { return },
            r = hung.changed() => if r.is_err() { return },
        }
    }
}

async fn answer(
    shared: &Shared,
    model: &Arc<VmModel>,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    id: u32,
    msg: HostMsg,
) {
    gate(model).await;
    let reply = match msg {
        HostMsg::Exec(req) => {
            exec(shared, model, tx, id, &req);
            return;
        }
        HostMsg::ReadFile(r) => match lock(&model.guest).files.get(&r.path) {
            None => GuestMsg::Error(AgentError::new(
                ErrorKind::NotFound,
                format!("{}: no such file", r.path),
            )),
            Some(data) => {
                let start = usize::try_from(r.offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start
                    .saturating_add(r.max_len as usize)
                    .min(data.len())
                    .min(start + brood_proto::MAX_DATA_CHUNK);
                GuestMsg::FileData(FileData {
                    data: ByteBuf::from(data.get(start..end).unwrap_or_default().to_vec()),
                    size: data.len() as u64,
                    eof: end == data.len(),
                })
            }
        },
        HostMsg::WriteFile(w) => {
            let mut g = lock(&model.guest);
            let f = g.files.entry(w.path).or_default();
            let off = usize::try_from(w.offset).unwrap_or(usize::MAX);
            if w.truncate || f.len() < off {
                f.resize(off, 0);
            }
            f.truncate(off);
            f.extend_from_slice(&w.data);
            GuestMsg::Written {
                len: w.data.len() as u64,
            }
        }
        // The fake's commands finish at once; there is nothing left to kill.
        HostMsg::CancelExec { .. } => GuestMsg::Ok,
        // The fake guest has no interfaces to configure.
        HostMsg::SetIpv4 { .. } => GuestMsg::Ok,
        // A guest file that cannot be read, as some of /proc cannot.
        HostMsg::StatFile { path } if path.starts_with("/proc/") => GuestMsg::Error(
            AgentError::new(ErrorKind::Io, format!("{path}: input/output error")),
        ),
        HostMsg::StatFile { path } => match lock(&model.guest).files.get(&path) {
            None => GuestMsg::Error(AgentError::new(
                ErrorKind::NotFound,
                format!("{path}: no such file"),
            )),
            Some(data) => GuestMsg::FileStat(brood_proto::FileStat {
                kind: brood_proto::FileKind::File,
                size: data.len() as u64,
                mode: 0o644,
            }),
        },
        // Interactive sessions need a real guest (brood-e2e tests them).
        HostMsg::Session(_)
        | HostMsg::SessionInput { .. }
        | HostMsg::SessionResize { .. }
        | HostMsg::SessionSignal { .. } => GuestMsg::Error(AgentError::new(
            ErrorKind::Unsupported,
            "the fake agent runs no interactive sessions",
        )),
        HostMsg::SetHostname { hostname } => {
            lock(&model.guest).hostname = hostname;
            GuestMsg::Ok
        }
        HostMsg::PowerOff => {
            send(tx, id, &GuestMsg::Ok);
            model.exit(ExitKind::Poweroff);
            return;
        }
        HostMsg::Info => {
            let g = lock(&model.guest);
            GuestMsg::Info(AgentInfo {
                agent_version: "fake".into(),
                proto_version: brood_proto::PROTOCOL_VERSION,
                hostname: g.hostname.clone(),
                kernel_release: "fake".into(),
                uptime_ms: 1,
                cpus: model.spec.vcpus,
                mem_total_kib: model.spec.mem_mib * 1024,
                mem_available_kib: model.spec.mem_mib * 512,
            })
        }
        HostMsg::AnswerPoint { seq, .. } => {
            let mut g = lock(&model.guest);
            if g.fork_point == Some(seq) {
                g.fork_point = None;
                GuestMsg::Ok
            } else {
                no_point(seq)
            }
        }
        HostMsg::PrepareFork => {
            if let Some(m) = lock(&shared.prepare_failure).clone() {
                GuestMsg::Error(AgentError::new(ErrorKind::Io, m))
            } else {
                let mut g = lock(&model.guest);
                let seq = g.next_seq;
                g.next_seq += 1;
                g.fork_point = Some(seq);
                GuestMsg::AtForkPoint {
                    seq,
                    services: Vec::new(),
                }
            }
        }
        HostMsg::CompleteFork { seq, config } => complete_fork(shared, model, seq, config).await,
        HostMsg::WarmFork { seq } => {
            let mut g = lock(&model.guest);
            if g.fork_point == Some(seq) {
                g.warmed += 1;
                GuestMsg::Ok
            } else {
                no_point(seq)
            }
        }
    };
    send(tx, id, &reply);
}

fn no_point(seq: u32) -> GuestMsg {
    GuestMsg::Error(AgentError::new(
        ErrorKind::NoSuchPoint,
        format!("nothing waits at fork point {seq}"),
    ))
}

async fn complete_fork(
    shared: &Shared,
    model: &VmModel,
    seq: u32,
    config: brood_proto::ChildConfig,
) -> GuestMsg {
    if lock(&model.guest).fork_point != Some(seq) {
        return no_point(seq);
    }
    let identity = lock(&model.guest)
        .identity
        .clone()
        .unwrap_or_else(|| lock(&shared.identity).clone());
    match identity {
        Identity::Never => std::future::pending().await,
        Identity::Delay(d) => tokio::time::sleep(d).await,
        Identity::Fail(why) => {
            return GuestMsg::ForkDone(ForkReport {
                services: vec![ServiceResult {
                    name: "50-identity".into(),
                    code: Some(1),
                    output: why.clone(),
                    duration_ms: 1,
                }],
                failed: Some(format!("service 50-identity failed: {why}")),
                uptime_ms: 2,
            });
        }
        Identity::Apply if shared.mode == Mode::Explicit => model.identity_go.notified().await,
        Identity::Apply => {}
    }
    let mut g = lock(&model.guest);
    g.fork_point = None;
    g.hostname = config.hostname.clone();
    let child = serde_json::json!({
        "index": config.index,
        "hostname": config.hostname,
        "identity": config.identity,
        "machine_id": config.machine_id,
        "values": config.values.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    g.files.insert(
        "/etc/brood/child.json".into(),
        serde_json::to_vec(&child).unwrap_or_default(),
    );
    g.files.insert(
        "/etc/machine-id".into(),
        format!("{}\n", config.machine_id).into_bytes(),
    );
    g.child = Some(config);
    drop(g);
    model.console("fake: child identity applied");
    GuestMsg::ForkDone(ForkReport {
        services: Vec::new(),
        failed: None,
        uptime_ms: 2,
    })
}

/// The default answers of exec, for commands no rule scripted.
fn default_exec(model: &VmModel, cmd: &str) -> ExecReply {
    let cmd = cmd.trim();
    if let Some(code) = cmd.strip_prefix("exit ") {
        return ExecReply {
            code: code.trim().parse().unwrap_or(2),
            ..ExecReply::default()
        };
    }
    if let Some(text) = cmd.strip_prefix("echo ") {
        return ExecReply {
            stdout: format!("{text}\n").into_bytes(),
            ..ExecReply::default()
        };
    }
    if cmd == "hostname" {
        return ExecReply {
            stdout: format!("{}\n", lock(&model.guest).hostname).into_bytes(),
            ..ExecReply::default()
        };
    }
    if let Some(path) = cmd.strip_prefix("cat ") {
        return match lock(&model.guest).files.get(path.trim()) {
            Some(d) => ExecReply {
                stdout: d.clone(),
                ..ExecReply::default()
            },
            None => ExecReply {
                stderr: format!("cat: {path}: No such file or directory\n").into_bytes(),
                code: 1,
                ..ExecReply::default()
            },
        };
    }
    ExecReply::default()
}

fn exec(
    shared: &Shared,
    model: &VmModel,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    id: u32,
    req: &ExecRequest,
) {
    let text = match &req.command {
        Command::Shell(s) => s.clone(),
        Command::Argv(v) => v.join(" "),
    };
    lock(&model.guest).execs.push(text.clone());
    let rule = lock(&shared.exec_rule).clone();
    let reply = rule
        .and_then(|r| r(&model.name, &text))
        .unwrap_or_else(|| default_exec(model, &text));
    if let Some(e) = reply.agent_error {
        send(tx, id, &GuestMsg::Error(AgentError::new(ErrorKind::Io, e)));
        return;
    }
    let limit = usize::try_from(req.output_limit).unwrap_or(usize::MAX);
    for (stream, data) in [
        (Stream::Stdout, &reply.stdout),
        (Stream::Stderr, &reply.stderr),
    ] {
        let kept = data.get(..limit.min(data.len())).unwrap_or_default();
        for chunk in kept.chunks(OUTPUT_CHUNK) {
            send(
                tx,
                id,
                &GuestMsg::Output {
                    stream,
                    data: ByteBuf::from(chunk.to_vec()),
                },
            );
        }
    }
    send(
        tx,
        id,
        &GuestMsg::Exited(ExecStatus {
            code: Some(reply.code),
            signal: None,
            timed_out: false,
            stdout_len: reply.stdout.len() as u64,
            stderr_len: reply.stderr.len() as u64,
            stdout_truncated: reply.stdout.len() > limit,
            stderr_truncated: reply.stderr.len() > limit,
        }),
    );
}
