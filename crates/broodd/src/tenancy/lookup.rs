//! The checked lookups: the only way routes reach partitions, templates,
//! units, requests, users and tokens. Each finds the object, works out
//! which unit it belongs to, asks `authz::policy`, and returns an
//! [`Authorized`] handle, or the error the caller may see: the object's
//! own 404 (worded as if it did not exist) when the caller may not read
//! it, 403 when it may read it but not do this.

use std::ops::Deref;

use brood_ledger::{PartitionRecord, TokenRecord, UnitRecord, UnitRequest, UserRecord};
use uuid::Uuid;

use super::authz::{Action, Kind, Verdict};
use super::caller::Caller;
use crate::host::{Host, HostError, HostResult};

/// An object the caller was checked for, with the action it was checked
/// for. Only this module makes one; read the object through `Deref`.
#[derive(Debug, Clone)]
pub struct Authorized<T> {
    obj: T,
    action: Action,
    unit: Option<Uuid>,
}

impl<T> Authorized<T> {
    /// The action it was checked for.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The unit the object belongs to.
    pub fn unit(&self) -> Option<Uuid> {
        self.unit
    }

    /// The object.
    pub fn into_inner(self) -> T {
        self.obj
    }
}

impl<T> Deref for Authorized<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.obj
    }
}

fn no_unit(name: &str) -> HostError {
    HostError::NotFound(format!(
        "no unit named {name:?}: `brood unit list` shows the units you can see"
    ))
}

fn no_request(id: u64) -> HostError {
    HostError::NotFound(format!(
        "no request {id}: `brood unit requests` shows the requests you can see"
    ))
}

fn no_user(name: &str) -> HostError {
    HostError::NotFound(format!(
        "no user named {name:?}: `brood user list` shows the users you can see"
    ))
}

fn no_token(id: &str) -> HostError {
    HostError::NotFound(format!(
        "no token {id:?}: `brood token list` shows the tokens you can see"
    ))
}

impl Caller {
    fn gate(
        &self,
        (action, kind, owner): (Action, Kind, Option<Uuid>),
        hidden: impl FnOnce() -> HostError,
    ) -> HostResult<()> {
        match self.verdict(action, kind, owner) {
            Verdict::Allow => Ok(()),
            Verdict::Forbid => Err(self.forbidden(action, kind)),
            Verdict::Hide => Err(hidden()),
        }
    }

    /// A partition (or template) by name or uuid, checked for `action`.
    pub async fn partition(
        &self,
        host: &Host,
        key: &str,
        action: Action,
    ) -> HostResult<Authorized<PartitionRecord>> {
        let rec = self.find(host, key).await?;
        let kind = if rec.is_template() {
            Kind::Template
        } else {
            Kind::Partition
        };
        self.checked(host, rec, action, kind, || HostError::no_partition(key))
            .await
    }

    /// A template by name or uuid, checked for `action`. A unit may also
    /// read and fork from the templates its allocation names.
    pub async fn template(
        &self,
        host: &Host,
        key: &str,
        action: Action,
    ) -> HostResult<Authorized<PartitionRecord>> {
        let rec = self.find(host, key).await?;
        self.checked(host, rec, action, Kind::Template, || {
            HostError::no_partition(key)
        })
        .await
    }

    /// `Host::find`, whose "did you mean" names come from every unit: a
    /// unit's caller gets the plain 404 instead, the same as for a
    /// partition of another unit (so no name leaks through a typo).
    async fn find(&self, host: &Host, key: &str) -> HostResult<PartitionRecord> {
        match host.find(key).await {
            Err(HostError::NotFound(_)) if self.role().is_unit_role() => {
                Err(HostError::no_partition(key))
            }
            other => other,
        }
    }

