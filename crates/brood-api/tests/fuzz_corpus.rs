//! The `api_body` fuzz target's corpus as a regression test on stable: every
//! file under `fuzz/corpus/api_body/` goes through `fuzz/check/api_body.rs`, the
//! same check the fuzz target runs, so inputs that once found a bug (and
//! the checked-in seeds) keep being tried by `cargo test` without nightly.
//! Add a crashing input the fuzzer found to that directory with the fix.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

#[path = "../../../fuzz/check/api_body.rs"]
mod check;
#[path = "../../../fuzz/check/corpus.rs"]
mod corpus;

#[test]
fn corpus_of_api_body_passes_the_fuzz_check() {
    corpus::run("api_body", "request bodies", check::check);
}
