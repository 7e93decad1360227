//! Identity pools (`/v1/identity-pools`, `brood identity-pool`): values
//! created in advance (domain identities, IPv4 addresses) that forks hand
//! to one live child each, returned when the child is deleted. The ledger
//! holds them (its `pool` tables), so assignments survive a crash.

use std::net::Ipv4Addr;

use brood_api as api;
use brood_ledger::{Op, PoolInfo, PoolKind, Tx};

use crate::host::{Host, HostError, HostResult};

/// Most values a pool may have.
const MAX_VALUES: usize = 65_536;

/// A pool kind's name in messages.
pub fn kind_name(k: PoolKind) -> &'static str {
    match k {
        PoolKind::Identity => "identity",
        PoolKind::Ipv4 => "ipv4",
    }
}

/// Ledger pool kind to wire kind.
pub fn kind_out(k: PoolKind) -> api::IdentityPoolKind {
    match k {
        PoolKind::Identity => api::IdentityPoolKind::Identity,
        PoolKind::Ipv4 => api::IdentityPoolKind::Ipv4,
    }
}

/// Prefix and gateway of an ipv4 pool.
pub fn ipv4_meta(p: &PoolInfo) -> (u8, Option<String>) {
    let prefix = p
        .meta
        .get("prefix")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u8::try_from(v).ok())
        .unwrap_or(24);
    let gateway = p
        .meta
        .get("gateway")
        .and_then(|g| g.as_str())
        .map(String::from);
    (prefix, gateway)
}

/// The addresses of `FIRST-LAST`.
fn expand_range(range: &str) -> HostResult<Vec<String>> {
    let bad = || {
        HostError::invalid(format!(
            "range {range:?} must be FIRST-LAST, e.g. 10.0.0.10-10.0.0.50"
        ))
    };
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || (b - a) as usize >= MAX_VALUES {
        return Err(HostError::invalid(format!(
            "range {range:?} is empty or has more than {MAX_VALUES} addresses"
        )));
    }
    Ok((a..=b).map(|x| Ipv4Addr::from(x).to_string()).collect())
}

/// Creates a pool.
pub async fn create(
    host: &Host,
    actor: &str,
    req: api::IdentityPoolCreateRequest,
) -> HostResult<api::IdentityPool> {
    crate::convert::validate_pool(&req)?;
    let (kind, values, meta) = match req.kind {
        api::IdentityPoolKind::Identity => {
            if req.range.is_some() || req.gateway.is_some() || req.prefix.is_some() {
                return Err(HostError::invalid(
                    "range, prefix and gateway belong to ipv4 pools",
                ));
            }
            (
                PoolKind::Identity,
                req.values.clone(),
                serde_json::json!({}),
            )
        }
        api::IdentityPoolKind::Ipv4 => {
            let range = req
                .range
                .as_deref()
                .ok_or_else(|| HostError::invalid("an ipv4 pool needs a range"))?;
            if !req.values.is_empty() {
                return Err(HostError::invalid("an ipv4 pool takes a range, not values"));
            }
            let prefix = req.prefix.unwrap_or(24);
            if prefix > 32 {
                return Err(HostError::invalid(format!("prefix {prefix} is over 32")));
            }
            if let Some(g) = &req.gateway {
                g.parse::<Ipv4Addr>().map_err(|_| {
                    HostError::invalid(format!("gateway {g:?} is not an IPv4 address"))
                })?;
            }
            (
                PoolKind::Ipv4,
                expand_range(range)?,
                serde_json::json!({"prefix": prefix, "gateway": req.gateway}),
            )
        }
    };
    if values.is_empty() {
        return Err(HostError::invalid("a pool needs at least one value"));
    }
    let op = Op::CreatePool {
        name: req.name.clone(),
        kind,
        meta,
        values,
    };
    host.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("create pool {}", req.name),
            ops: vec![op],
        })
        .await?;
    show(host, &req.name, false).await
}

/// Deletes a pool none of whose values is held.
pub async fn delete(host: &Host, actor: &str, name: &str) -> HostResult<()> {
    host.ledger
        .pool(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let op = Op::DeletePool {
        name: name.to_string(),
    };
    host.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("delete pool {name}"),
            ops: vec![op],
        })
        .await?;
    Ok(())
}

fn not_found(name: &str) -> HostError {
    HostError::NotFound(format!(
        "no identity pool named {name:?}: `brood identity-pool list` shows them"
    ))
}

/// A pool, with its items when asked.
pub async fn show(host: &Host, name: &str, items: bool) -> HostResult<api::IdentityPool> {
    let p = host
        .ledger
        .pool(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let mut out = pool_out(&p);
    if items {
        for it in host.ledger.pool_items(name).await? {
            let holder = match it.holder {
                Some(u) => host
                    .ledger
                    .partition_by_uuid(u)
                    .await?
                    .map(|r| r.name)
                    .or_else(|| Some(u.to_string())),
                None => None,
            };
            out.items.push(api::IdentityPoolItem {
                value: it.value,
                holder,
            });
        }
    }
    Ok(out)
}

/// Every pool.
pub async fn list(host: &Host) -> HostResult<api::IdentityPoolList> {
    Ok(api::IdentityPoolList {
        items: host.ledger.pools().await?.iter().map(pool_out).collect(),
    })
}

fn pool_out(p: &PoolInfo) -> api::IdentityPool {
    let (prefix, gateway) = if p.kind == PoolKind::Ipv4 {
        ipv4_meta(p)
    } else {
        (0, None)
    };
    api::IdentityPool {
        name: p.name.clone(),
        kind: kind_out(p.kind),
        size: p.size,
        free: p.free,
        prefix: (p.kind == PoolKind::Ipv4).then_some(prefix),
        gateway,
        items: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            expand_range("10.0.0.1-10.0.0.3").unwrap(),
            vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(expand_range("10.0.0.255-10.0.1.0").unwrap().len(), 2);
        assert!(expand_range("10.0.0.3-10.0.0.1").is_err());
        assert!(expand_range("10.0.0.1").is_err());
        assert!(expand_range("10.0.0.0-10.2.0.0").is_err());
    }
}
