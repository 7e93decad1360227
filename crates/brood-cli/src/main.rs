//! `brood`: the command-line tool. This file parses the command line, sets
//! up logging, maps errors to one line and exit status 125, and exits
//! quietly with 141 when its output pipe is closed (`brood ledger log |
//! head -1`), as a tool killed by SIGPIPE would; each noun's
//! commands live in their own module. `run` and `image` work locally; the
//! other nouns are clients of broodd (`client`).

mod boot_disk;
mod change;
mod chargeback;
mod client;
mod completions;
mod console;
mod cp;
mod define;
mod endpoint;
mod events;
mod exec;
mod fork;
mod host;
mod identity_pool;
mod image;
mod infra;
mod io;
mod job;
mod ledger;
mod man;
mod migrate;
mod network;
mod partition;
mod paths;
mod pool;
mod render;
mod run;
mod service;
mod snapshot;
mod template;
mod token;
mod trust;
mod unit;
mod units;
mod user;
mod vm;
mod workflow;

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text.
    Text,
    /// JSON on stdout.
    Json,
}

/// The `-o` flag: `csv` only for `brood chargeback report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFlag {
    /// Readable text.
    Text,
    /// JSON on stdout.
    Json,
    /// CSV (`brood chargeback report`).
    Csv,
}

