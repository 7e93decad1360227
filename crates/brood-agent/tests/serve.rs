//! The serving loop end to end over a `UnixStream` pair: the test plays the
//! host, sending framed `HostMsg` requests and checking the `GuestMsg`
//! replies, including what happens after malformed frames.
//!
//! Machine-wide actions go to the recording double of `common`, so these
//! tests never rename or power off the machine running them. Fork has its
//! own file, `tests/fork.rs`.

// This file is a test crate of its own; the lint is for unit tests in library
// code (Firecracker's vmm/tests allow it the same way).
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use brood_agent::point;
use brood_proto::{
    Command, ErrorKind, ExecRequest, ExecStatus, GuestMsg, HostMsg, MAGIC, MAX_BODY_LEN,
    OUTPUT_CHUNK, PROTOCOL_VERSION, ReadFileRequest, Stream, WriteFileRequest, encode_frame,
};

use common::{Host, error_kind};

trait Exec {
    fn exec(&mut self, id: u32, req: ExecRequest) -> (Vec<u8>, Vec<u8>, ExecStatus);
}

impl Exec for Host {
    fn exec(&mut self, id: u32, req: ExecRequest) -> (Vec<u8>, Vec<u8>, ExecStatus) {
        self.send(id, &HostMsg::Exec(req));
        collect_exec(self.replies(id))
    }
}

fn collect_exec(replies: Vec<GuestMsg>) -> (Vec<u8>, Vec<u8>, ExecStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut status = None;
    for msg in replies {
        match msg {
            GuestMsg::Output { stream, data } => {
                assert!(!data.is_empty() && data.len() <= OUTPUT_CHUNK);
                match stream {
                    Stream::Stdout => out.extend_from_slice(&data),
                    Stream::Stderr => err.extend_from_slice(&data),
                }
            }
            GuestMsg::Exited(st) => status = Some(st),
            other => panic!("unexpected exec reply {other:?}"),
        }
    }
    (out, err, status.expect("no Exited"))
}

fn argv(args: &[&str]) -> ExecRequest {
    let mut req = ExecRequest::shell("");
    req.command = Command::Argv(args.iter().map(|s| s.to_string()).collect());
    req
}

#[test]
fn exec_exit_codes_stdout_stderr() {
    let mut host = Host::start();
    let (out, err, st) = host.exec(1, ExecRequest::shell("echo hi; echo oops >&2; exit 7"));
    assert_eq!(out, b"hi\n");
    assert_eq!(err, b"oops\n");
    assert_eq!((st.code, st.signal, st.timed_out), (Some(7), None, false));
    assert_eq!((st.stdout_len, st.stderr_len), (3, 5));

    let (_, _, st) = host.exec(2, ExecRequest::shell("kill -9 $$"));
    assert_eq!((st.code, st.signal), (None, Some(9)));
}

