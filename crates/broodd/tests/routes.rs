#![allow(clippy::tests_outside_test_module)]
//! Every route's error paths, found by walking `/v1/openapi.json`: a
//! missing or wrong token is 401, an unknown name 404, a bad body 400 and a
//! body that is not JSON 415, a wrong state 409 and an injected engine
//! failure 502, as each route documents them. A route added to the API
//! without a case here fails `every_route_has_a_case`.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_engine::EngineError;
use brood_testkit::{ExecReply, Op, TOKEN, TestApp};
use serde_json::{Value, json};

/// (method, path template) of every route in the document.
async fn routes(app: &TestApp) -> Vec<(Method, String, Value)> {
    let (s, doc) = app.get("/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (m, op) in item.as_object().expect("a path item") {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("a method");
            out.push((method, path.clone(), op.clone()));
        }
    }
    assert!(out.len() >= 20, "only {} routes in the document", out.len());
    out
}

fn documented(op: &Value) -> BTreeSet<u16> {
    op["responses"]
        .as_object()
        .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// The path with `name` for `{name}`; `{id}` (a request number or token
/// id) gets `name` when it is one, else `1`, so the body is what is tested.
fn with_name(path: &str, name: &str) -> String {
    let id = if name.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty() {
        name
    } else {
        "1"
    };
    path.replace("{name}", name)
        .replace("{id}", id)
        .replace("{snapshot}", "s1")
        .replace("{disk}", "d0")
        .replace("{nic}", "0")
        .replace("{action}", "act")
}

/// A valid body for the route, naming `name` where the body names something.
fn body_for(method: &Method, path: &str, name: &str) -> Option<Value> {
    let p = path.trim_start_matches("/v1");
    Some(match (method.as_str(), p) {
        ("POST", "/partitions") => json!({"name": name, "configs": {"d": {}}}),
        ("POST", p) if p.ends_with("/stop") => json!({}),
        ("PUT", p) if p.ends_with("/stage") => json!({"stage": "disabled"}),
        ("PUT", p) if p.ends_with("/config") => json!({"config": "d"}),
        ("POST", p) if p.ends_with("/exec") => json!({"command": "true"}),
        ("POST", p) if p.ends_with("/session") => json!({"command": "true"}),
        ("POST", "/templates") => json!({"vm": name}),
        ("POST", p) if p.ends_with("/fork") => json!({"count": 1}),
        ("POST", p) if p.ends_with("/snapshots") => json!({"name": "s1"}),
        ("PATCH", p) if p.ends_with("/resources") => json!({"memory_mib": 512}),
        ("PATCH", "/io/{name}") => json!({"cpus": null}),
        ("POST", p) if p.ends_with("/disks") => json!({"name": "d9", "size_gib": 1}),
        ("PUT", p) if p.ends_with("/disks/{disk}") => json!({"size_gib": 2}),
        ("POST", p) if p.ends_with("/nics") => json!({"network": "user"}),
        ("POST", "/pools") => json!({"name": name, "min": 0, "max": 0}),
        ("PATCH", "/pools/{name}") => json!({"memory_floor_mib": 0}),
        ("POST", "/services") => json!({"class": "http", "pool": name}),
        ("POST", p) if p.ends_with("/guests") => json!({"guest": name}),
        ("POST", p) if p.ends_with("pools") => {
            json!({"name": name, "kind": "identity", "values": ["v"]})
        }
        ("POST", "/networks") => json!({"name": name, "subnet": "10.98.0.0/24"}),
        // Valid, but it cannot build (`conflict_case`).
        ("POST", "/images") => json!({"name": name, "modules": ["no-such-module-brood"]}),
        ("POST", "/units") => json!({"name": name, "contact": "ops@example.com"}),
        ("POST", "/units/{name}/requests") => json!({"vcpus": 1}),
        ("POST", p) if p.ends_with("/approve") || p.ends_with("/reject") => json!({}),
        ("PUT", "/infra") => json!({"name": "dc"}),
        ("POST", "/users") => json!({"name": name, "role": "auditor"}),
        ("POST", "/tokens") => json!({"user": name}),
        ("PUT", "/prices") => json!({"item": "vcpu", "micros_per_hour": 1}),
        ("POST", "/chargeback/refunds") => json!({"unit": name, "micros": 1, "reason": "r"}),
        ("POST", "/cluster/hosts") => json!({"name": name}),
        ("POST", "/cluster/zones") => json!({"zone": format!("storage:{name}")}),
        ("POST", "/cluster/domains") => json!({"name": name, "policy": {}}),
        ("POST", "/cluster/placements") => json!({"name": name, "demand": {"memory_mib": 64}}),
        ("POST", "/cluster/ops") => json!({"name": name}),
        ("POST", "/partitions/{name}/migrate") => json!({}),
        ("POST", "/workflows") => json!({
            "definition": format!("name: {name}\ntasks: [{{id: a, step: stop, params: {{vm: off}}}}]")
        }),
        ("POST", p) if p.ends_with("/run") => json!({}),
        ("PUT", p) if p.ends_with("/actions/{action}") => json!({"workflow": name}),
        _ => return None,
    })
}

fn request(method: &Method, uri: &str, token: Option<&str>, body: Option<&Value>) -> Request<Body> {
    let mut b = Request::builder().method(method.clone()).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if uri.ends_with("/session") || uri.ends_with("/console/attach") {
        b = b
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, brood_api::attach::ATTACH_PROTOCOL);
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    b.body(body).unwrap()
}

fn code(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn every_route_refuses_a_missing_or_wrong_token() {
    let app = TestApp::new().await;
    app.running("on").await;
    for (method, path, _) in routes(&app).await {
        let uri = with_name(&path, "on");
        let body = body_for(&method, &path, "x");
        for token in [None, Some("wrong"), Some("")] {
            let (s, v) = app.send(request(&method, &uri, token, body.as_ref())).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} token {token:?}: {v}"
            );
            assert_eq!(code(&v), "unauthorized", "{method} {uri}");
        }
    }
    // The document itself needs the token too.
    let (s, _) = app
        .send(request(&Method::GET, "/v1/openapi.json", None, None))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Nothing changed.
    assert_eq!(app.run_state("on").await, "running");
    app.assert_verified().await;
}

