//! APNs' provider tokens as Apple checks them: a JWT signed ES256 with the
//! team's `.p8` key, `kid` naming the key, `iss` the team, `iat` within the
//! last hour. The simulator checks them against the public key of the key
//! a test trusts.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

pub struct AppleAuth {
    team_id: String,
    key_id: String,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

fn refuse(reason: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [("content-type", "application/json")],
        json!({"reason": reason}).to_string(),
    )
        .into_response()
}

impl AppleAuth {
    pub fn new(team_id: &str, key_id: &str, public_key_pem: &str) -> Result<Self, String> {
        let key = DecodingKey::from_ec_pem(public_key_pem.as_bytes())
            .map_err(|e| format!("not an EC public key: {e}"))?;
        Ok(Self {
            team_id: team_id.to_owned(),
            key_id: key_id.to_owned(),
            key,
        })
    }

    /// `None` when the request's provider token is good; else APNs' 403.
    pub fn check(&self, headers: &HeaderMap, now_ms: i64) -> Option<Response> {
        let Some(jwt) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bearer "))
        else {
            return Some(refuse("MissingProviderToken"));
        };
        let header = match jsonwebtoken::decode_header(jwt) {
            Ok(h) => h,
            Err(_) => return Some(refuse("InvalidProviderToken")),
        };
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(&self.key_id) {
            return Some(refuse("InvalidProviderToken"));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let claims = match jsonwebtoken::decode::<Claims>(jwt, &self.key, &v) {
            Ok(c) => c.claims,
            Err(_) => return Some(refuse("InvalidProviderToken")),
        };
        if claims.iss != self.team_id {
            return Some(refuse("InvalidProviderToken"));
        }
        if now_ms / 1000 - claims.iat > 3600 {
            return Some(refuse("ExpiredProviderToken"));
        }
        None
    }
}
