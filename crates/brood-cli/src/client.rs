//! The HTTP client of broodd's REST API: one small hyper client over a unix
//! socket, TCP or TLS (pinned by `trust`) with deadlines, JSON decoding and [`brood_api::ErrorBody`]
//! decoding. Finding broodd and its token is `endpoint`'s; the commands
//! that use the client live in their own modules.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use brood_api::{ErrorBody, ErrorCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::{Endpoint, explicit_token};
use crate::render::wire_name;
use crate::trust;

/// How long a request may take when the command sets no deadline of its own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an idle pooled connection is kept: below broodd's 5 s
/// header-read timeout, so brood drops an idle connection before broodd
/// closes it under a request about to be sent.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most of an error body quoted in a message when it is not an `ErrorBody`.
const QUOTED_BODY_CHARS: usize = 200;

/// What can go wrong talking to broodd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--host` or `BROOD_HOST` is not a socket path or an `http://` URL.
    #[error("host {host:?}: {reason}")]
    BadHost {
        /// The value given.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--host` or `BROOD_HOST` starts with `http://` but is no URL.
    #[error("host {host:?} is not a valid URL")]
    BadUrl {
        /// The value given.
        host: String,
        /// Why it does not parse.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// The token file could not be read.
    #[error(
        "read broodd's token {} (pass --token or set BROOD_TOKEN; broodd writes the file \
         when it starts: `broodd --data-dir DIR`)",
        path.display()
    )]
    ReadToken {
        /// The token file.
        path: PathBuf,
        /// Why reading it failed.
        #[source]
        source: io::Error,
    },
    /// The token file is empty.
    #[error("broodd's token file {} is empty", path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// The token file is not private to the user, or its token is weak.
    #[error("broodd's token file {} is refused: {problem}", path.display())]
    BadTokenFile {
        /// The token file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The data directory's listen record cannot be trusted or read.
    #[error("broodd's listen record {} is refused: {problem}", path.display())]
    BadListenRecord {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory's token would go to an endpoint its broodd does
    /// not serve.
    #[error(
        "not sending the token of {} to {target}: the broodd of that data directory does not \
         serve it (it serves {serves}); pass the token of the broodd at {target} with --token \
         or BROOD_TOKEN, or point --data-dir at that broodd's data directory",
        data_dir.display()
    )]
    TokenNotForHost {
        /// Where the token would have gone.
        target: Endpoint,
        /// The data directory the token is from.
        data_dir: PathBuf,
        /// What that broodd serves.
        serves: String,
    },
    /// An https endpoint with no certificate to check it against.
    #[error(
        "no certificate to check {target} against: {} records none; pass that broodd's \
         certificate (DATA_DIR/{} on its host) with --ca-cert FILE or BROOD_CA_CERT",
        data_dir.display(),
        brood_api::TLS_CERT_FILE
    )]
    NoCertificate {
        /// The endpoint.
        target: Endpoint,
        /// The data directory consulted.
        data_dir: PathBuf,
    },
    /// `--ca-cert` could not be used.
    #[error("the CA certificate {} (--ca-cert) is refused: {problem}", path.display())]
    BadCaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The TLS configuration could not be built.
    #[error("set up TLS: {0}")]
    Tls(String),
    /// No connection to broodd.
    #[error("cannot connect to broodd at {target} ({hint})")]
    Connect {
        /// The socket or URL tried.
        target: Endpoint,
        /// What to do about it.
        hint: String,
        /// Why connecting failed.
        #[source]
        source: io::Error,
    },
    /// The request failed after connecting.
    #[error("{what}: the request to broodd failed")]
    Request {
        /// Method and path.
        what: String,
        /// hyper's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Reading the answer failed.
    #[error("{what}: read broodd's answer")]
    Body {
        /// Method and path.
        what: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// broodd did not answer in time.
    #[error("{what}: broodd did not answer within {}s", after.as_secs())]
    Timeout {
        /// Method and path.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// broodd refused the request with an [`ErrorBody`].
    #[error("{message} ({})", wire_name(code))]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: ErrorCode,
        /// broodd's message.
        message: String,
    },
    /// broodd failed with a body that is not an [`ErrorBody`].
    #[error("{what}: broodd answered HTTP {status}: {body}")]
    Status {
        /// Method and path.
        what: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A success body did not decode.
    #[error("{what}: decode broodd's answer")]
    Decode {
        /// Method and path.
        what: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be built (a name that makes no URI).
    #[error("{what}: build the request")]
    Build {
        /// Method and path.
        what: String,
        /// The http crate's error.
        #[source]
        source: hyper::http::Error,
    },
}

/// A client of one broodd.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<Connector, Full<Bytes>>,
    tls: Option<tokio_rustls::TlsConnector>,
    endpoint: Endpoint,
    token: String,
    /// What to do when broodd cannot be reached.
    hint: String,
    /// The unit to act inside (`--unit`, the `brood-unit` header).
    unit: Option<String>,
}

// By hand, so the token never reaches a log.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Finds broodd and its token from the global flags, the environment
    /// and the data directory; a token from the data directory goes only
    /// to that directory's broodd (`trust`).
    pub fn from_flags(
        host: Option<&str>,
        token: Option<&str>,
        ca_cert: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Self, ClientError> {
        let env = |k| std::env::var(k).ok();
        let explicit = host.is_some() || env("BROOD_HOST").is_some_and(|h| !h.trim().is_empty());
        let endpoint = Endpoint::resolve(host, env("BROOD_HOST"), data_dir)?;
        let given = explicit_token(token, env("BROOD_TOKEN"));
        let record = match &endpoint {
            // The record is not needed to reach the data directory's own
            // socket, nor to send a token the user gave to a socket.
            Endpoint::Unix(_) if !explicit || given.is_some() => None,
            _ => trust::listen_record(data_dir)?,
        };
        let tls = match &endpoint {
            Endpoint::Tls(_) => Some(tokio_rustls::TlsConnector::from(trust::tls_config(
                &endpoint,
                ca_cert,
                data_dir,
                record.as_ref(),
            )?)),
            _ => None,
        };
        let token = match given {
            Some(t) => t,
            None => {
                let pinned = tls.is_some() && ca_cert.is_none();
                trust::check_token_destination(&endpoint, data_dir, record.as_ref(), pinned)?;
                trust::read_token_file(&data_dir.join(brood_api::TOKEN_FILE))?
            }
        };
        let hint = if explicit {
            "is broodd running there? check --host / BROOD_HOST".to_string()
        } else {
            format!(
                "is broodd running? start it with `broodd --data-dir {}`, \
                 or point --host / BROOD_HOST at a running one",
                data_dir.display()
            )
        };
        let mut client = Self::new(endpoint, token, hint);
        if let Some(tls) = tls {
            client = client.with_tls(tls);
        }
        Ok(client)
    }

    /// A client of broodd at `endpoint`.
    pub fn new(endpoint: Endpoint, token: String, hint: String) -> Self {
        let http = pooled().build(Connector {
            endpoint: endpoint.clone(),
            tls: None,
        });
        Self {
            http,
            tls: None,
            endpoint,
            token,
            hint,
            unit: None,
        }
    }

    /// The same client acting inside `unit` (`brood --unit U`).
    pub fn with_unit(self, unit: Option<String>) -> Self {
        Self { unit, ..self }
    }

    /// The unit it acts inside.
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// The same client speaking TLS through `tls` (for an https endpoint).
    fn with_tls(self, tls: tokio_rustls::TlsConnector) -> Self {
        let http = pooled().build(Connector {
            endpoint: self.endpoint.clone(),
            tls: Some(tls.clone()),
        });
        Self {
            http,
            tls: Some(tls),
            ..self
        }
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, Some(REQUEST_TIMEOUT))
            .await
    }

    /// `GET path` with a deadline, decoded.
    pub async fn get_within<T: DeserializeOwned>(
        &self,
        path: &str,
        deadline: Option<Duration>,
    ) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, deadline).await
    }

    /// `DELETE path` that answers a JSON body (`?wait=false`: the job), decoded.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None, Some(REQUEST_TIMEOUT))
            .await
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.post_within(path, body, Some(REQUEST_TIMEOUT)).await
    }

    /// `POST path` with a JSON body and a deadline (`None`: wait as long
    /// as it takes).
    pub async fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        deadline: Option<Duration>,
    ) -> Result<T, ClientError> {
        let body = json_body(&format!("POST {path}"), body)?;
        self.call(Method::POST, path, Some(body), deadline).await
    }

    /// `PUT path` with a JSON body, decoded.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = json_body(&format!("PUT {path}"), body)?;
        self.call(Method::PUT, path, Some(body), Some(REQUEST_TIMEOUT))
            .await
    }

    /// `PATCH path` with a JSON body, decoded.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = json_body(&format!("PATCH {path}"), body)?;
        self.call(Method::PATCH, path, Some(body), Some(REQUEST_TIMEOUT))
            .await
    }

    /// `DELETE path`, expecting no body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.exchange(Method::DELETE, path, None, Some(REQUEST_TIMEOUT))
            .await
            .map(drop)
    }

    /// `GET path` of a stream: returns the body once the headers are in.
    pub async fn stream(&self, path: &str) -> Result<Incoming, ClientError> {
        let what = format!("GET {path}");
        let resp = within(
            &what,
            Some(REQUEST_TIMEOUT),
            self.send(Method::GET, path, None),
        )
        .await??;
        stream_body(&what, resp).await
    }

    /// `POST path` with a JSON body whose answer is a stream: returns the
    /// body once the headers are in, within `headers_within`.
    pub async fn post_stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        headers_within: Duration,
    ) -> Result<Incoming, ClientError> {
        let what = format!("POST {path}");
        let body = json_body(&what, body)?;
        let resp = within(
            &what,
            Some(headers_within),
            self.send(Method::POST, path, Some(body)),
        )
        .await??;
        stream_body(&what, resp).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadline: Option<Duration>,
    ) -> Result<T, ClientError> {
        let what = format!("{method} {path}");
        let bytes = self.exchange(method, path, body, deadline).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { what, source })
    }

    /// Sends a request and reads the whole answer within `deadline`;
    /// a failure status becomes an error.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadline: Option<Duration>,
    ) -> Result<Bytes, ClientError> {
        let what = format!("{method} {path}");
        let work = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = collect(&what, resp.into_body()).await?;
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(decode_error(&what, status, &bytes))
            }
        };
        within(&what, deadline, work).await?
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let what = format!("{method} {path}");
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.endpoint.authority()))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("brood/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(u) = &self.unit {
            req = req.header(brood_api::UNIT_HEADER, u.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ClientError::Build {
                what: what.clone(),
                source,
            })?;
        self.http.request(req).await.map_err(|e| {
            if e.is_connect() {
                ClientError::Connect {
                    target: self.endpoint.clone(),
                    hint: self.hint.clone(),
                    source: io_cause(&e),
                }
            } else {
                ClientError::Request { what, source: e }
            }
        })
    }
}

