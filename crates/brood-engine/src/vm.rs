//! `Vm`: the handle on one running VM. It owns the QEMU process group (via
//! `VmResources`), the QMP client, the console and the agent client, and
//! offers the operations callers use on a live VM: pause, resume, save,
//! shutdown, kill, wait for the agent, wait for the exit. Dropping it kills
//! QEMU and removes everything the VM created.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brood_proto::Ready;
use brood_qmp::{QmpClient, QmpEvent, RunState};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info};

use crate::EngineError;
use crate::agent::AgentClient;
use crate::console::Console;
use crate::host::Accel;
use crate::qemu::process::VmResources;
use crate::spec::VmSpec;

/// How long `kill` waits for the process to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a saved state file may take to write.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a failed operation waits for QEMU to exit before it explains
/// the failure without QEMU's exit (`Vm::explain`).
const EXPLAIN_GRACE: Duration = Duration::from_secs(2);

/// Why a VM's QEMU ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// The guest powered itself off.
    Poweroff,
    /// The guest rebooted or its kernel panicked (`panic=-1` reboots at
    /// once, and brood runs QEMU with `-no-reboot`, so either ends the VM).
    Reset,
    /// brood asked QEMU to quit.
    Quit,
    /// brood killed it.
    Killed,
    /// It died on its own: a signal from elsewhere, or an error exit.
    Crashed,
}

/// How a VM's QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// The class of exit.
    pub kind: ExitKind,
    /// QEMU's exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The `reason` of QEMU's last SHUTDOWN event, if any.
    pub shutdown_reason: Option<String>,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ExitKind::Poweroff => "guest powered off",
            ExitKind::Reset => "guest rebooted or its kernel panicked",
            ExitKind::Quit => "quit",
            ExitKind::Killed => "killed by brood",
            ExitKind::Crashed => "crashed",
        };
        f.write_str(kind)?;
        match (self.code, self.signal) {
            (_, Some(s)) => write!(f, ", signal {s}"),
            (Some(c), None) if c != 0 => write!(f, ", exit code {c}"),
            _ => Ok(()),
        }
    }
}

/// Run state of a live VM as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    /// vCPUs run.
    Running,
    /// Stopped by `pause` or after `save`.
    Paused,
    /// Waiting for incoming state.
    Incoming,
    /// QEMU has ended.
    Exited(VmExit),
    /// Another QEMU run state, by its QMP name.
    Other(String),
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    pub(crate) spec: VmSpec,
    pub(crate) accel: Accel,
    pub(crate) pid: u32,
    pub(crate) qmp: QmpClient,
    pub(crate) agent: Option<AgentClient>,
    pub(crate) console: Console,
    pub(crate) exit: watch::Receiver<Option<VmExit>>,
    pub(crate) killed: Arc<AtomicBool>,
    pub(crate) res: VmResources,
}

