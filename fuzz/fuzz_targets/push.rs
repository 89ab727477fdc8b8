//! A push to the authorization-event URL, read as the receiver reads it: the envelope's XML, its
//! Encrypt field verified (the target signs it, so decryption is reached) and decrypted, and the
//! message's XML and fields. The first byte picks the input: 0 an envelope as it arrives; 1 the
//! inner message, sealed here first, so that its parsing is fuzzed past the crypto.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wxgate::crypto::MsgCrypt;
use wxgate::xml;

static CRYPT: LazyLock<MsgCrypt> = LazyLock::new(common::crypt);
const TS: &str = "1700000000";
const NONCE: &str = "nonce123";

fn read_message(message: &str) {
    let Ok(fields) = xml::parse(message) else { return };
    let _ = fields.get("AppId").map(|a| a == common::COMPONENT_APPID);
    let _ = fields.get("InfoType").filter(|t| !t.is_empty());
    let _ = fields.get("CreateTime").and_then(|t| t.parse::<i64>().ok());
    if let Some(a) = fields.get("AuthorizerAppid") {
        let _ = wxgate::AppId::parse(a);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match mode % 2 {
        0 => {
            let Ok(envelope) = xml::parse(text) else { return };
            let Some(encrypt) = envelope.get("Encrypt") else { return };
            let signature = CRYPT.sign(TS, NONCE, encrypt);
            // A signature off by one digit is refused before anything is decrypted.
            let mut forged = signature.clone().into_bytes();
            forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(forged).unwrap();
            assert!(CRYPT.open(TS, NONCE, encrypt, &forged).is_err());
            if let Ok(message) = CRYPT.open(TS, NONCE, encrypt, &signature) {
                read_message(&message);
            }
        }
        _ => {
            let sealed = CRYPT.seal(text, TS, NONCE);
            let opened = CRYPT.open(TS, NONCE, &sealed.encrypt, &sealed.msg_signature);
            assert_eq!(opened.as_deref(), Ok(text), "seal then open gives the message back");
            read_message(text);
        }
    }
});
