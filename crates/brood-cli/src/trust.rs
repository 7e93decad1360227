//! Whom `brood` trusts with what. A token read from a data directory goes
//! only to the broodd of that data directory: its socket, or an address
//! broodd recorded in [`brood_api::LISTEN_FILE`] as one it serves (an
//! `https` one proves it by presenting the recorded certificate). A token
//! given with `--token` or `BROOD_TOKEN` goes where the user says. The
//! token file must be the user's own, closed to others and strong. Over
//! `https` the certificate is pinned: the one broodd recorded, or the
//! certificates of `--ca-cert`. `endpoint` finds broodd; `client` talks to it.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use brood_api::listen::ListenRecord;
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::client::ClientError;
use crate::endpoint::Endpoint;

/// Most of a token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Reads broodd's token from `path`, refusing a file that is not the
/// user's own, that others can read or write, or whose token is weak.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let bad = |problem: String| ClientError::BadTokenFile {
        path: path.to_path_buf(),
        problem,
    };
    let read = |source| ClientError::ReadToken {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read)?;
    let meta = f.metadata().map_err(read)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(bad(format!(
            "it is owned by uid {}, not by you (uid {me}); use your own broodd's data \
             directory, or pass the token with BROOD_TOKEN",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "others can read or write it (mode {mode:04o}): `chmod 600 {}`",
            path.display()
        )));
    }
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(read)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    if token.len() < brood_api::MIN_TOKEN_HEX_CHARS || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad(format!(
            "its token is weak ({} characters; at least {} hex digits, 128 bits, are needed): \
             delete it and restart broodd, which makes a new one",
            token.chars().count(),
            brood_api::MIN_TOKEN_HEX_CHARS
        )));
    }
    Ok(token.to_string())
}

/// The listen record of `data_dir`, if broodd wrote one. A record that is
/// not the user's own or that others can write is refused: it decides
/// where the token may go.
pub fn listen_record(data_dir: &Path) -> Result<Option<ListenRecord>, ClientError> {
    let path = data_dir.join(brood_api::LISTEN_FILE);
    let bad = |problem: String| ClientError::BadListenRecord {
        path: path.clone(),
        problem,
    };
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "it is not yours alone (uid {}, mode {:04o}); broodd writes it with mode 0600",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    f.take(brood_api::listen::MAX_LISTEN_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| bad(format!("not a listen record: {e}")))
}

