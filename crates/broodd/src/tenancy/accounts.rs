//! Users, tokens, prices and chargeback: what `/v1/users`, `/v1/tokens`,
//! `/v1/prices` and `/v1/chargeback` do once the route has checked the
//! caller. A token's secret exists only in the answer that creates it.

use std::time::{Duration, SystemTime};

use brood_api as api;
use brood_ledger::{ChargeOp, Op, Tx, UserOp, UserRecord, UserRole};

use super::authz::{Action, Kind};
use super::caller::Caller;
use super::lookup::Authorized;
use super::token;
use crate::host::{Host, HostError, HostResult};

/// Longest token lifetime: ten years.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(315_360_000);

/// Ledger role to wire role.
pub fn role_out(r: UserRole) -> api::Role {
    match r {
        UserRole::Admin => api::Role::Admin,
        UserRole::UnitAdmin => api::Role::UnitAdmin,
        UserRole::UnitUser => api::Role::UnitUser,
        UserRole::Auditor => api::Role::Auditor,
    }
}

fn role_in(r: api::Role) -> UserRole {
    match r {
        api::Role::Admin => UserRole::Admin,
        api::Role::UnitAdmin => UserRole::UnitAdmin,
        api::Role::UnitUser => UserRole::UnitUser,
        api::Role::Auditor => UserRole::Auditor,
    }
}

async fn user_view(host: &Host, u: &UserRecord) -> HostResult<api::User> {
    let unit = match u.unit {
        Some(id) => host.ledger.unit_by_uuid(id).await?.map(|x| x.name),
        None => None,
    };
    Ok(api::User {
        name: u.name.clone(),
        role: role_out(u.role),
        unit,
        created_at: u.created_at.clone(),
    })
}

/// Creates a user. A unit admin creates users of its own unit only, and
/// never an admin or auditor.
pub async fn create_user(
    host: &Host,
    caller: &Caller,
    req: api::UserCreateRequest,
) -> HostResult<api::User> {
    caller.check(Action::Create, Kind::User)?;
    let role = role_in(req.role);
    let unit = match (&req.unit, caller.unit()) {
        (Some(name), _) => Some(caller.unit_named(host, name, Action::Read).await?.uuid),
        (None, Some(u)) if role.is_unit_role() => Some(u.uuid),
        (None, _) => None,
    };
    if caller.role() != UserRole::Admin {
        if !role.is_unit_role() {
            return Err(caller.forbidden(Action::Create, Kind::User));
        }
        if unit != caller.scope() {
            return Err(HostError::invalid(
                "a unit admin creates users of its own unit only",
            ));
        }
    }
    if role.is_unit_role() && unit.is_none() {
        return Err(HostError::invalid(format!(
            "role {} needs a unit: give --unit UNIT",
            role.as_str()
        )));
    }
    if !role.is_unit_role() && unit.is_some() {
        return Err(HostError::invalid(format!(
            "role {} is host-wide: leave out --unit",
            role.as_str()
        )));
    }
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!("create user {} ({})", req.name, role.as_str()),
            vec![Op::User(UserOp::Create {
                name: req.name.clone(),
                role,
                unit: if role.is_unit_role() { unit } else { None },
            })],
        ))
        .await?;
    let rec = host
        .ledger
        .user(&req.name)
        .await?
        .ok_or_else(|| HostError::invalid("the user vanished after creating"))?;
    user_view(host, &rec).await
}

/// The users the caller may see.
pub async fn list_users(host: &Host, caller: &Caller) -> HostResult<api::UserList> {
    caller.check(Action::Read, Kind::User)?;
    let mut items = Vec::new();
    for u in host.ledger.users(caller.scope()).await? {
        items.push(user_view(host, &u).await?);
    }
    Ok(api::UserList { items })
}

/// Deletes a user and its tokens.
pub async fn delete_user(
    host: &Host,
    caller: &Caller,
    user: &Authorized<UserRecord>,
) -> HostResult<()> {
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!("delete user {}", user.name),
            vec![Op::User(UserOp::Delete {
                name: user.name.clone(),
            })],
        ))
        .await?;
    Ok(())
}

fn token_state(t: &brood_ledger::TokenRecord) -> &'static str {
    if t.revoked_at.is_some() {
        return "revoked";
    }
    let expired = t
        .expires_at
        .as_deref()
        .and_then(|e| humantime::parse_rfc3339(e).ok())
        .is_some_and(|at| SystemTime::now() >= at);
    if expired { "expired" } else { "active" }
}

fn token_view(t: &brood_ledger::TokenRecord) -> api::Token {
    api::Token {
        id: t.id.clone(),
        user: t.user.clone(),
        created_at: t.created_at.clone(),
        expires_at: t.expires_at.clone(),
        revoked_at: t.revoked_at.clone(),
        state: token_state(t).into(),
    }
}

/// Makes a token for a user; the answer is the only place its secret is.
pub async fn create_token(
    host: &Host,
    caller: &Caller,
    req: api::TokenCreateRequest,
) -> HostResult<api::TokenCreated> {
    let user = caller.token_owner(host, &req.user).await?;
    let lifetime = req.expires_in_s.map(Duration::from_secs);
    if lifetime.is_some_and(|l| l.is_zero() || l > MAX_TOKEN_LIFETIME) {
        return Err(HostError::invalid(format!(
            "expires_in_s must be between 1 and {}",
            MAX_TOKEN_LIFETIME.as_secs()
        )));
    }
    let expires_at =
        lifetime.map(|l| humantime::format_rfc3339_seconds(SystemTime::now() + l).to_string());
    let (id, secret, hash) = token::mint()?;
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!("create token {id} for {}", user.name),
            vec![Op::User(UserOp::CreateToken {
                id: id.clone(),
                user: user.name.clone(),
                hash,
                expires_at: expires_at.clone(),
            })],
        ))
        .await?;
    Ok(api::TokenCreated {
        id,
        token: secret,
        user: user.name.clone(),
        expires_at,
    })
}

