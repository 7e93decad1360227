//! Changing a partition after it is defined: its memory, vCPUs and CPU cap
//! (`PATCH /v1/partitions/{name}/resources`), its disks
//! (`/v1/partitions/{name}/disks`) and its NICs (`/v1/partitions/{name}/nics`).
//! A change to a stopped partition is its new definition; a running one
//! takes live what its machine type allows and the rest at its next start,
//! marked as pending meanwhile ([`PendingChange`]).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::partition::Partition;

/// When a change to a running partition takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Apply {
    /// Live where the machine allows it, otherwise at the next start (the
    /// answer says which).
    #[default]
    Auto,
    /// Live, or refused (409) where the machine cannot take it live.
    Now,
    /// At the next start only; the running VM keeps what it has.
    NextStart,
}

/// Body of `PATCH /v1/partitions/{name}/resources`: what is left out stays.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SetResourcesRequest {
    /// Guest memory in MiB, 32-4194304.
    #[schema(minimum = 32, maximum = 4194304)]
    pub memory_mib: Option<u64>,
    /// Virtual CPUs, 1-255.
    #[schema(minimum = 1, maximum = 255)]
    pub vcpus: Option<u32>,
    /// CPU cap in percent of one CPU, 1 to 100 per vCPU.
    #[schema(minimum = 1, maximum = 25500)]
    pub cpu_cap_pct: Option<u32>,
    /// Lift the CPU cap (not with `cpu_cap_pct`).
    pub no_cpu_cap: bool,
    /// Host ports to publish (`--publish HOST:GUEST[/tcp|udp]`); one the VM
    /// publishes already is forwarded to the new guest port. A running VM
    /// gets them at once.
    pub publish: Vec<crate::network::PublishedPort>,
    /// Host ports to stop publishing (`--unpublish HOST[/tcp|udp]`); each
    /// must be one the VM publishes. Removed before `publish` is added.
    pub unpublish: Vec<crate::network::HostPort>,
    /// When a running partition takes the change.
    pub apply: Apply,
}

/// Body of `POST /v1/partitions/{name}/disks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDiskRequest {
    /// Name, unique in the partition: `[a-z0-9_-]`, 1-32 characters.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]+$")]
    pub name: String,
    /// Size in GiB, 1-65536.
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gib: u64,
    /// When a running partition gets it.
    #[serde(default)]
    pub apply: Apply,
}

/// Body of `PUT /v1/partitions/{name}/disks/{disk}`: a disk only grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeDiskRequest {
    /// New size in GiB, larger than today's, at most 65536.
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gib: u64,
    /// When a running partition sees it.
    #[serde(default)]
    pub apply: Apply,
}

/// Body of `POST /v1/partitions/{name}/nics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachNicRequest {
    /// A network, a host bridge, `user` or `user-unrestricted`, as in a
    /// configuration's NIC.
    pub network: String,
    /// MAC address; chosen by broodd (and kept) when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// When a running partition gets it.
    #[serde(default)]
    pub apply: Apply,
}

/// Query of the detach routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
pub struct DetachQuery {
    /// When a running partition loses the device: `auto` (default),
    /// `now` or `next-start`.
    #[param(inline)]
    pub apply: Apply,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeResult {
    /// The partition after the change.
    pub partition: Partition,
    /// What the running VM took live (empty for a stopped partition).
    pub applied_now: Vec<String>,
    /// What waits for the next start, each with why it could not be live.
    pub next_start: Vec<String>,
}

/// What a running partition's VM runs while its definition holds a change
/// for the next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningNow {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Its disks' names, in guest order.
    pub disks: Vec<String>,
    /// Its NICs' networks, in guest order.
    pub nics: Vec<String>,
}

/// A change that waits for the partition's next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingChange {
    /// What changes, for people.
    pub summary: String,
    /// Since when it waits (RFC 3339).
    pub since: String,
    /// What runs now.
    pub running: RunningNow,
}
