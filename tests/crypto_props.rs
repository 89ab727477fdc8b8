//! Properties of the message crypto: round trips for any text, and errors (never panics) for any input.

use base64::{engine::general_purpose::STANDARD, Engine};
use proptest::prelude::*;
use wxgate::crypto::MsgCrypt;
use wxgate::Secret;

fn crypt() -> MsgCrypt {
    let key = Secret::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG");
    MsgCrypt::new(&Secret::new("pamtest"), &key, "wxb11529c136998cb6").unwrap()
}

/// Short strings of any characters, plus multi-KiB ones (mixed ASCII and CJK).
fn message() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "\\PC{0,64}", "[a-z<>/ 中文😀]{1024,6000}",]
}

proptest! {
    #[test]
    fn encrypt_then_decrypt_round_trips(msg in message(), random in any::<[u8; 16]>()) {
        let c = crypt();
        prop_assert_eq!(c.decrypt(&c.encrypt_with_random(&msg, random)), Ok(msg));
    }

    #[test]
    fn seal_then_open_round_trips(msg in message(), ts in "[0-9]{10}", nonce in "[A-Za-z0-9]{1,32}") {
        let c = crypt();
        let sealed = c.seal(&msg, &ts, &nonce);
        prop_assert_eq!(sealed.msg_signature.len(), 40);
        prop_assert_eq!(c.open(&ts, &nonce, &sealed.encrypt, &sealed.msg_signature), Ok(msg));
    }

    #[test]
    fn arbitrary_strings_do_not_decrypt(s in any::<String>()) {
        prop_assert!(crypt().decrypt(&s).is_err());
    }

    #[test]
    fn base64_of_arbitrary_bytes_does_not_decrypt(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        // A random ciphertext passes the strict padding and receive-id checks with negligible odds.
        prop_assert!(crypt().decrypt(&STANDARD.encode(&bytes)).is_err());
    }

    #[test]
    fn block_aligned_random_ciphertexts_do_not_decrypt(blocks in prop::collection::vec(any::<[u8; 16]>(), 1..64)) {
        let bytes: Vec<u8> = blocks.concat();
        prop_assert!(crypt().decrypt(&STANDARD.encode(&bytes)).is_err());
    }

    #[test]
    fn arbitrary_signatures_do_not_verify(sig in "\\PC{0,48}") {
        let c = crypt();
        let sealed = c.seal("hello", "1409304348", "nonce");
        prop_assume!(!sig.eq_ignore_ascii_case(&sealed.msg_signature));
        prop_assert!(c.open("1409304348", "nonce", &sealed.encrypt, &sig).is_err());
    }
}
