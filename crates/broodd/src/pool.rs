//! Identity pools: values created in advance (domain identities, IPv4
//! addresses) that forks hand to one live child each, returned when the
//! child is deleted. The ledger holds them, so assignments survive a crash.

use std::net::Ipv4Addr;

use brood_api as api;
use brood_ledger::{Op, PoolInfo, PoolKind, Tx};

use crate::daemon::Daemon;
use crate::error::{ApiError, ApiResult};

/// Most values a pool may have.
const MAX_VALUES: usize = 65_536;

/// Ledger pool kind to wire kind.
pub fn kind_out(k: PoolKind) -> api::PoolKind {
    match k {
        PoolKind::Identity => api::PoolKind::Identity,
        PoolKind::Ipv4 => api::PoolKind::Ipv4,
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
fn expand_range(range: &str) -> ApiResult<Vec<String>> {
    let bad = || {
        ApiError::bad_request(format!(
            "range {range:?} must be FIRST-LAST, e.g. 10.0.0.10-10.0.0.50"
        ))
    };
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || (b - a) as usize >= MAX_VALUES {
        return Err(ApiError::bad_request(format!(
            "range {range:?} is empty or has more than {MAX_VALUES} addresses"
        )));
    }
    Ok((a..=b).map(|x| Ipv4Addr::from(x).to_string()).collect())
}

/// Creates a pool.
pub async fn create(d: &Daemon, actor: &str, req: api::PoolCreateRequest) -> ApiResult<api::Pool> {
    crate::convert::validate_pool(&req)?;
    let (kind, values, meta) = match req.kind {
        api::PoolKind::Identity => {
            if req.range.is_some() || req.gateway.is_some() || req.prefix.is_some() {
                return Err(ApiError::bad_request(
                    "range, prefix and gateway belong to ipv4 pools",
                ));
            }
            (
                PoolKind::Identity,
                req.values.clone(),
                serde_json::json!({}),
            )
        }
        api::PoolKind::Ipv4 => {
            let range = req
                .range
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("an ipv4 pool needs a range"))?;
            if !req.values.is_empty() {
                return Err(ApiError::bad_request(
                    "an ipv4 pool takes a range, not values",
                ));
            }
            let prefix = req.prefix.unwrap_or(24);
            if prefix > 32 {
                return Err(ApiError::bad_request(format!("prefix {prefix} is over 32")));
            }
            if let Some(g) = &req.gateway {
                g.parse::<Ipv4Addr>().map_err(|_| {
                    ApiError::bad_request(format!("gateway {g:?} is not an IPv4 address"))
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
        return Err(ApiError::bad_request("a pool needs at least one value"));
    }
    let op = Op::CreatePool {
        name: req.name.clone(),
        kind,
        meta,
        values,
    };
    d.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("create pool {}", req.name),
            ops: vec![op],
        })
        .await?;
    show(d, &req.name, false).await
}

/// Deletes a pool none of whose values is held.
pub async fn delete(d: &Daemon, actor: &str, name: &str) -> ApiResult<()> {
    d.ledger.pool(name).await?.ok_or_else(|| not_found(name))?;
    let op = Op::DeletePool {
        name: name.to_string(),
    };
    d.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("delete pool {name}"),
            ops: vec![op],
        })
        .await?;
    Ok(())
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        api::ErrorCode::NotFound,
        format!("no pool named {name:?}: `brood pool list` shows them"),
    )
}

/// A pool, with its items when asked.
pub async fn show(d: &Daemon, name: &str, items: bool) -> ApiResult<api::Pool> {
    let p = d.ledger.pool(name).await?.ok_or_else(|| not_found(name))?;
    let mut out = pool_out(&p);
    if items {
        for it in d.ledger.pool_items(name).await? {
            let holder = match it.holder {
                Some(u) => d
                    .ledger
                    .partition_by_uuid(u)
                    .await?
                    .map(|r| r.name)
                    .or_else(|| Some(u.to_string())),
                None => None,
            };
            out.items.push(api::PoolItem {
                value: it.value,
                holder,
            });
        }
    }
    Ok(out)
}

/// Every pool.
pub async fn list(d: &Daemon) -> ApiResult<api::PoolList> {
    Ok(api::PoolList {
        items: d.ledger.pools().await?.iter().map(pool_out).collect(),
    })
}

fn pool_out(p: &PoolInfo) -> api::Pool {
    let (prefix, gateway) = if p.kind == PoolKind::Ipv4 {
        ipv4_meta(p)
    } else {
        (0, None)
    };
    api::Pool {
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
