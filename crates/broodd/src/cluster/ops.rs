//! `broodd ops`: an operations service (WO 2005/036358 [0179]-[0191],
//! [0307]). Several run at once against one catalog; each presents its
//! name and token (whose SHA-256 an administrator registered with `brood
//! host ops add`), takes leases on its share of the hosts and renews them
//! every `--interval`, so each host is watched by exactly one instance and
//! the hosts of an instance that dies are taken over when its leases expire
//! (`--lease-ttl`).
//!
//! For a watched host that the heartbeats say is failed it (a) runs the
//! `--restart-command` once (with `BROOD_HOST` and `BROOD_HOST_ADDRESS` in
//! its environment): a broodd that comes back reattaches its still-running
//! VMs as at any start; and (b) if the host is still failed
//! `--replace-after` later, re-places each of its partitions with the pure
//! placement function (avoiding the failed host, honouring zones and
//! domains) and moves it by a conditional write that checks this
//! instance's lease and bumps the partition's generation. The target
//! host's broodd starts it from the definition the failed host published
//! (`failover.rs`); partitions published as not movable (with disks of
//! their host's own) stay, and are logged.
//!
//! The ops service talks to the catalog only: it needs no broodd token.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brood_cluster::place::{self, Request, Resident};
use brood_cluster::{Catalog, ClusterError, HostState, Liveness, OpsCredential};
use clap::Parser;
use tracing::{debug, info, warn};

/// An operations service.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "broodd ops",
    about = "An operations service: watches hosts under leases, restarts failed ones, moves their partitions",
    after_help = "Example:
  brood host ops add ops1 --token-file /etc/brood/ops1.token
  broodd ops --catalog postgres://brood@pg/brood --name ops1 --token-file /etc/brood/ops1.token \\
      --restart-command 'ssh root@$BROOD_HOST systemctl restart broodd'"
)]
pub struct OpsArgs {
    /// The catalog (postgres://USER@HOST:PORT/DB).
    #[arg(long, env = "BROOD_CATALOG")]
    pub catalog: String,
    /// This instance's name, as `brood host ops add` registered it.
    #[arg(long)]
    pub name: String,
    /// A file holding this instance's token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// A shell command that restarts a failed host's broodd (`BROOD_HOST`
    /// names the host). Without it a failed host is only re-placed.
    #[arg(long)]
    pub restart_command: Option<String>,
    /// How long the restart command may run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub restart_timeout: Duration,
    /// How long a failed host may stay failed (after the restart was
    /// tried) before its partitions are moved to other hosts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub replace_after: Duration,
    /// How long a lease lasts unless renewed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How often leases are renewed and hosts checked.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A host silent longer than this is suspect (as the hosts' broodds).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub suspect_after: Duration,
    /// A host silent longer than this is failed (as the hosts' broodds).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub failed_after: Duration,
    /// How long to retry a catalog operation while PostgreSQL is away.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub catalog_retry: Duration,
}

/// `broodd ops ARGS`: parses, sets up logging and runs until SIGTERM/SIGINT.
pub fn main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = OpsArgs::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(run(args))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads a token file: its first line, trimmed, not empty.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read the token file {} (`brood host ops add NAME --token-file FILE` writes it)",
            path.display()
        )
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// The SHA-256 of a token, as the catalog keeps it.
pub fn token_hash(token: &str) -> String {
    crate::tenancy::token::hash(token)
}

/// What one instance remembers about a failed host it watches.
#[derive(Debug)]
struct Failure {
    since: Instant,
    restart_tried: bool,
    logged: HashSet<String>,
}

/// The service's state.
#[derive(Debug)]
struct Ops {
    args: OpsArgs,
    cred: OpsCredential,
    catalog: Catalog,
    live: Liveness,
    held: Vec<String>,
    failures: HashMap<String, Failure>,
}

async fn run(args: OpsArgs) -> anyhow::Result<()> {
    brood_cluster::model::check_name("operations instance", &args.name).context("--name")?;
    if args.lease_ttl <= args.interval * 2 {
        bail!(
            "--lease-ttl ({:?}) must be more than twice --interval ({:?}): a lease would expire between renewals",
            args.lease_ttl,
            args.interval
        );
    }
    if args.failed_after <= args.suspect_after {
        bail!("--suspect-after must be less than --failed-after");
    }
    let token = read_token(&args.token_file)?;
    let catalog = Catalog::connect(&args.catalog, args.catalog_retry)
        .await
        .context("connect to the catalog (--catalog)")?;
    let cred = OpsCredential {
        name: args.name.clone(),
        token_sha256: token_hash(&token),
    };
    let live = Liveness {
        suspect_after_ms: ms(args.suspect_after),
        failed_after_ms: ms(args.failed_after),
    };
    let mut ops = Ops {
        args,
        cred,
        catalog,
        live,
        held: Vec::new(),
        failures: HashMap::new(),
    };
    // Refuse to start unauthorized, rather than retry forever.
    ops.held = ops
        .catalog
        .take_leases(&ops.cred, ops.args.lease_ttl)
        .await
        .context("take this instance's first leases")?;
    info!(name = %ops.cred.name, hosts = ?ops.held, "operations service running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    let mut tick = tokio::time::interval(ops.args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        if let Err(e) = ops.once().await {
            warn!("operations tick: {e} (tried again)");
        }
    }
    if let Err(e) = ops.catalog.drop_leases(&ops.cred).await {
        warn!("giving back the leases: {e} (they expire)");
    }
    info!("operations service stopped");
    Ok(())
}

