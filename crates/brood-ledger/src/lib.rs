//! brood's transactional resource ledger, on embedded SQLite.
//!
//! Every unit of host capacity (memory, vCPUs, disk, NICs) is held by
//! exactly one owner: the `available` pseudo-partition or a partition. All
//! changes are transactions (`Tx`) of ops that carry before-images, checked
//! as preconditions; a transaction applies atomically and durably or not at
//! all, and appends one row with before- and after-images to an
//! append-only audit log (WO 2005/036358, paragraphs 0088, 0098-0099, 0156).
//! Partitions carry their life-cycle `Stage` and `RunState`, changed only
//! through checked transitions, and their lineage: a child forked from a
//! template names it as `parent`. Pools hand out identities (MACs, IPs) to
//! partitions, one holder per value. Business units (`unit`) hold the
//! capacity they were allocated and their partitions reserve from it;
//! users and tokens (`user`) and prices and refunds (`charge`) are ledger
//! rows too, changed by audited ops.
//!
//! - `Ledger`: async, cloneable handle for broodd (a writer thread with
//!   group commit, reader threads with read-only connections).
//! - `LedgerDb`: the same ledger, synchronous, over one connection.
//!
//! The ledger never calls the engine; broodd reconciles it with the QEMU
//! processes it finds (`verify` covers the ledger-internal invariants only).
//!
//! ```no_run
//! # async fn demo() -> Result<(), brood_ledger::LedgerError> {
//! use brood_ledger::{Ledger, Op, PartitionRecord, Resources, Tx};
//! let cap = Resources { memory_mib: 8192, vcpus: 4, disk_gib: 100, nics: 8 };
//! let ledger = Ledger::open("/var/lib/brood/ledger.db", cap).await?;
//! let mut p = PartitionRecord::new("web-1");
//! p.demand = Resources { memory_mib: 512, vcpus: 1, disk_gib: 10, nics: 1 };
//! let mut ops = vec![Op::InsertPartition(p.clone())];
//! ops.extend(Op::reserve(p.uuid, &Resources { disk_gib: 10, ..Resources::ZERO }));
//! ledger.commit(Tx::new("alice", "create web-1", ops)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod action;
mod change;
mod channel;
mod charge;
mod db;
mod error;
mod job;
mod json;
mod ledger;
mod lineage;
mod network;
mod partition;
mod pool;
mod publish;
mod read;
mod resource;
mod schema;
mod service_pool;
mod state;
mod storage_io;
mod store;
mod tenancy;
mod tx;
mod unit;
mod user;
mod verify;

pub use action::ActionRecord;
pub use change::{CHANGE_SUMMARY_MAX_BYTES, ChangeOp, ChangeRecord};
pub use charge::{
    ChargeLine, ChargeModel, ChargeOp, ChargeReport, REFUND_REASON_MAX_BYTES, UnitCharge,
    chargeback, price_item, valid_item,
};
pub use db::{LEDGER_ACTOR, LedgerDb};
pub use error::LedgerError;
pub use job::{
    AdmitLimits, JobChange, JobEvent, JobFilter, JobQueue, JobRecord, JobState, JobStore,
    MAX_JOB_EVENTS, NewJob, WorkflowRecord, async_trait_free::JobStoreFuture,
    conformance as job_store_conformance, host_full, queue_full,
};
pub use json::JsonText;
pub use ledger::{CommitNote, Ledger, LedgerOptions};
pub use lineage::{ChildLineage, ChildStatus, Lineage, PendingOp, Taken, TemplateLineage};
pub use network::{
    ChannelRecord, IO_CPUS_MAX, IoKind, IoRecord, IoState, NETWORK_NAME_MAX_CHARS, NIC_MBPS_MAX,
    NetOp, NetworkRecord, Subnet, switch_name,
};
pub use partition::{PartitionExpect, PartitionPatch, PartitionRecord};
pub use pool::{
    POOL_MAX_VALUES, POOL_NAME_MAX_CHARS, POOL_VALUE_MAX_BYTES, PoolInfo, PoolItem, PoolKind,
};
pub use publish::{MAX_PUBLISHED_PORTS, PortProtocol, PortSpec, PublishOp, PublishedPortRecord};
pub use read::AuditEntry;
pub use resource::{Holding, Owner, ParseNameError, ResourceKind, Resources};
pub use schema::latest_version as schema_version;
pub use service_pool::{
    MemberOrigin, MemberRecord, MemberState, ServicePoolOp, ServicePoolRecord, ServiceRecord,
    ServiceState,
};
pub use state::{RunState, Stage, TransitionError};
pub use storage_io::{DiskChannelRecord, DiskChannelSpec, Transport, storage_name};
pub use tx::{Committed, Op, Tx, TxId};
pub use unit::{
    INFRA_MAX_BYTES, RequestState, UNIT_CONTACT_MAX_BYTES, UNIT_MAX_NAMES, UnitOp, UnitRecord,
    UnitRequest,
};
pub use user::{TokenRecord, UserOp, UserRecord, UserRole};
pub use uuid::Uuid;
pub use verify::Problem;
