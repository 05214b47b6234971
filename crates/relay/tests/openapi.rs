//! `spec/openapi.json` against the relay: the document is valid JSON for OpenAPI 3.1, names
//! exactly the routes the router serves, documents the error statuses each endpoint can answer
//! with, its request and receipt examples are real (they parse and their signatures verify),
//! and the relay serves it byte for byte at `GET /v1/openapi.json`.
//!
//! The examples were made by a running relay: `generate_examples` (ignored; run it with
//! `cargo test -p pigeonhole-relay --test openapi -- --ignored generate_examples`) starts one
//! with a fixed key, makes every kind of request with fixed client keys, and writes what was
//! sent and answered to `$OPENAPI_EXAMPLES_OUT` (default: a file in the temp directory). The
//! document's examples come from such a run (only their key order changed); the few refusals a
//! default relay cannot be made to give here (`internal`, `busy`, `bucket_full`, ...) quote the
//! relay's messages. The run also obtains postage tokens (signed, in a session, anonymously, and
//! the rest of a daily quota of 10), posts drops stamped with them, fetches, long-polls and
//! subscribes; the drop, postage and `/v1/info` examples come from such a run.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::postage::{IssueRequest, IssueResponse, PostageKey, PostageKeys};
use pigeonhole_proto::receipt::{
    DropReceipt, RelayDocument, RelayInfo, UsageReport, WriteReceipt, drop_hash,
};
use pigeonhole_proto::request::{Message, SignedMessage};
use pigeonhole_proto::seal::Envelope;
use pigeonhole_proto::tag::Tag;
use pigeonhole_relay::error::ErrorCode;
use pigeonhole_relay::postage::DropUpload;
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../../../spec/openapi.json");
const ROUTER_SOURCE: &str = include_str!("../src/http.rs");

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("spec/openapi.json is JSON")
}

// ---------------------------------------------------------------------------------------------
// A relay in process.

mod common;
use common::TestRelay;

// ---------------------------------------------------------------------------------------------
// (a) and (e): the document, as a file and as served.

