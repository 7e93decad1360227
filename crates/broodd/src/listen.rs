//! broodd's network edge: where the API is served and how. It owns the
//! listeners (the data directory's unix socket, or another socket, and
//! optionally TCP with TLS), the TLS certificate (made self-signed at first
//! start, or given), the listen record the CLI reads
//! ([`brood_api::LISTEN_FILE`]), the API token file, and the per-connection
//! limits: a header-read timeout, a TLS handshake timeout and a cap on the
//! connections each listener serves at once. What a request does is `api`'s.
//!
//! ```text
//! DATA_DIR/broodd.sock    the API, mode 0600 (always, unless --listen names another socket)
//! DATA_DIR/token          the bearer token, 0600, owned by broodd's user, >= 32 hex digits
//! DATA_DIR/listen.json    what broodd serves: {"endpoints":[{"url":..,"cert_sha256":..}]}
//! DATA_DIR/tls-cert.pem   the self-signed certificate TCP listeners present
//! DATA_DIR/tls-key.pem    its key, 0600
//! ```

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use brood_api::listen::{ListenEndpoint, ListenRecord};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// How long a connection may take to send a request's headers (from the
/// moment it is ready for one, so an idle keep-alive connection is closed
/// after it too). A slowloris holds a connection for no longer than this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP client may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once unless `--max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// How long connections may take to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error that is not the client's (EMFILE, ENOBUFS),
/// so a full descriptor table does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection cap reached" warning per this many seconds.
const CAP_WARN_EVERY_SECS: u64 = 10;

/// The listening flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Where to listen: a unix socket path (default DATA_DIR/broodd.sock), or
    /// HOST:PORT for TCP with TLS, served beside DATA_DIR/broodd.sock.
    #[arg(long, value_name = "SOCKET|HOST:PORT")]
    pub listen: Option<String>,
    /// TLS certificate chain (PEM) for a TCP --listen (default:
    /// DATA_DIR/tls-cert.pem, self-signed, made at first start).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve a TCP --listen as plain HTTP, without TLS: loopback addresses only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_tcp: bool,
    /// Most API connections served at once on each listener; connections
    /// over it are closed at once (plain ones with a 503).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

/// `--listen` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Where {
    /// A unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl Where {
    /// `/path`, `unix:/path` or a relative path is a socket; anything else
    /// with a colon is TCP (as broodd has always read `--listen`).
    fn parse(s: &str) -> Self {
        if !s.starts_with('/') && !s.starts_with("unix:") && s.contains(':') {
            Self::Tcp(s.to_string())
        } else {
            let p = s.strip_prefix("unix://").unwrap_or(s);
            Self::Unix(PathBuf::from(p.strip_prefix("unix:").unwrap_or(p)))
        }
    }
}

/// One bound listener.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener, Option<TlsAcceptor>),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(l) => f.debug_tuple("Unix").field(&l.local_addr().ok()).finish(),
            Self::Tcp(l, tls) => f
                .debug_struct("Tcp")
                .field("addr", &l.local_addr().ok())
                .field("tls", &tls.is_some())
                .finish(),
        }
    }
}

/// One accepted connection, before TLS.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, Option<TlsAcceptor>),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Self::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
            Self::Tcp(l, tls) => l.accept().await.map(|(s, _)| Accepted::Tcp(s, tls.clone())),
        }
    }
}

/// The listeners, bound before broodd reconciles (so a busy port or a bad
/// flag fails the start at once) and served once the API is ready;
/// connections made in between wait in the backlog.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<Listener>,
    socket: PathBuf,
    record: PathBuf,
    max_connections: u32,
}

