#![no_main]
//! NIP-44 v2: `nip44::decrypt` and `decrypt_base64` with a fixed conversation key,
//! `calc_padded_len` on a number from the input, and encrypt-then-decrypt of input bytes
//! (first 32 bytes as the nonce).

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::nip44::{self, ConversationKey, calc_padded_len};

fuzz_target!(|data: &[u8]| {
    let key = ConversationKey::from_bytes([7; 32]);
    let _ = nip44::decrypt(&key, data);
    let _ = nip44::decrypt_base64(&key, &String::from_utf8_lossy(data));

    // Up to 8 little-endian bytes: short inputs give small lengths, long ones huge lengths.
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n) as usize;
    if let Ok(padded) = calc_padded_len(n) {
        assert!(padded >= n && padded >= 32 && padded % 32 == 0, "calc_padded_len({n}) = {padded}");
        if n > 1 {
            assert!(calc_padded_len(n - 1).is_ok_and(|p| p <= padded), "calc_padded_len not monotonic at {n}");
        }
    } else {
        assert!(n == 0 || n > 1 << (usize::BITS - 1), "calc_padded_len({n}) refused");
    }

    if let Some((nonce, plaintext)) = data.split_first_chunk::<32>()
        && let Ok(payload) = nip44::encrypt_with_nonce(&key, plaintext, nonce)
    {
        let padded = calc_padded_len(plaintext.len()).expect("encrypted, so it pads");
        assert_eq!(payload.len(), 1 + 32 + 2 + padded + 32);
        assert_eq!(nip44::decrypt(&key, &payload).as_deref(), Ok(plaintext));
        let b64 = nip44::encrypt_with_nonce_base64(&key, plaintext, nonce).expect("encrypts as raw did");
        assert_eq!(nip44::decrypt_base64(&key, &b64).as_deref(), Ok(plaintext));
    }
});
