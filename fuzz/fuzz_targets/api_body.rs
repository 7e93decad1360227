//! Fuzzes the API's JSON request bodies (parse, then round trip); the check itself is
//! `fuzz/check/api_body.rs`, which the corpus test on stable runs too.
#![no_main]

#[path = "../check/api_body.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
