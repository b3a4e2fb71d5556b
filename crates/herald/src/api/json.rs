//! Request bodies: the media type, the size limit and JSON parsing that tells
//! malformed JSON (400) from a well-formed body of the wrong shape (422, with
//! the path of the offending field).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};

use serde_json::json;

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
    bytes(body, limit)
}

/// The body as it came, whatever its media type (a vendor's callback),
/// mapping the size limit to 413.
pub fn bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::MalformedJson(rej.body_text())
        }
    })
}

/// Parses one JSON document, telling malformed JSON (400) from a
/// well-formed body of the wrong shape (422, with the path of the offending
/// field). Anything after the document but whitespace is malformed: a
/// second document (two batches run together) is never silently dropped.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| {
                ApiError::MalformedJson(format!(
                    "{}: the body must be one JSON document and nothing after it",
                    strip_position(&e.to_string())
                ))
            })?;
            Ok(v)
        }
        Err(e) => {
            // Only a body that is not one well-formed document is malformed
            // (400); the shape is judged only then (422), so a wrong field
            // met before a syntax error does not hide it.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                return Err(ApiError::MalformedJson(syntax.to_string()));
            }
            if e.inner().classify() == serde_json::error::Category::Data {
                return Err(field_error(e, prefix));
            }
            // serde_json reports some wrong types as syntax errors (a number
            // or null where an enum's name goes: "expected value"); reading
            // the document as a value finds the field.
            let value: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            serde_path_to_error::deserialize::<_, T>(value).map_err(|e| field_error(e, prefix))
        }
    }
}

/// A JSON value (one a request built, e.g. a merge patch applied) as `T`,
/// a wrong shape a 422 naming the field.
pub fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| field_error(e, prefix))
}

/// A data error as a 422 naming the field (its path under `prefix`).
fn field_error(e: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let mut path = e.path().to_string();
    let inner = e.into_inner();
    let reason = strip_position(&inner.to_string());
    // A required field that is not there is named itself, not its parent.
    if let Some(missing) = reason
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        path = if path == "." {
            missing.to_owned()
        } else {
            format!("{path}.{missing}")
        };
    }
    let field = match (prefix.is_empty(), path == ".") {
        (true, true) => "body".to_owned(),
        (true, false) => path,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    };
    ApiError::field(field, reason)
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Query strings are parsed strictly: an unknown or repeated parameter is a
/// 422 naming it, not silently ignored (`limit` is a number, the rest text).
pub fn query_args<T: serde::de::DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        let value = if k == "limit" {
            match v.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => return Err(ApiError::field("limit", "must be a whole number")),
            }
        } else {
            json!(v)
        };
        if map.insert(k.to_string(), value).is_some() {
            return Err(ApiError::field(k.to_string(), "is given more than once"));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
        let msg = e.to_string();
        ApiError::field("query", msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::model::NotificationRequest;

    /// Status and the fields named, for a body.
    fn outcome(body: &str) -> (u16, Vec<String>) {
        match parse::<NotificationRequest>(body.as_bytes(), "") {
            Ok(_) => (200, vec![]),
            Err(e) => {
                let p = e.problem();
                (p.status, p.errors.iter().map(|e| e.field.clone()).collect())
            }
        }
    }

    #[test]
    fn wrong_types_on_enum_fields_name_the_field() {
        let base = r#""recipient": {"phone": "+14155550100"}, "content": {"text": "x"}"#;
        for (body, field) in [
            (format!(r#"{{"priority": null, "channels": ["sms"], {base}}}"#), "priority"),
            (format!(r#"{{"priority": 1, "channels": ["sms"], {base}}}"#), "priority"),
            (format!(r#"{{"priority": [], "channels": ["sms"], {base}}}"#), "priority"),
            (format!(r#"{{"priority": {{}}, "channels": ["sms"], {base}}}"#), "priority"),
            (format!(r#"{{"channels": [1], {base}}}"#), "channels[0]"),
            (format!(r#"{{"channels": [null], {base}}}"#), "channels[0]"),
            (
                r#"{"channels": ["push"], "recipient": {"push_tokens": [{"platform": 1, "token": "x"}]}}"#.to_owned(),
                "recipient.push_tokens[0].platform",
            ),
        ] {
            assert_eq!(outcome(&body), (422, vec![field.to_owned()]), "{body}");
        }
    }

    #[test]
    fn a_missing_required_field_is_named_itself() {
        let tokenless =
            r#"{"channels": ["push"], "recipient": {"push_tokens": [{"platform": "ios"}]}}"#;
        assert_eq!(
            outcome(tokenless),
            (422, vec!["recipient.push_tokens[0].token".to_owned()])
        );
        assert_eq!(
            outcome(r#"{"recipient": {}}"#),
            (422, vec!["channels".to_owned()])
        );
    }

    #[test]
    fn anything_after_the_document_is_malformed() {
        let one = r#"{"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}}"#;
        assert_eq!(outcome(one).0, 200);
        assert_eq!(
            outcome(&format!("{one}\n \t")).0,
            200,
            "trailing whitespace is fine"
        );
        for tail in [" xyz", " {}", "1", "]", " \u{0}"] {
            assert_eq!(outcome(&format!("{one}{tail}")).0, 400, "{tail:?}");
        }
        assert_eq!(outcome(&format!("{one}{one}")).0, 400, "two documents");
    }

    #[test]
    fn broken_json_is_malformed() {
        for body in [
            "",
            "{",
            "{\"channels\": [",
            "nul",
            "{\"a\" 1}",
            "\u{feff}{}",
        ] {
            assert_eq!(outcome(body).0, 400, "{body:?}");
        }
    }
}
