//! `TestApp`: broodd's router on a temporary data directory and a
//! [`FakeEngine`], driven in-process through `tower::ServiceExt::oneshot`
//! with the bearer token, or served on a unix socket for the `brood` CLI.
//!
//! [`TestApp::restart`] shuts broodd down and starts it again on the same
//! data directory and the same fake engine, as when broodd is killed and
//! restarted while its VMs keep running.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_ledger::Resources;
use broodd::{Broodd, Config, Paths};
use serde_json::Value;
use tower::ServiceExt;

use crate::engine::{FakeEngine, Mode};
use crate::vm::FakeVm;

/// The bearer token every TestApp uses.
pub const TOKEN: &str = "testkit-token";

/// A bzImage header is "HdrS" at 0x202: enough for the spec's check.
pub(crate) fn fake_kernel() -> Vec<u8> {
    let mut k = vec![0u8; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// A request with the bearer token and, if given, a JSON body.
fn authorized(method: Method, path: &str, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("a valid request")
}

/// Runs a request through the router and reads the answer.
async fn send_to(router: Router, req: Request<Body>) -> Reply {
    let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, v)
}

/// Builds a [`TestApp`].
#[derive(Debug, Clone)]
pub struct TestAppBuilder {
    capacity: Resources,
    mode: Mode,
    jobs: broodd::job::JobConfig,
    cluster: Option<broodd::cluster::ClusterConfig>,
}

impl Default for TestAppBuilder {
    fn default() -> Self {
        Self {
            capacity: Resources {
                memory_mib: 2048,
                vcpus: 8,
                disk_gib: 20,
                nics: 4,
            },
            mode: Mode::Auto,
            jobs: broodd::job::JobConfig::default(),
            cluster: None,
        }
    }
}

impl TestAppBuilder {
    /// The host's capacity (small by default: 2048 MiB, 8 vCPUs, 20 GiB, 4 NICs).
    pub fn capacity(mut self, capacity: Resources) -> Self {
        self.capacity = capacity;
        self
    }

    /// The fake engine's mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The job engine's limits.
    pub fn jobs(mut self, jobs: broodd::job::JobConfig) -> Self {
        self.jobs = jobs;
        self
    }

    /// Joins a cluster's catalog at start (`broodd --catalog`); the test
    /// owns the PostgreSQL it points at.
    pub fn cluster(mut self, cluster: broodd::cluster::ClusterConfig) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Makes the directories and the engine, and starts broodd.
    pub async fn build(self) -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let image = dir.path().join("image");
        let run = dir.path().join("run");
        for d in [&data, &image, &run] {
            std::fs::create_dir_all(d).expect("create a test directory");
        }
        std::fs::write(image.join("vmlinuz"), fake_kernel()).expect("write the fake kernel");
        std::fs::write(image.join("initrd.img"), b"070701fake").expect("write the fake initrd");
        let paths = Paths {
            data,
            image,
            templates: dir.path().join("templates"),
        };
        let cfg = Config {
            paths,
            capacity: self.capacity,
            set_capacity: false,
            vcpu_overcommit: 4.0,
            token: TOKEN.into(),
            jobs: self.jobs,
            nat: Default::default(),
        };
        let fake = FakeEngine::new(run, self.mode);
        let broodd = Broodd::start_with(cfg.clone(), Arc::new(fake.clone()), self.cluster)
            .await
            .expect("broodd starts on the fake engine");
        let router = broodd.router();
        TestApp {
            dir,
            cfg,
            fake,
            broodd: Some(broodd),
            router,
        }
    }
}

/// broodd on a temporary ledger and a fake engine.
#[derive(Debug)]
pub struct TestApp {
    dir: tempfile::TempDir,
    cfg: Config,
    fake: FakeEngine,
    broodd: Option<Broodd>,
    router: Router,
}

/// A response: its status and its body as JSON (`Null` when empty, a
/// string when it is not JSON).
pub type Reply = (StatusCode, Value);

