//! `brood-bench`: runs brood and a peer side by side and prints medians
//! and ratios. One module per benchmark: `boot` (brood run against raw
//! QEMU), `ledger` (durable transactions against one SQLite connection) and
//! `api` (broodd's list and show latency against a bare HTTP server),
//! `debian` (a Debian image against the default one and raw QEMU), `io`
//! (I/O partitions against a VM's own qcow2 and a Linux bridge), `cluster`
//! (placement decisions per second against a least-loaded scan), `jobs`
//! (light jobs per second on the fake engine, and the latency the job
//! queue adds to a real VM's start).

mod api;
mod boot;
mod cluster;
mod debian;
mod fork;
mod io;
mod jobs;
mod ledger;
mod pool;
mod tenancy;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "brood benchmarks: brood and a peer side by side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Live migration of a 256 MiB VM, idle and busy: brood's engine
    /// against QEMU's own migration driven by hand.
    Migrate {
        /// Migrations of each kind.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Image directory.
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
        /// The brood CLI binary (for the migration between two broodds).
        #[arg(long, default_value = "target/release/brood")]
        brood: PathBuf,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
    },
    /// Time from a host failure (kill -9 of broodd and QEMU) to its VM
    /// running on another host: two broodds, one catalog, one `broodd ops`.
    Failover {
        /// Failures.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Image directory.
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
        /// The brood CLI.
        #[arg(long, default_value = "target/debug/brood")]
        brood: PathBuf,
        /// broodd.
        #[arg(long, default_value = "target/debug/broodd")]
        broodd: PathBuf,
    },
    /// Placement decisions per second over a snapshot of HOSTS hosts and
    /// PARTITIONS placed partitions, against a least-loaded scan.
    Cluster {
        /// Hosts in the snapshot.
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Partitions already placed.
        #[arg(long, default_value_t = 100_000)]
        partitions: usize,
        /// Decisions per round.
        #[arg(long, default_value_t = 2000)]
        decisions: usize,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// `brood run --exec true` against raw QEMU booting to the agent's Ready.
    Boot {
        /// Boots of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The brood binary.
        #[arg(long, default_value = "target/release/brood")]
        brood: PathBuf,
        /// Image directory (default: /var/lib/brood/images/default).
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// A Debian image's cold boot to agent ready against the default image
    /// and raw QEMU on the same kernel and disk, and fork to ready from
    /// templates of both.
    Debian {
        /// The Debian image (DATA_DIR/images/NAME).
        #[arg(long)]
        image: String,
        /// Cold boots of each kind.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Forks from each template.
        #[arg(long, default_value_t = 10)]
        forks: usize,
        /// The data directory holding the images.
        #[arg(long, default_value = "/var/lib/brood")]
        data_dir: PathBuf,
        /// The brood binary.
        #[arg(long, default_value = "target/release/brood")]
        brood: PathBuf,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
    },
    /// Light jobs per second on the fake engine against a route that is no
    /// job, and the latency the job queue adds to `brood vm start` on real VMs.
    Jobs {
        /// Concurrent clients on the fake engine.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per fake-engine run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds of the fake-engine runs; medians are printed.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Starts on real VMs (0: skip them).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
        /// Image directory.
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
    },
    /// Durable ledger transactions per second: brood's group commit against
    /// one connection behind a mutex.
    Ledger {
        /// Concurrent committers on each side.
        #[arg(long, default_value_t = 32)]
        committers: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs of each kind; medians are printed.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where the database files go (default: the system temp dir). Use a
        /// real disk: on tmpfs fsync costs nothing and durability is moot.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// broodd's list and show latency with many partitions under many
    /// clients, against a bare HTTP server answering the same bytes.
    Api {
        /// Partitions defined before the load starts.
        #[arg(long, default_value_t = 1000)]
        partitions: usize,
        /// Concurrent clients, each on its own keep-alive connection.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs of each kind; medians are printed.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Business units for the mixed-roles run (0: the single-token run only).
        #[arg(long, default_value_t = 10)]
        units: usize,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
        /// Image directory broodd is given.
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
    },
    /// I/O partitions: disk through a storage server and network through
    /// the switch, against the VM's own qcow2 and a Linux bridge; restart stalls.
    Io {
        /// Measurements of each kind.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Image directory (default: /var/lib/brood/images/default).
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Fork: latency to running and ready, fan-outs, per-child memory,
    /// against a cold boot, a naive clone and a full save/restore.
    Fork {
        /// Single forks (p50 and p99 are over these).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// The template's pool of waiting children.
        #[arg(long, default_value_t = 32)]
        pool: u64,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
        /// Image directory.
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
    },
    /// Service pools: a request from members at the trigger point, against
    /// a cold boot and a paused generic VM configured after resume.
    Pool {
        /// Requests from the pool (p50 and p99 are over these).
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Cold boots.
        #[arg(long, default_value_t = 5)]
        cold_runs: usize,
        /// Paused generic VMs.
        #[arg(long, default_value_t = 5)]
        generic_runs: usize,
        /// The broodd binary.
        #[arg(long, default_value = "target/release/broodd")]
        broodd: PathBuf,
        /// Image directory (its agent must have the trigger point).
        #[arg(long, default_value = "/var/lib/brood/images/default")]
        image: PathBuf,
        /// The class requested: http (default image), dns or log (service image).
        #[arg(long, default_value = "http")]
        class: String,
        /// The service image's directory (`brood image build --service`), for dns and log.
        #[arg(long)]
        service_image: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Cluster {
            hosts,
            partitions,
            decisions,
            rounds,
        } => cluster::cluster(hosts, partitions, decisions, rounds),
        Cmd::Migrate {
            runs,
            image,
            brood,
            broodd,
        } => cluster::migrate(runs, &image, &brood, &broodd),
        Cmd::Failover {
            runs,
            image,
            brood,
            broodd,
        } => cluster::failover(runs, &image, &brood, &broodd),
        Cmd::Boot { runs, brood, image } => boot::boot(runs, &brood, image),
        Cmd::Debian {
            image,
            runs,
            forks,
            data_dir,
            brood,
            broodd,
        } => debian::debian(&debian::DebianBench {
            runs,
            forks,
            image: &image,
            data_dir: &data_dir,
            brood: &brood,
            broodd: &broodd,
        }),
        Cmd::Io { runs, image } => io::io(runs, image),
        Cmd::Jobs {
            clients,
            seconds,
            rounds,
            runs,
            broodd,
            image,
        } => jobs::jobs(
            jobs::JobsBench {
                clients,
                seconds,
                rounds,
                runs,
            },
            &broodd,
            &image,
        ),
        Cmd::Ledger {
            committers,
            seconds,
            rounds,
            dir,
        } => ledger::ledger(committers, Duration::from_secs_f64(seconds), rounds, dir),
        Cmd::Fork {
            runs,
            pool,
            broodd,
            image,
        } => fork::fork(runs, pool, &broodd, &image),
        Cmd::Pool {
            runs,
            cold_runs,
            generic_runs,
            broodd,
            image,
            class,
            service_image,
        } => pool::pool(&pool::PoolBench {
            runs,
            cold_runs,
            generic_runs,
            broodd: &broodd,
            image: &image,
            class: &class,
            service_image: service_image.as_deref(),
        }),
        Cmd::Api {
            partitions,
            clients,
            seconds,
            rounds,
            units,
            broodd,
            image,
        } => {
            if units == 0 {
                api::api(partitions, clients, seconds, rounds, &broodd, &image)
            } else {
                tenancy::api_mixed(
                    &tenancy::Shape {
                        partitions,
                        clients,
                        units,
                        seconds,
                        rounds,
                    },
                    &broodd,
                    &image,
                )
            }
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
