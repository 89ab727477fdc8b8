//! A wrapper for secrets (appsecret, AES key, tickets, tokens, client keys) that never prints them.

use std::fmt;

/// A string that must not reach a log line, an error or a metric.
///
/// `Debug` and `Display` print `"..."`; the value is reached only through [`Secret::expose`],
/// so every place that handles the raw value is easy to find with grep.
///
/// Held as a `Box<str>` (no spare capacity, 16 bytes rather than 24): the token service keeps
/// two of them for each of a million authorizers.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The raw value. Call it only where the value is sent to WeChat, stored, or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in constant time, so that a client key cannot be guessed byte by byte.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value.into_boxed_str())
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"...\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("s3cr3t-value");
        assert_eq!(format!("{s:?}"), "\"...\"");
        assert_eq!(format!("{s}"), "...");
        assert!(s.ct_eq(b"s3cr3t-value"));
        assert!(!s.ct_eq(b"s3cr3t-valuf"));
        assert!(!s.ct_eq(b"s3cr3t"));
    }
}
