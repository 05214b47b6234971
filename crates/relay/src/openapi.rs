//! The relay's OpenAPI description, served at `GET /v1/openapi.json`. The document lives in
//! `spec/openapi.json` beside the normative protocol, and a test checks that it names every
//! route the router serves.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The OpenAPI 3.1 document, as shipped in the binary.
pub const OPENAPI_JSON: &str = include_str!("../../../spec/openapi.json");

/// `GET /v1/openapi.json`.
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
