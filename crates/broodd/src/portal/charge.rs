//! Chargeback for a chosen period: the API's report (`GET /v1/chargeback`)
//! as a table and a bar chart per unit, and the same report as CSV, in the
//! columns `brood chargeback report -o csv` prints. A unit's user sees its
//! own unit only, because that is all the API reports to it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use brood_api::ChargebackReport;
use maud::{Markup, html};

use super::client::{ApiFailure, enc};
use super::html::{bar_chart, money};
use super::{Ctx, P, failed, render};

/// The period shown when none is asked for: the last this long.
const DEFAULT_PERIOD: Duration = Duration::from_secs(7 * 86400);

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time, as the API takes it.
pub fn instant(s: &str) -> Result<String, ApiFailure> {
    let s = s.trim();
    let b = s.as_bytes();
    let is_date = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if is_date {
        return Ok(format!("{s}T00:00:00Z"));
    }
    if humantime::parse_rfc3339_weak(s).is_ok() && s.len() <= 40 {
        return Ok(s.to_owned());
    }
    Err(ApiFailure {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request".into(),
        message: format!(
            "{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time (2026-01-01T00:00:00Z)"
        ),
    })
}

/// The period asked for, or the default one ending now.
fn period(q: &BTreeMap<String, String>) -> Result<(String, String), ApiFailure> {
    let now = SystemTime::now();
    let from = match q.get("from").filter(|s| !s.trim().is_empty()) {
        Some(f) => instant(f)?,
        None => humantime::format_rfc3339_seconds(now - DEFAULT_PERIOD).to_string(),
    };
    let to = match q.get("to").filter(|s| !s.trim().is_empty()) {
        Some(t) => instant(t)?,
        None => humantime::format_rfc3339_seconds(now).to_string(),
    };
    Ok((from, to))
}

async fn report(ctx: &Ctx, q: &BTreeMap<String, String>) -> Result<ChargebackReport, ApiFailure> {
    let (from, to) = period(q)?;
    let mut path = format!("/v1/chargeback?from={}&to={}", enc(&from), enc(&to));
    if let Some(u) = &ctx.unit {
        path.push_str(&format!("&unit={}", enc(u)));
    }
    ctx.api.get(&path).await
}

/// `GET /ui/chargeback?from=&to=[&unit=]`.
pub async fn view(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match report(&ctx, &q).await {
        Ok(r) => render(&ctx, "Chargeback", page(&ctx, &r)),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

fn page(ctx: &Ctx, r: &ChargebackReport) -> Markup {
    let operator_unit = ctx.unit.as_deref().filter(|_| ctx.s.who.unit.is_none());
    let mut csv = format!("/ui/chargeback.csv?from={}&to={}", enc(&r.from), enc(&r.to));
    if let Some(u) = operator_unit {
        csv.push_str(&format!("&unit={}", enc(u)));
    }
    let groups: Vec<(String, Vec<f64>)> = r
        .units
        .iter()
        .map(|u| {
            (
                u.unit.clone(),
                vec![
                    u.reservation_micros as f64 / 1e6,
                    u.allocation_micros as f64 / 1e6,
                ],
            )
        })
        .collect();
    html! {
        form.filters method="get" action="/ui/chargeback" {
            @if let Some(u) = operator_unit { input type="hidden" name="unit" value=(u); }
            label { "From " input name="from" value=(r.from) aria-describedby="period-hint"; }
            label { "To " input name="to" value=(r.to); }
            button type="submit" { "Show" }
            span id="period-hint" .hint { " A date (2026-01-01) or an RFC 3339 time." }
        }
        p { a.csv href=(csv) download { "Export CSV" } }
        @if r.units.is_empty() { p { "No unit was charged in this period." } } @else {
            (bar_chart("Charges per unit", &["reservation", "allocation"], &groups))
            table.chargeback {
                thead { tr { th { "Unit" } th.num { "Reservation" } th.num { "Allocation" } th.num { "Refunds" } } }
                tbody { @for u in &r.units { tr data-unit=(u.unit) {
                    td { (u.unit) } td.num { (money(u.reservation_micros)) } td.num { (money(u.allocation_micros)) } td.num { (money(u.refunds_micros)) }
                } } }
            }
            details { summary { "Lines" }
                table { thead { tr { th { "Unit" } th { "Model" } th { "Item" } th.num { "Hours" } th.num { "Amount" } } }
                    tbody { @for u in &r.units { @for l in &u.lines { tr {
                        td { (u.unit) } td { (l.model) } td { (l.item) } td.num { (format!("{:.4}", l.quantity_hours)) } td.num { (money(l.micros)) }
                    } } } } }
            }
        }
    }
}

/// Micro-units with six decimals, as the CLI's CSV has them.
fn money6(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// A CSV field: quoted when it holds a comma, quote or line break; a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// does not run it as a formula.
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The report as CSV: `unit,model,item,quantity_hours,amount`.
pub fn to_csv(r: &ChargebackReport) -> String {
    let mut s = String::from("unit,model,item,quantity_hours,amount\n");
    for u in &r.units {
        for l in &u.lines {
            s.push_str(&format!(
                "{},{},{},{},{}\n",
                field(&u.unit),
                field(&l.model),
                field(&l.item),
                l.quantity_hours,
                money6(l.micros)
            ));
        }
        if u.refunds_micros > 0 {
            s.push_str(&format!(
                "{},refund,refund,0,-{}\n",
                field(&u.unit),
                money6(u.refunds_micros)
            ));
        }
    }
    s
}

/// `GET /ui/chargeback.csv?from=&to=[&unit=]`.
pub async fn csv(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match report(&ctx, &q).await {
        Ok(r) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"chargeback.csv\"".to_string(),
                ),
            ],
            to_csv(&r),
        )
            .into_response(),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

#[cfg(test)]
mod tests {
    use brood_api::{ChargeLine, UnitCharge};

    use super::*;

    #[test]
    fn dates_become_midnight_utc_and_bad_ones_are_refused() {
        assert_eq!(instant("2026-01-02").unwrap(), "2026-01-02T00:00:00Z");
        assert_eq!(
            instant("2026-01-02T03:04:05Z").unwrap(),
            "2026-01-02T03:04:05Z"
        );
        let e = instant("yesterday").unwrap_err();
        assert!(e.message.contains("YYYY-MM-DD"), "{}", e.message);
    }

    #[test]
    fn csv_has_the_clis_columns_and_quotes_what_needs_it() {
        let r = ChargebackReport {
            from: "a".into(),
            to: "b".into(),
            units: vec![UnitCharge {
                unit: "eng".into(),
                reservation_micros: 1,
                allocation_micros: 2,
                refunds_micros: 500_000,
                lines: vec![ChargeLine {
                    model: "allocation".into(),
                    item: "template:a,b".into(),
                    quantity_hours: 1.5,
                    micros: 1_234_567,
                }],
            }],
        };
        assert_eq!(
            to_csv(&r),
            "unit,model,item,quantity_hours,amount\neng,allocation,\"template:a,b\",1.5,1.234567\neng,refund,refund,0,-0.500000\n"
        );
        assert_eq!(field("=cmd()"), "'=cmd()");
    }
}
