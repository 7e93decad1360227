//! The trigger point of a service-pool member (issue 10).
//!
//! A guest booted with `brood.trigger` on its kernel command line is a pool
//! member: once init's hardware discovery is done (modules loaded, `lo`
//! up) and the agent serves its port, a thread of the agent announces the
//! point [`TRIGGER_POINT`] on the agent's own point socket and blocks there.
//! No class service has started; every member of a pool is alike here, and
//! the host pauses it. When the host hands the member out it resumes it and
//! answers the point with a [`brood_proto::service::ServiceConfig`]; this
//! module then writes the configuration into [`SERVICE_DIR`] (`config`,
//! the key-values as `env`, and the class's files such as `start.sh`),
//! mixes the host's fresh entropy into the RNG, takes the service's
//! hostname, and runs `start.sh` (then `init.sh`, the operator's script,
//! if given) with the key-values in its environment as `BROOD_<KEY>`, then
//! the class's `probe.sh` until it passes (the service answers). The
//! outcome goes to `SERVICE_DIR/status` (`ok`, or `failed: ...`; `starting`
//! meanwhile) and is announced at once as the point [`READY_POINT`] or
//! [`FAILED_POINT`], which the host waits for instead of polling; the
//! start's and the probe's times go to `SERVICE_DIR/timing`.
//!
//! The configuration is hostile input like everything from the channel:
//! its size, keys and file names are checked by brood-proto before use.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brood_proto::service::{
    ConfigError, FAILED_POINT, PROBE_TIMEOUT_KEY, READY_POINT, ServiceConfig, TRIGGER_CMDLINE,
    TRIGGER_POINT, decode_config,
};

use crate::point::{PointError, announce};
use crate::system::{LinuxMachine, Machine};

/// Where a differentiated member keeps its configuration and class files.
pub const SERVICE_DIR: &str = "/run/brood/service";
/// Written once the trigger point was answered, so a respawned agent does
/// not go back to it.
const DONE_FILE: &str = "/run/brood/service/status";
/// How long to wait for the agent's point socket to appear.
const SOCKET_WAIT: Duration = Duration::from_secs(60);
/// Longest start or init script run, after which it is reported failed
/// (its daemons must go to the background).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the probe may take to pass when the host names no limit.
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest probe limit the host may ask for.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest single run of the probe (a hung probe is killed and run again).
const PROBE_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the ready (or failed) point waits for the host's answer.
const READY_ANSWER_WAIT: Duration = Duration::from_secs(120);
/// Longest wait between two polls of a running script: short, because
/// under TCG the class's start is a few milliseconds and this is on the
/// request's path.
const SCRIPT_POLL_MAX: Duration = Duration::from_millis(4);

/// Errors of differentiating at the trigger point.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The configuration was refused.
    #[error("refuse the service configuration")]
    Config(#[source] ConfigError),
    /// Writing a file failed.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the write reported.
        #[source]
        source: std::io::Error,
    },
    /// A script could not be run.
    #[error("run {path}")]
    Spawn {
        /// The script.
        path: PathBuf,
        /// What spawn reported.
        #[source]
        source: std::io::Error,
    },
    /// A script failed or ran too long.
    #[error("{script} {how}")]
    Script {
        /// The script's name.
        script: String,
        /// How it ended.
        how: String,
    },
}

/// Whether a kernel command line asks for the trigger point.
pub fn wanted(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .any(|w| w == TRIGGER_CMDLINE)
}

/// Starts the trigger thread when this guest is a pool member that has not
/// been differentiated yet.
pub fn spawn(socket: &Path) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !wanted(&cmdline) || Path::new(DONE_FILE).exists() {
        return;
    }
    let socket = socket.to_path_buf();
    let started = std::thread::Builder::new()
        .name("trigger".into())
        .spawn(move || run(&socket, Path::new(SERVICE_DIR)));
    if let Err(err) = started {
        log!("trigger: cannot start its thread: {err}");
    }
}

/// Run once before the trigger point: the shell and the tools every class
/// script uses, with no class service started. Under TCG a program's code
/// is translated the first time it runs in a QEMU process; doing that here,
/// at boot, takes it off the request's path (the same code pages run again
/// in `start.sh` and `probe.sh`).
const WARM_UP: &str = "ip link show lo >/dev/null 2>&1; mkdir -p /run/brood; \
    printf 'x\\n' | head -n 1 | grep -q x; cat /dev/null; sed -n 1p /dev/null; \
    nc -h >/dev/null 2>&1; [ -x /usr/bin/dig ] && dig -v >/dev/null 2>&1; true";

