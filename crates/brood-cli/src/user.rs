//! `brood user`: users and their roles (`/v1/users`). A unit role's unit
//! is the global `--unit`.

use anyhow::Result;
use brood_api::{Role, User, UserCreateRequest, UserList};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json, wire_name};

/// Commands on users.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (a unit role needs `--unit`).
    #[command(
        after_help = "Examples:\n  brood user create alice --unit eng --role unit-user\n  brood user create carol --role auditor"
    )]
    Create {
        /// User name.
        name: String,
        /// admin, unit-admin, unit-user or auditor.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List the users you can see.
    List,
    /// Delete a user and its tokens.
    Delete {
        /// User name.
        name: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not one of admin, unit-admin, unit-user or auditor"))
}

/// Runs a `brood user` command; returns the exit code.
pub async fn run(cmd: UserCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        UserCmd::Create { name, role } => {
            let body = UserCreateRequest {
                name,
                role,
                unit: client.unit().map(str::to_owned),
            };
            let u: User = client.post("/v1/users", &body).await?;
            match out {
                Output::Json => print_json(&u)?,
                Output::Text => print!(
                    "{}",
                    key_values(&[
                        ("name", u.name.clone()),
                        ("role", wire_name(&u.role)),
                        ("unit", or_dash(u.unit.clone())),
                    ])
                ),
            }
        }
        UserCmd::List => {
            let l: UserList = client.get("/v1/users").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["NAME", "ROLE", "UNIT", "CREATED"]);
                    for u in &l.items {
                        t.row(vec![
                            u.name.clone(),
                            wire_name(&u.role),
                            or_dash(u.unit.clone()),
                            u.created_at.clone(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        UserCmd::Delete { name } => {
            client
                .delete(&format!("/v1/users/{}", encode(&name)))
                .await?;
            if out == Output::Json {
                print_json(&serde_json::json!({"deleted": name}))?;
            }
        }
    }
    Ok(0)
}
