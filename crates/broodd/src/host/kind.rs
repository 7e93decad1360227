//! Kinds of partition and how each plugs into the core. A plain partition
//! boots from its definition; a template never runs; a forked child starts
//! from its template. Later kinds (service domains, I/O partitions) add a
//! variant and a [`Launcher`]; the core's life cycle never branches on
//! "is this a child".

use std::sync::Arc;

use async_trait::async_trait;
use brood_engine::BoxedVm;
use brood_ledger::{Lineage, PartitionRecord, Resources, RunState, Stage};
use uuid::Uuid;

use super::Host;
use super::error::HostResult;
use super::registry::Running;

/// What kind of partition a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Boots from its own definition.
    Plain,
    /// A frozen VM children are forked from; never runs.
    Template,
    /// Forked from a template; starts from it.
    Child,
}

impl Kind {
    /// The kind of `rec`.
    pub fn of(rec: &PartitionRecord) -> Kind {
        match (&rec.lineage, rec.stage) {
            (_, Stage::Template) | (Some(Lineage::Template(_)), _) => Kind::Template,
            (Some(Lineage::Child(_)), _) => Kind::Child,
            (None, _) => Kind::Plain,
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "partition",
            Kind::Template => "template",
            Kind::Child => "forked child",
        }
    }
}

/// How partitions of one kind start.
#[async_trait]
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// What the partition holds while it runs.
    fn demand(&self, rec: &PartitionRecord) -> HostResult<Resources>;

    /// Starts its VM. The record is `starting` with its resources reserved,
    /// and the caller holds the partition's lock; on error the caller gives
    /// the resources back.
    async fn launch(&self, host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<BoxedVm>;

    /// Runs once the VM is recorded running, without the partition's lock
    /// (it may wait on the guest: a kill or delete meanwhile acts at once).
    async fn after_start(
        &self,
        _host: &Arc<Host>,
        rec: PartitionRecord,
        _vm: Arc<Running>,
    ) -> HostResult<PartitionRecord> {
        Ok(rec)
    }
}

/// What features do when the core's VMs change.
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// A partition's VM is recorded running (started, restored, attached).
    fn on_running(&self, _host: &Arc<Host>, _uuid: Uuid, _vm: &Arc<Running>) {}

    /// A VM ended on its own and its end is recorded (`ended_as` is
    /// stopped or crashed).
    fn on_exit(&self, _host: &Arc<Host>, _uuid: Uuid, _ended_as: RunState) {}
}
