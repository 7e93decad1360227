//! Who is calling: the bootstrap administrator (the token in the data
//! directory) or a user whose token the ledger knows, with its role and
//! unit, and the unit an administrator or auditor acts inside
//! (`brood-unit` header, `brood --unit U`).

use std::time::SystemTime;

use brood_ledger::{UserRecord, UserRole};
use uuid::Uuid;

use super::authz::{self, Action, Kind, Verdict};
use super::token;
use crate::host::{Host, HostError, HostResult};

/// The actor the audit log names for the data directory's token.
pub const BOOTSTRAP_ACTOR: &str = "admin";

/// A unit, by uuid and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRef {
    /// Its id.
    pub uuid: Uuid,
    /// Its name.
    pub name: String,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    user: String,
    role: UserRole,
    /// The caller's own unit (unit roles), or the unit an admin or
    /// auditor chose to act inside.
    unit: Option<UnitRef>,
}

/// Why a token was refused (all answer 401; the message says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one broodd never made.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl Caller {
    /// The bootstrap administrator.
    pub fn bootstrap() -> Caller {
        Caller {
            user: BOOTSTRAP_ACTOR.into(),
            role: UserRole::Admin,
            unit: None,
        }
    }

    /// Authenticates a presented token that is not the bootstrap one.
    pub async fn authenticate(
        host: &Host,
        presented: &[u8],
    ) -> HostResult<Result<Caller, Refusal>> {
        let Some((id, secret)) = token::split(presented) else {
            return Ok(Err(Refusal::Unknown));
        };
        let Some((t, user)) = host.ledger.credential(&id.to_ascii_lowercase()).await? else {
            return Ok(Err(Refusal::Unknown));
        };
        if !token::matches(secret, &t.hash) {
            return Ok(Err(Refusal::Unknown));
        }
        if t.revoked_at.is_some() {
            return Ok(Err(Refusal::Revoked));
        }
        if let Some(exp) = &t.expires_at {
            let at = humantime::parse_rfc3339(exp)
                .map_err(|e| HostError::corrupt(format!("expiry of token {}", t.id), e))?;
            if SystemTime::now() >= at {
                return Ok(Err(Refusal::Expired));
            }
        }
        Caller::of_user(host, &user).await.map(Ok)
    }

    /// The caller a job acts as after a restart of broodd: its actor, by
    /// name (the bootstrap administrator, or a user). A user deleted since
    /// the job was submitted is refused.
    pub async fn of_actor(host: &Host, actor: &str) -> HostResult<Caller> {
        if actor == BOOTSTRAP_ACTOR {
            return Ok(Caller::bootstrap());
        }
        let user = host.ledger.user(actor).await?.ok_or_else(|| {
            HostError::Forbidden(format!(
                "user {actor:?}, who submitted the job, no longer exists"
            ))
        })?;
        Caller::of_user(host, &user).await
    }

    async fn of_user(host: &Host, user: &UserRecord) -> HostResult<Caller> {
        let unit = match user.unit {
            Some(u) => {
                let rec = host.ledger.unit_by_uuid(u).await?.ok_or_else(|| {
                    HostError::corrupt(
                        format!("unit of user {}", user.name),
                        std::io::Error::other("the unit is gone"),
                    )
                })?;
                Some(UnitRef {
                    uuid: rec.uuid,
                    name: rec.name,
                })
            }
            None => None,
        };
        Ok(Caller {
            user: user.name.clone(),
            role: user.role,
            unit,
        })
    }

    /// Acts inside unit `name` (the `brood-unit` header). An admin or
    /// auditor may pick any unit; a unit's user only its own. A unit that
    /// does not exist, or that the caller may not see, is a 404.
    pub async fn enter(mut self, host: &Host, name: &str) -> HostResult<Caller> {
        let hidden = || {
            HostError::NotFound(format!(
                "no unit named {name:?}: `brood unit list` shows them"
            ))
        };
        if self.role.is_unit_role() {
            return match &self.unit {
                Some(u) if u.name == name => Ok(self),
                _ => Err(hidden()),
            };
        }
        let rec = host.ledger.unit_by_name(name).await?.ok_or_else(hidden)?;
        self.unit = Some(UnitRef {
            uuid: rec.uuid,
            name: rec.name,
        });
        Ok(self)
    }

    /// The name the audit log records.
    pub fn actor(&self) -> &str {
        &self.user
    }

    /// The role.
    pub fn role(&self) -> UserRole {
        self.role
    }

    /// The unit the caller acts inside, if any.
    pub fn unit(&self) -> Option<&UnitRef> {
        self.unit.as_ref()
    }

    /// The unit whose objects a list shows: `None` means every object
    /// (an admin or auditor outside any unit).
    pub fn scope(&self) -> Option<Uuid> {
        self.unit.as_ref().map(|u| u.uuid)
    }

    /// The verdict for an object of `kind` that belongs to `owner` (a
    /// unit, or none).
    pub fn verdict(&self, action: Action, kind: Kind, owner: Option<Uuid>) -> Verdict {
        let own = match (&self.unit, owner) {
            (Some(u), Some(o)) => u.uuid == o,
            // An admin outside a unit owns everything; a unit role owns
            // nothing that has no unit.
            (None, _) => true,
            (Some(_), None) => !self.role.is_unit_role(),
        };
        authz::policy(self.role, action, kind, own)
    }

    /// Checks an action on something host-wide or not yet made (a new
    /// VM, request, user): `Hide` cannot apply, so a refusal is 403.
    pub fn check(&self, action: Action, kind: Kind) -> HostResult<()> {
        match authz::policy(self.role, action, kind, true) {
            Verdict::Allow => Ok(()),
            Verdict::Forbid | Verdict::Hide => Err(self.forbidden(action, kind)),
        }
    }

    /// The 403 error for an action the role may not take.
    pub fn forbidden(&self, action: Action, kind: Kind) -> HostError {
        HostError::Forbidden(format!(
            "user {} ({}) may not {} {}: ask an administrator (`brood user create --role ...`)",
            self.user,
            self.role.as_str(),
            action.as_str(),
            match kind {
                Kind::Ledger | Kind::Host | Kind::Infra => format!("the {}", kind.as_str()),
                _ => format!("{}s", kind.as_str()),
            }
        ))
    }
}
