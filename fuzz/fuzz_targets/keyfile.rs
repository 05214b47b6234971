#![no_main]
//! Encrypted keys: `KeyFile::from_json` (+ JSON round trip, `open`) and `keyfile::decrypt` on
//! input text, on checksummed `ncryptsec` strings built from input bytes, and after
//! `encrypt_with_nonce` of input bytes (must give the key back).
//!
//! scrypt costs 1 KiB * 2^log_n: every call that could reach scrypt first reads log_n itself
//! and skips inputs with a log_n above `CHEAP_LOG_N` that the crate would accept (up to
//! `MAX_LOG_N` = 22, 4 GiB), so no input costs more than a few milliseconds.
//!
//! Input: `mode, rest`.

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keyfile::{self, KeyFile, KeySecurity, MAX_LOG_N, NCRYPTSEC_HRP, NCRYPTSEC_PAYLOAD_LEN};
use pigeonhole_proto::keys::SecretKey;

/// The largest scrypt cost the target lets run (256 KiB).
const CHEAP_LOG_N: u8 = 8;

/// Whether decrypting `text` could run an expensive scrypt: it decodes as bech32 the way
/// the crate decodes it and its log_n byte is between `CHEAP_LOG_N` and `MAX_LOG_N`.
fn expensive(text: &str) -> bool {
    CheckedHrpstring::new::<Bech32>(text.trim())
        .is_ok_and(|c| c.byte_iter().nth(1).is_some_and(|log_n| (CHEAP_LOG_N + 1..=MAX_LOG_N).contains(&log_n)))
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        // Input as text: a key file, and an ncryptsec string.
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(file) = KeyFile::from_json(&text) {
                assert_eq!(KeyFile::from_json(&file.to_json()).as_ref(), Ok(&file));
                if !expensive(&file.ncryptsec) {
                    let _ = file.open("nostr");
                }
            }
            if !expensive(&text) {
                let _ = keyfile::decrypt(&text, "nostr");
            }
        }
        // A 91-byte payload from the input, log_n made cheap unless the crate must refuse it,
        // with a valid bech32 checksum; the remaining bytes are the password.
        1 => {
            let Some((payload, password)) = rest.split_first_chunk::<NCRYPTSEC_PAYLOAD_LEN>() else { return };
            let mut payload = *payload;
            if payload[1] <= MAX_LOG_N {
                payload[1] %= CHEAP_LOG_N + 1;
            }
            let hrp = Hrp::parse(NCRYPTSEC_HRP).expect("valid hrp");
            let text = bech32::encode::<Bech32>(hrp, &payload).expect("91 bytes fit");
            let _ = keyfile::decrypt(&text, &String::from_utf8_lossy(password));
        }
        // Encrypt a key from the input under the input's password, then decrypt it back.
        _ => {
            let Some((secret, rest)) = rest.split_first_chunk::<32>() else { return };
            let Some((salt, rest)) = rest.split_first_chunk::<16>() else { return };
            let Some((nonce, rest)) = rest.split_first_chunk::<24>() else { return };
            let Some((&[log_n, security], password)) = rest.split_first_chunk::<2>() else { return };
            let (Ok(key), Ok(security)) = (SecretKey::from_bytes(secret), KeySecurity::from_byte(security % 4)) else {
                return;
            };
            let password = String::from_utf8_lossy(password);
            let log_n = log_n % (CHEAP_LOG_N + 1);
            let Ok(text) = keyfile::encrypt_with_nonce(&key, &password, log_n, *salt, *nonce, security) else {
                assert_eq!(log_n, 0, "encrypt_with_nonce refused log_n {log_n}");
                return;
            };
            assert_eq!(keyfile::decrypt(&text, &password), Ok((key.clone(), security)));
            let file = KeyFile { pubkey: key.public_key(), ncryptsec: text };
            assert_eq!(KeyFile::from_json(&file.to_json()).as_ref(), Ok(&file));
            assert_eq!(file.open(&password), Ok(key));
        }
    }
});
