//! The portal's page frame and the pieces pages share: navigation, the
//! sign-out form, error boxes, allocation bars and the charts (inline SVG
//! drawn here, on the server; no script needed to see them). maud escapes
//! every value it is given.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::Session;

/// A page: title, the session (for navigation and the sign-out form), body.
pub fn page(title: &str, s: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · brood" }
                link rel="stylesheet" href="/ui/assets/portal.css";
                script src="/ui/assets/portal.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "brood" }
                    @if let Some(s) = s {
                        nav aria-label="Main" {
                            @if s.who.is_operator() {
                                a href="/ui/admin" { "Administration" }
                                a href="/ui/audit" { "Audit log" }
                            }
                            a href="/ui/unit" { "Unit" }
                            a href="/ui/jobs" { "Jobs" }
                            // A unit's user may not read chargeback (the API's table).
                            @if s.who.role != "unit-user" { a href="/ui/chargeback" { "Chargeback" } }
                        }
                        form.signout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { (s.who.user) " · " (s.who.role)
                                @if let Some(u) = &s.who.unit { " · " (u) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An error box with the API's message.
pub fn error_box(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

/// A notice (what an action did).
pub fn notice(message: &str) -> Markup {
    html! { p.notice role="status" { (message) } }
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The hidden field of the unit an administrator acts inside.
pub fn unit_field(unit: Option<&str>) -> Markup {
    html! { @if let Some(u) = unit { input type="hidden" name="unit" value=(u); } }
}

/// `?unit=NAME` (or nothing) for links that keep the unit an administrator chose.
pub fn unit_query(unit: Option<&str>, first: bool) -> String {
    match unit {
        Some(u) => format!(
            "{}unit={}",
            if first { '?' } else { '&' },
            super::client::enc(u)
        ),
        None => String::new(),
    }
}

/// One resource's bar: used and free out of allocated.
pub fn bar(label: &str, unit: &str, allocated: u64, used: u64, free: u64) -> Markup {
    bar_of(label, unit, ["allocated", "free"], allocated, used, free)
}

/// One resource's bar with its own words for the whole and what is left
/// (`capacity` and `available` for the host).
pub fn bar_of(
    label: &str,
    unit: &str,
    words: [&str; 2],
    allocated: u64,
    used: u64,
    free: u64,
) -> Markup {
    let pct = used
        .saturating_mul(100)
        .checked_div(allocated)
        .unwrap_or(0)
        .min(100);
    html! {
        div.bar-row data-resource=(label) {
            span.bar-label { (label) }
            div.bar role="meter" aria-label=(label) aria-valuemin="0"
                aria-valuemax=(allocated) aria-valuenow=(used) {
                div.bar-used style=(format!("width:{pct}%")) {}
            }
            span.bar-figures {
                span.allocated data-v=(allocated) { (allocated) } " " (unit) " " (words[0]) ", "
                span.used data-v=(used) { (used) } " used, "
                span.free data-v=(free) { (free) } " " (words[1])
            }
        }
    }
}

/// Colours of chart series, in order.
const PALETTE: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
];

/// A series colour.
pub fn colour(i: usize) -> &'static str {
    PALETTE.get(i % PALETTE.len()).copied().unwrap_or("#000")
}

/// A bar chart: one group per label, one bar per series value.
pub fn bar_chart(title: &str, series: &[&str], groups: &[(String, Vec<f64>)]) -> Markup {
    let w = 640.0_f64;
    let h = 220.0_f64;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let n = groups.len().max(1) as f64;
    let group_w = (w - 60.0) / n;
    let bar_w = (group_w * 0.8 / series.len().max(1) as f64).max(1.0);
    let mut svg = String::new();
    for (gi, (label, values)) in groups.iter().enumerate() {
        let x0 = 50.0 + gi as f64 * group_w + group_w * 0.1;
        for (si, v) in values.iter().enumerate() {
            let bh = (v / max) * (h - 50.0);
            let x = x0 + si as f64 * bar_w;
            let y = h - 30.0 - bh;
            svg.push_str(&format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                bar_w - 1.0,
                colour(si),
                maud::html! { (label) " " (series.get(si).copied().unwrap_or("")) }.into_string(),
                figure(*v)
            ));
        }
        svg.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            x0 + group_w * 0.4,
            h - 12.0,
            maud::html! { (label) }.into_string()
        ));
    }
    svg.push_str(&format!(
        r##"<text x="4" y="16" font-size="11">{}</text><line x1="48" y1="{}" x2="{w}" y2="{}" stroke="#888"/>"##,
        figure(max),
        h - 30.0,
        h - 30.0
    ));
    chart_frame(title, series, w, h, &svg)
}

/// A chart's figure with enough decimals to tell it from zero: two for 1
/// and more, up to six for smaller amounts (a charge of 0.000166).
fn figure(v: f64) -> String {
    let decimals = if v == 0.0 || v.abs() >= 1.0 {
        2
    } else {
        // Two significant digits, at most six decimals: the first digit
        // that is not zero is the lead-th after the point.
        let mut lead = 6_usize;
        let mut scale = 10.0_f64;
        for d in 1..=6 {
            if v.abs() * scale >= 1.0 {
                lead = d;
                break;
            }
            scale *= 10.0;
        }
        (lead + 1).clamp(2, 6)
    };
    format!("{v:.decimals$}")
}

/// A step chart of series over time: each series is (name, points of
/// (seconds since the first point, value)).
pub fn step_chart(title: &str, y_unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> Markup {
    let w = 640.0_f64;
    let h = 220.0_f64;
    let tmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let vmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let x = |t: f64| 50.0 + t / tmax * (w - 60.0);
    let y = |v: f64| h - 30.0 - v / vmax * (h - 50.0);
    let mut svg = String::new();
    for (i, (_, points)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut last: Option<f64> = None;
        for (t, v) in points {
            match last {
                None => d.push_str(&format!("M{:.1},{:.1}", x(*t), y(*v))),
                Some(prev) => d.push_str(&format!(
                    " L{:.1},{:.1} L{:.1},{:.1}",
                    x(*t),
                    y(prev),
                    x(*t),
                    y(*v)
                )),
            }
            last = Some(*v);
        }
        if let Some(prev) = last {
            d.push_str(&format!(" L{:.1},{:.1}", x(tmax), y(prev)));
        }
        svg.push_str(&format!(
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="2"/>"#,
            colour(i)
        ));
    }
    svg.push_str(&format!(
        r##"<text x="4" y="16" font-size="11">{vmax:.0} {}</text><line x1="48" y1="{}" x2="{w}" y2="{}" stroke="#888"/><text x="{}" y="{}" font-size="11" text-anchor="end">{:.0} s</text>"##,
        maud::html! { (y_unit) }.into_string(),
        h - 30.0,
        h - 30.0,
        w - 4.0,
        h - 12.0,
        tmax
    ));
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    chart_frame(title, &names, w, h, &svg)
}

fn chart_frame(title: &str, series: &[&str], w: f64, h: f64, inner: &str) -> Markup {
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {h}"))
                role="img" aria-label=(title) preserveAspectRatio="xMidYMid meet" {
                (PreEscaped(inner))
            }
            figcaption {
                (title) ": "
                @for (i, s) in series.iter().enumerate() {
                    span.key style=(format!("border-color:{}", colour(i))) { (s) }
                }
            }
        }
    }
}

