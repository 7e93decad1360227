//! Framing: a fixed 12-byte header followed by a postcard-encoded body.
//!
//! ```text
//!  0      3        4          8            12
//!  +------+--------+----------+------------+------------------+
//!  | BRD  | version| id (LE)  | length (LE)| body (length B)  |
//!  +------+--------+----------+------------+------------------+
//! ```
//!
//! [`FrameDecoder`] is sans-I/O: callers push whatever bytes their transport
//! produced and pop complete frames. It never buffers more than one header
//! plus [`MAX_BODY_LEN`] bytes, whatever the peer sends: an oversized frame is
//! skipped as its bytes arrive and reported once with its id, so the receiver
//! can answer that request with an error and carry on; a header with the
//! wrong magic makes the decoder scan forward to the next magic.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProtoError;

/// The three bytes every frame starts with.
pub const MAGIC: [u8; 3] = *b"BRD";
/// Version of the framing and of the message enums carried in it.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 12;
/// Largest body a peer may send (4 MiB). Larger frames are skipped and reported.
pub const MAX_BODY_LEN: u32 = 4 << 20;
/// The largest data payload a single message should carry, leaving room for
/// the other fields of the message inside [`MAX_BODY_LEN`].
pub const MAX_DATA_CHUNK: usize = (MAX_BODY_LEN as usize) - 64 * 1024;

/// A complete frame whose body has not been decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Request id: chosen by the host for requests and echoed in replies;
    /// 0 for unsolicited guest messages.
    pub id: u32,
    /// The postcard-encoded message.
    pub body: Vec<u8>,
}

impl RawFrame {
    /// Decodes the body as message type `M`.
    pub fn decode<M: DeserializeOwned>(&self) -> Result<M, ProtoError> {
        postcard::from_bytes(&self.body).map_err(|source| ProtoError::Decode {
            id: self.id,
            source,
        })
    }
}

/// Something wrong with the byte stream that the decoder recovered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameFault {
    /// Bytes that did not start a frame were discarded while looking for the magic.
    Garbage {
        /// How many bytes were discarded.
        skipped: usize,
    },
    /// A frame declared a body longer than the limit; its bytes are being discarded.
    Oversized {
        /// The id of the oversized frame, to answer it with an error.
        id: u32,
        /// The declared body length.
        len: u32,
    },
    /// A frame used a protocol version this side does not speak; its body was discarded.
    Version {
        /// The id of the frame.
        id: u32,
        /// The version it carried.
        version: u8,
    },
}

impl std::fmt::Display for FrameFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameFault::Garbage { skipped } => {
                write!(f, "discarded {skipped} bytes that were not a frame")
            }
            FrameFault::Oversized { id, len } => write!(
                f,
                "frame {id} declares a {len}-byte body, over the {MAX_BODY_LEN}-byte limit"
            ),
            FrameFault::Version { id, version } => write!(
                f,
                "frame {id} uses protocol version {version}, this side speaks {PROTOCOL_VERSION}"
            ),
        }
    }
}

/// One result of [`FrameDecoder::next_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(RawFrame),
    /// The stream had a fault; decoding goes on after it.
    Fault(FrameFault),
}

/// Incremental, bounded frame decoder.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes still to discard from a frame that was rejected after its header.
    discard: usize,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes the decoder holds, waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes read from the transport.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.discard > 0 {
            let n = self.discard.min(data.len());
            self.discard -= n;
            data = data.get(n..).unwrap_or_default();
        }
        self.buf.extend_from_slice(data);
    }

    /// Pops the next complete frame or fault, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Decoded> {
        if self.discard > 0 {
            let n = self.discard.min(self.buf.len());
            self.buf.drain(..n);
            self.discard -= n;
            if self.discard > 0 {
                return None;
            }
        }
        // Resynchronise on the magic.
        let start = find_magic(&self.buf);
        if start > 0 {
            self.buf.drain(..start);
            return Some(Decoded::Fault(FrameFault::Garbage { skipped: start }));
        }
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let version = header[3];
        let id = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if len > MAX_BODY_LEN || version != PROTOCOL_VERSION {
            self.buf.drain(..HEADER_LEN);
            self.discard = len as usize;
            let n = self.discard.min(self.buf.len());
            self.buf.drain(..n);
            self.discard -= n;
            let fault = if len > MAX_BODY_LEN {
                FrameFault::Oversized { id, len }
            } else {
                FrameFault::Version { id, version }
            };
            return Some(Decoded::Fault(fault));
        }
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return None;
        }
        let body = self.buf.get(HEADER_LEN..total)?.to_vec();
        self.buf.drain(..total);
        Some(Decoded::Frame(RawFrame { id, body }))
    }
}

