//! `brood-bench api`: broodd's list and show latency with many defined
//! partitions under many concurrent clients, side by side with a bare HTTP
//! server (axum on a unix socket) that answers the same routes with the
//! same bytes, prepared in advance: the floor that transport and HTTP
//! parsing cost, so the ratio is what broodd itself adds.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::median;

/// Latencies of one load run, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(crate) list: Vec<f64>,
    pub(crate) show: Vec<f64>,
    pub(crate) seconds: f64,
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the API benchmark.
pub fn api(
    partitions: usize,
    clients: usize,
    seconds: f64,
    rounds: usize,
    broodd: &Path,
    image: &Path,
) -> Result<()> {
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", broodd.display()))?;
    let sock = data.path().join("broodd.sock");
    let result = (|| {
        wait_socket(&sock)?;
        let token = std::fs::read_to_string(data.path().join("token"))?
            .trim()
            .to_string();
        eprintln!("defining {partitions} partitions...");
        define_all(&sock, &token, partitions)?;
        let list_body = get(&sock, &token, "/v1/partitions?limit=100")?;
        let show_body = get(
            &sock,
            &token,
            &format!("/v1/partitions/{}", name(partitions / 2)),
        )?;
        let peer = Peer::start(list_body, show_body, token.clone())?;
        let (mut b, mut p) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            b.push(load(
                &sock,
                &token,
                clients,
                partitions,
                Duration::from_secs_f64(seconds),
            )?);
            p.push(load(
                &peer.sock,
                &token,
                clients,
                partitions,
                Duration::from_secs_f64(seconds),
            )?);
            eprintln!("round {} done", r + 1);
        }
        report(partitions, clients, &mut b, &mut p);
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

fn report(partitions: usize, clients: usize, b: &mut [Load], p: &mut [Load]) {
    println!(
        "API benchmark: {partitions} defined partitions, {clients} concurrent clients, keep-alive"
    );
    println!(
        "{:<30} {:>10} {:>10} {:>8}",
        "median over rounds", "broodd", "bare HTTP", "ratio"
    );
    type Stat = fn(&mut Load) -> f64;
    let stats: [(&str, Stat); 5] = [
        ("list p50 (ms)", |l| pct(&mut l.list, 0.50) / 1000.0),
        ("list p99 (ms)", |l| pct(&mut l.list, 0.99) / 1000.0),
        ("show p50 (ms)", |l| pct(&mut l.show, 0.50) / 1000.0),
        ("show p99 (ms)", |l| pct(&mut l.show, 0.99) / 1000.0),
        ("requests per second", |l| {
            (l.list.len() + l.show.len()) as f64 / l.seconds
        }),
    ];
    for (label, f) in stats {
        let x = median(b.iter_mut().map(f).collect());
        let y = median(p.iter_mut().map(f).collect());
        println!("{label:<30} {x:>10.2} {y:>10.2} {:>8.2}", x / y);
    }
}

pub(crate) fn name(i: usize) -> String {
    format!("p{i:05}")
}

pub(crate) fn wait_socket(sock: &Path) -> Result<()> {
    let t0 = Instant::now();
    while UnixStream::connect(sock).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("broodd did not come up on {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn define_all(sock: &Path, token: &str, n: usize) -> Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let next = next.clone();
                s.spawn(move || -> Result<()> {
                    let mut c = Conn::open(sock)?;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let body = format!(
                            r#"{{"name":"{}","configs":{{"default":{{"memory_mib":256}}}}}}"#,
                            name(i)
                        );
                        let (status, text) =
                            c.request("POST", "/v1/partitions", token, Some(&body))?;
                        if status != 201 {
                            bail!("define {}: {status} {text}", name(i));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("define worker panicked"))??;
        }
        Ok(())
    })
}

pub(crate) fn get(sock: &Path, token: &str, path: &str) -> Result<Vec<u8>> {
    let (status, body) = Conn::open(sock)?.request("GET", path, token, None)?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(body.into_bytes())
}

/// A keep-alive HTTP/1.1 connection over a unix socket.
pub(crate) struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    pub(crate) fn open(sock: &Path) -> Result<Self> {
        let s = UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
        Ok(Self {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let body = body.unwrap_or("");
        write!(
            self.w,
            "{method} {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().context("bad content-length")?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if chunked {
            // An exec answers chunked: read every chunk up to the empty one.
            let mut buf = Vec::new();
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).context("bad chunk size")?;
                let mut chunk = vec![0u8; n + 2];
                self.r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                buf.extend_from_slice(&chunk);
            }
            return Ok((status, String::from_utf8_lossy(&buf).into_owned()));
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// `clients` threads, each on its own connection with `token`, list and
/// show random partitions for `dur`.
pub(crate) fn load(
    sock: &Path,
    token: &str,
    clients: usize,
    partitions: usize,
    dur: Duration,
) -> Result<Load> {
    load_with(sock, clients, dur, |_| (token, None), partitions)
}

/// The load loop itself: client `c` uses the token and the partition
/// picker `who(c)` gives; `Some((stride, offset))` keeps it to the
/// partitions `i * stride + offset`, `None` lets it read any of them.
pub(crate) fn load_with<'a>(
    sock: &Path,
    clients: usize,
    dur: Duration,
    who: impl Fn(usize) -> (&'a str, Option<(usize, usize)>) + Sync,
    partitions: usize,
) -> Result<Load> {
    let t0 = Instant::now();
    let who = &who;
    let per: Vec<Result<Load>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || -> Result<Load> {
                    let mut conn = Conn::open(sock)?;
                    let (token, only) = who(c);
                    let mut l = Load::default();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ c as u64;
                    while t0.elapsed() < dur {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let r = usize::try_from(x).unwrap_or(0);
                        let i = match only {
                            Some((stride, offset)) => {
                                (r % (partitions / stride).max(1)) * stride + offset
                            }
                            None => r % partitions,
                        };
                        let list = x & 1 == 0;
                        let path = if list {
                            format!("/v1/partitions?limit=100&after={}", name(i))
                        } else {
                            format!("/v1/partitions/{}", name(i))
                        };
                        let t = Instant::now();
                        let (status, _) = conn.request("GET", &path, token, None)?;
                        let us = t.elapsed().as_secs_f64() * 1e6;
                        if status != 200 {
                            bail!("GET {path}: {status}");
                        }
                        if list {
                            l.list.push(us)
                        } else {
                            l.show.push(us)
                        }
                    }
                    Ok(l)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))
            })
            .collect()
    });
    let mut all = Load {
        seconds: t0.elapsed().as_secs_f64(),
        ..Load::default()
    };
    for l in per {
        let l = l?;
        all.list.extend(l.list);
        all.show.extend(l.show);
    }
    Ok(all)
}