#[tokio::test]
async fn every_named_route_answers_404_for_an_unknown_name() {
    let app = TestApp::new().await;
    let mut seen = 0;
    for (method, path, op) in routes(&app).await {
        let named = path.contains("{name}") || (method == Method::POST && path == "/v1/templates");
        // The cluster's routes answer 409 on a single host (this app); their
        // 404s are checked against a catalog in brood-e2e's tests/cluster.rs.
        if !named || path.starts_with("/v1/cluster/") {
            continue;
        }
        seen += 1;
        let uri = with_name(&path, "nope");
        let body = body_for(&method, &path, "nope");
        let (s, v) = app
            .send(request(&method, &uri, Some(TOKEN), body.as_ref()))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {v}");
        assert_eq!(code(&v), "not_found", "{method} {uri}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("nope"),
            "{method} {uri}: the message names what was not found: {v}"
        );
        assert!(
            documented(&op).contains(&404),
            "{method} {path} answers 404 but its document does not say so"
        );
    }
    assert!(seen >= 15, "{seen} named routes");
    // Unknown routes and methods are JSON errors too.
    let (s, v) = app.get("/v1/nothing").await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = app.delete("/v1/ledger").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(code(&v), "bad_request");
}

#[tokio::test]
async fn every_route_with_a_body_refuses_bad_json_and_non_json() {
    let app = TestApp::new().await;
    app.running("on").await;
    let before = app.holdings().await;
    let mut seen = 0;
    for (method, path, op) in routes(&app).await {
        // A file's bytes are not JSON (`PUT .../files`): its own tests.
        if op["requestBody"]["content"]
            .get("application/json")
            .is_none()
        {
            continue;
        }
        seen += 1;
        let uri = with_name(&path, "on");
        // Not JSON at all.
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"half"))
            .unwrap();
        let (s, v) = app.send(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        assert_eq!(code(&v), "bad_request");
        // JSON with a field nobody knows.
        let mut bad = body_for(&method, &path, "fresh").expect("a body for every body route");
        bad["no_such_field"] = json!(1);
        let (s, v) = app
            .send(request(&method, &uri, Some(TOKEN), Some(&bad)))
            .await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{method} {uri} unknown field: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no_such_field"),
            "{v}"
        );
        // A body without a JSON content type.
        let good = body_for(&method, &path, "fresh").unwrap();
        req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from(good.to_string()))
            .unwrap();
        let (s, v) = app.send(req).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{method} {uri}: {v}");
        assert_eq!(code(&v), "unsupported_media_type");
        // Over the size limit.
        let huge = "x".repeat(brood_api::MAX_BODY_BYTES + 1);
        let (s, v) = app
            .send(request(
                &method,
                &uri,
                Some(TOKEN),
                Some(&json!({"name": huge})),
            ))
            .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{method} {uri}: {v}");
    }
    assert!(seen >= 8, "{seen} routes with a body");
    assert_eq!(
        app.holdings().await,
        before,
        "a refused body changes nothing"
    );
    assert_eq!(app.fake().count(Op::Boot), 1);
    app.assert_verified().await;
}

