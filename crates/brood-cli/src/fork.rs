//! `brood fork`: forks children from a template (`POST
//! /v1/templates/{name}/fork`), prints their names, and reports the children
//! that failed. Starting the children, handing out identities and running
//! their services is broodd's; this module checks the flags' syntax only.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use brood_api::{ChildStatus, ForkChild, ForkRequest, ForkResponse};
use clap::Args;

use crate::Output;
use crate::client::{Client, REQUEST_TIMEOUT, encode};

/// Time allowed per child on top of [`REQUEST_TIMEOUT`]: broodd answers
/// once every child is ready, which takes longer the more there are.
const FORK_TIME_PER_CHILD: Duration = Duration::from_secs(2);

/// Longest `--set` key.
const MAX_KEY_CHARS: usize = 64;

/// Arguments of `brood fork`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood fork web
  brood fork web -n 10 --identity-pool hosts --ip-pool lan
  brood fork web -n 3 --set role=worker --set cluster.id=7 --persistent
  brood fork web -n 50 --no-wait -o json | jq -r '.[].name'

Prints the children's names, one a line (with -o json, the list of children).
Exit status: 0 when every child is ready (or pending with --no-wait), 1 when
one failed (each failure is named on stderr), 125 when brood or broodd failed.")]
pub struct ForkArgs {
    /// The template to fork from.
    template: String,
    /// How many children [broodd allows 1-256].
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1)]
    count: u32,
    /// Take each child's domain identity from this pool.
    #[arg(long, value_name = "POOL")]
    identity_pool: Option<String>,
    /// Take each child's IPv4 address from this pool (kind ipv4).
    #[arg(long, value_name = "POOL")]
    ip_pool: Option<String>,
    /// A value handed to every child's services, KEY=VALUE; KEY is 1-64 of
    /// [A-Za-z0-9_.-] (repeatable; a later KEY replaces an earlier one).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    values: Vec<(String, String)>,
    /// Keep each child's disk overlay across stop and start (otherwise every
    /// start forks afresh from the template).
    #[arg(long)]
    persistent: bool,
    /// Return once the children are recorded, without waiting until they are ready.
    #[arg(long)]
    no_wait: bool,
    /// Memory in MiB each child is charged for what it adds to the template's
    /// [default: a quarter of the template's memory].
    #[arg(long = "charge", value_name = "MIB")]
    charge_mib: Option<u64>,
}

