//! `broodd`: brood's host daemon. It owns the resource ledger (SQLite in
//! the data directory), starts and supervises one QEMU per running
//! partition, and serves the REST API on a unix socket (or TCP).
//!
//! Start-up order: take the data directory's lock, open the ledger (setting
//! the host's capacity on first start), reconcile the ledger with the QEMU
//! processes still running, then serve. On SIGTERM or SIGINT it stops
//! serving and exits; the VMs keep running and the next broodd attaches to
//! them again.

mod listen;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use brood_engine::{QemuConfig, QemuEngine};
use brood_ledger::Resources;
use clap::Parser;
use tracing::info;

use broodd::{Broodd, Config, Paths};

/// mimalloc instead of glibc malloc: the API path allocates many small
/// objects from many threads, and glibc's arenas spent a quarter of broodd's
/// CPU under the API benchmark (perf: malloc, _int_free, malloc_consolidate).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// brood's host daemon.
#[derive(Debug, Parser)]
#[command(
    name = "broodd",
    version,
    about,
    after_help = "Examples:
  broodd --data-dir /var/lib/brood
  broodd --data-dir /tmp/b --listen 0.0.0.0:7070 --memory-mib 4096   # TLS, self-signed
  broodd --data-dir /tmp/b --listen 127.0.0.1:7070 --insecure-tcp    # plain HTTP, loopback only"
)]
struct Args {
    /// Data directory: ledger, token, socket, disks.
    #[arg(long, env = "BROOD_DATA_DIR", default_value = "/var/lib/brood")]
    data_dir: PathBuf,
    #[command(flatten)]
    listen: listen::ListenArgs,
    #[command(flatten)]
    cluster: broodd::cluster::ClusterArgs,
    /// Where VM run directories (memory files, sockets) go; a tmpfs
    /// (default /dev/shm/broodd-<hash of the data dir>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Guest image directory (default DATA_DIR/images/default).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Memory capacity in MiB (default: host memory less 1 GiB).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// vCPUs per host CPU that the ledger may hand out.
    #[arg(long, default_value_t = 4.0)]
    vcpu_overcommit: f64,
    /// Disk capacity in GiB (default: free space in the data directory).
    #[arg(long)]
    disk_gib: Option<u64>,
    /// NIC capacity.
    #[arg(long, default_value_t = 64)]
    nics: u64,
    /// Most heavy jobs (define, delete, fork, service requests) running at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_heavy_jobs: u64,
    /// Most workflows running at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_workflows: u64,
    /// Most jobs waiting in one queue; past it a job is refused (HTTP 503).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    job_queue_bound: u64,
    /// Most VMs on this host (default: as many as capacity allows).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_vms: Option<u64>,
    /// The uplink NAT networks masquerade out of (default: the default
    /// route's device, found at start).
    #[arg(long, value_name = "DEV")]
    uplink: Option<String>,
    /// The nftables table (family ip) broodd owns for NAT networks and
    /// published ports; no other table is touched.
    #[arg(long, value_name = "NAME", default_value = broodd::DEFAULT_NFT_TABLE,
          value_parser = parse_table)]
    nft_table: String,
    /// The host ports a business unit's users may publish (`vm create
    /// --publish`, `vm set --publish`), LOW-HIGH; administrators publish
    /// any host port.
    #[arg(long, value_name = "LOW-HIGH", default_value = "30000-32767",
          value_parser = parse_port_range)]
    unit_ports: std::ops::RangeInclusive<u16>,
    /// Print broodd's manual page (roff, section 8) and exit.
    #[arg(long, hide = true)]
    man_page: bool,
}

