//! The `qmp_reply` fuzz target's corpus as a regression test on stable: every
//! file under `fuzz/corpus/qmp_reply/` goes through `fuzz/check/qmp_reply.rs`, the
//! same check the fuzz target runs, so inputs that once found a bug (and
//! the checked-in seeds) keep being tried by `cargo test` without nightly.
//! Add a crashing input the fuzzer found to that directory with the fix.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

#[path = "../../../fuzz/check/qmp_reply.rs"]
mod check;
#[path = "../../../fuzz/check/corpus.rs"]
mod corpus;

#[test]
fn corpus_of_qmp_reply_passes_the_fuzz_check() {
    corpus::run("qmp_reply", "QMP parser", check::check);
}
