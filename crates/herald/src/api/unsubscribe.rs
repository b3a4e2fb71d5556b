//! One-click unsubscribe (RFC 8058). An email of a category its tenant does
//! not require, sent to a stored recipient, carries `List-Unsubscribe:
//! <https://herald.example.com/v1/unsubscribe/TOKEN>` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The mailbox
//! provider POSTs to that URL when the person clicks "unsubscribe": no API
//! key, the token is the credential. It records the opt-out (the category,
//! by email) in the recipient's preferences. A `GET` (a person following
//! the link, or a scanner) only shows a page with a button that POSTs.
//!
//! The token is `KEY_ID.PAYLOAD.SIGNATURE`: the payload names the tenant,
//! the recipient and the category (base64url JSON), the signature is
//! HMAC-SHA256 over `KEY_ID.PAYLOAD` with that key. So a token cannot be
//! forged, nor moved to another tenant, recipient or category; using it
//! again records the same opt-out again.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use herald_core::model::Channel;
use herald_core::secret::Secret;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::problem::ApiError;
use super::AppState;

/// What an unsubscribe link is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "t")]
    pub tenant_id: String,
    #[serde(rename = "r")]
    pub recipient_id: String,
    #[serde(rename = "c")]
    pub category: String,
}

/// The keys links are signed with: the first signs, all verify.
#[derive(Clone)]
pub struct Keys(Vec<(String, Vec<u8>)>);