/// The peer: answers the same routes with prepared bytes.
pub(crate) struct Peer {
    pub(crate) sock: PathBuf,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Peer {
    pub(crate) fn start(list: Vec<u8>, show: Vec<u8>, token: String) -> Result<Self> {
        use axum::http::{HeaderMap, StatusCode, header};
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("peer.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let listener = rt.block_on(async { tokio::net::UnixListener::bind(&sock) })?;
        let (list, show) = (Arc::new(list), Arc::new(show));
        let auth = Arc::new(format!("Bearer {token}"));
        let check = move |h: &HeaderMap| {
            h.get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == auth.as_bytes())
        };
        let check2 = check.clone();
        let app = axum::Router::new()
            .route(
                "/v1/partitions",
                axum::routing::get(move |h: HeaderMap| {
                    let body = list.clone();
                    let ok = check(&h);
                    async move {
                        if !ok {
                            return (StatusCode::UNAUTHORIZED, Vec::new());
                        }
                        (StatusCode::OK, body.to_vec())
                    }
                }),
            )
            .route(
                "/v1/partitions/{name}",
                axum::routing::get(move |h: HeaderMap| {
                    let body = show.clone();
                    let ok = check2(&h);
                    async move {
                        if !ok {
                            return (StatusCode::UNAUTHORIZED, Vec::new());
                        }
                        (StatusCode::OK, body.to_vec())
                    }
                }),
            );
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            sock,
            _dir: dir,
            _rt: rt,
        })
    }
}
