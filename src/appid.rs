//! WeChat appids: `wx` followed by 16 lowercase hex digits, checked once where they enter.

use std::fmt;
use std::str::FromStr;

/// An appid that has been checked to have WeChat's shape, so that it can be used as a key,
/// a path segment or a log field without further checks. Held inline (18 bytes, `Copy`): the
/// token service keys every authorizer by it, several times over, and the proxy copies it per call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId([u8; 18]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an appid is \"wx\" followed by 16 hex digits")]
pub struct InvalidAppId;

impl AppId {
    pub fn parse(s: &str) -> Result<Self, InvalidAppId> {
        if !Self::is_valid(s) {
            return Err(InvalidAppId);
        }
        let mut bytes = [0u8; 18];
        bytes.copy_from_slice(s.as_bytes());
        Ok(Self(bytes))
    }

    /// True for `wx` + 16 lowercase hex digits, the shape of every official account, mini
    /// program and third-party platform appid.
    pub fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 18 && b.starts_with(b"wx") && b[2..].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    }

    pub fn as_str(&self) -> &str {
        // Checked to be ASCII when parsed.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for AppId {
    type Err = InvalidAppId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.as_str())
    }
}

impl AsRef<str> for AppId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_wechat_shape() {
        assert!(AppId::parse("wxb11529c136998cb6").is_ok());
        for bad in [
            "",
            "wx",
            "wxB11529C136998CB6",
            "wxb11529c136998cb",
            "wxb11529c136998cb67",
            "abb11529c136998cb6",
            "wxb11529c13699/cb6",
            "wx../../../../../..x",
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad}");
        }
    }
}
