//! Business units, their allocations and requests, users and tokens, the
//! infrastructure hierarchy, prices and chargeback (US 8,924,964): the
//! bodies of `/v1/units`, `/v1/requests`, `/v1/users`, `/v1/tokens`,
//! `/v1/infra`, `/v1/prices` and `/v1/chargeback`.
//!
//! Which caller may call what is broodd's authorization table
//! (`crates/broodd/tests/authz-roles.txt`); an admin acts inside a unit by
//! sending the unit's name in the [`UNIT_HEADER`] header.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ledger::Resources;

/// The header an administrator (or auditor) sends to act inside a unit.
pub const UNIT_HEADER: &str = "brood-unit";

/// A role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its unit: users, requests and every VM.
    UnitAdmin,
    /// Its unit's VMs: create from allowed templates, start, stop, exec.
    UnitUser,
    /// Reads everything, ledger and audit log included; changes nothing.
    Auditor,
}

/// `POST /v1/units`: a unit registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitRegisterRequest {
    /// Unique name, 1-64 characters of `[a-z0-9_.-]`.
    #[schema(max_length = 64, pattern = "^[a-z0-9_.-]+$")]
    pub name: String,
    /// Who to call (1-256 bytes).
    #[schema(max_length = 256)]
    pub contact: String,
}

/// A unit with its allocation and use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unit {
    /// Its id.
    pub uuid: Uuid,
    /// Its name.
    pub name: String,
    /// Who to call.
    pub contact: String,
    /// What it was granted.
    pub allocated: Resources,
    /// What its VMs hold now.
    pub used: Resources,
    /// What it may still reserve.
    pub free: Resources,
    /// Networks it may use.
    pub networks: Vec<String>,
    /// Templates it may create VMs from.
    pub templates: Vec<String>,
    /// When it registered.
    pub created_at: String,
}

/// The units the caller may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitList {
    /// By name.
    pub items: Vec<Unit>,
}

/// `POST /v1/units/{name}/requests`: asks for an allocation or a change.
/// Each amount is the whole allocation wanted afterwards; one left out
/// stays as allocated now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    /// vCPUs.
    pub vcpus: Option<u64>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// Disk in GiB.
    pub disk_gib: Option<u64>,
    /// Network interfaces.
    pub nics: Option<u64>,
    /// Networks wanted (replaces the list when given).
    pub networks: Option<Vec<String>>,
    /// Templates wanted (replaces the list when given).
    pub templates: Option<Vec<String>>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for an administrator.
    Pending,
    /// Granted as asked.
    Approved,
    /// Granted in part.
    Partial,
    /// Refused.
    Rejected,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitRequestView {
    /// Its number.
    pub id: u64,
    /// The unit's name.
    pub unit: String,
    /// The allocation asked for.
    pub want: Resources,
    /// Networks asked for.
    pub networks: Vec<String>,
    /// Templates asked for.
    pub templates: Vec<String>,
    /// Where it stands.
    pub state: RequestState,
    /// What was granted.
    pub granted: Option<Resources>,
    /// The administrator's note.
    pub note: Option<String>,
    /// When it was made.
    pub created_at: String,
    /// When it was decided.
    pub decided_at: Option<String>,
    /// Who decided it.
    pub decided_by: Option<String>,
}

/// Requests, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitRequestList {
    /// Oldest first.
    pub items: Vec<UnitRequestView>,
}

/// `POST /v1/requests/{id}/approve`: approves a request, in part when an
/// amount is given that differs from the request's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// vCPUs granted.
    pub vcpus: Option<u64>,
    /// Memory in MiB granted.
    pub memory_mib: Option<u64>,
    /// Disk in GiB granted.
    pub disk_gib: Option<u64>,
    /// NICs granted.
    pub nics: Option<u64>,
    /// A note for the unit.
    pub note: Option<String>,
}

