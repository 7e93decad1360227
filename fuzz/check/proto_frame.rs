//! What the `proto_frame` fuzz target checks, shared with brood-proto's
//! corpus test (`crates/brood-proto/tests/fuzz_corpus.rs`) so the corpus
//! runs on stable through exactly this code.
//!
//! The first byte is a chunk size; the rest is fed to brood-proto's frame
//! decoder in chunks of that size and every frame is decoded as both
//! message directions: whatever a hostile guest or host sends, decoding
//! returns errors and never panics, and the decoder never holds more than
//! one maximal frame.

use brood_proto::{Decoded, FrameDecoder, GuestMsg, HEADER_LEN, HostMsg, MAX_BODY_LEN};

/// Feeds `data` to a decoder; panics only if brood-proto misbehaves.
pub fn check(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new();
    let chunk = usize::from(split).max(1);
    for piece in rest.chunks(chunk) {
        dec.push(piece);
        while let Some(item) = dec.next_frame() {
            if let Decoded::Frame(f) = item {
                let _ = f.decode::<GuestMsg>();
                let _ = f.decode::<HostMsg>();
            }
        }
        assert!(dec.buffered() <= HEADER_LEN + MAX_BODY_LEN as usize + chunk);
    }
}
