//! `brood unit`: business units register, ask for allocations and changes,
//! and administrators decide them (`/v1/units`, `/v1/requests`).

use anyhow::Result;
use brood_api::{
    AllocationRequest, ApproveRequest, RejectRequest, Unit, UnitList, UnitRegisterRequest,
    UnitRequestList, UnitRequestView,
};
use clap::{Args, Subcommand};

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, print_json, resources, wire_name};

/// Amounts of an allocation or a grant.
#[derive(Debug, Args)]
pub struct Amounts {
    /// vCPUs.
    #[arg(long)]
    vcpus: Option<u64>,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Disk in GiB.
    #[arg(long, value_name = "GIB")]
    disk: Option<u64>,
    /// Network interfaces.
    #[arg(long)]
    nics: Option<u64>,
}

/// Commands on units.
#[derive(Debug, Subcommand)]
pub enum UnitCmd {
    /// Register a unit (nothing is allocated until a request is approved).
    #[command(after_help = "Examples:\n  brood unit register eng --contact eng@example.com")]
    Register {
        /// Unit name.
        name: String,
        /// Who to call.
        #[arg(long)]
        contact: String,
    },
    /// List the units you can see.
    List,
    /// Show a unit: allocated, used and free, per resource.
    Show {
        /// Unit name.
        name: String,
    },
    /// Ask for an allocation, or a change of it: each amount is the whole
    /// allocation wanted (more grows it, less shrinks it).
    #[command(
        after_help = "Examples:\n  brood unit request eng --vcpus 8 --memory 8192 --disk 100 --network br0"
    )]
    Request {
        /// Unit name.
        name: String,
        #[command(flatten)]
        amounts: Amounts,
        /// A network the unit's VMs may use (repeat; replaces the list).
        #[arg(long = "network", value_name = "NETWORK")]
        networks: Vec<String>,
        /// A template the unit may fork from (repeat; replaces the list).
        #[arg(long = "template", value_name = "TEMPLATE")]
        templates: Vec<String>,
    },
    /// List requests (`--pending`: only those waiting for a decision).
    Requests {
        /// Only pending requests.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a request; with amounts, approve it in part.
    #[command(
        after_help = "Examples:\n  brood unit approve 3\n  brood unit approve 3 --vcpus 4 --note 'the rest next quarter'"
    )]
    Approve {
        /// Request number.
        id: u64,
        #[command(flatten)]
        amounts: Amounts,
        /// A note for the unit.
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a request.
    Reject {
        /// Request number.
        id: u64,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
}

fn unit_text(u: &Unit) -> String {
    key_values(&[
        ("name", u.name.clone()),
        ("contact", u.contact.clone()),
        ("allocated", resources(&u.allocated)),
        ("used", resources(&u.used)),
        ("free", resources(&u.free)),
        ("networks", u.networks.join(", ")),
        ("templates", u.templates.join(", ")),
    ])
}

fn requests_table(items: &[UnitRequestView]) -> String {
    let mut t = Table::new(&["ID", "UNIT", "STATE", "WANT", "GRANTED", "BY"]).right(&[0]);
    for r in items {
        t.row(vec![
            r.id.to_string(),
            r.unit.clone(),
            wire_name(&r.state),
            resources(&r.want),
            r.granted.as_ref().map_or_else(|| "-".into(), resources),
            r.decided_by.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

/// Runs a `brood unit` command; returns the exit code.
pub async fn run(cmd: UnitCmd, client: &Client, out: Output) -> Result<i32> {
    let show_request = |r: &UnitRequestView| -> Result<()> {
        match out {
            Output::Json => print_json(r),
            Output::Text => {
                print!("{}", requests_table(std::slice::from_ref(r)));
                Ok(())
            }
        }
    };
    match cmd {
        UnitCmd::Register { name, contact } => {
            let u: Unit = client
                .post("/v1/units", &UnitRegisterRequest { name, contact })
                .await?;
            match out {
                Output::Json => print_json(&u)?,
                Output::Text => print!("{}", unit_text(&u)),
            }
        }
        UnitCmd::List => {
            let l: UnitList = client.get("/v1/units").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["NAME", "ALLOCATED", "USED"]);
                    for u in &l.items {
                        t.row(vec![
                            u.name.clone(),
                            resources(&u.allocated),
                            resources(&u.used),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        UnitCmd::Show { name } => {
            let u: Unit = client.get(&format!("/v1/units/{}", encode(&name))).await?;
            match out {
                Output::Json => print_json(&u)?,
                Output::Text => print!("{}", unit_text(&u)),
            }
        }
        UnitCmd::Request {
            name,
            amounts,
            networks,
            templates,
        } => {
            let body = AllocationRequest {
                vcpus: amounts.vcpus,
                memory_mib: amounts.memory,
                disk_gib: amounts.disk,
                nics: amounts.nics,
                networks: (!networks.is_empty()).then_some(networks),
                templates: (!templates.is_empty()).then_some(templates),
            };
            let r: UnitRequestView = client
                .post(&format!("/v1/units/{}/requests", encode(&name)), &body)
                .await?;
            show_request(&r)?;
        }
        UnitCmd::Requests { pending } => {
            let l: UnitRequestList = client
                .get(&format!("/v1/requests?pending={pending}"))
                .await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => print!("{}", requests_table(&l.items)),
            }
        }
        UnitCmd::Approve { id, amounts, note } => {
            let body = ApproveRequest {
                vcpus: amounts.vcpus,
                memory_mib: amounts.memory,
                disk_gib: amounts.disk,
                nics: amounts.nics,
                note,
            };
            let r: UnitRequestView = client
                .post(&format!("/v1/requests/{id}/approve"), &body)
                .await?;
            show_request(&r)?;
        }
        UnitCmd::Reject { id, note } => {
            let r: UnitRequestView = client
                .post(
                    &format!("/v1/requests/{id}/reject"),
                    &RejectRequest { note },
                )
                .await?;
            show_request(&r)?;
        }
    }
    Ok(0)
}