#[test]
fn exec_argv_env_cwd_stdin() {
    let mut host = Host::start();
    let dir = tempfile::tempdir().unwrap();
    let mut req = argv(&["sh", "-c", "pwd; echo \"$BROOD_X\"; cat"]);
    req.env = vec![("BROOD_X".into(), "x y".into())];
    req.cwd = Some(dir.path().to_str().unwrap().into());
    req.stdin = b"from stdin".to_vec();
    let (out, _, st) = host.exec(3, req);
    let expect = format!(
        "{}\nx y\nfrom stdin",
        dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(String::from_utf8(out).unwrap(), expect);
    assert_eq!(st.code, Some(0));
}

#[test]
fn exec_spawn_failures_are_errors() {
    let mut host = Host::start();
    let reply = host.request(4, &HostMsg::Exec(argv(&["/nonexistent/brood-x"])));
    assert_eq!(error_kind(&reply), ErrorKind::NotFound);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noexec");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let reply = host.request(5, &HostMsg::Exec(argv(&[script.to_str().unwrap()])));
    assert_eq!(error_kind(&reply), ErrorKind::PermissionDenied);
    let reply = host.request(6, &HostMsg::Exec(argv(&[])));
    assert_eq!(error_kind(&reply), ErrorKind::BadRequest);
}

#[test]
fn exec_multi_megabyte_stdout_arrives_complete_in_chunks() {
    let mut host = Host::start();
    host.send(
        7,
        &HostMsg::Exec(ExecRequest::shell("head -c 5000000 /dev/zero")),
    );
    let replies = host.replies(7);
    let chunks = replies.len() - 1;
    assert!(chunks >= 5_000_000 / OUTPUT_CHUNK, "{chunks} chunks");
    let (out, _, st) = collect_exec(replies);
    assert_eq!(out.len(), 5_000_000);
    assert!(out.iter().all(|b| *b == 0));
    assert_eq!(
        (st.stdout_len, st.stdout_truncated, st.code),
        (5_000_000, false, Some(0))
    );
}

#[test]
fn exec_output_over_the_limit_is_counted_and_dropped() {
    let mut host = Host::start();
    let mut req = ExecRequest::shell("head -c 300000 /dev/zero; head -c 10 /dev/zero >&2");
    req.output_limit = 100_001;
    let (out, err, st) = host.exec(8, req);
    assert_eq!((out.len(), err.len()), (100_001, 10));
    assert_eq!((st.stdout_len, st.stderr_len), (300_000, 10));
    assert!(st.stdout_truncated && !st.stderr_truncated);
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let mut host = Host::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A background member of the group that would leave a mark if it lived
    // out its 30 s, and a foreground sleep the timeout must cut short.
    let mut req = ExecRequest::shell(format!(
        "(sleep 30; touch {d}/finished) & echo $! > {d}/bg; sleep 30; echo never"
    ));
    req.timeout_ms = Some(300);
    let (out, _, st) = host.exec(9, req);
    assert!(st.timed_out);
    assert_eq!((st.code, st.signal), (None, Some(9)));
    assert!(out.is_empty());
    let bg = read_pid(&dir.path().join("bg"));
    wait_dead(bg);
    assert!(
        !dir.path().join("finished").exists(),
        "the background member ran to its end instead of being killed with the group"
    );
}

#[test]
fn background_grandchild_does_not_hang_the_exec() {
    let mut host = Host::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (out, _, st) = host.exec(
        10,
        ExecRequest::shell(format!("sleep 30 & echo $! > {d}/bg; echo started")),
    );
    assert_eq!(out, b"started\n");
    assert_eq!((st.code, st.timed_out), (Some(0), false));
    // The exec answered while the grandchild still holds its stdout: it did
    // not wait for the pipe to close.
    let bg = read_pid(&dir.path().join("bg"));
    let still_running = alive(bg);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bg),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        still_running,
        "the exec waited for its background grandchild"
    );
}