impl TestApp {
    /// A builder with the defaults.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// A TestApp with the defaults.
    pub async fn new() -> TestApp {
        Self::builder().build().await
    }

    /// The fake engine.
    pub fn fake(&self) -> &FakeEngine {
        &self.fake
    }

    /// broodd's paths.
    pub fn paths(&self) -> &Paths {
        &self.cfg.paths
    }

    /// The temporary directory everything is in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The router (for requests the helpers do not cover).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Sends a request with the token.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.send(authorized(method, path, body)).await
    }

    /// Starts a request in a task of its own: abort the task to drop the
    /// operation where it is (as if broodd died there).
    pub fn spawn_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> tokio::task::JoinHandle<Reply> {
        let router = self.router.clone();
        let req = authorized(method, path, body);
        tokio::spawn(send_to(router, req))
    }

    /// Sends any request as it is.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        send_to(self.router.clone(), req).await
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None).await
    }

    /// POST a JSON body with the token.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(body)).await
    }

    /// POST without a body.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request(Method::POST, path, None).await
    }

    /// PUT a JSON body with the token.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, Some(body)).await
    }

    /// DELETE with the token.
    pub async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, None).await
    }

    /// Defines partition `name` with one configuration `default` of
    /// `memory_mib` and `vcpus`, started or not.
    pub async fn define(&self, name: &str, memory_mib: u64, vcpus: u32, start: bool) -> Reply {
        self.post(
            "/v1/partitions",
            serde_json::json!({
                "name": name,
                "configs": {"default": {"memory_mib": memory_mib, "vcpus": vcpus}},
                "start": start,
            }),
        )
        .await
    }

    /// Defines and starts `name` (256 MiB, 1 vCPU), panicking unless it runs.
    pub async fn running(&self, name: &str) -> Value {
        let (s, v) = self.define(name, 256, 1, true).await;
        assert_eq!(s, StatusCode::CREATED, "define {name}: {v}");
        assert_eq!(v["run_state"], "running", "{v}");
        v
    }

    /// Makes running partition `vm` a template with `warm` waiting children.
    pub async fn template(&self, vm: &str, name: Option<&str>, warm: u32) -> Reply {
        let body = serde_json::json!({"vm": vm, "name": name, "warm": warm});
        self.post("/v1/templates", body).await
    }

    /// The collection route of identity and IPv4 pools.
    pub fn pools_path(&self) -> &'static str {
        "/v1/identity-pools"
    }

    /// Creates an identity pool with `values`.
    pub async fn identity_pool(&self, name: &str, values: &[&str]) -> Reply {
        let path = self.pools_path();
        self.post(
            path,
            serde_json::json!({"name": name, "kind": "identity", "values": values}),
        )
        .await
    }

    /// Creates an IPv4 pool of `range` (`FIRST-LAST`).
    pub async fn ipv4_pool(&self, name: &str, range: &str, gateway: Option<&str>) -> Reply {
        let path = self.pools_path();
        self.post(
            path,
            serde_json::json!({"name": name, "kind": "ipv4", "range": range, "prefix": 24, "gateway": gateway}),
        )
        .await
    }

    /// A pool as the API shows it.
    pub async fn pool(&self, name: &str) -> Value {
        let path = self.pools_path();
        let (s, v) = self.get(&format!("{path}/{name}")).await;
        assert_eq!(s, StatusCode::OK, "pool {name}: {v}");
        v
    }

    /// The run state of partition `name`.
    pub async fn run_state(&self, name: &str) -> String {
        let (s, v) = self.get(&format!("/v1/partitions/{name}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["run_state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits (up to 30 s, polling) until `cond` holds; panics naming `what`.
    pub async fn wait_until<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !cond().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The uuid of partition `name`, through the API.
    pub async fn uuid_of(&self, name: &str) -> String {
        let (s, v) = self.get(&format!("/v1/partitions/{name}")).await;
        assert_eq!(s, StatusCode::OK, "partition {name}: {v}");
        v["uuid"].as_str().expect("a uuid").to_string()
    }

    /// The fake VM of partition `name` (its newest process).
    pub async fn vm(&self, name: &str) -> FakeVm {
        let uuid = self.uuid_of(name).await;
        self.fake
            .vm(&uuid)
            .unwrap_or_else(|| panic!("partition {name} ({uuid}) never had a VM"))
    }

    /// What each owner holds in the ledger, by owner name
    /// (`available`, partition names).
    pub async fn holdings(&self) -> std::collections::BTreeMap<String, Value> {
        let (s, v) = self.get("/v1/ledger").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["owners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                (
                    o["owner"].as_str().unwrap_or_default().to_string(),
                    o["holds"].clone(),
                )
            })
            .collect()
    }

    /// `GET /v1/ledger/verify`: panics with the problems unless it is ok.
    pub async fn assert_verified(&self) {
        let (s, v) = self.get("/v1/ledger/verify").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], Value::Bool(true), "ledger verify: {v:#}");
    }

    /// Stops broodd and starts it again on the same data directory and
    /// fake engine (VMs keep running, as after `kill -9`).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// Stops broodd: its supervisors stand down, as if it had been
    /// killed; VMs keep running (and can crash, exit or hang meanwhile).
    /// The old router still answers until [`TestApp::start`] replaces it.
    pub async fn stop(&mut self) {
        if let Some(b) = self.broodd.take() {
            b.shutdown().await;
        }
    }

    /// Starts broodd again on the same data directory and fake engine: it
    /// reconciles the ledger with the fake VMs it finds.
    pub async fn start(&mut self) {
        assert!(self.broodd.is_none(), "broodd runs already: stop it first");
        let broodd = Broodd::start(self.cfg.clone(), Arc::new(self.fake.clone()))
            .await
            .expect("broodd starts again");
        self.router = broodd.router();
        self.broodd = Some(broodd);
    }

    /// Subscribes to `GET /v1/events`.
    pub async fn events(&self) -> Events {
        let resp = self
            .router
            .clone()
            .oneshot(authorized(Method::GET, "/v1/events", None))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(resp.status(), StatusCode::OK, "the event stream opens");
        Events {
            body: resp.into_body().into_data_stream(),
            buf: String::new(),
        }
    }

    /// Serves the router on a unix socket in the data directory and
    /// writes the token file, for the real `brood` binary
    /// (`brood --host SOCKET --token T`).
    pub async fn serve_unix(&self) -> Served {
        let socket = self.cfg.paths.socket();
        let _ = std::fs::remove_file(&socket);
        std::fs::write(self.cfg.paths.token(), format!("{TOKEN}\n")).expect("write the token");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind the API socket");
        let app = self.router.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Served {
            socket,
            data: self.cfg.paths.data.clone(),
            token: TOKEN.into(),
            task,
        }
    }
}

/// The router served on a unix socket; stops serving when dropped.
#[derive(Debug)]
pub struct Served {
    /// The socket.
    pub socket: PathBuf,
    /// The data directory (holds the socket and the token file).
    pub data: PathBuf,
    /// The bearer token.
    pub token: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server-sent events of `GET /v1/events`, one JSON object each.
#[derive(Debug)]
pub struct Events {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl Events {
    /// The next event's JSON (`None` when the stream ends); waits at most 30 s.
    pub async fn next(&mut self) -> Option<Value> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if !data.is_empty() {
                    let text = data.join("\n");
                    return Some(serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("an event within 30 s")?;
            self.buf.push_str(&String::from_utf8_lossy(
                &chunk.expect("the event stream reads"),
            ));
        }
    }

    /// Skips events until one for which `want` holds, and returns it.
    pub async fn until(&mut self, mut want: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let e = self.next().await.expect("the event stream ended");
            if want(&e) {
                return e;
            }
        }
    }
}
