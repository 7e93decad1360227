//! Randomness from the kernel. A read that fails is an error: brood never
//! hands out all-zero MACs, machine-ids or entropy.

use std::io::Read;

use super::error::{HostError, HostResult};

/// `N` random bytes from `/dev/urandom`.
pub fn bytes<const N: usize>() -> HostResult<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| HostError::io("read random bytes from /dev/urandom", e))?;
    Ok(b)
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_not_all_zero() {
        let a = bytes::<32>().expect("urandom");
        let b = bytes::<32>().expect("urandom");
        assert_ne!(a, b);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
