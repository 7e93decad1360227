//! The web portal at `/ui/` (issue 14): self-service for business units
//! and dashboards for administrators, served by broodd on the API's own
//! listeners.
//!
//! Server-rendered pages (maud) whose handlers call broodd's own API router
//! in process with the session's token (`client`), so every check is the
//! API's and the portal can do nothing the API does not let that token do.
//! A little JavaScript (`assets/portal.js`, no build step) posts forms
//! marked `data-async` without leaving the page and applies the live state
//! of VMs from `/ui/events`; every page works without it. Sessions and the
//! CSRF rules are in `session`; they are kept in memory (a restart of
//! broodd signs everyone out). The pages are `unit` (a unit's view), `vm`
//! (one VM), `admin` (the administrator's view), `audit` (the audit log,
//! verify, utilization), `charge` (chargeback and its CSV) and `jobs`
//! (jobs, a job's log and cancel, running workflows).

mod admin;
mod audit;
mod charge;
pub mod client;
mod events;
mod html;
mod jobs;
pub mod session;
mod unit;
mod vm;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use self::client::{Api, ApiFailure};
use self::session::{LOGIN_COOKIE, NoSession, SESSION_COOKIE, Session, Sessions, Who};
use crate::host::Host;

/// Largest form body, in bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// The header `portal.js` sends with a form it posts itself: the answer is
/// a fragment of HTML to show beside the form, not a page or a redirect.
const ASYNC_HEADER: &str = "x-portal-async";

/// What the portal's handlers share.
#[derive(Debug)]
pub struct Portal {
    api: Router,
    host: Arc<Host>,
    sessions: Sessions,
}

type P = State<Arc<Portal>>;
/// A form's fields.
type Fields = Form<BTreeMap<String, String>>;

/// The API router with the portal mounted at `/ui/` beside it.
pub fn mount(api: Router, host: Arc<Host>) -> Router {
    let portal = Arc::new(Portal {
        api: api.clone(),
        host,
        sessions: Sessions::new(Sessions::ttl_from_env()),
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/events", get(events::stream))
        .route("/ui/unit", get(unit::view))
        .route("/ui/unit/vms", post(unit::create_vm))
        .route("/ui/unit/requests", post(unit::request))
        .route("/ui/templates/{name}/fork", post(unit::fork))
        .route("/ui/vms/{name}", get(vm::view))
        .route("/ui/vms/{name}/action", post(vm::action))
        .route("/ui/vms/{name}/exec", post(vm::exec))
        .route("/ui/vms/{name}/console", get(vm::console))
        .route("/ui/vms/{name}/template", post(vm::make_template))
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/{id}", get(jobs::view))
        .route("/ui/jobs/{id}/cancel", post(jobs::cancel))
        .route("/ui/workflows/{name}/run", post(jobs::run_workflow))
        .route("/ui/admin", get(admin::view))
        .route("/ui/units", post(admin::register))
        .route("/ui/users", post(admin::create_user))
        .route("/ui/users/{name}/delete", post(admin::delete_user))
        .route("/ui/tokens", post(admin::create_token))
        .route("/ui/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/ui/requests/{id}/approve", post(admin::approve))
        .route("/ui/requests/{id}/reject", post(admin::reject))
        .route("/ui/audit", get(audit::log))
        .route("/ui/verify", get(audit::verify))
        .route("/ui/chargeback", get(charge::view))
        .route("/ui/chargeback.csv", get(charge::csv))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::from_fn(plain_errors))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(portal)
        .fallback_service(api)
}

/// A refusal axum makes before a handler runs (a form body that is not a
/// form or is over [`MAX_FORM_BYTES`], a number in the path that is not
/// one) is plain text: shown as the portal's error page (or fragment) with
/// that message, like every other error.
async fn plain_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let fragment = req.headers().contains_key(ASYNC_HEADER);
    let resp = next.run(req).await;
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 8192)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    if fragment {
        return (status, html::error_box(&message)).into_response();
    }
    let body = html::page(
        "Error",
        None,
        html! { (html::error_box(&message)) p { a href="/ui/" { "Back to the portal" } } },
    );
    (status, body).into_response()
}

/// Headers every portal answer carries: no framing (clickjacking), scripts
/// and styles from the portal only (inline `style` attributes draw the bars).
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A signed-in request: its session, and a client of the API acting
/// inside the unit in view.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The session.
    pub s: Session,
    /// The API, with the session's token.
    pub api: Api,
    /// The unit in view: a unit role's own, or the one an operator picked.
    pub unit: Option<String>,
    /// Whether the answer is a fragment for `portal.js`.
    pub fragment: bool,
}

