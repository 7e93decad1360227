//! `brood chargeback`: what each unit is charged for a period, both
//! models, derived by broodd from the ledger's audit log; prices and
//! refunds (`/v1/chargeback`, `/v1/prices`).

use anyhow::{Result, bail};
use brood_api::{ChargebackReport, PriceList, PriceRequest, Refund, RefundRequest};
use clap::{Subcommand, ValueEnum};

use crate::client::{Client, encode};
use crate::render::{Table, print_json};

/// How the report is printed (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table.
    Text,
    /// JSON.
    Json,
    /// Comma-separated lines, one per charge line.
    Csv,
}

/// Commands on chargeback.
#[derive(Debug, Subcommand)]
pub enum ChargebackCmd {
    /// The charges of a period: reservation-based (what units were
    /// allocated) and allocation-based (what their VMs held), less refunds.
    #[command(
        after_help = "Examples:\n  brood chargeback report --from 2026-01-01 --to 2026-02-01\n  brood chargeback report --unit eng --from 2026-01-01 --to 2026-01-02 -o csv"
    )]
    Report {
        /// Start: a date (YYYY-MM-DD, midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// End (exclusive), like `--from`.
        #[arg(long)]
        to: String,
    },
    /// Show prices (micro-units of money per hour).
    Prices,
    /// Set a price: vcpu, memory_gib, disk_gib, nic or template:<name>.
    #[command(
        after_help = "Examples:\n  brood chargeback price vcpu 10000\n  brood chargeback price template:web 500000"
    )]
    Price {
        /// The item.
        item: String,
        /// Micro-units of money per hour.
        micros_per_hour: u64,
    },
    /// Refund part of a unit's charges (audited).
    Refund {
        /// The unit.
        unit: String,
        /// Micro-units of money.
        micros: u64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// A date or time as broodd takes it (RFC 3339).
pub fn time_arg(s: &str) -> Result<String> {
    let t = s.trim();
    let b = t.as_bytes();
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && humantime::parse_rfc3339_weak(&format!("{t} 00:00:00")).is_ok()
    {
        return Ok(format!("{t}T00:00:00Z"));
    }
    if humantime::parse_rfc3339(t).is_ok() {
        return Ok(t.to_owned());
    }
    bail!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time (2026-01-01T00:00:00Z)")
}

/// Micro-units as money with six decimals.
pub fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The report as CSV: unit,model,item,quantity_hours,amount.
pub fn csv(r: &ChargebackReport) -> String {
    let mut s = String::from("unit,model,item,quantity_hours,amount\n");
    for u in &r.units {
        for l in &u.lines {
            s.push_str(&format!(
                "{},{},{},{},{}\n",
                u.unit,
                l.model,
                l.item,
                l.quantity_hours,
                money(l.micros)
            ));
        }
        if u.refunds_micros > 0 {
            s.push_str(&format!(
                "{},refund,refund,0,-{}\n",
                u.unit,
                money(u.refunds_micros)
            ));
        }
    }
    s
}

fn text(r: &ChargebackReport) -> String {
    let mut t = Table::new(&["UNIT", "RESERVATION", "ALLOCATION", "REFUNDS"]).right(&[1, 2, 3]);
    for u in &r.units {
        t.row(vec![
            u.unit.clone(),
            money(u.reservation_micros),
            money(u.allocation_micros),
            money(u.refunds_micros),
        ]);
    }
    format!("from {} to {}\n{}", r.from, r.to, t.render())
}

/// Runs a `brood chargeback` command; returns the exit code.
pub async fn run(cmd: ChargebackCmd, client: &Client, format: Format) -> Result<i32> {
    match cmd {
        ChargebackCmd::Report { from, to } => {
            let mut path = format!(
                "/v1/chargeback?from={}&to={}",
                encode(&time_arg(&from)?),
                encode(&time_arg(&to)?)
            );
            if let Some(u) = client.unit() {
                path.push_str(&format!("&unit={}", encode(u)));
            }
            let r: ChargebackReport = client.get(&path).await?;
            match format {
                Format::Json => print_json(&r)?,
                Format::Csv => print!("{}", csv(&r)),
                Format::Text => print!("{}", text(&r)),
            }
        }
        ChargebackCmd::Prices => {
            let p: PriceList = client.get("/v1/prices").await?;
            print_prices(&p, format)?;
        }
        ChargebackCmd::Price {
            item,
            micros_per_hour,
        } => {
            let p: PriceList = client
                .put(
                    "/v1/prices",
                    &PriceRequest {
                        item,
                        micros_per_hour,
                    },
                )
                .await?;
            print_prices(&p, format)?;
        }
        ChargebackCmd::Refund {
            unit,
            micros,
            reason,
        } => {
            let r: Refund = client
                .post(
                    "/v1/chargeback/refunds",
                    &RefundRequest {
                        unit,
                        micros,
                        reason,
                    },
                )
                .await?;
            match format {
                Format::Json => print_json(&r)?,
                _ => println!(
                    "refunded {} to {} (audit entry {})",
                    money(r.micros),
                    r.unit,
                    r.tx
                ),
            }
        }
    }
    Ok(0)
}

fn print_prices(p: &PriceList, format: Format) -> Result<()> {
    match format {
        Format::Json => print_json(p),
        _ => {
            let mut t = Table::new(&["ITEM", "PER HOUR"]).right(&[1]);
            for (item, m) in &p.items {
                t.row(vec![item.clone(), money(*m)]);
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_become_midnight_utc_and_bad_ones_are_refused() {
        assert_eq!(
            time_arg("2026-01-01").ok().as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            time_arg("2026-01-01T06:00:00Z").ok().as_deref(),
            Some("2026-01-01T06:00:00Z")
        );
        assert!(time_arg("yesterday").is_err());
        assert!(time_arg("2026-13-01").is_err());
        assert_eq!(money(1_234_567), "1.234567");
    }
}
