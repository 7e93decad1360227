//! Fork, the guest side (US 9,477,507; DESIGN.md "Fork"): before the fork
//! the identity-independent services run and the guest waits at a fork
//! point; after it, each child applies its own identity without a reboot
//! and runs the identity-dependent services.
//!
//! `PrepareFork` (or `brood-agent fork-point`) runs the independent
//! services once per agent lifetime, syncs the disks and registers a fork
//! waiter in the [`Points`] table. The host then stops the VM and saves it
//! as a template; every child resumes with that waiter in place and gets its
//! own `CompleteFork`. [`Fork::complete`] applies the identity in a fixed
//! order (hostname, MACs, IPv4, RNG reseed, machine-id, child files), stops
//! at the first failing step, runs the dependent services, and reports.
//! Everything that changes the machine goes through [`Machine`]; the files
//! and service directories come from [`ForkSettings`], so tests point them
//! at temporary directories.
//!
//! The identity path spawns no process (busybox start-up alone costs tens of
//! milliseconds under TCG); only the service scripts do.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use brood_proto::{AgentError, ChildConfig, ErrorKind, ForkReport, ServiceResult};

use crate::child::{ChildError, service_env, to_json};
use crate::point::{PointError, Points, release_fork};
use crate::service::{self, ServiceError};
use crate::system::{self, Machine};

/// How long one service script may run.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the fork steps read and write, and how long services may run.
#[derive(Debug, Clone)]
pub struct ForkSettings {
    /// Identity-independent services, run before the fork.
    pub independent_dir: PathBuf,
    /// Identity-dependent services, run in each child.
    pub dependent_dir: PathBuf,
    /// The machine id file.
    pub machine_id_file: PathBuf,
    /// The child's configuration as JSON.
    pub child_file: PathBuf,
    /// The child's domain identity.
    pub identity_file: PathBuf,
    /// Timeout of each service script.
    pub service_timeout: Duration,
}

impl Default for ForkSettings {
    /// The image's layout (brood-image `layout.rs`).
    fn default() -> Self {
        Self {
            independent_dir: PathBuf::from("/etc/brood/services/independent"),
            dependent_dir: PathBuf::from("/etc/brood/services/dependent"),
            machine_id_file: PathBuf::from("/etc/machine-id"),
            child_file: PathBuf::from("/etc/brood/child.json"),
            identity_file: PathBuf::from("/etc/brood/identity"),
            service_timeout: SERVICE_TIMEOUT,
        }
    }
}

