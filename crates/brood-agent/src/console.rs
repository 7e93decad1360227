//! Messages for people on the guest console (stderr, which is /dev/console
//! when the agent runs as init), the error-chain formatting they use, and a
//! rate limiter for messages a peer could trigger in a loop.
//!
//! The agent has no logging framework: it is a small static binary and its
//! console is a slow serial line, so it writes few, short lines.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

/// Writes one line to stderr, prefixed with the agent's name and pid.
///
/// Errors writing the console are ignored: there is nowhere else to report them.
pub fn write_line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "brood-agent[{}]: {args}", std::process::id());
}

/// `log!("format", args..)`: one line on the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::write_line(format_args!($($arg)*))
    };
}

/// Formats an error followed by its sources, separated by `": "`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}

/// Cuts a string from a peer to at most `max` bytes (on a character boundary)
/// before it is shown on the console.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Lets at most one message through per interval and counts what it held back.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter that lets one message through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a message may be shown now; `Some(n)` carries how many were
    /// held back since the last one shown.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let open = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if open {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_sources() {
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&err), "outer: inner");
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut rl = RateLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(rl.allow(t0), Some(0));
        assert_eq!(rl.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(rl.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(rl.allow(t0 + Duration::from_secs(2)), Some(2));
    }
}
