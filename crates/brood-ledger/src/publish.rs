//! Published ports (schema `V_NAT`, issue 16 item 11): a host port that
//! broodd forwards (a DNAT in its nftables table) to a port of a VM with a
//! NIC on a NAT network, like Docker's `-p HOST:GUEST`.
//!
//! A host port (per protocol) has at most one holder: the table's primary
//! key refuses a second, and [`PublishOp::Set`] checks first to name the
//! holder. The rows are the VM's for its whole life, running or not (only a
//! running VM's ports have a DNAT, to the address its channel has); they go
//! with the partition (`ON DELETE CASCADE`). Which NIC and address a port
//! reaches is broodd's business (`network/nat.rs`).
//!
//! Change records:
//!
//! ```text
//! {"op":"publish_set","partition":"<uuid>","before":[<port>...],"after":[<port>...]}
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::ledger::Ledger;

/// Most ports one partition publishes.
pub const MAX_PUBLISHED_PORTS: usize = 64;

/// `V_NAT`: published ports.
pub(crate) const V_NAT: &str = "
CREATE TABLE published_port (
    partition  TEXT NOT NULL REFERENCES partition (uuid) ON DELETE CASCADE,
    protocol   TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    host_port  INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
    PRIMARY KEY (protocol, host_port)
) WITHOUT ROWID;
CREATE INDEX published_port_partition ON published_port (partition);
";

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl PortProtocol {
    /// Its name in the ledger and in nftables.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PortProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(PortProtocol::Tcp),
            "udp" => Ok(PortProtocol::Udp),
            _ => Err(format!("protocol {s:?} is neither tcp nor udp")),
        }
    }
}

/// One port a partition publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// TCP or UDP.
    pub protocol: PortProtocol,
    /// The host's port (1-65535).
    pub host_port: u16,
    /// The guest's port (1-65535).
    pub guest_port: u16,
}

/// A published port with its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPortRecord {
    /// The partition that publishes it.
    pub partition: Uuid,
    /// The partition's name.
    pub name: String,
    /// The port.
    pub port: PortSpec,
}

/// An op on published ports (`Op::Publish`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "publish_op", rename_all = "snake_case")]
pub enum PublishOp {
    /// Makes `ports` the partition's published ports (an empty list
    /// unpublishes them all). Refused (`NetworkConflict`, naming the holder)
    /// when another partition holds one of the host ports; `InvalidOp` for a
    /// port 0, a host port given twice, or more than
    /// [`MAX_PUBLISHED_PORTS`].
    Set {
        /// The partition.
        partition: Uuid,
        /// Its ports.
        ports: Vec<PortSpec>,
    },
}

type RawPort = (String, String, String, u16, u16);

fn decode(r: RawPort) -> Result<PublishedPortRecord, LedgerError> {
    let key = format!("{}/{}", r.2, r.3);
    let bad = |what: String| LedgerError::BadRow {
        table: "published_port",
        key: key.clone(),
        what,
    };
    Ok(PublishedPortRecord {
        partition: Uuid::parse_str(&r.0).map_err(|e| bad(e.to_string()))?,
        name: r.1,
        port: PortSpec {
            protocol: r.2.parse().map_err(bad)?,
            host_port: r.3,
            guest_port: r.4,
        },
    })
}

/// Every published port, by protocol and host port.
pub(crate) fn all(conn: &Connection) -> Result<Vec<PublishedPortRecord>, LedgerError> {
    let mut st = conn
        .prepare_cached(
            "SELECT p.partition, q.name, p.protocol, p.host_port, p.guest_port
             FROM published_port p JOIN partition q ON q.uuid = p.partition
             ORDER BY p.protocol, p.host_port",
        )
        .ctx("prepare published ports")?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .ctx("read published ports")?
        .collect::<Result<Vec<RawPort>, _>>()
        .ctx("read published ports")?;
    rows.into_iter().map(decode).collect()
}

