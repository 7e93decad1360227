//! The cluster crate's one error type.

use std::time::Duration;

/// What can go wrong with the catalog or a cluster request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Bad input: what was wrong and what to do.
    #[error("{0}")]
    Invalid(String),
    /// An object the catalog does not have.
    #[error("{what} {name:?} is not in the catalog")]
    NotFound {
        /// Its kind.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The request conflicts with the catalog's state.
    #[error("{0}")]
    Conflict(String),
    /// Placement found no host.
    #[error("placement refused: {0}")]
    Refused(String),
    /// The catalog URL is not usable.
    #[error("catalog URL: {0}")]
    Url(String),
    /// PostgreSQL stayed unreachable (or kept failing) for the whole deadline.
    #[error("the catalog (PostgreSQL) did not answer within {after:?}: {last}")]
    Unavailable {
        /// How long it was retried.
        after: Duration,
        /// The last error seen.
        last: String,
    },
    /// The connection pool could not hand out a connection.
    #[error("catalog connection pool: {0}")]
    Pool(String),
    /// PostgreSQL refused a statement for a reason retrying cannot fix.
    #[error("catalog: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl ClusterError {
    /// Whether retrying the same idempotent operation may succeed: the
    /// connection broke, the server is restarting, or a serializable
    /// transaction lost a race.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Db(e) => is_transient_db(e),
            ClusterError::Pool(_) => true,
            _ => false,
        }
    }
}

/// Transient PostgreSQL failures: closed connections, I/O errors, and the
/// SQLSTATEs of a restart (class 08 connection exceptions, 57P01-57P03
/// admin shutdown / crash shutdown / cannot connect now) and of lost
/// serialization races (40001, 40P01).
pub(crate) fn is_transient_db(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08")
            || c == "57P01"
            || c == "57P02"
            || c == "57P03"
            || c == "40001"
            || c == "40P01";
    }
    // No SQLSTATE: transient only when the connection itself failed.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}
