//! WeChat message crypto (WXBizMsgCrypt): signature, AES-256-CBC, PKCS#7 to 32, framing. Pure, no I/O.
//!
//! See PROTOCOL.md §5. Callers should use [`MsgCrypt::open`], which checks the signature before
//! decrypting: the token is shared only with WeChat, so a forged ciphertext never reaches the
//! padding check, and the distinct decrypt errors cannot serve as a padding oracle.

mod frame;
mod signature;

use std::fmt;

use aes::{Aes256Dec, Aes256Enc, Block};
use base64::engine::general_purpose::STANDARD;
use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
use base64::Engine;
use cbc::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};

use crate::secret::Secret;

/// WeChat's keys are 43 characters whose last one carries bits past the 32nd byte; Java's and
/// Python's decoders ignore them, so ours must too.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const AES_BLOCK: usize = 16;

/// Why a message could not be signed, checked or decrypted. Messages name no secret and no plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("encoding_aes_key must be 43 base64 characters that decode to 32 bytes")]
    IllegalAesKey,
    #[error("msg_signature does not match the token, timestamp, nonce and Encrypt")]
    BadSignature,
    #[error("Encrypt is not valid base64")]
    Base64,
    #[error("ciphertext is not a non-empty whole number of 16-byte AES blocks")]
    CipherLength,
    #[error("decrypted padding is invalid (pad byte outside 1..=32, or pad bytes differ)")]
    Padding,
    #[error("decrypted frame is shorter than its header or its length field overruns it")]
    Frame,
    #[error("decrypted message is addressed to another receive id")]
    ReceiveId,
    #[error("decrypted message is not valid UTF-8")]
    Utf8,
}

impl CryptoError {
    /// A short snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::IllegalAesKey => "aes_key",
            Self::BadSignature => "signature",
            Self::Base64 => "base64",
            Self::CipherLength => "cipher_length",
            Self::Padding => "padding",
            Self::Frame => "frame",
            Self::ReceiveId => "receive_id",
            Self::Utf8 => "utf8",
        }
    }

    /// The error code of WeChat's official samples (`ierror.py`), for logs that peers can match.
    pub fn code(&self) -> i32 {
        match self {
            Self::BadSignature => -40001,
            Self::IllegalAesKey => -40004,
            Self::ReceiveId => -40005,
            Self::CipherLength | Self::Padding => -40007,
            Self::Frame | Self::Utf8 => -40008,
            Self::Base64 => -40010,
        }
    }
}

/// Decodes an EncodingAESKey (43 characters) into the 32-byte AES key.
/// The `signature` of a plaintext push or of WeChat's URL check: SHA-1 over the sorted token,
/// timestamp and nonce (msg_signature without the ciphertext, which an empty part leaves out).
pub fn plain_signature(token: &Secret, timestamp: &str, nonce: &str) -> String {
    hex::encode(signature::digest(token.expose(), timestamp, nonce, ""))
}

/// Checks a [`plain_signature`] in constant time.
pub fn verify_plain(token: &Secret, timestamp: &str, nonce: &str, given: &str) -> Result<(), CryptoError> {
    match signature::matches(&signature::digest(token.expose(), timestamp, nonce, ""), given) {
        true => Ok(()),
        false => Err(CryptoError::BadSignature),
    }
}

pub fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    if encoding_aes_key.len() != 43
        || !encoding_aes_key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    {
        return Err(CryptoError::IllegalAesKey);
    }
    let bytes = LENIENT.decode(format!("{encoding_aes_key}=")).map_err(|_| CryptoError::IllegalAesKey)?;
    bytes.try_into().map_err(|_| CryptoError::IllegalAesKey)
}

/// One platform's message crypto: its token, AES key and receive id (the component appid).
///
/// The key schedules are expanded once here rather than per message.
#[derive(Clone)]
pub struct MsgCrypt {
    token: Secret,
    enc: Aes256Enc,
    dec: Aes256Dec,
    /// WeChat uses the first half of the key as the IV, the same for every message.
    iv: Block,
    receive_id: String,
}

/// An encrypted, signed message, ready to push or to send as an encrypted reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub encrypt: String,
    pub msg_signature: String,
}

impl MsgCrypt {
    pub fn new(token: &Secret, encoding_aes_key: &Secret, receive_id: &str) -> Result<Self, CryptoError> {
        let key = decode_aes_key(encoding_aes_key.expose())?;
        Ok(Self {
            token: token.clone(),
            enc: Aes256Enc::new(&key.into()),
            dec: Aes256Dec::new(&key.into()),
            iv: Block::clone_from_slice(&key[..AES_BLOCK]),
            receive_id: receive_id.to_owned(),
        })
    }

