//! `brood-bench pool`: a service request from a pool of members waiting at
//! the trigger point, against the other ways to get the same service, on
//! the same image in one run.
//!
//! - brood: `POST /v1/services` (class `http` on the default image, or
//!   `dns` or `log` on the service image) from a pool of members
//!   paused at the trigger point, refilled between requests; latency from
//!   the call to its return, which is when the class's probe answered
//!   inside the domain (an HTTP GET, a DNS query of `version.bind`
//!   answered, a syslog line over UDP and one over TCP stored).
//! - (a) a cold boot of the same image to the same answer: a request to an
//!   empty pool, whose fallback boots a member and differentiates it;
//! - (b) a fully booted, paused generic VM configured after resume (what
//!   Qubes' preloaded disposables do): resume it, run the same start script
//!   through the agent, then the same probe.
//!
//! Also: refill time of one member by clone (a fork of the pool's template
//! saved at the trigger point) and by cold boot (a pool with `refill:
//! cold`, whose requests are timed too: members booted rather than
//! forked), and a paused member's PSS.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::api::pct;
use crate::fork::{Daemon, smaps_kib};
use crate::{median, ms};

/// A class the benchmark requests: its recipe's scripts (for peer (b)),
/// the image it needs, and its parameters' defaults as peer (b)'s
/// environment.
struct Class {
    name: &'static str,
    start: &'static str,
    probe: &'static str,
    service_image: bool,
    env: &'static [(&'static str, &'static str)],
}

const CLASSES: [Class; 3] = [
    Class {
        name: "http",
        start: include_str!("../../../images/classes/http/start.sh"),
        probe: include_str!("../../../images/classes/http/probe.sh"),
        service_image: false,
        env: &[("PORT", "80"), ("ROOT", "/srv/www"), ("INDEX", "x")],
    },
    Class {
        name: "dns",
        start: include_str!("../../../images/classes/dns/start.sh"),
        probe: include_str!("../../../images/classes/dns/probe.sh"),
        service_image: true,
        env: &[
            ("DOMAIN", "brood.internal"),
            ("UPSTREAM", ""),
            ("HOSTS", ""),
        ],
    },
    Class {
        name: "log",
        start: include_str!("../../../images/classes/log/start.sh"),
        probe: include_str!("../../../images/classes/log/probe.sh"),
        service_image: true,
        env: &[("PORT", "514"), ("FILE", "/var/log/remote.log")],
    },
];

