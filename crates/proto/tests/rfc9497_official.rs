//! RFC 9497's own test vectors for OPRF(ristretto255, SHA-512) in VOPRF mode (Appendix A.1.2,
//! transcribed in `spec/vectors/official/rfc9497-voprf-ristretto255.json`; see `SOURCES.md`),
//! run through the `voprf` crate that `pigeonhole_proto::postage` is built on: DeriveKeyPair,
//! Blind, BlindEvaluate (batched proof included), Finalize and the server-side Evaluate.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use rand_core::{CryptoRng, RngCore};
use serde_json::Value;
use voprf::{BlindedElement, EvaluationElement, Group, Proof, Ristretto255, VoprfClient, VoprfServer};

const VECTORS_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors/official/rfc9497-voprf-ristretto255.json");

fn load() -> Value {
    serde_json::from_str(&std::fs::read_to_string(VECTORS_PATH).unwrap()).unwrap()
}

fn hex_field(value: &Value, field: &str) -> Vec<u8> {
    hex::decode(value[field].as_str().unwrap_or_else(|| panic!("{field} missing"))).unwrap()
}

fn hex_list(value: &Value, field: &str) -> Vec<Vec<u8>> {
    value[field].as_array().unwrap().iter().map(|v| hex::decode(v.as_str().unwrap()).unwrap()).collect()
}

/// Hands out fixed scalars: `Scalar::random` reads 64 bytes and reduces them, so a scalar `s`
/// (32 bytes, little-endian, below the group order) followed by 32 zero bytes yields `s`.
struct FixedScalars {
    bytes: Vec<u8>,
}

impl FixedScalars {
    fn new(scalars: &[Vec<u8>]) -> Self {
        let mut bytes = Vec::new();
        for scalar in scalars {
            bytes.extend_from_slice(scalar);
            bytes.extend_from_slice(&[0; 32]);
        }
        Self { bytes }
    }
}

impl RngCore for FixedScalars {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("the VOPRF code only fills byte buffers")
    }

    fn next_u64(&mut self) -> u64 {
        unimplemented!("the VOPRF code only fills byte buffers")
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(dest.len() <= self.bytes.len(), "asked for more randomness than the vector fixes");
        let rest = self.bytes.split_off(dest.len());
        dest.copy_from_slice(&self.bytes);
        self.bytes = rest;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedScalars {}

fn server(file: &Value) -> VoprfServer<Ristretto255> {
    VoprfServer::new_from_seed(&hex_field(file, "Seed"), &hex_field(file, "KeyInfo")).unwrap()
}

#[test]
fn derive_key_pair() {
    let file = load();
    assert_eq!(file["suite"], "ristretto255-SHA512");
    assert_eq!(file["mode"], "VOPRF");
    let derived = server(&file);
    let public = Ristretto255::serialize_elem(derived.get_public_key());
    assert_eq!(hex::encode(public), file["pkSm"].as_str().unwrap());
    // skSm itself is not exposed by the crate: the key built from it has the same public key.
    let from_secret = VoprfServer::<Ristretto255>::new_with_key(&hex_field(&file, "skSm")).unwrap();
    assert_eq!(Ristretto255::serialize_elem(from_secret.get_public_key()), public);
}

#[test]
fn blind_evaluate_finalize() {
    let file = load();
    let server = server(&file);
    let public_key = server.get_public_key();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let inputs = hex_list(vector, "Input");
        let blinds = hex_list(vector, "Blind");
        assert_eq!(inputs.len() as u64, vector["Batch"].as_u64().unwrap(), "{name}");

        let mut blind_rng = FixedScalars::new(&blinds);
        let mut clients = Vec::new();
        let mut blinded = Vec::new();
        for (input, expected) in inputs.iter().zip(hex_list(vector, "BlindedElement")) {
            let result = VoprfClient::<Ristretto255>::blind(input, &mut blind_rng).unwrap();
            assert_eq!(result.message.serialize().to_vec(), expected, "{name}: blinded element");
            assert_eq!(BlindedElement::<Ristretto255>::deserialize(&expected).unwrap(), result.message);
            clients.push(result.state);
            blinded.push(result.message);
        }

        let mut proof_rng = FixedScalars::new(&[hex_field(vector, "ProofRandomScalar")]);
        let evaluated = server.batch_blind_evaluate(&mut proof_rng, &blinded).unwrap();
        let expected_evaluated = hex_list(vector, "EvaluationElement");
        assert_eq!(evaluated.messages.len(), expected_evaluated.len());
        for (message, expected) in evaluated.messages.iter().zip(&expected_evaluated) {
            assert_eq!(&message.serialize().to_vec(), expected, "{name}: evaluation element");
        }
        assert_eq!(evaluated.proof.serialize().to_vec(), hex_field(vector, "Proof"), "{name}: proof");

        // The client side from the published bytes alone.
        let messages: Vec<_> = expected_evaluated
            .iter()
            .map(|bytes| EvaluationElement::<Ristretto255>::deserialize(bytes).unwrap())
            .collect();
        let proof = Proof::<Ristretto255>::deserialize(&hex_field(vector, "Proof")).unwrap();
        let outputs: Vec<_> = VoprfClient::batch_finalize(&inputs, &clients, &messages, &proof, public_key)
            .unwrap()
            .map(|output| output.unwrap().to_vec())
            .collect();
        let expected_outputs = hex_list(vector, "Output");
        assert_eq!(outputs, expected_outputs, "{name}: outputs");
        for (input, expected) in inputs.iter().zip(&expected_outputs) {
            assert_eq!(&server.evaluate(input).unwrap().to_vec(), expected, "{name}: server evaluate");
        }

        // The proof does not verify under another key.
        let other = VoprfServer::<Ristretto255>::new_from_seed(&[1; 32], b"other").unwrap();
        assert!(
            VoprfClient::batch_finalize(&inputs, &clients, &messages, &proof, other.get_public_key())
                .is_err(),
            "{name}"
        );
    }
}
