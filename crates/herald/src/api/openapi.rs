//! The OpenAPI 3.1 document, generated from the API's types and handlers
//! (`types.rs`, the `#[utoipa::path]` on each handler): served at
//! `GET /openapi.json` and committed as `docs/openapi.json` (a test fails
//! when the two differ: `herald openapi > docs/openapi.json` brings the
//! file up to date).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A notification engine: email, SMS, push, webhooks and chat, with priority lanes, failover and idempotency end to end. Errors are application/problem+json (RFC 9457).",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::notifications::create,
        super::notifications::batch,
        super::notifications::get,
        super::notifications::cancel,
        super::notifications::cancel_by_key,
        super::resilience::providers,
        super::circuits::put_hold,
        super::circuits::delete_hold,
        super::resilience::list,
        super::resilience::replay_one,
        super::resilience::replay_many,
        super::suppressions::list,
        super::suppressions::put,
        super::suppressions::lift,
        super::receipts::receive,
        super::callbacks::get,
        super::callbacks::put,
        super::callbacks::delete,
        super::recipients::put,
        super::recipients::get,
        super::recipients::patch,
        super::recipients::delete,
        super::recipients::get_preferences,
        super::recipients::put_preferences,
        super::recipients::get_defaults,
        super::recipients::put_defaults,
        super::unsubscribe::show,
        super::unsubscribe::confirm,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
    ),
    components(schemas(super::problem::Problem, herald_core::validate::FieldError)),
    modifiers(&ApiKeys),
    tags(
        (name = "notifications", description = "Send and follow notifications"),
        (name = "providers", description = "Vendor accounts and their circuits"),
        (name = "dead letters", description = "Deliveries that used up their attempts"),
        (name = "callbacks", description = "Where Herald tells a tenant what became of its notifications"),
        (name = "receipts", description = "What vendors report after they took a message, posted back by them"),
        (name = "recipients", description = "The people a tenant notifies, by its own id for each: addresses, locale, time zone, template data"),
        (name = "suppressions", description = "Addresses not to send to: bounces, complaints, opt-outs, dead tokens, gone endpoints"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// `Authorization: Bearer <API key>` (`herald keys create`).
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `herald keys create --tenant NAME`"))
                    .build(),
            ),
        );
    }
}

/// The document, as JSON (pretty, with a final newline: as committed).
pub fn document() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    /// The committed document is the one the code generates.
    #[test]
    fn docs_openapi_json_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::document(),
            "docs/openapi.json is not what the code generates: run `cargo run -p herald -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_operation_says_what_its_errors_look_like() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 10, "{}", paths.len());
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("ops") {
                for (status, resp) in op["responses"].as_object().expect("responses") {
                    let code: u16 = status.parse().expect("a status");
                    if code >= 400 && path.starts_with("/v1/") {
                        assert!(
                            resp["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status} is not a problem document"
                        );
                    }
                }
            }
        }
    }
}
