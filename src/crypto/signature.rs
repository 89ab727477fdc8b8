//! msg_signature: SHA-1 over the sorted token, timestamp, nonce and Encrypt, as lowercase hex.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

pub(super) type Sha1Digest = [u8; 20];

/// WeChat sorts the four parts byte-wise and hashes them with no separator.
pub(super) fn digest(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> Sha1Digest {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Compares in constant time, so that a forged signature cannot be found byte by byte; accepts
/// either hex case, since some senders upper-case it.
pub(super) fn matches(expected: &Sha1Digest, given: &str) -> bool {
    let mut decoded = [0u8; 20];
    if hex::decode_to_slice(given, &mut decoded).is_err() {
        return false;
    }
    expected.ct_eq(&decoded).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_before_hashing() {
        let a = digest("token", "1409304348", "xxxxxx", "enc");
        let b = digest("enc", "xxxxxx", "token", "1409304348");
        assert_eq!(a, b);
    }

    #[test]
    fn matches_either_case_and_nothing_else() {
        let d = digest("t", "1", "n", "e");
        let lower = hex::encode(d);
        assert!(matches(&d, &lower));
        assert!(matches(&d, &lower.to_uppercase()));
        assert!(!matches(&d, &lower[..38]));
        assert!(!matches(&d, &format!("{lower}00")));
        assert!(!matches(&d, &format!("{}zz", &lower[..38])));
        assert!(!matches(&d, ""));
    }
}
