//! Bounded, cancel-safe line reading from the QMP socket.
//!
//! QEMU ends every message with `\r\n`. [`LineReader`] hands out one line at a
//! time without its `\n`, never holding more than [`crate::MAX_LINE_LEN`]
//! bytes of a line: a longer line is reported once as
//! [`QmpError::LineTooLong`] and its remaining bytes are skipped as they
//! arrive, so the stream stays in step at the next newline. Parsing the line
//! is [`crate::message`]'s job.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::QmpError;

/// Reads newline-terminated lines with a length cap.
///
/// [`LineReader::next_line`] is cancel safe: all progress lives in the
/// struct, so it can be a branch of `tokio::select!`.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    limit: usize,
    /// Inside an over-long line whose rest is being skipped.
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps `inner`; lines longer than `limit` bytes are discarded.
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            line: Vec::new(),
            limit,
            discarding: false,
        }
    }

    /// Returns the next line without its `\n`, or `None` at end of stream.
    ///
    /// A final line without `\n` is returned as a line. An over-long line
    /// yields one `LineTooLong` error; reading may continue afterwards.
    pub(crate) async fn next_line(&mut self) -> Result<Option<Vec<u8>>, QmpError> {
        loop {
            // fill_buf is cancel safe; everything after it is synchronous.
            let avail = self.inner.fill_buf().await.map_err(QmpError::Io)?;
            if avail.is_empty() {
                let partial = std::mem::take(&mut self.line);
                self.discarding = false;
                return Ok((!partial.is_empty()).then_some(partial));
            }
            let newline = avail.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(avail.len());
            let fits = self.line.len().saturating_add(take) <= self.limit;
            if !self.discarding && fits {
                self.line
                    .extend_from_slice(avail.get(..take).unwrap_or_default());
            }
            let consumed = newline.map_or(take, |n| n.saturating_add(1));
            self.inner.consume(consumed);
            let first_overflow = !self.discarding && !fits;
            if first_overflow {
                self.line = Vec::new();
                // Skip the rest of this line on later calls, unless it ended here.
                self.discarding = newline.is_none();
                return Err(QmpError::LineTooLong { limit: self.limit });
            }
            if newline.is_some() {
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                return Ok(Some(std::mem::take(&mut self.line)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn collect(input: &[u8], limit: usize) -> Vec<Result<Vec<u8>, String>> {
        let (mut tx, rx) = tokio::io::duplex(7);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // Small writes exercise lines split across reads.
            for chunk in input.chunks(3) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = LineReader::new(rx, limit);
        let mut out = Vec::new();
        loop {
            match reader.next_line().await {
                Ok(Some(line)) => out.push(Ok(line)),
                Ok(None) => break,
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_final_partial_line() {
        let out = collect(b"{\"a\":1}\r\n\n{\"b\":2}\npartial", 100).await;
        assert_eq!(
            out,
            vec![
                Ok(b"{\"a\":1}\r".to_vec()),
                Ok(b"".to_vec()),
                Ok(b"{\"b\":2}".to_vec()),
                Ok(b"partial".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn skips_over_long_lines_and_resynchronises() {
        let out = collect(b"short\n0123456789abcdef\nok\n0123456789", 8).await;
        assert_eq!(
            out,
            vec![
                Ok(b"short".to_vec()),
                Err("QMP line longer than 8 bytes".into()),
                Ok(b"ok".to_vec()),
                Err("QMP line longer than 8 bytes".into()),
            ]
        );
    }

    #[tokio::test]
    async fn line_of_exactly_the_limit_is_accepted() {
        let out = collect(b"12345678\n123456789\nx\n", 8).await;
        assert_eq!(
            out,
            vec![
                Ok(b"12345678".to_vec()),
                Err("QMP line longer than 8 bytes".into()),
                Ok(b"x".to_vec()),
            ]
        );
    }
}