/// The endpoints a listen record names (entries that do not parse are
/// skipped: they can only make fewer places trusted).
fn recorded(record: Option<&ListenRecord>) -> Vec<Endpoint> {
    record
        .map(|r| {
            r.endpoints
                .iter()
                .filter_map(|e| Endpoint::parse(&e.url).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The certificate fingerprints a listen record pins for `https`.
pub fn recorded_fingerprints(record: Option<&ListenRecord>) -> Vec<String> {
    record
        .map(|r| {
            r.endpoints
                .iter()
                .filter(|e| e.url.starts_with("https://"))
                .filter_map(|e| e.cert_sha256.clone())
                .map(|f| f.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the token of `data_dir` may be sent to `endpoint`; `pinned`
/// says the TLS connection will accept only the certificate `data_dir`'s
/// broodd recorded.
pub fn check_token_destination(
    endpoint: &Endpoint,
    data_dir: &Path,
    record: Option<&ListenRecord>,
    pinned: bool,
) -> Result<(), ClientError> {
    let served = recorded(record);
    let ok = match endpoint {
        Endpoint::Unix(p) => {
            same_path(p, &data_dir.join(brood_api::SOCKET_FILE))
                || served
                    .iter()
                    .any(|s| matches!(s, Endpoint::Unix(q) if same_path(p, q)))
        }
        // The handshake proves the server holds the recorded certificate's
        // key before anything is sent, whatever name reached it.
        Endpoint::Tls(_) if pinned => true,
        Endpoint::Tls(_) => served.contains(endpoint),
        // Plain HTTP proves nothing: the address must be recorded and the
        // broodd that recorded it still running (else anyone may hold it now).
        Endpoint::Tcp(_) => served.contains(endpoint) && broodd_holds_lock(data_dir),
    };
    if ok {
        return Ok(());
    }
    let serves = if served.is_empty() {
        format!(
            "its socket {}",
            data_dir.join(brood_api::SOCKET_FILE).display()
        )
    } else {
        served
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(ClientError::TokenNotForHost {
        target: endpoint.clone(),
        data_dir: data_dir.to_path_buf(),
        serves,
    })
}

/// Whether a broodd holds the data directory's lock (so it is running).
fn broodd_holds_lock(data_dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(data_dir.join(brood_api::LOCK_FILE)) else {
        return false;
    };
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Two paths name the same file: equal once their directories are
/// resolved (a socket itself may not exist yet).
fn same_path(a: &Path, b: &Path) -> bool {
    fn resolved(p: &Path) -> PathBuf {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        match (abs.parent(), abs.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(name),
            _ => abs,
        }
    }
    a == b || resolved(a) == resolved(b)
}

/// The TLS client configuration for `endpoint`: certificates from
/// `ca_cert`, else the fingerprints broodd recorded in `data_dir`.
pub fn tls_config(
    endpoint: &Endpoint,
    ca_cert: Option<&Path>,
    data_dir: &Path,
    record: Option<&ListenRecord>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match ca_cert {
        Some(path) => Pinned::from_file(path, provider.clone())?,
        None => {
            let fingerprints = recorded_fingerprints(record);
            if fingerprints.is_empty() {
                return Err(ClientError::NoCertificate {
                    target: endpoint.clone(),
                    data_dir: data_dir.to_path_buf(),
                });
            }
            Pinned {
                fingerprints,
                chain: None,
                provider: provider.clone(),
                source: format!(
                    "the one broodd recorded in {}",
                    data_dir.join(brood_api::LISTEN_FILE).display()
                ),
            }
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts the server's certificate when it is one of the pinned ones,
/// else (with `--ca-cert` naming a CA) when it chains to one of them.
#[derive(Debug)]
struct Pinned {
    /// SHA-256 of each accepted end-entity certificate (lowercase hex).
    fingerprints: Vec<String>,
    /// Chain verification against `--ca-cert` as roots.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    /// Where the pins came from, for the error.
    source: String,
}

impl Pinned {
    fn from_file(path: &Path, provider: Arc<CryptoProvider>) -> Result<Self, ClientError> {
        let bad = |problem: String| ClientError::BadCaCert {
            path: path.to_path_buf(),
            problem,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        let chain = if added > 0 {
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .ok()
        } else {
            None
        };
        Ok(Self {
            fingerprints: certs.iter().map(|c| fingerprint(c)).collect(),
            chain,
            provider,
            source: format!("in {} (--ca-cert)", path.display()),
        })
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        if self.fingerprints.contains(&fp) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Some(chain) = &self.chain
            && let Ok(ok) =
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            return Ok(ok);
        }
        Err(rustls::Error::General(format!(
            "the server's certificate (sha256 {fp}) is not {}",
            self.source
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_token_file_must_be_private_and_strong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let strong = "0123456789abcdef".repeat(4);
        write(&file, &format!("{strong}\n"), 0o600);
        assert_eq!(read_token_file(&file).unwrap(), strong);
        write(&file, &strong, 0o644);
        let e = read_token_file(&file).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        write(&file, "test-token", 0o600);
        let e = read_token_file(&file).unwrap_err().to_string();
        assert!(e.contains("weak"), "{e}");
        write(&file, &"ab".repeat(15), 0o600);
        assert!(read_token_file(&file).is_err());
        write(&file, "\n", 0o600);
        assert!(matches!(
            read_token_file(&file),
            Err(ClientError::EmptyToken { .. })
        ));
    }

    #[test]
    fn the_data_dir_token_goes_only_where_its_broodd_serves() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let own = Endpoint::Unix(data.join(brood_api::SOCKET_FILE));
        assert!(check_token_destination(&own, data, None, false).is_ok());
        let dotted = Endpoint::Unix(data.join(".").join(brood_api::SOCKET_FILE));
        assert!(check_token_destination(&dotted, data, None, false).is_ok());
        let other = Endpoint::Unix("/tmp/other.sock".into());
        let e = check_token_destination(&other, data, None, false).unwrap_err();
        assert!(e.to_string().contains("--token"), "{e}");
        let tcp = Endpoint::Tcp("127.0.0.1:7070".into());
        assert!(check_token_destination(&tcp, data, None, false).is_err());
        let tls = Endpoint::Tls("box:7070".into());
        assert!(check_token_destination(&tls, data, None, false).is_err());
        assert!(check_token_destination(&tls, data, None, true).is_ok());

        let record: ListenRecord = serde_json::from_value(serde_json::json!({"endpoints": [
            {"url": "http://127.0.0.1:7070"},
            {"url": "https://127.0.0.1:7071", "cert_sha256": "AB"},
            {"url": "unix:///tmp/other.sock"},
        ]}))
        .unwrap();
        assert!(check_token_destination(&other, data, Some(&record), false).is_ok());
        assert!(
            check_token_destination(
                &Endpoint::Tls("127.0.0.1:7071".into()),
                data,
                Some(&record),
                false
            )
            .is_ok()
        );
        // Recorded, but no broodd holds the data directory's lock.
        let e = check_token_destination(&tcp, data, Some(&record), false).unwrap_err();
        assert!(e.to_string().contains("http://127.0.0.1:7070"), "{e}");
        let lock = std::fs::File::create(data.join(brood_api::LOCK_FILE)).unwrap();
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert!(check_token_destination(&tcp, data, Some(&record), false).is_ok());
        let port = Endpoint::Tcp("127.0.0.1:7072".into());
        assert!(check_token_destination(&port, data, Some(&record), false).is_err());
        drop(held);
        assert_eq!(recorded_fingerprints(Some(&record)), vec!["ab".to_string()]);
    }

    #[test]
    fn a_listen_record_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(listen_record(dir.path()).unwrap().is_none());
        let file = dir.path().join(brood_api::LISTEN_FILE);
        write(&file, r#"{"endpoints":[]}"#, 0o600);
        assert!(listen_record(dir.path()).unwrap().is_some());
        write(&file, r#"{"endpoints":[]}"#, 0o666);
        assert!(listen_record(dir.path()).is_err());
        write(&file, "nope", 0o600);
        assert!(listen_record(dir.path()).is_err());
    }
}