impl Client {
    /// A request to broodd with the token, for [`Client::one_shot`].
    pub fn builder(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.endpoint.authority()))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(USER_AGENT, concat!("brood/", env!("CARGO_PKG_VERSION")))
    }

    /// Sends `req` on a connection of its own (not pooled), which may be
    /// upgraded (`hyper::upgrade::on`) or carry a streamed body.
    pub async fn one_shot<B>(
        &self,
        req: Request<B>,
    ) -> Result<hyper::Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let what = format!("{} {}", req.method(), req.uri().path());
        let mut connector = Connector {
            endpoint: self.endpoint.clone(),
            tls: self.tls.clone(),
        };
        let connect_err = |source| ClientError::Connect {
            target: self.endpoint.clone(),
            hint: self.hint.clone(),
            source,
        };
        let io = tower_service::Service::call(&mut connector, req.uri().clone())
            .await
            .map_err(connect_err)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|source| ClientError::Body {
                    what: what.clone(),
                    source,
                })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Body { what, source })
    }
}

/// hyper's client builder with brood's pool settings.
fn pooled() -> hyper_util::client::legacy::Builder {
    let mut b = HyperClient::builder(TokioExecutor::new());
    b.pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    b
}

fn json_body<B: Serialize>(what: &str, body: &B) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|source| ClientError::Decode {
        what: what.to_string(),
        source,
    })
}