impl Portal {
    /// The session of a request, or the sign-in page to answer.
    fn session(&self, headers: &HeaderMap) -> Result<(String, Session), Box<Response>> {
        let Some(id) = session::cookie(headers, SESSION_COOKIE) else {
            return Err(Box::new(signin(
                StatusCode::UNAUTHORIZED,
                NoSession::Missing.message(),
            )));
        };
        match self.sessions.find(id) {
            Ok(s) => Ok((id.to_owned(), s)),
            Err(why) => Err(Box::new(signin(StatusCode::UNAUTHORIZED, why.message()))),
        }
    }

    /// The context of a page request; `unit` is the `?unit=` an operator picked.
    fn ctx(&self, headers: &HeaderMap, unit: Option<&str>) -> Result<Ctx, Box<Response>> {
        let (_, s) = self.session(headers)?;
        let unit = match &s.who.unit {
            Some(own) => Some(own.clone()),
            None => unit.filter(|u| !u.is_empty()).map(str::to_owned),
        };
        // A unit role's own unit needs no header; an operator's pick does.
        let header_unit = if s.who.unit.is_some() {
            None
        } else {
            unit.clone()
        };
        Ok(Ctx {
            api: Api::new(self.api.clone(), s.token.clone(), header_unit),
            unit,
            s,
            fragment: headers.contains_key(ASYNC_HEADER),
        })
    }

    /// The context of a form post: a live session, the same origin, and
    /// the session's CSRF value in the `csrf` field.
    fn post_ctx(
        &self,
        headers: &HeaderMap,
        fields: &BTreeMap<String, String>,
    ) -> Result<Ctx, Box<Response>> {
        if let Err(why) = session::same_origin(headers) {
            return Err(Box::new(refused(why)));
        }
        let ctx = self.ctx(headers, fields.get("unit").map(String::as_str))?;
        let given = fields.get("csrf").map(String::as_str).unwrap_or_default();
        if !session::same_secret(given, &ctx.s.csrf) {
            return Err(Box::new(refused(
                "the form's CSRF token is missing or wrong: reload the page and submit it again",
            )));
        }
        Ok(ctx)
    }

    /// Ends the session behind a request whose token the API refused.
    fn drop_session(&self, headers: &HeaderMap) {
        if let Some(id) = session::cookie(headers, SESSION_COOKIE) {
            self.sessions.close(id);
        }
    }
}

/// 403 for a post that failed the CSRF or origin check.
fn refused(why: &str) -> Response {
    let body = html::page(
        "Refused",
        None,
        html! { (html::error_box(why)) p { a href="/ui/" { "Back to the portal" } } },
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

/// An API failure as a page (or fragment) with its message and status; a
/// refused token ends the session.
fn failed(p: &Portal, headers: &HeaderMap, ctx: Option<&Ctx>, e: &ApiFailure) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        p.drop_session(headers);
        return signin(StatusCode::UNAUTHORIZED, &e.message);
    }
    let status = e.status;
    if ctx.is_some_and(|c| c.fragment) {
        return (status, html::error_box(&e.message)).into_response();
    }
    let title = if status == StatusCode::NOT_FOUND {
        "Not found"
    } else {
        "Error"
    };
    let body = html::page(
        title,
        ctx.map(|c| &c.s),
        html! {
            (html::error_box(&e.message))
            p { a href="/ui/" { "Back to the portal" } }
        },
    );
    (status, body).into_response()
}

/// After a successful post: a fragment for `portal.js`, else a redirect
/// to the form's `back` page (a `/ui/` path only).
fn done(ctx: &Ctx, fields: &BTreeMap<String, String>, message: &str) -> Response {
    if ctx.fragment {
        return html::notice(message).into_response();
    }
    let back = fields
        .get("back")
        .filter(|b| b.starts_with("/ui/") && !b.starts_with("/ui//") && !b.contains('\\'))
        .map_or("/ui/", String::as_str);
    Redirect::to(back).into_response()
}

