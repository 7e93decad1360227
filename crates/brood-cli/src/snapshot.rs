//! `brood vm snapshot create|list|revert|delete NAME SNAP`: named snapshots
//! of a partition's disks and, taken while its VM runs, its memory.

use std::time::Duration;

use anyhow::Result;
use brood_api::{Partition, Snapshot, SnapshotCreateRequest, SnapshotList};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::job::Submit;
use crate::partition::{partition_path, summary};
use crate::render::{Table, print_json};

/// Taking or reverting a snapshot writes or reads the VM's whole memory.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);

/// `brood vm snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot: of a running or paused VM its disks, memory and
    /// devices of one instant (the VM carries on); of a stopped one its disks.
    #[command(after_help = "Examples:
  brood vm snapshot create web before-upgrade
  brood vm snapshot create web clean -o json")]
    Create {
        /// The partition.
        name: String,
        /// The snapshot's name (letters, digits, '-', '_', '.').
        snapshot: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
    /// List a partition's snapshots, oldest first.
    #[command(after_help = "Examples:\n  brood vm snapshot list web")]
    List {
        /// The partition.
        name: String,
    },
    /// Put a partition back to a snapshot: its VM is killed, its disks are
    /// reverted, and a snapshot with memory starts the VM from it.
    #[command(after_help = "Examples:\n  brood vm snapshot revert web before-upgrade")]
    Revert {
        /// The partition.
        name: String,
        /// The snapshot.
        snapshot: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
    /// Delete a snapshot (the partition must not be running).
    #[command(after_help = "Examples:\n  brood vm snapshot delete web before-upgrade")]
    Delete {
        /// The partition.
        name: String,
        /// The snapshot.
        snapshot: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
}

fn snapshots_path(name: &str) -> String {
    format!("{}/snapshots", partition_path(name))
}

/// Runs a `brood vm snapshot` command; returns the exit code.
pub async fn run(cmd: SnapshotCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        SnapshotCmd::Create {
            name,
            snapshot,
            wait,
        } => {
            let req = SnapshotCreateRequest { name: snapshot };
            let path = snapshots_path(&name);
            if wait.no_wait {
                return crate::job::submit(client, Submit::Post(&path, &req), out).await;
            }
            let s: Snapshot = client.post_within(&path, &req, Some(SNAPSHOT_WAIT)).await?;
            match out {
                Output::Json => print_json(&s)?,
                Output::Text => println!(
                    "{name}: snapshot {} taken ({})",
                    s.name,
                    if s.memory {
                        "disks and memory"
                    } else {
                        "disks only: it was stopped"
                    }
                ),
            }
        }
        SnapshotCmd::List { name } => {
            let l: SnapshotList = client.get(&snapshots_path(&name)).await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["NAME", "TAKEN", "WHILE", "MEMORY", "DISKS"]);
                    for s in &l.items {
                        t.row(vec![
                            s.name.clone(),
                            s.created_at.clone(),
                            s.taken_while.clone(),
                            if s.memory { "yes" } else { "no" }.into(),
                            s.disks.join(","),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        SnapshotCmd::Revert {
            name,
            snapshot,
            wait,
        } => {
            let path = format!("{}/{}/revert", snapshots_path(&name), encode(&snapshot));
            if wait.no_wait {
                let body = serde_json::json!({});
                return crate::job::submit(client, Submit::Post(&path, &body), out).await;
            }
            let p: Partition = client
                .post_within(&path, &serde_json::json!({}), Some(SNAPSHOT_WAIT))
                .await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => println!("{} (reverted to {snapshot})", summary(&p)),
            }
        }
        SnapshotCmd::Delete {
            name,
            snapshot,
            wait,
        } => {
            let path = format!("{}/{}", snapshots_path(&name), encode(&snapshot));
            if wait.no_wait {
                return crate::job::submit::<()>(client, Submit::Delete(&path), out).await;
            }
            client.delete(&path).await?;
            if out == Output::Text {
                println!("{name}: snapshot {snapshot} deleted");
            }
        }
    }
    Ok(0)
}
