//! Google's OAuth 2 token endpoint as FCM's service accounts use it (RFC
//! 7523): a JWT the account's key signs (RS256) is exchanged for an access
//! token, which FCM then takes until it expires. The simulator checks the
//! signature with the public key of the account a test trusts, and the
//! FCM endpoint takes only the tokens it issued, unexpired.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

/// The grant type of a signed JWT (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The scope FCM HTTP v1 needs.
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The service account the simulator trusts, and the tokens it issued.
pub struct GoogleAuth {
    email: String,
    key: DecodingKey,
    /// How long an issued token lasts (Google's: an hour).
    lifetime_s: u64,
    /// Issued tokens and when each expires (Unix ms).
    tokens: HashMap<String, i64>,
    issued: u64,
}

#[derive(Deserialize)]
struct Form {
    grant_type: Option<String>,
    assertion: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    scope: String,
    aud: String,
}

fn refuse(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

impl GoogleAuth {
    /// Trusts the service account `email` whose public key is
    /// `public_key_pem`; tokens last `lifetime_s`.
    pub fn new(email: &str, public_key_pem: &str, lifetime_s: u64) -> Result<Self, String> {
        let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        Ok(Self {
            email: email.to_owned(),
            key,
            lifetime_s,
            tokens: HashMap::new(),
            issued: 0,
        })
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// `POST /token`: a token for a well-signed, current assertion.
    pub fn token(&mut self, body: &[u8], now_ms: i64) -> Response {
        let Ok(form) = serde_urlencoded::from_bytes::<Form>(body) else {
            return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Bad Request");
        };
        if form.grant_type.as_deref() != Some(JWT_BEARER) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type",
            );
        }
        let Some(assertion) = form.assertion else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing assertion",
            );
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.email]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        v.validate_aud = false;
        let claims = match jsonwebtoken::decode::<Claims>(&assertion, &self.key, &v) {
            Ok(d) => d.claims,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::InvalidSignature => "Invalid JWT Signature.",
                    ErrorKind::ExpiredSignature => "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
                    ErrorKind::InvalidIssuer => "Invalid grant: account not found",
                    _ => "Invalid JWT",
                };
                return refuse(StatusCode::BAD_REQUEST, "invalid_grant", why);
            }
        };
        if !claims.aud.ends_with("/token") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid JWT: audience is not the token endpoint",
            );
        }
        if !claims.scope.split(' ').any(|s| s == FCM_SCOPE) {
            return refuse(StatusCode::BAD_REQUEST, "invalid_scope", "Invalid scope");
        }
        self.issued += 1;
        let token = format!("ya29.sim-{}-{}", self.issued, rand::random::<u64>());
        let lifetime_ms = i64::try_from(self.lifetime_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.tokens.retain(|_, exp| *exp > now_ms);
        self.tokens
            .insert(token.clone(), now_ms.saturating_add(lifetime_ms));
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({"access_token": token, "expires_in": self.lifetime_s, "token_type": "Bearer"})
                .to_string(),
        )
            .into_response()
    }

    /// FCM's refusal of a bearer token it did not issue, or that expired.
    pub fn check(&self, headers: &HeaderMap, now_ms: i64) -> Option<Response> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.and_then(|t| self.tokens.get(t)) {
            Some(exp) if *exp > now_ms => None,
            _ => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [("content-type", "application/json")],
                    json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "status": "UNAUTHENTICATED"}})
                        .to_string(),
                )
                    .into_response(),
            ),
        }
    }
}
