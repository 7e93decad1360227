//! `brood service ...`: request a service from a pool of service domains,
//! list, show, associate and release services.

use std::collections::BTreeMap;

use anyhow::Result;
use brood_api::service::{
    AssociateRequest, Service, ServiceClassList, ServiceList, ServiceRequest,
};
use clap::{Args, Subcommand};

use crate::Output;
use crate::client::{Client, encode};
use crate::job::Submit;
use crate::render::{Table, key_values, or_dash, print_json};

/// Commands on services.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Request a service; returns once it answers its readiness probe.
    Request(RequestArgs),
    /// List services.
    #[command(after_help = "Examples:\n  brood service list\n  brood service list -o json")]
    List,
    /// Show a service.
    #[command(after_help = "Examples:\n  brood service show www -o json")]
    Show {
        /// Service name or uuid.
        name: String,
    },
    /// Release a service: its domain is torn down.
    #[command(after_help = "Examples:\n  brood service release www")]
    Release {
        /// Service name or uuid.
        name: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
    /// Associate a further guest, within the service's domain_pairing.
    #[command(after_help = "Examples:\n  brood service associate www --for web2")]
    Associate {
        /// Service name or uuid.
        name: String,
        /// The guest (partition name).
        #[arg(long = "for", value_name = "VM")]
        guest: String,
    },
    /// List the service classes (built-in and DATA_DIR/classes).
    #[command(after_help = "Examples:\n  brood service classes")]
    Classes,
}

/// Arguments of `brood service request`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood service request http --set ip=10.0.0.2/24 --script /srv/site.sh
  brood service request log --pool svc --for web --for db --set domain_pairing=2
  brood service request http -o json

The answer names the service, its member and addresses; `fallback` says
when the pool was empty and a member was cold-booted instead.")]
pub struct RequestArgs {
    /// The class: http, syslog-tcp (busybox image); dns, dhcp, log, nfs, switch (service image).
    class: String,
    /// The pool to take a member from.
    #[arg(long, value_name = "P")]
    pool: Option<String>,
    /// The service's name [default: CLASS-<id>].
    #[arg(long)]
    name: Option<String>,
    /// A guest it serves (repeatable; at most its domain_pairing).
    #[arg(long = "for", value_name = "VM")]
    guests: Vec<String>,
    /// A key-value (repeatable): domain_pairing=N, device_pairing=N, ip=CIDR, class parameters.
    #[arg(long = "set", value_name = "K=V", value_parser = parse_kv)]
    set: Vec<(String, String)>,
    /// An init script run after the class's: a host path or an http:// URL.
    #[arg(long, value_name = "URI")]
    script: Option<String>,
    /// Seconds to wait for the readiness probe [default: the class's].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    #[command(flatten)]
    wait: crate::job::NoWait,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn path(name: &str) -> String {
    format!("/v1/services/{}", encode(name))
}

fn show_text(s: &Service) -> String {
    key_values(&[
        ("name", s.name.clone()),
        ("member", s.member.to_string()),
        ("class", s.class.clone()),
        ("pool", s.pool.clone()),
        ("state", s.state.clone()),
        (
            "addresses",
            or_dash((!s.addresses.is_empty()).then(|| s.addresses.join(", "))),
        ),
        (
            "guests",
            or_dash((!s.guests.is_empty()).then(|| s.guests.join(", "))),
        ),
        (
            "pairing",
            format!("{} guests, {} devices", s.domain_pairing, s.device_pairing),
        ),
        ("fallback", or_dash(s.fallback.clone())),
        ("ready in", or_dash(s.ready_ms.map(|m| format!("{m} ms")))),
    ])
}

/// Runs a service command.
pub async fn run(cmd: ServiceCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        ServiceCmd::Request(a) => {
            let req = ServiceRequest {
                class: a.class,
                pool: a.pool,
                name: a.name,
                guests: a.guests,
                set: a.set.into_iter().collect::<BTreeMap<_, _>>(),
                script: a.script,
                timeout_ms: a.timeout.map(|s| s.saturating_mul(1000)),
            };
            if a.wait.no_wait {
                return crate::job::submit(client, Submit::Post("/v1/services", &req), out).await;
            }
            let s: Service = client.post_within("/v1/services", &req, None).await?;
            match out {
                Output::Json => print_json(&s)?,
                Output::Text => {
                    if let Some(f) = &s.fallback {
                        eprintln!("brood: note: {f}");
                    }
                    print!("{}", show_text(&s));
                }
            }
        }
        ServiceCmd::List => {
            let l: ServiceList = client.get("/v1/services").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t =
                        Table::new(&["NAME", "CLASS", "POOL", "STATE", "ADDRESSES", "GUESTS"]);
                    for s in &l.items {
                        t.row(vec![
                            s.name.clone(),
                            s.class.clone(),
                            s.pool.clone(),
                            s.state.clone(),
                            or_dash((!s.addresses.is_empty()).then(|| s.addresses.join(","))),
                            or_dash((!s.guests.is_empty()).then(|| s.guests.join(","))),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        ServiceCmd::Show { name } => {
            let s: Service = client.get(&path(&name)).await?;
            match out {
                Output::Json => print_json(&s)?,
                Output::Text => print!("{}", show_text(&s)),
            }
        }
        ServiceCmd::Release { name, wait } => {
            if wait.no_wait {
                return crate::job::submit::<()>(client, Submit::Delete(&path(&name)), out).await;
            }
            client.delete(&path(&name)).await?;
            if out == Output::Text {
                println!("released service {name}");
            }
        }
        ServiceCmd::Associate { name, guest } => {
            let s: Service = client
                .post(
                    &format!("{}/guests", path(&name)),
                    &AssociateRequest { guest },
                )
                .await?;
            match out {
                Output::Json => print_json(&s)?,
                Output::Text => print!("{}", show_text(&s)),
            }
        }
        ServiceCmd::Classes => {
            let l: ServiceClassList = client.get("/v1/service-classes").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["CLASS", "IMAGE", "PAIRING", "DESCRIPTION"]);
                    for c in &l.items {
                        t.row(vec![
                            c.name.clone(),
                            c.image.clone(),
                            format!("{}/{}", c.domain_pairing, c.device_pairing),
                            c.description.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
    }
    Ok(0)
}
