//! `brood vm migrate NAME [--to HOST]`: live migration of a running VM to
//! another host of the cluster (`POST /v1/partitions/{name}/migrate`).
//! broodd does the work, as a job (`partition.migrate`); this prints where
//! the VM went and how long the guest was paused, or with `--no-wait` the
//! job.

use anyhow::Result;
use brood_api::cluster::{ClusterMigrateRequest, ClusterMigration};
use clap::Args;

use crate::Output;
use crate::partition::partition_path;
use crate::render::{key_values, print_json};

/// The examples of `brood vm migrate`.
pub const EXAMPLES: &str = "Examples:
  brood vm migrate web --to h2
  brood vm migrate web            # placement picks another host
  brood vm migrate web -o json
  brood vm migrate web --no-wait  # answers with the job (`brood job wait ID`)";

/// What to migrate and where.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Partition name or uuid (running on the host this brood talks to).
    pub name: String,
    /// The target host (default: placement picks one other than the current host).
    #[arg(long, value_name = "HOST")]
    pub to: Option<String>,
    #[command(flatten)]
    pub wait: crate::job::NoWait,
}

/// Migrates and reports.
pub async fn run(args: MigrateArgs, client: &crate::client::Client, out: Output) -> Result<i32> {
    let req = ClusterMigrateRequest { to: args.to };
    let path = format!("{}/migrate", partition_path(&args.name));
    if args.wait.no_wait {
        return crate::job::submit(client, crate::job::Submit::Post(&path, &req), out).await;
    }
    // A busy guest's pre-copy under TCG can take minutes: no deadline here,
    // broodd bounds each step itself.
    let done: ClusterMigration = client.post_within(&path, &req, None).await?;
    match out {
        Output::Json => print_json(&done)?,
        Output::Text => {
            println!(
                "{} migrated from {} to {}: it runs on {} now",
                done.partition, done.from, done.to, done.to
            );
            print!(
                "{}",
                key_values(&[
                    ("generation", done.generation.to_string()),
                    ("total", format!("{} ms", done.total_ms)),
                    ("downtime", format!("{} ms", done.downtime_ms)),
                    ("wall", format!("{} ms", done.wall_ms)),
                ])
            );
        }
    }
    Ok(0)
}

/// The host of the cluster a partition this broodd does not hold runs on,
/// when broodd is in a cluster and the catalog places it on another host.
pub async fn elsewhere(client: &crate::client::Client, name: &str) -> Option<String> {
    let all: brood_api::cluster::ClusterPlacementList =
        client.get("/v1/cluster/placements").await.ok()?;
    all.placements
        .into_iter()
        .find(|p| p.name == name)
        .and_then(|p| p.host)
}

/// `GET /v1/partitions/{name}`, and when this host does not hold it but
/// the cluster places it on another, an error that names that host.
pub async fn show_here_or_where(
    client: &crate::client::Client,
    name: &str,
) -> Result<brood_api::Partition> {
    match client.get(&partition_path(name)).await {
        Ok(p) => Ok(p),
        Err(e @ crate::client::ClientError::Api { status: 404, .. }) => {
            match elsewhere(client, name).await {
                Some(h) => anyhow::bail!(
                    "{name} is not on this host: it runs on host {h} now (the cluster's catalog places it there; ask that host's broodd: `brood host show {h}` gives its address)"
                ),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
