//! `brood infra`: the infrastructure hierarchy, datacenter ->
//! infrastructure -> service -> role -> VM (`/v1/infra`); a unit sees its
//! exposed portion only.

use std::path::PathBuf;

use anyhow::{Context, Result};
use brood_api::{Datacenter, InfraView};
use clap::Subcommand;

use crate::Output;
use crate::client::Client;
use crate::render::{print_json, resources};

/// Commands on the infrastructure.
#[derive(Debug, Subcommand)]
pub enum InfraCmd {
    /// Show the hierarchy (a unit's users see their exposed portion).
    Show,
    /// Replace the hierarchy with a JSON file (a `Datacenter` object).
    #[command(after_help = "Examples:\n  brood infra set dc.json\n  brood infra show")]
    Set {
        /// The JSON file.
        file: PathBuf,
    },
}

/// The tree as text, one level per indent.
pub fn tree(v: &InfraView) -> String {
    let Some(dc) = &v.datacenter else {
        return "no infrastructure configured: `brood infra set FILE`\n".into();
    };
    let mut s = format!("datacenter {}", dc.name);
    if let Some(u) = &v.unit {
        s.push_str(&format!(" (as seen by unit {u})"));
    }
    s.push('\n');
    for i in &dc.infrastructures {
        s.push_str(&format!("  infrastructure {}\n", i.name));
        for h in &i.hosts {
            s.push_str(&format!(
                "    host {}: {}\n",
                h.name,
                resources(&h.capacity)
            ));
        }
        for z in &i.storage_zones {
            s.push_str(&format!("    storage zone {z}\n"));
        }
        for n in &i.networks {
            s.push_str(&format!("    network {n}\n"));
        }
        for svc in &i.services {
            s.push_str(&format!("    service {}\n", svc.name));
            for r in &svc.roles {
                s.push_str(&format!("      role {}\n", r.name));
                for vm in &r.vms {
                    s.push_str(&format!("        vm {vm}\n"));
                }
            }
        }
    }
    s
}

/// Runs a `brood infra` command; returns the exit code.
pub async fn run(cmd: InfraCmd, client: &Client, out: Output) -> Result<i32> {
    let v: InfraView = match cmd {
        InfraCmd::Show => client.get("/v1/infra").await?,
        InfraCmd::Set { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let dc: Datacenter = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a datacenter document", file.display()))?;
            client.put("/v1/infra", &dc).await?
        }
    };
    match out {
        Output::Json => print_json(&v)?,
        Output::Text => print!("{}", tree(&v)),
    }
    Ok(0)
}
