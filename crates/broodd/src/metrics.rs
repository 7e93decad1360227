//! `GET /metrics`: broodd's state and latencies in the Prometheus text
//! format (0.0.4), encoded by `prometheus-client`.
//!
//! Two kinds of metric live here. Gauges of state (VMs by stage and run
//! state, the ledger's capacity and holdings, templates' waiting children)
//! are read from the ledger and the daemon at each scrape, so they can never
//! drift from what `GET /v1/ledger` says. Histograms and counters of events
//! (fork, boot and API latency; agent and QMP errors) are process-wide and
//! fed by one-line hooks where the event ends: [`fork_done`], [`boot`],
//! [`track`] (a middleware layer), [`engine_error`]. They restart from zero
//! with broodd, as Prometheus expects of counters. The README lists every
//! metric.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use brood_engine::EngineError;
use brood_ledger::{Owner, ResourceKind, RunState, Stage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::host::{Host, HostError, HostResult};
use crate::template::Templates;

/// Buckets of the fork histogram, in seconds: a pooled child is ready in
/// tens of milliseconds, a cold one (a new QEMU) in about a second.
const FORK_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of the boot histogram, in seconds.
const BOOT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the API latency histogram, in seconds.
const API_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    stage: &'static str,
    run_state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    template: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric, registered once.
struct Metrics {
    registry: Registry,
    vms: Family<VmLabels, Gauge>,
    capacity: Family<ResourceLabels, Gauge>,
    held: Family<ResourceLabels, Gauge>,
    available: Family<ResourceLabels, Gauge>,
    pool_ready: Family<TemplateLabels, Gauge>,
    pool_size: Family<TemplateLabels, Gauge>,
    fork: Histograms<OutcomeLabels>,
    boot: Histograms<OutcomeLabels>,
    api: Histograms<ApiLabels>,
    agent_errors: Family<AgentLabels, Counter>,
    qmp_errors: Counter,
}

fn fork_histogram() -> Histogram {
    Histogram::new(FORK_BUCKETS)
}
fn boot_histogram() -> Histogram {
    Histogram::new(BOOT_BUCKETS)
}
fn api_histogram() -> Histogram {
    Histogram::new(API_BUCKETS)
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("brood"),
            vms: Family::default(),
            capacity: Family::default(),
            held: Family::default(),
            available: Family::default(),
            pool_ready: Family::default(),
            pool_size: Family::default(),
            fork: Family::new_with_constructor(fork_histogram),
            boot: Family::new_with_constructor(boot_histogram),
            api: Family::new_with_constructor(api_histogram),
            agent_errors: Family::default(),
            qmp_errors: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "vms",
            "Partitions by life-cycle stage and run state",
            m.vms.clone(),
        );
        r.register(
            "ledger_capacity",
            "The host's capacity in the ledger, per resource (memory in MiB, disk in GiB)",
            m.capacity.clone(),
        );
        r.register(
            "ledger_held",
            "What partitions hold in the ledger, per resource",
            m.held.clone(),
        );
        r.register(
            "ledger_available",
            "What the ledger's `available` owner holds, per resource",
            m.available.clone(),
        );
        r.register(
            "template_children_ready",
            "Warm children waiting, loaded with a template's state and ready to fork",
            m.pool_ready.clone(),
        );
        r.register(
            "template_warm_target",
            "The number of warm children a template is refilled to",
            m.pool_size.clone(),
        );
        r.register(
            "fork_seconds",
            "From a fork request to the child ready (identity applied) or failed",
            m.fork.clone(),
        );
        r.register(
            "boot_seconds",
            "From starting a partition's QEMU to its guest running, or the start failing",
            m.boot.clone(),
        );
        r.register(
            "api_request_seconds",
            "From an API request to its response headers, by method, route and status",
            m.api.clone(),
        );
        r.register(
            "agent_errors",
            "Failed guest agent calls: an error reply, a broken channel, a timeout",
            m.agent_errors.clone(),
        );
        r.register(
            "qmp_errors",
            "Failed QMP commands and connections",
            m.qmp_errors.clone(),
        );
        // Every outcome and kind from the start, at 0: a series that
        // appears only on its first event breaks `rate()` and alerts.
        for outcome in ["ready", "failed"] {
            let _ = m.fork.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["running", "failed"] {
            let _ = m.boot.get_or_create(&OutcomeLabels { outcome });
        }
        for kind in ["reply", "channel", "timeout"] {
            let _ = m.agent_errors.get_or_create(&AgentLabels { kind });
        }
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
/// Serializes scrapes: each clears the state gauges and sets them anew.
static SCRAPE: Mutex<()> = Mutex::new(());

/// Records a fork that ended `ms` after its request; `report` is the
/// agent's answer to the identity step (its error, if any, is counted too).
pub fn fork_done<T>(ms: f64, report: &Result<T, EngineError>) {
    let outcome = match report {
        Ok(_) => "ready",
        Err(e) => {
            engine_error(e);
            "failed"
        }
    };
    METRICS
        .fork
        .get_or_create(&OutcomeLabels { outcome })
        .observe(ms / 1000.0);
}

/// Times a boot (an engine's `boot` future) and records how it ended.
pub async fn boot<T>(f: impl Future<Output = Result<T, EngineError>>) -> Result<T, EngineError> {
    let t0 = Instant::now();
    let r = f.await;
    let outcome = if r.is_ok() { "running" } else { "failed" };
    METRICS
        .boot
        .get_or_create(&OutcomeLabels { outcome })
        .observe(t0.elapsed().as_secs_f64());
    r
}

/// Counts an engine failure that came from the guest agent or QMP.
pub fn engine_error(e: &EngineError) {
    let agent = |kind| {
        METRICS
            .agent_errors
            .get_or_create(&AgentLabels { kind })
            .inc()
    };
    match e {
        EngineError::Agent(_) => {
            agent("reply");
        }
        EngineError::AgentChannel(_) => {
            agent("channel");
        }
        EngineError::Timeout { op, .. } if op.contains("agent") || op.contains("guest") => {
            agent("timeout");
        }
        EngineError::Qmp(_) => {
            METRICS.qmp_errors.inc();
        }
        _ => {}
    }
}

/// A method as a label: the standard ones by name, anything else as
/// `other`, so a client cannot mint label values.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: observes every request's latency by method, route template
/// (`/v1/partitions/{name}`, never the name itself) and status.
pub async fn track(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    METRICS
        .api
        .get_or_create(&ApiLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(t0.elapsed().as_secs_f64());
    resp
}

/// What a scrape reads from the ledger and the daemon.
#[derive(Debug, Default)]
struct Snapshot {
    vms: HashMap<(Stage, RunState), i64>,
    capacity: HashMap<ResourceKind, u64>,
    held: HashMap<ResourceKind, u64>,
    available: HashMap<ResourceKind, u64>,
    /// Template name, warm children waiting, warm target.
    templates: Vec<(String, u32, u32)>,
}

async fn snapshot(d: &Host) -> HostResult<Snapshot> {
    let mut s = Snapshot::default();
    let parts = d.ledger.all_partitions().await?;
    let mut names = HashMap::new();
    for p in &parts {
        *s.vms.entry((p.stage, p.run_state)).or_default() += 1;
        names.insert(p.uuid, p.name.clone());
    }
    let capacity = d.ledger.capacity().await?;
    for k in ResourceKind::ALL {
        s.capacity.insert(k, capacity.get(k));
    }
    for h in d.ledger.holdings().await? {
        let to = match h.owner {
            Owner::Available => &mut s.available,
            Owner::Partition(_) | Owner::Unit(_) => &mut s.held,
        };
        let e = to.entry(h.kind).or_default();
        *e = e.saturating_add(h.amount);
    }
    for rt in d.feature::<Templates>().all() {
        let name = names
            .get(&rt.uuid)
            .cloned()
            .unwrap_or_else(|| rt.uuid.to_string());
        let size = rt.warm_target.load(std::sync::atomic::Ordering::SeqCst);
        s.templates.push((name, rt.ready().await, size));
    }
    Ok(s)
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The text of a scrape after `s` is set into the state gauges.
fn render(s: &Snapshot) -> Result<String, std::fmt::Error> {
    let m = &*METRICS;
    let _g = SCRAPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for stage in Stage::ALL {
        for run_state in RunState::ALL {
            let n = s.vms.get(&(stage, run_state)).copied().unwrap_or(0);
            m.vms
                .get_or_create(&VmLabels {
                    stage: stage.as_str(),
                    run_state: run_state.as_str(),
                })
                .set(n);
        }
    }
    for k in ResourceKind::ALL {
        let l = ResourceLabels {
            resource: k.as_str(),
        };
        let get = |h: &HashMap<ResourceKind, u64>| gauge(h.get(&k).copied().unwrap_or(0));
        m.capacity.get_or_create(&l).set(get(&s.capacity));
        m.held.get_or_create(&l).set(get(&s.held));
        m.available.get_or_create(&l).set(get(&s.available));
    }
    // Deleted templates leave the output.
    m.pool_ready.clear();
    m.pool_size.clear();
    for (template, ready, size) in &s.templates {
        let l = TemplateLabels {
            template: template.clone(),
        };
        m.pool_ready.get_or_create(&l).set(i64::from(*ready));
        m.pool_size.get_or_create(&l).set(i64::from(*size));
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &m.registry)?;
    Ok(out)
}

/// The text of `GET /metrics`: the state read now, the counters so far.
pub async fn scrape(host: &Host) -> HostResult<String> {
    let s = snapshot(host).await?;
    render(&s).map_err(|e| HostError::corrupt("encode the metrics", e))
}

/// The content type of [`scrape`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first sample of `text` whose line starts with `prefix`.
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn state_gauges_follow_the_snapshot() {
        let mut s = Snapshot::default();
        s.vms.insert((Stage::Operating, RunState::Running), 3);
        s.capacity.insert(ResourceKind::MemoryMib, 4096);
        s.held.insert(ResourceKind::MemoryMib, 1024);
        s.available.insert(ResourceKind::MemoryMib, 3072);
        s.templates.push(("unit-tpl".into(), 2, 4));
        let text = render(&s).unwrap();
        let vms = "brood_vms{stage=\"operating\",run_state=\"running\"}";
        assert_eq!(sample(&text, vms), Some(3.0), "{text}");
        assert_eq!(
            sample(&text, "brood_vms{stage=\"template\",run_state=\"saved\"}"),
            Some(0.0)
        );
        let mem = "{resource=\"memory_mib\"}";
        assert_eq!(
            sample(&text, &format!("brood_ledger_capacity{mem}")),
            Some(4096.0)
        );
        assert_eq!(
            sample(&text, &format!("brood_ledger_held{mem}")),
            Some(1024.0)
        );
        assert_eq!(
            sample(&text, &format!("brood_ledger_available{mem}")),
            Some(3072.0)
        );
        let tpl = "{template=\"unit-tpl\"}";
        assert_eq!(
            sample(&text, &format!("brood_template_children_ready{tpl}")),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, &format!("brood_template_warm_target{tpl}")),
            Some(4.0)
        );
        // A template gone from the snapshot is gone from the output.
        s.templates.clear();
        let text = render(&s).unwrap();
        assert!(!text.contains("unit-tpl"), "{text}");
    }

    #[test]
    fn engine_errors_are_counted_by_kind() {
        let before = render(&Snapshot::default()).unwrap();
        let count = |t: &str, p: &str| sample(t, p).unwrap_or(0.0);
        engine_error(&EngineError::AgentChannel("gone".into()));
        engine_error(&EngineError::Timeout {
            op: "guest agent request",
            after: std::time::Duration::from_secs(1),
        });
        engine_error(&EngineError::InvalidSpec("not counted".into()));
        let after = render(&Snapshot::default()).unwrap();
        for p in [
            "brood_agent_errors_total{kind=\"channel\"}",
            "brood_agent_errors_total{kind=\"timeout\"}",
        ] {
            assert!(count(&after, p) >= count(&before, p) + 1.0, "{p}: {after}");
        }
        assert!(after.contains("\nbrood_qmp_errors_total "), "{after}");
    }

    #[test]
    fn latencies_land_in_histograms() {
        fork_done::<()>(40.0, &Ok(()));
        let text = render(&Snapshot::default()).unwrap();
        let bucket = "brood_fork_seconds_bucket{outcome=\"ready\",le=\"0.05\"}";
        assert!(sample(&text, bucket).unwrap_or(0.0) >= 1.0, "{text}");
        assert!(
            text.contains("# TYPE brood_fork_seconds histogram"),
            "{text}"
        );
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        let odd = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
