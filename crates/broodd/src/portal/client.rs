//! The portal's only way to reach anything: a request to broodd's own API
//! router, in process (`tower::ServiceExt::oneshot`), with the session's
//! bearer token and, for an administrator acting inside a unit, the
//! `brood-unit` header. Every check is therefore the API's, and the portal
//! can do nothing the API does not let the same token do.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

/// Largest API answer the portal reads whole, in bytes.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An API error as the portal shows it: the status and the API's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The API's status.
    pub status: StatusCode,
    /// The API's stable code (`not_found`, `quota_exceeded`...).
    pub code: String,
    /// The API's message, shown as it is.
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

/// A client of the API on behalf of one session.
#[derive(Debug, Clone)]
pub struct Api {
    router: Router,
    token: String,
    unit: Option<String>,
}

impl Api {
    /// A client sending `token`, acting inside `unit` when given.
    pub fn new(router: Router, token: String, unit: Option<String>) -> Api {
        Api {
            router,
            token,
            unit,
        }
    }

    /// The unit this client acts inside, if any.
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// One request; the raw answer (status, content type, body).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String, Bytes), ApiFailure> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| failure(StatusCode::BAD_GATEWAY, format!("reading the answer: {e}")))?;
        if status.is_success() {
            Ok((status, ctype, bytes))
        } else {
            Err(decode_error(status, &bytes))
        }
    }

    /// One request whose answer is streamed on (the event stream).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<axum::response::Response, ApiFailure> {
        let mut b = Request::builder().method(method).uri(path);
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| failure(StatusCode::UNAUTHORIZED, "the session's token is not text"))?;
        b = b.header(header::AUTHORIZATION, auth);
        if let Some(u) = &self.unit {
            let v = HeaderValue::from_str(u)
                .map_err(|_| failure(StatusCode::BAD_REQUEST, "the unit name is not text"))?;
            b = b.header(brood_api::UNIT_HEADER, v);
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = b
            .body(body)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("a bad request: {e}")))?;
        Ok(self
            .router
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {}))
    }

    /// A request whose answer is JSON of type `T`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiFailure> {
        let (_, _, bytes) = self.raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            failure(
                StatusCode::BAD_GATEWAY,
                format!("the API answered {path} with JSON the portal cannot read: {e}"),
            )
        })
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        self.json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiFailure> {
        self.json(Method::POST, path, Some(body)).await
    }
}

fn failure(status: StatusCode, message: impl Into<String>) -> ApiFailure {
    ApiFailure {
        status,
        code: "portal".into(),
        message: message.into(),
    }
}

/// The API's `ErrorBody`, or the text it sent.
fn decode_error(status: StatusCode, bytes: &[u8]) -> ApiFailure {
    match serde_json::from_slice::<brood_api::ErrorBody>(bytes) {
        Ok(e) => ApiFailure {
            status,
            code: serde_json::to_value(e.error.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: e.error.message,
        },
        Err(_) => failure(
            status,
            String::from_utf8_lossy(bytes)
                .chars()
                .take(2000)
                .collect::<String>(),
        ),
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(enc("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(enc("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn an_error_body_gives_its_message() {
        let e = decode_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"no partition named \"x\""}}"#,
        );
        assert_eq!(e.code, "not_found");
        assert_eq!(e.message, "no partition named \"x\"");
        let e = decode_error(StatusCode::BAD_GATEWAY, b"plain");
        assert_eq!(e.message, "plain");
    }
}
