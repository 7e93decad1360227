//! broodd as a library: the host daemon's state, operations and REST API,
//! assembled by [`Broodd::start`] around any [`Engine`]. The `broodd`
//! binary adds the command line, the data directory's lock and token, and
//! the listener; tests run the same code on a fake engine
//! (`brood-testkit`).

pub mod api;
mod convert;
mod daemon;
mod error;
mod fork;
mod ops;
mod pool;
mod reconcile;
mod supervise;
mod template;
mod verify;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use brood_engine::Engine;
use brood_ledger::{Ledger, Resources};

pub use crate::daemon::{Daemon, Paths};

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
}

/// A started broodd: the ledger open, templates loaded, the ledger
/// reconciled with the VMs still running, templates' warm children refilling.
#[derive(Debug, Clone)]
pub struct Broodd {
    daemon: Arc<Daemon>,
}

impl Broodd {
    /// Opens the ledger, loads templates, reconciles, starts refilling.
    pub async fn start(cfg: Config, engine: Arc<dyn Engine>) -> anyhow::Result<Broodd> {
        let ledger = Ledger::open(&cfg.paths.ledger(), cfg.capacity)
            .await
            .context("open the ledger")?;
        if cfg.set_capacity && ledger.capacity().await? != cfg.capacity {
            ledger
                .set_capacity(cfg.capacity)
                .await
                .context("change the host's capacity")?;
        }
        let d = Arc::new(Daemon::new(
            cfg.paths,
            ledger,
            engine,
            cfg.token,
            cfg.vcpu_overcommit,
        ));
        template::load_all(&d).await.context("load the templates")?;
        reconcile::run(&d)
            .await
            .context("reconcile the ledger with running VMs")?;
        template::refill_all(&d);
        Ok(Broodd { daemon: d })
    }

    /// The REST API.
    pub fn router(&self) -> axum::Router {
        api::router(self.daemon.clone())
    }

    /// The shared state (for tests that look inside).
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Stops acting: supervisors stand down, and templates' warm children
    /// (broodd's cache, not anyone's VMs) are killed. Partitions' VMs keep
    /// running; the next start attaches to them again.
    pub async fn shutdown(&self) {
        let d = &self.daemon;
        d.stopping.store(true, Ordering::SeqCst);
        for t in d.all_templates() {
            t.drain(d).await;
        }
    }
}
