//! The rules of single values that more than one section checks: appids, secrets, WeChat's
//! message token and EncodingAESKey. Each error says what the value must be, never what it was.

use crate::crypto::decode_aes_key;
use crate::{AppId, Secret};

pub(super) fn appid(value: &str) -> Result<AppId, String> {
    AppId::parse(value).map_err(|_| "must be \"wx\" followed by 16 lowercase hex digits".to_owned())
}

/// A secret of at least `min` characters. Surrounding whitespace is refused: it is almost always
/// a paste accident, and would make every comparison with the real value fail.
pub(super) fn secret_of_length(min: usize) -> impl Fn(&str) -> Result<Secret, String> {
    move |value| {
        if value.chars().count() < min {
            return Err(match min {
                1 => "must not be empty".to_owned(),
                _ => format!("must be at least {min} characters"),
            });
        }
        if value.trim() != value {
            return Err("must not start or end with whitespace".to_owned());
        }
        Ok(Secret::new(value))
    }
}

/// WeChat's rule for the message-verification token: 3 to 32 letters or digits.
pub(super) fn message_token(value: &str) -> Result<Secret, String> {
    let ok = (3..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
    match ok {
        true => Ok(Secret::new(value)),
        false => Err("must be 3 to 32 letters or digits (WeChat's rule for the token)".to_owned()),
    }
}

pub(super) fn aes_key(value: &str) -> Result<Secret, String> {
    match decode_aes_key(value) {
        Ok(_) => Ok(Secret::new(value)),
        Err(_) => Err("must be 43 characters of A-Z, a-z, 0-9, + and / (WeChat's EncodingAESKey)".to_owned()),
    }
}
