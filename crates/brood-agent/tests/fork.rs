//! Fork end to end over a `UnixStream` pair: `PrepareFork` and its
//! independent services, `CompleteFork` and every identity step (recorded
//! by the machine double, never taken on this host), the child's files and
//! dependent services under a temporary directory, and the local
//! `fork-point` caller, through the library and through the binary.

// This file is a test crate of its own; the lint is for unit tests in library
// code (Firecracker's vmm/tests allow it the same way).
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use brood_agent::point::{self, PointError};
use brood_proto::{
    ChildConfig, ErrorKind, FORK_POINT, ForkReport, GuestMsg, HostMsg, Ipv4Config, ServiceResult,
};

use common::{FakeMachine, Host, error_kind};

fn script(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn config() -> ChildConfig {
    ChildConfig {
        index: 3,
        hostname: "web-3".into(),
        macs: vec![[0x52, 0x54, 0, 1, 2, 3]],
        ipv4: Some(Ipv4Config {
            address: [10, 0, 0, 3],
            prefix: 24,
            gateway: Some([10, 0, 0, 1]),
        }),
        identity: Some("dom-7".into()),
        entropy: vec![9; 64],
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        values: vec![
            ("class".into(), "dns".into()),
            ("zone.name-1".into(), "a b".into()),
        ],
        time_unix_ns: 0,
    }
}

const CONFIG_JSON: &str = concat!(
    r#"{"index":3,"hostname":"web-3","macs":["52:54:00:01:02:03"],"#,
    r#""ipv4":{"address":"10.0.0.3","prefix":24,"gateway":"10.0.0.1"},"#,
    r#""identity":"dom-7","machine_id":"0123456789abcdef0123456789abcdef","#,
    r#""values":{"class":"dns","zone.name-1":"a b"}}"#,
    "\n"
);

impl Host {
    fn prepare(&mut self, id: u32) -> (u32, Vec<ServiceResult>) {
        match self.request(id, &HostMsg::PrepareFork) {
            GuestMsg::AtForkPoint { seq, services } => (seq, services),
            other => panic!("expected AtForkPoint, got {other:?}"),
        }
    }

    fn complete(&mut self, id: u32, seq: u32, config: ChildConfig) -> GuestMsg {
        self.request(id, &HostMsg::CompleteFork { seq, config })
    }

    fn fork_done(&mut self, id: u32, seq: u32, config: ChildConfig) -> ForkReport {
        match self.complete(id, seq, config) {
            GuestMsg::ForkDone(report) => report,
            other => panic!("expected ForkDone, got {other:?}"),
        }
    }

    fn independent(&self) -> &Path {
        &self.fork.independent_dir
    }

    fn dependent(&self) -> &Path {
        &self.fork.dependent_dir
    }

    fn read(&self, path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

#[test]
fn prepare_fork_without_services() {
    let mut host = Host::start();
    let (seq, services) = host.prepare(1);
    assert_ne!(seq, 0);
    assert!(services.is_empty());
    // The agent announces no Point for its own fork waiter.
    assert!(host.unsolicited.is_empty());
    let report = host.fork_done(2, seq, config());
    assert_eq!(report.failed, None);
    assert!(report.services.is_empty());
    assert!(report.uptime_ms > 0);
}

#[test]
fn independent_services_run_once_per_agent() {
    let mut host = Host::start();
    let marker = host.dir.path().join("warm.log");
    let body = format!("echo warmed >> {}; echo cache ready", marker.display());
    script(host.independent(), "10-warm", &body);
    script(host.independent(), "20-log", "echo to stderr >&2");
    let (seq1, services) = host.prepare(1);
    let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["10-warm", "20-log"]);
    assert_eq!(services[0].output, "cache ready\n");
    assert_eq!(services[0].code, Some(0));
    assert_eq!(services[1].output, "to stderr\n");
    // A second PrepareFork (a child made a template in turn) does not rerun them.
    let (seq2, services) = host.prepare(2);
    assert_ne!(seq1, seq2);
    assert!(services.is_empty());
    assert_eq!(host.read(&marker), "warmed\n");
    // Both waiters are there.
    assert!(matches!(
        host.complete(3, seq1, config()),
        GuestMsg::ForkDone(_)
    ));
    assert!(matches!(
        host.complete(4, seq2, config()),
        GuestMsg::ForkDone(_)
    ));
}

#[test]
fn failing_independent_service_is_an_error_and_no_fork_point() {
    let mut host = Host::start();
    script(host.independent(), "10-ok", "echo fine");
    script(
        host.independent(),
        "20-bad",
        "echo 'cannot warm the cache' >&2; exit 3",
    );
    script(host.independent(), "30-never", "echo never");
    match host.request(1, &HostMsg::PrepareFork) {
        GuestMsg::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Io);
            assert_eq!(
                e.message,
                "independent service 20-bad exited 3: cannot warm the cache\n"
            );
        }
        other => panic!("{other:?}"),
    }
    // No waiter was registered: the first seq the agent hands out now is 1
    // (nothing consumed it) and nothing waits there.
    assert_eq!(
        error_kind(&host.complete(2, 1, config())),
        ErrorKind::NoSuchPoint
    );
    // A failure does not count as having run them: fixed, they run again.
    script(host.independent(), "20-bad", "exit 0");
    let (_, services) = host.prepare(3);
    assert_eq!(services.len(), 3);
}

