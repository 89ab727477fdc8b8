// Shared by the fuzz targets: the credentials the tests use.
#![allow(dead_code)]

use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

pub const COMPONENT_APPID: &str = "wx0123456789abcdef";
pub const MSG_TOKEN: &str = "pamtest";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const CLIENT_KEY: &str = "client-key-0123456789abcdef";

pub fn crypt() -> MsgCrypt {
    MsgCrypt::new(&Secret::new(MSG_TOKEN), &Secret::new(AES_KEY), COMPONENT_APPID).unwrap()
}
