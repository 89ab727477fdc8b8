//! WeChat's message crypto written again from its documentation, without the gateway's code, so
//! that what the gateway seals is checked by a second implementation.

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
use base64::Engine;
use sha1::{Digest, Sha1};

/// The text of one element, CDATA or not: enough of wechatpy's parse_message for the tests.
pub fn field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let raw = &xml[start..end];
    Some(raw.strip_prefix("<![CDATA[").and_then(|r| r.strip_suffix("]]>")).unwrap_or(raw).to_owned())
}

/// wechatpy.utils.check_signature: sha1 over the sorted token, timestamp and nonce.
pub fn check_signature(token: &str, signature: &str, timestamp: &str, nonce: &str) -> bool {
    let mut parts = [token.to_owned(), timestamp.to_owned(), nonce.to_owned()];
    parts.sort();
    hex::encode(Sha1::digest(parts.concat().as_bytes())) == signature
}

/// Decrypts a passive reply as the account's own server would: checks MsgSignature and Nonce,
/// AES-256-CBC with IV = key[..16], PKCS#7 to 32 bytes, then random(16) ‖ len(4, big-endian) ‖
/// msg ‖ receive id, which must be `receive_id`.
pub fn open_reply(body: &str, nonce: &str, token: &str, aes_key: &str, receive_id: &str) -> String {
    let encrypt = field(body, "Encrypt").expect("Encrypt");
    let signature = field(body, "MsgSignature").expect("MsgSignature");
    let timestamp = field(body, "TimeStamp").expect("TimeStamp");
    assert_eq!(field(body, "Nonce").as_deref(), Some(nonce), "the reply echoes the push's nonce");
    let mut parts = [token.to_owned(), timestamp, nonce.to_owned(), encrypt.clone()];
    parts.sort();
    assert_eq!(hex::encode(Sha1::digest(parts.concat().as_bytes())), signature, "MsgSignature");
    // Java's and Python's decoders ignore the bits past the 32nd byte in the 43rd character.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let key = lenient.decode(format!("{aes_key}=")).unwrap();
    let mut buf = base64::engine::general_purpose::STANDARD.decode(encrypt).unwrap();
    let plain = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
        .unwrap()
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .unwrap()
        .to_vec();
    let pad = *plain.last().unwrap() as usize;
    assert!((1..=32).contains(&pad), "PKCS#7 to 32 bytes");
    let plain = &plain[..plain.len() - pad];
    let len = u32::from_be_bytes(plain[16..20].try_into().unwrap()) as usize;
    let msg = std::str::from_utf8(&plain[20..20 + len]).unwrap().to_owned();
    assert_eq!(&plain[20 + len..], receive_id.as_bytes(), "receive id");
    msg
}
