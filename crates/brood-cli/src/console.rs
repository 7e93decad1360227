//! Attached commands: `brood vm console NAME` typed into the serial
//! console (detach with Ctrl-], as with `virsh console`), `brood vm exec -t`
//! (a terminal through the guest agent: raw mode here, window size changes
//! forwarded, exit code returned) and `brood vm exec --stdin` (stdin
//! streamed, any size). Each is an HTTP upgrade to broodd carrying
//! `brood_api::attach` frames; broodd and the agent do the rest.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use brood_api::attach::{self, ATTACH_PROTOCOL, SessionRequest, TermSize};
use brood_api::{ErrorDetail, ExecEnd, ExecResponse};
use http_body_util::Full;
use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper_util::rt::TokioIo;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Output;
use crate::client::{Client, decode_error, encode};
use crate::render::print_json;

/// The detach key: Ctrl-] (GS), as in virsh and telnet.
pub const DETACH_KEY: u8 = 0x1d;

/// Opens an attached connection to `path`.
async fn attach(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
    let what = format!("{method} {path}");
    let mut b = client
        .builder(method, path)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, ATTACH_PROTOCOL);
    if body.is_some() {
        b = b.header(CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("{what}: build the request"))?;
    let resp = client.one_shot(req).await?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(decode_error(&what, status, &bytes).into());
    }
    let io = hyper::upgrade::on(resp)
        .await
        .with_context(|| format!("{what}: take over the connection"))?;
    Ok(TokioIo::new(io))
}

