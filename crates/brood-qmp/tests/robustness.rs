//! The client against a scripted fake QEMU: replies out of order, dropped
//! connections, garbage and over-long lines, timeouts, failed handshakes and
//! connecting before the socket exists. Reply and event lines are taken from
//! the recorded QEMU 10.0.2 transcripts where one fits.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own crate

mod common;

use std::error::Error as _;
use std::time::Duration;

use brood_qmp::{MAX_LINE_LEN, MigrationStatus, QmpClient, QmpError, QueryStatus, RunState};
use common::{FakeQemu, Transcript, connected};
use serde_json::json;
use tokio::net::UnixStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn concurrent_commands_are_routed_by_id_when_replies_come_out_of_order() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(conn.recv().await.unwrap());
        }
        let ids: Vec<_> = requests.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), 3);
        assert!(
            ids.windows(2).all(|w| w[0] != w[1]),
            "ids must differ: {ids:?}"
        );
        // Answer in reverse order of arrival.
        for request in requests.iter().rev() {
            let recorded = match request["execute"].as_str().unwrap() {
                "query-status" => t.reply(1),
                "query-migrate" => t.reply(6),
                "human-monitor-command" => t.reply(7),
                other => panic!("unexpected {other}"),
            };
            conn.reply(request, recorded).await;
        }
        while conn.recv().await.is_some() {}
    })
    .await;

    let (status, migrate, hmp) = tokio::join!(
        qmp.query_status(),
        qmp.query_migrate(),
        qmp.human_monitor_command("info status"),
    );
    assert_eq!(status.unwrap().status, RunState::Prelaunch);
    assert_eq!(migrate.unwrap().status, None);
    assert_eq!(hmp.unwrap(), "VM status: paused\r\n");
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn ids_increase_monotonically() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let mut last = 0;
        while let Some(request) = conn.recv().await {
            let id = request["id"].as_u64().unwrap();
            assert!(id > last, "id {id} after {last}");
            last = id;
            conn.reply(&request, t.reply(2)).await;
        }
    })
    .await;
    for _ in 0..5 {
        qmp.cont().await.unwrap();
    }
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn dropped_connection_fails_pending_commands_with_closed() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        // Read both commands, answer neither, hang up.
        conn.expect("query-status").await;
        conn.expect("stop").await;
    })
    .await;
    let mut events = qmp.events();
    let (status, stop) = tokio::join!(qmp.query_status(), qmp.stop());
    assert!(matches!(status, Err(QmpError::Closed)), "{status:?}");
    assert!(matches!(stop, Err(QmpError::Closed)), "{stop:?}");
    timeout(WAIT, qmp.closed()).await.unwrap();
    assert!(qmp.is_closed());
    let waited = qmp.wait_event(&mut events, "STOP", WAIT).await;
    assert!(matches!(waited, Err(QmpError::Closed)), "{waited:?}");
    assert!(matches!(qmp.cont().await, Err(QmpError::Closed)));
    server.await.unwrap();
}

#[tokio::test]
async fn garbage_and_over_long_lines_are_skipped() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let request = conn.expect("query-status").await;
        conn.send("garbage").await;
        conn.send("[1, 2, 3]").await;
        conn.send("{}").await;
        conn.send_raw(b"\xff\xfe\x00\n").await;
        // QEMU's answer to a line it could not parse carries no id.
        conn.send(r#"{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}}"#).await;
        conn.send(r#"{"return": {}, "id": 999999}"#).await;
        conn.send(r#"{"return": {}, "id": "not-ours"}"#).await;
        // One line over the cap, sent in pieces, then a valid event and reply.
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_LINE_LEN / chunk.len() + 1) {
            conn.send_raw(&chunk).await;
        }
        conn.send_raw(b"\n").await;
        conn.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
            .await;
        conn.reply(&request, t.reply(1)).await;
        while conn.recv().await.is_some() {}
    })
    .await;
    let mut events = qmp.events();
    let status = qmp.query_status().await.unwrap();
    assert_eq!(status.status, RunState::Prelaunch);
    let event = qmp.wait_event(&mut events, "STOP", WAIT).await.unwrap();
    assert_eq!(event.timestamp, Some((1, 2)));
    assert!(!qmp.is_closed());
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn reply_of_the_wrong_shape_is_a_decode_error() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let request = conn.expect("query-status").await;
        conn.reply(&request, r#"{"return": {"status": 5}}"#).await;
        let request = conn.expect("query-status").await;
        conn.reply(&request, t.reply(1)).await;
        while conn.recv().await.is_some() {}
    })
    .await;
    let err = qmp.execute(&QueryStatus).await.unwrap_err();
    assert!(matches!(&err, QmpError::Decode { what, .. } if what == "reply to query-status"));
    // The connection is still usable.
    qmp.query_status().await.unwrap();
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn command_without_reply_times_out_and_a_late_reply_is_ignored() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let slow = conn.expect("query-status").await;
        let next = conn.expect("stop").await;
        // Answer the timed-out command late, then the next one.
        conn.reply(&slow, t.reply(1)).await;
        conn.reply(&next, t.reply(4)).await;
        while conn.recv().await.is_some() {}
    })
    .await;
    let short = qmp.clone().with_command_timeout(Duration::from_millis(50));
    let err = short.query_status().await.unwrap_err();
    assert!(
        matches!(&err, QmpError::Timeout { op, .. } if op == "QMP command query-status"),
        "{err:?}"
    );
    qmp.stop().await.unwrap();
    drop((qmp, short));
    server.await.unwrap();
}

