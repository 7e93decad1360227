#![allow(clippy::tests_outside_test_module)]
//! Runs the real `brood` binary against a fake broodd: an axum server on
//! the data directory's unix socket that checks the bearer token, records
//! each request and answers with canned bodies. `edge.rs` covers where the
//! token may go and the output pipe.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use brood_api::{
    ChildStatus, ErrorBody, ErrorCode, ErrorDetail, ExecResponse, ForkChild, ForkResponse,
    IdentityPool, IdentityPoolItem, IdentityPoolKind, Partition, PartitionConfig, PartitionList,
    Problem, RunState, Stage, Template, TemplateList, VerifyReport,
};
use serde_json::{Value, json};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    body: Value,
}

/// A fake broodd serving on `dir/broodd.sock` and on a loopback TCP port,
/// with its token in `dir/token`.
struct Fake {
    dir: tempfile::TempDir,
    tcp: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join(brood_api::TOKEN_FILE);
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let listener =
            tokio::net::UnixListener::bind(dir.path().join(brood_api::SOCKET_FILE)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(handle).with_state(seen.clone());
        let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tcp_listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, app.clone()).into_future());
        tokio::spawn(axum::serve(tcp_listener, app).into_future());
        Self { dir, tcp, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(State(seen): State<Arc<Mutex<Vec<Seen>>>>, req: Request) -> Response {
    let auth = req.headers().get(header::AUTHORIZATION).cloned();
    if auth.as_ref().and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "bad token",
        );
    }
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let bytes = to_bytes(req.into_body(), 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        uri: uri.clone(),
        body: body.clone(),
    });
    match (method.as_str(), uri.as_str()) {
        ("POST", "/v1/partitions") => {
            let name = body["name"].as_str().unwrap_or_default();
            let mut p = partition(name, Some(4242));
            p.configs = serde_json::from_value(body["configs"].clone()).unwrap();
            (StatusCode::CREATED, axum::Json(p)).into_response()
        }
        ("GET", "/v1/partitions?limit=100") => axum::Json(PartitionList {
            items: vec![partition("alpha", Some(11))],
            next: Some("alpha".into()),
        })
        .into_response(),
        ("GET", "/v1/partitions?limit=100&after=alpha") => axum::Json(PartitionList {
            items: vec![partition("beta", None)],
            next: None,
        })
        .into_response(),
        ("GET", "/v1/partitions/web") => axum::Json(partition("web", Some(7))).into_response(),
        ("GET", "/v1/partitions/base-2") => {
            let mut p = partition("base-2", Some(8));
            p.parent = Some("base".into());
            p.fork = Some(fork_child("base", 2, &body, None));
            axum::Json(p).into_response()
        }
        ("POST", "/v1/templates") => {
            let name = body["name"]
                .as_str()
                .or(body["vm"].as_str())
                .unwrap_or_default();
            (StatusCode::CREATED, axum::Json(template(name))).into_response()
        }
        ("GET", "/v1/templates") => axum::Json(TemplateList {
            items: vec![template("base")],
        })
        .into_response(),
        ("DELETE", "/v1/templates/base?cascade=false") => error(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "template base has 2 live children; pass --cascade",
        ),
        ("DELETE", "/v1/templates/base?cascade=true") => StatusCode::NO_CONTENT.into_response(),
        ("POST", "/v1/templates/base/fork") => fork(&body, "base", None),
        ("POST", "/v1/templates/flaky/fork") => fork(&body, "flaky", Some(2)),
        ("POST", "/v1/identity-pools") => {
            (StatusCode::CREATED, axum::Json(created_pool(&body))).into_response()
        }
        ("GET", "/v1/identity-pools/lan") => axum::Json(lan_pool()).into_response(),
        ("POST", "/v1/partitions/web/exec") => axum::Json(ExecResponse {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            // Not UTF-8 on purpose: brood must pass the bytes through.
            stdout_base64: "/2hpCg==".into(), // 0xff "hi\n"
            stderr_base64: "b29wcwo=".into(), // "oops\n"
            stdout_truncated: false,
            stderr_truncated: false,
        })
        .into_response(),
        ("POST", "/v1/partitions/web/exec?stream=true") => (
            [("content-type", "application/x-ndjson")],
            concat!(
                "{\"stdout_base64\":\"/2hpCg==\"}\n",
                "{\"stderr_base64\":\"b29wcwo=\"}\n",
                "{\"exit_code\":3,\"signal\":null,\"timed_out\":false,",
                "\"stdout_truncated\":false,\"stderr_truncated\":false}\n",
            ),
        )
            .into_response(),
        ("DELETE", "/v1/partitions/web?force=false") => error(
            StatusCode::CONFLICT,
            ErrorCode::InvalidTransition,
            "partition web is running; stop it first or pass --force",
        ),
        ("GET", "/v1/ledger/verify") => axum::Json(VerifyReport {
            ok: false,
            problems: vec![Problem {
                code: "sum_mismatch".into(),
                message: "memory holdings sum to 9000 MiB, capacity is 8192 MiB".into(),
            }],
            checked: BTreeMap::from([("sums".to_string(), 4)]),
        })
        .into_response(),
        ("GET", "/v1/events") => {
            let sse = concat!(
                ": keep-alive\n\n",
                "data: {\"seq\":1,\"time\":\"2025-01-01T00:00:00Z\",\"kind\":{\"type\":\"partition\",",
                "\"name\":\"web\",\"uuid\":\"00000000-0000-0000-0000-000000000001\",",
                "\"stage\":\"operating\",\"run_state\":\"running\",\"detail\":null}}\n\n",
                "event: ledger\r\ndata: {\"seq\":2,\"time\":\"2025-01-01T00:00:01Z\",",
                "\"kind\":{\"type\":\"ledger\",\"tx\":9,\"reason\":\"start web\"}}\r\n\r\n",
            );
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from(sse),
            )
                .into_response()
        }
        ("GET", "/v1/ledger/log?limit=20") => axum::Json(json!({
            "items": [{"id": 1, "time": "2025-01-01T00:00:00Z", "actor": "test",
                       "reason": "start web", "changes": []}],
            "next": null,
        }))
        .into_response(),
        _ => error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route"),
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

