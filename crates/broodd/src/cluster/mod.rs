//! broodd as a member of a cluster (`--catalog postgres://...`): at start
//! it registers the host in the catalog with its capacity and zones,
//! reconciles the catalog with what its own ledger holds, then heartbeats
//! and reconciles again after every ledger change. Without `--catalog`
//! none of this runs and broodd is the single host it always was; the
//! cluster routes answer 409 there.
//!
//! The catalog and placement live in `brood-cluster`; the routes in
//! `api/cluster.rs`. The host's ledger stays the truth of what it holds:
//! the catalog is told, never obeyed about local holdings (a partition the
//! catalog places elsewhere is reported, not touched).
//!
//! Host failure (issue 15, second half): `fence.rs` checks every partition
//! job against the placement generation and removes copies that moved away;
//! `failover.rs` publishes this host's definitions and starts what an
//! operations service moved here; `ops.rs` is the operations service
//! (`broodd ops`), which watches hosts under leases and moves the
//! partitions of a failed one; `selffence.rs` pauses this host's movable
//! partitions when it cannot reach the catalog, before it may be called
//! failed.

pub mod failover;
pub mod fence;
pub mod ops;
pub mod selffence;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use brood_cluster::{
    Capacity, Catalog, ClusterError, HostSpec, Liveness, LocalPartition, SyncReport, Zone,
};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::host::Host;

pub mod migrate;

/// Reconcile with the catalog at least this often, ledger changes or not.
const SYNC_EVERY: Duration = Duration::from_secs(30);
/// Ledger commits closer together than this are reconciled once.
const SYNC_DEBOUNCE: Duration = Duration::from_millis(200);

/// The command line of cluster mode.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Join a cluster whose catalog is this PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB). Without it broodd is a single host.
    #[arg(long, env = "BROOD_CATALOG")]
    pub catalog: Option<String>,
    /// This host's name in the catalog (default: the hostname).
    #[arg(long, requires = "catalog")]
    pub cluster_host: Option<String>,
    /// Where the other hosts reach this broodd (HOST:PORT of --listen).
    #[arg(long, requires = "catalog", default_value = "")]
    pub advertise: String,
    /// A zone this host provides, KIND:NAME (repeatable), e.g.
    /// storage:shared1, network:front, processor:x86-64-v3.
    #[arg(long = "zone", requires = "catalog")]
    pub zones: Vec<String>,
    /// How often to heartbeat.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// A host silent longer than this is suspect.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub suspect_after: Duration,
    /// A host silent longer than this is failed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub failed_after: Duration,
    /// How long to retry a catalog operation while PostgreSQL is away.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub catalog_retry: Duration,
    /// Tests only: stop dead at this point of a live migration.
    #[arg(long, hide = true, value_enum)]
    pub migrate_fault: Option<migrate::Fault>,
}

/// Cluster mode's settings, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The catalog's URL.
    pub url: String,
    /// This host's name.
    pub name: String,
    /// Where the others reach it.
    pub address: String,
    /// The zones it provides.
    pub zones: Vec<Zone>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Suspect and failed thresholds.
    pub liveness: Liveness,
    /// Retry deadline of catalog operations.
    pub retry_for: Duration,
    /// Where a test stops a migration dead.
    pub fault: Option<migrate::Fault>,
}

impl ClusterArgs {
    /// The settings, or `None` for a single host.
    pub fn config(&self) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(url) = &self.catalog else {
            return Ok(None);
        };
        let name = match &self.cluster_host {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .context("read the hostname (or pass --cluster-host)")?
                .to_string_lossy()
                .to_lowercase(),
        };
        brood_cluster::model::check_name("host", &name)
            .context("this host's name in the cluster (--cluster-host)")?;
        let zones = brood_cluster::parse_zones(&self.zones).context("--zone")?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.failed_after <= self.suspect_after || self.suspect_after <= self.heartbeat_interval
        {
            anyhow::bail!(
                "--heartbeat-interval ({:?}) < --suspect-after ({:?}) < --failed-after ({:?}) must hold: a host would be suspect between two heartbeats",
                self.heartbeat_interval,
                self.suspect_after,
                self.failed_after
            );
        }
        Ok(Some(ClusterConfig {
            url: url.clone(),
            name,
            address: self.advertise.clone(),
            zones,
            heartbeat: self.heartbeat_interval,
            liveness: Liveness {
                suspect_after_ms: ms(self.suspect_after),
                failed_after_ms: ms(self.failed_after),
            },
            retry_for: self.catalog_retry,
            fault: self.migrate_fault,
        }))
    }
}

/// This host's membership: the catalog and its settings.
#[derive(Debug)]
pub struct Member {
    /// The catalog.
    pub catalog: Catalog,
    /// The settings.
    pub cfg: ClusterConfig,
    /// The placement generation this host was given per partition.
    pub given: fence::Given,
    /// When this host last reached the catalog (`selffence.rs`).
    pub health: selffence::Health,
}

/// The feature's state: the membership once joined (never, on a single host).
#[derive(Debug, Default)]
pub struct Cluster {
    member: OnceLock<Arc<Member>>,
}

impl Cluster {
    /// The membership, if this broodd is in a cluster.
    pub fn member(&self) -> Option<Arc<Member>> {
        self.member.get().cloned()
    }
}

