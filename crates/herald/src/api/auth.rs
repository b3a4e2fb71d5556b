//! API keys: `Authorization: Bearer <key>`. Keys are stored as SHA-256
//! hashes; a key belongs to one tenant and has scopes (`send`, `read`,
//! `admin`). Lookups are cached in memory (keys are 256-bit random, so the
//! hash is a safe cache key).
//!
//! Handlers say what they need by the extractor they take: [`Sender`],
//! [`Reader`] or [`Admin`], each the tenant of a key with that scope; a
//! known key without it is a 403 naming the scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use herald_core::store::{KeyGrant, Scopes, Tenants};
use sha2::{Digest, Sha256};

use super::problem::ApiError;
use super::AppState;

/// The tenant of a key with the `send` scope.
#[derive(Debug, Clone)]
pub struct Sender(pub String);

/// The tenant of a key with the `read` scope.
#[derive(Debug, Clone)]
pub struct Reader(pub String);

/// The tenant of a key with the `admin` scope.
#[derive(Debug, Clone)]
pub struct Admin(pub String);

/// A fresh API key: `hrld_` + 32 random bytes, base64url.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "hrld_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

#[derive(Default)]
pub struct KeyCache {
    known: Mutex<HashMap<Vec<u8>, KeyGrant>>,
}

impl KeyCache {
    /// The key's tenant and scopes, if it is a key.
    pub async fn grant(
        &self,
        tenants: &dyn Tenants,
        key: &str,
    ) -> Result<Option<KeyGrant>, ApiError> {
        let hash = hash_key(key);
        if let Some(g) = self.lock().get(&hash) {
            return Ok(Some(g.clone()));
        }
        let grant = tenants.key_grant(&hash).await?;
        if let Some(g) = &grant {
            let mut known = self.lock();
            if known.len() > 100_000 {
                known.clear();
            }
            known.insert(hash, g.clone());
        }
        Ok(grant)
    }

    /// The tenant of `key` when it has every scope in `need`.
    pub async fn authorize(
        &self,
        tenants: &dyn Tenants,
        key: &str,
        need: Scopes,
    ) -> Result<String, ApiError> {
        match self.grant(tenants, key).await? {
            None => Err(ApiError::Unauthorized),
            Some(g) if !g.scopes.allows(need) => Err(ApiError::Forbidden(need)),
            Some(g) => Ok(g.tenant_id),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, KeyGrant>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// matched case-insensitively (RFC 9110 §11.1), and may be followed by
/// more than one space.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// The tenant of the request's key, when the key has `need`.
async fn authorize(parts: &Parts, state: &AppState, need: Scopes) -> Result<String, ApiError> {
    let key = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .filter(|k| k.len() <= 256)
        .ok_or(ApiError::Unauthorized)?;
    state
        .keys
        .authorize(state.tenants.as_ref(), key, need)
        .await
}

macro_rules! scoped {
    ($extractor:ident, $scope:expr) => {
        impl FromRequestParts<Arc<AppState>> for $extractor {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &Arc<AppState>,
            ) -> Result<Self, Self::Rejection> {
                authorize(parts, state, $scope).await.map($extractor)
            }
        }
    };
}

scoped!(Sender, Scopes::SEND);
scoped!(Reader, Scopes::READ);
scoped!(Admin, Scopes::ADMIN);

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "BeArEr   k1",
            "Bearer\tk1",
            " Bearer k1 ",
        ] {
            assert_eq!(bearer_token(v), Some("k1"), "{v:?}");
        }
        for v in [
            "Basic k1",
            "Bearer",
            "Bearer ",
            "Bearerk1",
            "Bearer a b",
            "Token k1",
            "",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
