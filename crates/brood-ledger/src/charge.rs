//! Chargeback: prices, refunds, and reports derived from the audit log
//! alone, so every figure can be recomputed and checked.
//!
//! A report replays the audit log from its first row and integrates over
//! time, for each unit:
//!
//! - **reservation-based**: what the unit was allocated (`unit_decide`
//!   records), per hour;
//! - **allocation-based**: what its partitions really held (moves between
//!   `unit:<uuid>` and a partition), per hour, plus each template's price
//!   per hour that a VM forked from it held vCPUs;
//!
//! at the prices in force at each moment (`set_price` records), minus the
//! refunds made inside the period. Prices are in micro-units of money per
//! hour: `vcpu`, `memory_gib` (per GiB), `disk_gib`, `nic`, and
//! `template:<name>`. Amounts are summed exactly (integers) and rounded
//! down to a micro-unit once per line.
//!
//! Change records:
//!
//! ```text
//! {"op":"set_price","item":"vcpu","before":N|null,"after":N}
//! {"op":"refund","id":N,"unit":"<uuid>","micros":N,"reason":"..."}
//! ```

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::read::AuditEntry;
use crate::resource::{Owner, ResourceKind, Resources};

/// Longest refund reason, in bytes.
pub const REFUND_REASON_MAX_BYTES: usize = 512;

/// A chargeback op (`Op::Charge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "charge_op", rename_all = "snake_case")]
pub enum ChargeOp {
    /// Sets the price of an item (see the module docs for the items).
    SetPrice {
        /// `vcpu`, `memory_gib`, `disk_gib`, `nic` or `template:<name>`.
        item: String,
        /// Micro-units of money per hour.
        micros_per_hour: u64,
    },
    /// Refunds (reverses) part of a unit's charges.
    Refund {
        /// The unit.
        unit: Uuid,
        /// Micro-units of money, more than zero.
        micros: u64,
        /// Why.
        reason: String,
    },
}

/// The price item of a resource kind, and the amount one priced unit is.
pub fn price_item(kind: ResourceKind) -> (&'static str, u64) {
    match kind {
        ResourceKind::MemoryMib => ("memory_gib", 1024),
        ResourceKind::Vcpus => ("vcpu", 1),
        ResourceKind::DiskGib => ("disk_gib", 1),
        ResourceKind::Nics => ("nic", 1),
    }
}

/// Whether `item` names something that can have a price.
pub fn valid_item(item: &str) -> bool {
    ResourceKind::ALL.iter().any(|k| price_item(*k).0 == item)
        || item.strip_prefix("template:").is_some_and(|t| {
            (1..=64).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        })
}

fn invalid(op: usize, what: impl Into<String>) -> LedgerError {
    LedgerError::InvalidOp {
        op,
        what: what.into(),
    }
}

/// Applies a chargeback op; the store calls this for `Op::Charge`.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &ChargeOp,
    now: &str,
) -> Result<Value, LedgerError> {
    match op {
        ChargeOp::SetPrice {
            item,
            micros_per_hour,
        } => {
            if !valid_item(item) {
                return Err(invalid(
                    i,
                    format!(
                        "no price item {item:?}: vcpu, memory_gib, disk_gib, nic or template:<name>"
                    ),
                ));
            }
            let before = prices(conn)?.get(item).copied();
            conn.prepare_cached(
                "INSERT INTO price (item, micros_per_hour) VALUES (?1, ?2) \
                 ON CONFLICT (item) DO UPDATE SET micros_per_hour = excluded.micros_per_hour",
            )
            .ctx("prepare price upsert")?
            .execute(params![item, micros_per_hour])
            .ctx("write price")?;
            Ok(json!({"op": "set_price", "item": item, "before": before, "after": micros_per_hour}))
        }
        ChargeOp::Refund {
            unit,
            micros,
            reason,
        } => {
            if *micros == 0 || i64::try_from(*micros).is_err() {
                return Err(invalid(i, "a refund is more than zero micro-units"));
            }
            if reason.is_empty() || reason.len() > REFUND_REASON_MAX_BYTES {
                return Err(invalid(
                    i,
                    format!("a refund's reason is 1-{REFUND_REASON_MAX_BYTES} bytes"),
                ));
            }
            if !crate::unit::exists(conn, *unit)? {
                return Err(invalid(i, format!("no unit {unit}")));
            }
            conn.prepare_cached(
                "INSERT INTO refund (unit, micros, reason, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .ctx("prepare refund insert")?
            .execute(params![unit.to_string(), micros, reason, now])
            .ctx("insert refund")?;
            let id = conn.last_insert_rowid();
            Ok(json!({"op": "refund", "id": id, "unit": unit, "micros": micros, "reason": reason}))
        }
    }
}

/// Every price, by item.
pub(crate) fn prices(conn: &Connection) -> Result<BTreeMap<String, u64>, LedgerError> {
    conn.prepare_cached("SELECT item, micros_per_hour FROM price ORDER BY item")
        .ctx("prepare price query")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .ctx("query prices")?
        .collect::<Result<_, _>>()
        .ctx("read prices")
}

/// Which way a report counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeModel {
    /// What the unit was allocated.
    Reservation,
    /// What its VMs held.
    Allocation,
}

