//! `brood identity-pool ...`: the identity and IPv4 pools forked children draw their
//! identities and addresses from. This module parses the flags and the
//! identities file; handing values out and taking them back is broodd's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use brood_api::{IdentityPool, IdentityPoolCreateRequest, IdentityPoolKind, IdentityPoolList};
use clap::builder::NonEmptyStringValueParser;
use clap::{ArgGroup, Args, Subcommand};

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json, wire_name};

/// Commands on identity pools.
#[derive(Debug, Subcommand)]
pub enum IdentityPoolCmd {
    /// Create a pool of identities or of IPv4 addresses.
    Create(CreateArgs),
    /// List pools.
    #[command(after_help = "Examples:
  brood identity-pool list
  brood identity-pool list -o json")]
    List,
    /// Show one pool and who holds each value.
    #[command(after_help = "Examples:
  brood identity-pool show lan
  brood identity-pool show hosts -o json")]
    Show {
        /// Identity pool name.
        name: String,
    },
    /// Delete a pool; broodd refuses while a child holds one of its values.
    #[command(after_help = "Examples:\n  brood identity-pool delete lan")]
    Delete {
        /// Identity pool name.
        name: String,
    },
}

/// Arguments of `brood identity-pool create`.
#[derive(Debug, Args)]
#[command(
    group(
        ArgGroup::new("values")
            .required(true)
            .args(["identities", "identities_file", "ipv4"])
    ),
    after_help = "Examples:
  brood identity-pool create hosts --identity host-a --identity host-b
  brood identity-pool create hosts --identities-file hosts.txt
  brood identity-pool create lan --ipv4 10.0.0.10-10.0.0.50 --prefix 24 --gateway 10.0.0.1
  brood identity-pool create lan --ipv4 10.0.0.10-50

An identities file holds one identity a line; blank lines and lines starting
with # are skipped."
)]
pub struct CreateArgs {
    /// Pool name: 1-64 of [a-z0-9_.-].
    name: String,
    /// An identity (repeatable).
    #[arg(
        long = "identity",
        value_name = "VALUE",
        value_parser = NonEmptyStringValueParser::new()
    )]
    identities: Vec<String>,
    /// Read the identities from FILE, one a line.
    #[arg(long, value_name = "FILE")]
    identities_file: Option<PathBuf>,
    /// An IPv4 pool of the addresses FIRST-LAST (10.0.0.10-10.0.0.50, or
    /// 10.0.0.10-50 with the last octet only, or one address).
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_ipv4_range)]
    ipv4: Option<String>,
    /// Prefix length of the addresses [default: 24].
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["identities", "identities_file"],
        value_parser = clap::value_parser!(u8).range(0..=32)
    )]
    prefix: Option<u8>,
    /// Default gateway handed out with the addresses.
    #[arg(
        long,
        value_name = "IP",
        conflicts_with_all = ["identities", "identities_file"]
    )]
    gateway: Option<Ipv4Addr>,
}

/// Parses `--ipv4`: `FIRST-LAST`, `FIRST-N` (N replaces FIRST's last
/// octet) or one address; returns the canonical `FIRST-LAST`.
pub fn parse_ipv4_range(s: &str) -> Result<String, String> {
    let hint = "use FIRST-LAST, e.g. 10.0.0.10-10.0.0.50 or 10.0.0.10-50";
    let (first_text, last_text) = s.split_once('-').unwrap_or((s, s));
    let (first_text, last_text) = (first_text.trim(), last_text.trim());
    let first: Ipv4Addr = first_text
        .parse()
        .map_err(|_| format!("{s:?}: {first_text:?} is not an IPv4 address ({hint})"))?;
    let last = if last_text.contains('.') {
        last_text
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?}: {last_text:?} is not an IPv4 address ({hint})"))?
    } else {
        let octet: u8 = last_text.parse().map_err(|_| {
            format!("{s:?}: {last_text:?} is neither an address nor an octet ({hint})")
        })?;
        let [a, b, c, _] = first.octets();
        Ipv4Addr::new(a, b, c, octet)
    };
    if last < first {
        return Err(format!("{s:?}: {last} comes before {first}"));
    }
    Ok(format!("{first}-{last}"))
}