fn check(i: usize, ports: &[PortSpec]) -> Result<(), LedgerError> {
    let invalid = |what: String| LedgerError::InvalidOp { op: i, what };
    if ports.len() > MAX_PUBLISHED_PORTS {
        return Err(invalid(format!(
            "a VM publishes at most {MAX_PUBLISHED_PORTS} ports, not {}",
            ports.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for p in ports {
        if p.host_port == 0 || p.guest_port == 0 {
            return Err(invalid(format!(
                "published port {}:{}/{}: ports are 1-65535",
                p.host_port, p.guest_port, p.protocol
            )));
        }
        if !seen.insert((p.protocol, p.host_port)) {
            return Err(invalid(format!(
                "host port {}/{} is published twice",
                p.host_port, p.protocol
            )));
        }
    }
    Ok(())
}

/// Applies op `i` of a transaction; returns its change record.
pub(crate) fn apply(conn: &Connection, i: usize, op: &PublishOp) -> Result<Value, LedgerError> {
    match op {
        PublishOp::Set { partition, ports } => {
            check(i, ports)?;
            let exists: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM partition WHERE uuid = ?1)")
                .ctx("prepare partition check")?
                .query_row([partition.to_string()], |r| r.get(0))
                .ctx("check partition")?;
            if !exists {
                return Err(LedgerError::NoSuchPartition { uuid: *partition });
            }
            let current = all(conn)?;
            for p in ports {
                if let Some(holder) = current.iter().find(|h| {
                    h.partition != *partition
                        && h.port.protocol == p.protocol
                        && h.port.host_port == p.host_port
                }) {
                    return Err(LedgerError::NetworkConflict {
                        what: format!(
                            "host port {}/{} is already published by VM {:?} (to its port {}): pick another host port, or unpublish it there",
                            p.host_port, p.protocol, holder.name, holder.port.guest_port
                        ),
                    });
                }
            }
            let before: Vec<PortSpec> = current
                .iter()
                .filter(|h| h.partition == *partition)
                .map(|h| h.port)
                .collect();
            conn.prepare_cached("DELETE FROM published_port WHERE partition = ?1")
                .ctx("prepare published port delete")?
                .execute([partition.to_string()])
                .ctx("delete published ports")?;
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO published_port (partition, protocol, host_port, guest_port)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .ctx("prepare published port insert")?;
            for p in ports {
                insert
                    .execute(params![
                        partition.to_string(),
                        p.protocol.as_str(),
                        p.host_port,
                        p.guest_port
                    ])
                    .ctx("insert published port")?;
            }
            Ok(json!({"op": "publish_set", "partition": partition,
                "before": before, "after": ports}))
        }
    }
}

impl Ledger {
    /// Every published port with its holder, by protocol and host port.
    pub async fn published_ports(&self) -> Result<Vec<PublishedPortRecord>, LedgerError> {
        self.read(all).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LedgerDb, Op, PartitionRecord, Resources, Tx};

    #[test]
    fn protocols_round_trip() {
        for p in [PortProtocol::Tcp, PortProtocol::Udp] {
            assert_eq!(p.as_str().parse::<PortProtocol>(), Ok(p));
        }
        assert!("sctp".parse::<PortProtocol>().is_err());
    }

    #[test]
    fn bad_lists_are_refused() {
        let p = |h, g| PortSpec {
            protocol: PortProtocol::Tcp,
            host_port: h,
            guest_port: g,
        };
        assert!(check(0, &[p(80, 80), p(81, 80)]).is_ok());
        assert!(check(0, &[p(0, 80)]).is_err());
        assert!(check(0, &[p(80, 0)]).is_err());
        let twice = check(0, &[p(80, 80), p(80, 81)]).unwrap_err().to_string();
        assert!(twice.contains("twice"), "{twice}");
        let udp = PortSpec {
            protocol: PortProtocol::Udp,
            ..p(80, 80)
        };
        assert!(check(0, &[p(80, 80), udp]).is_ok());
        let many: Vec<_> = (1..=65).map(|h| p(h, 1)).collect();
        assert!(check(0, &many).is_err());
    }

    #[test]
    fn a_host_port_has_one_holder_and_goes_with_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = LedgerDb::open(dir.path().join("l.db"), Resources::default()).unwrap();
        let mut uuids = Vec::new();
        for name in ["web-a", "web-b"] {
            let p = PartitionRecord::new(name);
            uuids.push(p.uuid);
            db.commit(Tx::new("t", "define", vec![Op::InsertPartition(p)]))
                .unwrap();
        }
        let (a, b) = (uuids[0], uuids[1]);
        let set = |partition, ports: Vec<PortSpec>| {
            Tx::new(
                "t",
                "publish",
                vec![Op::Publish(PublishOp::Set { partition, ports })],
            )
        };
        let port = PortSpec {
            protocol: PortProtocol::Tcp,
            host_port: 8080,
            guest_port: 80,
        };
        db.commit(set(a, vec![port])).unwrap();
        let text = db.commit(set(b, vec![port])).unwrap_err().to_string();
        assert!(text.contains("web-a") && text.contains("8080"), "{text}");
        // The same port over UDP is another port.
        let udp = PortSpec {
            protocol: PortProtocol::Udp,
            ..port
        };
        db.commit(set(b, vec![udp])).unwrap();
        // Setting again replaces (the holder keeps its own port).
        db.commit(set(a, vec![port])).unwrap();
        assert!(matches!(
            db.commit(set(Uuid::from_u128(7), vec![])),
            Err(LedgerError::NoSuchPartition { .. })
        ));
        let ports = all(db.conn()).unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "web-a");
        let rec = db.partition_by_name("web-a").unwrap().unwrap();
        db.commit(Tx::new(
            "t",
            "delete",
            vec![Op::DeletePartition {
                uuid: a,
                expect: crate::PartitionExpect {
                    generation: Some(rec.generation),
                    ..Default::default()
                },
            }],
        ))
        .unwrap();
        let left = all(db.conn()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name, "web-b");
        db.commit(set(b, vec![port, udp])).unwrap();
    }
}
