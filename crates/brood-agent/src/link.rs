//! The agent's half of the control channel for writing: one writer shared by
//! every thread, each frame written whole under a lock so frames from
//! concurrent requests never interleave.
//!
//! Reading, decoding and dispatch live in [`crate::serve`]. On a virtio-serial
//! port a write blocks while the host side is not connected
//! (`wait_port_writable()` in Linux `drivers/char/virtio_console.c`), so a
//! sender may wait here for a long time; nothing else is held meanwhile.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use brood_proto::{GuestMsg, ProtoError, encode_frame};

/// Errors sending a message to the host.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The message could not be framed (for example it is over the size limit).
    #[error("encode reply")]
    Encode(#[source] ProtoError),
    /// The transport refused the bytes.
    #[error("write frame {id} to the host")]
    Write {
        /// The frame id.
        id: u32,
        /// What the transport reported.
        #[source]
        source: io::Error,
    },
}

/// The shared writer.
pub struct Link {
    writer: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Wraps the write half of the transport.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        Self {
            writer: Mutex::new(Box::new(writer)),
        }
    }

    /// Encodes `msg` as one frame with id `id` and writes it whole.
    pub fn send(&self, id: u32, msg: &GuestMsg) -> Result<(), LinkError> {
        let frame = encode_frame(id, msg).map_err(LinkError::Encode)?;
        // A thread that panicked while holding the lock (only possible in
        // tests: the release profile aborts) cannot have left a half frame
        // behind that matters more than carrying on.
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer
            .write_all(&frame)
            .and_then(|()| writer.flush())
            .map_err(|source| LinkError::Write { id, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_proto::{Decoded, FrameDecoder};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // Write a byte at a time so interleaving would show.
            let n = buf.len().min(1);
            self.0.lock().unwrap().extend_from_slice(&buf[..n]);
            std::thread::yield_now();
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn concurrent_sends_do_not_interleave() {
        let out = Shared::default();
        let link = Arc::new(Link::new(out.clone()));
        let threads: Vec<_> = (1..=4u32)
            .map(|id| {
                let link = Arc::clone(&link);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        link.send(id, &GuestMsg::Written { len: u64::from(id) })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut dec = FrameDecoder::new();
        dec.push(&out.0.lock().unwrap());
        let mut count = 0;
        while let Some(d) = dec.next_frame() {
            let Decoded::Frame(f) = d else {
                panic!("{d:?}")
            };
            let msg: GuestMsg = f.decode().unwrap();
            assert_eq!(
                msg,
                GuestMsg::Written {
                    len: u64::from(f.id)
                }
            );
            count += 1;
        }
        assert_eq!(count, 80);
    }
}
