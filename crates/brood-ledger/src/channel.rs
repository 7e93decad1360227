//! What NIC channels (`network`) and disk channels (`storage_io`) share:
//! making a zone's I/O partition on first use, and closing a guest's or an
//! I/O partition's channels. Each table keeps its own columns and records.

use rusqlite::{Connection, params};

use crate::error::{DbContext, LedgerError};
use crate::network::IoKind;

/// A table of channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channels {
    /// `channel`: a NIC's.
    Nic,
    /// `disk_channel`: a disk's.
    Disk,
}

/// Which of a channel's ends to close by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The guest (`partition`).
    Guest,
    /// The I/O partition (`io_partition`).
    Io,
}

/// Makes I/O partition `name` of `kind` for `zone` (stopped) unless it
/// exists; returns whether it was made.
pub(crate) fn ensure_io_partition(
    conn: &Connection,
    name: &str,
    kind: IoKind,
    zone: &str,
    now: &str,
) -> Result<bool, LedgerError> {
    let made = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO io_partition (name, kind, zone, run_state, pid,
                 restart_count, last_exit, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'stopped', NULL, 0, NULL, ?4, ?4)",
        )
        .ctx("prepare io partition insert")?
        .execute(params![name, kind.as_str(), zone, now])
        .ctx("insert io partition")?;
    Ok(made > 0)
}

/// Closes every channel of `table` whose `end` is `key` (a partition's
/// uuid or an I/O partition's name); none is not an error.
pub(crate) fn close(
    conn: &Connection,
    table: Channels,
    end: End,
    key: &str,
) -> Result<(), LedgerError> {
    // One fixed statement per case: no SQL is made from names.
    let sql = match (table, end) {
        (Channels::Nic, End::Guest) => "DELETE FROM channel WHERE partition = ?1",
        (Channels::Nic, End::Io) => "DELETE FROM channel WHERE io_partition = ?1",
        (Channels::Disk, End::Guest) => "DELETE FROM disk_channel WHERE partition = ?1",
        (Channels::Disk, End::Io) => "DELETE FROM disk_channel WHERE io_partition = ?1",
    };
    conn.prepare_cached(sql)
        .ctx("prepare channel delete")?
        .execute([key])
        .ctx("close channels")?;
    Ok(())
}
