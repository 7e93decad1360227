//! Pools of service domains and the services they become (issue 10) on the
//! wire: `/v1/pools` (service pools, not the identity pools of
//! `/v1/identity-pools`) and `/v1/services`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What happens to a service domain nobody uses any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnusedPolicy {
    /// Torn down when its last guest is released (or deleted).
    #[default]
    Teardown,
    /// Kept running, unassociated, until released explicitly.
    Keep,
}

/// How a pool makes members after its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefillMode {
    /// The first member is cold-booted to the trigger point and saved
    /// there as the pool's template; every later one is a fork of it, at
    /// the trigger point again, with an identity of its own (claim 5).
    #[default]
    Clone,
    /// Every member is cold-booted.
    Cold,
}

/// Body of `POST /v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePoolCreateRequest {
    /// Name: 1-32 characters of `[a-z0-9-]`, starting with a letter.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z][a-z0-9-]*$")]
    pub name: String,
    /// The image its members boot: `default` (broodd's `--image`) or the
    /// name of an image under `DATA_DIR/images/` (`service`).
    #[serde(default)]
    pub image: Option<String>,
    /// Members kept at the trigger point (default: sized to the host's
    /// free memory, at most 4).
    #[serde(default)]
    #[schema(maximum = 256)]
    pub min: Option<u32>,
    /// Most members at once, handed-out ones included (default `min` + 8).
    #[serde(default)]
    #[schema(maximum = 1024)]
    pub max: Option<u32>,
    /// Refills wait while host CPU use is above this percentage (default 90).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub cpu_threshold_pct: Option<u32>,
    /// Unused members are torn down, oldest first, while the host's
    /// available memory is below this many MiB (default 0: never).
    #[serde(default)]
    pub memory_floor_mib: Option<u64>,
    /// Keep members already differentiated as this class (a pool of ready
    /// DNS domains, say) instead of undifferentiated ones.
    #[serde(default)]
    pub class: Option<String>,
    /// Guest memory of each member in MiB (default 256).
    #[serde(default)]
    #[schema(minimum = 64, maximum = 65536)]
    pub memory_mib: Option<u64>,
    /// A brood network each member has a NIC on (link down until it is
    /// differentiated); none by default.
    #[serde(default)]
    pub network: Option<String>,
    /// Further networks, one NIC each after `network`'s (a `switch` joins
    /// several): at most 8 NICs in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub networks: Vec<String>,
    /// What happens to an unused service domain.
    #[serde(default)]
    pub unused: UnusedPolicy,
    /// How members after the first are made (default `clone`).
    #[serde(default)]
    pub refill: RefillMode,
}

/// Body of `PATCH /v1/pools/{name}`: the pool's refill policy, changed at
/// runtime (fields left out keep their value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePoolUpdateRequest {
    /// Members kept at the trigger point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 256)]
    pub min: Option<u32>,
    /// Most members at once, handed-out ones included (at least `min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1024)]
    pub max: Option<u32>,
    /// Refills wait while host CPU use is above this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub cpu_threshold_pct: Option<u32>,
    /// Unused members are torn down, oldest first, while the host's
    /// available memory is below this many MiB (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_floor_mib: Option<u64>,
}

/// A member of a service pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolMember {
    /// Its partition's name.
    pub name: String,
    /// Its partition's uuid (the member reference in the queue).
    pub uuid: Uuid,
    /// `booting`, `ready` (paused at the trigger point) or `taken`.
    pub state: String,
    /// `cold`, `clone` or `fallback`.
    pub origin: String,
    /// Its place in the queue.
    pub seq: u64,
    /// The pool generation it was made in.
    pub generation: u64,
    /// Its QEMU's pid.
    pub pid: Option<u32>,
}