/// The pid a command wrote to `path`.
fn read_pid(path: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim().parse().unwrap()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; the deadline only guards against a hang.
fn wait_dead(pid: i32) {
    let guard = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < guard, "pid {pid} is still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn output_after_exit_is_still_collected() {
    let mut host = Host::start();
    // The shell exits at once; its background child writes 200 ms later,
    // within the drain window, then closes the pipe.
    let (out, _, st) = host.exec(11, ExecRequest::shell("(sleep 0.2; echo late) & exit 0"));
    assert_eq!(out, b"late\n");
    assert_eq!(st.code, Some(0));
}

#[test]
fn execs_run_concurrently() {
    let mut host = Host::start();
    host.send(12, &HostMsg::Exec(ExecRequest::shell("sleep 1; echo slow")));
    host.send(13, &HostMsg::Exec(ExecRequest::shell("echo fast")));
    let (fast, _, _) = collect_exec(host.replies(13));
    assert_eq!(fast, b"fast\n");
    assert!(
        !host.stash.contains_key(&12),
        "the slow exec finished first"
    );
    let (slow, _, _) = collect_exec(host.replies(12));
    assert_eq!(slow, b"slow\n");
}

#[test]
fn cancel_exec_kills_the_running_command() {
    let mut host = Host::start();
    // Wait until the command runs (its first output), then cancel it.
    host.send(
        20,
        &HostMsg::Exec(ExecRequest::shell("echo started; exec sleep 100")),
    );
    let (id, first) = host.recv();
    assert_eq!(id, 20);
    assert!(matches!(first, GuestMsg::Output { .. }), "{first:?}");
    assert_eq!(
        host.request(21, &HostMsg::CancelExec { exec_id: 20 }),
        GuestMsg::Ok
    );
    let (_, _, st) = collect_exec(host.replies(20));
    assert_eq!((st.code, st.signal, st.timed_out), (None, Some(9), false));
    // The command is gone: a second cancel finds nothing.
    let again = host.request(22, &HostMsg::CancelExec { exec_id: 20 });
    assert_eq!(error_kind(&again), ErrorKind::NotFound);
}

#[test]
fn file_round_trip() {
    let mut host = Host::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f").to_str().unwrap().to_owned();
    let write = |offset, truncate, data: &[u8]| {
        HostMsg::WriteFile(WriteFileRequest {
            path: path.clone(),
            offset,
            truncate,
            mode: 0o600,
            data: data.to_vec(),
        })
    };
    assert_eq!(
        host.request(20, &write(0, true, b"0123456789")),
        GuestMsg::Written { len: 10 }
    );
    assert_eq!(
        host.request(21, &write(4, true, b"ab")),
        GuestMsg::Written { len: 2 }
    );
    let read = |offset, max_len| {
        HostMsg::ReadFile(ReadFileRequest {
            path: path.clone(),
            offset,
            max_len,
        })
    };
    match host.request(22, &read(1, 100)) {
        GuestMsg::FileData(fd) => {
            assert_eq!((&fd.data[..], fd.size, fd.eof), (&b"123ab"[..], 6, true));
        }
        other => panic!("{other:?}"),
    }
    match host.request(23, &read(0, 2)) {
        GuestMsg::FileData(fd) => assert_eq!((&fd.data[..], fd.eof), (&b"01"[..], false)),
        other => panic!("{other:?}"),
    }
    let relative = HostMsg::ReadFile(ReadFileRequest {
        path: "relative".into(),
        offset: 0,
        max_len: 1,
    });
    assert_eq!(
        error_kind(&host.request(24, &relative)),
        ErrorKind::BadRequest
    );
    let missing = HostMsg::ReadFile(ReadFileRequest {
        path: "/nonexistent/brood".into(),
        offset: 0,
        max_len: 1,
    });
    assert_eq!(error_kind(&host.request(25, &missing)), ErrorKind::NotFound);
}

#[test]
fn bad_frames_get_errors_with_their_ids_and_serving_goes_on() {
    let mut host = Host::start();
    // Garbage: logged, no reply.
    host.send_raw(b"this is not a frame at all");
    // An undecodable body.
    let mut bad_body = MAGIC.to_vec();
    bad_body.push(PROTOCOL_VERSION);
    bad_body.extend_from_slice(&31u32.to_le_bytes());
    bad_body.extend_from_slice(&3u32.to_le_bytes());
    bad_body.extend_from_slice(&[0xff, 0xff, 0xff]);
    host.send_raw(&bad_body);
    assert_eq!(error_kind(&host.replies(31)[0]), ErrorKind::BadRequest);
    // A wrong protocol version.
    let mut wrong_version = encode_frame(32, &HostMsg::Info).unwrap();
    wrong_version[3] = PROTOCOL_VERSION + 1;
    host.send_raw(&wrong_version);
    assert_eq!(error_kind(&host.replies(32)[0]), ErrorKind::BadRequest);
    // An oversized header, followed by a body of that size that must be skipped.
    let len = MAX_BODY_LEN + 1;
    let mut oversized = MAGIC.to_vec();
    oversized.push(PROTOCOL_VERSION);
    oversized.extend_from_slice(&33u32.to_le_bytes());
    oversized.extend_from_slice(&len.to_le_bytes());
    host.send_raw(&oversized);
    assert_eq!(error_kind(&host.replies(33)[0]), ErrorKind::TooLarge);
    host.send_raw(&vec![b'B'; len as usize]);
    // A request with the reserved id 0 is ignored.
    host.send(0, &HostMsg::Info);
    // The next valid request still works.
    match host.request(34, &HostMsg::Info) {
        GuestMsg::Info(info) => {
            assert_eq!(info.agent_version, brood_agent::VERSION);
            assert!(info.cpus >= 1 && info.mem_total_kib > 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(host.stash.is_empty() && host.unsolicited.is_empty());
}

#[test]
fn hostname_and_power_off_go_to_the_machine() {
    let mut host = Host::start();
    let set = |name: &str| HostMsg::SetHostname {
        hostname: name.into(),
    };
    assert_eq!(host.request(40, &set("child-1.example")), GuestMsg::Ok);
    assert_eq!(
        error_kind(&host.request(41, &set("-bad"))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        error_kind(&host.request(42, &set(""))),
        ErrorKind::BadRequest
    );
    assert_eq!(host.machine.calls(), ["hostname child-1.example"]);
    assert_eq!(host.request(43, &HostMsg::PowerOff), GuestMsg::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while *host.machine.power_offs.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "power_off was not called");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn point_round_trip() {
    let mut host = Host::start();
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || point::announce(&socket, "fork", None));
    let seq = match host.unsolicited() {
        GuestMsg::Point(p) => {
            assert_eq!(p.name, "fork");
            p.seq
        }
        other => panic!("{other:?}"),
    };
    let wrong = HostMsg::AnswerPoint {
        seq: seq + 100,
        message: b"nobody".to_vec(),
    };
    assert_eq!(
        error_kind(&host.request(50, &wrong)),
        ErrorKind::NoSuchPoint
    );
    let answer = HostMsg::AnswerPoint {
        seq,
        message: b"you are child 1".to_vec(),
    };
    assert_eq!(host.request(51, &answer), GuestMsg::Ok);
    assert_eq!(caller.join().unwrap().unwrap(), b"you are child 1");
    // Answered once only.
    assert_eq!(
        error_kind(&host.request(52, &answer)),
        ErrorKind::NoSuchPoint
    );
}

#[test]
fn point_whose_caller_left_is_no_such_point() {
    let mut host = Host::start();
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || {
        point::announce(&socket, "trigger", Some(Duration::from_millis(200)))
    });
    let GuestMsg::Point(p) = host.unsolicited() else {
        panic!("expected a point")
    };
    let err = caller.join().unwrap().unwrap_err();
    assert!(matches!(err, point::PointError::Timeout { .. }), "{err}");
    let answer = HostMsg::AnswerPoint {
        seq: p.seq,
        message: b"late".to_vec(),
    };
    assert_eq!(
        error_kind(&host.request(53, &answer)),
        ErrorKind::NoSuchPoint
    );
}

#[test]
fn point_socket_refuses_bad_requests() {
    let host = Host::start();
    let err = point::announce(&host.socket, "bad name", None).unwrap_err();
    assert!(
        matches!(err, point::PointError::InvalidName { .. }),
        "{err}"
    );
    // A raw request the client library would not send: refused by the agent.
    let mut raw = UnixStream::connect(&host.socket).unwrap();
    raw.write_all(b"\x01\x03\0\0\0a/b").unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).unwrap();
    assert_eq!(reply.first(), Some(&1), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply[5..]).contains("invalid point name"));
    // A length over the limit.
    let mut raw = UnixStream::connect(&host.socket).unwrap();
    raw.write_all(b"\x01\xff\xff\xff\x7f").unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).unwrap();
    assert_eq!(reply.first(), Some(&1), "{reply:?}");
    let mode = std::fs::metadata(&host.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn announce_without_an_agent_fails() {
    let dir = tempfile::tempdir().unwrap();
    let err = point::announce(&dir.path().join("none.sock"), "fork", None).unwrap_err();
    assert!(matches!(err, point::PointError::Connect { .. }), "{err}");
}

#[test]
fn serving_ends_when_the_transport_closes_and_the_socket_goes() {
    let mut host = Host::start();
    assert!(host.socket.exists());
    host.stream.shutdown(std::net::Shutdown::Both).unwrap();
    host.server.take().unwrap().join().unwrap().unwrap();
    assert!(!host.socket.exists());
}
