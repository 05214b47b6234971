#![no_main]
//! Receipts and relay documents: `WriteReceipt::from_bytes` / `from_json` (+ `verify`, also
//! re-signed by a fixed relay key so the inclusion-proof check runs on input proofs),
//! `RelayDocument::from_bytes` (+ `verify`, `UsageReport::from_document`) and
//! `UsageReport::from_body`; decoded values re-encode to the input and round-trip.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::receipt::{DocumentKind, RelayDocument, UsageReport, WriteReceipt};

static RELAY: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[5; 32]).expect("valid scalar"));

fn check_receipt(r: &WriteReceipt) {
    assert_eq!(WriteReceipt::from_bytes(&r.to_bytes()).as_ref(), Ok(r));
    assert_eq!(WriteReceipt::from_json(&r.to_json()).as_ref(), Ok(r));
    let _ = r.verify(&RELAY.public_key());
    let _ = r.verify(&r.commit.relay);
    // The same receipt from the fixed relay, with a valid signature over its header: only the
    // group size and the inclusion proof (index, proof hashes, root) can now reject it.
    let mut r = r.clone();
    r.leaf.relay = RELAY.public_key();
    r.commit.relay = RELAY.public_key();
    r.sig = RELAY.sign_with_aux(&r.commit.signing_hash(), &[0; 32]);
    let _ = r.verify(&RELAY.public_key());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = WriteReceipt::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
        check_receipt(&r);
    }
    if let Ok(r) = WriteReceipt::from_json(&String::from_utf8_lossy(data)) {
        check_receipt(&r);
    }
    if let Ok(doc) = RelayDocument::from_bytes(data) {
        assert_eq!(doc.to_bytes(), data);
        let _ = doc.verify(&RELAY.public_key());
        let _ = doc.verify(&doc.relay);
        let _ = UsageReport::from_document(&doc, &doc.relay);
        // Re-signed by the fixed relay it verifies, and a usage report in it decodes as its body.
        let resigned = RelayDocument::sign_with_aux(doc.kind, &RELAY, doc.timestamp, doc.body.clone(), &[0; 32]);
        assert!(resigned.verify(&RELAY.public_key()).is_ok());
        assert_eq!(RelayDocument::from_bytes(&resigned.to_bytes()).as_ref(), Ok(&resigned));
        if doc.kind == DocumentKind::UsageReport {
            assert_eq!(
                UsageReport::from_document(&resigned, &RELAY.public_key()).ok(),
                UsageReport::from_body(&doc.body).ok()
            );
        }
    }
    if let Ok(report) = UsageReport::from_body(data) {
        assert_eq!(report.to_body(), data);
    }
});