/// The identities in an identities file: one a line, trimmed; blank lines
/// and lines starting with `#` are skipped. A `#` later in a line is part
/// of the identity.
pub fn parse_identities(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

async fn read_identities(file: &Path) -> Result<Vec<String>> {
    let text = tokio::fs::read_to_string(file)
        .await
        .with_context(|| format!("read {}", file.display()))?;
    let values = parse_identities(&text);
    if values.is_empty() {
        bail!(
            "{} holds no identities (one a line; blank lines and # comments are skipped)",
            file.display()
        );
    }
    Ok(values)
}

/// The request `brood identity-pool create` sends; `from_file` are the identities
/// read from `--identities-file`.
fn request(args: CreateArgs, from_file: Vec<String>) -> IdentityPoolCreateRequest {
    let kind = if args.ipv4.is_some() {
        IdentityPoolKind::Ipv4
    } else {
        IdentityPoolKind::Identity
    };
    let mut values = args.identities;
    values.extend(from_file);
    IdentityPoolCreateRequest {
        name: args.name,
        kind,
        values,
        range: args.ipv4,
        prefix: args.prefix,
        gateway: args.gateway.map(|g| g.to_string()),
    }
}

fn pool_path(name: &str) -> String {
    format!("/v1/identity-pools/{}", encode(name))
}

/// Runs a `brood pool` command; returns the exit code.
pub async fn run(cmd: IdentityPoolCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        IdentityPoolCmd::Create(args) => {
            let from_file = match &args.identities_file {
                Some(file) => read_identities(file).await?,
                None => Vec::new(),
            };
            let p: IdentityPool = client
                .post("/v1/identity-pools", &request(args, from_file))
                .await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => println!("created identity pool {}", summary(&p)),
            }
            Ok(0)
        }
        IdentityPoolCmd::List => {
            let list: IdentityPoolList = client.get("/v1/identity-pools").await?;
            match out {
                Output::Json => print_json(&list)?,
                Output::Text => print!("{}", list_table(&list.items)),
            }
            Ok(0)
        }
        IdentityPoolCmd::Show { name } => {
            let p: IdentityPool = client.get(&pool_path(&name)).await?;
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => print!("{}", show(&p)),
            }
            Ok(0)
        }
        IdentityPoolCmd::Delete { name } => {
            client.delete(&pool_path(&name)).await?;
            if out == Output::Text {
                println!("deleted identity pool {name}");
            }
            Ok(0)
        }
    }
}

/// One line about a pool: `lan: ipv4, 41 values, 39 free`.
pub fn summary(p: &IdentityPool) -> String {
    let plural = if p.size == 1 { "" } else { "s" };
    format!(
        "{}: {}, {} value{plural}, {} free",
        p.name,
        wire_name(&p.kind),
        p.size,
        p.free
    )
}

/// The table of `brood identity-pool list`.
pub fn list_table(items: &[IdentityPool]) -> String {
    let mut t = Table::new(&["NAME", "KIND", "SIZE", "FREE"]).right(&[2, 3]);
    for p in items {
        t.row(vec![
            p.name.clone(),
            wire_name(&p.kind),
            p.size.to_string(),
            p.free.to_string(),
        ]);
    }
    t.render()
}

/// `brood identity-pool show`: the pool's key/value listing, a blank line, then a
/// VALUE HOLDER table.
pub fn show(p: &IdentityPool) -> String {
    let mut kv: Vec<(&str, String)> = vec![
        ("name", p.name.clone()),
        ("kind", wire_name(&p.kind)),
        ("size", p.size.to_string()),
        ("free", p.free.to_string()),
    ];
    if p.kind == IdentityPoolKind::Ipv4 {
        kv.push(("prefix", or_dash(p.prefix.map(|n| format!("/{n}")))));
        kv.push(("gateway", or_dash(p.gateway.as_deref())));
    }
    let mut t = Table::new(&["VALUE", "HOLDER"]);
    for item in &p.items {
        t.row(vec![item.value.clone(), or_dash(item.holder.as_deref())]);
    }
    format!("{}\n{}", key_values(&kv), t.render())
}

