//! The client against the installed `qemu-system-x86_64` (or `$BROOD_QEMU`).
//!
//! QEMU runs as `-M microvm -nodefaults -S` with no guest: nothing executes,
//! only the monitor and migration of an empty machine. Each QEMU gets its own
//! tempdir and process group, and a guard kills the group when the test ends,
//! whether it passed or not. The tests fail, rather than skip, when QEMU is
//! missing: QEMU is a prerequisite of the workspace's tests.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own crate

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use brood_qmp::{MigrationCapabilityName, MigrationStatus, QmpClient, QmpEvent, RunState};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// A QEMU process that is killed (with its process group) when dropped.
struct Qemu {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Qemu {
    fn spawn(extra: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let binary =
            std::env::var_os("BROOD_QEMU").unwrap_or_else(|| OsString::from("qemu-system-x86_64"));
        let child = Command::new(&binary)
            .args(["-M", "microvm", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-S", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary:?} (install QEMU): {e}"));
        Qemu { child, dir, socket }
    }

    async fn connect(&self) -> QmpClient {
        let (qmp, greeting) = QmpClient::connect_path(&self.socket, WAIT).await.unwrap();
        assert!(greeting.version.qemu.major >= 8, "{greeting:?}");
        qmp
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // id() is None once the child was reaped; until then its pid (and
        // so its group id) cannot be reused.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Every event already queued on `rx`.
fn queued(rx: &mut broadcast::Receiver<QmpEvent>) -> Vec<QmpEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test]
async fn lifecycle_against_real_qemu() {
    let mut qemu = Qemu::spawn(&[]);
    let qmp = qemu.connect().await;

    let status = qmp.query_status().await.unwrap();
    assert_eq!(
        (status.status, status.running),
        (RunState::Prelaunch, false)
    );

    let mut events = qmp.events();
    qmp.cont().await.unwrap();
    qmp.wait_event(&mut events, "RESUME", WAIT).await.unwrap();
    let status = qmp.query_status().await.unwrap();
    assert_eq!((status.status, status.running), (RunState::Running, true));

    qmp.stop().await.unwrap();
    qmp.wait_event(&mut events, "STOP", WAIT).await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Paused);

    let err = qmp.execute_raw("no-such-command", None).await.unwrap_err();
    assert!(err.is_command_error("CommandNotFound"), "{err:?}");
    let out = qmp.human_monitor_command("info status").await.unwrap();
    assert!(out.contains("paused"), "{out:?}");

    qmp.quit().await.unwrap();
    let shutdown = qmp.wait_event(&mut events, "SHUTDOWN", WAIT).await.unwrap();
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");
    timeout(WAIT, qmp.closed()).await.unwrap();
    assert!(qmp.is_closed());
    let exit = timeout(WAIT, qemu.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn migration_events_need_the_events_capability() {
    // Without the `events` capability (the default) QEMU 10 sends no
    // MIGRATION event: wait_migration must get there by polling.
    let plain = Qemu::spawn(&[]);
    let qmp = plain.connect().await;
    let mut events = qmp.events();
    // A migration that cannot start fails, with error-desc.
    let failing = format!("unix:{}", plain.dir.path().join("absent.sock").display());
    qmp.migrate(&failing).await.unwrap();
    assert_eq!(
        qmp.wait_migration(WAIT).await.unwrap(),
        MigrationStatus::Failed
    );
    let info = qmp.query_migrate().await.unwrap();
    assert!(
        info.error_desc
            .as_deref()
            .unwrap_or_default()
            .contains("absent.sock"),
        "{info:?}"
    );
    let state = plain.dir.path().join("state");
    qmp.migrate(&format!("file:{}", state.display()))
        .await
        .unwrap();
    assert_eq!(
        qmp.wait_migration(WAIT).await.unwrap(),
        MigrationStatus::Completed
    );
    let seen = queued(&mut events);
    assert!(
        seen.iter().all(|e| !e.event.starts_with("MIGRATION")),
        "{seen:?}"
    );
    // QEMU 10 refuses a second migration from a VM a migration has paused.
    let again = qmp.migrate(&format!("file:{}", state.display())).await;
    assert!(again.unwrap_err().is_command_error("GenericError"));

    // With the capability, every state change is an event.
    let eventful = Qemu::spawn(&[]);
    let source = eventful.connect().await;
    let mut events = source.events();
    source
        .migrate_set_capabilities(&[(MigrationCapabilityName::Events, true)])
        .await
        .unwrap();
    let state = eventful.dir.path().join("state");
    source
        .migrate(&format!("file:{}", state.display()))
        .await
        .unwrap();
    assert_eq!(
        source.wait_migration(WAIT).await.unwrap(),
        MigrationStatus::Completed
    );
    source
        .wait_event_matching(&mut events, WAIT, |e| {
            e.event == "MIGRATION" && e.data["status"] == "completed"
        })
        .await
        .unwrap();

    // Load the saved state into a QEMU waiting in -incoming defer.
    let target = Qemu::spawn(&["-incoming", "defer"]);
    let incoming = target.connect().await;
    assert_eq!(
        incoming.query_status().await.unwrap().status,
        RunState::Inmigrate
    );
    incoming
        .migrate_incoming(&format!("file:{}", state.display()))
        .await
        .unwrap();
    assert_eq!(
        incoming.wait_migration(WAIT).await.unwrap(),
        MigrationStatus::Completed
    );
    // Loaded into a -S QEMU: back in prelaunch, ready for cont.
    assert_eq!(
        incoming.query_status().await.unwrap().status,
        RunState::Prelaunch
    );

    for q in [&qmp, &source, &incoming] {
        q.quit().await.unwrap();
        timeout(WAIT, q.closed()).await.unwrap();
    }
}
