//! Request bodies: the media type, the size limit and JSON parsing that tells
//! malformed JSON (400) from a well-formed body of the wrong shape (422, with
//! the path of the offending field).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};

use super::problem::ApiError;

/// Reads the body, mapping the size limit to 413 and checking the media type.
pub fn body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::MalformedJson(rej.body_text())
        }
    })
}

/// Parses JSON, telling malformed JSON (400) from a well-formed body of the
/// wrong shape (422, with the path of the offending field).
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = match (prefix.is_empty(), path == ".") {
                    (true, true) => "body".to_owned(),
                    (true, false) => path,
                    (false, true) => prefix.to_owned(),
                    (false, false) => format!("{prefix}.{path}"),
                };
                ApiError::field(field, strip_position(&inner.to_string()))
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}