#[test]
fn the_document_is_openapi_3_1_json() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    // Indented by two spaces per level (short containers stay on one line), final newline.
    assert!(DOCUMENT.ends_with("}\n") && DOCUMENT.lines().count() > 100, "not pretty-printed");
    let mut previous = 0;
    for (n, line) in DOCUMENT.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        assert!(indent % 2 == 0 && indent <= previous + 2, "line {}: bad indentation", n + 1);
        assert!(!line.ends_with(char::is_whitespace) && !line.contains('\t'), "line {}: whitespace", n + 1);
        previous = indent;
    }
    // Every local reference resolves.
    let mut refs = Vec::new();
    walk(&doc, &mut |value| {
        if let Some(target) = value.get("$ref").and_then(Value::as_str) {
            refs.push(target.to_owned());
        }
    });
    assert!(!refs.is_empty());
    for target in refs {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {target}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_the_file_byte_for_byte() {
    let relay = TestRelay::start().await;
    let response = reqwest::get(format!("{}/v1/openapi.json", relay.url)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.bytes().await.unwrap();
    assert!(body.as_ref() == DOCUMENT.as_bytes(), "served document differs from spec/openapi.json");
    relay.stop().await;
}

/// Calls `f` on every value in `value`, depth first.
fn walk(value: &Value, f: &mut dyn FnMut(&Value)) {
    f(value);
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        Value::Object(map) => map.values().for_each(|v| walk(v, f)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// (b): routes and paths cannot drift apart.

/// The paths of every `.route("...", ...)` in `router`, in OpenAPI form.
fn router_paths() -> BTreeSet<String> {
    let start = ROUTER_SOURCE.find("pub fn router(").expect("http.rs has `router`");
    let body = &ROUTER_SOURCE[start..];
    let body = &body[..body.find("\n}\n").expect("end of `router`")];
    let mut paths = BTreeSet::new();
    let mut rest = body;
    while let Some(at) = rest.find(".route(\"") {
        rest = &rest[at + ".route(\"".len()..];
        let end = rest.find('"').expect("closing quote");
        paths.insert(openapi_path(&rest[..end]));
        rest = &rest[end..];
    }
    assert!(paths.len() >= 10, "found only {paths:?} in `router`");
    paths
}

/// axum's `{record_id}` is the document's `{recordId}`; other parameters keep their names.
fn openapi_path(route: &str) -> String {
    route
        .split('/')
        .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => format!("{{{}}}", camel_case(name)),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn camel_case(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The methods `router` registers for each path: `get(..)`, `.post(..)`, `put(..)`...
fn router_methods() -> BTreeMap<String, BTreeSet<String>> {
    let start = ROUTER_SOURCE.find("pub fn router(").unwrap();
    let body = &ROUTER_SOURCE[start..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
        let path_start = line.find('"').unwrap() + 1;
        let path_end = path_start + line[path_start..].find('"').unwrap();
        let handlers = &line[path_end..];
        let methods: BTreeSet<String> = ["get", "post", "put", "delete", "patch"]
            .into_iter()
            .filter(|m| handlers.contains(&format!(" {m}(")) || handlers.contains(&format!(".{m}(")))
            .map(str::to_owned)
            .collect();
        assert!(!methods.is_empty(), "no method found in {line}");
        out.insert(openapi_path(&line[path_start..path_end]), methods);
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_path_is_a_route() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let routes = router_paths();
    assert_eq!(
        documented,
        routes,
        "only in the document: {:?}; only in the router: {:?}",
        documented.difference(&routes).collect::<Vec<_>>(),
        routes.difference(&documented).collect::<Vec<_>>()
    );
    for (path, methods) in router_methods() {
        let item = doc["paths"][&path].as_object().unwrap();
        let operations: BTreeSet<String> = item
            .keys()
            .filter(|k| {
                ["get", "put", "post", "delete", "options", "head", "patch", "trace"].contains(&k.as_str())
            })
            .cloned()
            .collect();
        assert_eq!(operations, methods, "methods of {path}");
        // Every `{param}` in the path is declared, with a pattern.
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = &segment[1..segment.len() - 1];
            let params: Vec<&Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .map(|p| p.iter().collect())
                .unwrap_or_default();
            let param = params
                .iter()
                .map(|p| resolve(&doc, p))
                .find(|p| p["name"] == name && p["in"] == "path")
                .unwrap_or_else(|| panic!("{path}: path parameter `{name}` is not declared"));
            assert_eq!(param["required"], true);
            let schema = resolve(&doc, &param["schema"]);
            assert!(schema["pattern"].is_string(), "{path}: `{name}` has no pattern");
        }
    }
}

/// Follows a local `$ref` (once or more).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    let mut value = value;
    while let Some(target) = value.get("$ref").and_then(Value::as_str) {
        value = doc.pointer(target.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {target}"));
    }
    value
}

// ---------------------------------------------------------------------------------------------
// (c): the error statuses of each endpoint (§11.3, as the handlers in http.rs answer).

/// Statuses every operation documents, by what the handler can answer. Every request passes
/// the per-address rate limit first (429).
fn expected_statuses() -> Vec<(&'static str, &'static str, Vec<u16>)> {
    // Signed or session requests: malformed (400), signature / token / timestamp (401),
    // wrong relay or session key (403), body over the limit (413), 429, 500, 503.
    let signed = |extra: &[u16]| {
        let mut all = vec![400, 401, 403, 413, 429, 500, 503];
        all.extend_from_slice(extra);
        all
    };
    vec![
        ("/health", "get", vec![200, 429]),
        ("/metrics", "get", vec![200, 404, 429]),
        ("/v1/info", "get", vec![200, 429]),
        ("/v1/openapi.json", "get", vec![200, 429]),
        ("/v1/accounts", "post", signed(&[200, 201, 409, 507])),
        ("/v1/usage", "post", signed(&[200, 409])),
        ("/v1/session", "get", vec![200, 429, 503]),
        ("/v1/session", "post", signed(&[200, 409])),
        ("/v1/ws", "get", vec![101, 400, 429]),
        // Drops: 404 when the relay takes none. An upload is anonymous (no 401/403): its stamp
        // is checked (402 invalid or expired, 409 spent) and its bucket may be full (507).
        ("/v1/drops", "post", vec![201, 400, 402, 404, 409, 413, 429, 500, 503, 507]),
        ("/v1/drops", "get", vec![200, 400, 404, 429, 500, 503]),
        ("/v1/drops/ws", "get", vec![101, 400, 404, 429]),
        // Issuance: a signed or session request (or the open form), an epoch that is not the
        // current or the next (402), the account's quota charged durably (507).
        ("/v1/postage", "post", signed(&[200, 402, 404, 409, 507])),
        ("/v1/{owner}/outbox/{receiver}", "post", signed(&[200, 409])),
        ("/v1/{owner}/outbox/{receiver}/{recordId}", "put", signed(&[200, 201, 409, 507])),
        ("/v1/{owner}/outbox/{receiver}/{recordId}", "post", signed(&[200, 404, 409, 507])),
    ]
}

#[test]
fn every_status_an_endpoint_can_answer_is_documented() {
    let doc = document();
    let listed: BTreeSet<(String, String)> =
        expected_statuses().iter().map(|(p, m, _)| ((*p).to_owned(), (*m).to_owned())).collect();
    let routed: BTreeSet<(String, String)> = router_methods()
        .into_iter()
        .flat_map(|(path, methods)| methods.into_iter().map(move |m| (path.clone(), m)))
        .collect();
    assert_eq!(listed, routed, "the table in this test must cover every operation");

    let codes = error_codes(&doc);
    for (path, method, statuses) in expected_statuses() {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(op["summary"].is_string() && op["description"].is_string(), "{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        for status in &statuses {
            let response = responses
                .get(&status.to_string())
                .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{method} {path} {status}");
            // (A malformed WebSocket upgrade is refused by axum, in plain text.)
            if *status >= 400 && !(path.ends_with("/ws") && *status == 400) {
                // Errors are the shared `Error` body, with codes of the §11.3 table for that status.
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{method} {path} {status}");
                for example in examples_of(&doc, &response["content"]["application/json"]) {
                    let code = example["code"].as_str().unwrap();
                    assert_eq!(codes.get(code), Some(status), "{method} {path}: `{code}` under {status}");
                }
            }
        }
        for status in responses.keys() {
            let status: u16 = status.parse().unwrap();
            assert!(
                statuses.contains(&status),
                "{method} {path}: documents {status}, which it never answers"
            );
        }
    }
}

/// `code → status` from the `Error` schema's enum and the §11.3 table in PROTOCOL.md, which
/// must agree with each other and with the relay's `ErrorCode`.
fn error_codes(doc: &Value) -> BTreeMap<String, u16> {
    let protocol = include_str!("../../../spec/PROTOCOL.md");
    let table = &protocol[protocol.find("### 11.3").unwrap()..];
    let table = &table[..table.find("\n### ").unwrap()];
    let mut codes = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        codes.insert(cells[1].trim_matches('`').to_owned(), cells[2].parse::<u16>().unwrap());
    }
    assert!(!codes.is_empty(), "no table in §11.3");
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(documented, codes.keys().cloned().collect(), "Error.code enum vs §11.3");
    let relay: BTreeMap<String, u16> =
        relay_error_codes().into_iter().map(|c| (c.as_str().to_owned(), c.status())).collect();
    assert_eq!(relay, codes, "the relay's ErrorCode vs §11.3");
    codes
}

/// Every code the relay can answer with.
fn relay_error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        BadRequest,
        PathMismatch,
        WrongRequestType,
        BadSignature,
        StaleRequest,
        WrongRelay,
        Forbidden,
        NoAccount,
        AccountSuspended,
        InviteRequired,
        QuotaExceeded,
        NotFound,
        Replay,
        Conflict,
        TooLarge,
        RateLimited,
        Internal,
        Busy,
        StorageFull,
        PostageInvalid,
        PostageSpent,
        PostageExpired,
        BucketFull,
    ];
    // A new variant does not compile here until it is listed above (and documented).
    for code in &all {
        match code {
            BadRequest | PathMismatch | WrongRequestType | BadSignature | StaleRequest | WrongRelay
            | Forbidden | NoAccount | AccountSuspended | InviteRequired | QuotaExceeded | NotFound
            | Replay | Conflict | TooLarge | RateLimited | Internal | Busy | StorageFull | PostageInvalid
            | PostageSpent | PostageExpired | BucketFull => {}
        }
    }
    all
}

/// The example values of a media type (`example`, or each `examples` entry's `value`).
fn examples_of<'a>(doc: &'a Value, media: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    if let Some(example) = media.get("example") {
        out.push(example);
    }
    if let Some(examples) = media.get("examples").and_then(Value::as_object) {
        for example in examples.values() {
            out.push(&resolve(doc, example)["value"]);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// (d): the examples are real.

/// The key of the relay that made the examples: the one `/health` names.
fn example_relay(doc: &Value) -> PublicKey {
    let media = &doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"];
    let examples = examples_of(doc, media);
    PublicKey::from_hex(examples[0]["relay"].as_str().unwrap()).unwrap()
}

#[test]
fn request_examples_parse_and_signed_ones_verify() {
    let doc = document();
    let relay = example_relay(&doc);
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(media) = op.pointer("/requestBody/content/application~1json") else { continue };
            let examples = examples_of(&doc, media);
            assert!(!examples.is_empty(), "{method} {path}: the request body has no example");
            for example in examples {
                checked += 1;
                // The two bodies that are not requests: an anonymous drop and an open issuance.
                if example.get("msg").is_none() {
                    match (method.as_str(), path.as_str()) {
                        ("post", "/v1/drops") => {
                            let upload: DropUpload = serde_json::from_value(example.clone()).unwrap();
                            Tag::from_hex(&upload.tag).unwrap();
                            Envelope::parse(&BASE64.decode(&upload.drop).unwrap()).unwrap();
                        }
                        ("post", "/v1/postage") => {
                            IssueRequest::from_json(&example.to_string()).unwrap();
                        }
                        _ => panic!("{method} {path}: an example body without `msg`"),
                    }
                    continue;
                }
                let message = parse_request(example);
                if message.request.type_name() != "write" {
                    assert_eq!(message.to, relay, "{method} {path}: `to` is not the example relay");
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} request examples");
}

/// Parses `{"msg": {...}}`: signed if it has `sig`, else as an unsigned session request.
fn parse_request(example: &Value) -> Message {
    let text = example.to_string();
    if example["msg"].get("sig").is_some() {
        SignedMessage::from_json(&text).unwrap_or_else(|e| panic!("{e}: {text}")).into_message()
    } else {
        Message::from_json(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// Every example value in the document: `example`, `examples` lists (schemas) and the
/// `value` of `examples` maps (media types, `components/examples`).
fn all_examples(doc: &Value) -> Vec<&Value> {
    fn collect<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("example", _) => out.push(child),
                        ("examples", Value::Array(items)) => out.extend(items),
                        ("examples", Value::Object(named)) => {
                            out.extend(named.values().filter_map(|e| e.get("value")));
                        }
                        _ => collect(child, out),
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(doc, &mut out);
    out
}

/// The secret key of the relay that made the examples (`generate_examples` runs it with 32
/// bytes 0x11 as its key): with it, stamps and token answers can be checked as the relay would.
fn example_relay_secret(doc: &Value) -> SecretKey {
    let secret = SecretKey::from_bytes(&[0x11; 32]).unwrap();
    assert_eq!(secret.public_key(), example_relay(doc), "the examples were made with another relay key");
    secret
}

#[test]
fn every_example_record_receipt_and_document_verifies() {
    let doc = document();
    let relay = example_relay(&doc);
    let secret = example_relay_secret(&doc);
    let mut counts = BTreeMap::<&str, usize>::new();
    let (mut writes, mut receipted) = (BTreeSet::new(), BTreeSet::new());
    let (mut drops, mut drops_receipted) = (BTreeSet::new(), BTreeSet::new());
    let (mut issue_requests, mut issue_responses) = (Vec::new(), Vec::new());
    for example in all_examples(&doc) {
        walk(example, &mut |value| {
            let Some(object) = value.as_object() else { return };
            // Any `{"msg": {...}}`: request bodies, stored records, WebSocket frames (`id` aside).
            if object.get("msg").is_some_and(Value::is_object) {
                let message = parse_request(&json!({"msg": object["msg"]}));
                if message.request.type_name() == "write" {
                    writes.insert(hex::encode(message.record_hash()));
                }
                *counts.entry("msg").or_default() += 1;
            }
            // Receipts, wherever they appear: they verify, and each is for a write or a drop
            // shown here.
            if object.contains_key("leaf") && object.contains_key("commit") {
                if object["leaf"].get("dropHash").is_some() {
                    let receipt = DropReceipt::from_json(&value.to_string()).unwrap();
                    receipt.verify(&relay).unwrap();
                    drops_receipted.insert((receipt.leaf.tag.to_hex(), hex::encode(receipt.leaf.drop_hash)));
                    *counts.entry("drop receipt").or_default() += 1;
                } else {
                    let receipt = WriteReceipt::from_json(&value.to_string()).unwrap();
                    receipt.verify(&relay).unwrap();
                    receipted.insert(hex::encode(receipt.leaf.record_hash));
                    *counts.entry("receipt").or_default() += 1;
                }
            }
            // Drops, uploaded or served: a tag and a sealed envelope; an upload's stamp is valid
            // for exactly that drop under the epoch's key.
            if let (Some(tag), Some(drop)) =
                (object.get("tag").and_then(Value::as_str), object.get("drop").and_then(Value::as_str))
            {
                let bytes = BASE64.decode(drop).unwrap();
                Envelope::parse(&bytes).unwrap();
                drops.insert((tag.to_owned(), hex::encode(drop_hash(&bytes))));
                if object.contains_key("postage") {
                    let upload: DropUpload = serde_json::from_value(value.clone()).unwrap();
                    let tag = Tag::from_hex(tag).unwrap();
                    let stamp = upload.postage;
                    PostageKey::derive(&secret, stamp.epoch).check_stamp(&stamp, &tag, &bytes).unwrap();
                    *counts.entry("stamp").or_default() += 1;
                }
            }
            // Issuance: requests (signed, in a session or open) and the relay's answers.
            if object.contains_key("blinded") {
                issue_requests.push(IssueRequest::from_json(&value.to_string()).unwrap());
            }
            if object.contains_key("evaluated") {
                issue_responses.push(IssueResponse::from_json(&value.to_string()).unwrap());
            }
            // `/v1/info`'s postage keys: the document verifies, says what the JSON beside it
            // says, and publishes the keys the relay derives.
            if let Some(document) = object.get("postageDocument").and_then(Value::as_str) {
                let document = RelayDocument::from_bytes(&BASE64.decode(document).unwrap()).unwrap();
                let keys = PostageKeys::from_document(&document, &relay).unwrap();
                assert_eq!(serde_json::to_value(&keys).unwrap(), object["postage"]);
                for (epoch, key) in &keys.keys {
                    assert_eq!(*key, PostageKey::derive(&secret, *epoch).public_key(), "epoch {epoch}");
                }
                *counts.entry("postage keys").or_default() += 1;
            }
            // `/v1/info` and `/v1/usage` answers: the document verifies and says what the JSON
            // beside it says.
            if let Some(document) = object.get("document").and_then(Value::as_str) {
                let bytes = BASE64.decode(document).unwrap();
                let document = RelayDocument::from_bytes(&bytes).unwrap();
                if let Some(info) = object.get("info") {
                    let signed = RelayInfo::from_document(&document, &relay).unwrap();
                    assert_eq!(serde_json::to_value(&signed).unwrap(), *info);
                    assert_eq!(object["timestamp"], document.timestamp);
                    assert_eq!(object["relay"], relay.to_hex());
                    *counts.entry("info").or_default() += 1;
                } else {
                    let signed = UsageReport::from_document(&document, &relay).unwrap();
                    assert_eq!(serde_json::to_value(&signed).unwrap(), object["report"]);
                    *counts.entry("usage").or_default() += 1;
                }
            }
        });
    }
    // Each token answer evaluates (BlindEvaluate is deterministic) the first elements of an
    // issuance request shown here: all of them, or what was left of a quota.
    for response in &issue_responses {
        let key = PostageKey::derive(&secret, response.epoch);
        let n = response.evaluated.len();
        let answers =
            issue_requests.iter().filter(|r| r.epoch == response.epoch && r.blinded.len() >= n).any(|r| {
                let granted = IssueRequest { epoch: r.epoch, blinded: r.blinded[..n].to_vec() };
                key.evaluate(&granted, &mut rand_core::OsRng).unwrap().evaluated == response.evaluated
            });
        assert!(answers, "a token answer for no request shown: {response:?}");
        *counts.entry("issued").or_default() += 1;
    }
    for what in ["msg", "receipt", "info", "usage", "drop receipt", "stamp", "postage keys", "issued"] {
        assert!(counts.get(what).copied().unwrap_or(0) > 0, "no `{what}` example found: {counts:?}");
    }
    assert!(receipted.is_subset(&writes), "a receipt example is for a write not shown: {receipted:?}");
    assert!(drops_receipted.is_subset(&drops), "a drop receipt is for a drop not shown: {drops_receipted:?}");
}

// ---------------------------------------------------------------------------------------------
// The examples' source: a real relay answering real requests.

mod generate {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use pigeonhole_proto::drops::{seal_contact_drop, seal_drop};
    use pigeonhole_proto::payload::Payload;
    use pigeonhole_proto::postage::{self, IssueResponse, PostageKeys, Stamp};
    use pigeonhole_proto::request::{
        Delete, Inventory, Listen, Read, Register, Request, Session, Usage, Write,
    };
    use pigeonhole_proto::seal::{Letter, seal};
    use pigeonhole_proto::tag::{ChainKey, Prefix, Tag};
    use pigeonhole_relay::config::IssuePolicy;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn message(from: &SecretKey, to: PublicKey, request: Request) -> Message {
        Message { from: from.public_key(), to, timestamp: now(), request }
    }

    fn signed(from: &SecretKey, to: PublicKey, request: Request) -> Value {
        let text = message(from, to, request).sign(from, &mut rand_core::OsRng).unwrap().to_json();
        serde_json::from_str(&text).unwrap()
    }

    fn unsigned(from: &SecretKey, to: PublicKey, request: Request) -> Value {
        serde_json::from_str(&message(from, to, request).to_json()).unwrap()
    }

    struct Recorder {
        client: reqwest::Client,
        url: String,
        out: serde_json::Map<String, Value>,
    }

    impl Recorder {
        /// Sends a request, records `{method, path, request, status, response}` as `name`.
        async fn call(
            &mut self,
            name: &str,
            method: &str,
            path: &str,
            body: Option<String>,
            bearer: Option<&str>,
        ) -> Value {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = self.client.request(method.clone(), format!("{}{path}", self.url));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers: serde_json::Map<String, Value> = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                .collect();
            let text = response.text().await.unwrap();
            let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let request = body.map(|b| serde_json::from_str(&b).unwrap_or(Value::String(b)));
            let record = json!({
                "method": method.as_str(), "path": path, "request": request,
                "status": status, "headers": headers, "response": answer,
            });
            self.out.insert(name.to_owned(), record);
            answer
        }
    }

    type Socket =
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    async fn next_frame(socket: &mut Socket) -> Value {
        loop {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await;
            match frame.unwrap().unwrap().unwrap() {
                WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "writes the examples of spec/openapi.json to a file; run by hand"]
    async fn generate_examples() {
        let relay_key = key(0x11);
        let relay = TestRelay::start_with(Some(&relay_key), |c| {
            c.postage.issue = IssuePolicy::Open;
            c.postage.per_account_per_day = 10;
        })
        .await;
        let r = relay.key;
        let (alice, bob, carol) = (key(1), key(2), key(3));
        let (a, b) = (alice.public_key(), bob.public_key());
        let (ah, bh) = (a.to_hex(), b.to_hex());
        let mut rec =
            Recorder { client: reqwest::Client::new(), url: relay.url.clone(), out: Default::default() };
        let s = |v: &Value| v.to_string();

        rec.call("health", "GET", "/health", None, None).await;
        rec.call("info", "GET", "/v1/info", None, None).await;

        // Accounts.
        let register = |invite: Option<&str>| Request::Register(Register { invite: invite.map(Into::into) });
        rec.call("register_new", "POST", "/v1/accounts", Some(s(&signed(&alice, r, register(None)))), None)
            .await;
        rec.call(
            "register_existing",
            "POST",
            "/v1/accounts",
            Some(s(&signed(&alice, r, register(None)))),
            None,
        )
        .await;
        let invited = signed(&carol, r, register(Some("spring-2026-guests")));
        rec.call("register_invite", "POST", "/v1/accounts", Some(s(&invited)), None).await;

        // An HTTP session.
        let challenge = rec.call("session_challenge", "GET", "/v1/session", None, None).await;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(challenge["challenge"].as_str().unwrap(), &mut bytes).unwrap();
        let answer = signed(&alice, r, Request::Session(Session { challenge: bytes }));
        let opened = rec.call("session_open", "POST", "/v1/session", Some(s(&answer)), None).await;
        let token = opened["token"].as_str().unwrap().to_owned();

        // Writes: a sealed letter from Alice to Bob, tagged on the contact path.
        let letter = |id: &str, text: &str| Letter {
            sender: Some(a),
            recipient: b,
            created_at: now(),
            record_id: id.into(),
            payload: Payload::Text(text.into()),
        };
        let content =
            |id: &str, text: &str| seal(&letter(id, text), Some(&alice), &mut rand_core::OsRng).unwrap();
        let chain = ChainKey::derive(&alice, &b, &a, &b);
        let write1 = signed(
            &alice,
            b,
            Request::Write(Write {
                record_id: "msg-0001".into(),
                ttl: 86_400,
                tag: Some(chain.tag(&Prefix::EMPTY, 0)),
                content: content("msg-0001", "Hello Bob! Lunch on Friday?"),
            }),
        );
        let record_path = |id: &str| format!("/v1/{ah}/outbox/{bh}/{id}");
        let outbox_path = format!("/v1/{ah}/outbox/{bh}");
        // Alice also writes to Carol at the same moment, so that msg-0001 is likely to share a
        // commit group with other writes (a receipt with a non-empty inclusion proof).
        let notes: Vec<_> = (0..16)
            .map(|i| {
                let id = format!("note-{i}");
                let body = signed(
                    &alice,
                    carol.public_key(),
                    Request::Write(Write {
                        record_id: id.clone(),
                        ttl: 3600,
                        tag: None,
                        content: content(&id, "hi"),
                    }),
                );
                let url = format!("{}/v1/{ah}/outbox/{}/{id}", relay.url, carol.public_key().to_hex());
                tokio::spawn(reqwest::Client::new().put(url).body(s(&body)).send())
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        rec.call("write_new", "PUT", &record_path("msg-0001"), Some(s(&write1)), None).await;
        for note in notes {
            assert_eq!(note.await.unwrap().unwrap().status(), 201);
        }
        rec.call("write_duplicate", "PUT", &record_path("msg-0001"), Some(s(&write1)), None).await;
        let write2 = unsigned(
            &alice,
            b,
            Request::Write(Write {
                record_id: "msg-0002".into(),
                ttl: 0,
                tag: None,
                content: content("msg-0002", "Sent over an HTTP session."),
            }),
        );
        let stored =
            rec.call("write_session", "PUT", &record_path("msg-0002"), Some(s(&write2)), Some(&token)).await;
        let first_seq = stored["seq"].as_u64().unwrap_or_else(|| panic!("{stored}")) - 1;

        // Bob lists, listens and reads.
        let inventory = signed(
            &bob,
            r,
            Request::Inventory(Inventory {
                owner: a,
                receiver: b,
                after_ts: None,
                before_ts: None,
                after_seq: None,
                limit: 100,
            }),
        );
        rec.call("inventory", "POST", &outbox_path, Some(s(&inventory)), None).await;
        let listen = signed(
            &bob,
            r,
            Request::Listen(Listen { owner: a, receiver: b, after_ts: None, after_seq: Some(first_seq) }),
        );
        rec.call("listen", "POST", &format!("{outbox_path}?wait=30"), Some(s(&listen)), None).await;
        let read =
            signed(&bob, r, Request::Read(Read { owner: a, receiver: b, record_id: "msg-0001".into() }));
        rec.call("read", "POST", &record_path("msg-0001"), Some(s(&read)), None).await;
        let delete = signed(&alice, r, Request::Delete(Delete { receiver: b, record_id: "msg-0002".into() }));
        rec.call("delete", "POST", &record_path("msg-0002"), Some(s(&delete)), None).await;
        let usage = signed(&alice, r, Request::Usage(Usage { after_ts: None, before_ts: None }));
        rec.call("usage", "POST", "/v1/usage", Some(s(&usage)), None).await;
        let usage_in_session =
            unsigned(&alice, r, Request::Usage(Usage { after_ts: Some(now() - 3_600_000), before_ts: None }));
        rec.call("usage_session", "POST", "/v1/usage", Some(s(&usage_in_session)), Some(&token)).await;

        // Refusals.
        rec.call("e_bad_request", "POST", "/v1/usage", Some("{\"msg\":{}}".into()), None).await;
        rec.call("e_bad_path", "POST", &format!("/v1/{ah}/outbox/not-a-key"), Some("{}".into()), None).await;
        rec.call(
            "e_bad_record_id",
            "POST",
            &format!("/v1/{ah}/outbox/{bh}/bad%20id"),
            Some("{}".into()),
            None,
        )
        .await;
        rec.call("e_bad_query", "POST", &format!("{outbox_path}?since=5"), Some("{}".into()), None).await;
        let listen2 = signed(
            &bob,
            r,
            Request::Listen(Listen { owner: a, receiver: b, after_ts: None, after_seq: None }),
        );
        rec.call("e_wait", "POST", &format!("{outbox_path}?wait=600"), Some(s(&listen2)), None).await;
        let mut forged = read.clone();
        let sig = forged["msg"]["sig"].as_str().unwrap().to_owned();
        forged["msg"]["sig"] =
            json!(format!("{}{}", &sig[..127], if sig.ends_with('0') { '1' } else { '0' }));
        rec.call("e_bad_signature", "POST", &record_path("msg-0001"), Some(s(&forged)), None).await;
        rec.call("e_unknown_token", "POST", "/v1/usage", Some(s(&usage_in_session)), Some(&"00".repeat(32)))
            .await;
        rec.call("e_bad_authorization", "POST", "/v1/usage", Some(s(&usage_in_session)), Some("abc")).await;
        let mut stale = message(&alice, r, Request::Usage(Usage { after_ts: None, before_ts: None }));
        stale.timestamp -= 600_000;
        let stale: Value =
            serde_json::from_str(&stale.sign(&alice, &mut rand_core::OsRng).unwrap().to_json()).unwrap();
        rec.call("e_stale", "POST", "/v1/usage", Some(s(&stale)), None).await;
        let elsewhere =
            signed(&alice, carol.public_key(), Request::Usage(Usage { after_ts: None, before_ts: None }));
        rec.call("e_wrong_relay", "POST", "/v1/usage", Some(s(&elsewhere)), None).await;
        let nosy =
            signed(&carol, r, Request::Read(Read { owner: a, receiver: b, record_id: "msg-0001".into() }));
        rec.call("e_forbidden", "POST", &record_path("msg-0001"), Some(s(&nosy)), None).await;
        rec.call(
            "e_session_key",
            "PUT",
            &format!("/v1/{bh}/outbox/{ah}/r1"),
            Some(s(&unsigned(
                &bob,
                a,
                Request::Write(Write { record_id: "r1".into(), ttl: 0, tag: None, content: vec![1] }),
            ))),
            Some(&token),
        )
        .await;
        let unregistered = signed(
            &bob,
            a,
            Request::Write(Write { record_id: "hi".into(), ttl: 0, tag: None, content: content("hi", "x") }),
        );
        rec.call("e_no_account", "PUT", &format!("/v1/{bh}/outbox/{ah}/hi"), Some(s(&unregistered)), None)
            .await;
        rec.call("e_replay", "POST", &record_path("msg-0001"), Some(s(&read)), None).await;
        let again =
            signed(&bob, r, Request::Read(Read { owner: a, receiver: b, record_id: "msg-0002".into() }));
        rec.call("e_not_found", "POST", &record_path("msg-0002"), Some(s(&again)), None).await;
        rec.call("e_no_endpoint", "GET", "/v1/nothing-here", None, None).await;
        let other = signed(
            &alice,
            b,
            Request::Write(Write {
                record_id: "msg-0001".into(),
                ttl: 86_400,
                tag: None,
                content: content("msg-0001", "Something else"),
            }),
        );
        rec.call("e_conflict", "PUT", &record_path("msg-0001"), Some(s(&other)), None).await;
        let moved =
            signed(&bob, r, Request::Read(Read { owner: a, receiver: b, record_id: "msg-0001".into() }));
        rec.call("e_path_mismatch", "POST", &record_path("msg-0009"), Some(s(&moved)), None).await;
        let misplaced = signed(
            &bob,
            r,
            Request::Inventory(Inventory {
                owner: a,
                receiver: b,
                after_ts: None,
                before_ts: None,
                after_seq: None,
                limit: 10,
            }),
        );
        rec.call("e_wrong_type", "POST", &record_path("msg-0001"), Some(s(&misplaced)), None).await;
        rec.call("e_too_large", "POST", "/v1/usage", Some(" ".repeat(300 * 1024)), None).await;
        rec.call("e_method", "DELETE", "/v1/usage", None, None).await;
        rec.call("e_ws_plain", "GET", "/v1/ws", None, None).await;

        // The WebSocket transport: Bob listens, Alice writes, Bob gets a push.
        let ws_url = format!("{}/v1/ws", relay.url.replace("http://", "ws://"));
        let mut frames = serde_json::Map::new();
        let open = |who: &SecretKey, tag: &'static str| {
            let who = who.clone();
            let ws_url = ws_url.clone();
            async move {
                let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
                let hello = next_frame(&mut socket).await;
                let mut challenge = [0u8; 32];
                hex::decode_to_slice(hello["challenge"].as_str().unwrap(), &mut challenge).unwrap();
                let answer = signed(&who, r, Request::Session(Session { challenge }));
                let frame = json!({"id": 0, "msg": answer["msg"]});
                socket.send(WsMessage::Text(frame.to_string().into())).await.unwrap();
                let reply = next_frame(&mut socket).await;
                (
                    socket,
                    vec![
                        (format!("{tag}_challenge"), hello),
                        (format!("{tag}_session"), frame),
                        (format!("{tag}_session_answer"), reply),
                    ],
                )
            }
        };
        let (mut bob_ws, log) = open(&bob, "bob").await;
        let (mut alice_ws, log2) = open(&alice, "alice").await;
        for (k, v) in log.into_iter().chain(log2) {
            frames.insert(k, v);
        }
        let listen = unsigned(
            &bob,
            r,
            Request::Listen(Listen {
                owner: a,
                receiver: b,
                after_ts: None,
                after_seq: Some(stored["seq"].as_u64().unwrap()),
            }),
        );
        let frame = json!({"id": 1, "msg": listen["msg"]});
        bob_ws.send(WsMessage::Text(frame.to_string().into())).await.unwrap();
        frames.insert("listen".into(), frame);
        frames.insert("subscribed".into(), next_frame(&mut bob_ws).await);
        let write3 = unsigned(
            &alice,
            b,
            Request::Write(Write {
                record_id: "msg-0003".into(),
                ttl: 3600,
                tag: None,
                content: content("msg-0003", "Over a WebSocket."),
            }),
        );
        let frame = json!({"id": 1, "msg": write3["msg"]});
        alice_ws.send(WsMessage::Text(frame.to_string().into())).await.unwrap();
        frames.insert("write".into(), frame);
        frames.insert("write_answer".into(), next_frame(&mut alice_ws).await);
        frames.insert("push".into(), next_frame(&mut bob_ws).await);
        rec.out.insert("ws".into(), Value::Object(frames));

        // Drops and postage. Tokens from the keys `/v1/info` published: signed, in the HTTP
        // session and (under `issue = "open"`) anonymously; the relay grants what is left of
        // Alice's daily quota (10 in this run) and evaluates only the first elements.
        let document =
            BASE64.decode(rec.out["info"]["response"]["postageDocument"].as_str().unwrap()).unwrap();
        let keys = PostageKeys::from_document(&RelayDocument::from_bytes(&document).unwrap(), &r).unwrap();
        let (epoch, public) = keys.keys[0];
        let mut tokens = Vec::new();
        let issuances = [
            ("postage_signed", 4, 0),
            ("postage_session", 4, 1),
            ("postage_partial", 4, 0),
            ("postage_open", 2, 2),
        ];
        for (name, count, how) in issuances {
            let (request, mut state) = postage::blind(count, epoch, &mut rand_core::OsRng);
            let (body, bearer) = match how {
                0 => (s(&signed(&alice, r, Request::Postage(request))), None),
                1 => (s(&unsigned(&alice, r, Request::Postage(request))), Some(token.as_str())),
                _ => (request.to_json(), None),
            };
            let answer = rec.call(name, "POST", "/v1/postage", Some(body), bearer).await;
            let response: IssueResponse = serde_json::from_value(answer).unwrap();
            state.truncate(response.evaluated.len());
            tokens.extend(state.finalize(&response, &public).unwrap());
        }
        assert_eq!(tokens.len(), 12);
        let (request, _) = postage::blind(1, epoch, &mut rand_core::OsRng);
        rec.call(
            "e_postage_quota",
            "POST",
            "/v1/postage",
            Some(s(&signed(&alice, r, Request::Postage(request)))),
            None,
        )
        .await;
        let (request, _) = postage::blind(64, epoch, &mut rand_core::OsRng);
        rec.call("e_postage_open_quota", "POST", "/v1/postage", Some(request.to_json()), None).await;
        let (request, _) = postage::blind(1, epoch + 2, &mut rand_core::OsRng);
        rec.call("e_postage_epoch", "POST", "/v1/postage", Some(request.to_json()), None).await;
        let usage = signed(&alice, r, Request::Usage(Usage { after_ts: None, before_ts: None }));
        rec.call("e_postage_type", "POST", "/v1/postage", Some(s(&usage)), None).await;

        // Bob's drop prefix: the first 16 bits b0b0.
        let prefix = Prefix::new(16, 0xb0b0_0000).unwrap();
        let drops_path = |after: u64, extra: &str| {
            format!("/v1/drops?bits=16&value={}&after={after}{extra}", prefix.value())
        };
        let drop_letter = |sender: Option<PublicKey>, id: &str, text: &str| Letter {
            sender,
            recipient: b,
            created_at: now(),
            record_id: id.into(),
            payload: Payload::Text(text.into()),
        };
        let upload = |tag: Tag, envelope: &[u8], ttl: u32, stamp: &Stamp| {
            json!({"tag": tag.to_hex(), "drop": BASE64.encode(envelope), "ttl": ttl, "postage": stamp})
                .to_string()
        };
        let mut tokens = tokens.into_iter();
        // Carol, a stranger to Bob, drops a letter (stranger path, §7.2).
        let (tag1, envelope1) = seal_drop(
            &drop_letter(Some(carol.public_key()), "hello-bob", "Hi Bob, Alice gave me your card."),
            Some(&carol),
            &prefix,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let stamp1 = tokens.next().unwrap().stamp(&tag1, &envelope1);
        let first = upload(tag1, &envelope1, 86_400, &stamp1);
        let stored = rec.call("drop_upload", "POST", "/v1/drops", Some(first.clone()), None).await;
        rec.call("e_postage_spent", "POST", "/v1/drops", Some(first), None).await;
        rec.call("drops_fetch", "GET", &drops_path(0, ""), None, None).await;
        let cursor = stored["seq"].as_u64().unwrap();

        // Bob long-polls after his cursor; Alice drops a letter on their chain (§7.3).
        let poll = tokio::spawn(reqwest::get(format!("{}{}", relay.url, drops_path(cursor, "&wait=30"))));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (tag2, envelope2) = seal_contact_drop(
            &drop_letter(Some(a), "drop-0001", "Bob, this one went by drop."),
            &alice,
            &prefix,
            &chain,
            1,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let stamp2 = tokens.next().unwrap().stamp(&tag2, &envelope2);
        let stored2 = rec
            .call("drop_contact", "POST", "/v1/drops", Some(upload(tag2, &envelope2, 0, &stamp2)), None)
            .await;
        let answer = poll.await.unwrap().unwrap();
        let status = answer.status().as_u16();
        let polled: Value = answer.json().await.unwrap();
        rec.out.insert(
            "drops_wait".into(),
            json!({"method": "GET", "path": drops_path(cursor, "&wait=30"), "status": status, "response": polled}),
        );
        let cursor = stored2["seq"].as_u64().unwrap();

        // Bob subscribes over a WebSocket; an anonymous drop (no sender inside) is pushed.
        let drops_ws = format!("{}/v1/drops/ws", relay.url.replace("http://", "ws://"));
        let mut frames = serde_json::Map::new();
        let (mut socket, _) = tokio_tungstenite::connect_async(drops_ws.clone()).await.unwrap();
        let subscribe = json!({"bits": 16, "value": prefix.value(), "after": cursor});
        socket.send(WsMessage::Text(subscribe.to_string().into())).await.unwrap();
        frames.insert("subscribe".into(), subscribe);
        frames.insert("subscribed".into(), next_frame(&mut socket).await);
        let (tag3, envelope3) = seal_drop(
            &drop_letter(None, "anon-1", "No return address."),
            None,
            &prefix,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let stamp3 = tokens.next().unwrap().stamp(&tag3, &envelope3);
        rec.call("drop_anonymous", "POST", "/v1/drops", Some(upload(tag3, &envelope3, 3600, &stamp3)), None)
            .await;
        frames.insert("push".into(), next_frame(&mut socket).await);
        drop(socket);
        let (mut socket, _) = tokio_tungstenite::connect_async(drops_ws).await.unwrap();
        let bad = json!({"bits": 8, "value": 1});
        socket.send(WsMessage::Text(bad.to_string().into())).await.unwrap();
        frames.insert("bad_subscribe".into(), bad);
        frames.insert("refusal".into(), next_frame(&mut socket).await);
        let close = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await.unwrap();
        match close.unwrap().unwrap() {
            WsMessage::Close(Some(frame)) => {
                frames.insert(
                    "close".into(),
                    json!({"code": u16::from(frame.code), "reason": frame.reason.as_str()}),
                );
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        rec.out.insert("drops_ws".into(), Value::Object(frames));

        // Refused drops and fetches.
        let token = tokens.next().unwrap();
        let moved = upload(tag3, &envelope1, 0, &token.stamp(&tag3, &envelope3));
        rec.call("e_postage_invalid", "POST", "/v1/drops", Some(moved), None).await;
        let mut old = token.stamp(&tag3, &envelope3);
        old.epoch = epoch - 2;
        rec.call("e_postage_expired", "POST", "/v1/drops", Some(upload(tag3, &envelope3, 0, &old)), None)
            .await;
        let bad_tag = json!({"tag": "b0b0", "drop": BASE64.encode(&envelope3), "ttl": 0, "postage": stamp3});
        rec.call("e_drop_tag", "POST", "/v1/drops", Some(bad_tag.to_string()), None).await;
        let big = upload(tag3, &vec![0u8; 70_000], 0, &stamp3);
        rec.call("e_drop_too_large", "POST", "/v1/drops", Some(big), None).await;
        rec.call("e_drops_prefix", "GET", "/v1/drops?bits=8&value=1", None, None).await;
        rec.call("e_drops_query", "GET", "/v1/drops?value=5", None, None).await;
        rec.call("e_drops_wait", "GET", &drops_path(0, "&wait=600"), None, None).await;
        rec.call("e_drops_ws_plain", "GET", "/v1/drops/ws", None, None).await;
        let unstamped = json!({"tag": tag3.to_hex(), "drop": BASE64.encode(&envelope3), "ttl": 0});
        rec.call("e_drop_shape", "POST", "/v1/drops", Some(unstamped.to_string()), None).await;
        rec.call("e_postage_shape", "POST", "/v1/postage", Some(json!({"epoch": epoch}).to_string()), None)
            .await;

        // A relay that issues postage to account holders only, and one that takes no drops.
        let accounts_only =
            TestRelay::start_with(Some(&relay_key), |c| c.postage.issue = IssuePolicy::Accounts).await;
        let url = std::mem::replace(&mut rec.url, accounts_only.url.clone());
        let (request, _) = postage::blind(2, epoch, &mut rand_core::OsRng);
        rec.call("e_postage_no_account", "POST", "/v1/postage", Some(request.to_json()), None).await;
        accounts_only.stop().await;
        let closed = TestRelay::start_with(Some(&relay_key), |c| c.drops.enabled = false).await;
        rec.url = closed.url.clone();
        rec.call("e_drops_disabled", "GET", &drops_path(0, ""), None, None).await;
        rec.url = url;
        closed.stop().await;

        rec.call("metrics", "GET", "/metrics", None, None).await;
        let out = std::env::var("OPENAPI_EXAMPLES_OUT").unwrap_or_else(|_| {
            std::env::temp_dir().join("pigeonhole-openapi-examples.json").display().to_string()
        });
        std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(rec.out)).unwrap()).unwrap();
        relay.stop().await;
    }
}
