//! `brood vm exec`: runs one shell command in a partition through broodd,
//! writes its output bytes unchanged to stdout and stderr as they arrive
//! (broodd streams them as NDJSON lines), and exits with its exit code.
//! Running the command (agent, timeouts, output limits) is broodd's; when
//! brood goes away (Ctrl-C), broodd kills the command.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use brood_api::{ExecChunk, ExecRequest, ExecResponse};
use clap::Args;
use http_body_util::BodyExt;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{CommandResult, Ending, print_json};

/// How long broodd waits for the guest agent when `--ready-timeout` is not given.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed beyond the command's and the agent's own timeouts.
const EXEC_SLACK: Duration = Duration::from_secs(30);

/// Arguments of `brood vm exec`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood vm exec web 'cat /proc/version'
  brood vm exec web 'ls -l /data' --timeout 10
  brood vm exec web 'env' --env MODE=test --env DEBUG=1
  tar c ./site | brood vm exec web 'tar x -C /srv' --stdin
  brood vm exec -t web              # a shell on a terminal (exit or Ctrl-D ends it)
  brood vm exec -t web top

Exit status: the command's exit code (128+N when a signal N ended it, 124
when --timeout killed it); 125 when brood or broodd failed. With -o json
the result is printed in `brood run -o json`'s shape (exit_code, signal,
timed_out, stdout and stderr as text and as base64) and the exit status is
the same.
Without --timeout brood waits as long as the command runs.")]
pub struct ExecArgs {
    /// Partition name or uuid.
    name: String,
    /// Shell command, run with /bin/sh -c in the guest (with -t: a login shell when left out).
    #[arg(value_name = "SHELL COMMAND", required_unless_present = "tty")]
    command: Option<String>,
    /// Run it on a terminal (a pseudo-terminal in the guest; this terminal
    /// in raw mode, its size followed), as `ssh -t` or `docker exec -it`.
    #[arg(short = 't', long)]
    tty: bool,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// An environment variable for the command, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Stream brood's stdin to the command (any size).
    #[arg(long)]
    stdin: bool,
    /// How long broodd waits for the guest agent to be ready [default: 60].
    #[arg(long, value_name = "SECS")]
    ready_timeout: Option<u64>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: use K=V")),
    }
}

/// The exit code `brood vm exec` passes on: the command's own, 124 when its
/// timeout killed it, 128+N when signal N ended it, 125 when broodd says neither.
pub fn exit_code(r: &ExecResponse) -> i32 {
    code_of(r.timed_out, r.exit_code, r.signal)
}

/// broodd's answer in the shape `brood run -o json` prints.
fn result_of(r: &ExecResponse) -> Result<CommandResult> {
    let decode = |what: &str, b: &str| {
        BASE64
            .decode(b)
            .with_context(|| format!("broodd sent {what} that is not base64"))
    };
    let end = Ending {
        exit_code: exit_code(r),
        signal: r.signal,
        timed_out: r.timed_out,
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
    };
    Ok(CommandResult::new(
        end,
        &decode("stdout", &r.stdout_base64)?,
        &decode("stderr", &r.stderr_base64)?,
    ))
}

fn code_of(timed_out: bool, exit_code: Option<i32>, signal: Option<i32>) -> i32 {
    match (timed_out, exit_code, signal) {
        (true, _, _) => 124,
        (false, Some(c), _) => c,
        (false, None, Some(s)) => 128_i32.saturating_add(s),
        (false, None, None) => 125,
    }
}

/// How long brood waits for broodd's answer: `None` (no deadline) when the
/// command itself has none.
fn deadline(args: &ExecArgs) -> Option<Duration> {
    let ready = args
        .ready_timeout
        .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs);
    args.timeout
        .map(|t| Duration::from_secs(t) + ready + EXEC_SLACK)
}

fn request(args: &ExecArgs, stdin: Option<&[u8]>) -> ExecRequest {
    ExecRequest {
        command: args.command.clone(),
        argv: None,
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        stdin_base64: stdin.map(|b| BASE64.encode(b)),
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
        ready_timeout_ms: args.ready_timeout.map(|s| s.saturating_mul(1000)),
    }
}

/// Runs `brood vm exec`; returns the command's exit code.
pub async fn run(args: ExecArgs, client: &Client, out: Output) -> Result<i32> {
    if args.tty || args.stdin {
        let req = brood_api::attach::SessionRequest {
            command: args.command.clone(),
            argv: None,
            env: args.env.iter().cloned().collect(),
            tty: None,
            timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
            ready_timeout_ms: args.ready_timeout.map(|s| s.saturating_mul(1000)),
        };
        return crate::console::exec_attached(client, &args.name, req, args.tty, out).await;
    }
    let path = format!("/v1/partitions/{}/exec", encode(&args.name));
    // Stdin goes through the attached path above; this one sends none.
    let req = request(&args, None);
    if out == Output::Json {
        let resp: ExecResponse = client.post_within(&path, &req, deadline(&args)).await?;
        let result = result_of(&resp)?;
        print_json(&result)?;
        return Ok(result.exit_code);
    }
    let streamed = format!("{path}?stream=true");
    let work = stream_exec(&args, client, &streamed, &req);
    match deadline(&args) {
        None => work.await,
        Some(after) => tokio::time::timeout(after, work).await.with_context(|| {
            format!("broodd did not report the end of the command within {after:?}")
        })?,
    }
}