#[test]
fn independent_service_timeout() {
    let mut host = Host::start_with(FakeMachine::default(), Duration::from_millis(300));
    script(host.independent(), "10-hang", "echo hanging; sleep 30");
    match host.request(1, &HostMsg::PrepareFork) {
        GuestMsg::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Io);
            assert!(
                e.message
                    .starts_with("independent service 10-hang timed out after 300ms: hanging"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn complete_fork_applies_every_step_in_order() {
    let machine = FakeMachine {
        nics: 2,
        ..FakeMachine::default()
    };
    let mut host = Host::start_with(machine, Duration::from_secs(60));
    let env_file = host.dir.path().join("env");
    let order_file = host.dir.path().join("order");
    let body = format!(
        "env | grep ^BROOD_ | sort > {}; cat {} {} > {}",
        env_file.display(),
        host.fork.machine_id_file.display(),
        host.fork.identity_file.display(),
        order_file.display()
    );
    script(host.dependent(), "10-env", &body);
    script(
        host.dependent(),
        "20-hello",
        "echo hello from $BROOD_HOSTNAME",
    );
    std::fs::create_dir_all(host.fork.machine_id_file.parent().unwrap()).unwrap();
    std::fs::write(&host.fork.machine_id_file, "template-id\n").unwrap();

    let (seq, _) = host.prepare(1);
    let mut child = config();
    child.macs.push([0x52, 0x54, 0, 1, 2, 4]);
    let report = host.fork_done(2, seq, child);
    assert_eq!(report.failed, None, "{report:?}");
    assert_eq!(
        host.machine.calls(),
        [
            "hostname web-3",
            "mac eth0 52:54:00:01:02:03",
            "mac eth1 52:54:00:01:02:04",
            "ipv4 eth0 10.0.0.3/24 via 10.0.0.1",
            "rng 64",
        ]
    );
    let names: Vec<_> = report.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["10-env", "20-hello"]);
    assert_eq!(report.services[1].output, "hello from web-3\n");

    assert_eq!(
        host.read(&host.fork.machine_id_file),
        "0123456789abcdef0123456789abcdef\n"
    );
    let mut child = config();
    child.macs.push([0x52, 0x54, 0, 1, 2, 4]);
    let json = host.read(&host.fork.child_file);
    assert_eq!(
        json,
        CONFIG_JSON.replace(
            r#""52:54:00:01:02:03""#,
            r#""52:54:00:01:02:03","52:54:00:01:02:04""#
        )
    );
    assert_eq!(host.read(&host.fork.identity_file), "dom-7");
    let mode = std::fs::metadata(&host.fork.identity_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The files were in place before the services ran.
    assert_eq!(
        host.read(&order_file),
        "0123456789abcdef0123456789abcdef\ndom-7"
    );
    assert_eq!(
        host.read(&env_file),
        "BROOD_CHILD_INDEX=3\n\
         BROOD_GATEWAY=10.0.0.1\n\
         BROOD_HOSTNAME=web-3\n\
         BROOD_IDENTITY=dom-7\n\
         BROOD_IPV4=10.0.0.3/24\n\
         BROOD_MAC=52:54:00:01:02:03\n\
         BROOD_VALUE_CLASS=dns\n\
         BROOD_VALUE_ZONE_NAME_1=a b\n"
    );

    // The waiter was consumed: a second CompleteFork in this guest is refused.
    assert_eq!(
        error_kind(&host.complete(3, seq, config())),
        ErrorKind::NoSuchPoint
    );
    assert_eq!(host.machine.calls().len(), 5);
}

#[test]
fn minimal_child_keeps_the_mac_and_drops_the_identity_file() {
    let mut host = Host::start();
    let env_file = host.dir.path().join("env");
    script(
        host.dependent(),
        "10-env",
        &format!("env | grep ^BROOD_ | sort > {}", env_file.display()),
    );
    std::fs::create_dir_all(host.fork.identity_file.parent().unwrap()).unwrap();
    std::fs::write(&host.fork.identity_file, "the template's").unwrap();
    let (seq, _) = host.prepare(1);
    let mut child = config();
    child.macs.clear();
    child.ipv4 = None;
    child.identity = None;
    child.values.clear();
    let report = host.fork_done(2, seq, child);
    assert_eq!(report.failed, None);
    assert_eq!(host.machine.calls(), ["hostname web-3", "rng 64"]);
    assert!(!host.fork.identity_file.exists());
    // BROOD_MAC is eth0's current address.
    assert_eq!(
        host.read(&env_file),
        "BROOD_CHILD_INDEX=3\nBROOD_HOSTNAME=web-3\nBROOD_MAC=52:54:00:aa:bb:cc\n"
    );
}

#[test]
fn invalid_configs_are_refused_and_the_waiter_stays() {
    let mut host = Host::start();
    let (seq, _) = host.prepare(1);
    /// Makes one field invalid.
    type Breaker = fn(&mut ChildConfig);
    let breakers: Vec<(&str, Breaker)> = vec![
        ("hostname", |c| c.hostname = "-bad".into()),
        ("machine_id", |c| c.machine_id = "XYZ".into()),
        ("entropy", |c| c.entropy = vec![1; 8]),
        ("entropy", |c| c.entropy = vec![1; 5000]),
        ("ipv4", |c| c.ipv4.as_mut().unwrap().prefix = 40),
        ("macs", |c| c.macs = vec![[0xff; 6]]),
        ("values", |c| c.values = vec![("k".into(), "v".into()); 65]),
        ("values", |c| {
            c.values = vec![("bad key".into(), "v".into())]
        }),
        ("values", |c| {
            c.values = vec![("k".into(), "v".repeat(4097))]
        }),
    ];
    for (i, (field, break_it)) in breakers.iter().enumerate() {
        let mut child = config();
        break_it(&mut child);
        match host.complete(10 + u32::try_from(i).unwrap(), seq, child) {
            GuestMsg::Error(e) => {
                assert_eq!(e.kind, ErrorKind::BadRequest, "{field}: {e}");
                assert!(e.message.contains(&format!("invalid {field}")), "{e}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let mut child = config();
    child.hostname = "-bad".into();
    match host.complete(29, seq, child) {
        GuestMsg::Error(e) => assert_eq!(
            e.message,
            "refuse the child configuration: invalid hostname: \"-bad\": \
             want 1-64 characters of [A-Za-z0-9-.], not starting with '-'"
        ),
        other => panic!("{other:?}"),
    }
    assert!(host.machine.calls().is_empty());
    assert!(!host.fork.child_file.exists());
    let report = host.fork_done(30, seq, config());
    assert_eq!(report.failed, None);
}

#[test]
fn unknown_and_wrong_kind_of_points() {
    let mut host = Host::start();
    assert_eq!(
        error_kind(&host.complete(1, 77, config())),
        ErrorKind::NoSuchPoint
    );
    // A named point that is not `fork` cannot be completed ...
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || point::announce(&socket, "trigger", None));
    let GuestMsg::Point(named) = host.unsolicited() else {
        panic!("expected a point")
    };
    assert_eq!(
        error_kind(&host.complete(2, named.seq, config())),
        ErrorKind::NoSuchPoint
    );
    // ... and a fork waiter cannot be answered.
    let (seq, _) = host.prepare(3);
    let answer = |seq| HostMsg::AnswerPoint {
        seq,
        message: b"hi".to_vec(),
    };
    match host.request(4, &answer(seq)) {
        GuestMsg::Error(e) => {
            assert_eq!(e.kind, ErrorKind::NoSuchPoint);
            assert!(e.message.contains("CompleteFork"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Both are still in place for the right request.
    assert_eq!(host.request(5, &answer(named.seq)), GuestMsg::Ok);
    assert_eq!(caller.join().unwrap().unwrap(), b"hi");
    assert!(matches!(
        host.complete(6, seq, config()),
        GuestMsg::ForkDone(_)
    ));
    assert!(host.machine.calls().len() > 1);
}

#[test]
fn failing_dependent_service_stops_the_rest() {
    let mut host = Host::start();
    let env_file = host.dir.path().join("env");
    let never = host.dir.path().join("never");
    script(
        host.dependent(),
        "10-env",
        &format!(
            "echo \"$BROOD_VALUE_CLASS $BROOD_IPV4\" > {}",
            env_file.display()
        ),
    );
    script(
        host.dependent(),
        "20-dns",
        "echo 'no zone for dom-7'; exit 4",
    );
    script(
        host.dependent(),
        "30-web",
        &format!("touch {}", never.display()),
    );
    let (seq, _) = host.prepare(1);
    let report = host.fork_done(2, seq, config());
    assert_eq!(
        report.failed.as_deref(),
        Some("dependent service 20-dns exited 4")
    );
    let names: Vec<_> = report.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["10-env", "20-dns"]);
    assert_eq!(report.services[1].code, Some(4));
    assert_eq!(report.services[1].output, "no zone for dom-7\n");
    assert_eq!(host.read(&env_file), "dns 10.0.0.3/24\n");
    assert!(!never.exists());
}

#[test]
fn failing_identity_step_is_reported_and_consumes_the_waiter() {
    let mut host = Host::start();
    let ran = host.dir.path().join("ran");
    script(
        host.dependent(),
        "10-x",
        &format!("touch {}", ran.display()),
    );
    let (seq, _) = host.prepare(1);
    let mut child = config();
    child.macs.push([0x52, 0x54, 0, 1, 2, 4]);
    let report = host.fork_done(2, seq, child);
    assert_eq!(
        report.failed.as_deref(),
        Some("set the MAC address of eth1: no network interface eth1")
    );
    assert!(report.services.is_empty());
    // Stopped at the failing step: no IPv4, no RNG, no files, no services.
    assert_eq!(
        host.machine.calls(),
        ["hostname web-3", "mac eth0 52:54:00:01:02:03"]
    );
    assert!(!host.fork.machine_id_file.exists() && !ran.exists());
    assert_eq!(
        error_kind(&host.complete(3, seq, config())),
        ErrorKind::NoSuchPoint
    );
}

#[test]
fn local_fork_point_caller_gets_the_json() {
    let mut host = Host::start();
    let marker = host.dir.path().join("warm");
    script(
        host.independent(),
        "10-warm",
        &format!("touch {}", marker.display()),
    );
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || point::fork_point(&socket, None));
    let seq = match host.unsolicited() {
        GuestMsg::Point(p) => {
            assert_eq!(p.name, FORK_POINT);
            p.seq
        }
        other => panic!("{other:?}"),
    };
    // The independent services ran before the point was announced.
    assert!(marker.exists());
    let report = host.fork_done(1, seq, config());
    assert_eq!(report.failed, None);
    let json = caller.join().unwrap().unwrap();
    assert_eq!(String::from_utf8(json).unwrap(), CONFIG_JSON);
    assert_eq!(
        error_kind(&host.complete(2, seq, config())),
        ErrorKind::NoSuchPoint
    );
}

#[test]
fn local_fork_point_caller_hears_of_failures() {
    let mut host = Host::start();
    script(host.dependent(), "10-dns", "exit 2");
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || point::fork_point(&socket, None));
    let GuestMsg::Point(p) = host.unsolicited() else {
        panic!("expected a point")
    };
    let report = host.fork_done(1, p.seq, config());
    assert_eq!(
        report.failed.as_deref(),
        Some("dependent service 10-dns exited 2")
    );
    match caller.join().unwrap() {
        Err(PointError::ForkFailed { reason }) => {
            assert_eq!(reason, "dependent service 10-dns exited 2");
        }
        other => panic!("{other:?}"),
    }

    // A failing independent service refuses the caller; no point is
    // announced. (A fresh agent: this one ran its independent services.)
    let mut host = Host::start();
    script(host.independent(), "10-bad", "echo broken; exit 1");
    let err = point::fork_point(&host.socket, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent refused: independent service 10-bad exited 1: broken\n"
    );
    assert!(matches!(host.request(2, &HostMsg::Info), GuestMsg::Info(_)));
    assert!(host.unsolicited.is_empty() && host.stash.is_empty());
}

#[test]
fn announced_fork_point_can_be_completed() {
    // `brood-agent announce fork` (the older way) waits at a point named
    // `fork`, which CompleteFork releases with the JSON as the answer.
    let mut host = Host::start();
    let socket = host.socket.clone();
    let caller = std::thread::spawn(move || point::announce(&socket, FORK_POINT, None));
    let GuestMsg::Point(p) = host.unsolicited() else {
        panic!("expected a point")
    };
    let report = host.fork_done(1, p.seq, config());
    assert_eq!(report.failed, None);
    assert_eq!(caller.join().unwrap().unwrap(), CONFIG_JSON.as_bytes());
}

#[test]
fn fork_point_command_prints_the_json_and_exits_by_outcome() {
    let mut host = Host::start();
    let run = |socket: &Path, timeout: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_brood-agent"));
        cmd.arg("fork-point").arg("--socket").arg(socket);
        if let Some(t) = timeout {
            cmd.args(["--timeout", t]);
        }
        cmd.output().unwrap()
    };
    let socket = host.socket.clone();
    let child = std::thread::spawn(move || run(&socket, Some("60")));
    let GuestMsg::Point(p) = host.unsolicited() else {
        panic!("expected a point")
    };
    host.fork_done(1, p.seq, config());
    let out = child.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), CONFIG_JSON);

    script(host.dependent(), "10-dns", "exit 5");
    let socket = host.socket.clone();
    let child = std::thread::spawn(move || run(&socket, None));
    let GuestMsg::Point(p) = host.unsolicited() else {
        panic!("expected a point")
    };
    host.fork_done(2, p.seq, config());
    let out = child.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "brood-agent fork-point: the child is not ready: dependent service 10-dns exited 5\n"
    );

    // Nobody completes it: the timeout's exit status.
    let out = run(&host.socket, Some("0.2"));
    assert_eq!(out.status.code(), Some(124), "{out:?}");
}

#[test]
fn warm_fork_rehearses_without_consuming_the_point_or_changing_the_guest() {
    let machine = FakeMachine {
        nics: 1,
        ..FakeMachine::default()
    };
    let mut host = Host::start_with(machine, Duration::from_secs(60));
    let marker = host.dir.path().join("ran");
    script(
        host.dependent(),
        "10-never",
        &format!("touch {}", marker.display()),
    );
    std::fs::create_dir_all(host.fork.machine_id_file.parent().unwrap()).unwrap();
    std::fs::write(
        &host.fork.machine_id_file,
        "abcdefabcdefabcdefabcdefabcdefab\n",
    )
    .unwrap();
    let (seq, _) = host.prepare(1);
    assert_eq!(host.request(2, &HostMsg::WarmFork { seq }), GuestMsg::Ok);
    assert_eq!(host.request(3, &HostMsg::WarmFork { seq }), GuestMsg::Ok);
    // The same identity again: the current hostname and MAC, the time, entropy.
    let calls = host.machine.calls();
    assert!(calls.iter().any(|c| c.starts_with("clock ")), "{calls:?}");
    assert!(
        calls.contains(&"hostname template".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"mac eth0 52:54:00:aa:bb:cc".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"rng 32".to_string()), "{calls:?}");
    // No service ran, the real files are as they were, no scratch file is left.
    assert!(!marker.exists());
    assert_eq!(
        host.read(&host.fork.machine_id_file),
        "abcdefabcdefabcdefabcdefabcdefab\n"
    );
    assert!(!host.fork.child_file.exists());
    let leftovers: Vec<_> = std::fs::read_dir(host.fork.machine_id_file.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".warm"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The point is still there for the real thing.
    let report = host.fork_done(4, seq, config());
    assert_eq!(report.failed, None, "{report:?}");
    assert!(marker.exists());
    assert!(
        matches!(host.request(5, &HostMsg::WarmFork { seq }), GuestMsg::Error(e) if e.kind == ErrorKind::NoSuchPoint)
    );
}
