//! `brood pool ...`: pools of service domains (issue 10) waiting at their
//! trigger point. Not the identity pools of `brood identity-pool`.

use anyhow::Result;
use brood_api::service::{
    RefillMode, ServicePool, ServicePoolCreateRequest, ServicePoolList, ServicePoolUpdateRequest,
    UnusedPolicy,
};
use clap::{Args, Subcommand, ValueEnum};

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json};

/// Commands on service pools.
#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a pool; its members boot to the trigger point and wait paused.
    Create(CreateArgs),
    /// List pools.
    #[command(after_help = "Examples:\n  brood pool list\n  brood pool list -o json")]
    List,
    /// Show a pool and its members.
    #[command(after_help = "Examples:\n  brood pool show svc -o json")]
    Show {
        /// Pool name.
        name: String,
    },
    /// Change a pool's refill policy at runtime (flags left out keep their value).
    #[command(after_help = "Examples:
  brood pool set svc --memory-floor-mib 4096   # unused members go, oldest first, below 4 GiB free
  brood pool set svc --min 2 --max 4 --cpu-threshold-pct 70
  brood pool set svc --memory-floor-mib 0 -o json")]
    Set(SetArgs),
    /// Delete a pool (its waiting members are torn down; refused while its services are in use).
    #[command(after_help = "Examples:\n  brood pool delete svc")]
    Delete {
        /// Pool name.
        name: String,
    },
}

/// Arguments of `brood pool set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Pool name.
    name: String,
    /// Members kept at the trigger point.
    #[arg(long, value_name = "N")]
    min: Option<u32>,
    /// Most members at once, handed-out ones included.
    #[arg(long, value_name = "M")]
    max: Option<u32>,
    /// Refills wait while host CPU use is above this percentage (1-100).
    #[arg(long, value_name = "PCT")]
    cpu_threshold_pct: Option<u32>,
    /// Unused members are torn down, oldest first, while the host's
    /// available memory is below this many MiB (0: never).
    #[arg(long, value_name = "MIB")]
    memory_floor_mib: Option<u64>,
}

/// What happens to a service domain nobody uses.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Unused {
    Teardown,
    Keep,
}

/// How members after the first are made.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Refill {
    /// Fork the pool's template (the first member, saved at the trigger point).
    Clone,
    /// Cold-boot every member.
    Cold,
}

/// Arguments of `brood pool create`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood pool create svc --image default --min 2 --max 8
  brood pool create web --image default --class http --min 1 --network lan
  brood pool create edge --image service --class switch --network lan --network far
  brood pool create dns --image service --class dns --cpu-threshold 70 --memory-floor 2048")]
pub struct CreateArgs {
    /// Pool name: 1-32 of [a-z0-9-], starting with a letter.
    name: String,
    /// Image its members boot: `default` or an image under DATA_DIR/images [default: default].
    #[arg(long, value_name = "IMG")]
    image: Option<String>,
    /// Members kept at the trigger point [default: sized to the host's memory].
    #[arg(long, value_name = "N")]
    min: Option<u32>,
    /// Most members, handed-out ones included [default: min + 8].
    #[arg(long, value_name = "M")]
    max: Option<u32>,
    /// Refills wait while host CPU use is above PCT percent [default: 90].
    #[arg(long, value_name = "PCT")]
    cpu_threshold: Option<u32>,
    /// Unused members are torn down while available memory is below MIB [default: 0].
    #[arg(long, value_name = "MIB")]
    memory_floor: Option<u64>,
    /// Keep the members as ready domains of this class (a pool of DNS servers).
    #[arg(long, value_name = "C")]
    class: Option<String>,
    /// Guest memory per member, MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// A brood network each member gets a NIC on; repeat it for one NIC
    /// per network (a `switch` domain joins several).
    #[arg(long, value_name = "NET")]
    network: Vec<String>,
    /// What happens to an unused service domain.
    #[arg(long, value_enum, default_value = "teardown")]
    unused: Unused,
    /// How members after the first are made: forks of the pool's template
    /// at the trigger point, or cold boots.
    #[arg(long, value_enum, default_value = "clone")]
    refill: Refill,
}

