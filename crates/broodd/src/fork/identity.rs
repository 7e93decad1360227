//! A child's identity, decided here and only here: its name (also its
//! hostname, checked with the agent's own rule before anything starts), its
//! MACs, machine-id and entropy, the identity and IPv4 address the fork's
//! transaction took from their pools, and the `ChildConfig` its agent
//! applies without a reboot.

use std::net::Ipv4Addr;

use brood_api as api;
use brood_ledger::{ChildLineage, ChildStatus, PartitionRecord, PoolInfo, Taken};
use brood_proto::{ChildConfig, Ipv4Config};

use crate::host::random;
use crate::host::{HostError, HostResult};

/// A child's name: its template's name and its index. It is the child's
/// hostname too, so it must pass the agent's hostname rule.
pub fn child_name(template: &str, index: u32) -> HostResult<String> {
    let name = format!("{template}-{index}");
    if !brood_proto::hostname::is_valid(&name) || !crate::convert::valid_name(&name) {
        return Err(HostError::invalid(format!(
            "template {template:?} cannot fork child {name:?}: a child's name is its hostname, \
             {} (make a template with such a name: `brood template create VM --name NAME`)",
            brood_proto::hostname::RULE
        )));
    }
    Ok(name)
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A new child's lineage: random locally administered MACs (one per NIC),
/// a random machine-id, the request's pools and values; the pool values
/// are filled in from the commit ([`with_taken`]).
pub fn new_child(index: u32, nics: usize, req: &api::ForkRequest) -> HostResult<ChildLineage> {
    let mut macs = Vec::with_capacity(nics);
    for n in 0..nics {
        let r: [u8; 3] = random::bytes()?;
        let n = u8::try_from(n % 64).unwrap_or(0);
        macs.push(mac_text([0x52, 0x54, 0x01 | (n << 2), r[0], r[1], r[2]]));
    }
    Ok(ChildLineage {
        index,
        status: ChildStatus::Pending,
        error: None,
        macs,
        ipv4: None,
        gateway: None,
        identity: None,
        identity_pool: req.identity_pool.clone(),
        ip_pool: req.ip_pool.clone(),
        values: req.values.clone(),
        persistent: req.persistent,
        machine_id: random::hex(&random::bytes::<16>()?),
        running_ms: None,
        ready_ms: None,
    })
}

/// Fills in what the fork's transaction took for child `rec` from its
/// identity and IPv4 pools.
pub fn with_taken(
    mut child: ChildLineage,
    rec_uuid: uuid::Uuid,
    taken: &[Taken],
    ip_pool: Option<&PoolInfo>,
) -> ChildLineage {
    for t in taken.iter().filter(|t| t.holder == rec_uuid) {
        if Some(&t.pool) == child.identity_pool.as_ref() {
            child.identity = Some(t.value.clone());
        } else if Some(&t.pool) == child.ip_pool.as_ref() {
            let (prefix, gateway) = ip_pool
                .map(crate::identity_pool::ipv4_meta)
                .unwrap_or((24, None));
            child.ipv4 = Some(format!("{}/{prefix}", t.value));
            child.gateway = gateway;
        }
    }
    child
}

fn parse_ipv4(a: &str, gw: Option<&str>) -> HostResult<Ipv4Config> {
    let bad = || HostError::corrupt("a child's IPv4 address", format!("{a:?} / {gw:?}"));
    let (addr, prefix) = a.split_once('/').unwrap_or((a, "24"));
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let gateway = match gw {
        Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| bad())?.octets()),
        None => None,
    };
    Ok(Ipv4Config {
        address: addr.octets(),
        prefix,
        gateway,
    })
}

/// What the child's agent is told: its hostname, MACs, address, identity,
/// fresh entropy (the kernel RNG is reseeded with it), machine-id, values,
/// and the wall clock (it carries on from the template's otherwise).
pub fn child_config(rec: &PartitionRecord, child: &ChildLineage) -> HostResult<ChildConfig> {
    let ipv4 = match &child.ipv4 {
        Some(a) => Some(parse_ipv4(a, child.gateway.as_deref())?),
        None => None,
    };
    let mut entropy = random::bytes::<64>()?.to_vec();
    entropy.extend_from_slice(rec.uuid.as_bytes());
    Ok(ChildConfig {
        index: child.index,
        hostname: rec.name.clone(),
        macs: child
            .macs
            .iter()
            .filter_map(|m| m.parse::<brood_engine::MacAddr>().ok().map(|m| m.0))
            .collect(),
        ipv4,
        identity: child.identity.clone(),
        entropy,
        machine_id: child.machine_id.clone(),
        values: child.values.clone().into_iter().collect(),
        time_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
    })
}

/// A child as the API shows it.
pub fn child_out(rec: &PartitionRecord, c: &ChildLineage) -> api::ForkChild {
    api::ForkChild {
        name: rec.name.clone(),
        uuid: rec.uuid,
        index: c.index,
        status: crate::wire::child_status_out(c.status),
        error: c.error.clone(),
        mac: c.macs.first().cloned(),
        ipv4: c.ipv4.clone(),
        identity: c.identity.clone(),
        persistent: c.persistent,
        running_ms: c.running_ms,
        ready_ms: c.ready_ms,
        charge_mib: (rec.demand.memory_mib > 0).then_some(rec.demand.memory_mib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_follow_the_hostname_rule() {
        assert_eq!(child_name("web", 3).unwrap(), "web-3");
        assert!(
            child_name("db_1", 0).is_err(),
            "'_' is no hostname character"
        );
        assert!(
            child_name(&"a".repeat(62), 10).is_err(),
            "over 64 characters"
        );
        assert!(child_name(&"a".repeat(61), 9).is_ok());
    }

    #[test]
    fn new_children_have_distinct_random_identities() {
        let req: api::ForkRequest = serde_json::from_str("{}").unwrap();
        let a = new_child(0, 2, &req).unwrap();
        let b = new_child(1, 2, &req).unwrap();
        assert_eq!(a.macs.len(), 2);
        assert_ne!(a.macs, b.macs);
        assert_ne!(a.machine_id, b.machine_id);
        assert_eq!(a.machine_id.len(), 32);
        assert!(a.macs.iter().all(|m| m.starts_with("52:54:")));
    }
}
