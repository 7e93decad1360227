#![allow(clippy::tests_outside_test_module)]
//! Runs the real `brood` binary against plain listeners the test owns: the
//! data directory's token goes only to that directory's broodd, a token
//! given explicitly goes where the user says, weak or open token files are
//! refused, and a closed output pipe ends `brood` quietly.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A plain TCP listener that records every request head it gets and
/// answers `GET /v1/ledger/log` with one entry (anything else with a 404).
struct Recorder {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let (status, body) = if head.starts_with("GET /v1/ledger/log") {
                        (
                            "200 OK",
                            r#"{"items":[{"id":1,"time":"2025-01-01T00:00:00Z","actor":"test","reason":"start web","changes":[]}],"next":null}"#,
                        )
                    } else {
                        (
                            "404 Not Found",
                            r#"{"error":{"code":"not_found","message":"no such route"}}"#,
                        )
                    };
                    seen.lock().unwrap().push(head);
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Whether any request it got carried an `Authorization` header.
    fn saw_authorization(&self) -> bool {
        self.heads()
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("\r\nauthorization:"))
    }
}

/// A data directory holding `token` with `mode`.
fn data_dir(token: &str, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(brood_api::TOKEN_FILE);
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn command(data: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"));
    c.arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("BROOD_HOST")
        .env_remove("BROOD_TOKEN")
        .env_remove("BROOD_DATA_DIR")
        .env_remove("BROOD_CA_CERT")
        .stdin(Stdio::null());
    c
}

/// Runs brood, killed if it takes longer than a generous minute.
async fn run(mut c: tokio::process::Command) -> Output {
    c.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("brood did not finish")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_token_is_not_sent_to_another_listener() {
    let rec = Recorder::start().await;
    let data = data_dir(TOKEN, 0o600);
    let out = run(command(
        data.path(),
        &["--host", &rec.url(), "ledger", "log"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("not sending the token"), "{err}");
    assert!(
        err.contains("--token") && err.contains("BROOD_TOKEN"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let https = format!("https://{}", rec.addr);
    let out = run(command(data.path(), &["--host", &https, "ledger", "log"])).await;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--ca-cert"),
        "{}",
        text(&out.stderr)
    );

    let other = data.path().join("elsewhere.sock");
    let out = run(command(
        data.path(),
        &["--host", other.to_str().unwrap(), "ledger", "log"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("not sending the token"));

    assert!(!rec.saw_authorization(), "{:?}", rec.heads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_token_goes_where_the_user_says() {
    let rec = Recorder::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut c = command(data.path(), &["--host", &rec.url(), "ledger", "log"]);
    c.env("BROOD_TOKEN", "given-by-the-user");
    let out = run(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("start web"),
        "{}",
        text(&out.stdout)
    );
    let heads = rec.heads().join("").to_ascii_lowercase();
    assert!(
        heads.contains("authorization: bearer given-by-the-user"),
        "{heads}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_plain_address_gets_the_token_only_while_its_broodd_runs() {
    let rec = Recorder::start().await;
    let data = data_dir(TOKEN, 0o600);
    let record = data.path().join(brood_api::LISTEN_FILE);
    std::fs::write(
        &record,
        serde_json::json!({"endpoints": [{"url": rec.url()}]}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();

    // No broodd holds the data directory's lock: the address may be anyone's.
    let out = run(command(
        data.path(),
        &["--host", &rec.url(), "ledger", "log"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(!rec.saw_authorization(), "{:?}", rec.heads());

    let lock = std::fs::File::create(data.path().join(brood_api::LOCK_FILE)).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let out = run(command(
        data.path(),
        &["--host", &rec.url(), "ledger", "log"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let heads = rec.heads().join("").to_ascii_lowercase();
    assert!(
        heads.contains(&format!("authorization: bearer {TOKEN}")),
        "{heads}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_or_open_token_files_are_refused() {
    let open = data_dir(TOKEN, 0o644);
    let out = run(command(open.path(), &["ledger", "log"])).await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    let file = open.path().join(brood_api::TOKEN_FILE);
    assert!(
        err.contains(&format!("chmod 600 {}", file.display())),
        "{err}"
    );

    let weak = data_dir("test-token", 0o600);
    let out = run(command(weak.path(), &["ledger", "log"])).await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("weak") && err.contains("32 hex"), "{err}");

    if nix::unistd::geteuid().is_root() {
        let theirs = data_dir(TOKEN, 0o600);
        let file = theirs.path().join(brood_api::TOKEN_FILE);
        nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let out = run(command(theirs.path(), &["ledger", "log"])).await;
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains("owned by uid 65534"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A pipe whose reading end is already closed (close-on-exec, so no
/// brood another test spawns meanwhile holds the reading end open).
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(read);
    write
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_pipe_ends_brood_quietly() {
    let rec = Recorder::start().await;
    let data = tempfile::tempdir().unwrap();
    let url = rec.url();
    for args in [&["ledger", "log"][..], &["ledger", "log", "-o", "json"]] {
        let mut all = vec!["--host", url.as_str(), "--token", TOKEN];
        all.extend_from_slice(args);
        let mut c = command(data.path(), &all);
        // Not `output()`: tokio's makes stdout a fresh pipe again.
        c.stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = c.spawn().unwrap();
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("brood did not finish")
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