impl Ops {
    async fn once(&mut self) -> Result<(), ClusterError> {
        let held = self
            .catalog
            .take_leases(&self.cred, self.args.lease_ttl)
            .await?;
        if held != self.held {
            info!(hosts = ?held, "this instance now watches {} host(s)", held.len());
            self.held = held;
        }
        let hosts = self.catalog.hosts(self.live).await?;
        let mine: HashSet<String> = self.held.iter().cloned().collect();
        self.failures.retain(|h, _| mine.contains(h));
        for h in hosts.iter().filter(|h| mine.contains(&h.name)) {
            if h.state != HostState::Failed {
                if self.failures.remove(&h.name).is_some() {
                    info!(host = %h.name, "host is back ({})", h.state.as_str());
                }
                continue;
            }
            let f = self.failures.entry(h.name.clone()).or_insert_with(|| {
                warn!(host = %h.name, silent_ms = ?h.silent_ms, "host failed");
                Failure {
                    since: Instant::now(),
                    restart_tried: false,
                    logged: HashSet::new(),
                }
            });
            if !f.restart_tried {
                f.restart_tried = true;
                f.since = Instant::now();
                if let Some(cmd) = &self.args.restart_command {
                    spawn_restart(cmd, &h.name, &h.address, self.args.restart_timeout);
                }
            }
            if f.since.elapsed() >= self.args.replace_after && h.partitions > 0 {
                self.replace(&h.name).await?;
            }
        }
        Ok(())
    }

    /// Moves every movable partition of the failed host `from`.
    async fn replace(&mut self, from: &str) -> Result<(), ClusterError> {
        let stranded = self.catalog.stranded_on(from).await?;
        if stranded.is_empty() {
            return Ok(());
        }
        let mut snap = self.catalog.snapshot(self.live).await?;
        for s in stranded {
            let p = &s.placement;
            let logged = &mut self
                .failures
                .get_mut(from)
                .map(|f| &mut f.logged)
                .ok_or_else(|| ClusterError::Invalid(format!("{from} is not failing")))?;
            if s.spec.is_none() {
                if logged.insert(p.name.clone()) {
                    warn!(
                        host = %from,
                        partition = %p.name,
                        "not moved: its host published no definition another host can start (its disks are that host's own); it waits for {from} to come back"
                    );
                }
                continue;
            }
            let req = Request {
                partition: p.partition,
                domain: p.domain.clone(),
                demand: p.demand,
                requires: s.requires.clone(),
                avoid: Some(from.to_owned()),
            };
            let decision = match place::place(&snap, &req) {
                Ok(d) => d,
                Err(r) => {
                    if logged.insert(p.name.clone()) {
                        warn!(host = %from, partition = %p.name, "cannot be moved yet: {}", r.reason);
                    }
                    continue;
                }
            };
            match self
                .catalog
                .move_placement(&self.cred, p.partition, from, &decision.host, p.generation)
                .await
            {
                Ok(moved) => {
                    info!(
                        partition = %p.name,
                        from = %from,
                        to = %decision.host,
                        generation = moved.generation,
                        "moved off the failed host"
                    );
                    let importance = snap
                        .domains
                        .get(&p.domain)
                        .map(|d| d.importance)
                        .unwrap_or_default();
                    snap.apply(
                        &decision.host,
                        Resident {
                            partition: p.partition,
                            domain: p.domain.clone(),
                            importance,
                            demand: p.demand,
                        },
                    );
                }
                // A lost race or a lost lease: decided again next tick.
                Err(ClusterError::Conflict(why)) => debug!(partition = %p.name, "move: {why}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Runs the restart command for `host` in the background, bounded by `timeout`.
fn spawn_restart(cmd: &str, host: &str, address: &str, timeout: Duration) {
    info!(host = %host, "trying to restart the host's broodd");
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("BROOD_HOST", host)
        .env("BROOD_HOST_ADDRESS", address)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let host = host.to_owned();
    tokio::spawn(async move {
        // Its output goes to this service's log; a broodd it leaves running
        // in the background keeps no pipe of ours open.
        match tokio::time::timeout(timeout, c.status()).await {
            Ok(Ok(st)) if st.success() => info!(host = %host, "restart command succeeded"),
            Ok(Ok(st)) => warn!(host = %host, "restart command failed ({st})"),
            Ok(Err(e)) => warn!(host = %host, "restart command did not run: {e}"),
            Err(_) => warn!(host = %host, "restart command ran past {timeout:?}: killed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_must_outlive_two_renewals_and_the_token_file_must_hold_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_token(&f).unwrap_err().to_string().contains("empty"));
        std::fs::write(&f, "abc\nignored").unwrap();
        assert_eq!(read_token(&f).unwrap(), "abc");
        assert!(
            read_token(&dir.path().join("none"))
                .unwrap_err()
                .to_string()
                .contains("brood host ops add")
        );
        assert_eq!(token_hash("abc").len(), 64);
    }
}
