//! The `api_body` fuzz target's corpus as a regression test on stable: every
//! file under `fuzz/corpus/api_body/` goes through `fuzz/check/api_body.rs`, the
//! same check the fuzz target runs, so inputs that once found a bug (and
//! the checked-in seeds) keep being tried by `cargo test` without nightly.
//! Add a crashing input the fuzzer found to that directory with the fix.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

#[path = "../../../fuzz/check/api_body.rs"]
mod check;

use std::path::Path;

#[test]
fn corpus_of_api_body_passes_the_fuzz_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/api_body");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        // A panic names the input that caused it.
        let outcome = std::panic::catch_unwind(|| check::check(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the request bodies check",
            f.display()
        );
    }
    eprintln!("{} inputs of {} passed", files.len(), dir.display());
}