impl Bound {
    /// Checks the flags, makes or loads the TLS certificate, binds every
    /// listener and writes the listen record in `data`.
    pub async fn bind(args: &ListenArgs, data: &Path, default_socket: PathBuf) -> Result<Self> {
        let (socket, tcp) = match args.listen.as_deref().map(Where::parse) {
            Some(Where::Tcp(addr)) => (default_socket, Some(addr)),
            Some(Where::Unix(p)) => (p, None),
            None => (default_socket, None),
        };
        if tcp.is_none() && (args.insecure_tcp || args.tls_cert.is_some()) {
            bail!(
                "--insecure-tcp, --tls-cert and --tls-key apply to a TCP listener: \
                 add --listen HOST:PORT, or drop them"
            );
        }
        let mut listeners = Vec::new();
        let mut record = ListenRecord::default();
        if let Some(addr) = tcp {
            let (l, endpoint) = bind_tcp(args, data, &addr).await?;
            info!("serving on {}", endpoint.url);
            listeners.push(l);
            record.endpoints.push(endpoint);
        }
        let abs = std::path::absolute(&socket).unwrap_or_else(|_| socket.clone());
        record.endpoints.push(ListenEndpoint {
            url: format!("unix://{}", abs.display()),
            cert_sha256: None,
        });
        // The record is written before the socket exists: whoever sees the
        // socket accept a connection finds the record too.
        let record_path = data.join(brood_api::LISTEN_FILE);
        let json = serde_json::to_vec_pretty(&record).context("encode the listen record")?;
        write_private(&record_path, &json)?;
        let _ = std::fs::remove_file(&socket);
        let bound = UnixListener::bind(&socket)
            .with_context(|| format!("listen on {}", socket.display()))
            .and_then(|l| {
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("make {} mode 0600", socket.display()))?;
                Ok(l)
            });
        let l = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&record_path);
                return Err(e);
            }
        };
        info!("serving on {}", socket.display());
        listeners.push(Listener::Unix(l));
        Ok(Self {
            listeners,
            socket,
            record: record_path,
            max_connections: args.max_connections,
        })
    }

    /// Serves `app` on every listener until `shutdown` resolves, then lets
    /// open connections finish for a few seconds; the socket and the listen
    /// record are removed when it returns.
    pub async fn serve(mut self, app: Router, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let max = self.max_connections;
        let edge = Arc::new(Edge {
            app,
            max_connections: max,
            last_cap_warning: AtomicU64::new(0),
        });
        let mut loops = tokio::task::JoinSet::new();
        let mut limits = Vec::new();
        // A cap per listener, so a flood on TCP cannot lock the host's own
        // users out of the socket.
        for l in std::mem::take(&mut self.listeners) {
            let limit = Arc::new(Semaphore::new(max as usize));
            limits.push(limit.clone());
            loops.spawn(accept_loop(l, limit, edge.clone(), stop_rx.clone()));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        // Every connection holds a permit: all of them back means all done.
        let all_back = async {
            for l in &limits {
                let _ = l.acquire_many(max).await;
            }
        };
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, all_back).await;
        if drained.is_err() {
            debug!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
        Ok(())
    }
}

// Served or not (a start that fails after binding), the socket and the
// record go with the listeners, so nothing points at a broodd that is gone.
impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Binds a TCP listener after checking the address may carry what it
/// would serve: plain HTTP only on loopback.
async fn bind_tcp(
    args: &ListenArgs,
    data: &Path,
    addr: &str,
) -> Result<(Listener, ListenEndpoint)> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("--listen {addr}: not a HOST:PORT this host can resolve"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("--listen {addr}: the name resolves to no address");
    };
    if args.insecure_tcp
        && let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        bail!(
            "--insecure-tcp serves plain HTTP, which broodd allows only on a loopback address, \
             and {addr} is {a}: drop --insecure-tcp to serve TLS there, or listen on \
             127.0.0.1:PORT"
        );
    }
    let tls = if args.insecure_tcp {
        None
    } else {
        Some(tls_acceptor(args, data)?)
    };
    let l = TcpListener::bind(first)
        .await
        .with_context(|| format!("listen on {addr} ({first})"))?;
    let local = l.local_addr().context("read the TCP listener's address")?;
    let endpoint = match &tls {
        Some((_, fp)) => ListenEndpoint {
            url: format!("https://{local}"),
            cert_sha256: Some(fp.clone()),
        },
        None => ListenEndpoint {
            url: format!("http://{local}"),
            cert_sha256: None,
        },
    };
    Ok((Listener::Tcp(l, tls.map(|(a, _)| a)), endpoint))
}

/// The TLS acceptor and the SHA-256 (hex) of the certificate it presents:
/// `--tls-cert`/`--tls-key`, else the data directory's pair, made on first use.
fn tls_acceptor(args: &ListenArgs, data: &Path) -> Result<(TlsAcceptor, String)> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let cert = data.join(brood_api::TLS_CERT_FILE);
            let key = data.join(brood_api::TLS_KEY_FILE);
            ensure_self_signed(&cert, &key)?;
            (cert, key)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("read the TLS certificate {}", cert.display()))?;
    let Some(leaf) = certs.first() else {
        bail!(
            "the TLS certificate file {} holds no certificate (PEM `BEGIN CERTIFICATE`)",
            cert.display()
        );
    };
    let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
    let key = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("read the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS key does not fit the certificate {} (pass the pair that belongs together)",
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), fingerprint))
}

