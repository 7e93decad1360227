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
//! if given) with the key-values in its environment as `BROOD_<KEY>`. The
//! outcome goes to `SERVICE_DIR/status` (`ok`, or `failed: ...`), which
//! the host's readiness probe reads first.
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
    ConfigError, ServiceConfig, TRIGGER_CMDLINE, TRIGGER_POINT, decode_config,
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

fn run(socket: &Path, dir: &Path) {
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
    let outcome = differentiate(&bytes, dir, &LinuxMachine::new());
    let status = match &outcome {
        Ok(()) => "ok\n".to_owned(),
        Err(err) => format!("failed: {}\n", crate::console::chain(err)),
    };
    if let Err(err) = std::fs::write(dir.join("status"), status) {
        log!("trigger: write the status: {err}");
    }
    if let Err(err) = outcome {
        log!("trigger: {}", crate::console::chain(&err));
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
    for script in ["start.sh", "init.sh"] {
        if cfg.files.contains_key(script) {
            run_script(dir, script, &env)?;
        }
    }
    Ok(())
}

fn run_script(
    dir: &Path,
    script: &str,
    env: &BTreeMap<String, String>,
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
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut backoff = Duration::from_millis(1);
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
                    how: format!("ran over {SCRIPT_TIMEOUT:?} and was killed"),
                });
            }
            Ok(None) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(20));
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
}