fn path(name: &str) -> String {
    format!("/v1/pools/{}", encode(name))
}

fn summary(p: &ServicePool) -> String {
    format!(
        "{}: image {}, {}/{} ready (min {}, max {}){}",
        p.name,
        p.image,
        p.ready,
        p.members.len(),
        p.min,
        p.max,
        p.deferred
            .as_ref()
            .map(|d| format!("; refill deferred: {d}"))
            .unwrap_or_default()
    )
}

/// Runs a pool command.
pub async fn run(cmd: PoolCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        PoolCmd::Create(a) => {
            let req = ServicePoolCreateRequest {
                name: a.name,
                image: a.image,
                min: a.min,
                max: a.max,
                cpu_threshold_pct: a.cpu_threshold,
                memory_floor_mib: a.memory_floor,
                class: a.class,
                memory_mib: a.memory,
                network: a.network.first().cloned(),
                networks: a.network.iter().skip(1).cloned().collect(),
                unused: match a.unused {
                    Unused::Teardown => UnusedPolicy::Teardown,
                    Unused::Keep => UnusedPolicy::Keep,
                },
                refill: match a.refill {
                    Refill::Clone => RefillMode::Clone,
                    Refill::Cold => RefillMode::Cold,
                },
            };
            let p: ServicePool = client.post("/v1/pools", &req).await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => println!("created pool {}", summary(&p)),
            }
        }
        PoolCmd::List => {
            let l: ServicePoolList = client.get("/v1/pools").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&[
                        "NAME", "IMAGE", "CLASS", "READY", "MEMBERS", "MIN", "MAX", "DEFERRED",
                    ]);
                    for p in &l.items {
                        t.row(vec![
                            p.name.clone(),
                            p.image.clone(),
                            or_dash(p.class.clone()),
                            p.ready.to_string(),
                            p.members.len().to_string(),
                            p.min.to_string(),
                            p.max.to_string(),
                            or_dash(p.deferred.clone()),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        PoolCmd::Show { name } => {
            let p: ServicePool = client.get(&path(&name)).await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => {
                    print!(
                        "{}",
                        key_values(&[
                            ("name", p.name.clone()),
                            ("image", p.image.clone()),
                            ("class", or_dash(p.class.clone())),
                            ("min", p.min.to_string()),
                            ("max", p.max.to_string()),
                            ("cpu threshold", format!("{}%", p.cpu_threshold_pct)),
                            ("memory floor", format!("{} MiB", p.memory_floor_mib)),
                            ("generation", p.generation.to_string()),
                            (
                                "refill",
                                match p.refill {
                                    RefillMode::Clone => "clone".to_string(),
                                    RefillMode::Cold => "cold".to_string(),
                                },
                            ),
                            ("template", or_dash(p.template.clone())),
                            ("ready", p.ready.to_string()),
                            ("deferred", or_dash(p.deferred.clone())),
                        ])
                    );
                    let mut t = Table::new(&["MEMBER", "UUID", "STATE", "ORIGIN", "GEN", "PID"]);
                    for m in &p.members {
                        t.row(vec![
                            m.name.clone(),
                            m.uuid.to_string(),
                            m.state.clone(),
                            m.origin.clone(),
                            m.generation.to_string(),
                            or_dash(m.pid),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        PoolCmd::Set(a) => {
            if a.min.is_none()
                && a.max.is_none()
                && a.cpu_threshold_pct.is_none()
                && a.memory_floor_mib.is_none()
            {
                anyhow::bail!(
                    "nothing to change: give --min, --max, --cpu-threshold-pct or --memory-floor-mib"
                );
            }
            let req = ServicePoolUpdateRequest {
                min: a.min,
                max: a.max,
                cpu_threshold_pct: a.cpu_threshold_pct,
                memory_floor_mib: a.memory_floor_mib,
            };
            let p: ServicePool = client.patch(&path(&a.name), &req).await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => println!("changed pool {}", summary(&p)),
            }
        }
        PoolCmd::Delete { name } => {
            client.delete(&path(&name)).await?;
            if out == Output::Text {
                println!("deleted pool {name}");
            }
        }
    }
    Ok(0)
}
