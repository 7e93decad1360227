#![allow(clippy::tests_outside_test_module)]
//! Business units on the fake engine (issue 12): two units with a partial
//! approval, VMs inside the allocation and one refused beyond it, 200
//! concurrent creates at the edge that never overshoot, a unit that can
//! neither see nor touch the other's objects through any route of the
//! OpenAPI document, expired and revoked tokens refused, a shrink below use
//! refused, a unit's user kept to broodd's `--unit-ports` when it
//! publishes host ports, and the golden role table compared with what every route
//! really answers for every role.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_ledger::Resources;
use brood_testkit::{TOKEN, TestApp};
use serde_json::{Value, json};

/// A request with `token`, acting inside `unit` if given.
fn req(
    method: &Method,
    uri: &str,
    token: &str,
    unit: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(u) = unit {
        b = b.header(brood_api::UNIT_HEADER, u);
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).expect("a request")
}

async fn call(
    app: &TestApp,
    m: Method,
    uri: &str,
    token: &str,
    unit: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.send(req(&m, uri, token, unit, body.as_ref())).await
}

async fn admin(app: &TestApp, m: Method, uri: &str, body: Value) -> Value {
    let (s, v) = call(app, m.clone(), uri, TOKEN, None, Some(body)).await;
    assert!(s.is_success(), "{m} {uri}: {s} {v}");
    v
}

/// Registers a unit and approves `want` for it.
async fn unit(app: &TestApp, name: &str, want: Value) {
    admin(
        app,
        Method::POST,
        "/v1/units",
        json!({"name": name, "contact": "ops@example.com"}),
    )
    .await;
    let r = admin(
        app,
        Method::POST,
        &format!("/v1/units/{name}/requests"),
        want,
    )
    .await;
    let id = r["id"].as_u64().expect("an id");
    admin(
        app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        json!({}),
    )
    .await;
}

/// A user and a token for it.
async fn user(app: &TestApp, name: &str, role: &str, unit: Option<&str>) -> String {
    admin(
        app,
        Method::POST,
        "/v1/users",
        json!({"name": name, "role": role, "unit": unit}),
    )
    .await;
    let t = admin(app, Method::POST, "/v1/tokens", json!({"user": name})).await;
    t["token"].as_str().expect("a token").to_owned()
}

fn vm(name: &str, memory_mib: u64, vcpus: u64, start: bool) -> Value {
    json!({"name": name, "configs": {"d": {"memory_mib": memory_mib, "vcpus": vcpus}}, "start": start})
}

fn big() -> Resources {
    Resources {
        memory_mib: 65536,
        vcpus: 64,
        disk_gib: 200,
        nics: 16,
    }
}

