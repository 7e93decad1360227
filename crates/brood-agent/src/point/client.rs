//! The caller's side of the point socket: `brood-agent announce` and
//! `brood-agent fork-point` connect, send one request and wait for the
//! agent's one reply (the protocol is in the parent module's docs).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use brood_proto::MAX_DATA_CHUNK;

use super::{
    KIND_ANNOUNCE, KIND_FORK_POINT, MAX_REASON, PointError, REQUEST_TIMEOUT, STATUS_ANSWERED,
    STATUS_FORK_FAILED, STATUS_REFUSED, encode, read_message, validate_name,
};

/// Announces point `name` to the agent listening on `socket` and waits for
/// the host's answer, at most `timeout` if given.
pub fn announce(
    socket: &Path,
    name: &str,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, PointError> {
    validate_name(name)?;
    call(socket, KIND_ANNOUNCE, name.as_bytes(), timeout)
}

/// Asks the agent listening on `socket` to run the independent services and
/// wait at a fork point, then waits (at most `timeout` if given) for the
/// child's configuration as JSON.
pub fn fork_point(socket: &Path, timeout: Option<Duration>) -> Result<Vec<u8>, PointError> {
    call(socket, KIND_FORK_POINT, &[], timeout)
}

fn call(
    socket: &Path,
    kind: u8,
    body: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, PointError> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut stream = UnixStream::connect(socket).map_err(|source| PointError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.write_all(&encode(kind, body)))
        .map_err(PointError::Io)?;
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(PointError::Io)?;
    }
    let timed_out = PointError::Timeout {
        after: timeout.unwrap_or_default(),
    };
    let reason =
        |bytes: &[u8]| crate::console::cut(&String::from_utf8_lossy(bytes), MAX_REASON).to_owned();
    match read_message(&mut stream, MAX_DATA_CHUNK) {
        Ok((STATUS_ANSWERED, body)) => Ok(body),
        Ok((STATUS_REFUSED, text)) => Err(PointError::Refused {
            reason: reason(&text),
        }),
        Ok((STATUS_FORK_FAILED, text)) => Err(PointError::ForkFailed {
            reason: reason(&text),
        }),
        Ok(_) => Err(PointError::Protocol {
            what: "unknown status",
        }),
        Err(PointError::Io(err))
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(timed_out)
        }
        Err(err) => Err(err),
    }
}
