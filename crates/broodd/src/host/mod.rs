//! The host core: what every feature of broodd builds on, and which imports
//! none of them.
//!
//! - [`Host`]: paths, the ledger, the engine, the registry of live VMs and
//!   partition locks ([`registry`]), the event bus ([`events`]), and the
//!   features' own state (a type map filled once at start).
//! - [`runstate`]: the only functions that change a partition's run state
//!   and what it holds (begin a start, mark it running, settle it stopped,
//!   saved or crashed with one release formula, pause, freeze).
//! - [`watch`]: one task per live VM records an end nobody asked for.
//! - [`kind`]: how each kind of partition plugs in ([`Launcher`], [`Hooks`]).
//! - [`config`], [`disk`], [`random`], [`paths`], [`error`]: the pieces the
//!   above and the features share.

pub mod boot_disk;
pub mod config;
pub mod disk;
pub mod error;
pub mod events;
pub mod image;
pub mod kind;
pub mod paths;
pub mod random;
pub mod registry;
pub mod root;
pub mod runstate;
mod watch;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use brood_engine::Engine;
use brood_ledger::{JobStore, Ledger};

pub use self::error::{HostError, HostResult, chain};
pub use self::events::Events;
pub use self::kind::{Hooks, Kind, Launcher};
pub use self::paths::Paths;
pub use self::registry::{Registry, Running};

/// What the features plug into the core at start.
#[derive(Debug, Default)]
pub struct Plugins {
    /// How each kind of partition starts.
    pub launchers: HashMap<Kind, Arc<dyn Launcher>>,
    /// Called when VMs start and end.
    pub hooks: Vec<Arc<dyn Hooks>>,
    /// Each feature's shared state, by type.
    pub features: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Plugins {
    /// Adds a feature's shared state.
    pub fn feature<T: Any + Send + Sync>(&mut self, state: Arc<T>) {
        self.features.insert(TypeId::of::<T>(), state);
    }
}

/// The state broodd shares between requests and tasks.
#[derive(Debug)]
pub struct Host {
    /// Where things live.
    pub paths: Paths,
    /// The resource ledger.
    pub ledger: Ledger,
    /// Where jobs and workflows live: the ledger on one host, the cluster
    /// catalog (PostgreSQL) with `--catalog`.
    pub jobs: Arc<dyn JobStore>,
    /// The VM engine.
    pub engine: Arc<dyn Engine>,
    /// The API's bearer token.
    pub token: String,
    /// vCPUs of capacity per host CPU.
    pub vcpu_overcommit: f64,
    /// Live VMs and partition locks.
    pub registry: Registry,
    /// The event bus.
    pub events: Events,
    stopping: AtomicBool,
    plugins: Plugins,
}

impl Host {
    /// Assembles the core.
    pub fn new(
        paths: Paths,
        ledger: Ledger,
        jobs: Arc<dyn JobStore>,
        engine: Arc<dyn Engine>,
        token: String,
        vcpu_overcommit: f64,
        plugins: Plugins,
    ) -> Host {
        Host {
            paths,
            events: Events::following(&ledger),
            ledger,
            jobs,
            engine,
            token,
            vcpu_overcommit,
            registry: Registry::default(),
            stopping: AtomicBool::new(false),
            plugins,
        }
    }

    /// A feature's shared state. Every feature registers its state when
    /// broodd starts, so a missing one is a bug in `Broodd::start`.
    pub fn feature<T: Any + Send + Sync>(&self) -> Arc<T> {
        self.plugins
            .features
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|a| a.downcast::<T>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "feature state {} is not registered (Broodd::start must add it)",
                    std::any::type_name::<T>()
                )
            })
    }

    /// The launcher of a kind of partition.
    pub fn launcher(&self, kind: Kind) -> HostResult<Arc<dyn Launcher>> {
        self.plugins
            .launchers
            .get(&kind)
            .cloned()
            .ok_or_else(|| HostError::transition(format!("a {} does not start", kind.name())))
    }

    pub(crate) fn hooks(&self) -> &[Arc<dyn Hooks>] {
        &self.plugins.hooks
    }

    /// Whether broodd is shutting down (supervisors and refills stand down).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Starts shutting down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}
