//! The web portal in headless Chromium and headless Firefox (issue 14),
//! each test run in both, driven over WebDriver (Debian's `chromium` with
//! `chromium-driver`, and `firefox-esr` with geckodriver built from
//! crates.io, all installed by `scripts/setup`; fantoccini speaks the
//! protocol) against the real broodd binary on a loopback TCP listener,
//! with real VMs:
//!
//! - a unit's user signs in, creates a VM and sees it become running
//!   without a reload, sees its job succeed on the jobs view (and its
//!   page with the event log), runs `uname -r` in it and sees the VM's kernel release, sees a
//!   line the guest writes to its console appear in the console tail, stops it
//!   (again without a reload); another unit's VM is the same 404 page as a
//!   VM that does not exist; a form without its CSRF token is refused; the
//!   session cookie is refused once signed out;
//! - an administrator approves a request and the unit's bars change, and
//!   the chargeback CSV the browser downloads matches `GET /v1/chargeback`;
//! - an expired session is refused.
//!
//! With `BROOD_PORTAL_SCREENSHOTS=DIR` the tests also save screenshots of
//! the main pages at desktop and phone widths into DIR (the README's).
#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, http, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a VM may take to boot and its agent to answer (TCG under load).
const BOOT: Duration = Duration::from_secs(180);
/// How long the page may take to show what the server sent.
const SHOWN: Duration = Duration::from_secs(30);

/// The browsers the portal is tested in, each with its WebDriver server
/// from `scripts/setup`: Debian's `chromium-driver`, and geckodriver
/// (from crates.io) for Debian's `firefox-esr`.
#[derive(Debug, Clone, Copy)]
enum Browser {
    Chromium,
    Firefox,
}

impl Browser {
    /// The WebDriver server's program and the browser's binary.
    fn driver_and_binary(self) -> (PathBuf, &'static str) {
        match self {
            Browser::Chromium => (PathBuf::from("chromedriver"), "/usr/bin/chromium"),
            Browser::Firefox => (geckodriver(), "/usr/bin/firefox-esr"),
        }
    }

    /// Fails the test, naming what to run, when the browser or a driver
    /// given by its path is missing (chromedriver is found on `PATH`).
    fn installed(self) {
        let (driver, binary) = self.driver_and_binary();
        assert!(
            Path::new(binary).exists() && (!driver.is_absolute() || driver.exists()),
            "{binary} or {} is missing: run scripts/setup (it installs chromium, chromium-driver, \
             firefox-esr and geckodriver)",
            driver.display()
        );
    }
}

/// geckodriver as `scripts/setup` installs it (`.tools/bin` of the
/// checkout), or `BROOD_GECKODRIVER`.
fn geckodriver() -> PathBuf {
    if let Some(p) = std::env::var_os("BROOD_GECKODRIVER") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/geckodriver")
}

/// A WebDriver server on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
    browser: Browser,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start(browser: Browser) -> Driver {
        browser.installed();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let (program, _) = browser.driver_and_binary();
        let mut cmd = Command::new(&program);
        match browser {
            Browser::Chromium => cmd.arg(format!("--port={port}")),
            Browser::Firefox => cmd.args(["--port", &port.to_string(), "--host", "127.0.0.1"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (scripts/setup installs it): {e}",
                    program.display()
                )
            });
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "{} did not listen on {port}", program.display());
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            browser,
            _profile: tempfile::tempdir().expect("a profile dir"),
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let (_, binary) = self.browser.driver_and_binary();
        match self.browser {
            Browser::Chromium => caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": binary,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1280,900",
                        format!("--user-data-dir={}", self._profile.path().display()),
                    ],
                }),
            ),
            Browser::Firefox => caps.insert(
                "moz:firefoxOptions".into(),
                json!({
                    "binary": binary,
                    "args": ["-headless", "-width=1280", "-height=900"],
                    "prefs": {"browser.shell.checkDefaultBrowser": false},
                }),
            ),
        };
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session of headless {:?}: {e}", self.browser));
        c.set_window_size(1280, 900).await.expect("size the window");
        c
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// broodd's plain-HTTP loopback URL, from its listen record.
fn portal_url(b: &Broodd) -> String {
    let text = std::fs::read_to_string(b.data.join("listen.json")).expect("listen.json");
    let v: Value = serde_json::from_str(&text).expect("listen.json is JSON");
    v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["url"].as_str())
        .find(|u| u.starts_with("http://"))
        .expect("a TCP endpoint")
        .to_string()
}