/// brood: VMs that start, fork and scale in milliseconds.
#[derive(Debug, Parser)]
#[command(name = "brood", version, about, long_about = None)]
struct Cli {
    /// brood's data directory (default: $BROOD_DATA_DIR, /var/lib/brood for root,
    /// ~/.local/share/brood otherwise).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, default_value = "text")]
    output: OutputFlag,
    /// Act inside this business unit (an administrator's view of it; a
    /// unit's own users may leave it out). Also the unit of `user create`
    /// and `chargeback report`.
    #[arg(long, global = true, env = "BROOD_UNIT", value_name = "UNIT")]
    unit: Option<String>,
    /// broodd to talk to: its unix socket, https://HOST:PORT, or (loopback,
    /// broodd --insecure-tcp) http://HOST:PORT (default: $BROOD_HOST, else
    /// DATA_DIR/broodd.sock).
    #[arg(long, global = true, value_name = "SOCKET|URL")]
    host: Option<String>,
    /// broodd's bearer token (default: $BROOD_TOKEN, else DATA_DIR/token,
    /// which goes only to the broodd of DATA_DIR). Other users can see flags
    /// in ps; prefer BROOD_TOKEN.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Certificates to accept from an https:// --host: the broodd's own
    /// (DATA_DIR/tls-cert.pem on its host) or its CA (default: the one
    /// broodd recorded in DATA_DIR/listen.json).
    #[arg(long, global = true, env = "BROOD_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot a VM, run one command in it, and exit with its exit code.
    Run(run::RunArgs),
    /// Build and inspect guest images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Define, run and inspect partitions (VMs) on broodd.
    #[command(
        subcommand,
        after_help = "Examples:
  brood vm create web --memory 512 --disk root:10 --nic user
  brood vm list
  brood vm exec web 'uname -a'
  brood vm delete web --force"
    )]
    Vm(vm::VmCmd),
    /// Make running partitions templates that children are forked from.
    #[command(
        subcommand,
        after_help = "Examples:
  brood template create web --warm 4
  brood template list
  brood fork web -n 10
  brood template delete web --cascade"
    )]
    Template(template::TemplateCmd),
    /// Fork children from a template.
    Fork(fork::ForkArgs),
    /// Manage the identity and IPv4 pools forked children draw from.
    #[command(
        subcommand,
        after_help = "Examples:
  brood identity-pool create lan --ipv4 10.0.0.10-10.0.0.50 --gateway 10.0.0.1
  brood identity-pool create hosts --identities-file hosts.txt
  brood identity-pool show lan
  brood fork web -n 5 --ip-pool lan --identity-pool hosts"
    )]
    IdentityPool(identity_pool::IdentityPoolCmd),
    /// Manage networks (subnets in zones) that VMs join with `--nic NAME`.
    #[command(
        subcommand,
        after_help = "Examples:
  brood network create lan --subnet 10.10.0.0/24
  brood vm create web --nic lan
  brood network show lan"
    )]
    Network(network::NetworkCmd),
    /// Inspect and control the I/O partitions (switches) that serve networks.
    #[command(
        subcommand,
        after_help = "Examples:
  brood io list
  brood io restart switch-default
  brood io stop switch-default --force"
    )]
    Io(io::IoCmd),
    /// Manage pools of service domains waiting at their trigger point.
    #[command(
        subcommand,
        after_help = "Examples:
  brood pool create svc --image default --min 2
  brood pool show svc
  brood service request http --pool svc"
    )]
    Pool(pool::PoolCmd),
    /// Request, list, show and release services from service pools.
    #[command(
        subcommand,
        after_help = "Examples:
  brood service request http --set ip=10.0.0.2/24
  brood service list
  brood service release http-1a2b3c4d"
    )]
    Service(service::ServiceCmd),
    /// Inspect broodd's resource ledger.
    #[command(
        subcommand,
        after_help = "Examples:
  brood ledger show
  brood ledger log --limit 5
  brood ledger verify"
    )]
    Ledger(ledger::LedgerCmd),
    /// Show the host broodd runs on; in a cluster, its hosts, zones, domains and placements.
    #[command(
        subcommand,
        after_help = "Examples:\n  brood host show\n  brood host list\n  brood host place web --memory 512M --require storage:shared"
    )]
    Host(host::HostCmd),
    /// Follow broodd's events: partition state changes and ledger commits.
    Events(events::EventsArgs),
    /// Business units: register, ask for allocations, approve them.
    #[command(
        subcommand,
        after_help = "Examples:
  brood unit register eng --contact eng@example.com
  brood unit request eng --vcpus 8 --memory 8192 --disk 100
  brood unit requests --pending
  brood unit approve 1 --vcpus 4
  brood unit show eng"
    )]
    Unit(unit::UnitCmd),
    /// Users and their roles.
    #[command(
        subcommand,
        after_help = "Examples:\n  brood user create alice --unit eng --role unit-user\n  brood user list"
    )]
    User(user::UserCmd),
    /// API tokens of users.
    #[command(
        subcommand,
        after_help = "Examples:\n  brood token create --user alice --expires 30d\n  brood token revoke 0123456789abcdef"
    )]
    Token(token::TokenCmd),
    /// The infrastructure hierarchy.
    #[command(subcommand, after_help = "Examples:\n  brood infra show")]
    Infra(infra::InfraCmd),
    /// Chargeback reports, prices and refunds.
    #[command(
        subcommand,
        after_help = "Examples:\n  brood chargeback report --from 2026-01-01 --to 2026-02-01 -o csv"
    )]
    Chargeback(chargeback::ChargebackCmd),
    /// Jobs: every VM action, queued and run (list, show, wait, cancel).
    #[command(
        subcommand,
        after_help = "Examples:\n  brood job list --state running\n  brood job wait 12"
    )]
    Job(job::JobCmd),
    /// Workflows: task graphs stored by broodd and run as jobs.
    #[command(
        subcommand,
        after_help = "Examples:\n  brood workflow create --file web.yaml\n  brood workflow run web --set name=web-1"
    )]
    Workflow(workflow::WorkflowCmd),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Write brood's manual pages (one per command) into a directory.
    Man(man::ManArgs),
    /// Names for shell completion, one a line (used by the completion scripts).
    #[command(name = "__complete", hide = true)]
    Complete {
        /// What to list.
        kind: completions::NameKind,
    },
}

/// How to reach broodd, from the global flags (no `Debug`: it holds the token).
struct Conn {
    host: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
    data_dir: PathBuf,
    unit: Option<String>,
}