    /// The receive id (appid) that decrypted messages must carry.
    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// The msg_signature of a ciphertext: 40 lowercase hex characters.
    pub fn sign(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        hex::encode(signature::digest(self.token.expose(), timestamp, nonce, encrypt))
    }

    /// Checks msg_signature in constant time; either hex case is accepted.
    pub fn verify(&self, timestamp: &str, nonce: &str, encrypt: &str, msg_signature: &str) -> Result<(), CryptoError> {
        let expected = signature::digest(self.token.expose(), timestamp, nonce, encrypt);
        if signature::matches(&expected, msg_signature) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Verifies, then decrypts: the way to read anything WeChat sends.
    pub fn open(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> Result<String, CryptoError> {
        self.verify(timestamp, nonce, encrypt, msg_signature)?;
        self.decrypt(encrypt)
    }

    /// Decrypts an Encrypt value without checking its signature; prefer [`MsgCrypt::open`].
    ///
    /// One allocation: the base64 is decoded into the buffer that is decrypted in place and
    /// then becomes the returned `String`.
    pub fn decrypt(&self, encrypt: &str) -> Result<String, CryptoError> {
        let mut buf = STANDARD.decode(encrypt).map_err(|_| CryptoError::Base64)?;
        if buf.is_empty() || buf.len() % AES_BLOCK != 0 {
            return Err(CryptoError::CipherLength);
        }
        cbc::Decryptor::inner_iv_init(self.dec.clone(), &self.iv)
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::CipherLength)?;
        let body = frame::unpad(&buf)?;
        let msg = frame::parse(&buf[..body], self.receive_id.as_bytes())?;
        buf.copy_within(msg.clone(), 0);
        buf.truncate(msg.len());
        String::from_utf8(buf).map_err(|_| CryptoError::Utf8)
    }

    /// Encrypts with the 16 random bytes given, so that known-answer vectors can be checked.
    pub fn encrypt_with_random(&self, message: &str, random: [u8; 16]) -> String {
        let mut buf = frame::build(&random, message.as_bytes(), self.receive_id.as_bytes());
        let len = buf.len();
        let ciphertext = cbc::Encryptor::inner_iv_init(self.enc.clone(), &self.iv)
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .expect("frame::build pads to 32 bytes, a whole number of AES blocks");
        STANDARD.encode(ciphertext)
    }

    /// Encrypts with random bytes drawn from `rng`.
    pub fn encrypt_with_rng<R: rand::RngCore + ?Sized>(&self, message: &str, rng: &mut R) -> String {
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        self.encrypt_with_random(message, random)
    }

    /// Encrypts with random bytes from the operating system.
    pub fn encrypt(&self, message: &str) -> String {
        self.encrypt_with_rng(message, &mut rand::rngs::OsRng)
    }

    /// Encrypts and signs, for pushes (the sandbox) and encrypted replies.
    pub fn seal(&self, message: &str, timestamp: &str, nonce: &str) -> Sealed {
        let encrypt = self.encrypt(message);
        let msg_signature = self.sign(timestamp, nonce, &encrypt);
        Sealed { encrypt, msg_signature }
    }
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("token", &self.token)
            .field("aes_key", &format_args!("..."))
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl Sealed {
    /// The reply body WeChat expects for an encrypted reply (and the sandbox sends as a push).
    pub fn reply_xml(&self, timestamp: &str, nonce: &str) -> String {
        format!(
            "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[{}]]></MsgSignature>\
             <TimeStamp>{}</TimeStamp><Nonce><![CDATA[{}]]></Nonce></xml>",
            self.encrypt,
            self.msg_signature,
            escape_text(timestamp),
            escape_cdata(nonce),
        )
    }
}

/// The nonce may be echoed from a request; a `]]>` in it must not end the CDATA section early.
fn escape_cdata(s: &str) -> String {
    s.replace("]]>", "]]]]><![CDATA[>")
}

fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wechatpy's check_signature of the server-URL check, computed independently:
    /// sha1("1409304348" + "pamtest" + "xxxxxx"), the parts sorted.
    #[test]
    fn a_plain_signature_is_sha1_over_the_three_sorted_parts() {
        let token = Secret::new("pamtest");
        let expected = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(b"1409304348pamtestxxxxxx"));
        assert_eq!(plain_signature(&token, "1409304348", "xxxxxx"), expected);
        assert!(verify_plain(&token, "1409304348", "xxxxxx", &expected.to_uppercase()).is_ok());
        assert!(verify_plain(&Secret::new("other"), "1409304348", "xxxxxx", &expected).is_err());
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wxb11529c136998cb6";

    fn crypt() -> MsgCrypt {
        MsgCrypt::new(&Secret::new("pamtest"), &Secret::new(KEY), APPID).unwrap()
    }

    fn crypto_with_id(id: &str) -> MsgCrypt {
        MsgCrypt::new(&Secret::new("t"), &Secret::new(KEY), id).unwrap()
    }

    /// Encrypts raw bytes (already a whole number of blocks) so that malformed frames can be built.
    fn encrypt_raw(c: &MsgCrypt, mut plain: Vec<u8>) -> String {
        let len = plain.len();
        let out = cbc::Encryptor::inner_iv_init(c.enc.clone(), &c.iv)
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .unwrap();
        STANDARD.encode(out)
    }

    fn frame_with_pad(pad: &[u8]) -> Vec<u8> {
        let mut plain = vec![b'r'; 16];
        plain.extend_from_slice(&2u32.to_be_bytes());
        plain.extend_from_slice(b"hi");
        plain.extend_from_slice(APPID.as_bytes());
        plain.extend_from_slice(pad);
        plain
    }

    #[test]
    fn crypto_round_trips_when_plaintext_is_block_aligned() {
        let c = crypto_with_id("");
        for len in [12, 44, 76, 1036] {
            // 20 header + len + 0 id is a multiple of 32: a whole block of padding follows.
            let msg = "a".repeat(len);
            let enc = c.encrypt_with_random(&msg, [7; 16]);
            assert_eq!(STANDARD.decode(&enc).unwrap().len(), 20 + len + 32);
            assert_eq!(c.decrypt(&enc).as_deref(), Ok(msg.as_str()));
        }
    }

    #[test]
    fn crypto_rejects_bad_pad_bytes() {
        let c = crypt();
        // The frame above is 16 + 4 + 2 + 18 = 40 bytes; 24 bytes of padding reach 64.
        let cases: [(&str, Vec<u8>); 4] = [
            ("zero", [vec![24; 23], vec![0]].concat()),
            ("33", vec![33; 24]),
            ("inconsistent", [vec![23], vec![24; 23]].concat()),
            ("255", [vec![24; 23], vec![255]].concat()),
        ];
        for (name, pad) in cases {
            let enc = encrypt_raw(&c, frame_with_pad(&pad));
            assert_eq!(c.decrypt(&enc), Err(CryptoError::Padding), "{name}");
        }
        let good = encrypt_raw(&c, frame_with_pad(&[24; 24]));
        assert_eq!(c.decrypt(&good).as_deref(), Ok("hi"));
    }

    #[test]
    fn crypto_rejects_length_field_past_buffer() {
        let c = crypt();
        let mut plain = frame_with_pad(&[24; 24]);
        plain[16..20].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(c.decrypt(&encrypt_raw(&c, plain)), Err(CryptoError::Frame));
    }

    #[test]
    fn crypto_rejects_bad_lengths_and_base64() {
        let c = crypt();
        assert_eq!(c.decrypt(""), Err(CryptoError::CipherLength));
        assert_eq!(c.decrypt(&STANDARD.encode([0u8; 15])), Err(CryptoError::CipherLength));
        assert_eq!(c.decrypt("not base64!"), Err(CryptoError::Base64));
    }

    #[test]
    fn crypto_rejects_invalid_utf8() {
        let c = crypt();
        let mut plain = frame_with_pad(&[24; 24]);
        plain[20] = 0xff;
        assert_eq!(c.decrypt(&encrypt_raw(&c, plain)), Err(CryptoError::Utf8));
    }

    #[test]
    fn crypto_debug_prints_no_secret() {
        let shown = format!("{:?}", crypt());
        assert!(!shown.contains("pamtest"));
        assert!(!shown.contains("abcdef"));
        assert!(shown.contains(APPID));
    }

    #[test]
    fn crypto_rejects_bad_keys() {
        for key in ["", "short", &format!("{KEY}A"), "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF="] {
            let err = MsgCrypt::new(&Secret::new("t"), &Secret::new(key), APPID).unwrap_err();
            assert_eq!(err, CryptoError::IllegalAesKey);
        }
    }

    #[test]
    fn crypto_reply_xml_has_wechat_shape() {
        let sealed = Sealed { encrypt: "ENC".into(), msg_signature: "SIG".into() };
        assert_eq!(
            sealed.reply_xml("1409304348", "xx]]>x"),
            "<xml><Encrypt><![CDATA[ENC]]></Encrypt><MsgSignature><![CDATA[SIG]]></MsgSignature>\
             <TimeStamp>1409304348</TimeStamp><Nonce><![CDATA[xx]]]]><![CDATA[>x]]></Nonce></xml>"
        );
    }

    #[test]
    fn crypto_reasons_are_snake_case() {
        use CryptoError::*;
        for e in [IllegalAesKey, BadSignature, Base64, CipherLength, Padding, Frame, ReceiveId, Utf8] {
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
            assert!(e.code() <= -40001 && e.code() >= -40011);
        }
    }
}