fn start_broodd(env: &TestEnv, envs: &[(&str, &str)]) -> Broodd {
    Broodd::start_with_env(
        env,
        envs,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-tcp",
            "--memory-mib",
            "8192",
        ],
    )
}

/// A call with a user's token.
fn call_as(b: &Broodd, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|v| v.to_string());
    let (s, text) = http(
        &b.socket(),
        method,
        path,
        Some(token),
        body.as_deref(),
        None,
    );
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Units `eng` (user alice) and `ops` (user oscar, a VM `ops-db` defined,
/// not started); returns alice's token.
fn tenants(b: &Broodd) -> String {
    for u in ["eng", "ops"] {
        b.ok(
            "POST",
            "/v1/units",
            Some(&json!({"name": u, "contact": "x@example.com"})),
        );
        let r = b.ok(
            "POST",
            &format!("/v1/units/{u}/requests"),
            Some(&json!({"vcpus": 2, "memory_mib": 1024, "disk_gib": 4})),
        );
        let id = r["id"].as_u64().expect("a request id");
        b.ok(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(&json!({})),
        );
    }
    let mut tokens = Vec::new();
    for (name, unit) in [("alice", "eng"), ("oscar", "ops")] {
        b.ok(
            "POST",
            "/v1/users",
            Some(&json!({"name": name, "role": "unit-user", "unit": unit})),
        );
        let t = b.ok("POST", "/v1/tokens", Some(&json!({"user": name})));
        tokens.push(t["token"].as_str().expect("a token").to_owned());
    }
    let (s, v) = call_as(
        b,
        &tokens[1],
        "POST",
        "/v1/partitions",
        Some(json!({"name": "ops-db", "configs": {"d": {"memory_mib": 256}}})),
    );
    assert_eq!(s, 201, "{v}");
    tokens.swap_remove(0)
}

async fn sign_in(c: &Client, url: &str, token: &str) {
    c.goto(&format!("{url}/ui/login"))
        .await
        .expect("open the sign-in page");
    let field = c
        .find(Locator::Css("#token"))
        .await
        .expect("the token field");
    // By keyboard: the field has the focus when the page opens, and Enter
    // submits the form.
    let focused = c
        .execute(
            "return document.activeElement && document.activeElement.id;",
            vec![],
        )
        .await
        .expect("the focused element");
    assert_eq!(focused, json!("token"), "the token field has no focus");
    field
        .send_keys(&format!("{token}\u{E007}"))
        .await
        .expect("type the token and Enter");
    wait_text(c, "h1", |t| t.starts_with("Unit") || t == "Administration").await;
}

/// The first Tab of a freshly opened page focuses its skip link, and
/// Enter on it moves the focus to the main content.
async fn skip_link_by_keyboard(c: &Client) {
    let here = c.current_url().await.expect("the page's URL");
    c.goto(here.as_str()).await.expect("open the page again");
    wait_text(c, "h1", |t| !t.is_empty()).await;
    key(c, '\u{E004}').await;
    let first = wait_until_js(c, "return document.activeElement.className;", |v| {
        v == &json!("skip")
    })
    .await;
    assert_eq!(
        first,
        json!("skip"),
        "the first Tab stop is not the skip link"
    );
    key(c, '\u{E007}').await;
    let now = wait_until_js(c, "return document.activeElement.id;", |v| {
        v == &json!("main")
    })
    .await;
    assert_eq!(
        now,
        json!("main"),
        "Enter on the skip link did not move the focus to the content"
    );
}

/// Presses and releases one key on whatever has the focus.
async fn key(c: &Client, k: char) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let press = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: k })
        .then(KeyAction::Up { value: k });
    c.perform_actions(press).await.expect("press a key");
}

