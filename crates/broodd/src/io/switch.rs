//! The switch side of networks: what a zone's switch I/O partition serves
//! (its configuration: networks, gateway taps, guests' ports and their
//! caps) and who its clients are, read from the ledger's channels. Here,
//! below [`crate::network`] (which creates networks and opens channels), so
//! the I/O partitions need nothing from it.

use std::path::PathBuf;

use brood_api as api;
use brood_engine::switch::{SwitchConfig, SwitchNetwork};
use uuid::Uuid;

use crate::host::{Host, HostResult};

/// The host tap of network `name` (its gateway).
pub fn tap_name(name: &str) -> String {
    format!("bn-{name}")
}

/// Every open channel as (I/O partition, member).
pub async fn members(host: &Host) -> HostResult<Vec<(String, api::NetworkMember)>> {
    let mut out = Vec::new();
    for c in host.ledger.channels().await? {
        let name = host
            .ledger
            .partition_by_uuid(c.partition)
            .await?
            .map_or_else(|| c.partition.to_string(), |p| p.name);
        out.push((
            c.io_partition.clone(),
            api::NetworkMember {
                partition: name,
                uuid: c.partition,
                nic: c.nic,
                address: c.address.to_string(),
            },
        ));
    }
    Ok(out)
}

/// Where QEMU listens for the switch on NIC `nic` of partition `uuid`.
pub(crate) fn port_path(host: &Host, uuid: Uuid, nic: u32) -> PathBuf {
    let run = host.engine.run_root().join(uuid.to_string());
    brood_engine::switch_socket(&run, usize::try_from(nic).unwrap_or(usize::MAX))
}

/// The configuration of zone `zone`'s switch: its networks, their gateway
/// taps and the ports of the running partitions' channels, with their caps.
pub async fn switch_config(host: &Host, zone: &str) -> HostResult<SwitchConfig> {
    let channels = host.ledger.channels().await?;
    let networks = host
        .ledger
        .networks()
        .await?
        .into_iter()
        .filter(|n| n.zone == zone)
        .map(|n| {
            let mine: Vec<_> = channels
                .iter()
                .filter(|c| c.network == n.name && host.registry.running(c.partition).is_some())
                .collect();
            SwitchNetwork {
                tap: n.gateway.then(|| tap_name(&n.name)),
                ports: mine
                    .iter()
                    .map(|c| port_path(host, c.partition, c.nic))
                    .collect(),
                caps: mine
                    .iter()
                    .filter_map(|c| Some((port_path(host, c.partition, c.nic), c.mbps?)))
                    .collect(),
                name: n.name,
            }
        })
        .collect();
    Ok(SwitchConfig { networks })
}