    async fn checked(
        &self,
        host: &Host,
        rec: PartitionRecord,
        action: Action,
        kind: Kind,
        hidden: impl FnOnce() -> HostError,
    ) -> HostResult<Authorized<PartitionRecord>> {
        let mut owner = host.ledger.unit_of(rec.uuid).await?;
        // A template the caller's unit was granted counts as its own for
        // reading and forking.
        if let (Kind::Template, Action::Read | Action::Operate, Some(u)) =
            (kind, action, self.unit())
            && owner != Some(u.uuid)
            && let Some(unit) = host.ledger.unit_by_uuid(u.uuid).await?
            && unit.templates.contains(&rec.name)
        {
            owner = Some(u.uuid);
        }
        self.gate((action, kind, owner), hidden)?;
        Ok(Authorized {
            obj: rec,
            action,
            unit: owner,
        })
    }

    /// Whether the caller may read this partition (for lists and events).
    pub fn sees(&self, owner: Option<Uuid>, template: bool) -> bool {
        let kind = if template {
            Kind::Template
        } else {
            Kind::Partition
        };
        self.verdict(Action::Read, kind, owner) != Verdict::Hide
    }

    /// A unit by name, checked for `action`.
    pub async fn unit_named(
        &self,
        host: &Host,
        name: &str,
        action: Action,
    ) -> HostResult<Authorized<UnitRecord>> {
        let rec = host
            .ledger
            .unit_by_name(name)
            .await?
            .ok_or_else(|| no_unit(name))?;
        self.gate((action, Kind::Unit, Some(rec.uuid)), || no_unit(name))?;
        Ok(Authorized {
            unit: Some(rec.uuid),
            obj: rec,
            action,
        })
    }

    /// A job by number, checked for `action`.
    pub async fn job(
        &self,
        host: &Host,
        id: u64,
        action: Action,
    ) -> HostResult<Authorized<brood_ledger::JobRecord>> {
        let hidden = || {
            HostError::NotFound(format!(
                "no job {id}: `brood job list` shows the jobs you can see"
            ))
        };
        let rec = host.jobs.job(id).await?.ok_or_else(hidden)?;
        self.gate((action, Kind::Job, rec.unit), hidden)?;
        Ok(Authorized {
            unit: rec.unit,
            obj: rec,
            action,
        })
    }

    /// A request by number, checked for `action`.
    pub async fn request(
        &self,
        host: &Host,
        id: u64,
        action: Action,
    ) -> HostResult<Authorized<UnitRequest>> {
        let rec = host
            .ledger
            .unit_request(id)
            .await?
            .ok_or_else(|| no_request(id))?;
        self.gate((action, Kind::Request, Some(rec.unit)), || no_request(id))?;
        Ok(Authorized {
            unit: Some(rec.unit),
            obj: rec,
            action,
        })
    }

    /// A user by name, checked for `action`.
    pub async fn user(
        &self,
        host: &Host,
        name: &str,
        action: Action,
    ) -> HostResult<Authorized<UserRecord>> {
        let rec = host.ledger.user(name).await?.ok_or_else(|| no_user(name))?;
        self.gate((action, Kind::User, rec.unit), || no_user(name))?;
        Ok(Authorized {
            unit: rec.unit,
            obj: rec,
            action,
        })
    }

    /// The user a new token is for, checked for creating a token of its
    /// unit (a user the caller may not see is a 404).
    pub async fn token_owner(&self, host: &Host, name: &str) -> HostResult<Authorized<UserRecord>> {
        let rec = host.ledger.user(name).await?.ok_or_else(|| no_user(name))?;
        self.gate((Action::Create, Kind::Token, rec.unit), || no_user(name))?;
        Ok(Authorized {
            unit: rec.unit,
            obj: rec,
            action: Action::Create,
        })
    }

    /// A token by id, checked for `action` (it belongs to its user's unit).
    pub async fn token(
        &self,
        host: &Host,
        id: &str,
        action: Action,
    ) -> HostResult<Authorized<TokenRecord>> {
        let (t, user) = host
            .ledger
            .credential(id)
            .await?
            .ok_or_else(|| no_token(id))?;
        self.gate((action, Kind::Token, user.unit), || no_token(id))?;
        Ok(Authorized {
            unit: user.unit,
            obj: t,
            action,
        })
    }
}