async fn collect(what: &str, body: Incoming) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|source| ClientError::Body {
            what: what.to_string(),
            source,
        })
}

/// Runs `work` within `deadline` (`None`: no deadline).
async fn within<T>(
    what: &str,
    deadline: Option<Duration>,
    work: impl Future<Output = T>,
) -> Result<T, ClientError> {
    match deadline {
        None => Ok(work.await),
        Some(after) => {
            tokio::time::timeout(after, work)
                .await
                .map_err(|_elapsed| ClientError::Timeout {
                    what: what.to_string(),
                    after,
                })
        }
    }
}

/// Turns a failure answer into an error: broodd's [`ErrorBody`] when the
/// body is one, else the status and the start of the body.
pub fn decode_error(what: &str, status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut quoted: String = text.trim().chars().take(QUOTED_BODY_CHARS).collect();
            if quoted.is_empty() {
                quoted = status.canonical_reason().unwrap_or("no body").to_string();
            }
            ClientError::Status {
                what: what.to_string(),
                status: status.as_u16(),
                body: quoted,
            }
        }
    }
}

/// The `io::Error` at the bottom of a connect failure, so the message says
/// "No such file or directory" rather than hyper's "client error (Connect)".
fn io_cause(e: &hyper_util::client::legacy::Error) -> io::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return io::Error::new(io.kind(), io.to_string());
        }
        cause = c.source();
    }
    io::Error::other(e.to_string())
}