fn warm_up() {
    let ran = Command::new("/bin/sh")
        .args(["-c", WARM_UP])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(err) = ran {
        log!("trigger: warm-up: {err}");
    }
}

fn run(socket: &Path, dir: &Path) {
    warm_up();
    let deadline = Instant::now() + SOCKET_WAIT;
    let mut backoff = Duration::from_millis(2);
    let answer = loop {
        match announce(socket, TRIGGER_POINT, None) {
            Err(PointError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            other => break other,
        }
    };
    let bytes = match answer {
        Ok(bytes) => bytes,
        Err(err) => {
            log!("trigger: {}", crate::console::chain(&err));
            return;
        }
    };
    // From here on a respawned agent does not go back to the trigger point.
    let _ = std::fs::create_dir_all(dir);
    if let Err(err) = std::fs::write(dir.join("status"), "starting\n") {
        log!("trigger: write the status: {err}");
    }
    let outcome = differentiate(&bytes, dir, &LinuxMachine::new());
    let (status, point) = match &outcome {
        Ok(()) => ("ok\n".to_owned(), READY_POINT),
        Err(err) => (
            format!("failed: {}\n", crate::console::chain(err)),
            FAILED_POINT,
        ),
    };
    if let Err(err) = std::fs::write(dir.join("status"), status) {
        log!("trigger: write the status: {err}");
    }
    if let Err(err) = &outcome {
        log!("trigger: {}", crate::console::chain(err));
    }
    // Tells the host at once (it waits for this point rather than polling
    // the status); a host that is gone leaves the point unanswered.
    if let Err(err) = announce(socket, point, Some(READY_ANSWER_WAIT)) {
        log!("trigger: announce {point}: {}", crate::console::chain(&err));
    }
}

/// Quotes a value for a POSIX shell.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// The environment the class scripts get.
pub fn script_env(cfg: &ServiceConfig) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = cfg
        .values
        .iter()
        .map(|(k, v)| (format!("BROOD_{}", k.to_ascii_uppercase()), v.clone()))
        .collect();
    env.insert("BROOD_CLASS".into(), cfg.class.clone());
    env.insert("BROOD_SERVICE".into(), cfg.service.clone());
    env.insert("BROOD_NAME".into(), cfg.name.clone());
    env.insert("BROOD_SERVICE_DIR".into(), SERVICE_DIR.into());
    env
}

fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), TriggerError> {
    let err = |source| TriggerError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

/// Applies a configuration the host sent: files, entropy, hostname, scripts.
pub fn differentiate(bytes: &[u8], dir: &Path, machine: &dyn Machine) -> Result<(), TriggerError> {
    let answered = Instant::now();
    let cfg = decode_config(bytes).map_err(TriggerError::Config)?;
    std::fs::create_dir_all(dir).map_err(|source| TriggerError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let env = script_env(&cfg);
    let env_text: String = env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect();
    write_private(&dir.join("env"), env_text.as_bytes(), 0o600)?;
    write_private(&dir.join("config"), bytes, 0o600)?;
    for (name, text) in &cfg.files {
        write_private(&dir.join(name), text.as_bytes(), 0o700)?;
    }
    if !cfg.seed.is_empty()
        && let Err(err) = machine.reseed_rng(&cfg.seed)
    {
        log!("trigger: reseed the RNG: {}", crate::console::chain(&err));
    }
    if crate::system::validate_hostname(&cfg.name).is_ok()
        && let Err(err) = machine.set_hostname(&cfg.name)
    {
        log!("trigger: set the hostname: {}", crate::console::chain(&err));
    }
    let t0 = Instant::now();
    for script in ["start.sh", "init.sh"] {
        if cfg.files.contains_key(script) {
            run_script(dir, script, &env, SCRIPT_TIMEOUT)?;
        }
    }
    let started = t0.elapsed();
    let mut runs = 0;
    if let Some(path) = cfg.values.get(PROBE_HTTP_KEY) {
        let port = cfg
            .values
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(80);
        runs = probe_with(probe_timeout(&cfg), "the HTTP probe", || {
            http_ok(port, path)
        })?;
    } else if let Some(name) = cfg.values.get(crate::probe::PROBE_DNS_KEY) {
        let port = port_of(&cfg, 53);
        let mut id: u16 = 0x6272;
        runs = probe_with(probe_timeout(&cfg), "the DNS probe", || {
            id = id.wrapping_add(1);
            crate::probe::dns_ok(port, name, id).map_err(|how| TriggerError::Script {
                script: "the DNS probe".into(),
                how,
            })
        })?;
    } else if let Some(transports) = cfg.values.get(crate::probe::PROBE_SYSLOG_KEY) {
        let port = port_of(&cfg, 514);
        let file = PathBuf::from(
            cfg.values
                .get("file")
                .map_or("/var/log/remote.log", String::as_str),
        );
        let mut n = 0u32;
        runs = probe_with(probe_timeout(&cfg), "the syslog probe", || {
            n = n.wrapping_add(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let nonce = format!("{now}-{n}");
            crate::probe::syslog_ok(port, &file, transports, &nonce).map_err(|how| {
                TriggerError::Script {
                    script: "the syslog probe".into(),
                    how,
                }
            })
        })?;
    } else if cfg.files.contains_key("probe.sh") {
        runs = probe_with(probe_timeout(&cfg), "probe.sh", || {
            // Each run's output replaces the last one's.
            let _ = std::fs::remove_file(dir.join("probe.sh.log"));
            match run_script(dir, "probe.sh", &env, PROBE_RUN_TIMEOUT) {
                Ok(()) => Ok(Ok(())),
                Err(TriggerError::Script { how, .. }) => Ok(Err(how)),
                Err(err) => Err(err),
            }
        })?;
    }
    let timing = format!(
        "configure {} us\nstart {} us\nprobe {} us ({runs} runs)\n",
        t0.saturating_duration_since(answered).as_micros(),
        started.as_micros(),
        t0.elapsed().saturating_sub(started).as_micros()
    );
    let _ = std::fs::write(dir.join("timing"), timing);
    Ok(())
}

/// The class's `port` parameter, or `default`.
fn port_of(cfg: &ServiceConfig, default: u16) -> u16 {
    cfg.values
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(default)
}

/// The probe's limit the host sent, bounded.
fn probe_timeout(cfg: &ServiceConfig) -> Duration {
    cfg.values
        .get(PROBE_TIMEOUT_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_PROBE_TIMEOUT, Duration::from_millis)
        .min(MAX_PROBE_TIMEOUT)
}

/// Runs a probe until it passes (the service answers) or `timeout`
/// passes; returns how many runs it took. `once` is one attempt:
/// `Ok(Err(why))` did not pass yet, `Err` cannot be run at all. Running it
/// here, not from the host through the agent's exec, saves a round trip
/// and a shell per attempt.
fn probe_with(
    timeout: Duration,
    what: &str,
    mut once: impl FnMut() -> Result<Result<(), String>, TriggerError>,
) -> Result<u32, TriggerError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(1);
    let mut runs = 0u32;
    loop {
        runs = runs.saturating_add(1);
        let last = match once()? {
            Ok(()) => return Ok(runs),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(TriggerError::Script {
                script: what.into(),
                how: format!("did not pass within {timeout:?} ({runs} runs; last: {last})"),
            });
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// The class parameter that makes the agent probe over HTTP itself: the
/// path to GET on 127.0.0.1 at the `port` parameter, answered 200. A class
/// without it is probed by its `probe.sh`.
pub const PROBE_HTTP_KEY: &str = "probe_http";
/// Longest status line read from the service.
const MAX_STATUS_LINE: usize = 256;

/// One HTTP/1.0 GET of `path` on 127.0.0.1:`port`: passes on status 200.
/// The answer is read bounded: at most [`MAX_STATUS_LINE`] bytes.
fn http_ok(port: u16, path: &str) -> Result<Result<(), String>, TriggerError> {
    use std::io::Read;
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(TriggerError::Script {
            script: "the HTTP probe".into(),
            how: format!(
                "cannot GET {:?}: want an absolute path without spaces",
                crate::console::cut(path, 64)
            ),
        });
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let attempt = || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
        let mut buf = vec![0u8; MAX_STATUS_LINE];
        let mut len = 0;
        while len < buf.len() && !buf.get(..len).is_some_and(|b| b.contains(&b'\n')) {
            match s.read(buf.get_mut(len..).unwrap_or_default())? {
                0 => break,
                n => len += n,
            }
        }
        buf.truncate(len);
        Ok(buf)
    };
    Ok(match attempt() {
        Ok(head) => {
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or("");
            match line.split_ascii_whitespace().nth(1) {
                Some("200") if line.starts_with("HTTP/") => Ok(()),
                _ => Err(format!("answered {:?}", crate::console::cut(line, 80))),
            }
        }
        Err(err) => Err(err.to_string()),
    })
}

fn run_script(
    dir: &Path,
    script: &str,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), TriggerError> {
    let path = dir.join(script);
    let log_path = dir.join(format!("{script}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|source| TriggerError::Write {
            path: log_path.clone(),
            source,
        })?;
    let err_log = log.try_clone().map_err(|source| TriggerError::Write {
        path: log_path,
        source,
    })?;
    let mut child = Command::new("/bin/sh")
        .arg(&path)
        .current_dir(dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|source| TriggerError::Spawn {
            path: path.clone(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_micros(250);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(TriggerError::Script {
                    script: script.into(),
                    how: format!("failed ({status})"),
                });
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TriggerError::Script {
                    script: script.into(),
                    how: format!("ran over {timeout:?} and was killed"),
                });
            }
            Ok(None) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(SCRIPT_POLL_MAX);
            }
            Err(err) => {
                return Err(TriggerError::Script {
                    script: script.into(),
                    how: format!("could not be waited for: {err}"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_proto::service::encode_config;

    #[test]
    fn cmdline_word() {
        assert!(wanted("console=ttyS0 brood.trigger quiet"));
        assert!(!wanted("console=ttyS0 brood.triggered"));
        assert!(!wanted(""));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[derive(Debug, Default)]
    struct NoMachine;
    impl Machine for NoMachine {
        fn set_hostname(&self, _: &str) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn power_off(&self) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn set_mac(&self, _: &str, _: [u8; 6]) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn mac(&self, _: &str) -> Result<[u8; 6], crate::system::SystemError> {
            Ok([0; 6])
        }
        fn set_ipv4(
            &self,
            _: &str,
            _: &brood_proto::Ipv4Config,
        ) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn reseed_rng(&self, _: &[u8]) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn set_clock(&self, _: u64) -> Result<(), crate::system::SystemError> {
            Ok(())
        }
        fn hostname(&self) -> Result<String, crate::system::SystemError> {
            Ok(String::new())
        }
    }

    #[test]
    fn differentiates_and_runs_the_start_script() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServiceConfig {
            class: "http".into(),
            name: "web".into(),
            ..Default::default()
        };
        cfg.values.insert("port".into(), "8080".into());
        cfg.files.insert(
            "start.sh".into(),
            "echo \"$BROOD_CLASS:$BROOD_PORT\" > out\n".into(),
        );
        differentiate(&encode_config(&cfg).unwrap(), dir.path(), &NoMachine).unwrap();
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert_eq!(out, "http:8080\n");
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        assert!(env.contains("BROOD_PORT='8080'"), "{env}");

        cfg.files.insert("start.sh".into(), "exit 3\n".into());
        let err = differentiate(&encode_config(&cfg).unwrap(), dir.path(), &NoMachine);
        assert!(matches!(err, Err(TriggerError::Script { .. })), "{err:?}");
        assert!(matches!(
            differentiate(b"\xff\xff", dir.path(), &NoMachine),
            Err(TriggerError::Config(_))
        ));
    }

    fn serve_once(answer: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::Read;
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = c.read(&mut b);
            c.write_all(answer.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn the_http_probe_wants_a_200() {
        let port = serve_once("HTTP/1.0 200 OK\r\n\r\nhi");
        assert_eq!(http_ok(port, "/index.html").unwrap(), Ok(()));
        let port = serve_once("HTTP/1.0 404 Not Found\r\n\r\n");
        let why = http_ok(port, "/index.html").unwrap().unwrap_err();
        assert!(why.contains("404"), "{why}");
        // A line without an end, longer than the bound, is refused, not read on.
        let port = serve_once(Box::leak("x".repeat(10_000).into_boxed_str()));
        assert!(http_ok(port, "/").unwrap().is_err());
        assert!(http_ok(1, "no-slash").is_err());
    }

    #[test]
    fn the_probe_runs_until_it_passes_or_its_time_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServiceConfig {
            class: "http".into(),
            name: "web".into(),
            ..Default::default()
        };
        cfg.files.insert("start.sh".into(), ": > tries\n".into());
        // Passes on its third run.
        cfg.files.insert(
            "probe.sh".into(),
            "echo x >> tries; [ $(wc -l < tries) -ge 3 ]\n".into(),
        );
        differentiate(&encode_config(&cfg).unwrap(), dir.path(), &NoMachine).unwrap();
        let timing = std::fs::read_to_string(dir.path().join("timing")).unwrap();
        assert!(timing.contains("(3 runs)"), "{timing}");

        cfg.files.insert("probe.sh".into(), "exit 1\n".into());
        cfg.values.insert(PROBE_TIMEOUT_KEY.into(), "50".into());
        let err = differentiate(&encode_config(&cfg).unwrap(), dir.path(), &NoMachine);
        match err {
            Err(TriggerError::Script { script, how }) => {
                assert_eq!(script, "probe.sh");
                assert!(how.contains("did not pass within"), "{how}");
            }
            other => panic!("{other:?}"),
        }
    }
}