fn partition(name: &str, pid: Option<u32>) -> Partition {
    Partition {
        name: name.into(),
        uuid: uuid::Uuid::from_u128(1),
        stage: Stage::Operating,
        run_state: if pid.is_some() {
            RunState::Running
        } else {
            RunState::Stopped
        },
        active_config: "default".into(),
        configs: BTreeMap::from([("default".to_string(), PartitionConfig::default())]),
        pid,
        disks: Vec::new(),
        nics: Vec::new(),
        pending_change: None,
        last_exit: None,
        restart_count: 0,
        pending_op: None,
        parent: None,
        fork: None,
        created_at: "2025-01-01T00:00:00Z".into(),
        updated_at: "2025-01-01T00:00:00Z".into(),
        publish: Vec::new(),
    }
}

fn template(name: &str) -> Template {
    Template {
        name: name.into(),
        uuid: uuid::Uuid::from_u128(2),
        parent: None,
        memory_mib: 512,
        vcpus: 2,
        state_bytes: 1_048_576,
        fork_point: 1,
        children: vec![format!("{name}-1"), format!("{name}-2")],
        derived: Vec::new(),
        warm_ready: 2,
        warm: 4,
        disks: Vec::new(),
        created_at: "2025-01-01T00:00:00Z".into(),
        persistent: false,
        downtime_ms: None,
    }
}

/// Child `index` of `template` as a fork request `req` makes it; it fails
/// with `error` when given.
fn fork_child(template: &str, index: u32, req: &Value, error: Option<&str>) -> ForkChild {
    ForkChild {
        name: format!("{template}-{index}"),
        uuid: uuid::Uuid::from_u128(u128::from(index) + 100),
        index,
        status: if error.is_some() {
            ChildStatus::Failed
        } else {
            ChildStatus::Ready
        },
        error: error.map(Into::into),
        mac: Some(format!("52:54:00:00:00:{index:02x}")),
        ipv4: req["ip_pool"]
            .as_str()
            .map(|_| format!("10.0.0.{}/24", 9 + index)),
        identity: req["identity_pool"]
            .as_str()
            .map(|_| format!("host-{index}")),
        persistent: req["persistent"].as_bool().unwrap_or(false),
        running_ms: Some(35.0),
        ready_ms: Some(80.0),
        charge_mib: None,
    }
}

