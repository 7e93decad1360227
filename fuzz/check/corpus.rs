//! The runner the corpus regression tests share (`crates/*/tests/fuzz_corpus.rs`
//! include it with `#[path]`): every file of a fuzz target's corpus goes
//! through the target's check, and a panic names the input.

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`.
pub fn run(target: &str, what: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails the {what} check", f.display());
    }
    eprintln!("{} inputs of {} passed", files.len(), dir.display());
}