/// The sign-in page, with a fresh double-submit value in its cookie.
fn signin(status: StatusCode, message: &str) -> Response {
    let Ok(bytes) = crate::host::random::bytes::<32>() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for the sign-in form",
        )
            .into_response();
    };
    let value = crate::host::random::hex(&bytes);
    let body = html::page(
        "Sign in",
        None,
        html! {
            @if !message.is_empty() { p.notice role="status" { (message) } }
            form.signin method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(value);
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="current-password"
                    required autofocus;
                p.hint { "A token from " code { "brood token create --user NAME" }
                    ", or the data directory's token for the administrator." }
                button type="submit" { "Sign in" }
            }
        },
    );
    let cookie = session::set_cookie(
        LOGIN_COOKIE,
        &value,
        std::time::Duration::from_secs(3600),
        false,
    );
    let mut resp = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn home(State(p): P, headers: HeaderMap) -> Response {
    match p.session(&headers) {
        Ok((_, s)) if s.who.is_operator() => Redirect::to("/ui/admin").into_response(),
        Ok(_) => Redirect::to("/ui/unit").into_response(),
        Err(_) => signin(StatusCode::OK, ""),
    }
}

async fn login_page(State(p): P, headers: HeaderMap) -> Response {
    match p.session(&headers) {
        Ok(_) => Redirect::to("/ui/").into_response(),
        Err(_) => signin(StatusCode::OK, ""),
    }
}

/// Who a token is, as broodd's authentication says (the same code the
/// API's middleware runs); `None` for a token it refuses.
async fn identify(host: &Host, token: &str) -> Result<Option<Who>, Box<Response>> {
    use crate::tenancy::Caller;
    let caller = if crate::api::constant_time_eq(token.as_bytes(), host.token.as_bytes()) {
        Caller::bootstrap()
    } else {
        match Caller::authenticate(host, token.as_bytes()).await {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => return Ok(None),
            Err(e) => {
                tracing::error!("portal sign-in: {e}");
                return Err(Box::new(signin(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &e.to_string(),
                )));
            }
        }
    };
    Ok(Some(Who {
        user: caller.actor().to_owned(),
        role: caller.role().as_str().to_owned(),
        unit: caller.unit().map(|u| u.name.clone()),
    }))
}

async fn login(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    if let Err(why) = session::same_origin(&headers) {
        return refused(why);
    }
    let given = f.get("csrf").map(String::as_str).unwrap_or_default();
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !session::same_secret(given, expected) {
        return refused(
            "the sign-in form's CSRF token is missing or wrong: reload the page and sign in again",
        );
    }
    let token = f.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() || token.len() > 512 {
        return signin(
            StatusCode::BAD_REQUEST,
            "enter a token (`brood token create --user NAME` makes one)",
        );
    }
    let who = match identify(&p.host, token).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return signin(
                StatusCode::UNAUTHORIZED,
                "that token is unknown, revoked or expired: ask your administrator for a new one",
            );
        }
        Err(resp) => return *resp,
    };
    p.sessions.sweep();
    let opened = match p.sessions.open(token.to_owned(), who) {
        Ok(Some(o)) => o,
        Ok(None) => {
            return signin(
                StatusCode::SERVICE_UNAVAILABLE,
                "the portal holds as many sessions as it may: try again later",
            );
        }
        Err(e) => return signin(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let secure = session::is_tls(&headers);
    let mut resp = Redirect::to("/ui/").into_response();
    let set = [
        session::set_cookie(SESSION_COOKIE, &opened.0, p.sessions.ttl(), secure),
        session::clear_cookie(LOGIN_COOKIE, secure),
    ];
    for c in set {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn logout(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    if let Err(resp) = p.post_ctx(&headers, &f) {
        return *resp;
    }
    p.drop_session(&headers);
    let mut resp = signin(StatusCode::OK, "signed out");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(
        SESSION_COOKIE,
        session::is_tls(&headers),
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn asset(Path(file): Path<String>) -> Response {
    let (ctype, body): (&str, &'static str) = match file.as_str() {
        "portal.css" => ("text/css; charset=utf-8", include_str!("assets/portal.css")),
        "portal.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/portal.js"),
        ),
        _ => return not_found().await,
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    let body = html::page(
        "Not found",
        None,
        html! { (html::error_box("no such portal page")) p { a href="/ui/" { "Back to the portal" } } },
    );
    (StatusCode::NOT_FOUND, body).into_response()
}

/// A full page for a context.
fn render(ctx: &Ctx, title: &str, body: Markup) -> Response {
    html::page(title, Some(&ctx.s), body).into_response()
}
