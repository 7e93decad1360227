//! The control channel between broodd (or `brood run`) and brood-agent in the guest.
//!
//! This crate owns the wire format only: the frame layout ([`frame`]) and the
//! message enums ([`msg`]). Transports (a virtio-serial port in the guest, the
//! QEMU chardev socket on the host) and the request/response bookkeeping live
//! in brood-agent and brood-engine. Everything here treats its input as
//! hostile: decoding is bounded and never panics.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod frame;
pub mod hostname;
pub mod msg;
pub mod service;
pub mod session;

pub use frame::{
    Decoded, FrameDecoder, FrameFault, HEADER_LEN, MAGIC, MAX_BODY_LEN, MAX_DATA_CHUNK,
    PROTOCOL_VERSION, RawFrame, encode_frame,
};
pub use msg::*;
/// Byte buffers in messages, re-exported so users need no serde_bytes of their own.
pub use serde_bytes::ByteBuf;
pub use session::{FileKind, FileStat, SessionRequest, WinSize};

/// Name of the virtio-serial port the agent listens on
/// (`/sys/class/virtio-ports/*/name` in the guest).
pub const AGENT_PORT_NAME: &str = "org.brood.agent.0";

/// Errors of encoding and decoding messages.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A frame body did not decode as the expected message.
    #[error("frame {id}: body is not a valid message")]
    Decode {
        /// The frame's id.
        id: u32,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// A message could not be encoded.
    #[error("frame {id}: message could not be encoded")]
    Encode {
        /// The frame's id.
        id: u32,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// An encoded message is over [`MAX_BODY_LEN`].
    #[error("frame {id}: {len}-byte body is over the {MAX_BODY_LEN}-byte limit")]
    TooLarge {
        /// The frame's id.
        id: u32,
        /// The encoded length.
        len: usize,
    },
}
