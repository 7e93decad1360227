//! brood's cluster: the catalog of hosts, zones, domains and partition
//! placements in PostgreSQL ([`Catalog`]), and placement as a pure function
//! of a catalog snapshot ([`place::place`]).
//!
//! A single host needs none of this: broodd without `--catalog` never
//! touches this crate's catalog. With it, each host keeps its own SQLite
//! ledger of what it holds and runs, and reconciles the catalog with it
//! ([`Catalog::sync_host`]).

#![warn(missing_docs)]

mod catalog;
mod error;
mod jobs;
mod lease;
mod migrate;
pub mod model;
mod move_;
pub mod place;
pub mod testing;

pub use catalog::{
    Catalog, HostRecord, HostSpec, LocalPartition, PartitionDef, Placement, SyncReport, parse_zones,
};
pub use error::ClusterError;
pub use jobs::PgJobStore;
pub use lease::{OpsCredential, OpsRecord, Stranded};
pub use migrate::latest_version;
pub use model::{
    Capacity, DomainPolicy, HostState, Importance, Liveness, Requirement, Zone, ZoneKind,
};
pub use move_::{Move, MoveEnd, MoveState, catalog_server};