fn main() -> Result<()> {
    // Everything broodd makes (ledger, disks, state, run directories) is
    // private to root; the engine sets explicit modes where it matters.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // `broodd ops ...`: an operations service (cluster/ops.rs), not a host.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ops") {
        return broodd::cluster::ops::main(std::env::args_os().skip(1));
    }
    let args = Args::parse();
    if args.man_page {
        use clap::CommandFactory;
        let mut page = Vec::new();
        clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut page)
            .context("render the manual page")?;
        std::io::Write::write_all(&mut std::io::stdout().lock(), &page)
            .context("write the manual page")?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour only for a person at a terminal: a log file or journald
        // gets plain text, not escape sequences.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data directory {}", args.data_dir.display()))?;
    let data = std::fs::canonicalize(&args.data_dir)?;
    // A data directory made before (or by hand) may be open to all.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("make {} private", data.display()))?;
    let run = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/broodd-{}", short_hash(&data))));
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| data.join("images/default"));
    let templates = PathBuf::from(format!("{}-templates", run.display()));
    let paths = Paths {
        data: data.clone(),
        image,
        templates,
    };
    let _lock = lock_data_dir(&paths.lock())?;
    for f in [paths.kernel(), paths.initrd()] {
        if !f.is_file() {
            bail!(
                "the guest image is missing {} : build it with `brood --data-dir {} image build` or pass --image",
                f.display(),
                data.display()
            );
        }
    }
    let cluster = args.cluster.config()?;
    let token = listen::token(&paths.token())?;
    let bound = listen::Bound::bind(&args.listen, &data, paths.socket()).await?;
    let capacity = capacity(&args, &data);
    let mut cfg = QemuConfig::detect();
    cfg.run_root = run;
    let broodd = Broodd::start_with(
        Config {
            paths: paths.clone(),
            capacity,
            set_capacity: args.memory_mib.is_some() || args.disk_gib.is_some(),
            vcpu_overcommit: args.vcpu_overcommit,
            token,
            jobs: broodd::job::JobConfig {
                max_heavy: usize::try_from(args.max_heavy_jobs).unwrap_or(usize::MAX),
                max_workflows: usize::try_from(args.max_workflows).unwrap_or(usize::MAX),
                queue_bound: args.job_queue_bound,
                max_vms: args.max_vms,
                replay_steps: false,
            },
            nat: broodd::NatConfig {
                uplink: args.uplink.clone(),
                table: Some(args.nft_table.clone()),
                unit_ports: Some(args.unit_ports.clone()),
            },
        },
        Arc::new(QemuEngine::new(cfg)),
        cluster,
    )
    .await?;
    let app = broodd.router();
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    bound.serve(app, shutdown).await?;
    broodd.shutdown().await;
    info!("stopped serving; VMs keep running");
    Ok(())
}

/// An nftables table name: 1-32 of [A-Za-z0-9_].
fn parse_table(s: &str) -> std::result::Result<String, String> {
    let ok =
        (1..=32).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "--nft-table {s:?}: use 1-32 characters of A-Z, a-z, 0-9 and '_'"
        ))
    }
}

/// `LOW-HIGH` (or one port), 1-65535, LOW at most HIGH.
fn parse_port_range(s: &str) -> std::result::Result<std::ops::RangeInclusive<u16>, String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match (port(lo), port(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => Ok(lo..=hi),
        _ => Err(format!(
            "--unit-ports {s:?}: give LOW-HIGH, two ports 1-65535 with LOW at most HIGH (e.g. 30000-32767)"
        )),
    }
}

/// A short stable hash of a path (FNV-1a), to name per-data-dir run roots.
fn short_hash(p: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// Holds an exclusive lock on the data directory for the daemon's life.
fn lock_data_dir(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another broodd is running on this data directory ({} is locked: {e})",
            path.display()
        )
    })
}

/// The host's capacity: flags, else what the host has.
fn capacity(args: &Args, data: &Path) -> Resources {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024;
    let cpus = f64::from(brood_engine::host::online_cpus());
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let vcpus = (cpus * args.vcpu_overcommit.max(0.0)).floor() as u64;
    Resources {
        memory_mib: args
            .memory_mib
            .unwrap_or_else(|| mem_total.saturating_sub(1024)),
        vcpus,
        disk_gib: args
            .disk_gib
            .unwrap_or_else(|| brood_engine::host::fs_free_mib(data).unwrap_or(0) / 1024),
        nics: args.nics,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn unit_port_ranges_parse_and_bad_ones_say_what_to_give() {
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert_eq!(parse_port_range("8080"), Ok(8080..=8080));
        for bad in ["0-10", "10-5", "a-b", "1-65536", "", "-"] {
            let e = parse_port_range(bad).unwrap_err();
            assert!(e.contains("LOW-HIGH"), "{bad}: {e}");
        }
    }
}
