//! Business units, users, roles and chargeback (US 8,924,964), on top of
//! the ledger's units (`brood_ledger::UnitOp`): who is calling
//! ([`caller`]), what each role may do ([`authz`]), the checked lookups
//! that hand routes typed, authorized handles ([`lookup`]), and the
//! operations behind `/v1/units`, `/v1/requests`, `/v1/infra`
//! ([`units`]) and `/v1/users`, `/v1/tokens`, `/v1/prices`,
//! `/v1/chargeback` ([`accounts`]).
//!
//! The rule every route follows: it reaches an object only through a
//! `Caller` lookup (`Caller::partition`, `Caller::template`,
//! `Caller::unit`, ...), which returns an [`lookup::Authorized`] handle or
//! an error: 404, worded as for an object that does not exist, when the
//! caller may not read it; 403 when it may read it but not do this. The
//! operations take the handle (or the uuid it carries). Quota is not
//! checked here at all: a unit's VMs reserve from its ledger holding, so
//! the ledger refuses what the allocation cannot hold.
//!
//! Jobs (issue 13) and the portal (issue 14) build on the same handles:
//! take a `Caller`, look the object up with the action the job performs,
//! and keep the `Authorized` handle for the job's steps.

pub mod accounts;
pub mod authz;
pub mod caller;
pub mod lookup;
pub mod token;
pub mod units;

pub use authz::{Action, Kind, Verdict};
pub use caller::{Caller, UnitRef};
pub use lookup::Authorized;