/// Answers a fork request; child `failing` (when given) fails.
fn fork(req: &Value, template: &str, failing: Option<u32>) -> Response {
    let count = req["count"].as_u64().unwrap_or(1);
    let children = (1..=u32::try_from(count).unwrap())
        .map(|i| {
            let error = (Some(i) == failing).then_some("service 20-join: exit 1");
            fork_child(template, i, req, error)
        })
        .collect();
    (StatusCode::CREATED, axum::Json(ForkResponse { children })).into_response()
}

/// The pool a create request describes, every value free.
fn created_pool(req: &Value) -> IdentityPool {
    let kind: IdentityPoolKind = serde_json::from_value(req["kind"].clone()).unwrap();
    let size = match req["range"].as_str() {
        Some(range) => {
            let (first, last) = range.split_once('-').unwrap();
            let ip = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
            u64::from(ip(last) - ip(first) + 1)
        }
        None => req["values"].as_array().unwrap().len() as u64,
    };
    IdentityPool {
        name: req["name"].as_str().unwrap().into(),
        kind,
        size,
        free: size,
        prefix: req["prefix"].as_u64().map(|p| u8::try_from(p).unwrap()),
        gateway: req["gateway"].as_str().map(Into::into),
        items: Vec::new(),
    }
}

fn lan_pool() -> IdentityPool {
    IdentityPool {
        name: "lan".into(),
        kind: IdentityPoolKind::Ipv4,
        size: 3,
        free: 2,
        prefix: Some(24),
        gateway: Some("10.0.0.1".into()),
        items: vec![
            IdentityPoolItem {
                value: "10.0.0.10".into(),
                holder: Some("base-1".into()),
            },
            IdentityPoolItem {
                value: "10.0.0.11".into(),
                holder: None,
            },
            IdentityPoolItem {
                value: "10.0.0.12".into(),
                holder: None,
            },
        ],
    }
}