/// Runs `js` until its value passes `ok` (within [`SHOWN`]); returns it.
async fn wait_until_js(c: &Client, js: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + SHOWN;
    loop {
        let v = c.execute(js, vec![]).await.unwrap_or_default();
        if ok(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// At a phone's width (390 px) the page has no horizontal scroll, tables
/// stack with their header hidden, and every cell of `row_css` shows its
/// column's name.
async fn phone_layout(c: &Client, row_css: &str) {
    c.set_window_size(390, 844).await.expect("a phone's width");
    let v = wait_until_js(
        c,
        &format!(
            "const tr = document.querySelector({row:?});
             if (!tr) return 'no row';
             const th = tr.closest('table').querySelector('thead');
             const cells = [...tr.children].map(td => [td.dataset.label || '',
                 getComputedStyle(td, '::before').content]);
             return {{overflow: document.documentElement.scrollWidth - window.innerWidth,
                      head: getComputedStyle(th).display, cells}};",
            row = row_css
        ),
        |v| v.get("head").is_some_and(|h| h == "none"),
    )
    .await;
    assert_eq!(v["head"], "none", "the table header shows on a phone: {v}");
    assert!(
        v["overflow"].as_i64().is_some_and(|o| o <= 0),
        "the page scrolls sideways on a phone: {v}"
    );
    let cells = v["cells"].as_array().expect("cells");
    assert!(!cells.is_empty(), "{v}");
    for cell in cells {
        let label = cell[0].as_str().unwrap_or_default();
        if label.is_empty() {
            continue;
        }
        // Chromium resolves attr(); Firefox reports the rule as written.
        assert!(
            cell[1]
                .as_str()
                .is_some_and(|c| c.contains(label) || c.contains("attr(data-label)")),
            "a cell does not show its column's name {label:?}: {v}"
        );
    }
    assert!(
        cells
            .iter()
            .any(|c| c[0].as_str().is_some_and(|l| !l.is_empty())),
        "no cell is labelled: {v}"
    );
    c.set_window_size(1280, 900).await.expect("resize back");
}

/// Clicks the first element matching `css` (`what` names it). An element
/// of a live region may be replaced between the find and the click (an
/// event refreshed it): a stale element was not clicked, so it is found
/// again and clicked.
async fn click(c: &Client, css: &str, what: &str) {
    let deadline = std::time::Instant::now() + SHOWN;
    loop {
        let e = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        match e.click().await {
            Ok(()) => return,
            Err(err)
                if format!("{err:?}").contains("StaleElementReference")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("click {what}: {err}"),
        }
    }
}

/// Waits until the first element matching `css` has text that passes `ok`; returns it.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_text_for(c, css, SHOWN, ok).await
}

async fn wait_text_for(
    c: &Client,
    css: &str,
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(t.trim()) {
                return t.trim().to_owned();
            }
            last = t;
        }
        if std::time::Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("{css} never passed its check; last text {last:?}; the page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path` over plain HTTP with a `Cookie` header: status and body.
fn get_with_cookie(url: &str, path: &str, cookie: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").expect("a plain-HTTP URL");
    let mut s = TcpStream::connect(addr).expect("connect to broodd");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The state and number of web's create job in the page's jobs table
/// (empty while it has no row).
async fn web_job(c: &Client) -> (String, u64) {
    let v = c
        .execute(
            r#"for (const tr of document.querySelectorAll('table.jobs tr[data-job]')) {
                 const td = tr.querySelectorAll('td');
                 if (td.length > 3 && td[3].textContent === 'web'
                     && td[2].textContent.startsWith('partition.define'))
                   return [tr.querySelector('[data-f="state"]').textContent, Number(tr.dataset.job)];
               }
               return ['', 0];"#,
            vec![],
        )
        .await
        .unwrap_or_default();
    (
        v[0].as_str().unwrap_or_default().to_owned(),
        v[1].as_u64().unwrap_or_default(),
    )
}

/// Marks the document; `still_marked` is false after any reload or navigation.
async fn mark(c: &Client) {
    c.execute("window.__brood_mark = 42;", vec![])
        .await
        .expect("mark the page");
}

async fn still_marked(c: &Client) -> bool {
    c.execute("return window.__brood_mark === 42;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Saves a screenshot of the current page at desktop and phone widths
/// when `BROOD_PORTAL_SCREENSHOTS` names a directory (Chromium's: the
/// README shows one set).
async fn screenshot(c: &Client, browser: Browser, name: &str) {
    let Some(dir) = std::env::var_os("BROOD_PORTAL_SCREENSHOTS").map(PathBuf::from) else {
        return;
    };
    if !matches!(browser, Browser::Chromium) {
        return;
    }
    std::fs::create_dir_all(&dir).expect("the screenshot dir");
    for (w, h, tag) in [(1280, 900, "desktop"), (390, 844, "phone")] {
        c.set_window_size(w, h).await.expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}-{tag}.png")), png).expect("save it");
    }
    c.set_window_size(1280, 900).await.expect("resize back");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn a_unit_user_creates_execs_and_stops_a_vm_in_chromium() {
    unit_user_flow(Browser::Chromium);
}

#[test]
fn a_unit_user_creates_execs_and_stops_a_vm_in_firefox() {
    unit_user_flow(Browser::Firefox);
}

fn unit_user_flow(browser: Browser) {
    let env = TestEnv::new();
    let b = start_broodd(&env, &[]);
    let alice = tenants(&b);
    let url = portal_url(&b);
    let driver = Driver::start(browser);
    runtime().block_on(async {
        let c = driver.browser().await;
        sign_in(&c, &url, &alice).await;
        assert_eq!(wait_text(&c, "h1", |t| !t.is_empty()).await, "Unit eng");

        // Create a VM; its row appears and becomes running without a reload.
        mark(&c).await;
        let form = c
            .find(Locator::Css("form.create"))
            .await
            .expect("the create form");
        form.find(Locator::Css("input[name=name]"))
            .await
            .unwrap()
            .send_keys("web")
            .await
            .unwrap();
        form.find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text_for(&c, r#"tr[data-vm="web"] td.state"#, BOOT, |t| {
            t == "running"
        })
        .await;
        assert!(
            still_marked(&c).await,
            "the page reloaded to show the new state"
        );
        // The bars follow too: the VM's memory is used now.
        let deadline = std::time::Instant::now() + SHOWN;
        loop {
            let used = c
                .execute(
                    r#"const e = document.querySelector('section.allocation [data-resource="memory"] .used');
                       return e ? Number(e.dataset.v) : -1;"#,
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_i64())
                .unwrap_or(-1);
            if used >= 256 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the bars never showed the VM's memory ({used})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(still_marked(&c).await, "the page reloaded to show the bars");
        let result = wait_text(&c, "form.create .result", |t| {
            !t.is_empty() && t != "working…"
        })
        .await;
        assert!(result.contains("web is running"), "{result}");
        // Its job shows on the unit's jobs view as succeeded, without a reload.
        let deadline = std::time::Instant::now() + SHOWN;
        let job = loop {
            let (state, id) = web_job(&c).await;
            if state == "succeeded" {
                break id;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the jobs view never showed web's job succeeded ({state:?}); the page:\n{}",
                c.source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(still_marked(&c).await, "the page reloaded to show the job");
        let api_job = b.ok("GET", &format!("/v1/jobs/{job}"), None);
        assert_eq!(api_job["state"], "succeeded", "{api_job}");
        assert_eq!(api_job["target"], "web", "{api_job}");
        screenshot(&c, browser, "unit").await;
        skip_link_by_keyboard(&c).await;
        phone_layout(&c, r#"tr[data-vm="web"]"#).await;

        // Exec in the VM's page.
        click(&c, r#"tr[data-vm="web"] a"#, "web's row").await;
        wait_text(&c, "h1", |t| t == "VM web").await;
        let cmd = c
            .find(Locator::Css("#command"))
            .await
            .expect("the command field");
        cmd.send_keys("uname -r").await.unwrap();
        c.find(Locator::Css("form.exec button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let out = wait_text_for(&c, ".exec-result pre.stdout", BOOT, |t| !t.is_empty()).await;
        let (code, stdout, _) = b.exec("web", "uname -r");
        assert_eq!(code, 0);
        assert_eq!(out.trim(), stdout.trim(), "the page's uname -r is not the VM's");
        assert!(out.contains("amd64"), "{out:?} is not a Debian kernel release");
        // The console tail follows the guest's console without a reload.
        mark(&c).await;
        let line = format!("brood-console-{}", std::process::id());
        let (code, _, err) = b.exec("web", &format!("echo {line} > /dev/console"));
        assert_eq!(code, 0, "{err}");
        wait_text_for(&c, "pre.console", BOOT, |t| t.contains(&line)).await;
        assert!(still_marked(&c).await, "the page reloaded to show the console");
        screenshot(&c, browser, "vm").await;

        // Stop it from the page: the state changes in place.
        mark(&c).await;
        click(&c, r#"form.actions button[value="stop"]"#, "the stop button").await;
        wait_text_for(&c, r#"tr[data-vm="web"] td.state"#, BOOT, |t| {
            t == "stopped"
        })
        .await;
        assert!(still_marked(&c).await, "the page reloaded to show the stop");
        assert_eq!(
            b.ok("GET", "/v1/partitions/web", None)["run_state"],
            "stopped"
        );

        // The job's page, from the jobs view: its state and its event log.
        c.goto(&format!("{url}/ui/jobs")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Jobs").await;
        click(
            &c,
            &format!(r#"tr[data-job="{job}"] a"#),
            "web's job on the jobs view",
        )
        .await;
        wait_text(&c, "h1", |t| t == format!("Job {job}")).await;
        wait_text(&c, r#"dl.job [data-f="state"]"#, |t| t == "succeeded").await;
        let log = wait_text(&c, "table.events", |t| !t.is_empty()).await;
        assert!(log.contains(r#""state":"succeeded""#), "{log}");
        screenshot(&c, browser, "job").await;

        // Another unit's VM is the page of a VM that does not exist.
        c.goto(&format!("{url}/ui/vms/ops-db")).await.unwrap();
        let theirs = wait_text(&c, "main", |t| !t.is_empty()).await;
        c.goto(&format!("{url}/ui/vms/no-such-vm")).await.unwrap();
        let none = wait_text(&c, "main", |t| !t.is_empty()).await;
        assert!(none.starts_with("Not found"), "{none}");
        assert_eq!(
            theirs.replace("ops-db", "NAME"),
            none.replace("no-such-vm", "NAME")
        );
        let (status, _) = http(
            &b.socket(),
            "GET",
            "/v1/partitions/ops-db",
            Some(&alice),
            None,
            None,
        );
        assert_eq!(status, 404, "the API hides it too");

        // A form without its CSRF token is refused, and makes nothing.
        c.goto(&format!("{url}/ui/unit")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Unit eng").await;
        c.execute(
            "const f = document.querySelector('form.create');
             f.removeAttribute('data-async');
             f.querySelector('input[name=csrf]').remove();
             f.querySelector('input[name=name]').value = 'forged';
             f.submit();",
            vec![],
        )
        .await
        .unwrap();
        let refused = wait_text(&c, "main", |t| t.starts_with("Refused")).await;
        assert!(refused.contains("CSRF token is missing"), "{refused}");
        let (status, _) = b.call("GET", "/v1/partitions/forged", None);
        assert_eq!(status, 404, "a refused form made a VM");

        // After sign-out the old session cookie is refused.
        c.goto(&format!("{url}/ui/unit")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Unit eng").await;
        let old = c
            .get_named_cookie("brood_session")
            .await
            .expect("the session cookie");
        assert_eq!(old.http_only(), Some(true));
        assert_eq!(format!("{:?}", old.same_site()), "Some(Strict)");
        c.find(Locator::Css("form.signout button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "main", |t| t.contains("signed out")).await;
        // The browser dropped it; whoever kept a copy is refused.
        let (status, page) =
            get_with_cookie(&url, "/ui/unit", &format!("brood_session={}", old.value()));
        assert_eq!(status, 401, "{page}");
        assert!(page.contains("this session was signed out"), "{page}");
        c.close().await.expect("end the browser session");
    });
    b.ok("DELETE", "/v1/partitions/web", None);
    b.verify_ok();
}

/// The number shown in a bar's figure (`[data-resource=R] .CLASS`).
async fn bar_value(c: &Client, resource: &str, class: &str) -> u64 {
    let css = format!(r#"section.allocation [data-resource="{resource}"] .{class}"#);
    c.find(Locator::Css(&css))
        .await
        .unwrap_or_else(|_| panic!("no {css}"))
        .attr("data-v")
        .await
        .unwrap()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{css} has no number"))
}

#[test]
fn an_administrator_approves_a_request_and_exports_chargeback_csv_in_chromium() {
    administrator_flow(Browser::Chromium);
}

#[test]
fn an_administrator_approves_a_request_and_exports_chargeback_csv_in_firefox() {
    administrator_flow(Browser::Firefox);
}

fn administrator_flow(browser: Browser) {
    let env = TestEnv::new();
    let b = start_broodd(&env, &[]);
    tenants(&b);
    b.ok(
        "PUT",
        "/v1/prices",
        Some(&json!({"item": "vcpu", "micros_per_hour": 10000})),
    );
    b.ok(
        "PUT",
        "/v1/prices",
        Some(&json!({"item": "memory_gib", "micros_per_hour": 5000})),
    );
    // eng asks for more (a unit's admin or the administrator may ask).
    let r = b.ok(
        "POST",
        "/v1/units/eng/requests",
        Some(&json!({"vcpus": 4, "memory_mib": 2048, "disk_gib": 4})),
    );
    let id = r["id"].as_u64().expect("an id");
    let url = portal_url(&b);
    let driver = Driver::start(browser);
    runtime().block_on(async {
        let c = driver.browser().await;
        sign_in(&c, &url, &b.token()).await;
        assert_eq!(wait_text(&c, "h1", |t| !t.is_empty()).await, "Administration");
        c.goto(&format!("{url}/ui/unit?unit=eng")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Unit eng").await;
        assert_eq!(bar_value(&c, "vcpus", "allocated").await, 2);
        assert_eq!(bar_value(&c, "memory", "allocated").await, 1024);

        c.goto(&format!("{url}/ui/admin")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Administration").await;
        screenshot(&c, browser, "admin").await;
        phone_layout(&c, "table.users tbody tr").await;
        let req = format!(r#"div.request[data-request="{id}"]"#);
        // Approve 3 of the 4 vCPUs asked for, and all the memory.
        let approve = c
            .find(Locator::Css(&format!(r#"{req} form[action$="/approve"]"#)))
            .await
            .expect("the approve form");
        approve.find(Locator::Css("input[name=vcpus]")).await.unwrap().send_keys("3").await.unwrap();
        approve.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
        let done = wait_text(&c, &format!(r#"{req} form[action$="/approve"] .result"#), |t| {
            !t.is_empty() && t != "working…"
        })
        .await;
        assert!(done.contains(&format!("request {id} is partial")), "{done}");

        c.goto(&format!("{url}/ui/unit?unit=eng")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Unit eng").await;
        assert_eq!(bar_value(&c, "vcpus", "allocated").await, 3);
        assert_eq!(bar_value(&c, "memory", "allocated").await, 2048);
        assert_eq!(b.ok("GET", "/v1/units/eng", None)["allocated"]["vcpus"], 3);

        // Chargeback: the CSV the browser downloads is the API's report.
        // A period that has ended (up to now), so both reads count the same hours.
        let now = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .expect("date");
        let now = String::from_utf8_lossy(&now.stdout).trim().to_owned();
        let (from, to) = ("2020-01-01T00:00:00Z", now.as_str());
        c.goto(&format!("{url}/ui/chargeback?from={from}&to={to}")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Chargeback").await;
        let href = c
            .find(Locator::Css("a.csv"))
            .await
            .unwrap()
            .prop("href")
            .await
            .unwrap()
            .expect("a CSV link");
        let csv = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch(arguments[0], {credentials: 'same-origin'})
                   .then(r => r.text().then(t => done([r.status, r.headers.get('content-type'), t])))
                   .catch(e => done([0, '', String(e)]));",
                vec![json!(href)],
            )
            .await
            .expect("fetch the CSV");
        assert_eq!(csv[0], 200, "{csv}");
        assert!(csv[1].as_str().unwrap_or_default().starts_with("text/csv"), "{csv}");
        let text = csv[2].as_str().unwrap_or_default().to_owned();
        let report = b.ok("GET", &format!("/v1/chargeback?from={from}&to={to}"), None);
        let mut rows = text.lines();
        assert_eq!(rows.next(), Some("unit,model,item,quantity_hours,amount"));
        let rows: Vec<&str> = rows.collect();
        let mut want = Vec::new();
        for u in report["units"].as_array().expect("units") {
            for l in u["lines"].as_array().expect("lines") {
                let m = l["micros"].as_u64().expect("micros");
                want.push(format!(
                    "{},{},{},{},{}.{:06}",
                    u["unit"].as_str().unwrap(),
                    l["model"].as_str().unwrap(),
                    l["item"].as_str().unwrap(),
                    l["quantity_hours"].as_f64().unwrap(),
                    m / 1_000_000,
                    m % 1_000_000
                ));
            }
        }
        assert!(!want.is_empty(), "the report has no lines: {report}");
        assert_eq!(rows, want, "{text}\n{report}");
        assert!(
            want.iter().any(|r| !r.ends_with(",0.000000")),
            "every amount is zero, so the comparison shows little: {report}"
        );
        // The default period (the last week) for the picture.
        c.goto(&format!("{url}/ui/chargeback")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Chargeback").await;
        screenshot(&c, browser, "chargeback").await;
        // The audit log, filtered to one actor.
        c.goto(&format!("{url}/ui/audit?actor=admin")).await.unwrap();
        let meta = wait_text(&c, "main p.meta", |t| t.contains("entries")).await;
        let shown: u64 = meta.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(shown > 0, "{meta}");
        let actors = c.find_all(Locator::Css("table.audit tbody tr td:nth-child(3)")).await.unwrap();
        assert_eq!(actors.len() as u64, shown);
        for a in actors {
            assert_eq!(a.text().await.unwrap(), "admin");
        }
        c.goto(&format!("{url}/ui/audit?actor=nobody")).await.unwrap();
        let meta = wait_text(&c, "main p.meta", |t| t.contains("entries")).await;
        assert!(meta.starts_with("0 matching entries"), "{meta}");
        c.goto(&format!("{url}/ui/verify")).await.unwrap();
        wait_text(&c, "main", |t| t.contains("The ledger is consistent")).await;
        c.close().await.expect("end the browser session");
    });
    b.verify_ok();
}

#[test]
fn an_expired_session_is_refused_in_chromium() {
    expired_session_flow(Browser::Chromium);
}

#[test]
fn an_expired_session_is_refused_in_firefox() {
    expired_session_flow(Browser::Firefox);
}

fn expired_session_flow(browser: Browser) {
    let env = TestEnv::new();
    let b = start_broodd(&env, &[("BROOD_PORTAL_SESSION_TTL_S", "3")]);
    let url = portal_url(&b);
    let driver = Driver::start(browser);
    runtime().block_on(async {
        let c = driver.browser().await;
        sign_in(&c, &url, &b.token()).await;
        let cookie = c
            .get_named_cookie("brood_session")
            .await
            .expect("the session cookie");
        let cookie = format!("brood_session={}", cookie.value());
        let (status, page) = get_with_cookie(&url, "/ui/admin", &cookie);
        assert_eq!(status, 200, "{page}");
        // The browser forgets the cookie at its Max-Age; the server must
        // refuse it after that too, to whoever kept a copy.
        let mut last = String::new();
        let expired = wait_until(Duration::from_secs(60), || {
            let (status, page) = get_with_cookie(&url, "/ui/admin", &cookie);
            last = page;
            status == 401
        });
        assert!(expired, "the session never expired: {last}");
        assert!(last.contains("your session has expired"), "{last}");
        c.goto(&format!("{url}/ui/admin")).await.unwrap();
        wait_text(&c, "h1", |t| t == "Sign in").await;
        c.close().await.expect("end the browser session");
    });
}