/// Index of the first byte that could start a frame: a full magic, or a
/// prefix of it at the very end of the buffer.
fn find_magic(buf: &[u8]) -> usize {
    for start in 0..buf.len() {
        let rest = buf.get(start..).unwrap_or_default();
        let n = rest.len().min(MAGIC.len());
        if rest.get(..n) == MAGIC.get(..n) {
            return start;
        }
    }
    buf.len()
}

/// Encodes `msg` as one frame with the given id.
pub fn encode_frame<M: Serialize>(id: u32, msg: &M) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut out =
        postcard::to_extend(msg, out).map_err(|source| ProtoError::Encode { id, source })?;
    let body_len = out.len() - HEADER_LEN;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|len| *len <= MAX_BODY_LEN)
        .ok_or(ProtoError::TooLarge { id, len: body_len })?;
    if let Some(slot) = out.get_mut(8..HEADER_LEN) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u32, body: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.push(PROTOCOL_VERSION);
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn drain(dec: &mut FrameDecoder) -> Vec<Decoded> {
        std::iter::from_fn(|| dec.next_frame()).collect()
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let bytes = encode_frame(7, &("hello", 42u32)).unwrap();
        let mut dec = FrameDecoder::new();
        let mut got = vec![];
        for b in &bytes {
            dec.push(std::slice::from_ref(b));
            got.extend(drain(&mut dec));
        }
        assert_eq!(got.len(), 1);
        let Decoded::Frame(f) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(f.id, 7);
        assert_eq!(
            f.decode::<(String, u32)>().unwrap(),
            ("hello".to_string(), 42)
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn garbage_before_frame_is_skipped_and_reported() {
        let mut bytes = b"xxBRyy".to_vec();
        bytes.extend(frame(3, b"\x01"));
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        let got = drain(&mut dec);
        assert_eq!(
            got,
            vec![
                Decoded::Fault(FrameFault::Garbage { skipped: 6 }),
                Decoded::Frame(RawFrame {
                    id: 3,
                    body: vec![1]
                }),
            ]
        );
    }

    #[test]
    fn oversized_frame_is_discarded_without_buffering() {
        let mut dec = FrameDecoder::new();
        let mut header = MAGIC.to_vec();
        header.push(PROTOCOL_VERSION);
        header.extend_from_slice(&9u32.to_le_bytes());
        let len = MAX_BODY_LEN + 10;
        header.extend_from_slice(&len.to_le_bytes());
        dec.push(&header);
        assert_eq!(
            drain(&mut dec),
            vec![Decoded::Fault(FrameFault::Oversized { id: 9, len })]
        );
        let chunk = vec![0u8; 1 << 20];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            dec.push(&chunk[..n]);
            left -= n;
            assert!(drain(&mut dec).is_empty());
            assert_eq!(dec.buffered(), 0);
        }
        dec.push(&frame(10, b"ok"));
        assert_eq!(
            drain(&mut dec),
            vec![Decoded::Frame(RawFrame {
                id: 10,
                body: b"ok".to_vec()
            })]
        );
    }

    #[test]
    fn wrong_version_is_reported_and_skipped() {
        let mut bytes = frame(5, b"abc");
        bytes[3] = 99;
        bytes.extend(frame(6, b"d"));
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        assert_eq!(
            drain(&mut dec),
            vec![
                Decoded::Fault(FrameFault::Version { id: 5, version: 99 }),
                Decoded::Frame(RawFrame {
                    id: 6,
                    body: b"d".to_vec()
                }),
            ]
        );
    }

    #[test]
    fn encode_refuses_oversized_body() {
        let big = vec![0u8; MAX_BODY_LEN as usize + 1];
        let err = encode_frame(1, &serde_bytes::Bytes::new(&big)).unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge { id: 1, .. }), "{err}");
    }

    #[test]
    fn undecodable_body_is_an_error_not_a_panic() {
        let f = RawFrame {
            id: 4,
            body: vec![0xff; 7],
        };
        assert!(f.decode::<crate::HostMsg>().is_err());
        assert!(f.decode::<crate::GuestMsg>().is_err());
    }
}