#[tokio::test]
async fn wait_migration_returns_on_the_final_event() {
    let t = Transcript::load("migrate_events");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        // Every poll says "active"; only the recorded events tell the end.
        let mut sent_events = false;
        while let Some(request) = conn.recv().await {
            assert_eq!(request["execute"], "query-migrate");
            conn.reply(&request, r#"{"return": {"status": "active"}}"#)
                .await;
            if !sent_events {
                for event in t.events().iter().filter(|e| e.contains("MIGRATION")) {
                    conn.send(event).await;
                }
                sent_events = true;
            }
        }
    })
    .await;
    let status = qmp.wait_migration(WAIT).await.unwrap();
    assert_eq!(status, MigrationStatus::Completed);
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn wait_migration_and_wait_event_have_deadlines() {
    let t = Transcript::load("migrate_poll");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        while let Some(request) = conn.recv().await {
            conn.reply(&request, r#"{"return": {"status": "active"}}"#)
                .await;
        }
    })
    .await;
    let err = qmp
        .wait_migration(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(&err, QmpError::Timeout { op, .. } if op == "wait for migration"));
    let mut events = qmp.events();
    let err = qmp
        .wait_event(&mut events, "RESUME", Duration::from_millis(20))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wait for QMP event RESUME timed out after 20ms"
    );
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn handshake_failures_are_reported() {
    async fn handshake_with(lines: Vec<Vec<u8>>) -> QmpError {
        let fake = FakeQemu::bind();
        let stream = UnixStream::connect(&fake.path).await.unwrap();
        let server = tokio::spawn(async move {
            let mut conn = fake.accept().await;
            if lines.is_empty() {
                return; // hang up without a greeting
            }
            for line in &lines {
                conn.send_raw(line).await;
            }
            // Refuse capabilities negotiation if the client gets that far.
            if let Some(request) = conn.recv().await {
                let refusal = r#"{"error": {"class": "GenericError", "desc": "nope"}}"#;
                conn.reply(&request, refusal).await;
            }
        });
        let err = QmpClient::connect(stream).await.unwrap_err();
        server.await.unwrap();
        err
    }
    let source = |err: &QmpError| err.source().map(ToString::to_string).unwrap_or_default();

    let err = handshake_with(vec![]).await;
    assert_eq!(
        err.to_string(),
        "QMP handshake failed while reading the greeting"
    );
    assert_eq!(source(&err), "QMP connection closed");

    let err = handshake_with(vec![b"not json\r\n".to_vec()]).await;
    assert_eq!(source(&err), "QMP message is not valid JSON");

    let err = handshake_with(vec![b"{\"event\": \"STOP\"}\r\n".to_vec()]).await;
    assert_eq!(source(&err), "expected QMP greeting, got event");

    let mut long = vec![b' '; MAX_LINE_LEN + 1];
    long.push(b'\n');
    let err = handshake_with(vec![long]).await;
    assert_eq!(
        source(&err),
        format!("QMP line longer than {MAX_LINE_LEN} bytes")
    );

    let t = Transcript::load("session");
    let err = handshake_with(vec![format!("{}\r\n", t.greeting).into_bytes()]).await;
    assert_eq!(
        err.to_string(),
        "QMP handshake failed while negotiating capabilities"
    );
    assert_eq!(
        source(&err),
        "QMP command qmp_capabilities failed: GenericError: nope"
    );
}

#[tokio::test]
async fn connect_path_waits_for_the_socket_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let t = Transcript::load("session");
    let server_path = path.clone();
    let server = tokio::spawn(async move {
        // Play a QEMU that is slow to create its socket. If the client had
        // not started trying yet, the test still holds, only proves less.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = tokio::net::UnixListener::bind(&server_path).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (read, write) = stream.into_split();
        drop((read, write, t));
    });
    // The server hangs up after accepting: the connect itself succeeded.
    let err = QmpClient::connect_path(&path, WAIT).await.unwrap_err();
    assert!(matches!(err, QmpError::Handshake { .. }), "{err:?}");
    server.await.unwrap();

    let missing = dir.path().join("never.sock");
    let err = QmpClient::connect_path(&missing, Duration::from_millis(50))
        .await
        .unwrap_err();
    match err {
        QmpError::Connect { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_path_handshakes_with_a_replayed_session() {
    let fake = FakeQemu::bind();
    let path = fake.path.clone();
    let t = Transcript::load("session");
    let server = tokio::spawn(async move {
        let mut conn = fake.accept().await;
        conn.handshake(&t).await;
        let request = conn.expect("query-status").await;
        conn.reply(&request, t.reply(1)).await;
        assert!(conn.recv().await.is_none(), "client should hang up");
    });
    let (qmp, greeting) = QmpClient::connect_path(&path, WAIT).await.unwrap();
    assert_eq!(greeting.version.qemu.major, 10);
    assert_eq!(
        qmp.query_status().await.unwrap().status,
        RunState::Prelaunch
    );
    // Dropping the last handle closes the socket.
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn execute_raw_passes_arguments_through() {
    let t = Transcript::load("session");
    let (qmp, _, server) = connected(move |mut conn| async move {
        conn.handshake(&t).await;
        let request = conn.expect("human-monitor-command").await;
        assert_eq!(request["arguments"], json!({"command-line": "info status"}));
        conn.reply(&request, t.reply(7)).await;
        while conn.recv().await.is_some() {}
    })
    .await;
    let out = qmp
        .execute_raw(
            "human-monitor-command",
            Some(json!({"command-line": "info status"})),
        )
        .await
        .unwrap();
    assert_eq!(out, json!("VM status: paused\r\n"));
    drop(qmp);
    server.await.unwrap();
}