/// Runs a broodd client command on a small runtime of its own.
fn with_client<F, Fut>(conn: &Conn, f: F) -> Result<i32>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: Future<Output = Result<i32>>,
{
    let client = client::Client::from_flags(
        conn.host.as_deref(),
        conn.token.as_deref(),
        conn.ca_cert.as_deref(),
        &conn.data_dir,
    )?
    .with_unit(conn.unit.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("start the async runtime"))?;
    rt.block_on(f(client))
}

/// Exit status when stdout or stderr is a pipe nobody reads any more: what
/// a shell reports for a process SIGPIPE killed (128 + 13).
const BROKEN_PIPE_EXIT: i32 = 141;

/// Whether stdout or stderr is a pipe (or socket) whose reader is gone.
/// Rust ignores SIGPIPE, so a write there fails with EPIPE, and `println!`
/// panics on it; this tells that apart from an EPIPE on the way to broodd.
fn output_is_broken() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let mut fds = [
        PollFd::new(out.as_fd(), PollFlags::POLLOUT),
        PollFd::new(err.as_fd(), PollFlags::POLLOUT),
    ];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds.iter().any(|f| {
            f.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
        })
}

/// Makes a panic from writing to a closed output pipe a quiet exit.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("");
        if (msg.contains("Broken pipe") || msg.contains("BrokenPipe")) && output_is_broken() {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

/// Whether `e` comes from writing to a closed output pipe.
fn is_broken_output(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) && output_is_broken()
}