fn wait_ready(d: &Daemon, pool: &str, n: u64) -> Result<Duration> {
    let t0 = Instant::now();
    while d.call("GET", &format!("/v1/pools/{pool}"), None)?["ready"].as_u64() < Some(n) {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("pool {pool} did not refill to {n}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed())
}

fn request(d: &Daemon, class: &str, pool: &str, name: &str) -> Result<(f64, Value)> {
    let t0 = Instant::now();
    let v = d.call(
        "POST",
        "/v1/services",
        Some(&json!({"class": class, "pool": pool, "name": name})),
    )?;
    let t = ms(t0.elapsed());
    if v["state"] != "ready" {
        bail!("{name}: {v}");
    }
    Ok((t, v))
}

fn exec(d: &Daemon, vm: &str, cmd: &str) -> Result<i64> {
    let r = d.call(
        "POST",
        &format!("/v1/partitions/{vm}/exec"),
        Some(&json!({"command": cmd})),
    )?;
    match r["exit_code"].as_i64() {
        Some(c) => Ok(c),
        None => bail!("exec in {vm} did not exit: {r}"),
    }
}

/// What one run of the pool benchmark measures.
pub struct PoolBench<'a> {
    /// Requests from the pool.
    pub runs: usize,
    /// Cold boots (and requests from a cold-refilled pool).
    pub cold_runs: usize,
    /// Paused generic VMs.
    pub generic_runs: usize,
    /// The broodd binary.
    pub broodd: &'a Path,
    /// The default image.
    pub image: &'a Path,
    /// The class requested: http, dns or log.
    pub class: &'a str,
    /// The service image (for dns and log).
    pub service_image: Option<&'a Path>,
}

/// Runs the pool benchmark.
pub fn pool(b: &PoolBench<'_>) -> Result<()> {
    let (runs, cold_runs, generic_runs) = (b.runs, b.cold_runs, b.generic_runs);
    let Some(class) = CLASSES.iter().find(|c| c.name == b.class) else {
        bail!("--class {}: want http, dns or log", b.class);
    };
    let d = Daemon::start(b.broodd, b.image)?;
    let (image, memory) = if class.service_image {
        let Some(dir) = b.service_image else {
            bail!(
                "class {} needs the service image: pass --service-image DIR (`brood image build --service`)",
                class.name
            );
        };
        std::fs::create_dir_all(d.data().join("images"))?;
        std::os::unix::fs::symlink(dir, d.data().join("images/service"))?;
        (Some("service"), 256)
    } else {
        (None, 128)
    };
    let class_name = class.name;
    let spec = |name: &str, min: u32, refill: &str| json!({"name": name, "min": min, "max": min + 2, "memory_mib": memory, "cpu_threshold_pct": 100, "refill": refill, "image": image});
    d.call("POST", "/v1/pools", Some(&spec("bench", 2, "clone")))?;
    wait_ready(&d, "bench", 2)?;
    let members = d.call("GET", "/v1/pools/bench", None)?;
    let pid = members["members"][0]["pid"].as_u64().unwrap_or(0);
    let pss = smaps_kib(pid, "Pss:") / 1024.0;

    // brood: requests from the pool, refilled (by clone) between them.
    let (mut wall, mut refill) = (Vec::new(), Vec::new());
    for i in 0..runs {
        wait_ready(&d, "bench", 2)?;
        let (t, _) = request(&d, class_name, "bench", &format!("b{i}"))?;
        wall.push(t);
        refill.push(ms(wait_ready(&d, "bench", 2)?));
        d.call("DELETE", &format!("/v1/services/b{i}"), None)?;
    }
    eprintln!("{runs} pool requests done");
    println!(
        "pool request to answering, {runs} requests: p50 {:.1} ms, p99 {:.1} ms; refill by clone p50 {:.0} ms; paused member PSS {pss:.1} MiB",
        median(wall.clone()),
        pct(&mut wall.clone(), 0.99),
        median(refill.clone())
    );
    d.call("DELETE", "/v1/pools/bench", None)?;

    // The same from a pool refilled by cold boots.
    d.call("POST", "/v1/pools", Some(&spec("coldfill", 1, "cold")))?;
    let (mut cold_wall, mut cold_refill) = (Vec::new(), Vec::new());
    wait_ready(&d, "coldfill", 1)?;
    for i in 0..cold_runs {
        wait_ready(&d, "coldfill", 1)?;
        let (t, _) = request(&d, class_name, "coldfill", &format!("f{i}"))?;
        cold_wall.push(t);
        cold_refill.push(ms(wait_ready(&d, "coldfill", 1)?));
        d.call("DELETE", &format!("/v1/services/f{i}"), None)?;
    }
    eprintln!("{cold_runs} requests from a cold-refilled pool done");
    d.call("DELETE", "/v1/pools/coldfill", None)?;

    // (a) cold boot: an empty pool falls back to booting a member.
    d.call("POST", "/v1/pools", Some(&spec("cold", 0, "cold")))?;
    let mut cold = Vec::new();
    for i in 0..cold_runs {
        let (t, v) = request(&d, class_name, "cold", &format!("c{i}"))?;
        if v["fallback"].is_null() {
            bail!("the empty pool did not fall back: {v}");
        }
        cold.push(t);
        d.call("DELETE", &format!("/v1/services/c{i}"), None)?;
    }
    eprintln!("{cold_runs} cold boots done");
    println!(
        "(a) cold boot, {cold_runs} runs: p50 {:.1} ms, p99 {:.1} ms",
        median(cold.clone()),
        pct(&mut cold.clone(), 0.99)
    );
    d.call("DELETE", "/v1/pools/cold", None)?;

    // (b) a booted, paused generic VM configured after resume.
    let mut generic = Vec::new();
    let env_file: String = class
        .env
        .iter()
        .map(|(k, v)| format!("BROOD_{k}='{v}'\n"))
        .collect();
    let setup = format!(
        "mkdir -p /run/g && cat > /run/g/start.sh <<'S'\n{}S\ncat > /run/g/probe.sh <<'P'\n{}P\ncat > /run/g/env <<'E'\n{env_file}E\n",
        class.start, class.probe
    );
    let env = "set -a; BROOD_SERVICE_DIR=/run/g; . /run/g/env; set +a";
    for i in 0..generic_runs {
        let vm = format!("g{i}");
        d.call(
            "POST",
            "/v1/partitions",
            Some(&json!({"name": vm, "configs": {"d": {"memory_mib": memory, "image": image}}, "start": true})),
        )?;
        exec(&d, &vm, &setup)?;
        d.call("POST", &format!("/v1/partitions/{vm}/pause"), None)?;
        let t0 = Instant::now();
        d.call("POST", &format!("/v1/partitions/{vm}/resume"), None)?;
        let code = exec(
            &d,
            &vm,
            &format!("{env}; sh /run/g/start.sh >/run/g/log 2>&1 </dev/null"),
        )?;
        if code != 0 {
            bail!("generic start failed: {code}");
        }
        while exec(&d, &vm, &format!("{env}; sh /run/g/probe.sh"))? != 0 {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("generic probe never answered");
            }
        }
        generic.push(ms(t0.elapsed()));
        d.call("DELETE", &format!("/v1/partitions/{vm}?force=true"), None)?;
    }
    eprintln!("{generic_runs} generic VMs done");

    let p50 = median(wall.clone());
    let cold50 = median(cold.clone());
    let gen50 = median(generic.clone());
    println!(
        "class {class_name}: pool request to answering, {runs} requests: p50 {p50:.1} ms, p99 {:.1} ms",
        pct(&mut wall, 0.99)
    );
    println!(
        "(a) cold boot to the same answer, {cold_runs} runs: p50 {cold50:.1} ms, p99 {:.1} ms; pool is {:.1}% below",
        pct(&mut cold, 0.99),
        100.0 * (1.0 - p50 / cold50)
    );
    println!(
        "(b) paused generic VM configured after resume, {generic_runs} runs: p50 {gen50:.1} ms, p99 {:.1} ms; ratio {:.2}",
        pct(&mut generic, 0.99),
        gen50 / p50
    );
    println!(
        "request from a pool refilled by cold boot, {cold_runs} requests: p50 {:.1} ms, p99 {:.1} ms",
        median(cold_wall.clone()),
        pct(&mut cold_wall, 0.99)
    );
    let (by_clone, by_boot) = (median(refill), median(cold_refill));
    println!(
        "refill of one member: by clone p50 {by_clone:.0} ms, by cold boot p50 {by_boot:.0} ms; clone is {:.1}% below",
        100.0 * (1.0 - by_clone / by_boot)
    );
    println!("paused member PSS: {pss:.1} MiB");
    Ok(())
}