/// Money from micro-units, with two decimals.
pub fn money(micros: u64) -> String {
    format!(
        "{}.{:02}",
        micros / 1_000_000,
        (micros % 1_000_000) / 10_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_charts_and_bars() {
        let m = bar_chart("t", &["a"], &[("<script>".into(), vec![1.0])]).into_string();
        assert!(!m.contains("<script>"), "{m}");
        let m =
            step_chart("t", "MiB", &[("<b>".into(), vec![(0.0, 1.0), (5.0, 2.0)])]).into_string();
        assert!(!m.contains("<b>"), "{m}");
        assert!(m.contains("<path"), "{m}");
        let m = bar("memory", "MiB", 0, 0, 0).into_string();
        assert!(m.contains("width:0%"), "{m}");
    }

    #[test]
    fn chart_figures_tell_small_amounts_from_zero() {
        assert_eq!(figure(0.0), "0.00");
        assert_eq!(figure(12.345), "12.35");
        assert_eq!(figure(0.5), "0.50");
        assert_eq!(figure(0.0123), "0.012");
        assert_eq!(figure(0.000166), "0.00017");
        assert_eq!(figure(0.000_000_1), "0.000000");
        let m = bar_chart("t", &["a"], &[("u".into(), vec![0.000166])]).into_string();
        assert!(m.contains(">0.00017<"), "{m}");
    }

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(1_234_567), "1.23");
        assert_eq!(money(0), "0.00");
        assert_eq!(money(90_000), "0.09");
    }
}