impl Vm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec it was started from.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// QEMU's pid (also its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// QEMU's resident memory (VmRSS) in KiB, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The accelerator it runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Its run directory (sockets, memory file, logs).
    pub fn run_dir(&self) -> &Path {
        &self.res.run_dir
    }

    /// Names of the taps its bridged NICs use.
    pub fn taps(&self) -> Vec<String> {
        self.res.taps.iter().map(|t| t.name.clone()).collect()
    }

    /// The QMP socket path (for tools that attach while brood holds no connection).
    pub fn qmp_socket(&self) -> PathBuf {
        self.res.run_dir.join("qmp.sock")
    }

    /// The serial console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// QMP events from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.qmp.events()
    }

    /// The raw QMP client, for commands the engine does not wrap.
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// Kill QEMU when the handle is dropped (the default follows the spec's
    /// `die_with_parent`). broodd turns it on for the children it keeps in
    /// a pool and off again when one becomes a partition.
    pub fn set_kill_on_drop(&mut self, kill: bool) {
        self.res.kill_on_drop = kill;
    }

    /// Keep the run directory (logs) when the handle is dropped.
    pub fn keep_run_dir(&mut self, keep: bool) {
        self.res.keep_run_dir = keep;
    }

    /// The VM's cgroup: the one it was started in, or (attached after a
    /// restart) the one its process is in.
    pub fn cgroup(&self) -> Option<crate::cgroup::Cgroup> {
        self.res
            .cgroup
            .clone()
            .or_else(|| crate::cgroup::Cgroup::of_pid(self.pid))
    }

    /// How QEMU ended, if it has.
    pub fn exit_status(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// The agent client; an error when the VM was started without the agent port.
    pub fn agent(&self) -> Result<&AgentClient, EngineError> {
        self.agent.as_ref().ok_or(EngineError::Unsupported {
            op: "the guest agent of a VM started without its channel",
        })
    }

    /// Waits for QEMU to end.
    pub async fn wait_exit(&self) -> VmExit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The watcher is gone without a verdict: treat as crashed.
                return VmExit {
                    kind: ExitKind::Crashed,
                    code: None,
                    signal: None,
                    shutdown_reason: None,
                };
            }
        }
    }

    fn ensure_live(&self, op: &'static str) -> Result<(), EngineError> {
        match self.exit_status() {
            Some(e) => Err(EngineError::InvalidState {
                op,
                state: format!("exited ({e})"),
            }),
            None => Ok(()),
        }
    }

    /// An error describing an unexpected exit, with what QEMU printed last
    /// or, failing that, the guest's last words (its panic line when it panicked).
    pub(crate) fn exited_error(&self, exit: &VmExit) -> EngineError {
        const CUT: usize = 200;
        // QEMU's error comes last; earlier lines are mostly warnings.
        const LINES: usize = 3;
        let mut lines = qemu_log_tail(&self.res.run_dir, LINES);
        if lines.is_empty() {
            let console = self.console.tail_lines(40);
            let notable: Vec<String> = console
                .iter()
                .filter(|l| l.contains("Kernel panic") || l.contains("Initramfs unpacking failed"))
                .cloned()
                .collect();
            lines = if notable.is_empty() {
                console.into_iter().rev().take(3).rev().collect()
            } else {
                notable
            };
        }
        let detail = lines
            .iter()
            .map(|l| l.chars().take(CUT).collect::<String>())
            .collect::<Vec<_>>()
            .join(" | ");
        EngineError::ProcessExited {
            status: exit.to_string(),
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
        }
    }

    /// Says why an operation on this VM failed in QEMU's own words. A QMP
    /// or migration failure is often QEMU ending (a failed incoming
    /// migration exits QEMU, and QMP only sees the socket close): when
    /// QEMU has ended, or ends within [`EXPLAIN_GRACE`], the error becomes
    /// its exit with the last lines of its `qemu.log`; a migration error of
    /// a QEMU still running gets that log's last line appended. Other
    /// errors are returned as they are.
    pub(crate) async fn explain(&self, e: EngineError) -> EngineError {
        // QEMU answered (a command error): it is alive and said why itself.
        let gone = matches!(
            e,
            EngineError::Qmp(
                brood_qmp::QmpError::Closed
                    | brood_qmp::QmpError::Io(_)
                    | brood_qmp::QmpError::Timeout { .. }
            ) | EngineError::Migration(_)
                | EngineError::Timeout { .. }
        );
        if !gone {
            return e;
        }
        let exit = match self.exit_status() {
            Some(x) => Some(x),
            None => tokio::time::timeout(EXPLAIN_GRACE, self.wait_exit())
                .await
                .ok(),
        };
        if let Some(x) = exit {
            return self.exited_error(&x);
        }
        match (e, qemu_log_tail(&self.res.run_dir, 1).pop()) {
            (EngineError::Migration(m), Some(line)) if !m.contains(line.as_str()) => {
                EngineError::Migration(format!("{m} (QEMU said: {line})"))
            }
            (e, _) => e,
        }
    }

    /// Waits for the agent's `Ready`, failing early if QEMU exits first.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Ready, EngineError> {
        let agent = self.agent()?;
        tokio::select! {
            r = agent.wait_ready(timeout) => match r {
                Err(EngineError::AgentChannel(_)) | Err(EngineError::Timeout { .. }) => {
                    // Prefer the exit as the explanation when there is one.
                    if let Ok(e) = tokio::time::timeout(Duration::from_millis(500), self.wait_exit()).await {
                        return Err(self.exited_error(&e));
                    }
                    let tail = self.console.tail_lines(2).join(" | ");
                    match r {
                        Err(EngineError::Timeout { after, .. }) => Err(EngineError::Timeout {
                            op: if tail.is_empty() {
                                "waiting for the guest agent (the guest printed nothing)"
                            } else {
                                "waiting for the guest agent (see the console log)"
                            },
                            after,
                        }),
                        other => other,
                    }
                }
                other => other,
            },
            e = self.wait_exit() => Err(self.exited_error(&e)),
        }
    }

    /// Stops the vCPUs.
    pub async fn pause(&self) -> Result<(), EngineError> {
        self.ensure_live("pause")?;
        if let Err(e) = self.qmp.stop().await {
            return Err(self.explain(e.into()).await);
        }
        Ok(())
    }

    /// Continues the vCPUs.
    pub async fn resume(&self) -> Result<(), EngineError> {
        self.ensure_live("resume")?;
        if let Err(e) = self.qmp.cont().await {
            return Err(self.explain(e.into()).await);
        }
        Ok(())
    }

    /// QEMU's run state.
    pub async fn status(&self) -> Result<VmStatus, EngineError> {
        if let Some(e) = self.exit_status() {
            return Ok(VmStatus::Exited(e));
        }
        Ok(match self.qmp.query_status().await?.status {
            RunState::Running => VmStatus::Running,
            RunState::Paused | RunState::Postmigrate => VmStatus::Paused,
            RunState::Inmigrate | RunState::Prelaunch => VmStatus::Incoming,
            other => VmStatus::Other(other.to_string()),
        })
    }

    /// Saves the whole VM state (devices and memory) to `path`; the VM is
    /// left paused. A forked child's too: see `qemu::save_state`.
    pub async fn save(&self, path: &Path) -> Result<(), EngineError> {
        self.ensure_live("save")?;
        let saved = async {
            self.qmp.stop().await?;
            crate::qemu::save_state(self, path, SAVE_TIMEOUT).await
        }
        .await;
        if let Err(e) = saved {
            return Err(self.explain(e).await);
        }
        info!(vm = %self.spec.name, path = %path.display(), "state saved");
        Ok(())
    }

    /// Powers the guest off (through the agent when it is there, ACPI
    /// otherwise), kills QEMU if it has not ended by `deadline`, and
    /// returns how it ended.
    pub async fn shutdown(&self, deadline: Duration) -> Result<VmExit, EngineError> {
        if let Some(e) = self.exit_status() {
            return Ok(e);
        }
        let asked = match &self.agent {
            Some(a) if a.ready_info().is_some() => tokio::time::timeout(deadline, a.power_off())
                .await
                .is_ok_and(|r| r.is_ok()),
            _ => false,
        };
        // Bounded by the deadline too: a hung QEMU must not hold a stop for
        // QMP's own timeout first.
        if !asked
            && let Err(e) = tokio::time::timeout(deadline, self.qmp.system_powerdown())
                .await
                .unwrap_or(Err(brood_qmp::QmpError::Timeout {
                    op: "QMP command system_powerdown".into(),
                    after: deadline,
                }))
        {
            debug!(vm = %self.spec.name, "system_powerdown: {e}");
        }
        match tokio::time::timeout(deadline, self.wait_exit()).await {
            Ok(e) => Ok(e),
            Err(_) => {
                info!(vm = %self.spec.name, "did not power off within {deadline:?}; killing it");
                self.kill().await
            }
        }
    }

    /// Sends SIGKILL to QEMU's process group at once, without QMP and
    /// without waiting: safe while another call on this VM waits on a hung
    /// QEMU (that call then fails as the QMP socket closes).
    pub fn kill_now(&self) {
        if self.exit_status().is_none() {
            self.killed.store(true, Ordering::SeqCst);
            self.res.kill();
        }
    }

    /// Kills QEMU's process group and waits until it is reaped.
    pub async fn kill(&self) -> Result<VmExit, EngineError> {
        if let Some(e) = self.exit_status() {
            return Ok(e);
        }
        self.kill_now();
        tokio::time::timeout(KILL_WAIT, self.wait_exit())
            .await
            .map_err(|_| EngineError::Timeout {
                op: "reaping a killed QEMU",
                after: KILL_WAIT,
            })
    }
}