/// Makes the data directory's self-signed certificate and key unless both
/// exist; refuses a key others can read.
fn ensure_self_signed(cert: &Path, key: &Path) -> Result<()> {
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let mode = std::fs::metadata(key)
                .with_context(|| format!("read {}", key.display()))?
                .mode();
            if mode & 0o077 != 0 {
                bail!(
                    "the TLS key {} is readable by others (mode {:04o}): `chmod 600 {}`",
                    key.display(),
                    mode & 0o7777,
                    key.display()
                );
            }
            return Ok(());
        }
        (false, false) => {}
        _ => bail!(
            "only one of {} and {} exists: remove the other too and broodd makes a new pair",
            cert.display(),
            key.display()
        ),
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty());
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(host);
    let made = rcgen::generate_simple_self_signed(names).context("make a TLS certificate")?;
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(cert, made.cert.pem().as_bytes())?;
    info!("made a self-signed TLS certificate {}", cert.display());
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a
/// rename, so a reader never sees half of it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))
}

/// What every connection shares.
struct Edge {
    app: Router,
    max_connections: u32,
    /// Seconds since the epoch of the last cap warning.
    last_cap_warning: AtomicU64,
}

/// Accepts connections on `l` while `limit` has permits, closing the rest.
async fn accept_loop(
    l: Listener,
    limit: Arc<Semaphore>,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            () = stopped(&mut stop) => return,
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                warn!(error = %e, "accept an API connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(conn, edge.clone(), permit, stop.clone()));
            }
            Err(_) => edge.refuse(conn),
        }
    }
}

/// Resolves once broodd is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens on the way out.
    let _ = stop.wait_for(|s| *s).await;
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl Edge {
    /// Closes a connection over the cap; a plain one first gets a 503 if
    /// its socket takes it without waiting.
    fn refuse(&self, conn: Accepted) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_cap_warning.load(Ordering::Relaxed);
        if now >= last + CAP_WARN_EVERY_SECS
            && self
                .last_cap_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                max = self.max_connections,
                "API connection cap of a listener reached: closing its new connections \
                 (--max-connections)"
            );
        }
        let busy = busy_response(self.max_connections);
        match conn {
            Accepted::Unix(s) => {
                let _ = s.try_write(&busy);
            }
            Accepted::Tcp(s, None) => {
                let _ = s.try_write(&busy);
            }
            Accepted::Tcp(_, Some(_)) => {}
        }
    }
}

/// The 503 a plain connection over the cap gets.
fn busy_response(max: u32) -> Vec<u8> {
    let body = serde_json::to_vec(&brood_api::ErrorBody {
        error: brood_api::ErrorDetail {
            code: brood_api::ErrorCode::Unavailable,
            message: format!(
                "broodd is serving its most connections at once on this listener ({max}, \
                 --max-connections): try again"
            ),
        },
    })
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend(body);
    out
}

/// Serves one connection, holding its permit until it ends.
async fn connection(
    conn: Accepted,
    edge: Arc<Edge>,
    _permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    match conn {
        Accepted::Unix(s) => http(s, edge.app.clone(), stop).await,
        Accepted::Tcp(s, None) => {
            let _ = s.set_nodelay(true);
            http(s, edge.app.clone(), stop).await;
        }
        Accepted::Tcp(s, Some(tls)) => {
            let _ = s.set_nodelay(true);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(s)).await {
                Ok(Ok(s)) => http(s, edge.app.clone(), stop).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake not done within {TLS_HANDSHAKE_TIMEOUT:?}"),
            }
        }
    }
}

/// HTTP/1.1 on one connection, with the header-read timeout; on stop, the
/// request in flight finishes and the connection closes.
async fn http<IO>(io: IO, app: Router, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "API connection ended");
    }
}

