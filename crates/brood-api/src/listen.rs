//! What broodd records in its data directory about where it listens
//! ([`crate::LISTEN_FILE`]), so that `brood` sends the data directory's
//! token only to addresses that broodd itself serves and can pin the TLS
//! certificate it presents. broodd writes the file when it starts serving
//! and removes it when it stops; the CLI only reads it.

use serde::{Deserialize, Serialize};

/// Largest listen record the CLI reads.
pub const MAX_LISTEN_FILE_BYTES: u64 = 64 * 1024;

/// The contents of [`crate::LISTEN_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenRecord {
    /// Every address broodd serves the API on.
    pub endpoints: Vec<ListenEndpoint>,
}

/// One address broodd serves the API on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenEndpoint {
    /// `unix:///path/broodd.sock`, `https://IP:PORT` or (loopback only,
    /// with `--insecure-tcp`) `http://IP:PORT`.
    pub url: String,
    /// SHA-256 of the DER certificate broodd presents on an `https` URL,
    /// as lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}