#[cfg(test)]
mod tests {
    use brood_api::IdentityPoolItem;
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let argv = ["create"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn ipv4_range_forms() {
        let ok = |s| parse_ipv4_range(s).unwrap();
        assert_eq!(ok("10.0.0.10-10.0.0.50"), "10.0.0.10-10.0.0.50");
        assert_eq!(ok("10.0.0.10 - 10.0.0.50"), "10.0.0.10-10.0.0.50");
        assert_eq!(ok("10.0.0.10-50"), "10.0.0.10-10.0.0.50");
        assert_eq!(ok("10.0.0.250-10.0.1.5"), "10.0.0.250-10.0.1.5");
        assert_eq!(ok("10.0.0.7"), "10.0.0.7-10.0.0.7");
        assert_eq!(ok("10.0.0.7-7"), "10.0.0.7-10.0.0.7");
        let err = |s| parse_ipv4_range(s).unwrap_err();
        assert!(err("10.0.0.50-10").contains("10.0.0.10 comes before 10.0.0.50"));
        assert!(err("10.0.0.50-10.0.0.10").contains("comes before"));
        assert!(err("10.0.0-10.0.0.5").contains("is not an IPv4 address"));
        assert!(err("10.0.0.1-10.0.0.256").contains("is not an IPv4 address"));
        assert!(err("10.0.0.1-256").contains("neither an address nor an octet"));
        assert!(err("10.0.0.1-").contains("FIRST-LAST"));
        assert!(err("web").contains("FIRST-LAST"));
        assert!(err("::1").contains("is not an IPv4 address"));
    }

    #[test]
    fn identities_file_lines() {
        let text = "# hosts for the lab\nhost-a\n\n   \n  host-b  \r\n#host-c\nhost#d\n";
        assert_eq!(parse_identities(text), ["host-a", "host-b", "host#d"]);
        assert!(parse_identities("# nothing\n\n").is_empty());
        assert!(parse_identities("").is_empty());
    }

    #[tokio::test]
    async fn empty_identities_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ids.txt");
        std::fs::write(&file, "# none yet\n").unwrap();
        let e = read_identities(&file).await.unwrap_err();
        assert!(e.to_string().contains("holds no identities"), "{e}");
        std::fs::write(&file, "a\nb\n").unwrap();
        assert_eq!(read_identities(&file).await.unwrap(), ["a", "b"]);
        let e = read_identities(&dir.path().join("absent"))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("read "), "{e}");
    }

    #[test]
    fn exactly_one_source_of_values() {
        assert!(parse(&["hosts"]).is_err());
        assert!(parse(&["hosts", "--identity", "a", "--ipv4", "10.0.0.1-2"]).is_err());
        assert!(parse(&["hosts", "--identity", "a", "--identities-file", "f"]).is_err());
        assert!(parse(&["hosts", "--identity", ""]).is_err());
        assert!(parse(&["hosts", "--identity", "a", "--prefix", "24"]).is_err());
        assert!(parse(&["hosts", "--identity", "a", "--gateway", "10.0.0.1"]).is_err());
        assert!(parse(&["lan", "--ipv4", "10.0.0.1-2", "--prefix", "33"]).is_err());
        assert!(parse(&["lan", "--ipv4", "10.0.0.1-2", "--gateway", "gw"]).is_err());

        let args = parse(&["hosts", "--identity", "a", "--identity", "b"]).unwrap();
        let req = request(args, Vec::new());
        assert_eq!(req.kind, IdentityPoolKind::Identity);
        assert_eq!(req.values, ["a", "b"]);
        assert_eq!((req.range, req.prefix, req.gateway), (None, None, None));
    }

    #[test]
    fn ipv4_flags_make_the_request() {
        let args = parse(&[
            "lan",
            "--ipv4",
            "10.0.0.10-50",
            "--prefix",
            "16",
            "--gateway",
            "10.0.0.1",
        ])
        .unwrap();
        assert_eq!(
            request(args, Vec::new()),
            IdentityPoolCreateRequest {
                name: "lan".into(),
                kind: IdentityPoolKind::Ipv4,
                values: Vec::new(),
                range: Some("10.0.0.10-10.0.0.50".into()),
                prefix: Some(16),
                gateway: Some("10.0.0.1".into()),
            }
        );
        let args = parse(&["hosts", "--identities-file", "f"]).unwrap();
        let req = request(args, vec!["x".into()]);
        assert_eq!(
            (req.kind, req.values),
            (IdentityPoolKind::Identity, vec!["x".into()])
        );
    }

    fn pool() -> IdentityPool {
        IdentityPool {
            name: "lan".into(),
            kind: IdentityPoolKind::Ipv4,
            size: 3,
            free: 2,
            prefix: Some(24),
            gateway: None,
            items: vec![
                IdentityPoolItem {
                    value: "10.0.0.10".into(),
                    holder: Some("web-1".into()),
                },
                IdentityPoolItem {
                    value: "10.0.0.11".into(),
                    holder: None,
                },
            ],
        }
    }

    #[test]
    fn renders() {
        let p = pool();
        assert_eq!(summary(&p), "lan: ipv4, 3 values, 2 free");
        assert_eq!(
            show(&p),
            "name     lan\n\
             kind     ipv4\n\
             size     3\n\
             free     2\n\
             prefix   /24\n\
             gateway  -\n\
             \n\
             VALUE      HOLDER\n\
             10.0.0.10  web-1\n\
             10.0.0.11  -\n"
        );
        let ids = IdentityPool {
            name: "hosts".into(),
            kind: IdentityPoolKind::Identity,
            size: 1,
            free: 1,
            prefix: None,
            gateway: None,
            items: Vec::new(),
        };
        assert_eq!(summary(&ids), "hosts: identity, 1 value, 1 free");
        assert_eq!(
            show(&ids),
            "name  hosts\nkind  identity\nsize  1\nfree  1\n\nVALUE  HOLDER\n"
        );
        assert_eq!(
            list_table(&[p, ids]),
            "NAME   KIND      SIZE  FREE\n\
             lan    ipv4         3     2\n\
             hosts  identity     1     1\n"
        );
    }
}