/// `POST /v1/requests/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Why.
    pub note: Option<String>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreateRequest {
    /// Unique name, 1-64 characters of `[a-z0-9_.-]`.
    #[schema(max_length = 64, pattern = "^[a-z0-9_.-]+$")]
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its unit (the unit roles only; a unit admin's own by default).
    pub unit: Option<String>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Unit, for the unit roles.
    pub unit: Option<String>,
    /// When it was created.
    pub created_at: String,
}

/// Users, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// By name.
    pub items: Vec<User>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// Whose token.
    pub user: String,
    /// Seconds until it expires (never, if left out); at most ten years.
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_s: Option<u64>,
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// Its id (the public part).
    pub id: String,
    /// The bearer token; broodd keeps only its hash.
    pub token: String,
    /// Whose.
    pub user: String,
    /// When it expires.
    pub expires_at: Option<String>,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// Its id.
    pub id: String,
    /// Whose.
    pub user: String,
    /// When it was made.
    pub created_at: String,
    /// When it expires.
    pub expires_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

/// Tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// By user, then age.
    pub items: Vec<Token>,
}

/// A host of the infrastructure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfraHost {
    /// Name.
    pub name: String,
    /// Its capacity.
    pub capacity: Resources,
}

/// A service role of an infrastructure service, and the VMs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRole {
    /// Name.
    pub name: String,
    /// The VMs (partition names) that play it.
    #[serde(default)]
    pub vms: Vec<String>,
}

/// An infrastructure service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfraService {
    /// Name.
    pub name: String,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<ServiceRole>,
}

/// An infrastructure: compute, storage and network, and its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Infrastructure {
    /// Name.
    pub name: String,
    /// Hosts and their capacity.
    #[serde(default)]
    pub hosts: Vec<InfraHost>,
    /// Storage zones.
    #[serde(default)]
    pub storage_zones: Vec<String>,
    /// Networks.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Services.
    #[serde(default)]
    pub services: Vec<InfraService>,
}

/// The hierarchy datacenter -> infrastructure -> service -> role -> VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    /// Name.
    pub name: String,
    /// Its infrastructures.
    #[serde(default)]
    pub infrastructures: Vec<Infrastructure>,
}

/// `GET /v1/infra`: the hierarchy as the caller may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InfraView {
    /// The datacenter (`None` until the administrator sets one). A unit's
    /// caller sees only its exposed portion: its networks, and of the
    /// services only the roles its VMs play.
    pub datacenter: Option<Datacenter>,
    /// The unit whose portion this is, if the caller is inside one.
    pub unit: Option<String>,
}

/// `PUT /v1/prices`: the price of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    /// `vcpu`, `memory_gib`, `disk_gib`, `nic` or `template:<name>`.
    pub item: String,
    /// Micro-units of money per hour.
    pub micros_per_hour: u64,
}

/// Prices, by item, in micro-units of money per hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceList {
    /// Item to price.
    pub items: BTreeMap<String, u64>,
}

/// `POST /v1/chargeback/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The unit.
    pub unit: String,
    /// Micro-units of money.
    #[schema(minimum = 1)]
    pub micros: u64,
    /// Why (1-512 bytes).
    pub reason: String,
}

/// A refund made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refund {
    /// The unit.
    pub unit: String,
    /// Micro-units of money.
    pub micros: u64,
    /// The audit entry that records it.
    pub tx: u64,
}

/// One line of a unit's charges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChargeLine {
    /// `reservation` or `allocation`.
    pub model: String,
    /// The price item.
    pub item: String,
    /// Priced units times hours.
    pub quantity_hours: f64,
    /// Micro-units of money.
    pub micros: u64,
}

/// What one unit is charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnitCharge {
    /// The unit.
    pub unit: String,
    /// Reservation-based total, micro-units.
    pub reservation_micros: u64,
    /// Allocation-based total, micro-units.
    pub allocation_micros: u64,
    /// Refunds in the period, micro-units.
    pub refunds_micros: u64,
    /// Every line.
    pub lines: Vec<ChargeLine>,
}

/// `GET /v1/chargeback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChargebackReport {
    /// Start, RFC 3339.
    pub from: String,
    /// End, RFC 3339.
    pub to: String,
    /// By unit name.
    pub units: Vec<UnitCharge>,
}