/// Connects hyper to broodd: the socket or TCP address of the endpoint,
/// whatever the request URI's authority says, with TLS for https.
#[derive(Clone)]
struct Connector {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let endpoint = self.endpoint.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let stream = match endpoint {
                Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
                Endpoint::Tcp(addr) => {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    Stream::Tcp(tcp)
                }
                Endpoint::Tls(addr) => {
                    let tls = tls.ok_or_else(|| {
                        io::Error::other("no TLS configuration for an https endpoint")
                    })?;
                    let tcp = TcpStream::connect(&addr).await?;
                    tcp.set_nodelay(true)?;
                    // The certificate is pinned, so the name only goes out
                    // as SNI (and is checked for a --ca-cert chain).
                    let name = server_name(&addr);
                    let tls = tls.connect(name, tcp).await.map_err(pin_error)?;
                    Stream::Tls(Box::new(tls))
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// A refused certificate as `trust` words it (rustls would print
/// "unexpected error: " before a verifier's own message).
fn pin_error(e: io::Error) -> io::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(msg)) => io::Error::new(e.kind(), msg.clone()),
        _ => e,
    }
}

/// The TLS server name of `host:port`: an IP address or a DNS name
/// (`broodd` when the host is neither, which only a pin can then accept).
fn server_name(addr: &str) -> rustls::pki_types::ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        rustls::pki_types::ServerName::DnsName(
            rustls::pki_types::DnsName::try_from("broodd").expect("a valid DNS name"),
        )
    })
}

/// A connection to broodd over any transport.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Percent-encodes one path segment or query value, so a name cannot
/// change the route (`../`, `?`, `#`).
pub fn encode(s: &str) -> String {
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

/// The body of a streamed answer once its headers are in, or the error a
/// refused one carries.
async fn stream_body(what: &str, resp: hyper::Response<Incoming>) -> Result<Incoming, ClientError> {
    if resp.status().is_success() {
        return Ok(resp.into_body());
    }
    let status = resp.status();
    let bytes = within(what, Some(REQUEST_TIMEOUT), collect(what, resp.into_body())).await??;
    Err(decode_error(what, status, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_decode() {
        let body =
            br#"{"error":{"code":"invalid_transition","message":"web is running; stop it first"}}"#;
        let e = decode_error("DELETE /v1/partitions/web", StatusCode::CONFLICT, body);
        assert!(matches!(
            e,
            ClientError::Api {
                status: 409,
                code: ErrorCode::InvalidTransition,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "web is running; stop it first (invalid_transition)"
        );

        let e = decode_error("GET /v1/x", StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert_eq!(
            e.to_string(),
            "GET /v1/x: broodd answered HTTP 502: <html>proxy</html>"
        );
        let e = decode_error("GET /v1/x", StatusCode::NOT_FOUND, b"");
        assert_eq!(
            e.to_string(),
            "GET /v1/x: broodd answered HTTP 404: Not Found"
        );
        let long = "x".repeat(1000);
        let e = decode_error(
            "GET /v1/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            long.as_bytes(),
        );
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode("web-1.a_b"), "web-1.a_b");
        assert_eq!(encode("../x?y#z"), "..%2Fx%3Fy%23z");
        assert_eq!(encode("a b"), "a%20b");
    }

    #[tokio::test]
    async fn connect_failure_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("broodd.sock");
        let c = Client::new(Endpoint::Unix(sock.clone()), "t".into(), "start it".into());
        let e = c.get::<serde_json::Value>("/v1/host").await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&sock.display().to_string()), "{msg}");
        assert!(msg.contains("start it"), "{msg}");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("No such file"), "{cause}");
    }
}
