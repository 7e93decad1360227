//! `brood io ...`: the I/O partitions (today: a switch per network zone),
//! their processes and their clients.

use anyhow::Result;
use brood_api::{IoPartition, IoPartitionList};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json};

/// Commands on I/O partitions.
#[derive(Debug, Subcommand)]
pub enum IoCmd {
    /// List I/O partitions with their kind, pid, state and clients.
    #[command(after_help = "Examples:\n  brood io list\n  brood io list -o json")]
    List,
    /// Show one I/O partition and its clients.
    #[command(after_help = "Examples:\n  brood io show switch-default")]
    Show {
        /// I/O partition name (`switch-ZONE`).
        name: String,
    },
    /// Restart its process; the guests keep their channels and reconnect.
    #[command(after_help = "Examples:\n  brood io restart switch-default")]
    Restart {
        /// I/O partition name.
        name: String,
    },
    /// Dedicate host CPUs to its process (the last N broodd may use).
    #[command(
        after_help = "Examples:\n  brood io set storage-default --cpus 1\n  brood io set storage-default --any-cpu   # every CPU again"
    )]
    Set {
        /// I/O partition name.
        name: String,
        /// How many CPUs to dedicate (1 to one less than the host's).
        #[arg(long, required_unless_present = "any_cpu", conflicts_with = "any_cpu")]
        cpus: Option<u32>,
        /// Dedicate none: it runs on any CPU again.
        #[arg(long)]
        any_cpu: bool,
    },
    /// Stop it; refused while it has clients unless --force.
    #[command(
        after_help = "Examples:\n  brood io stop switch-edge\n  brood io stop switch-edge --force   # detaches its clients"
    )]
    Stop {
        /// I/O partition name.
        name: String,
        /// Stop even with clients: their channels are closed first.
        #[arg(long)]
        force: bool,
    },
}

fn path(name: &str) -> String {
    format!("/v1/io/{}", encode(name))
}

/// Runs a `brood io` command; returns the exit code.
pub async fn run(cmd: IoCmd, client: &Client, out: Output) -> Result<i32> {
    let one: IoPartition = match cmd {
        IoCmd::List => {
            let l: IoPartitionList = client.get("/v1/io").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => print!("{}", list_table(&l.items)),
            }
            return Ok(0);
        }
        IoCmd::Show { name } => client.get(&path(&name)).await?,
        IoCmd::Restart { name } => {
            client
                .post(&format!("{}/restart", path(&name)), &serde_json::json!({}))
                .await?
        }
        IoCmd::Set { name, cpus, .. } => {
            client
                .patch(&path(&name), &brood_api::IoPartitionPatch { cpus })
                .await?
        }
        IoCmd::Stop { name, force } => {
            let q = if force { "?force=true" } else { "" };
            client
                .post(&format!("{}/stop{q}", path(&name)), &serde_json::json!({}))
                .await?
        }
    };
    match out {
        Output::Json => print_json(&one)?,
        Output::Text => print!("{}", show(&one)),
    }
    Ok(0)
}

/// The table of `brood io list`.
pub fn list_table(items: &[IoPartition]) -> String {
    let mut t = Table::new(&[
        "NAME", "KIND", "SERVES", "ZONE", "STATE", "PID", "RESTARTS", "CLIENTS",
    ])
    .right(&[5, 6, 7]);
    for p in items {
        t.row(vec![
            p.name.clone(),
            p.kind.clone(),
            p.serves.clone(),
            p.zone.clone(),
            p.state.clone(),
            or_dash(p.pid),
            p.restart_count.to_string(),
            (p.clients.len() + p.disk_clients.len()).to_string(),
        ]);
    }
    t.render()
}

/// `brood io show`: key/values, a blank line, its clients.
pub fn show(p: &IoPartition) -> String {
    let kv = [
        ("name", p.name.clone()),
        ("kind", p.kind.clone()),
        ("serves", p.serves.clone()),
        ("zone", p.zone.clone()),
        ("state", p.state.clone()),
        ("pid", or_dash(p.pid)),
        ("restarts", p.restart_count.to_string()),
        ("last exit", or_dash(p.last_exit.as_deref())),
        (
            "cpus",
            p.cpus.map_or_else(|| "any".to_owned(), |n| n.to_string()),
        ),
        ("cpu list", or_dash(p.cpu_list.as_deref())),
    ];
    if p.serves == "storage" {
        let mut t = Table::new(&["VM", "DISK", "TRANSPORT", "IMAGE"]).right(&[1]);
        for d in &p.disk_clients {
            t.row(vec![
                d.partition.clone(),
                d.disk.to_string(),
                d.transport.clone(),
                d.image.clone(),
            ]);
        }
        return format!("{}\n{}", key_values(&kv), t.render());
    }
    let mut t = Table::new(&["VM", "NIC", "ADDRESS"]).right(&[1]);
    for m in &p.clients {
        t.row(vec![
            m.partition.clone(),
            m.nic.to_string(),
            m.address.clone(),
        ]);
    }
    format!("{}\n{}", key_values(&kv), t.render())
}
