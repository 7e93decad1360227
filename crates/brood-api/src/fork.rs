//! Templates, forks and identity pools on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /v1/templates`: make a running VM a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateCreateRequest {
    /// The running partition to freeze (name or uuid).
    pub vm: String,
    /// The template's name (the partition name rule); the VM's own name
    /// when absent (the VM becomes the template).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_.-]*$")]
    pub name: Option<String>,
    /// Warm children kept started and waiting for a fork (default 2, at most 64).
    #[serde(default, alias = "pool_size")]
    #[schema(maximum = 64)]
    pub warm: Option<u32>,
    /// Keep the template's memory file and state in the data directory
    /// (`DATA_DIR/templates/<uuid>/`) instead of the tmpfs, so it survives
    /// a host reboot (forks read its memory from disk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
    /// Make the template beside the VM, which goes on running (`name`
    /// required and not the VM's): the VM is paused only while its state
    /// is saved, its disks switch to new overlays, the template gets a copy
    /// of its memory and the frozen disk images. Not for a forked child.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

/// A template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// Name.
    pub name: String,
    /// Identifier.
    pub uuid: Uuid,
    /// The template it was derived from, when a child was made a template.
    pub parent: Option<String>,
    /// Guest memory in MiB, held once for all children.
    pub memory_mib: u64,
    /// vCPUs each child gets.
    pub vcpus: u32,
    /// Size of the saved device state.
    pub state_bytes: u64,
    /// The guest agent's fork point the children resume at.
    pub fork_point: u32,
    /// Live children.
    pub children: Vec<String>,
    /// Templates derived from its children.
    pub derived: Vec<String>,
    /// Warm children waiting now.
    pub warm_ready: u32,
    /// Warm children it is refilled to.
    pub warm: u32,
    /// Its frozen disks (the children's overlays are backed by them).
    pub disks: Vec<String>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Whether its memory and state are kept in the data directory
    /// (`--persist`), so it survives a host reboot.
    #[serde(default)]
    pub persistent: bool,
    /// How long the VM was paused while a `keep` template was made of it
    /// (only in the answer to that create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

/// A list of templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    /// The templates, by name.
    pub items: Vec<Template>,
}

/// Body of `POST /v1/templates/{name}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many children (1-256, default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 256)]
    pub count: u32,
    /// Take each child's domain identity from this pool.
    #[serde(default)]
    pub identity_pool: Option<String>,
    /// Take each child's IPv4 address from this pool (kind `ipv4`).
    #[serde(default)]
    pub ip_pool: Option<String>,
    /// Key-values handed to every child's services: at most 64; keys are
    /// 1-64 characters of `[A-Za-z0-9_.-]`, values at most 4096 bytes.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Keep each child's disk overlay across stop and start; otherwise every
    /// start forks afresh from the template.
    #[serde(default)]
    pub persistent: bool,
    /// Wait until the children are ready (default); false returns as soon
    /// as they are recorded.
    #[serde(default = "yes")]
    pub wait: bool,
    /// Memory in MiB each child is charged for what it adds to the
    /// template's: at least 48 (QEMU's own memory), at most the template's
    /// memory (default a quarter of it, at least 48).
    #[serde(default)]
    pub charge_mib: Option<u64>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// How far a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// Recorded; its QEMU is being started or its identity applied.
    Pending,
    /// Identity applied, identity-dependent services done.
    Ready,
    /// Applying its identity or a service failed; `error` says which.
    Failed,
}

/// A forked child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkChild {
    /// Its partition name (also its hostname).
    pub name: String,
    /// Its uuid.
    pub uuid: Uuid,
    /// Its number among the template's children.
    pub index: u32,
    /// Status.
    pub status: ChildStatus,
    /// What failed, when it did.
    pub error: Option<String>,
    /// MAC of its first NIC.
    pub mac: Option<String>,
    /// IPv4 address/prefix.
    pub ipv4: Option<String>,
    /// Domain identity from the pool.
    pub identity: Option<String>,
    /// Whether its overlay survives stop and start.
    pub persistent: bool,
    /// From the request to the child's vCPUs running (ms).
    pub running_ms: Option<f64>,
    /// From the request to the child being ready (ms).
    pub ready_ms: Option<f64>,
    /// Memory it is charged in MiB, trued up from what it really uses
    /// (its memory cgroup's limit); absent before it is recorded.
    #[serde(default)]
    pub charge_mib: Option<u64>,
}

/// Result of a fork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkResponse {
    /// The children, in order.
    pub children: Vec<ForkChild>,
}

/// Kind of identity pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityPoolKind {
    /// Opaque domain identities.
    Identity,
    /// IPv4 addresses with a prefix and gateway.
    Ipv4,
}

/// Body of `POST /v1/identity-pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityPoolCreateRequest {
    /// Name: 1-64 characters of `[a-z0-9_.-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9_.-]+$")]
    pub name: String,
    /// Kind.
    pub kind: IdentityPoolKind,
    /// The identities (kind `identity`): at most 65536, unique, each
    /// 1-256 bytes without control characters.
    #[serde(default)]
    #[schema(max_items = 65536)]
    pub values: Vec<String>,
    /// Address range `FIRST-LAST` (kind `ipv4`), e.g. `10.0.0.10-10.0.0.50`.
    #[serde(default)]
    pub range: Option<String>,
    /// Prefix length of the addresses (kind `ipv4`, default 24).
    #[serde(default)]
    #[schema(maximum = 32)]
    pub prefix: Option<u8>,
    /// Default gateway handed out with the addresses (kind `ipv4`).
    #[serde(default)]
    pub gateway: Option<String>,
}

/// An identity pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IdentityPool {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: IdentityPoolKind,
    /// Number of values.
    pub size: u64,
    /// Values not held by any child.
    pub free: u64,
    /// Prefix length (ipv4).
    pub prefix: Option<u8>,
    /// Gateway (ipv4).
    pub gateway: Option<String>,
    /// Each value and who holds it (on `GET /v1/identity-pools/{name}` only).
    #[serde(default)]
    pub items: Vec<IdentityPoolItem>,
}

/// One value of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityPoolItem {
    /// The value.
    pub value: String,
    /// The partition holding it.
    pub holder: Option<String>,
}

/// A list of pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IdentityPoolList {
    /// The pools, by name.
    pub items: Vec<IdentityPool>,
}
