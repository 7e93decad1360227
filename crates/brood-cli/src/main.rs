//! `brood`: the command-line tool. This file parses the command line, sets
//! up logging and maps errors to one line and exit status 125; each noun's
//! commands live in their own module.

mod image;
mod paths;
mod run;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text.
    Text,
    /// JSON on stdout.
    Json,
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
    output: Output,
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
}

fn main() {
    let started = Instant::now();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = paths::data_dir(cli.data_dir.as_deref());
    let code = match cli.cmd {
        Cmd::Run(args) => {
            let out = if args.json() {
                Output::Json
            } else {
                cli.output
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(run::run(args, &data_dir, out, started)),
                Err(e) => Err(anyhow::Error::new(e).context("start the async runtime")),
            }
        }
        Cmd::Image(cmd) => image::run(cmd, &data_dir, cli.output),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("brood: error: {}", chain.join(": "));
            std::process::exit(125);
        }
    }
}
