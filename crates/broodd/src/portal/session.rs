//! Portal sessions: who signed in, with which API token, until when; and
//! the CSRF checks every form post passes.
//!
//! A session lives in broodd's memory only (a restart signs everyone out:
//! the token is what lasts, the session is a convenience over it). The
//! browser holds a random 256-bit session id in the `brood_session` cookie
//! (HttpOnly, SameSite=Strict, Path=/ui, Secure when the portal was reached
//! over TLS, Max-Age = what is left of the session); the store is keyed by
//! the id's SHA-256, so a lookup's timing says nothing about other ids.
//! The API token never reaches the browser after sign-in.
//!
//! CSRF: every form of a session carries that session's random `csrf`
//! value, compared in constant time; the sign-in form, before any session
//! exists, is a double submit (the `brood_login` cookie must equal the
//! form's field). A post whose `Origin` names another host is refused
//! whatever it carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::host::{HostResult, random};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "brood_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "brood_login";
/// How long a session lasts unless `BROOD_PORTAL_SESSION_TTL_S` says otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at once; a sign-in beyond them is refused (expired ones go first).
pub const MAX_SESSIONS: usize = 10_000;
/// Longest cookie header read, in bytes.
const MAX_COOKIE_HEADER_BYTES: usize = 8 * 1024;

/// Who a session is, as the API told at sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The user's name (the audit log's actor).
    pub user: String,
    /// `admin`, `unit-admin`, `unit-user` or `auditor`.
    pub role: String,
    /// The unit of a unit role.
    pub unit: Option<String>,
}

impl Who {
    /// Whether the administrator's view is the home page (admins and auditors).
    pub fn is_operator(&self) -> bool {
        self.role == "admin" || self.role == "auditor"
    }
}

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The API token every request of this session is sent with.
    pub token: String,
    /// Who it is.
    pub who: Who,
    /// The value every form of this session carries.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or the CSRF value.
        f.debug_struct("Session")
            .field("who", &self.who)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why a request has no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    /// No cookie.
    Missing,
    /// A cookie of a session that was signed out, or never existed.
    Unknown,
    /// Past its expiry.
    Expired,
}

impl NoSession {
    /// What the sign-in page says.
    pub fn message(self) -> &'static str {
        match self {
            NoSession::Missing => "sign in with your token to use the portal",
            NoSession::Unknown => {
                "this session was signed out (or broodd restarted): sign in again"
            }
            NoSession::Expired => "your session has expired: sign in again",
        }
    }
}

/// The session store.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// An empty store whose sessions last `ttl`.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// The session length: `BROOD_PORTAL_SESSION_TTL_S` (1 s to 30 days) or 8 hours.
    pub fn ttl_from_env() -> Duration {
        std::env::var("BROOD_PORTAL_SESSION_TTL_S")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|s| (1..=30 * 86400).contains(s))
            .map_or(DEFAULT_SESSION_TTL, Duration::from_secs)
    }

    /// How long a new session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session; returns its id (the cookie's value), or `None` when
    /// the store is full of live sessions.
    pub fn open(&self, token: String, who: Who) -> HostResult<Option<(String, Session)>> {
        let id = random::hex(&random::bytes::<32>()?);
        let session = Session {
            token,
            who,
            csrf: random::hex(&random::bytes::<32>()?),
            expires: Instant::now() + self.ttl,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Ok(None);
            }
        }
        map.insert(digest(&id), session.clone());
        Ok(Some((id, session)))
    }

    /// The live session of `id`; an expired one is removed.
    pub fn find(&self, id: &str) -> Result<Session, NoSession> {
        let key = digest(id);
        let mut map = self.lock();
        let Some(s) = map.get(&key) else {
            return Err(NoSession::Unknown);
        };
        if s.expires <= Instant::now() {
            map.remove(&key);
            return Err(NoSession::Expired);
        }
        Ok(s.clone())
    }

    /// Ends the session of `id` (sign-out, or the API no longer takes its token).
    pub fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }

    /// Ends every session whose expiry has passed; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        map.len()
    }

    /// Moves a session's expiry (tests of expiry, without waiting).
    #[cfg(test)]
    pub fn set_expiry(&self, id: &str, at: Instant) {
        if let Some(s) = self.lock().get_mut(&digest(id)) {
            s.expires = at;
        }
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER_BYTES)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value for the portal's cookies.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that deletes cookie `name`.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    set_cookie(name, "", Duration::ZERO, secure)
}

/// Whether two secrets are equal, in constant time (and both non-empty).
pub fn same_secret(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether the request came over TLS as far as the browser says: its
/// `Origin` (sent with every form post) is `https://`.
pub fn is_tls(headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"))
}

/// Refuses a post whose `Origin` names a host other than the one it was
/// sent to (`Host`); a post without `Origin` is left to the CSRF token.
pub fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "the Origin header is not text")?;
    if origin == "null" {
        return Err("the form was posted from an opaque origin");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or("a cross-site post (no Host header to compare its Origin with)")?;
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or(origin);
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("the form was posted from another site (its Origin is not this portal)")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn who() -> Who {
        Who {
            user: "alice".into(),
            role: "unit-user".into(),
            unit: Some("eng".into()),
        }
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_is_closed() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, opened) = s.open("tok".into(), who()).unwrap().unwrap();
        assert_eq!(id.len(), 64);
        let found = s.find(&id).unwrap();
        assert_eq!(found.token, "tok");
        assert_eq!(found.csrf, opened.csrf);
        assert_eq!(s.find("not-an-id").unwrap_err(), NoSession::Unknown);
        s.close(&id);
        assert_eq!(s.find(&id).unwrap_err(), NoSession::Unknown);
    }

    #[test]
    fn an_expired_session_is_refused_and_forgotten() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, _) = s.open("tok".into(), who()).unwrap().unwrap();
        s.set_expiry(&id, Instant::now());
        assert_eq!(s.find(&id).unwrap_err(), NoSession::Expired);
        assert_eq!(s.find(&id).unwrap_err(), NoSession::Unknown);
        assert_eq!(s.sweep(), 0);
    }

    #[test]
    fn two_sessions_have_different_ids_and_csrf_values() {
        let s = Sessions::new(Duration::from_secs(60));
        let (a, sa) = s.open("t".into(), who()).unwrap().unwrap();
        let (b, sb) = s.open("t".into(), who()).unwrap().unwrap();
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert!(
            !format!("{sa:?}").contains(&sa.csrf),
            "Debug leaks the CSRF value"
        );
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; brood_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("brood_login=abc"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(SESSION_COOKIE, "xyz", Duration::from_secs(5), true);
        assert_eq!(
            c,
            "brood_session=xyz; Path=/ui; Max-Age=5; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!clear_cookie(SESSION_COOKIE, false).contains("Secure"));
    }

    #[test]
    fn secrets_compare_whole_and_never_empty() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", ""));
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h).is_ok(), "no Origin: the CSRF token decides");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h).is_ok());
        assert!(!is_tls(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:8080"),
        );
        assert!(is_tls(&h));
    }
}