/// Joins the cluster through `catalog` (connected and migrated): registers, reconciles,
/// then heartbeats and reconciles on every ledger change until broodd stops.
pub async fn join(host: &Arc<Host>, cfg: ClusterConfig, catalog: Catalog) -> anyhow::Result<()> {
    let member = Arc::new(Member {
        catalog,
        cfg,
        given: fence::Given::default(),
        health: selffence::Health::default(),
    });
    register(host, &member)
        .await
        .context("register this host in the catalog")?;
    // Before anything else acts: what moved away while this host was down
    // is stopped and removed here.
    let fenced = fence::sweep(host, &member)
        .await
        .context("fence the partitions that moved to other hosts")?;
    if !fenced.is_empty() {
        warn!(
            "fenced {} partition(s) the catalog placed on other hosts while this one was away: {}",
            fenced.len(),
            fenced.join(", ")
        );
    }
    let report = sync(host, &member)
        .await
        .context("reconcile the catalog with this host's ledger")?;
    log_report(&report);
    migrate::recover(host, &member)
        .await
        .context("settle the live migrations a restart cut")?;
    info!(
        host = %member.cfg.name,
        zones = member.cfg.zones.len(),
        "joined the cluster"
    );
    host.feature::<Cluster>()
        .member
        .set(member.clone())
        .map_err(|_| anyhow::anyhow!("broodd joined the cluster twice"))?;
    spawn_heartbeat(host.clone(), member.clone());
    selffence::spawn(host.clone(), member.clone());
    failover::spawn(host.clone(), member.clone());
    migrate::spawn_receiver(host.clone(), member.clone());
    spawn_sync(host.clone(), member);
    Ok(())
}

async fn register(host: &Host, m: &Member) -> Result<(), ClusterError> {
    let cap = host
        .ledger
        .capacity()
        .await
        .map_err(|e| ClusterError::Invalid(format!("read the ledger's capacity: {e}")))?;
    let spec = HostSpec {
        name: m.cfg.name.clone(),
        address: m.cfg.address.clone(),
        capacity: Capacity {
            memory_mib: cap.memory_mib,
            vcpus: cap.vcpus,
            disk_gib: cap.disk_gib,
        },
        zones: m.cfg.zones.clone(),
    };
    m.catalog
        .register_host(&spec, env!("CARGO_PKG_VERSION"))
        .await
}

/// Tells the catalog what this host's ledger holds.
pub async fn sync(host: &Host, m: &Member) -> Result<SyncReport, ClusterError> {
    let parts = host
        .ledger
        .all_partitions()
        .await
        .map_err(|e| ClusterError::Invalid(format!("read the ledger's partitions: {e}")))?;
    let locals: Vec<LocalPartition> = parts
        .into_iter()
        .map(|p| LocalPartition {
            id: p.uuid,
            name: p.name,
            demand: Capacity {
                memory_mib: p.demand.memory_mib,
                vcpus: p.demand.vcpus,
                disk_gib: p.demand.disk_gib,
            },
        })
        .collect();
    m.catalog.sync_host(&m.cfg.name, &locals).await
}

fn log_report(r: &SyncReport) {
    if !r.added.is_empty() || !r.adopted.is_empty() || !r.released.is_empty() {
        info!(
            added = r.added.len(),
            adopted = r.adopted.len(),
            released = r.released.len(),
            "catalog reconciled with the ledger"
        );
    }
    for (name, other) in &r.elsewhere {
        warn!(
            "partition {name:?} is in this host's ledger but the catalog places it on {}: it moved, this host must not run it",
            other.as_deref().unwrap_or("no host")
        );
    }
    for name in &r.name_taken {
        warn!(
            "partition {name:?} of this host is not in the catalog: another host's partition has that name (rename one)"
        );
    }
}

fn spawn_heartbeat(host: Arc<Host>, m: Arc<Member>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(m.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        while !host.is_stopping() {
            tick.tick().await;
            let began = std::time::Instant::now();
            let r = match m.catalog.heartbeat(&m.cfg.name).await {
                // Removed by an administrator while running, or a catalog
                // restored from an older backup: register again.
                Err(ClusterError::NotFound { .. }) => register(&host, &m).await,
                other => other,
            };
            if r.is_ok() {
                m.health.beat(began);
            }
            match r {
                Ok(()) if failing => {
                    info!("heartbeats reach the catalog again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        warn!("heartbeat failed: {e}");
                    }
                    failing = true;
                }
            }
        }
    });
}

fn spawn_sync(host: Arc<Host>, m: Arc<Member>) {
    tokio::spawn(async move {
        let mut notes = host.ledger.subscribe();
        while !host.is_stopping() {
            let changed = tokio::time::timeout(SYNC_EVERY, notes.recv()).await;
            if let Ok(Err(RecvError::Closed)) = changed {
                return;
            }
            // Let a burst of commits settle, then reconcile once.
            tokio::time::sleep(SYNC_DEBOUNCE).await;
            while notes.try_recv().is_ok() {}
            match sync(&host, &m).await {
                Ok(r) => log_report(&r),
                Err(e) => warn!("reconciling the catalog failed (retried later): {e}"),
            }
        }
    });
}
