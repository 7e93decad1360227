//! `brood-bench api --units N`: the cost of authorization. broodd with
//! `units` business units and `partitions` partitions spread over them,
//! loaded by `clients` clients of mixed roles (administrator, auditor,
//! unit administrator, unit user, each unit role reading its own unit),
//! side by side in the same run with the single bootstrap token and with
//! the bare HTTP server of `api`; then creates per second inside a unit's
//! allocation (reserved from the unit's holding) against the
//! administrator's (from `available`), and the creates beyond the
//! allocation, which must all be refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::api::{Conn, Load, Peer, get, load, name, pct, wait_socket};

/// The size of the run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Partitions, spread over the units.
    pub partitions: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Business units.
    pub units: usize,
    /// Seconds per load run.
    pub seconds: f64,
    /// Rounds; medians are printed.
    pub rounds: usize,
}

/// Creates of each kind in the quota run.
const CREATES: usize = 100;
/// Creates beyond the allocation, all to be refused.
const BEYOND: usize = 20;

fn call(
    c: &mut Conn,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<serde_json::Value> {
    let (s, text) = c.request(method, path, token, Some(body))?;
    if !(200..300).contains(&s) {
        bail!("{method} {path}: {s} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

/// Makes the units, their users and tokens: per unit (unit-admin, unit-user).
fn setup(
    sock: &Path,
    admin: &str,
    units: usize,
    per_unit: usize,
) -> Result<(Vec<[String; 2]>, String)> {
    let mut c = Conn::open(sock)?;
    let mut tokens = Vec::new();
    for u in 0..units {
        call(
            &mut c,
            "POST",
            "/v1/units",
            admin,
            &format!(r#"{{"name":"u{u}","contact":"bench"}}"#),
        )?;
        // Unit 0 also gets exactly CREATES GiB of disk for the quota run.
        let disk = if u == 0 { CREATES } else { 0 };
        let r = call(
            &mut c,
            "POST",
            &format!("/v1/units/u{u}/requests"),
            admin,
            &format!(
                r#"{{"memory_mib":{},"vcpus":0,"disk_gib":{disk},"nics":0}}"#,
                per_unit * 384
            ),
        )?;
        let id = r["id"].as_u64().context("a request id")?;
        call(
            &mut c,
            "POST",
            &format!("/v1/requests/{id}/approve"),
            admin,
            "{}",
        )?;
        let mut pair = [String::new(), String::new()];
        for (k, role) in ["unit-admin", "unit-user"].into_iter().enumerate() {
            let user = format!("{role}-{u}");
            call(
                &mut c,
                "POST",
                "/v1/users",
                admin,
                &format!(r#"{{"name":"{user}","role":"{role}","unit":"u{u}"}}"#),
            )?;
            let t = call(
                &mut c,
                "POST",
                "/v1/tokens",
                admin,
                &format!(r#"{{"user":"{user}"}}"#),
            )?;
            pair[k] = t["token"].as_str().context("a token")?.to_owned();
        }
        tokens.push(pair);
    }
    call(
        &mut c,
        "POST",
        "/v1/users",
        admin,
        r#"{"name":"aud","role":"auditor"}"#,
    )?;
    let t = call(&mut c, "POST", "/v1/tokens", admin, r#"{"user":"aud"}"#)?;
    Ok((tokens, t["token"].as_str().context("a token")?.to_owned()))
}

/// Defines partition `i` in unit `i % units` with that unit's user token.
fn define_in_units(sock: &Path, tokens: &[[String; 2]], n: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| -> Result<()> {
        let ws: Vec<_> = (0..8)
            .map(|_| {
                let next = next.clone();
                s.spawn(move || -> Result<()> {
                    let mut c = Conn::open(sock)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let body = format!(
                            r#"{{"name":"{}","configs":{{"default":{{"memory_mib":256}}}}}}"#,
                            name(i)
                        );
                        call(
                            &mut c,
                            "POST",
                            "/v1/partitions",
                            &tokens[i % tokens.len()][1],
                            &body,
                        )?;
                    }
                })
            })
            .collect();
        for w in ws {
            w.join()
                .map_err(|_| anyhow::anyhow!("define worker panicked"))??;
        }
        Ok(())
    })
}

/// The mixed-roles load: client `c` takes role `c % 4`; unit roles list
/// and show partitions of their own unit.
fn load_mixed(
    sock: &Path,
    admin: &str,
    auditor: &str,
    tokens: &[[String; 2]],
    shape: &Shape,
) -> Result<Load> {
    let units = tokens.len();
    let dur = Duration::from_secs_f64(shape.seconds);
    super::api::load_with(
        sock,
        shape.clients,
        dur,
        |c| {
            let unit = c / 4 % units;
            match c % 4 {
                0 => (admin, None),
                1 => (auditor, None),
                k => (tokens[unit][k - 2].as_str(), Some((units, unit))),
            }
        },
        shape.partitions,
    )
}

/// `count` defines with a 1 GiB disk by `token` over 8 connections: the
/// creates per second and how many were refused for capacity.
fn creates(sock: &Path, token: &str, prefix: &str, count: usize) -> Result<(f64, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let ws: Vec<_> = (0..8)
            .map(|_| {
                let (next, refused) = (next.clone(), refused.clone());
                s.spawn(move || -> Result<()> {
                    let mut c = Conn::open(sock)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let body = format!(
                            r#"{{"name":"{prefix}{i}","configs":{{"default":{{"memory_mib":256,"disks":[{{"name":"data","size_gib":1}}]}}}}}}"#
                        );
                        let (s, text) = c.request("POST", "/v1/partitions", token, Some(&body))?;
                        match s {
                            201 => {}
                            409 if text.contains("capacity_exceeded") => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => bail!("create {prefix}{i}: {s} {text}"),
                        }
                    }
                })
            })
            .collect();
        for w in ws {
            w.join()
                .map_err(|_| anyhow::anyhow!("create worker panicked"))??;
        }
        Ok(())
    })?;
    let made = count - refused.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let rate = made as f64 / t0.elapsed().as_secs_f64();
    Ok((rate, refused.load(Ordering::Relaxed)))
}

/// Runs the mixed-roles benchmark.
pub fn api_mixed(shape: &Shape, broodd: &Path, image: &Path) -> Result<()> {
    let data = tempfile::Builder::new()
        .prefix("brood-bench-api-")
        .tempdir()?;
    let run = tempfile::Builder::new()
        .prefix("brood-bench-api-")
        .tempdir_in("/dev/shm")?;
    let mut daemon = Command::new(broodd)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--run-dir")
        .arg(run.path())
        .arg("--image")
        .arg(image)
        .args(["--memory-mib", "1048576", "--disk-gib", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", broodd.display()))?;
    let sock = data.path().join("broodd.sock");
    let result = (|| {
        wait_socket(&sock)?;
        let admin = std::fs::read_to_string(data.path().join("token"))?
            .trim()
            .to_string();
        let per_unit = shape.partitions.div_ceil(shape.units);
        let (tokens, auditor) = setup(&sock, &admin, shape.units, per_unit)?;
        eprintln!(
            "defining {} partitions in {} units...",
            shape.partitions, shape.units
        );
        define_in_units(&sock, &tokens, shape.partitions)?;
        let list_body = get(&sock, &admin, "/v1/partitions?limit=100")?;
        let show_body = get(
            &sock,
            &admin,
            &format!("/v1/partitions/{}", name(shape.partitions / 2)),
        )?;
        let peer = Peer::start(list_body, show_body, admin.clone())?;
        let dur = Duration::from_secs_f64(shape.seconds);
        let (mut single, mut mixed, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..shape.rounds {
            single.push(load(&sock, &admin, shape.clients, shape.partitions, dur)?);
            mixed.push(load_mixed(&sock, &admin, &auditor, &tokens, shape)?);
            bare.push(load(
                &peer.sock,
                &admin,
                shape.clients,
                shape.partitions,
                dur,
            )?);
            eprintln!("round {} done", r + 1);
        }
        let (unit_rate, unit_refused) = creates(&sock, &tokens[0][1], "q", CREATES + BEYOND)?;
        let (admin_rate, admin_refused) = creates(&sock, &admin, "a", CREATES)?;
        report(shape, [&mut single, &mut mixed, &mut bare]);
        println!(
            "creates with a 1 GiB disk, 8 connections: inside unit u0 ({CREATES} GiB allocated) \
             {unit_rate:.0}/s, {unit_refused} of {BEYOND} beyond it refused; administrator \
             (from available) {admin_rate:.0}/s, {admin_refused} refused; ratio {:.2}",
            unit_rate / admin_rate
        );
        if unit_refused != BEYOND {
            bail!("{unit_refused} creates refused, {BEYOND} expected: the allocation overshot");
        }
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

fn report(shape: &Shape, runs: [&mut Vec<Load>; 3]) {
    println!(
        "API benchmark: {} partitions in {} units, {} concurrent clients, keep-alive",
        shape.partitions, shape.units, shape.clients
    );
    println!(
        "{:<24} {:>12} {:>12} {:>10} {:>14}",
        "median over rounds", "one token", "mixed roles", "bare HTTP", "mixed/one"
    );
    type Stat = fn(&mut Load) -> f64;
    let stats: [(&str, Stat); 5] = [
        ("list p50 (ms)", |l| pct(&mut l.list, 0.50) / 1000.0),
        ("list p99 (ms)", |l| pct(&mut l.list, 0.99) / 1000.0),
        ("show p50 (ms)", |l| pct(&mut l.show, 0.50) / 1000.0),
        ("show p99 (ms)", |l| pct(&mut l.show, 0.99) / 1000.0),
        #[allow(clippy::cast_precision_loss)]
        ("requests per second", |l| {
            (l.list.len() + l.show.len()) as f64 / l.seconds
        }),
    ];
    let [a, b, c] = runs;
    for (label, f) in stats {
        let m = |v: &mut Vec<Load>| crate::median(v.iter_mut().map(f).collect::<Vec<_>>());
        let (x, y, z) = (m(a), m(b), m(c));
        println!("{label:<24} {x:>12.3} {y:>12.3} {z:>10.3} {:>14.2}", y / x);
    }
}
