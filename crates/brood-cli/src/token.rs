//! `brood token`: API tokens of users (`/v1/tokens`). A new token is
//! printed once; broodd keeps only its hash.

use std::time::Duration;

use anyhow::Result;
use brood_api::{TokenCreateRequest, TokenCreated, TokenList};
use clap::Subcommand;

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, or_dash, print_json};

/// Commands on tokens.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token for a user and print it (the only time it is shown).
    #[command(
        after_help = "Examples:\n  brood token create --user alice --expires 30d\n  BROOD_TOKEN=$(brood token create --user alice) brood vm list"
    )]
    Create {
        /// Whose token.
        #[arg(long)]
        user: String,
        /// Lifetime (`3600s`, `12h`, `30d`); never expires when left out.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// Runs a `brood token` command; returns the exit code.
pub async fn run(cmd: TokenCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        TokenCmd::Create { user, expires } => {
            let body = TokenCreateRequest {
                user,
                expires_in_s: expires.map(|d| d.as_secs().max(1)),
            };
            let t: TokenCreated = client.post("/v1/tokens", &body).await?;
            match out {
                Output::Json => print_json(&t)?,
                Output::Text => println!("{}", t.token),
            }
        }
        TokenCmd::List => {
            let l: TokenList = client.get("/v1/tokens").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => {
                    let mut t = Table::new(&["ID", "USER", "STATE", "EXPIRES"]);
                    for k in &l.items {
                        t.row(vec![
                            k.id.clone(),
                            k.user.clone(),
                            k.state.clone(),
                            or_dash(k.expires_at.clone()),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        TokenCmd::Revoke { id } => {
            client
                .delete(&format!("/v1/tokens/{}", encode(&id)))
                .await?;
            if out == Output::Json {
                print_json(&serde_json::json!({"revoked": id}))?;
            }
        }
    }
    Ok(0)
}