fn main() {
    exit_quietly_on_broken_pipe();
    let started = Instant::now();
    // Files brood makes (guest memory, console logs, state, disks) are
    // private to their owner.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = paths::data_dir(cli.data_dir.as_deref());
    let format = match cli.output {
        OutputFlag::Text => chargeback::Format::Text,
        OutputFlag::Json => chargeback::Format::Json,
        OutputFlag::Csv => chargeback::Format::Csv,
    };
    let out = match cli.output {
        OutputFlag::Json => Output::Json,
        OutputFlag::Text | OutputFlag::Csv => Output::Text,
    };
    if cli.output == OutputFlag::Csv && !matches!(cli.cmd, Cmd::Chargeback(_)) {
        eprintln!("brood: error: -o csv is for `brood chargeback` only: use -o text or -o json");
        std::process::exit(125);
    }
    let json_errors = out == Output::Json || matches!(&cli.cmd, Cmd::Run(a) if a.json());
    let conn = Conn {
        host: cli.host,
        token: cli.token,
        ca_cert: cli.ca_cert,
        data_dir: data_dir.clone(),
        unit: cli.unit,
    };
    let code = match cli.cmd {
        Cmd::Run(args) => {
            let out = if args.json() { Output::Json } else { out };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(run::run(args, &data_dir, out, started)),
                Err(e) => Err(anyhow::Error::new(e).context("start the async runtime")),
            }
        }
        Cmd::Image(cmd) if image::wants_job(&cmd) => {
            with_client(
                &conn,
                |c| async move { image::build_job(cmd, &c, out).await },
            )
        }
        Cmd::Image(cmd) => image::run(cmd, &data_dir, out),
        Cmd::Vm(cmd) => with_client(&conn, |c| async move { vm::run(cmd, &c, out).await }),
        Cmd::Template(cmd) => {
            with_client(&conn, |c| async move { template::run(cmd, &c, out).await })
        }
        Cmd::Fork(args) => with_client(&conn, |c| async move { fork::run(args, &c, out).await }),
        Cmd::IdentityPool(cmd) => {
            with_client(
                &conn,
                |c| async move { identity_pool::run(cmd, &c, out).await },
            )
        }
        Cmd::Network(cmd) => {
            with_client(&conn, |c| async move { network::run(cmd, &c, out).await })
        }
        Cmd::Io(cmd) => with_client(&conn, |c| async move { io::run(cmd, &c, out).await }),
        Cmd::Pool(cmd) => with_client(&conn, |c| async move { pool::run(cmd, &c, out).await }),
        Cmd::Service(cmd) => {
            with_client(&conn, |c| async move { service::run(cmd, &c, out).await })
        }
        Cmd::Ledger(cmd) => with_client(&conn, |c| async move { ledger::run(cmd, &c, out).await }),
        Cmd::Host(cmd) => with_client(&conn, |c| async move { host::run(cmd, &c, out).await }),
        Cmd::Events(args) => {
            with_client(&conn, |c| async move { events::run(args, &c, out).await })
        }
        Cmd::Unit(cmd) => with_client(&conn, |c| async move { unit::run(cmd, &c, out).await }),
        Cmd::User(cmd) => with_client(&conn, |c| async move { user::run(cmd, &c, out).await }),
        Cmd::Token(cmd) => with_client(&conn, |c| async move { token::run(cmd, &c, out).await }),
        Cmd::Infra(cmd) => with_client(&conn, |c| async move { infra::run(cmd, &c, out).await }),
        Cmd::Chargeback(cmd) => {
            with_client(
                &conn,
                |c| async move { chargeback::run(cmd, &c, format).await },
            )
        }
        Cmd::Job(cmd) => with_client(&conn, |c| async move { job::run(cmd, &c, out).await }),
        Cmd::Workflow(cmd) => {
            with_client(&conn, |c| async move { workflow::run(cmd, &c, out).await })
        }
        Cmd::Completions(args) => completions::run(&args, &mut Cli::command()),
        Cmd::Man(args) => man::run(&args, Cli::command(), out),
        Cmd::Complete { kind } => {
            with_client(&conn, |c| async move { completions::names(kind, &c).await }).or(Ok(0))
        }
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) if is_broken_output(&e) => std::process::exit(BROKEN_PIPE_EXIT),
        // With -o json a program reads the error too: JSON on stderr.
        Err(e) if json_errors => {
            eprintln!("{}", render::error_json(&e));
            std::process::exit(125);
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("brood: error: {}", chain.join(": "));
            std::process::exit(125);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_cover_the_tree() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "brood", &mut script);
            let text = String::from_utf8(script).unwrap();
            for word in [
                "vm",
                "exec",
                "ledger",
                "verify",
                "from-json",
                "template",
                "cascade",
                "fork",
                "identity-pool",
                "warm",
                "identities-file",
                "ipv4",
            ] {
                assert!(text.contains(word), "{shell} script lacks {word}");
            }
        }
    }

    #[test]
    fn from_json_excludes_configuration_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["brood", "vm", "define", "web", "--from-json", "f.json"]).is_ok());
        assert!(
            parse(&[
                "brood",
                "vm",
                "define",
                "web",
                "--from-json",
                "f",
                "--vcpus",
                "2"
            ])
            .is_err()
        );
        assert!(parse(&["brood", "vm", "create", "web", "--priority", "-5"]).is_ok());
        assert!(parse(&["brood", "vm", "define", "web", "--disk", "root"]).is_err());
        assert!(parse(&["brood", "vm", "list", "--host", "/x.sock", "-o", "json"]).is_ok());
    }

    #[test]
    fn template_fork_and_pool_commands_parse() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        assert!(parse("brood template create web --name t --warm 4").is_ok());
        assert!(parse("brood template create web --warm many").is_err());
        assert!(parse("brood template delete t --cascade -o json").is_ok());
        assert!(parse("brood fork t -n 3 --set a=1 --set b=").is_ok());
        assert!(parse("brood fork t --set a").is_err());
        assert!(parse("brood fork t -n -1").is_err());
        assert!(parse("brood fork").is_err());
        assert!(parse("brood identity-pool create p --ipv4 10.0.0.1-9").is_ok());
        assert!(parse("brood identity-pool create p").is_err());
        assert!(parse("brood identity-pool show p -o json").is_ok());
    }
}
