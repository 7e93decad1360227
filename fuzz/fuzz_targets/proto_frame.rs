//! Feeds arbitrary bytes, in arbitrary chunks, to brood-proto's frame
//! decoder and decodes every frame as both message directions: whatever a
//! hostile guest or host sends, decoding returns errors and never panics,
//! and the decoder never holds more than one maximal frame.
#![no_main]

use brood_proto::{Decoded, FrameDecoder, GuestMsg, HEADER_LEN, HostMsg, MAX_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
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
});