#[tokio::test]
async fn two_units_partial_approval_and_a_refusal_beyond_the_allocation() {
    let app = TestApp::builder().capacity(big()).build().await;
    admin(
        &app,
        Method::POST,
        "/v1/units",
        json!({"name": "eng", "contact": "eng@example.com"}),
    )
    .await;
    let r = admin(
        &app,
        Method::POST,
        "/v1/units/eng/requests",
        json!({"vcpus": 8, "memory_mib": 4096, "disk_gib": 10}),
    )
    .await;
    assert_eq!(r["state"], "pending");
    let id = r["id"].as_u64().expect("id");
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        json!({"vcpus": 2, "memory_mib": 1280}),
    )
    .await;
    assert_eq!(
        (r["state"].as_str(), r["granted"]["vcpus"].as_u64()),
        (Some("partial"), Some(2)),
        "{r}"
    );
    unit(&app, "ops", json!({"vcpus": 4, "memory_mib": 2048})).await;
    let alice = user(&app, "alice", "unit-user", Some("eng")).await;
    // A VM charges its guest memory plus 128 MiB for QEMU: 512 + 128 = 640.
    for n in ["w1", "w2"] {
        let (s, v) = call(
            &app,
            Method::POST,
            "/v1/partitions",
            &alice,
            None,
            Some(vm(n, 512, 1, true)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(vm("w3", 512, 1, true)),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "capacity_exceeded");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("unit's allocation") && msg.contains("brood unit request"),
        "{msg}"
    );
    let (s, _) = call(&app, Method::GET, "/v1/partitions/w3", TOKEN, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing half-done");
    let (_, u) = call(&app, Method::GET, "/v1/units/eng", &alice, None, None).await;
    assert_eq!(u["used"]["memory_mib"], 1280, "{u}");
    assert_eq!(u["free"]["vcpus"], 0, "{u}");
    // The host still had room: the unit's holding, not `available`, refused it.
    let (_, h) = call(&app, Method::GET, "/v1/host", TOKEN, None, None).await;
    assert!(h["available"]["vcpus"].as_u64() > Some(40), "{h}");
    // The audit log names who did it.
    let (_, log) = call(
        &app,
        Method::GET,
        "/v1/ledger/log?limit=1000",
        TOKEN,
        None,
        None,
    )
    .await;
    let actors: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(
        actors.contains(&"alice") && actors.contains(&"admin"),
        "{actors:?}"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn two_hundred_concurrent_creates_at_the_edge_never_overshoot() {
    let app = TestApp::builder().capacity(big()).build().await;
    // 30 VMs of 1 vCPU and 64+128 MiB fit; 200 try at once.
    unit(
        &app,
        "eng",
        json!({"vcpus": 30, "memory_mib": 30 * 192, "disk_gib": 0}),
    )
    .await;
    let alice = user(&app, "alice", "unit-user", Some("eng")).await;
    let sends = (0..200).map(|i| {
        let body = vm(&format!("c{i}"), 64, 1, true);
        let r = req(&Method::POST, "/v1/partitions", &alice, None, Some(&body));
        app.send(r)
    });
    let answers = futures::future::join_all(sends).await;
    let mut by: BTreeMap<u16, usize> = BTreeMap::new();
    for (s, v) in &answers {
        *by.entry(s.as_u16()).or_default() += 1;
        if *s != StatusCode::CREATED {
            assert_eq!(v["error"]["code"], "capacity_exceeded", "{v}");
        }
    }
    assert_eq!(by.get(&201), Some(&30), "{by:?}");
    let (_, u) = call(&app, Method::GET, "/v1/units/eng", TOKEN, None, None).await;
    assert_eq!(u["used"]["vcpus"], 30, "{u}");
    assert_eq!(
        u["free"],
        json!({"memory_mib": 0, "vcpus": 0, "disk_gib": 0, "nics": 0}),
        "{u}"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused() {
    let app = TestApp::new().await;
    unit(&app, "eng", json!({"vcpus": 1})).await;
    admin(
        &app,
        Method::POST,
        "/v1/users",
        json!({"name": "bob", "role": "unit-user", "unit": "eng"}),
    )
    .await;
    let t = admin(&app, Method::POST, "/v1/tokens", json!({"user": "bob"})).await;
    let token = t["token"].as_str().expect("token").to_owned();
    let (s, _) = call(&app, Method::GET, "/v1/units/eng", &token, None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Shown once: the list has no secret.
    let (_, list) = call(&app, Method::GET, "/v1/tokens", TOKEN, None, None).await;
    assert!(!list.to_string().contains(&token[16..]), "{list}");
    let id = t["id"].as_str().expect("id");
    admin(
        &app,
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        json!(null),
    )
    .await;
    let (s, v) = call(&app, Method::GET, "/v1/units/eng", &token, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{v}"
    );
    // A token that expires in a second is refused once it has.
    let t = admin(
        &app,
        Method::POST,
        "/v1/tokens",
        json!({"user": "bob", "expires_in_s": 1}),
    )
    .await;
    let short = t["token"].as_str().expect("token").to_owned();
    app.wait_until("the token expires", || {
        let app = &app;
        let short = short.clone();
        async move {
            call(app, Method::GET, "/v1/units/eng", &short, None, None)
                .await
                .0
                == StatusCode::UNAUTHORIZED
        }
    })
    .await;
    let (_, v) = call(&app, Method::GET, "/v1/units/eng", &short, None, None).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{v}"
    );
    // A made-up token of the right shape is just unknown.
    let (s, _) = call(&app, Method::GET, "/v1/host", &"ab".repeat(32), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_units_user_publishes_only_host_ports_broodd_leaves_to_units() {
    let app = TestApp::builder().capacity(big()).build().await;
    unit(&app, "eng", json!({"vcpus": 4, "memory_mib": 4096})).await;
    let alice = user(&app, "alice", "unit-admin", Some("eng")).await;
    let with_port = |name: &str, port: u16| {
        let mut v = vm(name, 256, 1, false);
        v["publish"] = json!([{"host_port": port, "guest_port": 80}]);
        v
    };
    // A well-known host port: refused before anything is made.
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(with_port("web", 80)),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("host port 80/tcp")
            && msg.contains("30000-32767")
            && msg.contains("--unit-ports"),
        "{msg}"
    );
    let (s, _) = call(&app, Method::GET, "/v1/partitions/web", TOKEN, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A port of the range passes that check (and meets the next: no NAT NIC).
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(with_port("web", 30080)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("NAT network"),
        "{v}"
    );
    // An administrator publishes any host port (here too: no NAT NIC).
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        TOKEN,
        None,
        Some(with_port("web", 80)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // `vm set --publish` is held to the same range.
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(vm("db", 256, 1, false)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        &app,
        Method::PATCH,
        "/v1/partitions/db/resources",
        &alice,
        None,
        Some(json!({"publish": [{"host_port": 22, "guest_port": 22}]})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = call(
        &app,
        Method::PATCH,
        "/v1/partitions/db/resources",
        &alice,
        None,
        Some(json!({"publish": [{"host_port": 32767, "guest_port": 22}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn a_shrink_below_use_is_refused_with_what_to_stop() {
    let app = TestApp::builder().capacity(big()).build().await;
    unit(&app, "eng", json!({"vcpus": 4, "memory_mib": 4096})).await;
    let alice = user(&app, "alice", "unit-admin", Some("eng")).await;
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(vm("db", 1024, 3, true)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, r) = call(
        &app,
        Method::POST,
        "/v1/units/eng/requests",
        &alice,
        None,
        Some(json!({"vcpus": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let id = r["id"].as_u64().expect("id");
    // A unit admin files requests but does not decide them.
    let (s, _) = call(
        &app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        &alice,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(
        &app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("db (3)") && msg.contains("stop or delete"),
        "{msg}"
    );
    let (_, u) = call(&app, Method::GET, "/v1/units/eng", TOKEN, None, None).await;
    assert_eq!(u["allocated"]["vcpus"], 4, "unchanged: {u}");
    let (s, _) = call(
        &app,
        Method::POST,
        "/v1/partitions/db/stop",
        &alice,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &app,
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, u) = call(&app, Method::GET, "/v1/units/eng", TOKEN, None, None).await;
    assert_eq!(u["allocated"]["vcpus"], 2, "{u}");
    app.assert_verified().await;
}

/// Two units with everything a route can name: a running VM, a template,
/// a pending request, a user and a token each; users of every role.
struct Fixture {
    app: TestApp,
    tokens: BTreeMap<&'static str, String>,
    requests: [u64; 2],
    token_ids: [String; 2],
    /// A job of each unit (its first VM's define).
    jobs: [u64; 2],
}

async fn fixture() -> Fixture {
    let app = TestApp::builder().capacity(big()).build().await;
    let want = json!({"vcpus": 16, "memory_mib": 16384, "disk_gib": 50, "nics": 4});
    unit(&app, "a", want.clone()).await;
    unit(&app, "b", want).await;
    let mut requests = [0; 2];
    let mut token_ids = [String::new(), String::new()];
    for (i, u) in ["a", "b"].into_iter().enumerate() {
        for v in [format!("{u}1"), format!("t{u}")] {
            let (s, r) = call(
                &app,
                Method::POST,
                "/v1/partitions",
                TOKEN,
                Some(u),
                Some(vm(&v, 256, 1, true)),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{r}");
        }
        let (s, r) = call(
            &app,
            Method::POST,
            "/v1/templates",
            TOKEN,
            Some(u),
            Some(json!({"vm": format!("t{u}")})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        let r = admin(
            &app,
            Method::POST,
            &format!("/v1/units/{u}/requests"),
            json!({"vcpus": 17}),
        )
        .await;
        requests[i] = r["id"].as_u64().expect("id");
        admin(
            &app,
            Method::POST,
            "/v1/users",
            json!({"name": format!("{u}-extra"), "role": "unit-user", "unit": u}),
        )
        .await;
        let t = admin(
            &app,
            Method::POST,
            "/v1/tokens",
            json!({"user": format!("{u}-extra")}),
        )
        .await;
        token_ids[i] = t["id"].as_str().expect("id").to_owned();
    }
    app.identity_pool("ids", &["v1", "v2"]).await;
    let mut jobs = [0; 2];
    for (i, u) in ["a", "b"].into_iter().enumerate() {
        let (_, l) = app.get(&format!("/v1/jobs?unit={u}&limit=1")).await;
        jobs[i] = l["items"][0]["id"].as_u64().expect("a job of the unit");
    }
    admin(
        &app,
        Method::POST,
        "/v1/workflows",
        json!({"definition": "name: wf\ntasks: [{id: s, step: stop, params: {vm: a1}}]"}),
    )
    .await;
    // Action `act` of templates ta and tb: a workflow whose one task fails
    // (nothing listens on port 1) without touching anything.
    admin(
        &app,
        Method::POST,
        "/v1/workflows",
        json!({"definition": "name: act-wf\ninputs: {template: {}}\n\
            tasks: [{id: h, step: http, params: {url: 'http://127.0.0.1:1/'}}]"}),
    )
    .await;
    for t in ["ta", "tb"] {
        admin(
            &app,
            Method::PUT,
            &format!("/v1/templates/{t}/actions/act"),
            json!({"workflow": "act-wf"}),
        )
        .await;
    }
    let mut tokens = BTreeMap::new();
    tokens.insert("admin", TOKEN.to_owned());
    tokens.insert(
        "unit-admin",
        user(&app, "a-admin", "unit-admin", Some("a")).await,
    );
    tokens.insert(
        "unit-user",
        user(&app, "a-user", "unit-user", Some("a")).await,
    );
    tokens.insert("auditor", user(&app, "aud", "auditor", None).await);
    Fixture {
        app,
        tokens,
        requests,
        token_ids,
        jobs,
    }
}

/// (action, kind, whether the route names an object) of each route, as
/// `authz-roles.txt` spells them. A route added without an entry fails.
fn route_action(method: &Method, path: &str) -> Option<(&'static str, &'static str, bool)> {
    let p = path.trim_start_matches("/v1");
    Some(match (method.as_str(), p) {
        ("GET", "/partitions") => ("read", "partition", false),
        ("POST", "/partitions") => ("create", "partition", false),
        ("GET", "/partitions/{name}" | "/partitions/{name}/console") => ("read", "partition", true),
        ("DELETE", "/partitions/{name}") => ("delete", "partition", true),
        (_, p) if p.starts_with("/partitions/{name}/") => ("operate", "partition", true),
        ("GET", "/templates") => ("read", "template", false),
        ("POST", "/templates") => ("create", "template", true),
        ("GET", "/templates/{name}") => ("read", "template", true),
        ("DELETE", "/templates/{name}") => ("delete", "template", true),
        ("POST", "/templates/{name}/fork") => ("operate", "template", true),
        ("GET", "/templates/{name}/actions") => ("read", "template", true),
        ("PUT" | "DELETE", "/templates/{name}/actions/{action}") => ("manage", "template", true),
        ("POST", "/templates/{name}/actions/{action}/run") => ("operate", "template", true),
        ("GET", "/identity-pools" | "/identity-pools/{name}") => ("read", "identity-pool", false),
        ("POST", "/identity-pools") | ("DELETE", "/identity-pools/{name}") => {
            ("configure", "identity-pool", false)
        }
        ("GET", "/ledger" | "/ledger/log" | "/ledger/verify" | "/events") => {
            ("read", "ledger", false)
        }
        ("GET", "/host") => ("read", "host", false),
        // The cluster's catalog (hosts, zones, domains, placements) is
        // infrastructure of kind host: every role reads it, the
        // administrator changes it.
        ("GET", p) if p.starts_with("/cluster") => ("read", "host", false),
        (_, p) if p.starts_with("/cluster") => ("configure", "host", false),
        ("GET", "/units") => ("read", "unit", false),
        ("POST", "/units") => ("create", "unit", false),
        ("GET", "/units/{name}") => ("read", "unit", true),
        ("POST", "/units/{name}/requests") => ("create", "request", true),
        ("GET", "/requests") => ("read", "request", false),
        ("GET", "/requests/{id}") => ("read", "request", true),
        ("POST", "/requests/{id}/approve" | "/requests/{id}/reject") => ("manage", "request", true),
        ("GET", "/infra") => ("read", "infra", false),
        ("PUT", "/infra") => ("configure", "infra", false),
        ("GET", "/users") => ("read", "user", false),
        ("POST", "/users") => ("create", "user", false),
        ("DELETE", "/users/{name}") => ("delete", "user", true),
        ("GET", "/tokens") => ("read", "token", false),
        ("POST", "/tokens") => ("create", "token", true),
        ("DELETE", "/tokens/{id}") => ("delete", "token", true),
        ("GET", "/prices") => ("read", "price", false),
        ("PUT", "/prices") => ("configure", "price", false),
        ("GET", "/chargeback") => ("read", "chargeback", true),
        ("POST", "/chargeback/refunds") => ("configure", "chargeback", false),
        ("GET", "/jobs") => ("read", "job", false),
        ("GET", "/jobs/{id}" | "/jobs/{id}/wait") => ("read", "job", true),
        ("POST", "/jobs/{id}/cancel") => ("operate", "job", true),
        ("GET", "/workflows" | "/workflows/{name}") => ("read", "workflow", false),
        ("POST", "/workflows") => ("create", "workflow", false),
        ("DELETE", "/workflows/{name}") => ("delete", "workflow", false),
        ("POST", "/workflows/{name}/run") => ("operate", "workflow", false),
        // Networks, I/O partitions, service pools and images are the host's
        // infrastructure: every role reads them, the administrator changes them.
        ("GET", p)
            if [
                "/networks",
                "/images",
                "/io",
                "/pools",
                "/services",
                "/service-classes",
            ]
            .iter()
            .any(|x| p.starts_with(x)) =>
        {
            ("read", "infra", false)
        }
        (_, p)
            if ["/networks", "/images", "/io", "/pools", "/services"]
                .iter()
                .any(|x| p.starts_with(x)) =>
        {
            ("configure", "infra", false)
        }
        _ => return None,
    })
}

/// The golden table: (role, kind) -> (own letters, other letters).
fn golden() -> BTreeMap<(String, String), (String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/authz-roles.txt"
    ))
    .expect("the table");
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{line}");
        out.insert(
            (f[0].to_owned(), f[1].to_owned()),
            (f[2].to_owned(), f[4].to_owned()),
        );
    }
    out
}

const ACTIONS: [&str; 6] = ["read", "create", "operate", "delete", "manage", "configure"];

/// The request for a route, naming unit `u`'s object (`a` is the caller's).
fn concrete(
    fx: &Fixture,
    method: &Method,
    path: &str,
    u: &str,
    n: usize,
) -> (String, Option<Value>) {
    let i = usize::from(u == "b");
    let p = path.trim_start_matches("/v1");
    let name = match p {
        _ if p.starts_with("/templates/") => format!("t{u}"),
        _ if p.starts_with("/units/") => u.to_owned(),
        _ if p.starts_with("/users/") => format!("{u}-extra"),
        _ if p.starts_with("/identity-pools/") => "ids".to_owned(),
        _ if p.starts_with("/workflows/") => "wf".to_owned(),
        _ => format!("{u}1"),
    };
    let id = if p.starts_with("/tokens/") {
        fx.token_ids[i].clone()
    } else if p.starts_with("/jobs/") {
        fx.jobs[i].to_string()
    } else {
        fx.requests[i].to_string()
    };
    let mut uri = path
        .replace("{name}", &name)
        .replace("{id}", &id)
        .replace("{disk}", "d0")
        .replace("{nic}", "0")
        .replace("{action}", "act");
    if p == "/chargeback" {
        uri = format!("{uri}?from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z&unit={u}");
    }
    if p == "/partitions/{name}/console" {
        uri.push_str("?bytes=10");
    }
    let body = match (method.as_str(), p) {
        ("POST", "/partitions") => Some(vm(&format!("new{n}"), 64, 1, false)),
        ("POST", p) if p.ends_with("/stop") => Some(json!({"timeout_s": 1})),
        ("PUT", p) if p.ends_with("/stage") => Some(json!({"stage": "disabled"})),
        ("PUT", p) if p.ends_with("/config") => Some(json!({"config": "d"})),
        ("POST", p) if p.ends_with("/exec") || p.ends_with("/session") => {
            Some(json!({"command": "true"}))
        }
        ("POST", p) if p.ends_with("/snapshots") => Some(json!({"name": format!("s{n}")})),
        ("PATCH", p) if p.ends_with("/resources") => Some(json!({"memory_mib": 512})),
        ("PATCH", "/io/{name}") => Some(json!({"cpus": null})),
        ("POST", p) if p.ends_with("/disks") => Some(json!({"name": "d9", "size_gib": 1})),
        ("PUT", p) if p.ends_with("/disks/{disk}") => Some(json!({"size_gib": 2})),
        ("POST", p) if p.ends_with("/nics") => Some(json!({"network": "user"})),
        ("POST", "/networks") => Some(json!({"name": format!("n{n}"), "subnet": "10.96.0.0/24"})),
        // Allowed or not, it cannot build (no agent, no such module).
        ("POST", "/images") => {
            Some(json!({"name": format!("i{n}"), "modules": ["no-such-module-brood"]}))
        }
        ("POST", "/pools") => Some(json!({"name": format!("p{n}"), "min": 0, "max": 0})),
        ("PATCH", "/pools/{name}") => Some(json!({"memory_floor_mib": 0})),
        ("POST", "/services") => Some(json!({"class": "http", "pool": "nope"})),
        ("POST", p) if p.ends_with("/guests") => Some(json!({"guest": format!("{u}1")})),
        ("POST", "/templates") => Some(json!({"vm": format!("{u}1")})),
        ("POST", p) if p.ends_with("/fork") => Some(json!({"count": 1})),
        ("PUT", p) if p.ends_with("/actions/{action}") => Some(json!({"workflow": "act-wf"})),
        ("POST", p) if p.ends_with("/actions/{action}/run") => Some(json!({})),
        ("POST", "/identity-pools") => {
            Some(json!({"name": format!("p{n}"), "kind": "identity", "values": ["v"]}))
        }
        ("POST", "/units") => Some(json!({"name": format!("u{n}"), "contact": "c"})),
        ("POST", "/units/{name}/requests") => Some(json!({"vcpus": 1})),
        ("POST", p) if p.ends_with("/approve") || p.ends_with("/reject") => Some(json!({})),
        ("PUT", "/infra") => Some(json!({"name": "dc"})),
        ("POST", "/users") => {
            Some(json!({"name": format!("n{n}"), "role": "unit-user", "unit": "a"}))
        }
        ("POST", "/tokens") => Some(json!({"user": format!("{u}-extra")})),
        ("PUT", "/prices") => Some(json!({"item": "vcpu", "micros_per_hour": 1})),
        ("POST", "/chargeback/refunds") => Some(json!({"unit": "a", "micros": 1, "reason": "r"})),
        ("POST", "/partitions/{name}/migrate") => Some(json!({})),
        ("POST", "/cluster/hosts") => Some(json!({"name": format!("h{n}")})),
        ("POST", "/cluster/zones") => Some(json!({"zone": format!("storage:z{n}")})),
        ("POST", "/cluster/domains") => Some(json!({"name": format!("d{n}"), "policy": {}})),
        ("POST", "/cluster/placements") => {
            Some(json!({"name": format!("c{n}"), "demand": {"memory_mib": 64}}))
        }
        ("POST", "/cluster/ops") => Some(json!({"name": format!("o{n}")})),
        ("POST", "/workflows") => Some(json!({
            "definition": format!("name: w{n}\ntasks: [{{id: s, step: stop, params: {{vm: a1}}}}]")
        })),
        _ => None,
    };
    (uri, body)
}

/// For every role and every route of the OpenAPI document: a unit's user
/// gets exactly what the golden table says (A: not 403 or 404; F: 403;
/// H: 404) for its own unit's object and for the other unit's, and the
/// other unit's VMs never appear in what it can list.
#[tokio::test]
async fn every_route_answers_what_the_golden_table_says_for_every_role() {
    let table = golden();
    let shared = fixture().await;
    let (_, doc) = shared.app.get("/v1/openapi.json").await;
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().expect("item").keys() {
            routes.push((
                Method::from_bytes(m.to_uppercase().as_bytes()).expect("method"),
                path.clone(),
            ));
        }
    }
    let mut checked = 0;
    for (n, (method, path)) in routes.iter().enumerate() {
        if path == "/v1/openapi.json" {
            continue;
        }
        let (action, kind, named) = route_action(method, path)
            .unwrap_or_else(|| panic!("{method} {path}: add it to route_action"));
        let col = ACTIONS.iter().position(|a| *a == action).expect("action");
        for role in ["admin", "unit-admin", "unit-user", "auditor"] {
            let (own, other) = &table[&(role.to_owned(), kind.to_owned())];
            let scopes: &[&str] = if named { &["a", "b"] } else { &["a"] };
            for &u in scopes {
                let letters = if u == "a" { own } else { other };
                let want = letters.as_bytes()[col] as char;
                if path == "/v1/events" && want == 'A' {
                    continue; // an endless stream; its refusals are checked.
                }
                // A route that changes things gets a fresh fixture.
                let fresh;
                let fx = if *method == Method::GET {
                    &shared
                } else {
                    fresh = fixture().await;
                    &fresh
                };
                let (uri, body) = concrete(fx, method, path, u, n);
                let (s, v) =
                    call(&fx.app, method.clone(), &uri, &fx.tokens[role], None, body).await;
                let ok = match want {
                    // Infrastructure is never hidden (no role gets H for it),
                    // so a 404 there is the named network, I/O partition,
                    // pool or service not being in the fixture: the caller
                    // got past the role check.
                    'A' if kind == "infra" => s != StatusCode::FORBIDDEN,
                    // The fixture's VMs have no disk d0 and no NIC 0: a
                    // 404 naming those got past the partition's lookup.
                    'A' if path.contains("{disk}") || path.contains("{nic}") => {
                        let m = v["error"]["message"].as_str().unwrap_or("");
                        s != StatusCode::FORBIDDEN
                            && (s != StatusCode::NOT_FOUND
                                || m.starts_with("no disk ")
                                || m.starts_with("no NIC "))
                    }
                    'A' => s != StatusCode::FORBIDDEN && s != StatusCode::NOT_FOUND,
                    'F' => s == StatusCode::FORBIDDEN,
                    _ => s == StatusCode::NOT_FOUND,
                };
                assert!(
                    ok,
                    "{role} {method} {uri}: the table says {want}, the API answered {s} {v}"
                );
                if role.starts_with("unit") && s.is_success() {
                    for secret in ["\"b1\"", "\"tb\"", "b-extra"] {
                        assert!(
                            !v.to_string().contains(secret),
                            "{role} {method} {uri} shows {secret}: {v}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 150, "{checked} checks");
    // The other unit's objects were left alone by every refused call.
    shared.app.assert_verified().await;
}

#[tokio::test]
async fn a_unit_sees_only_its_exposed_portion_of_the_infrastructure() {
    let app = TestApp::builder().capacity(big()).build().await;
    unit(
        &app,
        "eng",
        json!({"vcpus": 2, "memory_mib": 1024, "nics": 1, "networks": ["user"]}),
    )
    .await;
    unit(&app, "ops", json!({"vcpus": 2, "memory_mib": 1024})).await;
    let alice = user(&app, "alice", "unit-user", Some("eng")).await;
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(vm("web", 256, 1, false)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let dc = json!({"name": "dc1", "infrastructures": [{
        "name": "rack1",
        "hosts": [{"name": "h1", "capacity": {"memory_mib": 65536, "vcpus": 64, "disk_gib": 200, "nics": 16}}],
        "storage_zones": ["ssd"],
        "networks": ["user", "br-ops"],
        "services": [{"name": "shop", "roles": [
            {"name": "frontend", "vms": ["web"]},
            {"name": "db", "vms": ["ops-db"]}
        ]}]
    }]});
    let (s, v) = call(
        &app,
        Method::PUT,
        "/v1/infra",
        TOKEN,
        None,
        Some(dc.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["datacenter"], dc, "the administrator sees it all");
    let (s, _) = call(&app, Method::PUT, "/v1/infra", &alice, None, Some(dc)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = call(&app, Method::GET, "/v1/infra", &alice, None, None).await;
    let rack = &v["datacenter"]["infrastructures"][0];
    assert_eq!(v["unit"], "eng");
    assert_eq!(rack["networks"], json!(["user"]), "{v}");
    assert_eq!(rack["hosts"], json!([]), "{v}");
    assert_eq!(
        rack["services"][0]["roles"],
        json!([{"name": "frontend", "vms": ["web"]}])
    );
    // A network the allocation does not name is refused for the unit's VMs.
    let mut body = vm("lan", 256, 1, false);
    body["configs"]["d"]["nics"] = json!([{"network": "br-ops"}]);
    let (s, v) = call(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        None,
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--network br-ops"),
        "{v}"
    );
}
