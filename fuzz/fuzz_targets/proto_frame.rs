//! Fuzzes brood-proto's frame decoder and both message directions; the check itself is
//! `fuzz/check/proto_frame.rs`, which the corpus test on stable runs too.
#![no_main]

#[path = "../check/proto_frame.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
