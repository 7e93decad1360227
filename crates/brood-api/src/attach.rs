//! Attached connections: `brood vm console` (the serial console, both
//! ways), `brood vm exec -t` and `--stdin` (an interactive command), and
//! the file transfer of `brood vm cp`.
//!
//! An attach request is an HTTP/1.1 upgrade (`Connection: Upgrade`,
//! `Upgrade: brood-attach`) answered by `101 Switching Protocols`; after it
//! both sides send frames: one kind byte, a 4-byte big-endian payload
//! length (at most [`MAX_FRAME_PAYLOAD`]), the payload. The client sends
//! [`STDIN`], [`EOF`], [`RESIZE`] and [`SIGNAL`]; broodd sends [`STDOUT`],
//! [`STDERR`], and last [`EXIT`] (an [`crate::ExecEnd`] as JSON) or
//! [`ERROR`] (an [`crate::ErrorDetail`] as JSON), then closes. A console
//! has no end of its own: broodd closes when the VM ends.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The `Upgrade` header's value.
pub const ATTACH_PROTOCOL: &str = "brood-attach";
/// Largest frame payload either side sends or accepts.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 5;

/// Client: bytes for the command's stdin (or the console).
pub const STDIN: u8 = 1;
/// Client: close the command's stdin (on a terminal: end of file).
pub const EOF: u8 = 2;
/// Client: the terminal's new size, rows then columns, two big-endian u16.
pub const RESIZE: u8 = 3;
/// Client: a signal for the command's process group, a big-endian i32.
pub const SIGNAL: u8 = 4;
/// broodd: output (a terminal's, the console's, or stdout).
pub const STDOUT: u8 = 16;
/// broodd: the command's stderr.
pub const STDERR: u8 = 17;
/// broodd: the command ended ([`crate::ExecEnd`] as JSON); nothing follows.
pub const EXIT: u8 = 18;
/// broodd: the attachment failed ([`crate::ErrorDetail`] as JSON); nothing follows.
pub const ERROR: u8 = 19;

/// The media type of a file's bytes (`GET`/`PUT .../files`).
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Response header of `GET .../files`: the file's permission bits, octal.
pub const MODE_HEADER: &str = "x-brood-mode";

/// A frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The length it declared.
    pub len: usize,
}

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an attach frame declares {} bytes, over the {MAX_FRAME_PAYLOAD}-byte limit",
            self.len
        )
    }
}

impl std::error::Error for FrameTooLarge {}

/// Encodes one frame; payloads over [`MAX_FRAME_PAYLOAD`] are the caller's
/// to split (see [`frames`]).
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_HEADER + payload.len());
    v.push(kind);
    v.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    v.extend_from_slice(payload);
    v
}

/// Encodes `payload` as as many `kind` frames as its size needs.
pub fn frames(kind: u8, payload: &[u8]) -> Vec<u8> {
    payload
        .chunks(MAX_FRAME_PAYLOAD)
        .flat_map(|c| frame(kind, c))
        .collect()
}

/// Takes the first whole frame off `buf`: `Ok(None)` while it is incomplete.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, FrameTooLarge> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let kind = header.first().copied().unwrap_or_default();
    let mut len = [0u8; 4];
    len.copy_from_slice(header.get(1..FRAME_HEADER).unwrap_or(&[0; 4]));
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameTooLarge { len });
    }
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Ok(None);
    };
    let payload = payload.to_vec();
    buf.drain(..FRAME_HEADER + len);
    Ok(Some((kind, payload)))
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    /// Rows, 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: u16,
    /// Columns, 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: u16,
}

/// An interactive command (`POST /v1/partitions/{name}/session`, upgraded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// A shell command, run with `/bin/sh -c` (no NUL bytes).
    #[serde(default)]
    pub command: Option<String>,
    /// An argv to run directly (instead of `command`): 1-4096 entries, no NUL bytes.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 4096)]
    pub argv: Option<Vec<String>>,
    /// Environment variables added: at most 4096; names without `=`, no NUL bytes.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Run it on a pseudo-terminal of this size; without, it has pipes.
    #[serde(default)]
    pub tty: Option<TermSize>,
    /// Kill the command after this long, in ms: 1 to 86400000 (a day).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    /// How long to wait for the guest agent to be ready, in ms (default 60000, at most 600000).
    #[serde(default)]
    #[schema(maximum = 600000)]
    pub ready_timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split() {
        let mut buf = frame(STDIN, b"abc");
        buf.extend(frame(EOF, b""));
        buf.extend_from_slice(&[STDOUT, 0, 0]);
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some((STDIN, b"abc".to_vec()))
        );
        assert_eq!(take_frame(&mut buf).unwrap(), Some((EOF, Vec::new())));
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        let big = vec![7u8; MAX_FRAME_PAYLOAD + 3];
        let mut many = frames(STDIN, &big);
        let (_, a) = take_frame(&mut many).unwrap().unwrap();
        let (_, b) = take_frame(&mut many).unwrap().unwrap();
        assert_eq!((a.len(), b.len()), (MAX_FRAME_PAYLOAD, 3));
        let mut huge = vec![STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut huge).is_err());
    }
}
