//! Randomness from the kernel for names, MACs and uids.

use crate::EngineError;

/// `N` random bytes from the kernel. A read that fails is an error: brood
/// never hands out all-zero MACs, uids or names.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], EngineError> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| EngineError::host("read random bytes from /dev/urandom", e))?;
    Ok(b)
}