/// Errors of `PrepareFork`, `fork-point` and `CompleteFork` that leave no
/// child report (a child that applied its identity in part reports in
/// [`ForkReport::failed`] instead).
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// An independent service failed; the guest is not at a fork point.
    #[error("independent service {name} {outcome}: {output}")]
    Independent {
        /// The script's name.
        name: String,
        /// How it ended.
        outcome: String,
        /// The tail of its output.
        output: String,
    },
    /// The independent services directory could not be read.
    #[error("run the independent services")]
    Services(#[source] ServiceError),
    /// The child configuration was refused; the waiter stays.
    #[error("refuse the child configuration")]
    Invalid(#[source] ChildError),
    /// No fork waiter at the sequence number, or it could not be registered.
    #[error(transparent)]
    Point(#[from] PointError),
    /// A step of the rehearsal failed (the guest is unchanged).
    #[error("rehearse the identity: {0}")]
    Warm(String),
}

impl ForkError {
    /// The error as the host sees it.
    pub fn agent_error(&self) -> AgentError {
        match self {
            ForkError::Point(err) => err.agent_error(),
            ForkError::Invalid(_) => AgentError::new(ErrorKind::BadRequest, self.chain()),
            ForkError::Independent { .. } | ForkError::Services(_) | ForkError::Warm(_) => {
                AgentError::new(ErrorKind::Io, self.chain())
            }
        }
    }

    fn chain(&self) -> String {
        crate::console::chain(self)
    }
}

/// The fork machinery of one agent.
#[derive(Debug)]
pub struct Fork {
    points: Arc<Points>,
    machine: Arc<dyn Machine>,
    settings: ForkSettings,
    /// Whether the independent services ran to success; held while they run
    /// so two requests never run them twice.
    independent_done: Mutex<bool>,
}

/// A finished `CompleteFork` whose caller (a `fork-point` process) has not
/// been told yet: the host gets the report first.
#[derive(Debug)]
pub struct Release {
    caller: Option<UnixStream>,
    json: String,
    failed: Option<String>,
    index: u32,
    took: Duration,
}

impl Release {
    /// Hands the child's JSON (or why it is not ready) to the `fork-point`
    /// caller, if there is one, and logs the fork's one console line.
    pub fn release(self) {
        let outcome = match &self.failed {
            None => Ok(self.json.as_bytes()),
            Some(reason) => Err(reason.as_str()),
        };
        let told = self.caller.map(|caller| release_fork(caller, outcome));
        let ms = self.took.as_millis();
        match (&self.failed, told) {
            (None, None | Some(Ok(()))) => log!("child {} ready in {ms} ms", self.index),
            (None, Some(Err(err))) => log!(
                "child {} ready in {ms} ms; its fork-point caller went away: {err}",
                self.index
            ),
            (Some(reason), _) => log!(
                "child {} not ready after {ms} ms: {}",
                self.index,
                crate::console::cut(reason, 512)
            ),
        }
    }
}

impl Fork {
    /// Fork support on top of the `points` table.
    pub fn new(points: Arc<Points>, machine: Arc<dyn Machine>, settings: ForkSettings) -> Self {
        Self {
            points,
            machine,
            settings,
            independent_done: Mutex::new(false),
        }
    }

    /// The points table the fork waiters live in.
    pub fn points(&self) -> &Arc<Points> {
        &self.points
    }

    /// `PrepareFork`: runs the independent services (once), syncs and
    /// registers a fork waiter. Returns its sequence number and the
    /// services that ran this time.
    pub fn prepare(&self) -> Result<(u32, Vec<ServiceResult>), ForkError> {
        let services = self.run_independent()?;
        nix::unistd::sync();
        let seq = self.points.register_fork(None)?;
        Ok((seq, services))
    }

    /// `brood-agent fork-point`: as [`Fork::prepare`], with `caller` waiting
    /// at the point and the host told by a `Point` named `fork`.
    pub fn prepare_local(&self, caller: UnixStream) -> Result<(), ForkError> {
        self.run_independent()?;
        nix::unistd::sync();
        self.points.register_fork(Some(caller))?;
        Ok(())
    }

    fn run_independent(&self) -> Result<Vec<ServiceResult>, ForkError> {
        let mut done = self
            .independent_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *done {
            return Ok(Vec::new());
        }
        let run = service::run_dir(
            &self.settings.independent_dir,
            &[],
            self.settings.service_timeout,
        )
        .map_err(ForkError::Services)?;
        if let Some(failure) = run.failure {
            return Err(ForkError::Independent {
                name: failure.name,
                outcome: failure.outcome.to_string(),
                output: failure.output,
            });
        }
        *done = true;
        Ok(run.results)
    }

    /// `CompleteFork`: consumes the fork waiter at `seq`, applies `config`
    /// and runs the dependent services. The report goes to the host first,
    /// then [`Release::release`] tells the local caller.
    pub fn complete(
        &self,
        seq: u32,
        config: &ChildConfig,
    ) -> Result<(ForkReport, Release), ForkError> {
        self.points.check_fork(seq)?;
        crate::child::validate(config).map_err(ForkError::Invalid)?;
        let caller = self.points.take_fork(seq)?;
        let started = Instant::now();
        let json = to_json(config);
        let files = Files {
            machine_id: self.settings.machine_id_file.clone(),
            child: self.settings.child_file.clone(),
            identity: self.settings.identity_file.clone(),
        };
        let (services, failed) = match self.apply(config, &json, &files) {
            Err(step) => (Vec::new(), Some(step)),
            Ok(env) => self.run_dependent(&env),
        };
        let report = ForkReport {
            services,
            failed: failed.clone(),
            uptime_ms: system::uptime_ms(),
        };
        let release = Release {
            caller,
            json,
            failed,
            index: config.index,
            took: started.elapsed(),
        };
        Ok((report, release))
    }

    /// `WarmFork`: rehearses [`Fork::complete`] at fork point `seq` without
    /// consuming it. The guest's current identity is applied again (same
    /// hostname and MACs, the current time, fresh entropy from the kernel)
    /// and the child files go to scratch paths that are removed after, so
    /// the guest is unchanged, but under TCG every instruction of the path
    /// has been translated once and the real `CompleteFork` runs warm.
    pub fn warm(&self, seq: u32) -> Result<(), ForkError> {
        self.points.check_fork(seq)?;
        let hostname = self
            .machine
            .hostname()
            .map_err(|e| ForkError::Warm(crate::console::chain(&e)))?;
        let macs = (0..8)
            .map_while(|i| self.machine.mac(&format!("eth{i}")).ok())
            .collect();
        let mut entropy = vec![0u8; 32];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut entropy));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let machine_id = std::fs::read_to_string(&self.settings.machine_id_file)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() == 32)
            .unwrap_or_else(|| "0".repeat(32));
        let config = ChildConfig {
            index: 0,
            hostname,
            macs,
            ipv4: None,
            identity: Some(String::new()),
            entropy,
            machine_id,
            values: Vec::new(),
            time_unix_ns: now,
        };
        let json = to_json(&config);
        let scratch = |p: &Path| p.with_extension("warm");
        let files = Files {
            machine_id: scratch(&self.settings.machine_id_file),
            child: scratch(&self.settings.child_file),
            identity: scratch(&self.settings.identity_file),
        };
        let result = self.apply(&config, &json, &files);
        // The real step may remove the identity file instead of writing it,
        // and then looks for dependent services: rehearse both.
        let _ = remove_file(&files.identity);
        let _ = service::list(&self.settings.dependent_dir);
        for f in [&files.machine_id, &files.child, &files.identity] {
            let _ = std::fs::remove_file(f);
        }
        result.map(|_| ()).map_err(ForkError::Warm)
    }

    /// Applies the identity, stopping at the first failing step; returns the
    /// dependent services' environment, or what failed.
    fn apply(
        &self,
        config: &ChildConfig,
        json: &str,
        files: &Files,
    ) -> Result<Vec<(String, String)>, String> {
        if config.time_unix_ns != 0 {
            self.machine
                .set_clock(config.time_unix_ns)
                .map_err(failed("set the wall clock"))?;
        }
        self.machine
            .set_hostname(&config.hostname)
            .map_err(failed("set the hostname"))?;
        for (i, mac) in config.macs.iter().enumerate() {
            let iface = format!("eth{i}");
            self.machine
                .set_mac(&iface, *mac)
                .map_err(failed(format_args!("set the MAC address of {iface}")))?;
        }
        if let Some(ipv4) = &config.ipv4 {
            self.machine
                .set_ipv4("eth0", ipv4)
                .map_err(failed("configure IPv4 on eth0"))?;
        }
        self.machine
            .reseed_rng(&config.entropy)
            .map_err(failed("reseed the kernel RNG"))?;
        let machine_id = format!("{}\n", config.machine_id);
        write_file(&files.machine_id, machine_id.as_bytes(), 0o444)
            .map_err(failed(format_args!("write {}", files.machine_id.display())))?;
        write_file(&files.child, json.as_bytes(), 0o600)
            .map_err(failed(format_args!("write {}", files.child.display())))?;
        match &config.identity {
            Some(identity) => write_file(&files.identity, identity.as_bytes(), 0o600),
            None => remove_file(&files.identity),
        }
        .map_err(failed(format_args!("write {}", files.identity.display())))?;
        let mac = match config.macs.first() {
            Some(mac) => Some(*mac),
            None => self.machine.mac("eth0").ok(),
        };
        Ok(service_env(config, mac))
    }

    fn run_dependent(&self, env: &[(String, String)]) -> (Vec<ServiceResult>, Option<String>) {
        match service::run_dir(
            &self.settings.dependent_dir,
            env,
            self.settings.service_timeout,
        ) {
            Ok(run) => {
                let failed = run
                    .failure
                    .map(|f| format!("dependent service {} {}", f.name, f.outcome));
                (run.results, failed)
            }
            Err(err) => (
                Vec::new(),
                Some(format!(
                    "run the dependent services: {}",
                    crate::console::chain(&err)
                )),
            ),
        }
    }
}

/// Where the identity step writes the child files.
#[derive(Debug)]
struct Files {
    machine_id: PathBuf,
    child: PathBuf,
    identity: PathBuf,
}

/// Formats a failed step for [`ForkReport::failed`]: `what: error: cause`.
fn failed<E: std::error::Error + 'static>(
    what: impl std::fmt::Display,
) -> impl FnOnce(E) -> String {
    let what = what.to_string();
    move |err| format!("{what}: {}", crate::console::chain(&err))
}

/// Replaces `path` with `data` (mode `mode`) through a rename, so a reader
/// never sees half a file.
fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".brood-new");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // The mode given to open(2) is filtered by the umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(data)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/brood/identity");
        write_file(&path, b"first", 0o600).unwrap();
        write_file(&path, b"second", 0o444).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
        assert!(!path.exists());
    }
}
