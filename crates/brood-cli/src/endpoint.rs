//! Where broodd is and how to prove who we are: `--host`, else `BROOD_HOST`,
//! else the data directory's socket ([`brood_api::SOCKET_FILE`]); the token
//! from `--token`, else `BROOD_TOKEN`, else the data directory's token file
//! ([`brood_api::TOKEN_FILE`]). Whether that file's token may go to the
//! endpoint is `trust`'s; talking to broodd is `client`'s.

use std::fmt;
use std::path::{Path, PathBuf};

use hyper::Uri;

use crate::client::ClientError;

/// Where broodd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// Plain HTTP over TCP, as `host:port` (port always present).
    Tcp(String),
    /// HTTPS, as `host:port` (port always present).
    Tls(String),
}

impl Endpoint {
    /// Parses `--host`: `https://HOST[:PORT][/]`, `http://HOST[:PORT][/]`,
    /// `unix://PATH`, or a socket path.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::BadHost {
            host: s.to_string(),
            reason,
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("unix:// needs a socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let tls = s.starts_with("https://");
        if tls || s.starts_with("http://") {
            let uri: Uri = s.parse().map_err(|source| ClientError::BadUrl {
                host: s.to_string(),
                source,
            })?;
            let host = uri
                .host()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("no host"))?;
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(bad(
                    "use https://HOST:PORT or http://HOST:PORT, without a path",
                ));
            }
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addr = format!("{host}:{port}");
            return Ok(if tls {
                Self::Tls(addr)
            } else {
                Self::Tcp(addr)
            });
        }
        if s.contains("://") {
            return Err(bad(
                "use a unix socket path or an https://HOST:PORT (or http://HOST:PORT) URL",
            ));
        }
        Ok(Self::Unix(PathBuf::from(s)))
    }

    /// The endpoint: `--host`, else `BROOD_HOST` (`env`), else broodd's
    /// socket in the data directory.
    pub fn resolve(
        flag: Option<&str>,
        env: Option<String>,
        data_dir: &Path,
    ) -> Result<Self, ClientError> {
        match flag.or(env.as_deref().filter(|e| !e.trim().is_empty())) {
            Some(h) => Self::parse(h),
            None => Ok(Self::Unix(data_dir.join(brood_api::SOCKET_FILE))),
        }
    }

    /// The authority requests name: the TCP address, or `localhost` on a socket.
    pub fn authority(&self) -> &str {
        match self {
            Self::Unix(_) => "localhost",
            Self::Tcp(a) | Self::Tls(a) => a,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix socket {}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
            Self::Tls(a) => write!(f, "https://{a}"),
        }
    }
}

/// The token the user gave: `--token`, else `BROOD_TOKEN` (`env`), without
/// surrounding whitespace; `None` when neither is set.
pub fn explicit_token(flag: Option<&str>, env: Option<String>) -> Option<String> {
    [flag.map(str::to_string), env]
        .into_iter()
        .flatten()
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(
            Endpoint::parse("/run/b.sock").unwrap(),
            Endpoint::Unix("/run/b.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/b.sock").unwrap(),
            Endpoint::Unix("/run/b.sock".into())
        );
        assert_eq!(
            Endpoint::parse("./rel.sock").unwrap(),
            Endpoint::Unix("./rel.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:7070").unwrap(),
            Endpoint::Tcp("127.0.0.1:7070".into())
        );
        assert_eq!(
            Endpoint::parse("http://box/").unwrap(),
            Endpoint::Tcp("box:80".into())
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9").unwrap(),
            Endpoint::Tcp("[::1]:9".into())
        );
        assert_eq!(
            Endpoint::parse("https://box:7070").unwrap(),
            Endpoint::Tls("box:7070".into())
        );
        assert_eq!(
            Endpoint::parse("https://[::1]").unwrap(),
            Endpoint::Tls("[::1]:443".into())
        );
        for bad in [
            "",
            "  ",
            "https://box:1/api",
            "http://box:1/api",
            "unix://",
            "ftp://x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Endpoint::parse("ftp://box").unwrap_err().to_string();
        assert!(e.contains("https://HOST:PORT"), "{e}");
    }

    #[test]
    fn host_order() {
        let dir = Path::new("/data");
        let sock = Endpoint::Unix("/data/broodd.sock".into());
        assert_eq!(Endpoint::resolve(None, None, dir).unwrap(), sock);
        assert_eq!(
            Endpoint::resolve(None, Some(" ".into()), dir).unwrap(),
            sock
        );
        assert_eq!(
            Endpoint::resolve(None, Some("/env.sock".into()), dir).unwrap(),
            Endpoint::Unix("/env.sock".into())
        );
        assert_eq!(
            Endpoint::resolve(Some("http://h:1"), Some("/env.sock".into()), dir).unwrap(),
            Endpoint::Tcp("h:1".into())
        );
    }

    #[test]
    fn token_order() {
        assert_eq!(
            explicit_token(Some("flag"), Some("env".into())).as_deref(),
            Some("flag")
        );
        assert_eq!(
            explicit_token(None, Some("env\n".into())).as_deref(),
            Some("env")
        );
        assert_eq!(
            explicit_token(Some(" "), Some("env".into())).as_deref(),
            Some("env")
        );
        assert_eq!(explicit_token(None, Some(String::new())), None);
        assert_eq!(explicit_token(None, None), None);
    }
}
