//! Fuzzes QMP message parsing and the typed replies; the check itself is
//! `fuzz/check/qmp_reply.rs`, which the corpus test on stable runs too.
#![no_main]

#[path = "../check/qmp_reply.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
