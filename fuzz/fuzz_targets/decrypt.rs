//! MsgCrypt's decryption past AES: the input is the plaintext of the cipher (whole blocks),
//! encrypted here with the component key, so that the PKCS#7 check and the frame parser (random,
//! length, message, receive id) see arbitrary bytes. Also the raw Encrypt value, for the base64
//! and length checks. Whatever decrypts must encrypt back to the same message.
#![no_main]

#[path = "common.rs"]
mod common;

use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wxgate::crypto::{decode_aes_key, MsgCrypt};

static CRYPT: LazyLock<MsgCrypt> = LazyLock::new(common::crypt);
static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| decode_aes_key(common::AES_KEY).unwrap());

fn check(encrypt: &str) {
    if let Ok(message) = CRYPT.decrypt(encrypt) {
        let again = CRYPT.encrypt_with_random(&message, [7; 16]);
        assert_eq!(CRYPT.decrypt(&again).as_deref(), Ok(message.as_str()));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let whole = data.len() / 16 * 16;
    if whole == 0 {
        return;
    }
    let mut buf = data[..whole].to_vec();
    let iv: [u8; 16] = KEY[..16].try_into().unwrap();
    cbc::Encryptor::<aes::Aes256>::new(KEY.as_slice().into(), &iv.into())
        .encrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut buf, whole)
        .unwrap();
    check(&STANDARD.encode(&buf));
});