impl Keys {
    /// From `ID:SECRET` entries (the secret base64, 16 bytes or more).
    pub fn parse(entries: &[Secret]) -> Result<Keys, String> {
        let mut keys = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let (id, secret) = e
                .expose()
                .split_once(':')
                .ok_or_else(|| format!("unsubscribe.keys[{i}]: must be ID:SECRET"))?;
            let ok_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_id {
                return Err(format!(
                    "unsubscribe.keys[{i}]: the id must be 1 to 32 of A-Z, a-z, 0-9, '-', '_'"
                ));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .map_err(|_| format!("unsubscribe.keys[{i}]: the secret is not base64"))?;
            if raw.len() < 16 {
                return Err(format!(
                    "unsubscribe.keys[{i}]: the secret must be 16 bytes or more"
                ));
            }
            keys.push((id.to_owned(), raw));
        }
        Ok(Keys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mac(secret: &[u8], signed: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(signed.as_bytes());
        mac
    }

    /// The token for `subject`, signed with the first key.
    pub fn sign(&self, subject: &Subject) -> Option<String> {
        let (id, secret) = self.0.first()?;
        let payload = B64.encode(serde_json::to_vec(subject).ok()?);
        let signed = format!("{id}.{payload}");
        let sig = B64.encode(Self::mac(secret, &signed).finalize().into_bytes());
        Some(format!("{signed}.{sig}"))
    }

    /// What a token is about, if one of the keys signed it.
    pub fn verify(&self, token: &str) -> Option<Subject> {
        let mut parts = token.splitn(3, '.');
        let (id, payload, sig) = (parts.next()?, parts.next()?, parts.next()?);
        let (_, secret) = self.0.iter().find(|(k, _)| k == id)?;
        let sig = B64.decode(sig).ok()?;
        Self::mac(secret, &format!("{id}.{payload}"))
            .verify_slice(&sig)
            .ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

/// Where links point and what signs them.
pub struct Links {
    /// `server.public_url` (or the sandbox's own address).
    pub base: String,
    pub keys: Keys,
}

impl Links {
    pub fn url(&self, subject: &Subject) -> Option<String> {
        Some(format!(
            "{}/v1/unsubscribe/{}",
            self.base,
            self.keys.sign(subject)?
        ))
    }
}

fn subject(state: &AppState, token: Result<Path<String>, PathRejection>) -> Option<Subject> {
    let Ok(Path(token)) = token else {
        return None;
    };
    state.unsubscribe.as_ref()?.keys.verify(&token)
}

/// A small page for a person (the link's successes; its errors are
/// problem documents like every other /v1 error).
fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page a person following an unsubscribe link sees: what it is about
/// and a button that confirms (a `GET` changes nothing, so link scanners
/// do not unsubscribe anyone).
#[utoipa::path(
    get,
    path = "/v1/unsubscribe/{token}",
    tag = "recipients",
    params(("token" = String, Path, description = "The signed token from the email's List-Unsubscribe link")),
    responses(
        (status = 200, description = "A page with a button that confirms", content_type = "text/html", body = String),
        (status = 404, description = "Not a link Herald made (or one changed since)", body = super::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    token: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let s = subject(&state, token).ok_or(ApiError::NotFound)?;
    Ok(page(
        "Unsubscribe",
        &format!(
            "<p>Stop emails about <strong>{}</strong>?</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>",
            escape(&s.category)
        ),
    ))
}

/// The form a mailbox provider posts for a one-click unsubscribe (RFC
/// 8058), as the OpenAPI document describes it (a form is an object of
/// fields). Herald reads none of it: the signed token is the request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OneClick {
    /// `One-Click`.
    #[schema(rename = "List-Unsubscribe")]
    list_unsubscribe: String,
}

/// One-click unsubscribe (RFC 8058): records that the recipient opted out
/// of the link's category by email. No API key: the signed token is the
/// credential. Using a link again changes nothing more.
#[utoipa::path(
    post,
    path = "/v1/unsubscribe/{token}",
    tag = "recipients",
    params(("token" = String, Path, description = "The signed token from the email's List-Unsubscribe link")),
    request_body(content = OneClick, description = "`List-Unsubscribe=One-Click` (form), as mailbox providers send it; any body is taken", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Unsubscribed (also when the recipient was erased since)", content_type = "text/html", body = String),
        (status = 404, description = "Not a link Herald made (or one changed since)", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    )
)]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    token: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let s = subject(&state, token).ok_or(ApiError::NotFound)?;
    opt_out(&state, &s).await?;
    metrics::counter!(crate::telemetry::UNSUBSCRIBED).increment(1);
    Ok(page(
        "Unsubscribed",
        &format!(
            "<p>You will no longer get emails about <strong>{}</strong>.</p>",
            escape(&s.category)
        ),
    ))
}

/// Sets the recipient's preference for the category by email to off
/// (read, change, write over the version read; read again if the
/// recipient changed meanwhile).
async fn opt_out(state: &AppState, s: &Subject) -> Result<(), ApiError> {
    for _ in 0..3 {
        let Some(r) = state
            .recipients
            .recipients(&s.tenant_id, std::slice::from_ref(&s.recipient_id))
            .await?
            .into_iter()
            .next()
        else {
            // Erased since: nothing is sent to them anyway.
            return Ok(());
        };
        let mut prefs = r.preferences.clone();
        let by_channel = prefs.categories.entry(s.category.clone()).or_default();
        if by_channel.get(&Channel::Email) == Some(&false) {
            return Ok(());
        }
        by_channel.insert(Channel::Email, false);
        // Only over the version read: a write in between is read again.
        let written = state
            .recipients
            .set_preferences(
                &s.tenant_id,
                &s.recipient_id,
                prefs,
                Some(r.version),
                herald_core::now_ms(),
            )
            .await?;
        if written.is_some() {
            tracing::info!(tenant = %s.tenant_id, category = %s.category, "a recipient unsubscribed by one click");
            return Ok(());
        }
    }
    Err(ApiError::Conflict(
        "the recipient's preferences kept changing; try again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[&str]) -> Keys {
        Keys::parse(&entries.iter().map(|e| Secret::new(*e)).collect::<Vec<_>>()).expect("keys")
    }

    fn ada() -> Subject {
        Subject {
            tenant_id: "t1".into(),
            recipient_id: "user-42 é".into(),
            category: "marketing".into(),
        }
    }

    #[test]
    fn a_token_verifies_and_a_changed_one_does_not() {
        let k = keys(&["k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ="]);
        let token = k.sign(&ada()).expect("signed");
        assert!(token.starts_with("k1."));
        assert_eq!(k.verify(&token), Some(ada()));
        // Another subject's payload under this signature.
        let other = Subject {
            tenant_id: "t2".into(),
            ..ada()
        };
        let forged_payload = B64.encode(serde_json::to_vec(&other).expect("json"));
        let parts: Vec<&str> = token.split('.').collect();
        let moved = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(k.verify(&moved), None, "moved to another tenant");
        assert_eq!(k.verify(&format!("{token}x")), None);
        assert_eq!(k.verify("k1.e30.AAAA"), None);
        assert_eq!(k.verify(""), None);
        assert_eq!(
            keys(&["k1:b3RoZXItb3RoZXItb3RoZXI="]).verify(&token),
            None,
            "another secret"
        );
    }

    #[test]
    fn keys_rotate_the_first_signs_and_all_verify() {
        let old = keys(&["k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ="]);
        let rotated = keys(&[
            "k2:bmV3LW5ldy1uZXctbmV3LW5ldw==",
            "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        ]);
        let before = old.sign(&ada()).expect("signed");
        assert_eq!(rotated.verify(&before), Some(ada()), "old links still work");
        assert!(rotated.sign(&ada()).expect("signed").starts_with("k2."));
        let retired = keys(&["k2:bmV3LW5ldy1uZXctbmV3LW5ldw=="]);
        assert_eq!(
            retired.verify(&before),
            None,
            "until the old key is dropped"
        );
    }

    #[test]
    fn bad_keys_are_refused_naming_the_entry() {
        for bad in [
            "nocolon",
            ":c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            "k1:short",
            "k 1:c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        ] {
            let err = Keys::parse(&[Secret::new(bad)]).err().expect("refused");
            assert!(err.starts_with("unsubscribe.keys[0]"), "{bad}: {err}");
        }
    }
}