/// Runs the command with a streamed answer, writing its output as it comes.
async fn stream_exec(
    args: &ExecArgs,
    client: &Client,
    path: &str,
    req: &ExecRequest,
) -> Result<i32> {
    let ready = args
        .ready_timeout
        .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs);
    let mut body = client.post_stream(path, req, ready + EXEC_SLACK).await?;
    let mut lines = LineSplitter::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("read the command's output from broodd")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for line in lines.push(data)? {
            let chunk: ExecChunk = serde_json::from_slice(&line)
                .context("broodd sent an exec line that is not an ExecChunk")?;
            if let Some(code) = show(chunk, args)? {
                return Ok(code);
            }
        }
    }
    bail!("broodd closed the stream before the command ended")
}

/// Writes one chunk; returns the exit code once the command ended.
fn show(chunk: ExecChunk, args: &ExecArgs) -> Result<Option<i32>> {
    match chunk {
        ExecChunk::Stdout { stdout_base64 } => {
            let b = BASE64
                .decode(stdout_base64)
                .context("decode the command's stdout")?;
            write_all(&mut std::io::stdout().lock(), &b).context("write stdout")?;
            Ok(None)
        }
        ExecChunk::Stderr { stderr_base64 } => {
            let b = BASE64
                .decode(stderr_base64)
                .context("decode the command's stderr")?;
            write_all(&mut std::io::stderr().lock(), &b).context("write stderr")?;
            Ok(None)
        }
        ExecChunk::Error { error } => bail!("{}", error.message),
        ExecChunk::End(end) => {
            for (cut, name) in [
                (end.stdout_truncated, "stdout"),
                (end.stderr_truncated, "stderr"),
            ] {
                if cut {
                    eprintln!("brood: the command's {name} was cut at broodd's output limit");
                }
            }
            if end.timed_out {
                eprintln!(
                    "brood: the command was killed after {}s",
                    args.timeout.unwrap_or(0)
                );
            }
            Ok(Some(code_of(end.timed_out, end.exit_code, end.signal)))
        }
    }
}

/// Splits a byte stream into lines, refusing one longer than [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

/// Longest exec line accepted (a 64 KiB chunk is about 88 KiB of base64).
const MAX_LINE: usize = 1 << 20;

impl LineSplitter {
    /// Feeds bytes; returns every line they complete, without its newline.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.buf.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        if self.buf.len() > MAX_LINE {
            bail!("a line from broodd is longer than {MAX_LINE} bytes");
        }
        Ok(lines)
    }
}

fn write_all(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(exit: Option<i32>, signal: Option<i32>, timed_out: bool) -> ExecResponse {
        ExecResponse {
            exit_code: exit,
            signal,
            timed_out,
            stdout_base64: String::new(),
            stderr_base64: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&resp(Some(0), None, false)), 0);
        assert_eq!(exit_code(&resp(Some(3), None, false)), 3);
        assert_eq!(exit_code(&resp(None, Some(9), false)), 137);
        assert_eq!(exit_code(&resp(None, Some(9), true)), 124);
        assert_eq!(exit_code(&resp(Some(0), None, true)), 124);
        assert_eq!(exit_code(&resp(None, None, false)), 125);
    }

    #[test]
    fn json_result_has_the_shape_of_brood_run() {
        let mut r = resp(None, Some(9), false);
        r.stdout_base64 = "/2hpCg==".into(); // 0xff "hi\n"
        let v = serde_json::to_value(result_of(&r).unwrap()).unwrap();
        assert_eq!(v["exit_code"], 137);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["stdout"], "\u{fffd}hi\n");
        assert_eq!(v["stdout_base64"], "/2hpCg==");
        assert_eq!(v["stderr"], "");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "exit_code",
                "signal",
                "stderr",
                "stderr_base64",
                "stderr_truncated",
                "stdout",
                "stdout_base64",
                "stdout_truncated",
                "timed_out"
            ]
        );
        r.stderr_base64 = "not base64!".into();
        assert!(result_of(&r).is_err());
    }

    #[test]
    fn env_flags() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn request_and_deadline() {
        let mut args = ExecArgs {
            name: "web".into(),
            command: Some("true".into()),
            tty: false,
            timeout: None,
            env: vec![("K".into(), "V".into())],
            stdin: true,
            ready_timeout: None,
        };
        assert_eq!(deadline(&args), None);
        let req = request(&args, Some(b"hi"));
        assert_eq!(req.command.as_deref(), Some("true"));
        assert_eq!(req.env["K"], "V");
        assert_eq!(req.stdin_base64.as_deref(), Some("aGk="));
        assert_eq!(req.timeout_ms, None);
        args.timeout = Some(5);
        args.ready_timeout = Some(10);
        assert_eq!(deadline(&args), Some(Duration::from_secs(45)));
        let req = request(&args, None);
        assert_eq!(
            (req.timeout_ms, req.ready_timeout_ms),
            (Some(5000), Some(10_000))
        );
        assert!(req.stdin_base64.is_none());
    }
}
