//! The hostname rule the agent applies and the host checks before it names
//! a guest: one rule, in the crate both sides link.

/// Longest hostname (the kernel's `__NEW_UTS_LEN`).
pub const MAX_LEN: usize = 64;

/// The rule, for messages.
pub const RULE: &str =
    "a hostname is 1-64 characters of A-Z, a-z, 0-9, '-' and '.', not starting with '-'";

/// Whether `name` is a hostname the agent accepts.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(is_valid("web-0"));
        assert!(is_valid("a.b"));
        assert!(!is_valid(""));
        assert!(!is_valid("-x"));
        assert!(!is_valid("db_1"));
        assert!(!is_valid(&"a".repeat(65)));
        assert!(is_valid(&"a".repeat(64)));
    }
}
