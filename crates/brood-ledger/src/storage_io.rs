//! Storage channels (schema `V_STORAGE_IO`): a disk of a guest served by
//! the storage I/O partition of its storage zone (`storage-ZONE`, kind
//! `storage`), instead of opened by the guest's QEMU.
//!
//! A disk channel names the image the server opens, its format, the
//! export's secret name and the transport the guest reaches it over
//! (vhost-user-blk when the guest's memory can be shared with the server,
//! NBD otherwise). Like NIC channels they are opened in the transaction
//! that starts the guest ([`crate::NetOp::OpenDiskChannels`], which also
//! creates the zone's storage I/O partition, stopped, the first time) and
//! closed in the one that settles it ([`crate::NetOp::CloseChannels`]), so
//! a guest's resources are given back only with its channels closed; the
//! foreign keys keep a guest or an I/O partition with open disk channels
//! from being deleted.

use std::str::FromStr;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Ledger;
use crate::channel::{Channels, End, close, ensure_io_partition};
use crate::error::{DbContext, LedgerError};
use crate::network::IoKind;

/// Storage channels: a guest's disk served by a storage I/O partition.
pub(crate) const V_STORAGE_IO: &str = "
CREATE TABLE disk_channel (
    partition    TEXT NOT NULL REFERENCES partition (uuid),
    disk         INTEGER NOT NULL CHECK (disk >= 0),
    io_partition TEXT NOT NULL REFERENCES io_partition (name),
    export       TEXT NOT NULL UNIQUE CHECK (length(export) = 32
                     AND export NOT GLOB '*[^0-9a-f]*'),
    image        TEXT NOT NULL CHECK (length(image) > 0),
    format       TEXT NOT NULL CHECK (format IN ('raw', 'qcow2')),
    transport    TEXT NOT NULL CHECK (transport IN ('nbd', 'vhost-user-blk')),
    PRIMARY KEY (partition, disk)
) WITHOUT ROWID;
CREATE INDEX disk_channel_io ON disk_channel (io_partition);
";

/// The name of the storage I/O partition of `zone`.
pub fn storage_name(zone: &str) -> String {
    format!("storage-{zone}")
}

/// How a guest reaches its disk on a storage I/O partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// NBD over a unix socket: data is copied, any guest can use it.
    Nbd,
    /// vhost-user-blk: the server reads and writes the guest's (shared)
    /// memory itself.
    VhostUserBlk,
}

impl Transport {
    /// Its name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Nbd => "nbd",
            Transport::VhostUserBlk => "vhost-user-blk",
        }
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nbd" => Ok(Transport::Nbd),
            "vhost-user-blk" => Ok(Transport::VhostUserBlk),
            _ => Err(format!("unknown storage transport {s:?}")),
        }
    }
}

/// A disk channel to open (see [`crate::NetOp::OpenDiskChannels`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChannelSpec {
    /// The disk's index in the guest (0 is `vda`).
    pub disk: u32,
    /// The storage zone (its I/O partition is `storage-ZONE`).
    pub zone: String,
    /// The export's name: 32 lowercase hex digits, a secret.
    pub export: String,
    /// The image the server opens.
    pub image: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// How the guest reaches it.
    pub transport: Transport,
}

/// An open disk channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChannelRecord {
    /// The guest.
    pub partition: Uuid,
    /// The disk's index in the guest.
    pub disk: u32,
    /// The storage I/O partition serving it.
    pub io_partition: String,
    /// The export's name.
    pub export: String,
    /// The image.
    pub image: String,
    /// Its format.
    pub format: String,
    /// How the guest reaches it.
    pub transport: Transport,
}

pub(crate) fn open_disk_channels(
    conn: &Connection,
    op: usize,
    partition: Uuid,
    disks: &[DiskChannelSpec],
    now: &str,
) -> Result<Value, LedgerError> {
    let open = disk_channels(conn)?;
    let mut opened = Vec::new();
    for d in disks {
        if open
            .iter()
            .any(|c| c.partition == partition && c.disk == d.disk)
        {
            continue;
        }
        crate::network::check_name(op, "storage zone", &d.zone)?;
        let io = storage_name(&d.zone);
        let made = ensure_io_partition(conn, &io, IoKind::Storage, &d.zone, now)?;
        conn.prepare_cached(
            "INSERT INTO disk_channel (partition, disk, io_partition, export, image, format,
                 transport) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .ctx("prepare disk channel insert")?
        .execute(params![
            partition.to_string(),
            d.disk,
            io,
            d.export,
            d.image,
            d.format,
            d.transport.as_str()
        ])
        .ctx("open disk channel")?;
        opened.push(json!({"disk": d.disk, "io_partition": io, "image": d.image,
            "transport": d.transport, "io_partition_created": made}));
    }
    Ok(json!({"op": "open_disk_channels", "partition": partition, "after": opened}))
}

/// Closes the disk channels of a guest; returns what was closed.
pub(crate) fn close_for_partition(
    conn: &Connection,
    partition: Uuid,
) -> Result<Vec<DiskChannelRecord>, LedgerError> {
    let before: Vec<_> = disk_channels(conn)?
        .into_iter()
        .filter(|c| c.partition == partition)
        .collect();
    close(conn, Channels::Disk, End::Guest, &partition.to_string())?;
    Ok(before)
}

/// Closes the disk channels of an I/O partition; returns what was closed.
pub(crate) fn close_for_io(
    conn: &Connection,
    name: &str,
) -> Result<Vec<DiskChannelRecord>, LedgerError> {
    let before: Vec<_> = disk_channels(conn)?
        .into_iter()
        .filter(|c| c.io_partition == name)
        .collect();
    close(conn, Channels::Disk, End::Io, name)?;
    Ok(before)
}

pub(crate) fn disk_channels(conn: &Connection) -> Result<Vec<DiskChannelRecord>, LedgerError> {
    let mut st = conn
        .prepare_cached(
            "SELECT partition, disk, io_partition, export, image, format, transport
             FROM disk_channel ORDER BY partition, disk",
        )
        .ctx("prepare disk channels")?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .ctx("read disk channels")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read disk channels")?;
    rows.into_iter()
        .map(|(p, disk, io_partition, export, image, format, t)| {
            let bad = |what: String| LedgerError::BadRow {
                table: "disk_channel",
                key: format!("{p}/{disk}"),
                what,
            };
            Ok(DiskChannelRecord {
                partition: p.parse().map_err(|e: uuid::Error| bad(e.to_string()))?,
                transport: t.parse().map_err(bad)?,
                disk,
                io_partition,
                export,
                image,
                format,
            })
        })
        .collect()
}

impl Ledger {
    /// Every open disk channel, by partition and disk.
    pub async fn disk_channels(&self) -> Result<Vec<DiskChannelRecord>, LedgerError> {
        self.read(disk_channels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_round_trip() {
        for t in [Transport::Nbd, Transport::VhostUserBlk] {
            assert_eq!(t.as_str().parse::<Transport>(), Ok(t));
        }
        assert!("iscsi".parse::<Transport>().is_err());
        assert_eq!(storage_name("z"), "storage-z");
    }
}