/// A service pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServicePool {
    /// Its name.
    pub name: String,
    /// The image its members boot.
    pub image: String,
    /// The class its members are kept as, if any.
    pub class: Option<String>,
    /// Members kept ready.
    pub min: u32,
    /// Most members.
    pub max: u32,
    /// Refill CPU threshold, percent.
    pub cpu_threshold_pct: u32,
    /// Memory floor, MiB.
    pub memory_floor_mib: u64,
    /// Guest memory per member, MiB.
    pub memory_mib: u64,
    /// The network members' first NIC joins.
    pub network: Option<String>,
    /// The networks of their further NICs.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Policy for unused service domains.
    pub unused: UnusedPolicy,
    /// How members after the first are made.
    pub refill: RefillMode,
    /// The template members are forked from (`refill: clone`), once made.
    pub template: Option<String>,
    /// Current generation (members of older ones are replaced).
    pub generation: u64,
    /// Members ready in the queue.
    pub ready: u32,
    /// Why the last refill was deferred, if it was.
    pub deferred: Option<String>,
    /// Every member.
    pub members: Vec<PoolMember>,
}

/// Every service pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServicePoolList {
    /// The pools, by name.
    pub items: Vec<ServicePool>,
}

/// Body of `POST /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// The class (`http`, `log`, `dns`...): a directory of
    /// `DATA_DIR/classes/` or a built-in.
    pub class: String,
    /// The pool to take a member from (default: the only pool of this
    /// class, else the only undifferentiated pool).
    #[serde(default)]
    pub pool: Option<String>,
    /// The service's name (default `<class>-<n>`): 1-48 of `[a-z0-9-]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Guests (partition names) it serves; at most its `domain_pairing`.
    #[serde(default, rename = "for")]
    pub guests: Vec<String>,
    /// Key-values (`domain_pairing`, `device_pairing`, `ip`, class parameters).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// An init script run after the class's start script: a host path or an
    /// `http://` URL, read by broodd (at most 256 KiB).
    #[serde(default)]
    pub script: Option<String>,
    /// How long to wait for the readiness probe, ms (default: the class's).
    #[serde(default)]
    #[schema(maximum = 600000)]
    pub timeout_ms: Option<u64>,
}

/// A service: a differentiated pool member and the guests it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    /// Its name (its domain's partition name too).
    pub name: String,
    /// Its id.
    pub uuid: Uuid,
    /// Its class.
    pub class: String,
    /// The pool its member came from.
    pub pool: String,
    /// The member (partition) uuid.
    pub member: Uuid,
    /// `configuring`, `ready` or `failed`.
    pub state: String,
    /// Its addresses (from its `ip` setting), without prefix length.
    pub addresses: Vec<String>,
    /// MAC addresses of its NICs.
    pub macs: Vec<String>,
    /// Guests it serves, by partition name.
    pub guests: Vec<String>,
    /// Most guests it serves.
    pub domain_pairing: u32,
    /// Most devices it manages.
    pub device_pairing: u32,
    /// The key-values it was given.
    pub settings: BTreeMap<String, String>,
    /// The configuration file written before the member was resumed.
    pub config_path: String,
    /// Set when the pool had no ready member: how the domain was made instead.
    pub fallback: Option<String>,
    /// From the request to the probe answering, ms (only in the answer to a request).
    pub ready_ms: Option<u64>,
    /// When it was requested.
    pub created_at: String,
}

/// Every service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    /// The services, by name.
    pub items: Vec<Service>,
}

/// Body of `POST /v1/services/{name}/guests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssociateRequest {
    /// The guest partition's name.
    pub guest: String,
}

/// A service class as broodd reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceClass {
    /// Its name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The image its recipe needs (`default` or `service`).
    pub image: String,
    /// Default guests per domain.
    pub domain_pairing: u32,
    /// Default devices per domain.
    pub device_pairing: u32,
    /// Where its recipe was read from.
    pub dir: String,
}

/// Every class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceClassList {
    /// The classes, by name.
    pub items: Vec<ServiceClass>,
}
