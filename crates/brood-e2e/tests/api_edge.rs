//! broodd's network edge as the real binaries see it, without booting VMs:
//! token files it refuses, the `Bearer` scheme in any case, half-sent
//! requests dropped and a connection cap on the socket and on TCP, TCP
//! served with TLS (plain HTTP only on loopback with `--insecure-tcp`), the
//! listen record, and `brood` pinning the certificate broodd recorded.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, brood_bin, data_dir, wait_until};
use serde_json::Value;

/// Far longer than any timeout of broodd's edge: a read still waiting
/// then means broodd kept a connection it should have closed.
const DEADLINE: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run brood");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// broodd's listen record.
fn listen_record(b: &Broodd) -> Value {
    let text = std::fs::read_to_string(b.data.join("listen.json")).expect("listen.json");
    serde_json::from_str(&text).expect("listen.json is JSON")
}

/// The first TCP URL in broodd's listen record.
fn tcp_url(b: &Broodd) -> String {
    listen_record(b)["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["url"].as_str())
        .find(|u| u.starts_with("http"))
        .expect("a TCP endpoint")
        .to_string()
}

/// Reads until the peer closes; false if it did not within [`DEADLINE`].
fn closed_by_server(s: &mut impl Read) -> (bool, String) {
    let mut buf = Vec::new();
    let closed = match s.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (closed, String::from_utf8_lossy(&buf).into_owned())
}

/// One request over the socket with `Connection: close`; the raw answer.
fn raw(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let (closed, text) = closed_by_server(&mut s);
    assert!(closed, "broodd kept the connection: {text}");
    text
}

/// Starts broodd on `data` and waits for it to exit: its status and log,
/// or `None` (after killing it) if it is still running at the deadline.
fn broodd_exits(env: &TestEnv, data: &Path, extra: &[&str]) -> Option<(i32, String)> {
    let mut child = Command::new(brood_bin().with_file_name("broodd"))
        .arg("--data-dir")
        .arg(data)
        .arg("--run-dir")
        .arg(env.run_root().join("vms"))
        .arg("--image")
        .arg(data_dir().join("images/default"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start broodd");
    let exited = wait_until(DEADLINE, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let out = child.wait_with_output().expect("broodd's output");
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn broodd_refuses_a_weak_or_open_token_file() {
    let env = TestEnv::new();
    let strong = "0123456789abcdef".repeat(4);
    for (i, (token, mode, says)) in [
        (strong.as_str(), 0o644, "chmod 600"),
        (strong.as_str(), 0o660, "chmod 600"),
        ("test-token", 0o600, "weak"),
        ("0123456789abcdef", 0o600, "32 hex"),
    ]
    .into_iter()
    .enumerate()
    {
        let data = env.run_root().join(format!("data{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let file = data.join("token");
        std::fs::write(&file, token).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let Some((code, log)) = broodd_exits(&env, &data, &[]) else {
            panic!("broodd served with token {token:?} mode {mode:o}");
        };
        assert_ne!(code, 0, "{log}");
        assert!(log.contains(says), "token {token:?} mode {mode:o}: {log}");
        assert!(log.contains(&file.display().to_string()), "{log}");
        assert!(!data.join("broodd.sock").exists());
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let answer = raw(
            &b.socket(),
            &format!(
                "GET /v1/host HTTP/1.1\r\nHost: b\r\nAuthorization: {scheme} {}\r\n\
                 Connection: close\r\n\r\n",
                b.token()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
    let answer = raw(
        &b.socket(),
        "GET /v1/host HTTP/1.1\r\nHost: b\r\nAuthorization: bearer nope\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[test]
fn a_half_sent_request_on_the_socket_is_dropped() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    let mut u = UnixStream::connect(b.socket()).unwrap();
    u.set_read_timeout(Some(DEADLINE)).unwrap();
    u.write_all(b"GET /v1/host HTTP/1.1\r\nHost: b\r\n")
        .unwrap();
    let (closed, text) = closed_by_server(&mut u);
    assert!(
        closed,
        "broodd held a half-sent request for {DEADLINE:?}: {text}"
    );
    let (status, _) = b.call("GET", "/v1/host", None);
    assert_eq!(status, 200);
}

#[test]
fn half_sent_requests_are_dropped_on_the_socket_and_on_tcp() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--listen", "127.0.0.1:0", "--insecure-tcp"]);
    let url = tcp_url(&b);
    let tcp = url.strip_prefix("http://").expect("plain HTTP on loopback");
    assert!(tcp.starts_with("127.0.0.1:"), "{url}");
    // A slowloris: many connections that never finish their headers.
    let mut unix = Vec::new();
    let mut tcps = Vec::new();
    for i in 0..150 {
        let mut u = UnixStream::connect(b.socket()).unwrap();
        u.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = u.write_all(format!("GET /v1/host HTTP/1.1\r\nHost: b\r\nX-{i}: ").as_bytes());
        unix.push(u);
        let mut t = std::net::TcpStream::connect(tcp).unwrap();
        t.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = t.write_all(b"GET /v1/host HTTP/1.1\r\n");
        tcps.push(t);
    }
    for (i, u) in unix.iter_mut().enumerate() {
        let (closed, text) = closed_by_server(u);
        assert!(closed, "socket connection {i} still open: {text}");
    }
    for (i, t) in tcps.iter_mut().enumerate() {
        let (closed, text) = closed_by_server(t);
        assert!(closed, "TCP connection {i} still open: {text}");
    }
    let (status, _) = b.call("GET", "/v1/host", None);
    assert_eq!(status, 200);
    // The CLI sends the data directory's token to the address broodd recorded.
    let (code, out, err) = run(b
        .brood()
        .args(["--host", &url, "host", "show", "-o", "json"]));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn connections_over_the_cap_are_closed() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--max-connections", "4"]);
    // Four event streams hold every slot.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = UnixStream::connect(b.socket()).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {}\r\n\r\n",
                b.token()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(s);
    }
    for _ in 0..3 {
        let mut over = UnixStream::connect(b.socket()).unwrap();
        over.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = over.write_all(b"GET /v1/host HTTP/1.1\r\nHost: b\r\n\r\n");
        let (closed, text) = closed_by_server(&mut over);
        assert!(closed, "a connection over the cap was kept: {text}");
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "{text}"
        );
    }
    drop(streams);
    // Once the streams are gone (broodd notices at its next keep-alive),
    // new connections are served again.
    let served = wait_until(DEADLINE, || b.call("GET", "/v1/host", None).0 == 200);
    assert!(
        served,
        "broodd did not serve again after the streams closed"
    );
}

#[test]
fn tcp_is_tls_and_the_cli_pins_the_recorded_certificate() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--listen", "127.0.0.1:0"]);
    let record = listen_record(&b);
    let url = tcp_url(&b);
    assert!(url.starts_with("https://127.0.0.1:"), "{record}");
    let port = url.rsplit(':').next().unwrap().to_string();
    let key = b.data.join("tls-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The data directory's token and pin: any name that reaches broodd works.
    for host in [url.clone(), format!("https://localhost:{port}")] {
        let (code, out, err) = run(b
            .brood()
            .args(["--host", &host, "host", "show", "-o", "json"]));
        assert_eq!(code, 0, "{host}: {out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["data_dir"].as_str(), Some(b.data.to_str().unwrap()));
    }
    // Plain HTTP to the TLS port: the token is not offered to an address
    // broodd did not record as plain, and an explicit one gets no answer.
    let plain = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run(b.brood().args(["--host", &plain, "host", "show"]));
    assert_eq!(code, 125);
    assert!(err.contains("not sending the token"), "{err}");

    // Elsewhere, with the certificate passed by hand.
    let elsewhere = env.run_root().join("client");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cert = b.data.join("tls-cert.pem");
    let (code, out, err) = run(Command::new(brood_bin())
        .arg("--data-dir")
        .arg(&elsewhere)
        .args(["--host", &url, "--ca-cert"])
        .arg(&cert)
        .args(["host", "show"])
        .env("BROOD_TOKEN", b.token())
        .env_remove("BROOD_HOST"));
    assert_eq!(code, 0, "{out}{err}");
    // Without one, brood says how to give it.
    let (code, _, err) = run(Command::new(brood_bin())
        .arg("--data-dir")
        .arg(&elsewhere)
        .args(["--host", &url, "host", "show"])
        .env("BROOD_TOKEN", b.token())
        .env_remove("BROOD_HOST")
        .env_remove("BROOD_CA_CERT"));
    assert_eq!(code, 125);
    assert!(err.contains("--ca-cert"), "{err}");
    // A certificate that is not broodd's is refused in the handshake.
    let other_cert = elsewhere.join("other-cert.pem");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&other_cert, other.cert.pem()).unwrap();
    let (code, _, err) = run(Command::new(brood_bin())
        .arg("--data-dir")
        .arg(&elsewhere)
        .args(["--host", &url, "--ca-cert"])
        .arg(&other_cert)
        .args(["host", "show"])
        .env("BROOD_TOKEN", b.token())
        .env_remove("BROOD_HOST"));
    assert_eq!(code, 125);
    assert!(
        err.contains("the server's certificate") && err.contains("is not in"),
        "{err}"
    );

    // A plain HTTP request to the TLS port gets no HTTP answer.
    let mut t = std::net::TcpStream::connect(url.strip_prefix("https://").unwrap()).unwrap();
    t.set_read_timeout(Some(DEADLINE)).unwrap();
    t.write_all(b"GET /v1/host HTTP/1.1\r\nHost: b\r\n\r\n")
        .unwrap();
    let (closed, text) = closed_by_server(&mut t);
    assert!(closed && !text.contains("200"), "{text}");

    // The certificate is kept across restarts; the record goes with broodd.
    let fingerprint = record["endpoints"][0]["cert_sha256"].clone();
    b.stop();
    assert!(!b.data.join("listen.json").exists());
    b.restart();
    assert_eq!(
        listen_record(&b)["endpoints"][0]["cert_sha256"],
        fingerprint
    );
}

#[test]
fn plain_tcp_off_loopback_is_refused() {
    let env = TestEnv::new();
    let data = env.run_root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some((code, log)) = broodd_exits(&env, &data, &["--listen", "0.0.0.0:0", "--insecure-tcp"])
    else {
        panic!("broodd served plain HTTP on 0.0.0.0");
    };
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("loopback") && log.contains("--insecure-tcp"),
        "{log}"
    );
    assert!(!data.join("broodd.sock").exists());
}
