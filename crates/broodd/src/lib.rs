//! broodd as a library: the host daemon's state, operations and REST API,
//! assembled by [`Broodd::start`] around any [`Engine`]. The `broodd`
//! binary adds the command line, the data directory's lock and token, and
//! the listener; tests run the same code on a fake engine
//! (`brood-testkit`).

pub mod api;
pub mod cluster;
mod convert;
mod fork;
mod host;
mod identity_pool;
mod io;
pub mod job;
mod memory;
mod metrics;
mod network;
mod partition;
mod pool;
mod portal;
mod reconcile;
mod suggest;
mod template;
pub mod tenancy;
mod verify;
mod wire;

use std::sync::Arc;

use anyhow::Context;
use brood_engine::Engine;
use brood_ledger::{Ledger, Resources};

pub use crate::host::Paths;
use crate::host::{Host, Kind, Plugins};
pub use crate::network::nat::{DEFAULT_TABLE as DEFAULT_NFT_TABLE, NatConfig};

/// What broodd is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where things live.
    pub paths: Paths,
    /// The host's capacity (used on first start, and with `set_capacity`).
    pub capacity: Resources,
    /// Replace the ledger's recorded capacity with `capacity`.
    pub set_capacity: bool,
    /// vCPUs of capacity per host CPU.
    pub vcpu_overcommit: f64,
    /// The API's bearer token.
    pub token: String,
    /// The job engine's limits.
    pub jobs: job::JobConfig,
    /// NAT networks' uplink and nftables table.
    pub nat: NatConfig,
}

/// A started broodd: the ledger open, templates loaded, the ledger
/// reconciled with the VMs still running, templates' warm children refilling.
#[derive(Debug, Clone)]
pub struct Broodd {
    host: Arc<Host>,
}

/// Removes what a broodd (or `brood image build`) killed mid-way left on
/// disk: a disk upload's partial file, an image build's or delete's scratch
/// directory (the latter only when no build of that image runs now).
fn sweep_leftovers(paths: &host::Paths) {
    let uploads = host::boot_disk::sweep_uploads(paths);
    if uploads > 0 {
        tracing::info!("removed {uploads} disk upload(s) a killed broodd did not finish");
    }
    for left in brood_image::sweep_leftovers(&paths.images()) {
        tracing::info!(
            "removed {}, left by an image build or delete that did not finish",
            left.display()
        );
    }
}

impl Broodd {
    /// Opens the ledger, loads templates, reconciles, starts refilling.
    pub async fn start(cfg: Config, engine: Arc<dyn Engine>) -> anyhow::Result<Broodd> {
        Broodd::start_with(cfg, engine, None).await
    }

    /// [`Broodd::start`], then joins the cluster when `cluster` is given.
    pub async fn start_with(
        cfg: Config,
        engine: Arc<dyn Engine>,
        cluster: Option<cluster::ClusterConfig>,
    ) -> anyhow::Result<Broodd> {
        let ledger = Ledger::open(&cfg.paths.ledger(), cfg.capacity)
            .await
            .context("open the ledger")?;
        if cfg.set_capacity && ledger.capacity().await? != cfg.capacity {
            ledger
                .set_capacity(cfg.capacity)
                .await
                .context("change the host's capacity")?;
        }
        let mut plugins = Plugins::default();
        plugins.launchers.insert(
            Kind::Plain,
            Arc::new(partition::plain::PlainLauncher {
                paths: cfg.paths.clone(),
            }),
        );
        plugins
            .launchers
            .insert(Kind::Child, Arc::new(fork::child::ChildLauncher));
        plugins.hooks.push(Arc::new(partition::restart::Restarter));
        plugins.hooks.push(Arc::new(template::points::ForkPoints));
        plugins.hooks.push(Arc::new(pool::MemberExits));
        plugins.feature(Arc::new(pool::ServicePools::default()));
        plugins.feature(Arc::new(template::Templates::default()));
        plugins.feature(Arc::new(api::render::RenderCache::default()));
        plugins.feature(Arc::new(partition::change::Changes::default()));
        plugins.hooks.push(Arc::new(network::NetworkHooks));
        plugins.feature(Arc::new(network::nat::Nat::new(cfg.nat)));
        plugins.feature(Arc::new(io::IoPartitions::default()));
        plugins.feature(Arc::new(cluster::Cluster::default()));
        plugins.feature(Arc::new(job::Jobs::new(cfg.jobs)));
        // A cluster member's jobs live in the catalog, so it is reached
        // before the jobs a previous broodd left are settled below.
        let (jobs, catalog): (Arc<dyn brood_ledger::JobStore>, _) = match &cluster {
            Some(c) => {
                let catalog = brood_cluster::Catalog::connect(&c.url, c.retry_for)
                    .await
                    .context("connect to the catalog (--catalog)")?;
                let store =
                    brood_cluster::PgJobStore::new(catalog.clone(), &c.name, ledger.clone());
                (Arc::new(store), Some(catalog))
            }
            None => (Arc::new(ledger.clone()), None),
        };
        let host = Arc::new(Host::new(
            cfg.paths,
            ledger,
            jobs,
            engine,
            cfg.token,
            cfg.vcpu_overcommit,
            plugins,
        ));
        partition::change::load(&host)
            .await
            .context("load the pending changes")?;
        template::freeze::load_all(&host)
            .await
            .context("load the templates")?;
        // I/O partitions first: the VMs reattached below use them.
        io::start_all(&host)
            .await
            .context("start the I/O partitions")?;
        network::nat::start(&host)
            .await
            .context("apply the NAT networks' rules")?;
        pool::load_claims(&host)
            .await
            .context("load the service pools' members")?;
        reconcile::run(&host)
            .await
            .context("reconcile the ledger with running VMs")?;
        sweep_leftovers(&host.paths);
        job::recover::run(&host)
            .await
            .context("settle the jobs a previous broodd left")?;
        template::refill_all(&host);
        memory::spawn(host.clone());
        partition::autostart::spawn(&host);
        pool::refill::spawn(host.clone());
        if let (Some(c), Some(catalog)) = (cluster, catalog) {
            cluster::join(&host, c, catalog)
                .await
                .context("join the cluster")?;
        }
        Ok(Broodd { host })
    }

    /// The REST API.
    pub fn router(&self) -> axum::Router {
        api::router(self.host.clone())
    }

    /// Stops acting: supervisors stand down, and templates' warm children
    /// (broodd's cache, not anyone's VMs) are killed. Partitions' VMs keep
    /// running; the next start attaches to them again.
    pub async fn shutdown(&self) {
        self.host.feature::<job::Jobs>().abort_all();
        self.host.stop();
        template::drain_all(&self.host).await;
    }
}