/// The terminal in raw mode until dropped (then as it was).
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is no terminal.
    fn enter() -> Result<Option<Self>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd()).context("read the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("put the terminal in raw mode")?;
        Ok(Some(Self { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(
    /// TIOCGWINSZ: reads a terminal's size.
    tiocgwinsz,
    nix::libc::TIOCGWINSZ,
    nix::libc::winsize
);

/// The size of the terminal on stdout (or stdin), if there is one.
fn term_size() -> Option<TermSize> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    for fd in [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()] {
        // SAFETY: TIOCGWINSZ writes one `winsize` through a pointer to `ws`,
        // valid for the call; a descriptor that is no terminal fails.
        if unsafe { tiocgwinsz(fd, &mut ws) }.is_ok() && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some(TermSize {
                rows: ws.ws_row.min(1000),
                cols: ws.ws_col.min(1000),
            });
        }
    }
    None
}

fn resize_frame(t: TermSize) -> Vec<u8> {
    let mut p = t.rows.to_be_bytes().to_vec();
    p.extend_from_slice(&t.cols.to_be_bytes());
    attach::frame(attach::RESIZE, &p)
}

/// `brood vm console NAME` attached: what is typed goes to the guest's
/// serial port until Ctrl-]; returns when detached or the VM ends.
pub async fn console(client: &Client, name: &str) -> Result<i32> {
    let path = format!("/v1/partitions/{}/console/attach", encode(name));
    let io = attach(client, Method::GET, &path, None).await?;
    let raw = RawMode::enter()?;
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    eprint!("brood: attached to the console of {name}; detach with Ctrl-]{nl}");
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut stdin = stdin_chunks(4096);
    let typing = async {
        loop {
            let Some(data) = stdin.recv().await else {
                return "stdin ended";
            };
            let data = data.as_slice();
            let (send, detach) = match data.iter().position(|b| *b == DETACH_KEY) {
                Some(i) => (data.get(..i).unwrap_or_default(), true),
                None => (data, false),
            };
            if !send.is_empty()
                && wr
                    .write_all(&attach::frame(attach::STDIN, send))
                    .await
                    .is_err()
            {
                return "broodd closed the console";
            }
            if detach {
                return "detached";
            }
        }
    };
    let showing = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut stdout = tokio::io::stdout();
        loop {
            while let Ok(Some((kind, payload))) = attach::take_frame(&mut buf) {
                if kind == attach::STDOUT {
                    let _ = stdout.write_all(&payload).await;
                    let _ = stdout.flush().await;
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return "the VM ended",
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    let why = tokio::select! {
        w = typing => w,
        w = showing => w,
    };
    drop(raw);
    eprintln!("\nbrood: {why} (console of {name})");
    Ok(0)
}

/// What ends an attached command.
enum End {
    Exit(ExecEnd),
    Error(ErrorDetail),
    Closed,
}

/// `brood vm exec -t` and `brood vm exec --stdin`: runs `req` attached;
/// returns its exit code (as `brood vm exec` does).
pub async fn exec_attached(
    client: &Client,
    name: &str,
    mut req: SessionRequest,
    tty: bool,
    out: Output,
) -> Result<i32> {
    if tty {
        req.tty = Some(term_size().unwrap_or(TermSize { rows: 24, cols: 80 }));
        if req.command.is_none() && req.argv.is_none() {
            req.argv = Some(vec!["/bin/sh".into(), "-l".into()]);
        }
        req.env
            .entry("TERM".into())
            .or_insert_with(|| std::env::var("TERM").unwrap_or_else(|_| "xterm".into()));
    } else if req.command.is_none() && req.argv.is_none() {
        bail!("give the command to run (or -t for a shell)");
    }
    let path = format!("/v1/partitions/{}/session", encode(name));
    let body = serde_json::to_vec(&req).context("encode the request")?;
    let io = attach(client, Method::POST, &path, Some(body)).await?;
    let raw = if tty { RawMode::enter()? } else { None };
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let feeder = tokio::spawn(feed_stdin(tx.clone()));
    let signals = tokio::spawn(forward_signals(tx, tty, raw.is_some()));
    let json = out == Output::Json;
    let (mut stdout_buf, mut stderr_buf) = (Vec::new(), Vec::new());
    let end = {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        'read: loop {
            loop {
                let (kind, payload) = match attach::take_frame(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => bail!("broodd: {e}"),
                };
                match kind {
                    attach::STDOUT if json => stdout_buf.extend_from_slice(&payload),
                    attach::STDERR if json => stderr_buf.extend_from_slice(&payload),
                    attach::STDOUT => {
                        let _ = stdout.write_all(&payload).await;
                        let _ = stdout.flush().await;
                    }
                    attach::STDERR => {
                        let _ = stderr.write_all(&payload).await;
                    }
                    attach::EXIT => {
                        break 'read End::Exit(
                            serde_json::from_slice(&payload).context("decode the command's end")?,
                        );
                    }
                    attach::ERROR => {
                        break 'read End::Error(
                            serde_json::from_slice(&payload).context("decode broodd's error")?,
                        );
                    }
                    _ => {}
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break End::Closed,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    feeder.abort();
    signals.abort();
    writer.abort();
    drop(raw);
    let end = match end {
        End::Exit(e) => e,
        End::Error(e) => bail!("{}", e.message),
        End::Closed => bail!("broodd closed the connection before the command ended"),
    };
    if json {
        let resp = ExecResponse {
            exit_code: end.exit_code,
            signal: end.signal,
            timed_out: end.timed_out,
            stdout_base64: BASE64.encode(&stdout_buf),
            stderr_base64: BASE64.encode(&stderr_buf),
            stdout_truncated: end.stdout_truncated,
            stderr_truncated: end.stderr_truncated,
        };
        print_json(&resp)?;
        return Ok(crate::exec::exit_code(&resp));
    }
    let _ = std::io::stdout().flush();
    Ok(match (end.timed_out, end.exit_code, end.signal) {
        (true, _, _) => 124,
        (false, Some(c), _) => c,
        (false, None, Some(s)) => 128_i32.saturating_add(s),
        (false, None, None) => 125,
    })
}

/// Sends stdin as `STDIN` frames, then `EOF` at its end. Each frame waits
/// for room in the queue, so a guest that reads slowly slows the reading here.
async fn feed_stdin(tx: mpsc::Sender<Vec<u8>>) {
    let mut stdin = stdin_chunks(256 * 1024);
    while let Some(data) = stdin.recv().await {
        if tx.send(attach::frame(attach::STDIN, &data)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(attach::frame(attach::EOF, &[])).await;
}

/// Reads stdin on a thread of its own, `max` bytes at most per chunk; the
/// channel ends with stdin. Not tokio's stdin: its read runs on the blocking
/// pool, which the runtime waits for at the end, so brood would not exit
/// before the user pressed another key. This thread dies with the process.
fn stdin_chunks(max: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; max];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = buf.get(..n).unwrap_or_default().to_vec();
                        if tx.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("read stdin: start a thread: {e}");
    }
    rx
}

/// Forwards window size changes (with a terminal) and, when the terminal
/// is not raw, SIGINT, SIGTERM and SIGHUP to the command's process group.
async fn forward_signals(tx: mpsc::Sender<Vec<u8>>, tty: bool, raw: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::window_change(), 0_i32),
        (SignalKind::interrupt(), nix::libc::SIGINT),
        (SignalKind::terminate(), nix::libc::SIGTERM),
        (SignalKind::hangup(), nix::libc::SIGHUP),
    ];
    let mut streams = Vec::new();
    for (kind, n) in kinds {
        // In raw mode Ctrl-C is a byte for the guest's terminal, not a signal here.
        if (n == 0 && !tty) || (n != 0 && raw) {
            continue;
        }
        if let Ok(s) = signal(kind) {
            streams.push((s, n));
        }
    }
    if streams.is_empty() {
        return;
    }
    loop {
        let recvs = streams.iter_mut().map(|(s, n)| {
            let n = *n;
            Box::pin(async move { s.recv().await.map(|()| n) })
        });
        let Some(n) = first_of(recvs).await else {
            return;
        };
        let frame = if n == 0 {
            match term_size() {
                Some(t) => resize_frame(t),
                None => continue,
            }
        } else {
            attach::frame(attach::SIGNAL, &n.to_be_bytes())
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// What the first of several futures to finish returns (a small `select_all`).
async fn first_of<F, T>(futs: impl IntoIterator<Item = F>) -> T
where
    F: std::future::Future<Output = T> + Unpin,
{
    let mut futs: Vec<F> = futs.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futs {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The guest's answer to the ssh probe: whether it has sshd, then its
/// global IPv4 addresses (`ip -4 -o addr`).
const SSH_PROBE: &str = "if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; \
     then echo sshd=yes; else echo sshd=no; fi; ip -4 -o addr show scope global 2>/dev/null";

/// The first global IPv4 address in `ip -4 -o addr` output.
fn first_ipv4(text: &str) -> Option<std::net::Ipv4Addr> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// `brood vm ssh NAME`: runs ssh to the guest's address when its image has
/// sshd, and says so plainly when it has not.
pub async fn ssh(client: &Client, name: &str, user: &str, args: &[String]) -> Result<i32> {
    let path = format!("/v1/partitions/{}/exec", encode(name));
    let req = brood_api::ExecRequest {
        command: Some(SSH_PROBE.into()),
        argv: None,
        env: Default::default(),
        stdin_base64: None,
        timeout_ms: Some(30_000),
        ready_timeout_ms: None,
    };
    let resp: ExecResponse = client
        .post_within(&path, &req, Some(std::time::Duration::from_secs(120)))
        .await?;
    let out = BASE64.decode(&resp.stdout_base64).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    if !text.lines().any(|l| l == "sshd=yes") {
        bail!(
            "{name}'s image has no sshd (the default guest has none): use `brood vm exec -t {name}` \
             for a shell, or boot an image with openssh-server"
        );
    }
    let Some(addr) = first_ipv4(&text) else {
        bail!(
            "{name} has sshd but no global IPv4 address to reach it at: give it a NIC on a \
             network this host reaches (`--nic bridge=...`), or use `brood vm exec -t {name}`"
        );
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("ssh")
        .arg(format!("{user}@{addr}"))
        .args(args)
        .exec();
    Err(err).context("run ssh (is openssh-client installed?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_probe_finds_the_first_global_address() {
        let text = "sshd=yes\n2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n";
        assert_eq!(first_ipv4(text), Some(std::net::Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(first_ipv4("sshd=yes\n"), None);
    }

    #[test]
    fn resize_frames_carry_rows_then_columns() {
        let mut f = resize_frame(TermSize {
            rows: 40,
            cols: 132,
        });
        let (kind, p) = attach::take_frame(&mut f).unwrap().unwrap();
        assert_eq!((kind, p), (attach::RESIZE, vec![0, 40, 0, 132]));
    }
}
