//! `spec/openapi.json` against the relay: the document is valid JSON for OpenAPI 3.1, names
//! exactly the routes the router serves, documents the error statuses each endpoint can answer
//! with, its request and receipt examples are real (they parse and their signatures verify),
//! and the relay serves it byte for byte at `GET /v1/openapi.json`.
//!
//! The examples were made by a running relay: `generate_examples` (ignored; run it with
//! `cargo test -p pigeonhole-relay --test openapi -- --ignored generate_examples`) starts one
//! with a fixed key, makes every kind of request with fixed client keys, and writes what was
//! sent and answered to `$OPENAPI_EXAMPLES_OUT` (default: a file in the temp directory).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::receipt::{RelayDocument, RelayInfo, UsageReport, WriteReceipt};
use pigeonhole_proto::request::{Message, SignedMessage};
use pigeonhole_relay::config::RelayConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const DOCUMENT: &str = include_str!("../../../spec/openapi.json");
const ROUTER_SOURCE: &str = include_str!("../src/http.rs");

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("spec/openapi.json is JSON")
}

// ---------------------------------------------------------------------------------------------
// A relay in process.

struct TestRelay {
    url: String,
    key: PublicKey,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    /// Starts a relay; with `key`, the relay signs with that key (written to its data directory).
    async fn start(key: Option<&SecretKey>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(key) = key {
            std::fs::write(dir.path().join("relay.key"), hex::encode(*key.to_bytes())).unwrap();
        }
        let config = RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().to_owned(),
            ..RelayConfig::default()
        };
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pigeonhole_relay::server::serve(
                config,
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        let addr = addr_rx.await.unwrap();
        let url = format!("http://{addr}");
        let health: Value = reqwest::get(format!("{url}/health")).await.unwrap().json().await.unwrap();
        let key = PublicKey::from_hex(health["relay"].as_str().unwrap()).unwrap();
        Self { url, key, stop: Some(stop), task: Some(task), _dir: dir }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// (a) and (e): the document, as a file and as served.

#[test]
fn the_document_is_openapi_3_1_json() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    // Pretty-printed with two spaces and a final newline, like the rest of spec/.
    let pretty = serde_json::to_string_pretty(&doc).unwrap();
    assert_eq!(pretty.lines().count(), DOCUMENT.trim_end().lines().count(), "not pretty-printed");
    assert!(DOCUMENT.ends_with("}\n"));
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
    let relay = TestRelay::start(None).await;
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
            if *status >= 400 && path != "/v1/ws" {
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
    assert_eq!(codes.len(), 19, "§11.3 lists 19 codes");
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(documented, codes.keys().cloned().collect(), "Error.code enum vs §11.3");
    let source = include_str!("../src/error.rs");
    for code in codes.keys() {
        assert!(source.contains(&format!("=> \"{code}\"")), "`{code}` is not an ErrorCode");
    }
    codes
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
                let message = parse_request(example);
                if message.request.type_name() != "write" {
                    assert_eq!(message.to, relay, "{method} {path}: `to` is not the example relay");
                }
                checked += 1;
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

#[test]
fn every_example_record_receipt_and_document_verifies() {
    let doc = document();
    let relay = example_relay(&doc);
    let mut counts = BTreeMap::<&str, usize>::new();
    walk(&doc, &mut |value| {
        let Some(object) = value.as_object() else { return };
        // Any `{"msg": {...}}` anywhere (request bodies, stored records, WebSocket frames).
        if object.get("msg").is_some_and(Value::is_object) && !object.contains_key("type") {
            let mut request = value.clone();
            if let Some(map) = request.as_object_mut() {
                map.remove("id");
            }
            parse_request(&request);
            *counts.entry("msg").or_default() += 1;
        }
        if let Some(receipt) = object.get("receipt").filter(|r| r.is_object()) {
            let parsed = WriteReceipt::from_json(&receipt.to_string()).unwrap();
            parsed.verify(&relay).unwrap();
            *counts.entry("receipt").or_default() += 1;
        }
        // `/v1/info` and `/v1/usage` answers: the document verifies and says what the JSON says.
        if let Some(document) = object.get("document").and_then(Value::as_str) {
            let bytes = BASE64.decode(document).unwrap();
            let document = RelayDocument::from_bytes(&bytes).unwrap();
            if let Some(info) = object.get("info") {
                let signed = RelayInfo::from_document(&document, &relay).unwrap();
                assert_eq!(serde_json::to_value(&signed).unwrap(), *info);
                assert_eq!(object["timestamp"], document.timestamp);
                *counts.entry("info").or_default() += 1;
            } else {
                let signed = UsageReport::from_document(&document, &relay).unwrap();
                assert_eq!(serde_json::to_value(&signed).unwrap(), object["report"]);
                *counts.entry("usage").or_default() += 1;
            }
        }
    });
    // Schema-level examples of the receipt itself.
    for example in doc["components"]["schemas"]["WriteReceipt"]["examples"].as_array().unwrap() {
        WriteReceipt::from_json(&example.to_string()).unwrap().verify(&relay).unwrap();
    }
    for what in ["msg", "receipt", "info", "usage"] {
        assert!(counts.get(what).copied().unwrap_or(0) > 0, "no `{what}` example found: {counts:?}");
    }
}
