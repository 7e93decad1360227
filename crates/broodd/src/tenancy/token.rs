//! API tokens: 64 hex digits, a 16-digit public id followed by a 48-digit
//! secret (192 bits). The ledger keeps the id and the sha256 of the
//! secret; a presented token is hashed and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::host::{HostResult, random};

/// Hex digits of a token's id.
pub const ID_HEX: usize = 16;
/// Hex digits of a whole token.
pub const TOKEN_HEX: usize = 64;

/// A new token: (id, the whole token, the hash to store).
pub fn mint() -> HostResult<(String, String, String)> {
    let id = random::hex(&random::bytes::<8>()?);
    let secret = random::hex(&random::bytes::<24>()?);
    let hash = hash(&secret);
    Ok((id.clone(), format!("{id}{secret}"), hash))
}

/// sha256 of a secret, lowercase hex.
pub fn hash(secret: &str) -> String {
    random::hex(&Sha256::digest(secret.as_bytes()))
}

/// Splits a presented token into (id, secret), if it has the shape of one.
pub fn split(token: &[u8]) -> Option<(&str, &str)> {
    if token.len() != TOKEN_HEX || !token.iter().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let s = std::str::from_utf8(token).ok()?;
    Some(s.split_at(ID_HEX))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn matches(secret: &str, stored: &str) -> bool {
    let got = hash(&secret.to_ascii_lowercase());
    got.as_bytes().ct_eq(stored.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_matches_only_its_hash() {
        let (id, token, stored) = mint().expect("mint");
        let (i, secret) = split(token.as_bytes()).expect("shape");
        assert_eq!(i, id);
        assert!(matches(secret, &stored));
        let (_, other, _) = mint().expect("mint");
        let (_, wrong) = split(other.as_bytes()).expect("shape");
        assert!(!matches(wrong, &stored));
        assert!(split(b"short").is_none());
        assert!(split(&[b'z'; 64]).is_none());
        assert_eq!(stored.len(), 64);
    }
}
