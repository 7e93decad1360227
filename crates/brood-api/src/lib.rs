//! broodd's REST API types, shared by the daemon (which derives its OpenAPI
//! document from them) and the `brood` CLI (which deserializes them). Plain
//! data only: validation and the mapping to domain types live in broodd.
//!
//! Every route is under `/v1`, takes and returns JSON, and needs
//! `Authorization: Bearer <token>`; failures return [`ErrorBody`].

#![warn(missing_docs)]

pub mod attach;
pub mod change;
pub mod cluster;
pub mod error;
pub mod event;
pub mod fork;
pub mod host;
pub mod image;
pub mod job;
pub mod ledger;
pub mod listen;
pub mod network;
pub mod partition;
pub mod service;
pub mod snapshot;
pub mod tenancy;

pub use change::{
    Apply, AttachDiskRequest, AttachNicRequest, ChangeResult, DetachQuery, PendingChange,
    ResizeDiskRequest, RunningNow, SetResourcesRequest,
};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use event::{Event, EventKind};
pub use fork::{
    ChildStatus, ForkChild, ForkRequest, ForkResponse, IdentityPool, IdentityPoolCreateRequest,
    IdentityPoolItem, IdentityPoolKind, IdentityPoolList, Template, TemplateCreateRequest,
    TemplateList,
};
pub use host::{EngineInfo, HostInfo};
pub use image::{Image, ImageBuildRequest, ImageList, ImageRootfs, UnreadableImage};
pub use job::{
    Job, JobEvent, JobList, JobQueue, JobState, WorkflowCreateRequest, WorkflowInfo, WorkflowList,
    WorkflowRunRequest,
};
pub use ledger::{
    AuditEntry, AuditLog, LedgerView, OwnerHoldings, Problem, Resources, VerifyReport,
};
pub use network::{
    DiskClient, HostPort, IoPartition, IoPartitionList, IoPartitionPatch, Network,
    NetworkCreateRequest, NetworkList, NetworkMember, PortProtocol, PublishedPort,
};
pub use partition::*;
pub use snapshot::{Snapshot, SnapshotCreateRequest, SnapshotList};
pub use tenancy::*;

/// Default page size of list endpoints.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page a client may ask for.
pub const MAX_PAGE: usize = 1000;
/// Largest request body broodd accepts (1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// broodd's socket in its data directory.
pub const SOCKET_FILE: &str = "broodd.sock";
/// broodd's bearer token in its data directory (mode 0600).
pub const TOKEN_FILE: &str = "token";
/// Fewest hex digits a token file may hold (128 bits).
pub const MIN_TOKEN_HEX_CHARS: usize = 32;
/// The lock a running broodd holds on its data directory.
pub const LOCK_FILE: &str = "broodd.lock";
/// Where broodd records the addresses it serves ([`listen::ListenRecord`]).
pub const LISTEN_FILE: &str = "listen.json";
/// broodd's TLS certificate in its data directory, made at first start
/// when it listens on TCP without `--tls-cert` (PEM).
pub const TLS_CERT_FILE: &str = "tls-cert.pem";
/// The private key of [`TLS_CERT_FILE`] (PEM, mode 0600).
pub const TLS_KEY_FILE: &str = "tls-key.pem";