/// Parses `--set KEY=VALUE`; the value may be empty or hold `=`.
pub fn parse_set(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use KEY=VALUE"))?;
    let valid = (1..=MAX_KEY_CHARS).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        return Err(format!(
            "{s:?}: the key {key:?} must be 1-{MAX_KEY_CHARS} characters of \
             A-Z, a-z, 0-9, '_', '.' and '-'"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

fn request(args: &ForkArgs) -> ForkRequest {
    ForkRequest {
        count: args.count,
        identity_pool: args.identity_pool.clone(),
        ip_pool: args.ip_pool.clone(),
        values: args.values.iter().cloned().collect::<BTreeMap<_, _>>(),
        persistent: args.persistent,
        wait: !args.no_wait,
        charge_mib: args.charge_mib,
    }
}

/// How long brood waits for broodd's answer to a fork of `count` children.
fn deadline(count: u32) -> Duration {
    REQUEST_TIMEOUT.saturating_add(FORK_TIME_PER_CHILD.saturating_mul(count))
}

/// What `brood fork` prints on stdout and stderr, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The names one a line, or the JSON array of children.
    pub stdout: String,
    /// One line per failed child.
    pub stderr: String,
    /// 1 when a child failed, else 0.
    pub code: i32,
}

/// The report on forked children.
pub fn report(children: &[ForkChild], out: Output) -> Result<Report> {
    let stdout = match out {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(children)?),
        Output::Text => children.iter().map(|c| format!("{}\n", c.name)).collect(),
    };
    let stderr: String = children
        .iter()
        .filter(|c| c.status == ChildStatus::Failed)
        .map(|c| {
            let error = c.error.as_deref().unwrap_or("broodd gave no reason");
            format!("brood: child {} failed: {error}\n", c.name)
        })
        .collect();
    let code = if stderr.is_empty() { 0 } else { 1 };
    Ok(Report {
        stdout,
        stderr,
        code,
    })
}

/// Runs `brood fork`; returns 1 when a child failed.
pub async fn run(args: ForkArgs, client: &Client, out: Output) -> Result<i32> {
    let path = format!("/v1/templates/{}/fork", encode(&args.template));
    let resp: ForkResponse = client
        .post_within(&path, &request(&args), Some(deadline(args.count)))
        .await?;
    let r = report(&resp.children, out)?;
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    Ok(r.code)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ForkArgs,
    }

    fn child(name: &str, index: u32, status: ChildStatus, error: Option<&str>) -> ForkChild {
        ForkChild {
            name: name.into(),
            uuid: uuid::Uuid::from_u128(u128::from(index)),
            index,
            status,
            error: error.map(Into::into),
            mac: Some(format!("52:54:00:00:00:{index:02x}")),
            ipv4: None,
            identity: None,
            persistent: false,
            running_ms: Some(40.0),
            ready_ms: Some(90.5),
            charge_mib: None,
        }
    }

    #[test]
    fn set_flags() {
        assert_eq!(
            parse_set("role=worker").unwrap(),
            ("role".into(), "worker".into())
        );
        assert_eq!(
            parse_set("a.B-c_9=x=y").unwrap(),
            ("a.B-c_9".into(), "x=y".into())
        );
        assert_eq!(parse_set("k=").unwrap(), ("k".into(), String::new()));
        assert!(parse_set(&format!("{}=v", "k".repeat(64))).is_ok());
        assert!(parse_set("role").unwrap_err().contains("KEY=VALUE"));
        for bad in ["=v", "a b=v", "a/b=v", "é=v", "k:1=v"] {
            let e = parse_set(bad).unwrap_err();
            assert!(e.contains("1-64 characters"), "{bad:?}: {e}");
        }
        assert!(parse_set(&format!("{}=v", "k".repeat(65))).is_err());
    }

    #[test]
    fn flags_make_the_request() {
        let cli = Cli::try_parse_from([
            "fork",
            "web",
            "-n",
            "3",
            "--identity-pool",
            "hosts",
            "--set",
            "role=db",
            "--set",
            "role=web",
            "--set",
            "zone=a",
            "--no-wait",
            "--charge",
            "64",
        ])
        .unwrap();
        let req = request(&cli.args);
        assert_eq!(req.count, 3);
        assert_eq!(req.identity_pool.as_deref(), Some("hosts"));
        assert_eq!(req.ip_pool, None);
        assert_eq!(
            req.values,
            BTreeMap::from([("role".into(), "web".into()), ("zone".into(), "a".into())])
        );
        assert!(!req.persistent);
        assert!(!req.wait);
        assert_eq!(req.charge_mib, Some(64));

        let req = request(&Cli::try_parse_from(["fork", "web"]).unwrap().args);
        assert_eq!((req.count, req.wait, req.persistent), (1, true, false));
        assert!(req.values.is_empty());

        let e = Cli::try_parse_from(["fork", "web", "--set", "bad key=1"]).unwrap_err();
        assert!(e.to_string().contains("1-64 characters"), "{e}");
    }

    #[test]
    fn deadline_grows_with_the_count() {
        assert_eq!(deadline(1), Duration::from_secs(62));
        assert_eq!(deadline(256), Duration::from_secs(60 + 512));
        assert!(deadline(u32::MAX) > Duration::from_secs(1 << 32));
    }

    #[test]
    fn names_one_a_line() {
        let children = [
            child("web-1", 1, ChildStatus::Ready, None),
            child("web-2", 2, ChildStatus::Pending, None),
        ];
        let r = report(&children, Output::Text).unwrap();
        assert_eq!(
            r,
            Report {
                stdout: "web-1\nweb-2\n".into(),
                stderr: String::new(),
                code: 0
            }
        );
    }

    #[test]
    fn json_is_the_array_of_children() {
        let children = [child("web-1", 1, ChildStatus::Ready, None)];
        let r = report(&children, Output::Json).unwrap();
        assert_eq!(r.code, 0);
        let back: Vec<ForkChild> = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(back, children);
        assert!(r.stdout.starts_with("[\n  {\n"), "{}", r.stdout);
        assert!(r.stdout.ends_with("]\n"), "{}", r.stdout);
    }

    #[test]
    fn failed_children_go_to_stderr_and_exit_1() {
        let children = [
            child("web-1", 1, ChildStatus::Ready, None),
            child(
                "web-2",
                2,
                ChildStatus::Failed,
                Some("service 20-join: exit 1"),
            ),
            child("web-3", 3, ChildStatus::Failed, None),
        ];
        for out in [Output::Text, Output::Json] {
            let r = report(&children, out).unwrap();
            assert_eq!(r.code, 1);
            assert_eq!(
                r.stderr,
                "brood: child web-2 failed: service 20-join: exit 1\n\
                 brood: child web-3 failed: broodd gave no reason\n"
            );
        }
        let r = report(&children, Output::Text).unwrap();
        assert_eq!(r.stdout, "web-1\nweb-2\nweb-3\n");
    }
}
