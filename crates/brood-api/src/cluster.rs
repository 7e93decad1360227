//! The cluster on the wire: hosts, zones, domains and placements of the
//! catalog (`/v1/cluster/...`, answered by a broodd started with `--catalog`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Memory, vCPUs and disk as placement counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterCapacity {
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: u64,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: u64,
    /// Disk in GiB.
    #[serde(default)]
    pub disk_gib: u64,
}

/// Body of `GET /v1/cluster`: this broodd's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// This host's name in the catalog.
    pub host: String,
    /// The catalog's schema version.
    pub schema_version: i32,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// Silent longer than this: suspect.
    pub suspect_after_ms: u64,
    /// Silent longer than this: failed.
    pub failed_after_ms: u64,
}

/// One host of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHost {
    /// Its name.
    pub name: String,
    /// Where its broodd listens.
    pub address: String,
    /// `active`, `draining`, `pending` (never registered), `suspect` or `failed`.
    pub state: String,
    /// What it has.
    pub capacity: ClusterCapacity,
    /// What the partitions placed on it hold.
    pub used: ClusterCapacity,
    /// How many partitions are placed on it.
    pub partitions: u64,
    /// The zones it provides, `kind:name`.
    pub zones: Vec<String>,
    /// Milliseconds since its last heartbeat (absent: never).
    pub silent_ms: Option<u64>,
    /// broodd's version there.
    pub broodd_version: String,
    /// The operations instance that watches it (absent: none holds its lease).
    #[serde(default)]
    pub ops: Option<String>,
}

/// Body of `GET /v1/cluster/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHostList {
    /// Every host, by name.
    pub hosts: Vec<ClusterHost>,
}

/// Body of `POST /v1/cluster/hosts`: a host added ahead of its broodd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterHostAddRequest {
    /// Its name: 1-63 of `[a-z0-9._-]`.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub name: String,
    /// Where its broodd will listen (`HOST:PORT`).
    #[serde(default)]
    pub address: String,
    /// What it has (its broodd's registration replaces this).
    #[serde(default)]
    pub capacity: ClusterCapacity,
    /// The zones it provides, `kind:name`.
    #[serde(default)]
    pub zones: Vec<String>,
}

/// One zone and the hosts providing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterZone {
    /// `kind:name`.
    pub zone: String,
    /// Hosts providing it.
    pub hosts: Vec<String>,
}

/// Body of `GET /v1/cluster/zones`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterZoneList {
    /// Every zone, by kind then name.
    pub zones: Vec<ClusterZone>,
}

/// Body of `POST /v1/cluster/zones`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterZoneAddRequest {
    /// `kind:name`; a kind other than network, storage, console, firmware,
    /// monitor, power, processor and memory is administrator-defined.
    #[schema(min_length = 3, max_length = 127)]
    pub zone: String,
}

/// A domain's policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterDomainPolicy {
    /// `mission-critical`, `production` (default), `test` or `development`.
    #[serde(default)]
    pub importance: Option<String>,
    /// Hosts its partitions may use (empty: any).
    #[serde(default)]
    pub available: Vec<String>,
    /// Hosts tried first, in order.
    #[serde(default)]
    pub preferred: Vec<String>,
    /// Kept free for the domain on every host it may use.
    #[serde(default)]
    pub guarantee: ClusterCapacity,
    /// At most this much of one host (zero fields: no limit).
    #[serde(default)]
    pub limit: ClusterCapacity,
}

/// One domain (also the body of `POST /v1/cluster/domains`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterDomain {
    /// Its name: 1-63 of `[a-z0-9._-]`.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub name: String,
    /// Its policy.
    pub policy: ClusterDomainPolicy,
}

/// Body of `GET /v1/cluster/domains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterDomainList {
    /// Every domain, by name.
    pub domains: Vec<ClusterDomain>,
}

/// Body of `POST /v1/cluster/placements`: define a partition in the
/// catalog and place it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPlaceRequest {
    /// The partition's name (unique in the cluster; its VM is created
    /// under this name on the host chosen).
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub name: String,
    /// Its domain (default `default`).
    #[serde(default)]
    pub domain: Option<String>,
    /// What it needs (with `definition`: at least what its active
    /// configuration charges, which is used when it is more).
    #[serde(default)]
    pub demand: ClusterCapacity,
    /// Required zones: `kind:name[|name...]` (ranked), `kind:*`, `?kind:...` optional.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Create it there too: its definition, as `POST /v1/partitions` takes
    /// it (of the same name). It is checked here, then published with the
    /// placement; the chosen host's broodd defines it (and starts it with
    /// `start`) as a job, and the placement shows `held` once it has.
    #[serde(default)]
    pub definition: Option<crate::DefineRequest>,
}

/// A partition's placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterPlacement {
    /// The partition's id in the catalog.
    pub partition: Uuid,
    /// Its name.
    pub name: String,
    /// Its domain.
    pub domain: String,
    /// The host (absent: not placed).
    pub host: Option<String>,
    /// Bumped by every placement change.
    pub generation: u64,
    /// Whether the host's ledger holds it (its VM exists there).
    pub held: bool,
    /// What it needs.
    pub demand: ClusterCapacity,
    /// Partitions of lower importance to move away first (a displacement).
    pub evict: Vec<Uuid>,
}

/// Body of `GET /v1/cluster/placements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterPlacementList {
    /// Every placement, by partition name.
    pub placements: Vec<ClusterPlacement>,
}

/// An operations instance (`broodd ops`) authorized in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterOps {
    /// Its name.
    pub name: String,
    /// Milliseconds since it last renewed its leases (absent: it never ran).
    pub silent_ms: Option<u64>,
    /// The hosts it watches (unexpired leases).
    pub hosts: Vec<String>,
}

/// Body of `GET /v1/cluster/ops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterOpsList {
    /// Every authorized instance, by name.
    pub ops: Vec<ClusterOps>,
}

/// Body of `POST /v1/cluster/ops`: authorize a new operations instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterOpsAddRequest {
    /// Its name: 1-63 of `[a-z0-9._-]`.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub name: String,
}

/// Answer of `POST /v1/cluster/ops`: the instance's token, shown once (the
/// catalog keeps only its SHA-256).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterOpsAdded {
    /// Its name.
    pub name: String,
    /// Its token: give it to `broodd ops --token-file`.
    pub token: String,
}

impl std::fmt::Debug for ClusterOpsAdded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOpsAdded")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /v1/partitions/{name}/migrate`: where to live-migrate a
/// running partition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterMigrateRequest {
    /// The target host; without it placement picks one (never the current host).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 63)]
    pub to: Option<String>,
}

/// A live migration that completed: the partition runs on `to`, and `from`
/// holds nothing of it any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterMigration {
    /// The partition's name.
    pub partition: String,
    /// The host it left.
    pub from: String,
    /// The host it runs on now.
    pub to: String,
    /// The placement generation the move committed at.
    pub generation: u64,
    /// QEMU's total time of the stream, in milliseconds.
    pub total_ms: u64,
    /// The guest's pause for the switch (QEMU's `downtime`), in milliseconds.
    pub downtime_ms: u64,
    /// From the request to the source released, in milliseconds.
    pub wall_ms: u64,
}