/// Runs `brood --data-dir DIR ARGS...` with no brood variables inherited.
async fn brood(data_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("BROOD_HOST")
        .env_remove("BROOD_TOKEN")
        .env_remove("BROOD_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_create_sends_a_define_request() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &[
            "vm",
            "create",
            "web",
            "--memory",
            "512",
            "--vcpus",
            "2",
            "--disk",
            "root:10",
            "--disk",
            "data:2",
            "--nic",
            "br0",
            "--restart",
            "on-failure",
            "--cpu-cap",
            "150",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "created web: operating, running (pid 4242), config default\n"
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(
        seen[0].body,
        json!({
            "name": "web",
            "configs": {"default": {
                "vcpus": 2,
                "memory_mib": 512,
                "disks": [{"name": "root", "size_gib": 10}, {"name": "data", "size_gib": 2}],
                "nics": [{"network": "br0", "mac": null}],
                "zones": [],
                "policy": {
                    "cpu_weight": null,
                    "cpu_cap_pct": 150,
                    "memory_limit_mib": null,
                    "priority": 0,
                    "restart": "on_failure",
                    "autostart": false
                },
                "cmdline": ""
            }},
            "active_config": "default",
            "start": true
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_list_pages_through_next() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["vm", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "NAME   STAGE      STATE    VCPUS   MEMORY  PID  ADDRESS\n\
         alpha  operating  running      1  256 MiB  11   -\n\
         beta   operating  stopped      1  256 MiB  -    -\n"
    );
    let uris: Vec<String> = fake.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        uris,
        [
            "/v1/partitions?limit=100",
            "/v1/partitions?limit=100&after=alpha"
        ]
    );

    let out = brood(fake.dir.path(), &["vm", "list", "-o", "json"]).await;
    let list: PartitionList = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.items.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(list.next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_show_json_is_the_partition() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["vm", "show", "web", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let p: Partition = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p, partition("web", Some(7)));
    assert!(
        text(&out.stdout).contains("\n  \"name\": \"web\""),
        "not pretty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_exec_passes_bytes_and_exit_code() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &[
            "vm",
            "exec",
            "web",
            "echo hi; exit 3",
            "--timeout",
            "5",
            "--env",
            "A=1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"\xffhi\n");
    assert_eq!(out.stderr, b"oops\n");
    let seen = fake.seen();
    assert_eq!(
        seen[0].body,
        json!({
            "command": "echo hi; exit 3",
            "argv": null,
            "env": {"A": "1"},
            "stdin_base64": null,
            "timeout_ms": 5000,
            "ready_timeout_ms": null
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_error_is_one_line_and_125() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["vm", "delete", "web"]).await;
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        text(&out.stderr),
        "brood: error: partition web is running; stop it first or pass --force (invalid_transition)\n"
    );
    assert!(out.stdout.is_empty());

    let out = brood(fake.dir.path(), &["--token", "wrong", "host", "show"]).await;
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        text(&out.stderr),
        "brood: error: bad token (unauthorized)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_or_socket_says_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let out = brood(empty.path(), &["vm", "list"]).await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    let token = empty.path().join("token");
    assert!(
        err.starts_with("brood: error: read broodd's token "),
        "{err}"
    );
    assert!(err.contains(&token.display().to_string()), "{err}");
    assert!(err.contains("BROOD_TOKEN"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = brood(empty.path(), &["vm", "list"]).await;
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    let sock = empty.path().join("broodd.sock");
    assert!(
        err.starts_with(&format!(
            "brood: error: cannot connect to broodd at unix socket {}",
            sock.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("broodd --data-dir {}", empty.path().display())),
        "{err}"
    );
    assert!(err.contains("--host"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_exits_1_when_not_ok() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["ledger", "verify"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "sum_mismatch: memory holdings sum to 9000 MiB, capacity is 8192 MiB\n"
    );
    let out = brood(fake.dir.path(), &["ledger", "verify", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let report: VerifyReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_flag_and_env_pick_the_socket() {
    let fake = Fake::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let sock = fake.dir.path().join(brood_api::SOCKET_FILE);
    let out = brood(
        elsewhere.path(),
        &[
            "--host",
            sock.to_str().unwrap(),
            "--token",
            TOKEN,
            "ledger",
            "log",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"))
        .args(["--data-dir"])
        .arg(elsewhere.path())
        .args(["ledger", "log"])
        .env("BROOD_HOST", &sock)
        .env("BROOD_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_host_reaches_broodd_over_tcp() {
    let fake = Fake::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let host = format!("http://{}", fake.tcp);
    let out = brood(
        elsewhere.path(),
        &["--host", &host, "--token", TOKEN, "vm", "show", "web"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("name "),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_print_one_line_each() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["events", "--no-reconnect"]).await;
    assert_eq!(
        text(&out.stdout),
        "2025-01-01T00:00:00Z  #1  web: operating, running\n\
         2025-01-01T00:00:01Z  #2  ledger tx 9: start web\n"
    );
    // The fake closes the stream after two events, as a stopping broodd would.
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("ended the event stream"));

    let out = brood(fake.dir.path(), &["events", "--no-reconnect", "-o", "json"]).await;
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["kind"]["tx"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_create_sends_the_request() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &["template", "create", "web", "--name", "base", "--warm", "4"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "template base from web: 1048576 bytes of state, memory 512 MiB\n"
    );
    let out = brood(
        fake.dir.path(),
        &["template", "create", "web", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t: Template = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t, template("web"));

    let seen = fake.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/v1/templates")
    );
    assert_eq!(
        seen[0].body,
        json!({"vm": "web", "name": "base", "warm": 4})
    );
    assert_eq!(
        seen[1].body,
        json!({"vm": "web", "name": null, "warm": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_list_and_delete() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["template", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "NAME   MEMORY  VCPUS  CHILDREN  WARM  PARENT\n\
         base  512 MiB      2         2   2/4  -\n"
    );

    let out = brood(fake.dir.path(), &["template", "delete", "base"]).await;
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        text(&out.stderr),
        "brood: error: template base has 2 live children; pass --cascade (conflict)\n"
    );
    let out = brood(
        fake.dir.path(),
        &["template", "delete", "base", "--cascade"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "deleted template base\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_prints_one_name_a_line() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &[
            "fork",
            "base",
            "-n",
            "3",
            "--identity-pool",
            "hosts",
            "--set",
            "role=worker",
            "--set",
            "cluster.id=7",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "base-1\nbase-2\nbase-3\n");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = brood(
        fake.dir.path(),
        &[
            "fork",
            "base",
            "--ip-pool",
            "lan",
            "--persistent",
            "--no-wait",
            "--charge",
            "64",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "base-1\n");

    let seen = fake.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/v1/templates/base/fork")
    );
    assert_eq!(
        seen[0].body,
        json!({
            "count": 3,
            "identity_pool": "hosts",
            "ip_pool": null,
            "values": {"cluster.id": "7", "role": "worker"},
            "persistent": false,
            "wait": true,
            "charge_mib": null
        })
    );
    assert_eq!(
        seen[1].body,
        json!({
            "count": 1,
            "identity_pool": null,
            "ip_pool": "lan",
            "values": {},
            "persistent": true,
            "wait": false,
            "charge_mib": 64
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_json_is_the_list_of_children() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &["fork", "base", "-n", "2", "--ip-pool", "lan", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(value.is_array(), "{value}");
    let children: Vec<ForkChild> = serde_json::from_value(value).unwrap();
    let req = json!({"ip_pool": "lan"});
    assert_eq!(
        children,
        [
            fork_child("base", 1, &req, None),
            fork_child("base", 2, &req, None)
        ]
    );
    assert_eq!(children[1].ipv4.as_deref(), Some("10.0.0.11/24"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_child_is_named_on_stderr_and_exits_1() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["fork", "flaky", "-n", "3"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "flaky-1\nflaky-2\nflaky-3\n");
    assert_eq!(
        text(&out.stderr),
        "brood: child flaky-2 failed: service 20-join: exit 1\n"
    );

    let out = brood(fake.dir.path(), &["fork", "flaky", "-n", "2", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let children: Vec<ForkChild> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(children[1].status, ChildStatus::Failed);
    assert_eq!(
        text(&out.stderr),
        "brood: child flaky-2 failed: service 20-join: exit 1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_set_key_is_checked_before_sending() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["fork", "base", "--set", "bad key=1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("must be 1-64 characters"),
        "{}",
        text(&out.stderr)
    );
    assert!(fake.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_create_sends_the_range_or_the_identities() {
    let fake = Fake::start().await;
    let out = brood(
        fake.dir.path(),
        &[
            "identity-pool",
            "create",
            "lan",
            "--ipv4",
            "10.0.0.10-50",
            "--prefix",
            "24",
            "--gateway",
            "10.0.0.1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "created identity pool lan: ipv4, 41 values, 41 free\n"
    );

    let file = fake.dir.path().join("hosts.txt");
    std::fs::write(&file, "# lab hosts\nhost-a\n\nhost-b\n").unwrap();
    let out = brood(
        fake.dir.path(),
        &[
            "identity-pool",
            "create",
            "hosts",
            "--identities-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "created identity pool hosts: identity, 2 values, 2 free\n"
    );

    let seen = fake.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/v1/identity-pools")
    );
    assert_eq!(
        seen[0].body,
        json!({
            "name": "lan",
            "kind": "ipv4",
            "values": [],
            "range": "10.0.0.10-10.0.0.50",
            "prefix": 24,
            "gateway": "10.0.0.1"
        })
    );
    assert_eq!(
        seen[1].body,
        json!({
            "name": "hosts",
            "kind": "identity",
            "values": ["host-a", "host-b"],
            "range": null,
            "prefix": null,
            "gateway": null
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_show_lists_values_and_holders() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["identity-pool", "show", "lan"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "name     lan\n\
         kind     ipv4\n\
         size     3\n\
         free     2\n\
         prefix   /24\n\
         gateway  10.0.0.1\n\
         \n\
         VALUE      HOLDER\n\
         10.0.0.10  base-1\n\
         10.0.0.11  -\n\
         10.0.0.12  -\n"
    );
    let out = brood(
        fake.dir.path(),
        &["identity-pool", "show", "lan", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let p: IdentityPool = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p, lan_pool());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_show_of_a_child_names_its_template() {
    let fake = Fake::start().await;
    let out = brood(fake.dir.path(), &["vm", "show", "base-2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("\nparent     base (template)\n"), "{s}");
    assert!(
        s.contains(
            "\nfork       child 2, ready, forked afresh at each start\n           \
             mac 52:54:00:00:00:02, ipv4 -, identity -\n"
        ),
        "{s}"
    );
}
