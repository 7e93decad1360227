#![allow(clippy::tests_outside_test_module)]
//! The web portal's sessions and CSRF rules on the fake engine, without a
//! browser (issue 14): sign-in is a double submit, a session cookie is
//! HttpOnly and SameSite=Strict, every form post needs the session's CSRF
//! value and the same origin, sign-out ends the session for good, a
//! refused (revoked) token ends it too, a unit's user gets the API's 404
//! for another unit's VM, and the CSV export is the API's report. The
//! jobs view: a unit's jobs on its page and `/ui/jobs`, a job's page with
//! its log, another unit's job the same 404 as none, cancel of a queued job
//! only with the CSRF token, job events on `/ui/events` only for the
//! caller's jobs, and a workflow run with `k=v` inputs.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_ledger::Resources;
use brood_testkit::{TOKEN, TestApp};
use serde_json::{Value, json};
use tower::ServiceExt;

/// An answer: status, `Set-Cookie` values, body text.
struct Page {
    status: StatusCode,
    cookies: Vec<String>,
    location: Option<String>,
    text: String,
}

async fn send(app: &TestApp, req: Request<Body>) -> Page {
    let resp = app
        .router()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    let cookies = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    Page {
        status,
        cookies,
        location,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> Page {
    let mut b = Request::builder().uri(path).header(header::HOST, "portal");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn post(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    fields: &[(&str, &str)],
) -> Page {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, "portal")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    send(app, b.body(Body::from(form(fields))).unwrap()).await
}

/// The value of `name=` in a `Set-Cookie`.
fn cookie_value(p: &Page, name: &str) -> Option<String> {
    p.cookies.iter().find_map(|c| {
        let v = c.strip_prefix(&format!("{name}="))?;
        Some(v.split(';').next().unwrap_or_default().to_owned())
    })
}

/// The first hidden `csrf` field of a page.
fn csrf_of(text: &str) -> String {
    let at = text
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no csrf field in {text}"));
    let rest = &text[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The part of a page from `from` up to the next `to`.
fn between<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in the page: {text}"));
    let rest = &text[at..];
    let end = rest
        .find(to)
        .unwrap_or_else(|| panic!("no {to:?} after {from:?}: {rest}"));
    &rest[..end]
}

/// The part of a page after `from` up to the next `to`.
fn inside<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in the page: {text}"));
    let rest = &text[at + from.len()..];
    &rest[..rest
        .find(to)
        .unwrap_or_else(|| panic!("no {to:?} after {from:?}: {rest}"))]
}

/// Signs in with `token`; returns the `Cookie` header of the session.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let login = get(app, "/ui/login", None).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let pre = cookie_value(&login, "brood_login").expect("a double-submit cookie");
    let csrf = csrf_of(&login.text);
    let p = post(
        app,
        "/ui/login",
        Some(&format!("brood_login={pre}")),
        Some("http://portal"),
        &[("csrf", &csrf), ("token", token)],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let set = p
        .cookies
        .iter()
        .find(|c| c.starts_with("brood_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP gets no Secure cookie: {set}"
    );
    format!(
        "brood_session={}",
        cookie_value(&p, "brood_session").unwrap()
    )
}

async fn api(app: &TestApp, m: Method, uri: &str, token: &str, body: Option<Value>) -> Value {
    let mut b = Request::builder()
        .method(m.clone())
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let (s, v) = app.send(b.body(body).unwrap()).await;
    assert!(s.is_success(), "{m} {uri}: {s} {v}");
    v
}

/// Two units, `eng` with user alice and `ops` with a VM of its own.
async fn fixture() -> (TestApp, String) {
    let app = TestApp::builder()
        .capacity(Resources {
            memory_mib: 65536,
            vcpus: 64,
            disk_gib: 200,
            nics: 16,
        })
        .build()
        .await;
    for u in ["eng", "ops"] {
        api(
            &app,
            Method::POST,
            "/v1/units",
            TOKEN,
            Some(json!({"name": u, "contact": "x@example.com"})),
        )
        .await;
        let r = api(
            &app,
            Method::POST,
            &format!("/v1/units/{u}/requests"),
            TOKEN,
            Some(json!({"vcpus": 4, "memory_mib": 4096, "disk_gib": 10})),
        )
        .await;
        let id = r["id"].as_u64().unwrap();
        api(
            &app,
            Method::POST,
            &format!("/v1/requests/{id}/approve"),
            TOKEN,
            Some(json!({})),
        )
        .await;
    }
    for (name, unit) in [("alice", "eng"), ("oscar", "ops")] {
        api(
            &app,
            Method::POST,
            "/v1/users",
            TOKEN,
            Some(json!({"name": name, "role": "unit-user", "unit": unit})),
        )
        .await;
    }
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "oscar"})),
    )
    .await;
    let oscar = t["token"].as_str().unwrap().to_owned();
    api(
        &app,
        Method::POST,
        "/v1/partitions",
        &oscar,
        Some(json!({"name": "ops-db", "configs": {"d": {"memory_mib": 256}}, "start": true})),
    )
    .await;
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "alice"})),
    )
    .await;
    (app, t["token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn sign_in_is_a_double_submit_and_a_wrong_token_is_refused() {
    let (app, _) = fixture().await;
    let login = get(&app, "/ui/login", None).await;
    let pre = cookie_value(&login, "brood_login").unwrap();
    let csrf = csrf_of(&login.text);
    // Without the cookie, or with another value: refused before the token is looked at.
    let p = post(
        &app,
        "/ui/login",
        None,
        None,
        &[("csrf", &csrf), ("token", TOKEN)],
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    assert!(p.text.contains("CSRF"), "{}", p.text);
    let cookie = format!("brood_login={pre}");
    let p = post(
        &app,
        "/ui/login",
        Some(&cookie),
        None,
        &[("csrf", "x"), ("token", TOKEN)],
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // From another site: refused whatever it carries.
    let p = post(
        &app,
        "/ui/login",
        Some(&cookie),
        Some("https://evil.example"),
        &[("csrf", &csrf), ("token", TOKEN)],
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = post(
        &app,
        "/ui/login",
        Some(&cookie),
        None,
        &[("csrf", &csrf), ("token", "nope")],
    )
    .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.text.contains("unknown, revoked or expired"), "{}", p.text);
    assert!(cookie_value(&p, "brood_session").is_none());
    // Pages need a session.
    let p = get(&app, "/ui/admin", None).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.text.contains("Sign in"), "{}", p.text);
}

#[tokio::test]
async fn every_form_post_needs_the_sessions_csrf_value() {
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let unit = get(&app, "/ui/unit", Some(&cookie)).await;
    assert_eq!(unit.status, StatusCode::OK, "{}", unit.text);
    assert!(unit.text.contains("Unit eng"), "{}", unit.text);
    let csrf = csrf_of(&unit.text);
    let vm = [
        ("name", "w1"),
        ("memory_mib", "256"),
        ("vcpus", "1"),
        ("start", "true"),
    ];
    let p = post(&app, "/ui/unit/vms", Some(&cookie), None, &vm).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    let mut with_bad = vm.to_vec();
    with_bad.push(("csrf", "0000"));
    let p = post(&app, "/ui/unit/vms", Some(&cookie), None, &with_bad).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // Another session's value does not do either.
    let other = sign_in(&app, &alice).await;
    let other_csrf = csrf_of(&get(&app, "/ui/unit", Some(&other)).await.text);
    assert_ne!(other_csrf, csrf);
    let mut with_other = vm.to_vec();
    with_other.push(("csrf", &other_csrf));
    let p = post(&app, "/ui/unit/vms", Some(&cookie), None, &with_other).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let mut good = vm.to_vec();
    good.push(("csrf", &csrf));
    good.push(("back", "/ui/unit"));
    let p = post(
        &app,
        "/ui/unit/vms",
        Some(&cookie),
        Some("https://evil.example"),
        &good,
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let (s, _) = app.get("/v1/partitions/w1").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "no refused post may have made the VM"
    );
    let p = post(
        &app,
        "/ui/unit/vms",
        Some(&cookie),
        Some("http://portal"),
        &good,
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    assert_eq!(p.location.as_deref(), Some("/ui/unit"));
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    assert!(page.text.contains(r#"data-vm="w1""#), "{}", page.text);
    // An API error is shown as its message: a second VM of the same name.
    let p = post(&app, "/ui/unit/vms", Some(&cookie), None, &good).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.text);
    assert!(p.text.contains("w1"), "{}", p.text);
}

#[tokio::test]
async fn another_units_vm_is_the_same_404_as_none() {
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let theirs = get(&app, "/ui/vms/ops-db", Some(&cookie)).await;
    let none = get(&app, "/ui/vms/no-such-vm", Some(&cookie)).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text);
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(
        theirs.text.replace("ops-db", "NAME"),
        none.text.replace("no-such-vm", "NAME"),
        "another unit's VM must look like one that does not exist"
    );
    let unit = get(&app, "/ui/unit?unit=ops", Some(&cookie)).await;
    assert!(
        unit.text.contains("Unit eng"),
        "a unit user's view is its own unit: {}",
        unit.text
    );
    assert!(!unit.text.contains("ops-db"));
    // The administrator sees it.
    let admin = sign_in(&app, TOKEN).await;
    let p = get(&app, "/ui/vms/ops-db?unit=ops", Some(&admin)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
}

#[tokio::test]
async fn sign_out_and_a_revoked_token_end_the_session() {
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    let csrf = csrf_of(&page.text);
    // Sign-out is a form too.
    let p = post(&app, "/ui/logout", Some(&cookie), None, &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = post(&app, "/ui/logout", Some(&cookie), None, &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.cookies
            .iter()
            .any(|c| c.starts_with("brood_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        p.cookies
    );
    let p = get(&app, "/ui/unit", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.text.contains("signed out"), "{}", p.text);
    // A session whose token is revoked ends at its next request.
    let cookie = sign_in(&app, &alice).await;
    let tokens = api(&app, Method::GET, "/v1/tokens", TOKEN, None).await;
    for t in tokens["items"].as_array().unwrap() {
        if t["user"] == "alice" {
            let id = t["id"].as_str().unwrap();
            api(
                &app,
                Method::DELETE,
                &format!("/v1/tokens/{id}"),
                TOKEN,
                None,
            )
            .await;
        }
    }
    let p = get(&app, "/ui/unit", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{}", p.text);
    assert!(p.text.contains("revoked"), "{}", p.text);
    let p = get(&app, "/ui/unit", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_csv_export_is_the_apis_report_and_pages_render_for_the_admin() {
    let (app, _) = fixture().await;
    api(
        &app,
        Method::PUT,
        "/v1/prices",
        TOKEN,
        Some(json!({"item": "vcpu", "micros_per_hour": 10000})),
    )
    .await;
    let admin = sign_in(&app, TOKEN).await;
    for page in [
        "/ui/admin",
        "/ui/audit",
        "/ui/verify",
        "/ui/chargeback",
        "/ui/unit",
        "/ui/unit?unit=eng",
    ] {
        let p = get(&app, page, Some(&admin)).await;
        assert_eq!(p.status, StatusCode::OK, "{page}: {}", p.text);
    }
    let from = "2020-01-01T00:00:00Z";
    let to = "2100-01-01T00:00:00Z";
    let p = get(
        &app,
        &format!("/ui/chargeback.csv?from={from}&to={to}"),
        Some(&admin),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let report = api(
        &app,
        Method::GET,
        &format!("/v1/chargeback?from={from}&to={to}"),
        TOKEN,
        None,
    )
    .await;
    let mut lines = p.text.lines();
    assert_eq!(lines.next(), Some("unit,model,item,quantity_hours,amount"));
    let rows: Vec<&str> = lines.collect();
    let want: usize = report["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["lines"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows.len(), want, "{}\n{report}", p.text);
    assert!(want > 0, "{report}");
    for u in report["units"].as_array().unwrap() {
        for l in u["lines"].as_array().unwrap() {
            let micros = l["micros"].as_u64().unwrap();
            let row = format!(
                "{},{},{},{},{}.{:06}",
                u["unit"].as_str().unwrap(),
                l["model"].as_str().unwrap(),
                l["item"].as_str().unwrap(),
                l["quantity_hours"].as_f64().unwrap(),
                micros / 1_000_000,
                micros % 1_000_000
            );
            assert!(rows.contains(&row.as_str()), "{row} not in {}", p.text);
        }
    }
    // Utilization over time: ops-db's memory and vCPUs, charted per unit.
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    let section = between(&page.text, "Utilization over time</h2>", "</section>");
    assert!(
        section.contains("Memory held per unit") && section.contains("vCPUs held per unit"),
        "{section}"
    );
    assert!(
        section.contains("<path d=\"M"),
        "no series drawn: {section}"
    );
    assert!(
        section.contains(">ops</span>"),
        "ops's series has no key: {section}"
    );
    // Registration is a form of the administrator's page; a unit's user is refused by the API.
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    let csrf = csrf_of(&page.text);
    let reg = [
        ("name", "sales"),
        ("contact", "s@example.com"),
        ("back", "/ui/admin"),
    ];
    let mut fields = reg.to_vec();
    fields.push(("csrf", &csrf));
    let p = post(&app, "/ui/units", Some(&admin), None, &fields).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    api(&app, Method::GET, "/v1/units/sales", TOKEN, None).await;
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "alice"})),
    )
    .await;
    let alice = sign_in(&app, t["token"].as_str().unwrap()).await;
    let csrf = csrf_of(&get(&app, "/ui/unit", Some(&alice)).await.text);
    let mut fields = vec![
        ("name", "rogue"),
        ("contact", "r@example.com"),
        ("csrf", &csrf),
    ];
    fields.push(("back", "/ui/unit"));
    let p = post(&app, "/ui/units", Some(&alice), None, &fields).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    assert!(p.text.contains("may not"), "the API's message: {}", p.text);
    // Unknown portal pages are the portal's 404; the API is still the API.
    let p = get(&app, "/ui/nothing-here", Some(&admin)).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let (s, _) = app.get("/v1/host").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn the_event_stream_names_only_vms_the_caller_may_read() {
    use futures::StreamExt;
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let req = Request::builder()
        .uri("/ui/events")
        .header(header::HOST, "portal")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let resp = app
        .router()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    // The other unit's VM changes first, then alice's own is made.
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "oscar"})),
    )
    .await;
    let oscar = t["token"].as_str().unwrap().to_owned();
    api(
        &app,
        Method::POST,
        "/v1/partitions/ops-db/stop",
        &oscar,
        None,
    )
    .await;
    api(
        &app,
        Method::POST,
        "/v1/partitions/ops-db/start",
        &oscar,
        None,
    )
    .await;
    api(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        Some(json!({"name": "mine", "configs": {"d": {"memory_mib": 256}}, "start": true})),
    )
    .await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !seen.contains(r#""name":"mine""#) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no event about alice's VM; the stream so far: {seen}"))
            .expect("the stream ended")
            .expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !seen.contains("ops-db"),
        "the stream named the other unit's VM: {seen}"
    );
    assert!(seen.contains(r#""run_state":"#), "{seen}");
    // Signing out ends the stream.
    let csrf = csrf_of(&get(&app, "/ui/unit", Some(&cookie)).await.text);
    post(&app, "/ui/logout", Some(&cookie), None, &[("csrf", &csrf)]).await;
    api(&app, Method::POST, "/v1/partitions/mine/stop", &alice, None).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session");
}

#[tokio::test]
async fn a_unit_user_forks_children_from_its_units_template() {
    let (app, alice) = fixture().await;
    let admin = sign_in(&app, TOKEN).await;
    let csrf = csrf_of(&get(&app, "/ui/unit?unit=eng", Some(&admin)).await.text);
    // The administrator, acting inside eng, makes a VM and a template of it.
    let vm = [
        ("name", "base"),
        ("memory_mib", "256"),
        ("start", "true"),
        ("unit", "eng"),
    ];
    let mut f = vm.to_vec();
    f.push(("csrf", &csrf));
    let p = post(&app, "/ui/unit/vms", Some(&admin), None, &f).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let f = [("template", "tpl"), ("unit", "eng"), ("csrf", &csrf)];
    let p = post(&app, "/ui/vms/base/template", Some(&admin), None, &f).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    // alice sees it in her unit's view and forks two children from it.
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    assert!(
        page.text.contains("/ui/templates/tpl/fork"),
        "{}",
        page.text
    );
    assert!(
        !page.text.contains("/ui/unit/requests"),
        "a unit user is offered requests"
    );
    let csrf = csrf_of(&page.text);
    let f = [("count", "2"), ("csrf", &csrf), ("back", "/ui/unit")];
    let p = send(
        &app,
        Request::builder()
            .method(Method::POST)
            .uri("/ui/templates/tpl/fork")
            .header(header::HOST, "portal")
            .header(header::COOKIE, &cookie)
            .header("x-portal-async", "1")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&f)))
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert!(
        p.text.starts_with("<p class=\"notice\""),
        "a fragment: {}",
        p.text
    );
    assert!(p.text.contains("forked tpl-"), "{}", p.text);
    let list = api(&app, Method::GET, "/v1/partitions", &alice, None).await;
    let children = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["parent"] == "tpl")
        .count();
    assert_eq!(children, 2, "{list}");
    // An error in a fragment is the API's message.
    let p = send(
        &app,
        Request::builder()
            .method(Method::POST)
            .uri("/ui/templates/none/fork")
            .header(header::HOST, "portal")
            .header(header::COOKIE, &cookie)
            .header("x-portal-async", "1")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&f)))
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(
        p.text.contains("class=\"error\"") && p.text.contains("none"),
        "{}",
        p.text
    );
}

/// The jobs alice's unit made, newest first, as the API lists them to her.
async fn jobs_of(app: &TestApp, token: &str) -> Vec<Value> {
    let v = api(app, Method::GET, "/v1/jobs", token, None).await;
    v["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_jobs_view_lists_the_units_jobs_and_hides_another_units() {
    let (app, alice) = fixture().await;
    api(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        Some(json!({"name": "mine", "configs": {"d": {"memory_mib": 256}}, "start": true})),
    )
    .await;
    let mine = jobs_of(&app, &alice).await;
    let define = mine
        .iter()
        .find(|j| {
            j["kind"].as_str().unwrap().starts_with("partition.define") && j["target"] == "mine"
        })
        .unwrap_or_else(|| panic!("no define job of mine: {mine:?}"))
        .clone();
    let id = define["id"].as_u64().unwrap();
    let cookie = sign_in(&app, &alice).await;
    // The unit's page and the jobs page list it with its state and times.
    for path in ["/ui/unit", "/ui/jobs"] {
        let page = get(&app, path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
        let row = format!(r#"<tr data-job="{id}">"#);
        let at = page
            .text
            .find(&row)
            .unwrap_or_else(|| panic!("{path} lacks job {id}: {}", page.text));
        let cells = &page.text[at..at + page.text[at..].find("</tr>").unwrap()];
        for want in ["succeeded", "partition.define", "mine"] {
            assert!(cells.contains(want), "{path}: {want} not in {cells}");
        }
        assert!(
            !page.text.contains("ops-db"),
            "{path} names the other unit's job"
        );
    }
    // A job's page shows its event log.
    let page = get(&app, &format!("/ui/jobs/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("Event log"), "{}", page.text);
    for ev in define["events"].as_array().into_iter().flatten() {
        let kind = ev["kind"].as_str().unwrap();
        assert!(page.text.contains(kind), "no {kind} in {}", page.text);
    }
    let shown = api(&app, Method::GET, &format!("/v1/jobs/{id}"), &alice, None).await;
    assert!(!shown["events"].as_array().unwrap().is_empty(), "{shown}");
    // The other unit's job is the same 404 as a job that does not exist.
    let theirs = api(&app, Method::GET, "/v1/jobs?unit=ops", TOKEN, None).await;
    let other = theirs["items"][0]["id"].as_u64().expect("ops has a job");
    let none = 999_999;
    let a = get(&app, &format!("/ui/jobs/{other}"), Some(&cookie)).await;
    let b = get(&app, &format!("/ui/jobs/{none}"), Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(b.status, StatusCode::NOT_FOUND, "{}", b.text);
    let error_of = |text: &str, id: u64| {
        let at = text.find(r#"class="error""#).expect("an error box");
        let end = at + text[at..].find("</p>").unwrap();
        text[at..end].replace(&format!("job {id}"), "job N")
    };
    assert_eq!(
        error_of(&a.text, other),
        error_of(&b.text, none),
        "another unit's job differs from none"
    );
    assert!(!a.text.contains("ops"), "{}", a.text);
    // Not a number: the API's 400, shown as its message.
    let c = get(&app, "/ui/jobs/x", Some(&cookie)).await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST, "{}", c.text);
    // The administrator's page lists recent jobs of all units, by name.
    let admin = sign_in(&app, TOKEN).await;
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    for want in [
        format!(r#"<tr data-job="{id}">"#),
        format!(r#"<tr data-job="{other}">"#),
        "<td>ops</td>".to_owned(),
        "<td>eng</td>".to_owned(),
    ] {
        assert!(page.text.contains(&want), "admin page lacks {want}");
    }
    // The rows portal.js refreshes are the same rows.
    let rows = get(&app, "/ui/jobs?part=rows", Some(&cookie)).await;
    assert_eq!(rows.status, StatusCode::OK);
    assert!(rows.text.starts_with("<tr data-job="), "{}", rows.text);
    assert!(!rows.text.contains("ops-db"), "{}", rows.text);
}

#[tokio::test]
async fn a_queued_job_is_cancelled_from_its_page_with_the_csrf_token_only() {
    let (app, alice) = fixture().await;
    // Two creates hold both heavy slots; the third waits in the queue.
    app.fake().hold(brood_testkit::Op::Boot);
    let mut ids = Vec::new();
    for n in ["q1", "q2", "q3"] {
        let j = api(
            &app,
            Method::POST,
            "/v1/partitions?wait=false",
            &alice,
            Some(json!({"name": n, "configs": {"d": {"memory_mib": 256}}, "start": true})),
        )
        .await;
        ids.push(j["id"].as_u64().unwrap());
    }
    let queued = ids[2];
    let state = |id: u64| {
        let app = &app;
        let alice = &alice;
        async move {
            api(app, Method::GET, &format!("/v1/jobs/{id}"), alice, None).await["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(state(queued).await, "queued");
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, &format!("/ui/jobs/{queued}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let action = format!("/ui/jobs/{queued}/cancel");
    assert!(page.text.contains(&action), "no cancel form: {}", page.text);
    let csrf = csrf_of(&page.text);
    // Without the token, or with a wrong one: refused, the job still waits.
    for fields in [vec![], vec![("csrf", "0000")]] {
        let p = post(&app, &action, Some(&cookie), None, &fields).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
        assert!(p.text.contains("CSRF"), "{}", p.text);
        assert_eq!(state(queued).await, "queued");
    }
    // With it: cancelled, and its page then offers no cancel.
    let back = format!("/ui/jobs/{queued}");
    let p = post(
        &app,
        &action,
        Some(&cookie),
        None,
        &[("csrf", &csrf), ("back", &back)],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    assert_eq!(p.location.as_deref(), Some(back.as_str()));
    assert_eq!(state(queued).await, "cancelled");
    let page = get(&app, &back, Some(&cookie)).await;
    assert!(page.text.contains("cancelled"), "{}", page.text);
    assert!(!page.text.contains(&action), "{}", page.text);
    // A job that has ended: the API's 409, as its message.
    let p = post(&app, &action, Some(&cookie), None, &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.text);
    app.fake().release(brood_testkit::Op::Boot);
    for id in &ids[..2] {
        let j = api(
            &app,
            Method::GET,
            &format!("/v1/jobs/{id}/wait?timeout_s=60"),
            &alice,
            None,
        )
        .await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
}

#[tokio::test]
async fn the_event_stream_forwards_only_the_callers_jobs() {
    use futures::StreamExt;
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let req = Request::builder()
        .uri("/ui/events")
        .header(header::HOST, "portal")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let resp = app
        .router()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    // The other unit's jobs run first, then alice's own.
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "oscar"})),
    )
    .await;
    let oscar = t["token"].as_str().unwrap().to_owned();
    for op in ["stop", "start"] {
        let uri = format!("/v1/partitions/ops-db/{op}");
        api(&app, Method::POST, &uri, &oscar, None).await;
    }
    let theirs: Vec<u64> = jobs_of(&app, &oscar)
        .await
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    api(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        Some(json!({"name": "mine", "configs": {"d": {"memory_mib": 256}}})),
    )
    .await;
    let want = r#""state":"succeeded""#;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !seen
        .split("\n\n")
        .any(|e| e.contains("event: job") && e.contains(r#""target":"mine""#) && e.contains(want))
    {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no job event of alice's VM; the stream so far: {seen}"))
            .expect("the stream ended")
            .expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !seen.contains("ops-db"),
        "the stream named the other unit's job: {seen}"
    );
    for id in theirs {
        assert!(
            !seen.contains(&format!(r#""id":{id},"#)),
            "the stream sent job {id} of the other unit: {seen}"
        );
    }
    assert!(seen.contains(r#""kind":"partition.define"#), "{seen}");
}

#[tokio::test]
async fn a_unit_user_runs_a_workflow_with_inputs_and_sees_its_job() {
    let (app, alice) = fixture().await;
    let def = "
name: make
inputs:
  name: {}
tasks:
  - id: vm
    step: create
    params: {name: '${data.name}', memory_mib: 64}
";
    api(
        &app,
        Method::POST,
        "/v1/workflows",
        TOKEN,
        Some(json!({"definition": def})),
    )
    .await;
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    let action = "/ui/workflows/make/run";
    assert!(page.text.contains(action), "no run form: {}", page.text);
    let csrf = csrf_of(&page.text);
    // Bad inputs: a clear message, no job.
    let before = jobs_of(&app, &alice).await.len();
    for (inputs, says) in [
        ("novalue", "is not k=v"),
        ("other=1", "has no input"),
        ("name=a\nname=b", "given twice"),
    ] {
        let f = [("csrf", csrf.as_str()), ("inputs", inputs)];
        let p = post(&app, action, Some(&cookie), None, &f).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{inputs}: {}", p.text);
        assert!(p.text.contains(says), "{inputs}: {}", p.text);
    }
    assert_eq!(jobs_of(&app, &alice).await.len(), before, "a job was made");
    // Without the CSRF token: refused.
    let p = post(
        &app,
        action,
        Some(&cookie),
        None,
        &[("inputs", "name=wf-1")],
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    // Good inputs: the job's page.
    let f = [("csrf", csrf.as_str()), ("inputs", "name=wf-1\n")];
    let p = post(&app, action, Some(&cookie), None, &f).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let to = p.location.expect("a redirect to the job");
    let id: u64 = to
        .strip_prefix("/ui/jobs/")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a job page: {to}"));
    let done = api(
        &app,
        Method::GET,
        &format!("/v1/jobs/{id}/wait?timeout_s=60"),
        &alice,
        None,
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["kind"], "workflow.run", "{done}");
    let page = get(&app, &to, Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    for want in ["workflow.run", "succeeded", "wf-1"] {
        assert!(page.text.contains(want), "{want} not in {}", page.text);
    }
    api(&app, Method::GET, "/v1/partitions/wf-1", &alice, None).await;
}

/// The administrator's infrastructure view shows the cluster: a single host
/// says it is one; a member of a catalog lists the catalog's hosts with
/// their state and zones, and its domains, as the API reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_shows_the_cluster_or_says_it_is_a_single_host() {
    let single = TestApp::new().await;
    let admin = sign_in(&single, TOKEN).await;
    let page = get(&single, "/ui/admin", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(
        page.text.contains("This broodd is a single host"),
        "{}",
        page.text
    );

    let pg = brood_cluster::testing::TempPostgres::start().expect("start PostgreSQL");
    let app = TestApp::builder()
        .cluster(broodd::cluster::ClusterConfig {
            url: pg.url(),
            name: "h1".into(),
            address: "10.9.0.1:7070".into(),
            zones: brood_cluster::parse_zones(&["network:lan".into(), "storage:nfs".into()])
                .unwrap(),
            heartbeat: std::time::Duration::from_secs(60),
            liveness: brood_cluster::Liveness {
                suspect_after_ms: 120_000,
                failed_after_ms: 240_000,
            },
            retry_for: std::time::Duration::from_secs(5),
            fault: None,
        })
        .build()
        .await;
    let v = api(
        &app,
        Method::POST,
        "/v1/cluster/domains",
        TOKEN,
        Some(json!({"name": "prod", "policy": {"importance": "production", "available": ["h1"]}})),
    )
    .await;
    assert_eq!(v["name"], "prod", "{v}");
    let hosts = api(&app, Method::GET, "/v1/cluster/hosts", TOKEN, None).await;
    let admin = sign_in(&app, TOKEN).await;
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let section = between(&page.text, "<h3>Cluster</h3>", "<h3>Networks</h3>");
    assert!(
        section.contains("This host is <strong>h1</strong>"),
        "{section}"
    );
    let h1 = &hosts["hosts"][0];
    let row = format!(
        "<tr data-host=\"h1\"><td>h1</td><td>10.9.0.1:7070</td><td>{}</td>",
        h1["state"].as_str().unwrap()
    );
    assert!(section.contains(&row), "{row} not in {section}");
    assert!(
        section.contains("<code>network:lan</code>: h1")
            && section.contains("<code>storage:nfs</code>: h1"),
        "{section}"
    );
    assert!(
        section.contains("<td>prod</td><td>production</td><td>h1</td>"),
        "{section}"
    );
}

/// The administrator adds a user with a role, makes it a token (its secret
/// shown once, on a page of its own without JavaScript), the user signs in
/// with it, the token is revoked (the user's session ends) and the user
/// deleted; a unit's user posting the same forms gets the API's refusal.
#[tokio::test]
async fn the_admin_manages_users_and_tokens_from_its_page() {
    let (app, alice) = fixture().await;
    let admin = sign_in(&app, TOKEN).await;
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    assert!(page.text.contains(r#"action="/ui/users""#), "{}", page.text);
    let csrf = csrf_of(&page.text);
    let p = post(
        &app,
        "/ui/users",
        Some(&admin),
        None,
        &[
            ("csrf", &csrf),
            ("name", "bob"),
            ("role", "unit-admin"),
            ("unit", "eng"),
            ("back", "/ui/admin#users"),
        ],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let users = api(&app, Method::GET, "/v1/users", TOKEN, None).await;
    let bob = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap_or_else(|| panic!("no bob: {users}"));
    assert_eq!(bob["role"], "unit-admin");
    assert_eq!(bob["unit"], "eng");
    // A unit role without its unit is the API's 400, shown as its message.
    let p = post(
        &app,
        "/ui/users",
        Some(&admin),
        None,
        &[("csrf", &csrf), ("name", "carol"), ("role", "unit-user")],
    )
    .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.text);
    assert!(p.text.contains("unit"), "{}", p.text);
    // The token page shows the secret once; it signs bob in.
    let p = post(
        &app,
        "/ui/tokens",
        Some(&admin),
        None,
        &[("csrf", &csrf), ("user", "bob"), ("expires_in_days", "2")],
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let secret = inside(&p.text, r#"<code class="secret">"#, "</code>").to_owned();
    assert!(!secret.is_empty(), "{}", p.text);
    let bob_cookie = sign_in(&app, &secret).await;
    let unit = get(&app, "/ui/unit", Some(&bob_cookie)).await;
    assert_eq!(unit.status, StatusCode::OK, "{}", unit.text);
    assert!(unit.text.contains("Unit eng"), "{}", unit.text);
    let tokens = api(&app, Method::GET, "/v1/tokens", TOKEN, None).await;
    let id = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "bob")
        .and_then(|t| t["id"].as_str())
        .unwrap()
        .to_owned();
    assert!(
        get(&app, "/ui/admin", Some(&admin))
            .await
            .text
            .contains(&format!(r#"data-token="{id}""#)),
        "the admin page lists bob's token"
    );
    let p = post(
        &app,
        &format!("/ui/tokens/{id}/revoke"),
        Some(&admin),
        None,
        &[("csrf", &csrf), ("back", "/ui/admin#users")],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let p = get(&app, "/ui/unit", Some(&bob_cookie)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{}", p.text);
    // Revoking it again is the API's 409.
    let p = post(
        &app,
        &format!("/ui/tokens/{id}/revoke"),
        Some(&admin),
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.text);
    // A unit's user may not add users or make tokens.
    let alice_cookie = sign_in(&app, &alice).await;
    let acsrf = csrf_of(&get(&app, "/ui/unit", Some(&alice_cookie)).await.text);
    for (path, fields) in [
        (
            "/ui/users",
            vec![
                ("csrf", acsrf.as_str()),
                ("name", "mallory"),
                ("role", "admin"),
            ],
        ),
        (
            "/ui/tokens",
            vec![("csrf", acsrf.as_str()), ("user", "oscar")],
        ),
    ] {
        let p = post(&app, path, Some(&alice_cookie), None, &fields).await;
        assert!(
            p.status == StatusCode::FORBIDDEN || p.status == StatusCode::NOT_FOUND,
            "{path}: {} {}",
            p.status,
            p.text
        );
        assert!(!p.text.contains("secret"), "{}", p.text);
    }
    let p = post(
        &app,
        "/ui/users/bob/delete",
        Some(&admin),
        None,
        &[("csrf", &csrf), ("back", "/ui/admin#users")],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let users = api(&app, Method::GET, "/v1/users", TOKEN, None).await;
    assert!(
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["name"] != "bob"),
        "{users}"
    );
    let p = post(
        &app,
        "/ui/users/bob/delete",
        Some(&admin),
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.text);
}

/// The audit log's filters read past the first page of the log: an old
/// entry is found under 300 newer ones; a time window with no entries in
/// it shows none; a bound that is not a time is a 400 naming it.
#[tokio::test]
async fn the_audit_filters_reach_old_entries_and_time_windows() {
    let (app, _) = fixture().await;
    for i in 0..150 {
        let name = format!("x{i}");
        api(
            &app,
            Method::POST,
            "/v1/partitions",
            TOKEN,
            Some(json!({"name": name, "configs": {"d": {"memory_mib": 64}}})),
        )
        .await;
        api(
            &app,
            Method::DELETE,
            &format!("/v1/partitions/{name}"),
            TOKEN,
            None,
        )
        .await;
    }
    let admin = sign_in(&app, TOKEN).await;
    let p = get(&app, "/ui/audit?text=ops-db", Some(&admin)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let n: usize = inside(&p.text, r#"data-matches=""#, "\"").parse().unwrap();
    assert!(n >= 1, "ops-db's define is not found: {}", p.text);
    let rows = inside(&p.text, "<tbody>", "</tbody>");
    assert!(
        !rows.contains(">x1<") && rows.matches("<tr").count() == n,
        "{rows}"
    );
    let p = get(&app, "/ui/audit?actor=nobody", Some(&admin)).await;
    assert!(p.text.contains(r#"data-matches="0""#), "{}", p.text);
    let p = get(&app, "/ui/audit", Some(&admin)).await;
    assert!(
        p.text.contains(r#"data-matches="200""#) && p.text.contains("Older entries"),
        "a full page links to older entries: {}",
        &p.text[..2000.min(p.text.len())]
    );
    for q in [
        "since=2100-01-01",
        "until=2000-01-01",
        "since=2000-01-01&until=2000-12-31",
    ] {
        let p = get(&app, &format!("/ui/audit?{q}"), Some(&admin)).await;
        assert_eq!(p.status, StatusCode::OK, "{q}: {}", p.text);
        assert!(p.text.contains(r#"data-matches="0""#), "{q}: {}", p.text);
    }
    let p = get(
        &app,
        "/ui/audit?since=2000-01-01&until=2100-01-01",
        Some(&admin),
    )
    .await;
    assert!(
        p.text.contains(r#"data-matches="200""#),
        "{}",
        &p.text[..2000.min(p.text.len())]
    );
    let p = get(&app, "/ui/audit?since=yesterday", Some(&admin)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.text);
    assert!(p.text.contains("since must be a date"), "{}", p.text);
}

/// What axum refuses before a handler runs (a path number that is not
/// one, a body that is not a form) is the portal's error page with the
/// message, not plain text; with the async header, its error fragment.
#[tokio::test]
async fn refusals_before_a_handler_are_portal_pages() {
    let (app, _) = fixture().await;
    let admin = sign_in(&app, TOKEN).await;
    let csrf = csrf_of(&get(&app, "/ui/admin", Some(&admin)).await.text);
    let p = post(
        &app,
        "/ui/requests/abc/approve",
        Some(&admin),
        None,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.text);
    assert!(p.text.starts_with("<!DOCTYPE html>"), "{}", p.text);
    assert!(p.text.contains(r#"role="alert""#), "{}", p.text);
    assert!(
        p.text.to_lowercase().contains("abc") || p.text.contains("parse"),
        "{}",
        p.text
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/ui/units")
        .header(header::HOST, "portal")
        .header(header::COOKIE, &admin)
        .header("x-portal-async", "1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let p = send(&app, req).await;
    assert_eq!(p.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", p.text);
    assert!(!p.text.contains("<html"), "a fragment: {}", p.text);
    assert!(p.text.contains(r#"role="alert""#), "{}", p.text);
}

/// The create form passes its image, network and required services to the
/// API: each one the API refuses is its message, and makes no VM.
#[tokio::test]
async fn the_create_form_passes_image_network_and_requires_to_the_api() {
    let (app, alice) = fixture().await;
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    // The unit's registration is on its page.
    let reg = inside(&page.text, r#"<p class="meta registration">"#, "</p>");
    assert!(reg.contains("contact x@example.com"), "{reg}");
    let csrf = csrf_of(&page.text);
    for (field, value, says) in [
        ("requires", "dns, nosuchclass", "nosuchclass"),
        ("image", "no-such-image", "no-such-image"),
        ("network", "no-such-net", "no-such-net"),
    ] {
        let p = post(
            &app,
            "/ui/unit/vms",
            Some(&cookie),
            None,
            &[
                ("csrf", &csrf),
                ("name", "w2"),
                ("memory_mib", "128"),
                (field, value),
            ],
        )
        .await;
        assert!(
            p.status.is_client_error(),
            "{field}: {} {}",
            p.status,
            p.text
        );
        assert!(p.text.contains(says), "{field}: {}", p.text);
        let (s, _) = app.get("/v1/partitions/w2").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{field} made a VM");
    }
}

/// A unit's administrator asks for more from its unit's page; the
/// administrator rejects one request with a note and approves another in
/// part, from the administrator's page; the unit's page shows both outcomes.
#[tokio::test]
async fn a_unit_admin_requests_and_the_admin_rejects_or_approves_in_part() {
    let (app, _) = fixture().await;
    api(
        &app,
        Method::POST,
        "/v1/users",
        TOKEN,
        Some(json!({"name": "una", "role": "unit-admin", "unit": "eng"})),
    )
    .await;
    let t = api(
        &app,
        Method::POST,
        "/v1/tokens",
        TOKEN,
        Some(json!({"user": "una"})),
    )
    .await;
    let una = sign_in(&app, t["token"].as_str().unwrap()).await;
    let page = get(&app, "/ui/unit", Some(&una)).await;
    assert!(
        page.text.contains(r#"action="/ui/unit/requests""#),
        "{}",
        page.text
    );
    let csrf = csrf_of(&page.text);
    let mut ids = Vec::new();
    for vcpus in ["2", "6"] {
        let p = post(
            &app,
            "/ui/unit/requests",
            Some(&una),
            None,
            &[("csrf", &csrf), ("vcpus", vcpus), ("memory_mib", "512")],
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
        let list = api(&app, Method::GET, "/v1/requests", TOKEN, None).await;
        let newest = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "pending" && r["unit"] == "eng")
            .map(|r| r["id"].as_u64().unwrap())
            .max()
            .unwrap_or_else(|| panic!("no pending request: {list}"));
        ids.push(newest);
    }
    let admin = sign_in(&app, TOKEN).await;
    let page = get(&app, "/ui/admin", Some(&admin)).await;
    for id in &ids {
        assert!(
            page.text.contains(&format!(r#"data-request="{id}""#)),
            "{}",
            page.text
        );
    }
    let acsrf = csrf_of(&page.text);
    let p = post(
        &app,
        &format!("/ui/requests/{}/reject", ids[0]),
        Some(&admin),
        None,
        &[("csrf", &acsrf), ("note", "not this quarter")],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let before = api(&app, Method::GET, "/v1/units/eng", TOKEN, None).await;
    let p = post(
        &app,
        &format!("/ui/requests/{}/approve", ids[1]),
        Some(&admin),
        None,
        &[("csrf", &acsrf), ("vcpus", "5"), ("note", "half")],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let after = api(&app, Method::GET, "/v1/units/eng", TOKEN, None).await;
    // A request names the allocation wanted (6 vCPUs, from 4): 5 is granted.
    assert_eq!(before["allocated"]["vcpus"], 4, "{before}");
    assert_eq!(after["allocated"]["vcpus"], 5, "{after}");
    let r0 = api(
        &app,
        Method::GET,
        &format!("/v1/requests/{}", ids[0]),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(r0["state"], "rejected", "{r0}");
    // Rejecting it again is the API's conflict, shown as its message.
    let p = post(
        &app,
        &format!("/ui/requests/{}/reject", ids[0]),
        Some(&admin),
        None,
        &[("csrf", &acsrf)],
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.text);
    let page = get(&app, "/ui/unit", Some(&una)).await;
    assert!(page.text.contains("rejected"), "{}", page.text);
    assert!(page.text.contains("not this quarter"), "{}", page.text);
}

/// The console tail `portal.js` follows is the API's, as plain text, for
/// the VM's unit; another unit's VM is the same 404 as one that does not
/// exist.
#[tokio::test]
async fn the_console_tail_is_the_apis_and_hides_other_units_vms() {
    let (app, alice) = fixture().await;
    // The fake VM writes its last console line a moment after it starts:
    // compare the two reads once the console has it.
    let console = || async {
        let c = api(
            &app,
            Method::GET,
            "/v1/partitions/ops-db/console?bytes=16384",
            TOKEN,
            None,
        )
        .await;
        c["text"].as_str().unwrap_or_default().to_owned()
    };
    app.wait_until("the console has its last line", || async {
        console().await.contains("agent ready")
    })
    .await;
    let admin = sign_in(&app, TOKEN).await;
    let p = get(&app, "/ui/vms/ops-db?unit=ops", Some(&admin)).await;
    assert!(
        p.text
            .contains(r#"data-follow="/ui/vms/ops-db/console?unit=ops""#),
        "{}",
        p.text
    );
    let req = Request::builder()
        .uri("/ui/vms/ops-db/console?unit=ops")
        .header(header::HOST, "portal")
        .header(header::COOKIE, &admin)
        .body(Body::empty())
        .unwrap();
    let resp = app
        .router()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body), console().await);
    let alice = sign_in(&app, &alice).await;
    let theirs = get(&app, "/ui/vms/ops-db/console", Some(&alice)).await;
    let none = get(&app, "/ui/vms/no-such-vm/console", Some(&alice)).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text);
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(
        theirs.text.replace("ops-db", "NAME"),
        none.text.replace("no-such-vm", "NAME")
    );
}

/// A unit's page lists the service domains serving its VMs, and not
/// another unit's.
#[tokio::test]
async fn a_units_page_lists_its_service_domains_only() {
    let (app, alice) = fixture().await;
    api(
        &app,
        Method::POST,
        "/v1/pools",
        TOKEN,
        Some(json!({"name": "sp", "min": 0, "max": 0})),
    )
    .await;
    // Services are infrastructure: the administrator asks for one for
    // the unit's VM.
    api(
        &app,
        Method::POST,
        "/v1/partitions",
        &alice,
        Some(json!({"name": "eng-web", "configs": {"d": {"memory_mib": 128}}, "start": true})),
    )
    .await;
    let svc = api(
        &app,
        Method::POST,
        "/v1/services",
        TOKEN,
        Some(json!({"class": "http", "pool": "sp", "name": "www-eng", "for": ["eng-web"]})),
    )
    .await;
    assert_eq!(svc["name"], "www-eng", "{svc}");
    let cookie = sign_in(&app, &alice).await;
    let page = get(&app, "/ui/unit", Some(&cookie)).await;
    let section = inside(&page.text, "Service domains</h2>", "</section>");
    assert!(
        section.contains("www-eng") && section.contains("http"),
        "{section}"
    );
    let admin = sign_in(&app, TOKEN).await;
    let page = get(&app, "/ui/unit?unit=ops", Some(&admin)).await;
    let section = inside(&page.text, "Service domains</h2>", "</section>");
    assert!(!section.contains("www-eng"), "{section}");
}