/// One priced item of one unit in one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeLine {
    /// The model.
    pub model: ChargeModel,
    /// The price item.
    pub item: String,
    /// Priced units times hours (GiB-hours for memory, VM-hours for a template).
    pub quantity_hours: f64,
    /// Micro-units of money.
    pub micros: u64,
}

/// What one unit is charged for a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitCharge {
    /// The unit.
    pub unit: Uuid,
    /// Its name.
    pub name: String,
    /// Sum of the reservation-based lines.
    pub reservation_micros: u64,
    /// Sum of the allocation-based lines.
    pub allocation_micros: u64,
    /// Refunds made in the period.
    pub refunds_micros: u64,
    /// Every line.
    pub lines: Vec<ChargeLine>,
}

/// A chargeback report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeReport {
    /// Start of the period, RFC 3339.
    pub from: String,
    /// End of the period, RFC 3339.
    pub to: String,
    /// One entry per unit, by name.
    pub units: Vec<UnitCharge>,
}

fn parse_time(what: &str, s: &str) -> Result<OffsetDateTime, LedgerError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| LedgerError::InvalidOp {
        op: 0,
        what: format!("{what} {s:?} is not an RFC 3339 time: {e}"),
    })
}

/// Integrated `amount * price * ms` per (unit, model, item), with the
/// amount-times-ms alone for the quantity.
#[derive(Default)]
struct Acc {
    money: u128,
    quantity: u128,
}

#[derive(Default)]
struct State {
    names: HashMap<Uuid, String>,
    prices: HashMap<String, u64>,
    allocation: HashMap<Uuid, Resources>,
    used: HashMap<Uuid, Resources>,
    /// Partition -> (unit, vcpus it holds from the unit).
    vcpus: HashMap<Uuid, (Uuid, u64)>,
    parent: HashMap<Uuid, Uuid>,
    partition_names: HashMap<Uuid, String>,
    refunds: HashMap<Uuid, u64>,
    acc: BTreeMap<(Uuid, ChargeModel, String), Acc>,
}

impl State {
    fn accrue(&mut self, ms: u128) {
        if ms == 0 {
            return;
        }
        let add = |acc: &mut BTreeMap<_, Acc>, key, amount: u64, price: u64| {
            let a: &mut Acc = acc.entry(key).or_default();
            a.money += u128::from(amount) * u128::from(price) * ms;
            a.quantity += u128::from(amount) * ms;
        };
        for (model, table) in [
            (ChargeModel::Reservation, &self.allocation),
            (ChargeModel::Allocation, &self.used),
        ] {
            for (unit, r) in table {
                for (kind, amount) in r.iter() {
                    let (item, _) = price_item(kind);
                    let price = self.prices.get(item).copied().unwrap_or(0);
                    if amount > 0 {
                        add(
                            &mut self.acc,
                            (*unit, model, item.to_owned()),
                            amount,
                            price,
                        );
                    }
                }
            }
        }
        for (p, (unit, vcpus)) in &self.vcpus {
            let Some(t) = self.parent.get(p).and_then(|t| self.partition_names.get(t)) else {
                continue;
            };
            if *vcpus == 0 {
                continue;
            }
            let item = format!("template:{t}");
            let price = self.prices.get(&item).copied().unwrap_or(0);
            add(
                &mut self.acc,
                (*unit, ChargeModel::Allocation, item),
                1,
                price,
            );
        }
    }

    fn apply(&mut self, c: &Value, in_period: bool) {
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
        let uuid = |k: &str| Uuid::parse_str(s(k)).ok();
        match s("op") {
            "unit_register" => {
                if let (Some(u), Some(n)) = (uuid("unit"), c.pointer("/after/name")) {
                    self.names
                        .insert(u, n.as_str().unwrap_or_default().to_owned());
                }
            }
            "unit_decide" => {
                if let (Some(u), Some(a)) = (uuid("unit"), c.pointer("/allocation/after")) {
                    let r: Resources = serde_json::from_value(a.clone()).unwrap_or_default();
                    self.allocation.insert(u, r);
                }
            }
            "set_price" => {
                let after = c.get("after").and_then(Value::as_u64).unwrap_or(0);
                self.prices.insert(s("item").to_owned(), after);
            }
            "refund" if in_period => {
                if let Some(u) = uuid("unit") {
                    let m = c.get("micros").and_then(Value::as_u64).unwrap_or(0);
                    let r = self.refunds.entry(u).or_default();
                    *r = r.saturating_add(m);
                }
            }
            "insert_partition" => {
                if let Some(p) = uuid("uuid") {
                    if let Some(n) = c.pointer("/after/name").and_then(Value::as_str) {
                        self.partition_names.insert(p, n.to_owned());
                    }
                    let parent = c.pointer("/after/parent").and_then(Value::as_str);
                    if let Some(t) = parent.and_then(|t| Uuid::parse_str(t).ok()) {
                        self.parent.insert(p, t);
                    }
                }
            }
            "move" => self.apply_move(c),
            _ => {}
        }
    }