/// Reads the API token, creating it (mode 0600) on first start. A token
/// file others can read or write, one owned by another user, or one with
/// fewer than [`brood_api::MIN_TOKEN_HEX_CHARS`] hex digits is refused.
pub fn token(path: &Path) -> Result<String> {
    match std::fs::File::open(path) {
        Ok(f) => {
            let meta = f
                .metadata()
                .with_context(|| format!("read {}", path.display()))?;
            check_token_owner(path, meta.uid(), meta.mode())?;
            let mut text = String::new();
            f.take(4096)
                .read_to_string(&mut text)
                .with_context(|| format!("read the token {}", path.display()))?;
            let t = text.trim();
            if !t.is_empty() {
                check_token_strength(path, t)?;
                return Ok(t.to_string());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("open the token {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut bytes))
        .context("read /dev/urandom for a new token")?;
    let t = hex::encode(bytes);
    write_private(path, t.as_bytes())?;
    Ok(t)
}

/// Refuses a token file owned by someone else or open to group or others.
fn check_token_owner(path: &Path, uid: u32, mode: u32) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if uid != me {
        bail!(
            "the token file {} is owned by uid {uid}, not by broodd's user (uid {me}): \
             `chown {me} {}`, or delete it and broodd makes a new one",
            path.display(),
            path.display()
        );
    }
    if mode & 0o077 != 0 {
        bail!(
            "the token file {} can be read or written by others (mode {:04o}): \
             `chmod 600 {}`, or delete it and broodd makes a new one",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// Refuses a token of fewer than 128 bits of hex.
fn check_token_strength(path: &Path, t: &str) -> Result<()> {
    if t.len() < brood_api::MIN_TOKEN_HEX_CHARS || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "the token file {} holds a weak token ({} characters; broodd needs at least {} hex \
             digits, 128 bits): delete it and broodd makes a new one, or write one with \
             `od -An -N32 -tx1 /dev/urandom | tr -d ' \\n' > {}`",
            path.display(),
            t.chars().count(),
            brood_api::MIN_TOKEN_HEX_CHARS,
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Far longer than any timeout of the edge: reaching it means the
    /// server kept a connection it should have closed.
    const TEST_DEADLINE: Duration = Duration::from_secs(60);

    fn args(listen: Option<String>, insecure_tcp: bool, max_connections: u32) -> ListenArgs {
        ListenArgs {
            listen,
            tls_cert: None,
            tls_key: None,
            insecure_tcp,
            max_connections,
        }
    }

    /// Serves a small app (`/ok`, and `/hold`, which answers once `release`
    /// turns true) in `dir`; dropping the sender stops it.
    async fn serve(
        dir: &Path,
        a: ListenArgs,
        release: watch::Receiver<bool>,
    ) -> (ListenRecord, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/hold",
                axum::routing::get(move || {
                    let mut release = release.clone();
                    async move {
                        stopped(&mut release).await;
                        "released"
                    }
                }),
            );
        let bound = Bound::bind(&a, dir, dir.join("broodd.sock")).await.unwrap();
        let record: ListenRecord =
            serde_json::from_slice(&std::fs::read(dir.join(brood_api::LISTEN_FILE)).unwrap())
                .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.serve(app, async move {
            let _ = rx.await;
        }));
        (record, tx)
    }

    /// Reads until the server closes the connection; `None` if it did not
    /// within [`TEST_DEADLINE`].
    async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
        let mut buf = Vec::new();
        match tokio::time::timeout(TEST_DEADLINE, s.read_to_end(&mut buf)).await {
            Ok(Ok(_)) => Some(String::from_utf8_lossy(&buf).into_owned()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Some(String::new()),
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn half_sent_requests_are_dropped_on_the_socket_and_on_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(Some("127.0.0.1:0".into()), true, 64);
        let (record, _stop) = serve(dir.path(), a, watch::channel(false).1).await;
        let tcp = record.endpoints[0]
            .url
            .strip_prefix("http://")
            .unwrap()
            .to_string();
        let mut conns: Vec<Box<dyn AsyncReadWrite>> = Vec::new();
        for _ in 0..20 {
            let mut u = UnixStream::connect(dir.path().join("broodd.sock"))
                .await
                .unwrap();
            u.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            conns.push(Box::new(u));
            let mut t = TcpStream::connect(&tcp).await.unwrap();
            t.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
                .await
                .unwrap();
            conns.push(Box::new(t));
            // One that sends nothing at all is closed too.
            conns.push(Box::new(
                UnixStream::connect(dir.path().join("broodd.sock"))
                    .await
                    .unwrap(),
            ));
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let got = read_until_closed(c).await;
            assert!(
                got.is_some(),
                "connection {i} was still open after {TEST_DEADLINE:?}"
            );
        }
        // The server still serves.
        let mut u = UnixStream::connect(dir.path().join("broodd.sock"))
            .await
            .unwrap();
        u.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut u).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }

    #[tokio::test]
    async fn a_tls_listener_drops_a_client_that_never_shakes_hands() {
        let dir = tempfile::tempdir().unwrap();
        let (record, _stop) = serve(
            dir.path(),
            args(Some("127.0.0.1:0".into()), false, 8),
            watch::channel(false).1,
        )
        .await;
        let https = &record.endpoints[0];
        assert!(https.url.starts_with("https://127.0.0.1:"), "{https:?}");
        let fp = https.cert_sha256.clone().unwrap();
        assert_eq!(fp.len(), 64);
        let cert = std::fs::read(dir.path().join(brood_api::TLS_CERT_FILE)).unwrap();
        let der = CertificateDer::from_pem_slice(&cert).unwrap();
        assert_eq!(hex::encode(Sha256::digest(der.as_ref())), fp);
        let mut t = TcpStream::connect(https.url.strip_prefix("https://").unwrap())
            .await
            .unwrap();
        assert!(
            read_until_closed(&mut t).await.is_some(),
            "the silent TLS client was kept"
        );
        // Plain HTTP gets no answer from the TLS port.
        let mut t = TcpStream::connect(https.url.strip_prefix("https://").unwrap())
            .await
            .unwrap();
        t.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut t).await.unwrap();
        assert!(!got.contains("200"), "{got}");
    }

    #[tokio::test]
    async fn connections_over_each_listeners_cap_are_closed_and_slots_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (release, held_until) = watch::channel(false);
        let a = args(Some("127.0.0.1:0".into()), true, 3);
        let (record, _stop) = serve(dir.path(), a, held_until).await;
        let tcp = record.endpoints[0]
            .url
            .strip_prefix("http://")
            .unwrap()
            .to_string();
        let sock = dir.path().join("broodd.sock");
        let mut held = Vec::new();
        let mut held_tcp = Vec::new();
        for _ in 0..3 {
            let mut u = UnixStream::connect(&sock).await.unwrap();
            u.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            held.push(u);
        }
        for _ in 0..3 {
            let mut over = UnixStream::connect(&sock).await.unwrap();
            let _ = over.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let got = read_until_closed(&mut over).await;
            let got = got.expect("a connection over the cap was kept open");
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 503"), "{got}");
        }
        // TCP has a cap of its own: the full socket leaves it served, and
        // filling it closes its next connections too.
        let mut t = TcpStream::connect(&tcp).await.unwrap();
        t.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut t).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        for _ in 0..3 {
            let mut h = TcpStream::connect(&tcp).await.unwrap();
            h.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            held_tcp.push(h);
        }
        for _ in 0..3 {
            let mut over = TcpStream::connect(&tcp).await.unwrap();
            let _ = over.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let got = read_until_closed(&mut over).await;
            let got = got.expect("a TCP connection over the cap was kept open");
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 503"), "{got}");
        }
        // The held requests finish; then new connections are served again.
        release.send(true).unwrap();
        let mut served = false;
        for _ in 0..100 {
            let mut u = UnixStream::connect(&sock).await.unwrap();
            let _ = u
                .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            if read_until_closed(&mut u)
                .await
                .is_some_and(|g| g.starts_with("HTTP/1.1 200"))
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "no connection was served after the held ones ended");
        for mut h in held {
            let got = read_until_closed(&mut h).await.unwrap();
            assert!(got.contains("released"), "{got}");
        }
        for mut h in held_tcp {
            let got = read_until_closed(&mut h).await.unwrap();
            assert!(got.contains("released"), "{got}");
        }
    }

    #[tokio::test]
    async fn a_given_certificate_is_served_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["broodd.test".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let mut a = args(Some("127.0.0.1:0".into()), false, 8);
        a.tls_cert = Some(cert.clone());
        a.tls_key = Some(key);
        let sock = dir.path().join("broodd.sock");
        let bound = Bound::bind(&a, dir.path(), sock.clone()).await.unwrap();
        let record: ListenRecord = serde_json::from_slice(
            &std::fs::read(dir.path().join(brood_api::LISTEN_FILE)).unwrap(),
        )
        .unwrap();
        let want = hex::encode(Sha256::digest(made.cert.der().as_ref()));
        assert_eq!(
            record.endpoints[0].cert_sha256.as_deref(),
            Some(want.as_str())
        );
        assert!(!dir.path().join(brood_api::TLS_CERT_FILE).exists());
        drop(bound);
        // A key that is not the certificate's is refused, saying so.
        let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let wrong = dir.path().join("wrong.pem");
        std::fs::write(&wrong, other.signing_key.serialize_pem()).unwrap();
        a.tls_key = Some(wrong);
        let e = format!("{:#}", Bound::bind(&a, dir.path(), sock).await.unwrap_err());
        assert!(e.contains("does not fit"), "{e}");
    }

    #[tokio::test]
    async fn an_unserved_bind_leaves_no_socket_or_record() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("broodd.sock");
        let bound = Bound::bind(&args(None, false, 8), dir.path(), sock.clone())
            .await
            .unwrap();
        assert!(sock.exists() && dir.path().join(brood_api::LISTEN_FILE).exists());
        drop(bound);
        assert!(!sock.exists());
        assert!(!dir.path().join(brood_api::LISTEN_FILE).exists());
    }

    #[tokio::test]
    async fn plain_tcp_off_loopback_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Bound::bind(
            &args(Some("0.0.0.0:0".into()), true, 8),
            dir.path(),
            dir.path().join("s"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--insecure-tcp") && e.contains("loopback"),
            "{e}"
        );
        assert!(!dir.path().join("s").exists());
        let e = Bound::bind(&args(None, true, 8), dir.path(), dir.path().join("s"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen HOST:PORT"), "{e}");
    }

    trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

    #[test]
    fn listen_forms() {
        assert_eq!(
            Where::parse("/run/b.sock"),
            Where::Unix("/run/b.sock".into())
        );
        assert_eq!(
            Where::parse("unix:/run/b.sock"),
            Where::Unix("/run/b.sock".into())
        );
        assert_eq!(
            Where::parse("unix:///run/b.sock"),
            Where::Unix("/run/b.sock".into())
        );
        assert_eq!(Where::parse("b.sock"), Where::Unix("b.sock".into()));
        assert_eq!(
            Where::parse("127.0.0.1:7070"),
            Where::Tcp("127.0.0.1:7070".into())
        );
        assert_eq!(Where::parse("[::1]:7070"), Where::Tcp("[::1]:7070".into()));
    }

    #[test]
    fn weak_or_open_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let me = nix::unistd::geteuid().as_raw();
        assert!(check_token_owner(&path, me, 0o100600).is_ok());
        assert!(check_token_owner(&path, me, 0o100400).is_ok());
        let e = check_token_owner(&path, me, 0o100644)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        assert!(check_token_owner(&path, me, 0o100620).is_err());
        let e = check_token_owner(&path, me.wrapping_add(1), 0o100600)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chown"), "{e}");
        assert!(check_token_strength(&path, &"ab".repeat(16)).is_ok());
        let e = check_token_strength(&path, "test-token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("weak") && e.contains("32 hex"), "{e}");
        assert!(check_token_strength(&path, &"ab".repeat(15)).is_err());
        assert!(check_token_strength(&path, &"zz".repeat(20)).is_err());
    }

    #[test]
    fn a_new_token_is_private_and_strong_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let t = token(&path).unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(&path).unwrap(), t);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(token(&path).is_err());
    }

    #[test]
    fn the_self_signed_pair_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join(brood_api::TLS_CERT_FILE);
        let key = dir.path().join(brood_api::TLS_KEY_FILE);
        ensure_self_signed(&cert, &key).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        let first = std::fs::read(&cert).unwrap();
        ensure_self_signed(&cert, &key).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = ensure_self_signed(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_file(&key).unwrap();
        assert!(ensure_self_signed(&cert, &key).is_err());
    }

    #[test]
    fn the_busy_answer_is_a_json_503() {
        let b = String::from_utf8(busy_response(7)).unwrap();
        assert!(b.starts_with("HTTP/1.1 503 "), "{b}");
        let (head, body) = b.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{b}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
    }
}