/// The tokens the caller may see: of its unit's users, or all.
pub async fn list_tokens(host: &Host, caller: &Caller) -> HostResult<api::TokenList> {
    caller.check(Action::Read, Kind::Token)?;
    let mut items = Vec::new();
    let users = host.ledger.users(caller.scope()).await?;
    for t in host.ledger.tokens(None).await? {
        if caller.scope().is_none() || users.iter().any(|u| u.name == t.user) {
            items.push(token_view(&t));
        }
    }
    Ok(api::TokenList { items })
}

/// Revokes a token.
pub async fn revoke_token(
    host: &Host,
    caller: &Caller,
    t: &Authorized<brood_ledger::TokenRecord>,
) -> HostResult<api::Token> {
    if t.revoked_at.is_some() {
        return Err(HostError::Conflict(format!(
            "token {} is revoked already",
            t.id
        )));
    }
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!("revoke token {} of {}", t.id, t.user),
            vec![Op::User(UserOp::RevokeToken { id: t.id.clone() })],
        ))
        .await?;
    let now = host
        .ledger
        .token(&t.id)
        .await?
        .ok_or_else(|| HostError::invalid("the token vanished after revoking"))?;
    Ok(token_view(&now))
}

/// Every price.
pub async fn prices(host: &Host, caller: &Caller) -> HostResult<api::PriceList> {
    caller.check(Action::Read, Kind::Price)?;
    Ok(api::PriceList {
        items: host.ledger.prices().await?,
    })
}

/// Sets one price.
pub async fn set_price(
    host: &Host,
    caller: &Caller,
    req: api::PriceRequest,
) -> HostResult<api::PriceList> {
    caller.check(Action::Configure, Kind::Price)?;
    if !brood_ledger::valid_item(&req.item) {
        return Err(HostError::invalid(format!(
            "no price item {:?}: vcpu, memory_gib, disk_gib, nic or template:<name>",
            req.item
        )));
    }
    host.ledger
        .commit(Tx::new(
            caller.actor(),
            format!(
                "price of {} is {} micro-units per hour",
                req.item, req.micros_per_hour
            ),
            vec![Op::Charge(ChargeOp::SetPrice {
                item: req.item,
                micros_per_hour: req.micros_per_hour,
            })],
        ))
        .await?;
    prices(host, caller).await
}

/// The chargeback report for `[from, to)`: of one unit, or (an admin or
/// auditor outside a unit) of all.
pub async fn report(
    host: &Host,
    caller: &Caller,
    (from, to): (String, String),
    unit: Option<String>,
) -> HostResult<api::ChargebackReport> {
    let unit = match unit {
        Some(name) => Some(caller.unit_named(host, &name, Action::Read).await?),
        None => None,
    };
    let scope = unit.as_ref().map(|u| u.uuid).or(caller.scope());
    match scope {
        Some(_) => {
            if caller.verdict(Action::Read, Kind::Chargeback, scope) != super::Verdict::Allow {
                return Err(caller.forbidden(Action::Read, Kind::Chargeback));
            }
        }
        None => caller.check(Action::Read, Kind::Chargeback)?,
    }
    for (what, t) in [("from", &from), ("to", &to)] {
        if humantime::parse_rfc3339_weak(t).is_err() {
            return Err(HostError::invalid(format!(
                "{what} {t:?} is not a time: give RFC 3339, e.g. 2026-01-01T00:00:00Z"
            )));
        }
    }
    let rep = host.ledger.chargeback(from, to, scope).await?;
    Ok(api::ChargebackReport {
        from: rep.from,
        to: rep.to,
        units: rep
            .units
            .into_iter()
            .map(|u| api::UnitCharge {
                unit: u.name,
                reservation_micros: u.reservation_micros,
                allocation_micros: u.allocation_micros,
                refunds_micros: u.refunds_micros,
                lines: u
                    .lines
                    .into_iter()
                    .map(|l| api::ChargeLine {
                        model: match l.model {
                            brood_ledger::ChargeModel::Reservation => "reservation".into(),
                            brood_ledger::ChargeModel::Allocation => "allocation".into(),
                        },
                        item: l.item,
                        quantity_hours: l.quantity_hours,
                        micros: l.micros,
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Refunds part of a unit's charges.
pub async fn refund(
    host: &Host,
    caller: &Caller,
    req: api::RefundRequest,
) -> HostResult<api::Refund> {
    caller.check(Action::Configure, Kind::Chargeback)?;
    let unit = caller.unit_named(host, &req.unit, Action::Read).await?;
    let c = host
        .ledger
        .commit(Tx::new(
            caller.actor(),
            format!(
                "refund {} micro-units to unit {}: {}",
                req.micros, unit.name, req.reason
            ),
            vec![Op::Charge(ChargeOp::Refund {
                unit: unit.uuid,
                micros: req.micros,
                reason: req.reason,
            })],
        ))
        .await?;
    Ok(api::Refund {
        unit: unit.name.clone(),
        micros: req.micros,
        tx: c.id.0,
    })
}