    fn apply_move(&mut self, c: &Value) {
        let owner = |side: &str| {
            c.pointer(&format!("/{side}/owner"))
                .and_then(Value::as_str)
                .and_then(|o| o.parse::<Owner>().ok())
        };
        let (Some(from), Some(to)) = (owner("from"), owner("to")) else {
            return;
        };
        let Some(kind) = c
            .get("kind")
            .and_then(Value::as_str)
            .and_then(|k| k.parse::<ResourceKind>().ok())
        else {
            return;
        };
        let amount = c.get("amount").and_then(Value::as_u64).unwrap_or(0);
        let (unit, partition, grows) = match (from, to) {
            (Owner::Unit(u), Owner::Partition(p)) => (u, p, true),
            (Owner::Partition(p), Owner::Unit(u)) => (u, p, false),
            _ => return,
        };
        let used = self.used.entry(unit).or_default();
        let now = used.get(kind);
        used.set(
            kind,
            if grows {
                now.saturating_add(amount)
            } else {
                now.saturating_sub(amount)
            },
        );
        if kind == ResourceKind::Vcpus {
            let v = self.vcpus.entry(partition).or_insert((unit, 0));
            v.1 = if grows {
                v.1.saturating_add(amount)
            } else {
                v.1.saturating_sub(amount)
            };
        }
    }
}

const MS_PER_HOUR: u128 = 3_600_000;

/// Computes the chargeback for `[from, to)` (RFC 3339) from audit entries
/// in id order, starting with the first: of every unit, or of one.
pub fn chargeback(
    entries: &[AuditEntry],
    from: &str,
    to: &str,
    unit: Option<Uuid>,
) -> Result<ChargeReport, LedgerError> {
    let (start, end) = (parse_time("from", from)?, parse_time("to", to)?);
    if end <= start {
        return Err(LedgerError::InvalidOp {
            op: 0,
            what: format!("the period ends ({to}) before it starts ({from})"),
        });
    }
    let mut st = State::default();
    let mut last = start;
    for e in entries {
        let Ok(t) = OffsetDateTime::parse(&e.time, &Rfc3339) else {
            continue;
        };
        if t > end {
            break;
        }
        if t > last {
            let ms = (t - last).whole_milliseconds();
            st.accrue(u128::try_from(ms).unwrap_or(0));
            last = t;
        }
        let in_period = t >= start;
        for c in e.changes.as_array().into_iter().flatten() {
            st.apply(c, in_period);
        }
    }
    if end > last {
        let ms = (end - last).whole_milliseconds();
        st.accrue(u128::try_from(ms).unwrap_or(0));
    }
    Ok(report(st, from, to, unit))
}

fn report(st: State, from: &str, to: &str, only: Option<Uuid>) -> ChargeReport {
    let mut units: BTreeMap<Uuid, UnitCharge> = BTreeMap::new();
    for (u, name) in &st.names {
        if only.is_some_and(|o| o != *u) {
            continue;
        }
        units.insert(
            *u,
            UnitCharge {
                unit: *u,
                name: name.clone(),
                reservation_micros: 0,
                allocation_micros: 0,
                refunds_micros: st.refunds.get(u).copied().unwrap_or(0),
                lines: Vec::new(),
            },
        );
    }
    for ((u, model, item), acc) in st.acc {
        let Some(uc) = units.get_mut(&u) else {
            continue;
        };
        let per = if item == "memory_gib" { 1024 } else { 1 };
        let micros = u64::try_from(acc.money / (MS_PER_HOUR * per)).unwrap_or(u64::MAX);
        // Display only: the quantity in priced units times hours.
        #[allow(clippy::cast_precision_loss)]
        let quantity_hours = acc.quantity as f64 / (MS_PER_HOUR * per) as f64;
        match model {
            ChargeModel::Reservation => {
                uc.reservation_micros = uc.reservation_micros.saturating_add(micros);
            }
            ChargeModel::Allocation => {
                uc.allocation_micros = uc.allocation_micros.saturating_add(micros);
            }
        }
        uc.lines.push(ChargeLine {
            model,
            item,
            quantity_hours,
            micros,
        });
    }
    let mut units: Vec<UnitCharge> = units.into_values().collect();
    units.sort_by(|a, b| a.name.cmp(&b.name));
    ChargeReport {
        from: from.to_owned(),
        to: to.to_owned(),
        units,
    }
}

/// The chargeback report over the whole audit log of `conn`.
pub(crate) fn report_from_db(
    conn: &Connection,
    from: &str,
    to: &str,
    unit: Option<Uuid>,
) -> Result<ChargeReport, LedgerError> {
    let entries = crate::read::log(conn, None, usize::MAX)?;
    chargeback(&entries, from, to, unit)
}
