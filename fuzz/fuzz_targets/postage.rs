#![no_main]
//! Postage and drop receipts: `Stamp::from_bytes` / `from_json` (+ `check_stamp` under a fixed
//! relay's key), `IssueRequest::from_bytes` / `from_json` (+ `evaluate`, whose answer must
//! finalize for nobody), `IssueResponse::from_bytes` / `from_json` (+ `finalize` against a fixed
//! client state), `PostageKeys::from_body`, and `DropReceipt::from_bytes` / `from_json`
//! (+ `verify`, also re-signed by the fixed relay so the inclusion-proof check runs on input
//! proofs). Decoded values re-encode to the input and round-trip.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::postage::{self, IssueRequest, IssueResponse, PostageKey, Stamp};
use pigeonhole_proto::receipt::{DropReceipt, PostageKeys};
use pigeonhole_proto::tag::Tag;

const EPOCH: u64 = 20_000;

static RELAY: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[5; 32]).expect("valid scalar"));
static KEY: LazyLock<PostageKey> = LazyLock::new(|| PostageKey::derive(&RELAY, EPOCH));

/// A deterministic RNG (the target must not depend on OS randomness to be reproducible).
struct Counter(u64);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Counter {}

fn check_stamp(stamp: &Stamp, data: &[u8]) {
    assert_eq!(Stamp::from_bytes(&stamp.to_bytes()).as_ref(), Ok(stamp));
    assert_eq!(Stamp::from_json(&stamp.to_json()).as_ref(), Ok(stamp));
    let _ = stamp.spent_id();
    let tag = Tag([data.first().copied().unwrap_or(0); 20]);
    // Forging a MAC without the PRF output is what the fuzzer must never manage.
    assert!(KEY.check_stamp(stamp, &tag, data).is_err());
}

fn check_request(request: &IssueRequest) {
    assert_eq!(IssueRequest::from_bytes(&request.to_bytes()).as_ref(), Ok(request));
    assert_eq!(IssueRequest::from_json(&request.to_json()).as_ref(), Ok(request));
    if let Ok(response) = KEY.evaluate(request, &mut Counter(1)) {
        assert_eq!(response.evaluated.len(), request.blinded.len());
        assert_eq!(IssueResponse::from_bytes(&response.to_bytes()).as_ref(), Ok(&response));
        // A client that blinded other elements cannot finalize this answer.
        let (_, state) = postage::blind(request.blinded.len(), EPOCH, &mut Counter(2));
        assert!(state.finalize(&response, &KEY.public_key()).is_err());
    }
}

fn check_response(response: &IssueResponse) {
    assert_eq!(IssueResponse::from_bytes(&response.to_bytes()).as_ref(), Ok(response));
    assert_eq!(IssueResponse::from_json(&response.to_json()).as_ref(), Ok(response));
    let (_, state) = postage::blind(response.evaluated.len(), response.epoch, &mut Counter(3));
    // The proof cannot be forged: no input-made response verifies under the relay's key.
    assert!(state.finalize(response, &KEY.public_key()).is_err());
}

fn check_receipt(r: &DropReceipt) {
    assert_eq!(DropReceipt::from_bytes(&r.to_bytes()).as_ref(), Ok(r));
    assert_eq!(DropReceipt::from_json(&r.to_json()).as_ref(), Ok(r));
    let _ = r.verify(&RELAY.public_key());
    let _ = r.verify(&r.commit.relay);
    let mut r = r.clone();
    r.leaf.relay = RELAY.public_key();
    r.commit.relay = RELAY.public_key();
    r.sig = RELAY.sign_with_aux(&r.commit.signing_hash(), &[0; 32]);
    let _ = r.verify(&RELAY.public_key());
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(stamp) = Stamp::from_bytes(data) {
        assert_eq!(stamp.to_bytes(), data);
        check_stamp(&stamp, data);
    }
    if let Ok(stamp) = Stamp::from_json(&text) {
        check_stamp(&stamp, data);
    }
    if let Ok(request) = IssueRequest::from_bytes(data) {
        assert_eq!(request.to_bytes(), data);
        check_request(&request);
    }
    if let Ok(request) = IssueRequest::from_json(&text) {
        check_request(&request);
    }
    if let Ok(response) = IssueResponse::from_bytes(data) {
        assert_eq!(response.to_bytes(), data);
        check_response(&response);
    }
    if let Ok(response) = IssueResponse::from_json(&text) {
        check_response(&response);
    }
    if let Ok(keys) = PostageKeys::from_body(data) {
        assert_eq!(keys.to_body(), data);
    }
    if let Ok(receipt) = DropReceipt::from_bytes(data) {
        assert_eq!(receipt.to_bytes(), data);
        check_receipt(&receipt);
    }
    if let Ok(receipt) = DropReceipt::from_json(&text) {
        check_receipt(&receipt);
    }
});