/// The last `n` non-empty lines QEMU wrote to its `qemu.log` in `run_dir`
/// (its stderr), read from the file's end and bounded: a QEMU taken over
/// by its guest may have written anything there.
pub(crate) fn qemu_log_tail(run_dir: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX_TAIL: u64 = 16 * 1024;
    let Ok(mut f) = std::fs::File::open(run_dir.join("qemu.log")) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(MAX_TAIL)))
        .is_err()
    {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX_TAIL).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(n)
        .map(String::from)
        .collect();
    lines.reverse();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_log_tail_is_the_last_lines_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(qemu_log_tail(dir.path(), 3).is_empty(), "no log, no lines");
        let mut log = "x".repeat(1 << 20);
        log.push_str("\nqemu-system-x86_64: warning: a warning\n\n");
        log.push_str("qemu-system-x86_64: Capability x-ignore-shared is off, but received capability is on\n");
        log.push_str("qemu-system-x86_64: load of migration failed: Invalid argument\n  \n");
        std::fs::write(dir.path().join("qemu.log"), log).expect("write");
        assert_eq!(
            qemu_log_tail(dir.path(), 1),
            ["qemu-system-x86_64: load of migration failed: Invalid argument"]
        );
        let three = qemu_log_tail(dir.path(), 3);
        assert_eq!(three.len(), 3);
        assert!(three[1].contains("x-ignore-shared"), "{three:?}");
        // Only the file's end is read: the megabyte line is cut to the bound.
        let all = qemu_log_tail(dir.path(), 100);
        assert!(
            all.iter().map(String::len).sum::<usize>() <= 16 * 1024,
            "{}",
            all.len()
        );
    }
}
