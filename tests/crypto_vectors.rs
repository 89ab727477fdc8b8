//! Known-answer vectors from WeChat's official samples and wechatpy (provenance in each vector's `source`).

use serde_json::Value;
use wxgate::crypto::{CryptoError, MsgCrypt};
use wxgate::Secret;

struct Vector {
    name: String,
    token: String,
    key: String,
    appid: String,
    timestamp: String,
    nonce: String,
    encrypt: String,
    msg_signature: String,
    message: String,
    random: [u8; 16],
}

fn vectors() -> Vec<Vector> {
    let all: Value = serde_json::from_str(include_str!("fixtures/crypto-vectors.json")).unwrap();
    let all = all.as_object().unwrap();
    assert!(all.len() >= 4, "the fixture holds four vectors");
    all.iter().map(|(name, v)| parse(name, v)).collect()
}

fn parse(name: &str, v: &Value) -> Vector {
    let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{name}: missing {k}")).to_owned();
    let mut random = [0u8; 16];
    hex::decode_to_slice(field("random_hex"), &mut random).unwrap();
    Vector {
        name: name.to_owned(),
        token: field("token"),
        key: field("encoding_aes_key"),
        appid: field("appid"),
        timestamp: field("timestamp"),
        nonce: field("nonce"),
        encrypt: field("encrypt"),
        msg_signature: field("msg_signature"),
        message: field("message"),
        random,
    }
}

fn crypt(v: &Vector, appid: &str) -> MsgCrypt {
    MsgCrypt::new(&Secret::new(v.token.as_str()), &Secret::new(v.key.as_str()), appid).unwrap()
}

#[test]
fn signs_like_wechat() {
    for v in vectors() {
        let c = crypt(&v, &v.appid);
        assert_eq!(c.sign(&v.timestamp, &v.nonce, &v.encrypt), v.msg_signature, "{}", v.name);
        assert_eq!(c.verify(&v.timestamp, &v.nonce, &v.encrypt, &v.msg_signature), Ok(()), "{}", v.name);
        let upper = v.msg_signature.to_uppercase();
        assert_eq!(c.verify(&v.timestamp, &v.nonce, &v.encrypt, &upper), Ok(()), "{}", v.name);
    }
}

#[test]
fn decrypts_like_wechat() {
    for v in vectors() {
        let c = crypt(&v, &v.appid);
        assert_eq!(c.decrypt(&v.encrypt).as_deref(), Ok(v.message.as_str()), "{}", v.name);
        let opened = c.open(&v.timestamp, &v.nonce, &v.encrypt, &v.msg_signature);
        assert_eq!(opened.as_deref(), Ok(v.message.as_str()), "{}", v.name);
    }
}

#[test]
fn encrypts_byte_for_byte() {
    for v in vectors() {
        let c = crypt(&v, &v.appid);
        assert_eq!(c.encrypt_with_random(&v.message, v.random), v.encrypt, "{}", v.name);
    }
}

#[test]
fn flipped_signature_char_is_rejected() {
    for v in vectors() {
        let c = crypt(&v, &v.appid);
        for i in [0, 17, 39] {
            let mut sig = v.msg_signature.clone().into_bytes();
            sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
            let sig = String::from_utf8(sig).unwrap();
            let err = c.open(&v.timestamp, &v.nonce, &v.encrypt, &sig);
            assert_eq!(err, Err(CryptoError::BadSignature), "{} at {i}", v.name);
        }
        let err = c.verify(&v.timestamp, "other-nonce", &v.encrypt, &v.msg_signature);
        assert_eq!(err, Err(CryptoError::BadSignature), "{}", v.name);
    }
}

#[test]
fn another_receive_id_is_rejected() {
    for v in vectors() {
        let c = crypt(&v, "wx0000000000000000");
        assert_eq!(c.decrypt(&v.encrypt), Err(CryptoError::ReceiveId), "{}", v.name);
        // The signature does not cover the receive id, so open gets past verify to the same error.
        let err = c.open(&v.timestamp, &v.nonce, &v.encrypt, &v.msg_signature);
        assert_eq!(err, Err(CryptoError::ReceiveId), "{}", v.name);
    }
}

#[test]
fn tampered_ciphertext_is_rejected() {
    use base64::{engine::general_purpose::STANDARD, Engine};
    for v in vectors() {
        let c = crypt(&v, &v.appid);
        let raw = STANDARD.decode(&v.encrypt).unwrap();

        // In CBC a bit flipped in one ciphertext block flips the same bit of the next plaintext
        // block. Here: the last pad byte, so the pad bytes no longer agree.
        let mut last = raw.clone();
        let n = last.len();
        last[n - 17] ^= 0x01;
        assert_eq!(c.decrypt(&STANDARD.encode(&last)), Err(CryptoError::Padding), "{}", v.name);

        // Here: the top byte of the length field, which then points past the buffer.
        let mut len = raw.clone();
        len[0] ^= 0x80;
        assert_eq!(c.decrypt(&STANDARD.encode(&len)), Err(CryptoError::Frame), "{}", v.name);

        let truncated = STANDARD.encode(&raw[..n - 1]);
        assert_eq!(c.decrypt(&truncated), Err(CryptoError::CipherLength), "{}", v.name);
        assert_eq!(c.decrypt(&v.encrypt[1..]), Err(CryptoError::Base64), "{}", v.name);

        // Any tampering with a signed ciphertext is caught by open before decryption.
        let tampered = STANDARD.encode(&last);
        let err = c.open(&v.timestamp, &v.nonce, &tampered, &v.msg_signature);
        assert_eq!(err, Err(CryptoError::BadSignature), "{}", v.name);
    }
}
