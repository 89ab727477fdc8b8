//! WeChat appids: `wx` followed by 16 lowercase hex digits, checked once where they enter.

use std::fmt;
use std::str::FromStr;

/// An appid that has been checked to have WeChat's shape, so that it can be used as a key,
/// a path segment or a log field without further checks. Held as the number its 16 hex digits
/// spell (8 bytes, `Copy`): the token service keys every authorizer by it, several times over
/// (its slot, its place in the schedule), and a million authorizers make every byte count.
/// Ordered as its text is, since the digits are fixed in number and lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an appid is \"wx\" followed by 16 hex digits")]
pub struct InvalidAppId;

impl AppId {
    pub fn parse(s: &str) -> Result<Self, InvalidAppId> {
        if !Self::is_valid(s) {
            return Err(InvalidAppId);
        }
        u64::from_str_radix(&s[2..], 16).map(Self).map_err(|_| InvalidAppId)
    }

    /// True for `wx` + 16 lowercase hex digits, the shape of every official account, mini
    /// program and third-party platform appid.
    pub fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 18 && b.starts_with(b"wx") && b[2..].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// The appid's text, made on the stack.
    pub fn as_str(&self) -> AppIdText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"wx0000000000000000";
        for (i, byte) in text[2..].iter_mut().enumerate() {
            *byte = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        AppIdText(text)
    }
}

/// An appid's 18 characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AppIdText([u8; 18]);

impl std::ops::Deref for AppIdText {
    type Target = str;
    fn deref(&self) -> &str {
        // Made of ASCII only, above.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl AsRef<str> for AppIdText {
    fn as_ref(&self) -> &str {
        self
    }
}

impl fmt::Debug for AppIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl serde::Serialize for AppIdText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl PartialEq<str> for AppIdText {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for AppIdText {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl PartialEq<AppIdText> for &str {
    fn eq(&self, other: &AppIdText) -> bool {
        **self == **other
    }
}

impl PartialEq<AppIdText> for String {
    fn eq(&self, other: &AppIdText) -> bool {
        **self == **other
    }
}

impl fmt::Display for AppIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
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
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", &*self.as_str())
    }
}

/// As its text, so that records holding one read as WeChat writes them.
impl serde::Serialize for AppId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for AppId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AppId::parse(&text).map_err(serde::de::Error::custom)
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

    #[test]
    fn keeps_its_text_and_orders_as_the_text_does() {
        let texts = ["wx0000000000000000", "wx00000000000000ff", "wxb11529c136998cb6", "wxffffffffffffffff"];
        let ids: Vec<AppId> = texts.iter().map(|t| AppId::parse(t).unwrap()).collect();
        for (id, text) in ids.iter().zip(texts) {
            assert_eq!(&*id.as_str(), text);
            assert_eq!(id.to_string(), text);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(std::mem::size_of::<AppId>(), 8);
    }
}
