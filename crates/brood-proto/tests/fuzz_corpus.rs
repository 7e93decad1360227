//! The `proto_frame` fuzz target's corpus as a regression test on stable: every
//! file under `fuzz/corpus/proto_frame/` goes through `fuzz/check/proto_frame.rs`, the
//! same check the fuzz target runs, so inputs that once found a bug (and
//! the checked-in seeds) keep being tried by `cargo test` without nightly.
//! Add a crashing input the fuzzer found to that directory with the fix.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

#[path = "../../../fuzz/check/proto_frame.rs"]
mod check;
#[path = "../../../fuzz/check/corpus.rs"]
mod corpus;

#[test]
fn corpus_of_proto_frame_passes_the_fuzz_check() {
    corpus::run("proto_frame", "frame decoder", check::check);
}
