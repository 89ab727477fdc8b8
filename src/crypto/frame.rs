//! The plaintext frame: random(16) ‖ msg_len (u32, big-endian) ‖ msg ‖ receive id, padded PKCS#7 to 32.

use std::ops::Range;

use super::CryptoError;

/// WeChat pads to 32 bytes, not to the AES block of 16, so the `block-padding` crate's PKCS#7
/// (which is tied to the cipher's block size) cannot be used.
pub(super) const PAD_BLOCK: usize = 32;

const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// Builds the padded frame in one buffer, sized so that encryption can run in place.
///
/// A message longer than `u32::MAX` bytes cannot be framed (its length field would wrap);
/// WeChat's own limits are a few MiB, so callers never get near.
pub(super) fn build(random: &[u8; RANDOM_LEN], msg: &[u8], receive_id: &[u8]) -> Vec<u8> {
    let unpadded = HEADER_LEN + msg.len() + receive_id.len();
    let pad = PAD_BLOCK - unpadded % PAD_BLOCK;
    let mut buf = Vec::with_capacity(unpadded + pad);
    buf.extend_from_slice(random);
    buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    buf.extend_from_slice(msg);
    buf.extend_from_slice(receive_id);
    // `pad` is in 1..=32, so it fits the pad byte.
    buf.resize(unpadded + pad, pad as u8);
    buf
}

/// Returns the length of `buf` without its padding.
///
/// The official samples read a pad byte outside 1..=32 as 0 and never look at the other pad
/// bytes; only a corrupt or forged ciphertext has either, so we reject both.
pub(super) fn unpad(buf: &[u8]) -> Result<usize, CryptoError> {
    let pad = usize::from(*buf.last().ok_or(CryptoError::Padding)?);
    if pad == 0 || pad > PAD_BLOCK || pad > buf.len() {
        return Err(CryptoError::Padding);
    }
    let (body, padding) = buf.split_at(buf.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Padding);
    }
    Ok(body.len())
}

/// Finds the message inside an unpadded frame, after checking that the frame is addressed to
/// `receive_id` (WeChat error -40005 otherwise).
pub(super) fn parse(frame: &[u8], receive_id: &[u8]) -> Result<Range<usize>, CryptoError> {
    let len_field = frame.get(RANDOM_LEN..HEADER_LEN).ok_or(CryptoError::Frame)?;
    let msg_len = u32::from_be_bytes([len_field[0], len_field[1], len_field[2], len_field[3]]);
    let end = usize::try_from(msg_len)
        .ok()
        .and_then(|len| HEADER_LEN.checked_add(len))
        .filter(|&end| end <= frame.len())
        .ok_or(CryptoError::Frame)?;
    if &frame[end..] != receive_id {
        return Err(CryptoError::ReceiveId);
    }
    Ok(HEADER_LEN..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: [u8; 16] = *b"0123456789abcdef";
    const ID: &[u8] = b"wx0123456789abcdef";

    #[test]
    fn aligned_plaintext_gets_a_full_block_of_padding() {
        // 20 header + 26 msg + 18 id = 64, a multiple of 32.
        let msg = [b'm'; 26];
        let buf = build(&RANDOM, &msg, ID);
        assert_eq!(buf.len(), 96);
        assert!(buf[64..].iter().all(|&b| b == 32));
        assert_eq!(unpad(&buf), Ok(64));
        assert_eq!(parse(&buf[..64], ID), Ok(20..46));
    }

    #[test]
    fn every_message_length_round_trips() {
        for len in 0..=100 {
            let msg = vec![b'x'; len];
            let buf = build(&RANDOM, &msg, ID);
            assert_eq!(buf.len() % PAD_BLOCK, 0);
            let body = unpad(&buf).unwrap();
            let range = parse(&buf[..body], ID).unwrap();
            assert_eq!(&buf[range], &msg[..]);
        }
    }

    #[test]
    fn pad_byte_zero_is_rejected() {
        let mut buf = build(&RANDOM, b"hi", ID);
        *buf.last_mut().unwrap() = 0;
        assert_eq!(unpad(&buf), Err(CryptoError::Padding));
    }

    #[test]
    fn pad_byte_over_32_is_rejected() {
        let mut buf = vec![33u8; 64];
        assert_eq!(unpad(&buf), Err(CryptoError::Padding));
        buf.fill(255);
        assert_eq!(unpad(&buf), Err(CryptoError::Padding));
    }

    #[test]
    fn inconsistent_pad_bytes_are_rejected() {
        let mut buf = build(&RANDOM, b"hi", ID); // 40 bytes of frame, 24 of padding
        let first_pad = buf.len() - 24;
        buf[first_pad] = 23;
        assert_eq!(unpad(&buf), Err(CryptoError::Padding));
    }

    #[test]
    fn pad_longer_than_buffer_is_rejected() {
        assert_eq!(unpad(&[5, 5, 5]), Err(CryptoError::Padding));
        assert_eq!(unpad(&[]), Err(CryptoError::Padding));
    }

    #[test]
    fn length_field_past_the_buffer_is_a_frame_error() {
        let mut buf = build(&RANDOM, b"hi", ID);
        let body = unpad(&buf).unwrap();
        buf[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&buf[..body], ID), Err(CryptoError::Frame));
        buf[16..20].copy_from_slice(&((body - 19) as u32).to_be_bytes());
        assert_eq!(parse(&buf[..body], ID), Err(CryptoError::Frame));
    }

    #[test]
    fn frame_shorter_than_header_is_a_frame_error() {
        assert_eq!(parse(&[0; 19], b""), Err(CryptoError::Frame));
        assert_eq!(parse(&[0; 20], b""), Ok(20..20));
    }

    #[test]
    fn other_receive_id_is_rejected() {
        let buf = build(&RANDOM, b"hi", ID);
        let body = unpad(&buf).unwrap();
        assert_eq!(parse(&buf[..body], b"wxsomeoneelse0000"), Err(CryptoError::ReceiveId));
        assert_eq!(parse(&buf[..body], b""), Err(CryptoError::ReceiveId));
    }
}