/// The app every 409 and 502 case runs in: `on` running, `off` stopped,
/// template `tpl` with child `tpl-0` holding the only value of pool `ids`.
async fn fixture() -> TestApp {
    let app = TestApp::new().await;
    app.running("on").await;
    app.define("off", 256, 1, false).await;
    app.running("t0").await;
    let (s, v) = app.template("t0", Some("tpl"), 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.identity_pool("ids", &["only"]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .post(
            "/v1/templates/tpl/fork",
            json!({"count": 1, "identity_pool": "ids"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .post("/v1/partitions/on/snapshots", json!({"name": "s1"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A network with a running VM on it: its switch has a client.
    let (s, v) = app
        .post(
            "/v1/networks",
            json!({"name": "net0", "subnet": "10.99.0.0/24"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .post(
            "/v1/partitions",
            json!({"name": "onnet", "configs": {"d": {"nics": [{"network": "net0"}]}}, "start": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A service pool that keeps no members (its requests cold-boot one).
    let (s, v) = app
        .post("/v1/pools", json!({"name": "sp", "min": 0, "max": 0}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Unit `eng` with request 1 decided, user `bob`, and a revoked token.
    for (path, body) in [
        ("/v1/units", json!({"name": "eng", "contact": "c"})),
        ("/v1/units/eng/requests", json!({"vcpus": 1})),
        ("/v1/requests/1/approve", json!({})),
        ("/v1/users", json!({"name": "bob", "role": "auditor"})),
    ] {
        let (s, v) = app.post(path, body).await;
        assert!(s.is_success(), "{path}: {v}");
    }
    let (_, t) = app.post("/v1/tokens", json!({"user": "bob"})).await;
    let id = t["id"].as_str().expect("a token id").to_owned();
    let (s, v) = app.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A workflow whose only task fails: `off` runs no guest to exec in.
    let def = "name: stop-off\ntasks: [{id: a, step: exec, params: {vm: off, command: 'true'}}]";
    let (s, v) = app
        .post("/v1/workflows", json!({ "definition": def }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Template `tpl`'s action `act`: a workflow whose only task fails.
    let def = "name: act-off\ninputs: {template: {}}\n\
               tasks: [{id: a, step: exec, params: {vm: off, command: 'true'}}]";
    let (s, v) = app
        .post("/v1/workflows", json!({ "definition": def }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app
        .put(
            "/v1/templates/tpl/actions/act",
            json!({"workflow": "act-off"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app
}

/// The token `fixture` revoked, by its id.
async fn revoked_token(app: &TestApp) -> String {
    let (_, v) = app.get("/v1/tokens").await;
    v["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["state"] == "revoked"))
        .and_then(|t| t["id"].as_str())
        .expect("the fixture's revoked token")
        .to_owned()
}

/// For a route: the name and body that put it in a wrong state, if it has one.
fn conflict_case(method: &Method, path: &str) -> Option<(&'static str, Option<Value>)> {
    let p = path.trim_start_matches("/v1");
    let name = match (method.as_str(), p) {
        ("POST", "/partitions") => {
            return Some(("", Some(json!({"name": "on", "configs": {"d": {}}}))));
        }
        ("POST", "/templates") => return Some(("", Some(json!({"vm": "off"})))),
        ("POST", "/pools") => return Some(("", Some(json!({"name": "sp"})))),
        ("DELETE", "/pools/{name}") => return None,
        ("POST", "/services") => {
            return Some((
                "",
                Some(json!({"class": "http", "pool": "sp", "for": ["tpl"]})),
            ));
        }
        ("POST", "/services/{name}/guests") => {
            return Some(("x", Some(json!({"guest": "tpl"}))));
        }
        ("POST", p) if p.ends_with("pools") => {
            return Some((
                "",
                Some(json!({"name": "ids", "kind": "identity", "values": ["x"]})),
            ));
        }
        ("POST", "/templates/{name}/fork") => {
            return Some(("tpl", Some(json!({"count": 1, "identity_pool": "ids"}))));
        }
        ("POST", "/networks") => {
            return Some(("", Some(json!({"name": "net0", "subnet": "10.97.0.0/24"}))));
        }
        ("DELETE", "/networks/{name}") => "net0",
        // A build that cannot succeed: no agent to build with is found
        // from a test binary, or (with $BROOD_AGENT) no such module.
        ("POST", "/images") => return Some(("", body_for(method, path, "x"))),
        ("POST", "/io/{name}/stop") => "switch-default",
        ("POST", "/units") => return Some(("", body_for(method, path, "eng"))),
        ("POST", "/users") => return Some(("", body_for(method, path, "bob"))),
        ("POST", "/requests/{id}/approve") | ("POST", "/requests/{id}/reject") => "1",
        ("DELETE", "/tokens/{id}") => "{revoked}",
        ("DELETE", "/templates/{name}") => "tpl",
        ("DELETE", p) if p.ends_with("pools/{name}") => "ids",
        ("DELETE", "/partitions/{name}") => "on",
        ("POST", "/partitions/{name}/start") => "on",
        ("POST", "/partitions/{name}/stop") => "off",
        ("POST", "/partitions/{name}/kill") => "off",
        ("POST", "/partitions/{name}/pause") => "off",
        ("POST", "/partitions/{name}/resume") => "on",
        ("POST", "/partitions/{name}/save") => "off",
        ("POST", "/partitions/{name}/restore") => "on",
        ("PUT", "/partitions/{name}/stage") => "on",
        ("POST", "/partitions/{name}/exec") => "off",
        ("POST", "/partitions/{name}/snapshots") => "tpl",
        ("DELETE", "/partitions/{name}/snapshots/{snapshot}") => "on",
        ("POST", "/partitions/{name}/snapshots/{snapshot}/revert") => "tpl",
        ("POST", "/partitions/{name}/session") => "off",
        ("GET", "/partitions/{name}/console/attach") => "off",
        ("GET" | "PUT", "/partitions/{name}/files") => "off",
        // A running partition (that boots a brood image, at that).
        ("PUT", "/partitions/{name}/boot-disk") => "on",
        // A template never changes.
        ("PATCH", "/partitions/{name}/resources")
        | ("POST", "/partitions/{name}/disks" | "/partitions/{name}/nics")
        | ("PUT" | "DELETE", "/partitions/{name}/disks/{disk}")
        | ("DELETE", "/partitions/{name}/nics/{nic}") => "tpl",
        // Not in a cluster (no --catalog): every cluster route is refused.
        (_, p) if p.starts_with("/cluster") => "x",
        ("POST", "/partitions/{name}/migrate") => "on",
        // Job 1 (the fixture's first define) has ended.
        ("POST", "/jobs/{id}/cancel") => "1",
        ("POST", "/workflows/{name}/run") => "stop-off",
        ("POST", "/templates/{name}/actions/{action}/run") => "tpl",
        _ => return None,
    };
    Some((name, body_for(method, path, "x")))
}

#[tokio::test]
async fn every_route_refuses_a_wrong_state_with_409() {
    let app = fixture().await;
    let before = app.holdings().await;
    for (method, path, op) in routes(&app).await {
        let case = conflict_case(&method, &path);
        assert_eq!(
            case.is_some(),
            documented(&op).contains(&409),
            "{method} {path}: a 409 case here exactly when the document lists 409"
        );
        let Some((name, body)) = case else { continue };
        let uri = if name == "{revoked}" {
            path.replace("{id}", &revoked_token(&app).await)
        } else {
            with_name(&path, name)
        };
        let (s, v) = app
            .send(request(&method, &uri, Some(TOKEN), body.as_ref()))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{method} {uri}: {v}");
        let c = code(&v);
        assert!(
            ["invalid_transition", "conflict", "capacity_exceeded"].contains(&c.as_str()),
            "{method} {uri}: {v}"
        );
    }
    assert_eq!(app.holdings().await, before, "a refusal changes nothing");
    app.assert_verified().await;
}

#[tokio::test]
async fn every_route_that_drives_the_engine_maps_its_failure_to_502() {
    let app = fixture().await;
    // For each route documenting 502: arrange the state, inject the failure.
    let mut seen = 0;
    for (method, path, op) in routes(&app).await {
        if !documented(&op).contains(&502) {
            continue;
        }
        seen += 1;
        let fake = app.fake();
        let p = path.trim_start_matches("/v1");
        let (name, body) = match (method.as_str(), p) {
            ("POST", "/partitions") => {
                fake.fail_next(Op::Boot, EngineError::InvalidSpec("no".into()));
                (
                    "",
                    Some(json!({"name": "new", "configs": {"d": {}}, "start": true})),
                )
            }
            ("POST", "/partitions/{name}/start") => {
                fake.fail_next(Op::Boot, EngineError::InvalidSpec("no".into()));
                ("off", None)
            }
            ("POST", "/partitions/{name}/exec") => {
                fake.on_exec(|_, _| {
                    Some(ExecReply {
                        agent_error: Some("guest I/O error".into()),
                        ..ExecReply::default()
                    })
                });
                ("on", body_for(&method, &path, ""))
            }
            ("POST", "/partitions/{name}/pause") => {
                fake.fail_next(
                    Op::Pause,
                    EngineError::InvalidState {
                        op: "pause",
                        state: "odd".into(),
                    },
                );
                ("on", None)
            }
            ("POST", "/partitions/{name}/restore") => {
                let (s, v) = app.post_empty("/v1/partitions/on/save").await;
                assert_eq!(s, StatusCode::OK, "{v}");
                fake.fail_next(Op::Restore, EngineError::Migration("bad state".into()));
                ("on", None)
            }
            ("POST", "/partitions/{name}/resume") => {
                for step in ["restore", "pause"] {
                    let (s, v) = app.post_empty(&format!("/v1/partitions/on/{step}")).await;
                    assert_eq!(s, StatusCode::OK, "{step}: {v}");
                }
                fake.fail_next(
                    Op::Resume,
                    EngineError::InvalidState {
                        op: "resume",
                        state: "odd".into(),
                    },
                );
                ("on", None)
            }
            ("POST", "/partitions/{name}/save") => {
                let (s, v) = app.post_empty("/v1/partitions/on/resume").await;
                assert_eq!(s, StatusCode::OK, "{v}");
                fake.fail_next(Op::Save, EngineError::Migration("disk full".into()));
                ("on", None)
            }
            ("POST", "/templates") => {
                fake.fail_prepare_fork(Some("service 10-db failed".into()));
                ("", Some(json!({"vm": "on"})))
            }
            ("POST", "/templates/{name}/fork") => {
                fake.fail_next(Op::Fork, EngineError::Migration("bad state".into()));
                ("tpl", Some(json!({"count": 1})))
            }
            ("POST", "/partitions/{name}/snapshots") => {
                fake.fail_next(Op::Snapshot, EngineError::Migration("disk full".into()));
                ("on", Some(json!({"name": "s2"})))
            }
            ("POST", "/partitions/{name}/snapshots/{snapshot}/revert") => {
                fake.fail_next(Op::Restore, EngineError::Migration("bad state".into()));
                ("on", None)
            }
            // The fake agent runs no sessions: starting one fails.
            ("POST", "/partitions/{name}/session") => ("on", body_for(&method, &path, "")),
            // The fake agent fails to stat anything under /proc.
            ("GET", "/partitions/{name}/files") => ("on?path=/proc/x", None),
            ("PUT", "/partitions/{name}/files") => {
                fake.on_exec(|_, cmd| {
                    cmd.starts_with("mv ").then(|| ExecReply {
                        agent_error: Some("guest I/O error".into()),
                        ..ExecReply::default()
                    })
                });
                ("on?path=/tmp/f", None)
            }
            // The fake VM has no cgroup whose CPU cap could change live.
            ("PATCH", "/partitions/{name}/resources") => ("on", Some(json!({"cpu_cap_pct": 50}))),
            // Nor does it grow disks: a running VM with a disk `d0`.
            ("PUT", "/partitions/{name}/disks/{disk}") => {
                let (s, v) = app
                    .post(
                        "/v1/partitions",
                        json!({"name": "ond", "configs": {"d": {"disks": [{"name": "d0", "size_gib": 1}]}}, "start": true}),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{v}");
                ("ond", Some(json!({"size_gib": 2})))
            }
            ("POST", "/services") => {
                // The pool is empty: the cold boot of a member fails.
                fake.fail_next(Op::Boot, EngineError::InvalidSpec("no".into()));
                ("", Some(json!({"class": "http", "pool": "sp"})))
            }
            _ => panic!("{method} {path} documents 502: add its engine failure here"),
        };
        // A query rides on the name; it goes after the path.
        let (name, query) = name.split_once('?').map_or((name, ""), |(n, q)| (n, q));
        let mut uri = with_name(&path, name);
        if !query.is_empty() {
            uri = format!("{uri}?{query}");
        }
        let (s, v) = app
            .send(request(&method, &uri, Some(TOKEN), body.as_ref()))
            .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{method} {uri}: {v}");
        assert_eq!(code(&v), "engine_failed", "{method} {uri}");
        fake.clear_failures();
        fake.fail_prepare_fork(None);
        if p.ends_with("/revert") {
            // The revert killed `on` before its restore failed.
            assert_eq!(app.run_state("on").await, "stopped");
            let (s, v) = app.post_empty("/v1/partitions/on/start").await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    }
    assert!(seen >= 4, "{seen} routes document 502");
    // Each failure was undone: nothing new exists, nothing is held for it.
    let h = app.holdings().await;
    assert!(!h.contains_key("new"), "{h:?}");
    assert!(
        !h.contains_key("tpl-1"),
        "a child whose fork failed is removed: {h:?}"
    );
    assert_eq!(h["off"]["memory_mib"], 0);
    assert_eq!(app.run_state("on").await, "running");
    app.assert_verified().await;
}

#[tokio::test]
async fn other_engine_failures_are_502_where_an_operation_reaches_the_engine() {
    let app = TestApp::new().await;
    app.running("on").await;
    let pause = [
        (Op::Pause, "/v1/partitions/on/pause"),
        (Op::Save, "/v1/partitions/on/save"),
    ];
    for (op, uri) in pause {
        app.fake()
            .fail_next(op, EngineError::Unsupported { op: "test" });
        let (s, v) = app.post_empty(uri).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{uri}: {v}");
        assert_eq!(app.run_state("on").await, "running");
    }
    app.post_empty("/v1/partitions/on/pause").await;
    app.fake()
        .fail_next(Op::Resume, EngineError::Unsupported { op: "cont" });
    let (s, v) = app.post_empty("/v1/partitions/on/resume").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(app.run_state("on").await, "paused");
    app.post_empty("/v1/partitions/on/resume").await;
    app.post_empty("/v1/partitions/on/save").await;
    app.fake()
        .fail_next(Op::Restore, EngineError::Migration("truncated".into()));
    let (s, v) = app.post_empty("/v1/partitions/on/restore").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    let (_, v) = app.get("/v1/partitions/on").await;
    assert_eq!(
        v["run_state"], "saved",
        "a failed restore keeps the state: {v}"
    );
    assert_eq!(v["pending_op"], Value::Null);
    assert_eq!(app.holdings().await["on"]["memory_mib"], 0);
    app.assert_verified().await;
    let (s, v) = app.post_empty("/v1/partitions/on/restore").await;
    assert_eq!(
        (s, v["run_state"].clone()),
        (StatusCode::OK, json!("running"))
    );
}

#[tokio::test]
async fn list_and_log_refuse_bad_queries() {
    let app = TestApp::new().await;
    for uri in [
        "/v1/partitions?limit=0",
        "/v1/partitions?limit=abc",
        "/v1/partitions?bogus=1",
        "/v1/ledger/log?limit=0",
        "/v1/partitions/x/console?bytes=-1",
    ] {
        let (s, v) = app.get(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(code(&v), "bad_request", "{uri}");
    }
}

/// Every route this file has cases for. A route added to the API fails
/// `every_route_has_a_case` until its cases are written above and it is
/// listed here (identity pools are listed under their old path too).
const KNOWN: &[&str] = &[
    "GET /v1/partitions",
    "POST /v1/partitions",
    "GET /v1/partitions/{name}",
    "DELETE /v1/partitions/{name}",
    "POST /v1/partitions/{name}/start",
    "POST /v1/partitions/{name}/stop",
    "POST /v1/partitions/{name}/kill",
    "POST /v1/partitions/{name}/pause",
    "POST /v1/partitions/{name}/resume",
    "POST /v1/partitions/{name}/save",
    "POST /v1/partitions/{name}/restore",
    "PUT /v1/partitions/{name}/config",
    "PUT /v1/partitions/{name}/stage",
    "GET /v1/partitions/{name}/console",
    "POST /v1/partitions/{name}/exec",
    "GET /v1/partitions/{name}/snapshots",
    "POST /v1/partitions/{name}/snapshots",
    "DELETE /v1/partitions/{name}/snapshots/{snapshot}",
    "POST /v1/partitions/{name}/snapshots/{snapshot}/revert",
    "PATCH /v1/partitions/{name}/resources",
    "POST /v1/partitions/{name}/disks",
    "PUT /v1/partitions/{name}/disks/{disk}",
    "DELETE /v1/partitions/{name}/disks/{disk}",
    "POST /v1/partitions/{name}/nics",
    "DELETE /v1/partitions/{name}/nics/{nic}",
    "POST /v1/partitions/{name}/session",
    "GET /v1/partitions/{name}/console/attach",
    "GET /v1/partitions/{name}/files",
    "PUT /v1/partitions/{name}/files",
    "PUT /v1/partitions/{name}/boot-disk",
    "GET /v1/templates",
    "POST /v1/templates",
    "GET /v1/templates/{name}",
    "DELETE /v1/templates/{name}",
    "POST /v1/templates/{name}/fork",
    "GET /v1/identity-pools",
    "POST /v1/identity-pools",
    "GET /v1/identity-pools/{name}",
    "DELETE /v1/identity-pools/{name}",
    "GET /v1/networks",
    "POST /v1/networks",
    "GET /v1/networks/{name}",
    "DELETE /v1/networks/{name}",
    "GET /v1/images",
    "POST /v1/images",
    "GET /v1/images/{name}",
    "DELETE /v1/images/{name}",
    "GET /v1/io",
    "GET /v1/io/{name}",
    "POST /v1/io/{name}/restart",
    "POST /v1/io/{name}/stop",
    "PATCH /v1/io/{name}",
    "GET /v1/ledger",
    "GET /v1/ledger/log",
    "GET /v1/ledger/verify",
    "GET /v1/host",
    "GET /v1/events",
    "GET /v1/openapi.json",
    "GET /v1/pools",
    "POST /v1/pools",
    "GET /v1/pools/{name}",
    "PATCH /v1/pools/{name}",
    "DELETE /v1/pools/{name}",
    "GET /v1/services",
    "POST /v1/services",
    "GET /v1/services/{name}",
    "DELETE /v1/services/{name}",
    "POST /v1/services/{name}/guests",
    "GET /v1/service-classes",
    "GET /v1/units",
    "POST /v1/units",
    "GET /v1/units/{name}",
    "POST /v1/units/{name}/requests",
    "GET /v1/requests",
    "GET /v1/requests/{id}",
    "POST /v1/requests/{id}/approve",
    "POST /v1/requests/{id}/reject",
    "GET /v1/infra",
    "PUT /v1/infra",
    "GET /v1/users",
    "POST /v1/users",
    "DELETE /v1/users/{name}",
    "GET /v1/tokens",
    "POST /v1/tokens",
    "DELETE /v1/tokens/{id}",
    "GET /v1/prices",
    "PUT /v1/prices",
    "GET /v1/chargeback",
    "POST /v1/chargeback/refunds",
    "GET /v1/cluster",
    "GET /v1/cluster/hosts",
    "POST /v1/cluster/hosts",
    "GET /v1/cluster/hosts/{name}",
    "DELETE /v1/cluster/hosts/{name}",
    "POST /v1/cluster/hosts/{name}/drain",
    "POST /v1/cluster/hosts/{name}/undrain",
    "GET /v1/cluster/zones",
    "POST /v1/cluster/zones",
    "GET /v1/cluster/domains",
    "POST /v1/cluster/domains",
    "GET /v1/cluster/placements",
    "POST /v1/cluster/placements",
    "GET /v1/cluster/ops",
    "POST /v1/cluster/ops",
    "DELETE /v1/cluster/ops/{name}",
    "POST /v1/partitions/{name}/migrate",
    "GET /v1/jobs",
    "GET /v1/jobs/{id}",
    "POST /v1/jobs/{id}/cancel",
    "GET /v1/jobs/{id}/wait",
    "GET /v1/workflows",
    "POST /v1/workflows",
    "GET /v1/workflows/{name}",
    "DELETE /v1/workflows/{name}",
    "POST /v1/workflows/{name}/run",
    "GET /v1/templates/{name}/actions",
    "PUT /v1/templates/{name}/actions/{action}",
    "DELETE /v1/templates/{name}/actions/{action}",
    "POST /v1/templates/{name}/actions/{action}/run",
];

#[tokio::test]
async fn every_route_has_a_case() {
    let app = TestApp::new().await;
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for (m, p, op) in routes(&app).await {
        let key = format!("{m} {p}");
        if !KNOWN.contains(&key.as_str()) {
            missing.push(format!("{key}: not in KNOWN"));
        }
        let json_body = op["requestBody"]["content"]
            .get("application/json")
            .is_some();
        if json_body && body_for(&m, &p, "x").is_none() {
            missing.push(format!("{key}: no valid body in body_for"));
        }
        seen.insert(key);
    }
    for k in KNOWN {
        if !seen.contains(*k) {
            missing.push(format!("{k}: listed but gone from the API"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
    // The routes that answer without a name or body still answer.
    for uri in [
        "/v1/partitions",
        "/v1/templates",
        "/v1/ledger",
        "/v1/ledger/log",
        "/v1/host",
    ] {
        let (s, v) = app.get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
    }
    let (s, v) = app.get(app.pools_path()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
