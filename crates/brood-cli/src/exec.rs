//! `brood vm exec`: runs one shell command in a partition through broodd,
//! writes its output bytes unchanged to stdout and stderr, and exits with
//! its exit code. Running the command (agent, timeouts, output limits) is
//! broodd's.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use brood_api::{ExecRequest, ExecResponse};
use clap::Args;
use tokio::io::AsyncReadExt;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::print_json;

/// How long broodd waits for the guest agent when `--ready-timeout` is not given.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed beyond the command's and the agent's own timeouts.
const EXEC_SLACK: Duration = Duration::from_secs(30);
/// Most stdin sent: base64 grows it by a third and the body must stay
/// under broodd's limit ([`brood_api::MAX_BODY_BYTES`]), with room for the rest.
const MAX_STDIN_BYTES: usize = (brood_api::MAX_BODY_BYTES - 16 * 1024) / 4 * 3;

/// Arguments of `brood vm exec`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood vm exec web 'cat /proc/version'
  brood vm exec web 'ls -l /data' --timeout 10
  brood vm exec web 'env' --env MODE=test --env DEBUG=1
  tar c ./site | brood vm exec web 'tar x -C /srv' --stdin

Exit status: the command's exit code (128+N when a signal N ended it, 124
when --timeout killed it); 125 when brood or broodd failed. With -o json
broodd's result is printed (output in base64) and the exit status is the same.
Without --timeout brood waits as long as the command runs.")]
pub struct ExecArgs {
    /// Partition name or uuid.
    name: String,
    /// Shell command, run with /bin/sh -c in the guest.
    #[arg(value_name = "SHELL COMMAND")]
    command: String,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// An environment variable for the command, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Send brood's stdin to the command (at most about 760 KiB).
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
    match (r.timed_out, r.exit_code, r.signal) {
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
        command: Some(args.command.clone()),
        argv: None,
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        stdin_base64: stdin.map(|b| BASE64.encode(b)),
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
        ready_timeout_ms: args.ready_timeout.map(|s| s.saturating_mul(1000)),
    }
}

/// Runs `brood vm exec`; returns the command's exit code.
pub async fn run(args: ExecArgs, client: &Client, out: Output) -> Result<i32> {
    let stdin = if args.stdin {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .take(u64::try_from(MAX_STDIN_BYTES).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut buf)
            .await
            .context("read stdin")?;
        if buf.len() > MAX_STDIN_BYTES {
            bail!(
                "stdin is larger than the {MAX_STDIN_BYTES} bytes `brood vm exec --stdin` can send"
            );
        }
        Some(buf)
    } else {
        None
    };
    let path = format!("/v1/partitions/{}/exec", encode(&args.name));
    let resp: ExecResponse = client
        .post_within(&path, &request(&args, stdin.as_deref()), deadline(&args))
        .await?;
    let code = exit_code(&resp);
    if out == Output::Json {
        print_json(&resp)?;
        return Ok(code);
    }
    let stdout = BASE64
        .decode(&resp.stdout_base64)
        .context("decode the command's stdout")?;
    let stderr = BASE64
        .decode(&resp.stderr_base64)
        .context("decode the command's stderr")?;
    write_all(&mut std::io::stdout().lock(), &stdout).context("write stdout")?;
    write_all(&mut std::io::stderr().lock(), &stderr).context("write stderr")?;
    for (cut, name) in [
        (resp.stdout_truncated, "stdout"),
        (resp.stderr_truncated, "stderr"),
    ] {
        if cut {
            eprintln!("brood: the command's {name} was cut at broodd's output limit");
        }
    }
    if resp.timed_out {
        eprintln!(
            "brood: the command was killed after {}s",
            args.timeout.unwrap_or(0)
        );
    }
    Ok(code)
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
            command: "true".into(),
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
