//! The client against QEMU 10.0.2 sessions replayed from `tests/transcripts/`.
//!
//! Each test plays one recorded session with the fake server in
//! `tests/common` and drives the public API through the same commands, so a
//! change in how the client encodes a command or reads a reply shows up here.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own crate

mod common;

use std::time::Duration;

use brood_qmp::{
    MigrateSetParameters, MigrationCapabilityName, MigrationStatus, QmpError, QmpEvent, RunState,
};
use common::{Transcript, connected};
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// Drains `rx` until the connection's event channel closes; returns the event names.
async fn drain(mut rx: broadcast::Receiver<QmpEvent>) -> Vec<String> {
    let mut names = Vec::new();
    while let Ok(Ok(event)) = timeout(WAIT, rx.recv()).await {
        names.push(event.event);
    }
    names
}

#[tokio::test]
async fn session_replays_handshake_commands_events_and_quit() {
    let t = Transcript::load("session");
    let script = t.clone();
    let (qmp, greeting, server) = connected(move |conn| conn.replay(script)).await;

    assert_eq!(greeting.version.qemu.to_string(), "10.0.2");
    assert!(greeting.version.package.starts_with("Debian"));
    assert_eq!(greeting.capabilities, vec!["oob".to_string()]);
    assert_eq!(qmp.greeting(), &greeting);

    // Two receivers see every event.
    let first = qmp.events();
    let second = qmp.events();
    let mut resume = qmp.events();

    let status = qmp.query_status().await.unwrap();
    assert_eq!(status.status, RunState::Prelaunch);
    assert!(!status.running);

    qmp.cont().await.unwrap();
    let event = qmp.wait_event(&mut resume, "RESUME", WAIT).await.unwrap();
    assert_eq!(event.timestamp.map(|(s, _)| s > 1_700_000_000), Some(true));
    let status = qmp.query_status().await.unwrap();
    assert_eq!((status.status, status.running), (RunState::Running, true));

    qmp.stop().await.unwrap();

    let err = qmp.execute_raw("no-such-command", None).await.unwrap_err();
    match err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "The command no-such-command has not been found");
        }
        other => panic!("expected a command error, got {other:?}"),
    }

    // QEMU 10 answers {} when no migration has run.
    let info = qmp.query_migrate().await.unwrap();
    assert_eq!(info.status, None);

    let out = qmp.human_monitor_command("info status").await.unwrap();
    assert_eq!(out, "VM status: paused\r\n");

    qmp.system_reset().await.unwrap();
    qmp.system_powerdown().await.unwrap();
    qmp.quit().await.unwrap();
    timeout(WAIT, qmp.closed()).await.unwrap();
    assert!(qmp.is_closed());
    assert!(matches!(qmp.stop().await, Err(QmpError::Closed)));

    let expected = ["RESUME", "STOP", "RESET", "POWERDOWN", "SHUTDOWN"];
    assert_eq!(drain(first).await, expected);
    assert_eq!(drain(second).await, expected);
    server.await.unwrap();
}

#[tokio::test]
async fn migration_with_events_capability() {
    let t = Transcript::load("migrate_events");
    let script = t.clone();
    let (qmp, _, server) = connected(move |conn| conn.replay(script)).await;
    let events = qmp.events();

    qmp.migrate_set_capabilities(&[(MigrationCapabilityName::Events, true)])
        .await
        .unwrap();
    qmp.migrate_set_parameters(&MigrateSetParameters {
        max_bandwidth_bytes_per_s: Some(1 << 30),
        downtime_limit_ms: Some(500),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.migrate("file:/tmp/brood-qmp-rec-state").await.unwrap();
    let status = qmp.wait_migration(WAIT).await.unwrap();
    assert_eq!(status, MigrationStatus::Completed);
    qmp.quit().await.unwrap();
    timeout(WAIT, qmp.closed()).await.unwrap();

    let names = drain(events).await;
    assert_eq!(
        names,
        [
            "MIGRATION",
            "MIGRATION_PASS",
            "MIGRATION",
            "MIGRATION",
            "MIGRATION_PASS",
            "MIGRATION",
            "SHUTDOWN"
        ]
    );
    server.await.unwrap();
}

#[tokio::test]
async fn failed_migration_reports_error_desc() {
    let t = Transcript::load("migrate_failed");
    let script = t.clone();
    let (qmp, _, server) = connected(move |conn| conn.replay(script)).await;

    qmp.migrate_set_capabilities(&[(MigrationCapabilityName::Events, true)])
        .await
        .unwrap();
    qmp.migrate("unix:/tmp/brood-qmp-rec-state-nonexistent.sock")
        .await
        .unwrap();
    // The replay answers the poll with the recorded final state.
    let status = qmp.wait_migration(WAIT).await.unwrap();
    assert_eq!(status, MigrationStatus::Failed);
    qmp.quit().await.unwrap();
    server.await.unwrap();

    let info: brood_qmp::MigrationInfo = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(t.reply(3)).unwrap()["return"].clone(),
    )
    .unwrap();
    assert!(info.error_desc.unwrap().starts_with("Failed to connect to"));
}

#[tokio::test]
async fn incoming_migration_in_defer_mode() {
    let t = Transcript::load("migrate_incoming");
    let script = t.clone();
    let (qmp, _, server) = connected(move |conn| conn.replay(script)).await;

    assert_eq!(
        qmp.query_status().await.unwrap().status,
        RunState::Inmigrate
    );
    qmp.migrate_set_capabilities(&[(MigrationCapabilityName::Events, true)])
        .await
        .unwrap();
    qmp.migrate_incoming("file:/tmp/brood-qmp-rec-state")
        .await
        .unwrap();
    assert_eq!(
        qmp.wait_migration(WAIT).await.unwrap(),
        MigrationStatus::Completed
    );
    // After loading, a -S QEMU is back in prelaunch, ready for cont.
    assert_eq!(
        qmp.query_status().await.unwrap().status,
        RunState::Prelaunch
    );
    qmp.quit().await.unwrap();
    timeout(WAIT, qmp.closed()).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn migration_without_events_is_polled() {
    // Recorded without the events capability: no MIGRATION event at all, so
    // only query-migrate polls can see the end. The fake server answers each
    // poll with the next recorded status.
    let t = Transcript::load("migrate_poll");
    assert!(t.events().iter().all(|e| !e.contains("MIGRATION")));
    let script = t.clone();
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&script).await;
        let request = conn.expect("migrate").await;
        conn.reply(&request, script.reply(1)).await;
        let polls: Vec<usize> = (2..script.exchanges.len())
            .filter(|&i| script.exchanges[i].request["execute"] == "query-migrate")
            .collect();
        for i in polls {
            let request = conn.expect("query-migrate").await;
            conn.reply(&request, script.reply(i)).await;
        }
        while conn.recv().await.is_some() {}
    })
    .await;

    qmp.migrate("file:/tmp/brood-qmp-rec-state-poll")
        .await
        .unwrap();
    let status = qmp.wait_migration(WAIT).await.unwrap();
    assert_eq!(status, MigrationStatus::Completed);
    drop(qmp);
    server.await.unwrap();
}
