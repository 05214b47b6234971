//! The official BIP-340 test vectors (`bip-0340/test-vectors.csv` from `bitcoin/bips`, stored
//! at `spec/vectors/official/bip340-test-vectors.csv`), run through the crate's own signing
//! and verification: every row is checked, signing rows bit for bit.

use pigeonhole_proto::keys::{PublicKey, SecretKey, Signature, sign_raw_with_aux, verify_raw};

const CSV: &str = include_str!("../../../spec/vectors/official/bip340-test-vectors.csv");
const HEADER: &str = "index,secret key,public key,aux_rand,message,signature,verification result,comment";
const EXPECTED_ROWS: usize = 19;

/// One row of the CSV.
struct Row<'a> {
    index: usize,
    secret_key: &'a str,
    public_key: &'a str,
    aux_rand: &'a str,
    message: &'a str,
    signature: &'a str,
    result: bool,
    comment: &'a str,
}

fn parse(csv: &str) -> Vec<Row<'_>> {
    assert!(!csv.contains('"'), "the vectors use no quoted fields; a quote means the parser needs work");
    let mut lines = csv.lines().map(|line| line.strip_suffix('\r').unwrap_or(line));
    assert_eq!(lines.next(), Some(HEADER));
    lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            // The comment is last, so splitting into at most 8 keeps any comma inside it.
            let fields: Vec<&str> = line.splitn(8, ',').collect();
            assert_eq!(fields.len(), 8, "row {line:?}");
            Row {
                index: fields[0].parse().expect("index is a number"),
                secret_key: fields[1],
                public_key: fields[2],
                aux_rand: fields[3],
                message: fields[4],
                signature: fields[5],
                result: match fields[6] {
                    "TRUE" => true,
                    "FALSE" => false,
                    other => panic!("verification result {other:?}"),
                },
                comment: fields[7],
            }
        })
        .collect()
}

fn bytes<const N: usize>(hex_text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_text, &mut out).unwrap_or_else(|e| panic!("{hex_text:?}: {e}"));
    out
}

#[test]
fn every_official_vector_passes() {
    let rows = parse(CSV);
    assert_eq!(rows.len(), EXPECTED_ROWS, "the file has the 19 vectors of BIP-340 (15 + 4 added 2022-12)");
    let (mut signed, mut verified_true, mut verified_false, mut unparsable_keys) = (0, 0, 0, 0);

    for (position, row) in rows.iter().enumerate() {
        assert_eq!(row.index, position, "rows are numbered in order");
        let message = hex::decode(row.message).expect("message is hex (possibly empty)");
        let public_bytes: [u8; 32] = bytes(row.public_key);
        let signature = Signature::from_bytes(bytes(row.signature));

        if !row.secret_key.is_empty() {
            let secret = SecretKey::from_bytes(&bytes(row.secret_key)).expect("secret key is valid");
            assert_eq!(secret.public_key().to_bytes(), public_bytes, "vector {}: public key", row.index);
            let aux: [u8; 32] = bytes(row.aux_rand);
            let produced = sign_raw_with_aux(&secret, &message, &aux);
            assert_eq!(produced, signature, "vector {}: signature", row.index);
            signed += 1;
        }

        match PublicKey::from_bytes(&public_bytes) {
            Ok(public) => {
                let ok = verify_raw(&public, &message, &signature).is_ok();
                assert_eq!(ok, row.result, "vector {} ({}): verification", row.index, row.comment);
                if ok {
                    verified_true += 1;
                    // A valid signature must stop verifying when one bit of it changes.
                    let mut damaged = signature.to_bytes();
                    damaged[63] ^= 1;
                    let damaged = Signature::from_bytes(damaged);
                    assert!(verify_raw(&public, &message, &damaged).is_err(), "vector {}", row.index);
                } else {
                    verified_false += 1;
                }
            }
            Err(_) => {
                // A public key that does not parse can only be an invalid-key case.
                assert!(!row.result, "vector {}: key fails to parse but result is TRUE", row.index);
                assert!(
                    row.comment.contains("public key"),
                    "vector {}: key fails to parse but the comment is {:?}",
                    row.index,
                    row.comment
                );
                unparsable_keys += 1;
            }
        }
    }

    // Guard against a vacuous pass: the file has signing rows, valid and invalid signatures,
    // invalid public keys, and messages that are not 32 bytes.
    assert_eq!(signed, 8, "rows 0-3 and 15-18 have secret keys");
    assert_eq!(verified_true, 9);
    assert_eq!(verified_false, 8);
    assert_eq!(unparsable_keys, 2, "rows 5 and 14");
    let lengths: Vec<usize> = rows.iter().map(|row| row.message.len() / 2).collect();
    for length in [0, 1, 17, 32, 100] {
        assert!(lengths.contains(&length), "a message of {length} bytes");
    }
}
