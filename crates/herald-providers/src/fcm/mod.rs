//! Firebase Cloud Messaging, HTTP v1. Auth: `Authorization: Bearer <OAuth 2
//! access token>`, from a service account (its key signs a JWT, RS256,
//! which Google's token endpoint exchanges for an hour's access token; the
//! engine keeps it per account and renews it before it expires), or a
//! static `access_token` for tests. FCM has no idempotency key: the
//! delivery key is sent as `Idempotency-Key` and in
//! `data.herald_delivery_key` so the app can drop a repeat
//! (docs/providers.md).

pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

use herald_core::model::{Priority, PushPlatform};
use herald_core::provider::{
    classify_status, AccessToken, Address, BuildError, OutboundMessage, Outcome, Provider,
    VendorRequest, VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The Firebase project; by default the service account's.
    #[serde(default)]
    pub project_id: String,
    /// A service account's key file, as Google's console downloads it.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// The same file's JSON itself (e.g. from an environment variable,
    /// `HERALD__PROVIDERS__FCM__SERVICE_ACCOUNT_JSON`).
    #[serde(default)]
    pub service_account_json: Option<Secret>,
    /// A fixed OAuth 2 access token instead (tests: it expires within
    /// the hour).
    #[serde(default)]
    pub access_token: Option<Secret>,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// The OAuth 2 scope for sending with FCM HTTP v1.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of a service account's signed JWT (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion asks the token to last: Google's maximum.
const ASSERTION_SECONDS: i64 = 3600;

/// The fields of a Google service account key file Herald uses.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: Secret,
    client_email: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// A service account: who it is, its key, and where it gets tokens.
struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
    token_uri: String,
}

#[derive(serde::Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

enum Auth {
    /// `Authorization` as configured.
    Static(String),
    /// Access tokens for the service account, which the engine gets with
    /// `token_request` and puts on each request.
    ServiceAccount(Box<ServiceAccount>),
}

pub struct Fcm {
    name: String,
    url: String,
    auth: Auth,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Static(_) => "access_token".to_owned(),
            Auth::ServiceAccount(sa) => format!("service account {}", sa.email),
        };
        f.debug_struct("Fcm")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("auth", &auth)
            .finish()
    }
}

impl Fcm {
    /// The adapter for account `name`, or what is wrong with its settings
    /// (the service account file is read here, once).
    pub fn new(name: &str, cfg: FcmConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: FcmConfig) -> Result<Self, String> {
        // An empty setting (a layer of config clearing it) is no setting.
        let given = |s: &Option<Secret>| s.clone().filter(|s| !s.is_empty());
        let (json, token) = (given(&cfg.service_account_json), given(&cfg.access_token));
        let file = cfg
            .service_account_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let json = match (&file, &json) {
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("service_account_file {}: {e}", path.display()))?,
            ),
            (None, Some(json)) => Some(json.expose().to_owned()),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err("give service_account_file or service_account_json, not both".into())
            }
        };
        let (auth, project) = match (json, &token) {
            (Some(json), None) => {
                let (sa, project) = service_account(&json)?;
                (Auth::ServiceAccount(Box::new(sa)), project)
            }
            (None, Some(token)) => (Auth::Static(format!("Bearer {}", token.expose())), None),
            (None, None) => return Err(
                "a service_account_file (or service_account_json), or an access_token, is required"
                    .into(),
            ),
            (Some(_), Some(_)) => {
                return Err("give a service account or an access_token, not both".into())
            }
        };
        let project_id = match (cfg.project_id.as_str(), project) {
            ("", Some(p)) => p,
            ("", None) => return Err("project_id is required".into()),
            (p, _) => p.to_owned(),
        };
        if !project_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "project_id {project_id:?} is not a Firebase project id"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            url: format!(
                "{}/v1/projects/{project_id}/messages:send",
                crate::base_url(&cfg.base_url)?,
            ),
            auth,
        })
    }
}

/// A service account key file's JSON: the account, and its project.
fn service_account(json: &str) -> Result<(ServiceAccount, Option<String>), String> {
    let file: KeyFile = serde_json::from_str(json)
        .map_err(|e| format!("the service account is not a key file: {e}"))?;
    if file.kind != "service_account" {
        return Err(format!(
            "the key file's type is {:?}, not \"service_account\"",
            file.kind
        ));
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.expose().as_bytes())
        .map_err(|e| format!("the service account's private_key is not an RSA key: {e}"))?;
    let token_uri = crate::base_url(&file.token_uri)?;
    Ok((
        ServiceAccount {
            email: file.client_email,
            key_id: file.private_key_id,
            key,
            token_uri,
        },
        file.project_id,
    ))
}

impl Provider for Fcm {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "fcm"
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Push { platform, token } = &msg.address else {
            return Err(BuildError::WrongAddress("a non-push address"));
        };
        if msg.content.text.is_none() && msg.content.subject.is_none() {
            return Err(BuildError::MissingContent("text or subject"));
        }
        let urgent = matches!(msg.priority, Priority::Critical | Priority::High);
        let mut data = BTreeMap::new();
        data.insert("herald_delivery_key".to_owned(), msg.delivery_key.clone());
        data.insert(
            "herald_notification_id".to_owned(),
            msg.notification_id.clone(),
        );
        if let Some(meta) = &msg.metadata {
            for (k, v) in meta {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                data.entry(k.clone()).or_insert(v);
            }
        }
        let message = wire::Message {
            token: token.clone(),
            notification: Some(wire::Notification {
                title: msg.content.subject.clone(),
                body: msg.content.text.clone(),
            }),
            data,
            // Both platforms are told when the message goes stale, so a
            // phone that was offline does not show an expired code.
            android: (*platform == PushPlatform::Android).then(|| wire::AndroidConfig {
                priority: if urgent { "HIGH" } else { "NORMAL" }.into(),
                ttl: msg.seconds_left().map(|s| format!("{s}s")),
            }),
            apns: (*platform == PushPlatform::Ios).then(|| {
                let mut headers = BTreeMap::from([(
                    "apns-priority".to_owned(),
                    if urgent { "10" } else { "5" }.to_owned(),
                )]);
                if let Some(exp) = msg.expires_at_ms {
                    headers.insert("apns-expiration".to_owned(), (exp / 1000).to_string());
                }
                wire::ApnsConfig { headers }
            }),
        };
        let auth: &[(&str, &str)] = match &self.auth {
            Auth::Static(header) => &[("authorization", header)],
            // The engine puts the account's current token on it.
            Auth::ServiceAccount(_) => &[],
        };
        crate::post(
            &self.url,
            "application/json",
            &msg.delivery_key,
            auth,
            crate::json(&wire::SendRequest { message })?,
        )
    }

    fn token_request(&self, now_ms: i64) -> Option<Result<VendorRequest, BuildError>> {
        let Auth::ServiceAccount(sa) = &self.auth else {
            return None;
        };
        Some(assertion_request(sa, now_ms))
    }

    fn token_from(&self, resp: &VendorResponse, now_ms: i64) -> Result<AccessToken, Outcome> {
        if resp.status.is_success() {
            let t: wire::TokenResponse =
                serde_json::from_slice(&resp.body).map_err(|e| Outcome::Transient {
                    reason: format!("google token endpoint: unreadable answer: {e}"),
                    ambiguous: false,
                })?;
            return Ok(AccessToken {
                value: Secret::new(t.access_token),
                issued_at_ms: now_ms,
                expires_at_ms: now_ms + t.expires_in.max(1) * 1000,
            });
        }
        let reason = crate::clip(
            &match serde_json::from_slice::<wire::TokenError>(&resp.body) {
                Ok(e) => format!(
                    "google token endpoint {}: {}: {}",
                    resp.status.as_u16(),
                    e.error,
                    e.error_description.unwrap_or_default()
                ),
                Err(_) => format!("google token endpoint HTTP {}", resp.status.as_u16()),
            },
        );
        Err(match classify_status(resp, reason) {
            // A refused grant (a deleted key, a disabled account, a bad
            // signature or scope) is the account's, whatever its status.
            Outcome::Permanent { reason, .. } => Outcome::Account { reason },
            other => other,
        })
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        if resp.status.is_success() {
            let vendor_id = serde_json::from_slice::<wire::SendResponse>(&resp.body)
                .ok()
                .map(|r| r.name);
            return Outcome::Accepted { vendor_id };
        }
        let env = serde_json::from_slice::<wire::ErrorEnvelope>(&resp.body).ok();
        let code = env
            .as_ref()
            .and_then(|e| e.error.details.iter().find_map(|d| d.error_code.clone()));
        let reason = crate::clip(&match &env {
            Some(e) => format!(
                "fcm {} {}: {}",
                resp.status.as_u16(),
                code.as_deref().unwrap_or(&e.error.status),
                e.error.message
            ),
            None => format!("fcm HTTP {}", resp.status.as_u16()),
        });
        match code.as_deref() {
            // The app was uninstalled or the token expired: it will never
            // take a message again.
            Some("UNREGISTERED") => Outcome::Permanent {
                reason,
                gone: Some(SuppressionReason::Unregistered),
            },
            Some("INVALID_ARGUMENT" | "SENDER_ID_MISMATCH") => Outcome::permanent(reason),
            // The project's own credentials (the service account's token,
            // or the APNs certificate or web push key it holds), not the
            // message's: 401/403 `UNAUTHENTICATED`/`PERMISSION_DENIED` are
            // the account's by their status too.
            Some("THIRD_PARTY_AUTH_ERROR" | "UNAUTHENTICATED" | "PERMISSION_DENIED") => {
                Outcome::Account { reason }
            }
            Some("QUOTA_EXCEEDED") => Outcome::RateLimited {
                retry_after: herald_core::provider::retry_after(&resp.headers),
                reason,
            },
            Some("UNAVAILABLE" | "INTERNAL") => Outcome::Transient {
                reason,
                ambiguous: false,
            },
            _ => classify_status(resp, reason),
        }
    }
}

/// The token request: a JWT the service account's key signs at `now_ms`,
/// for the FCM scope, exchanged at its `token_uri` (RFC 7523).
fn assertion_request(sa: &ServiceAccount, now_ms: i64) -> Result<VendorRequest, BuildError> {
    let now = now_ms / 1000;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid.clone_from(&sa.key_id);
    let claims = Assertion {
        iss: &sa.email,
        scope: SCOPE,
        aud: &sa.token_uri,
        iat: now,
        exp: now + ASSERTION_SECONDS,
    };
    let jwt = jsonwebtoken::encode(&header, &claims, &sa.key)
        .map_err(|e| BuildError::Invalid(format!("cannot sign the token assertion: {e}")))?;
    let body = serde_urlencoded::to_string([("grant_type", JWT_BEARER), ("assertion", &jwt)])
        .map_err(|e| BuildError::Invalid(format!("cannot encode the token request: {e}")))?;
    http::Request::post(&sa.token_uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(bytes::Bytes::from(body))
        .map_err(|e| BuildError::Invalid(format!("cannot build the token request: {e}")))
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    fn adapter() -> Fcm {
        Fcm::new(
            "fcm",
            FcmConfig {
                base_url: "http://127.0.0.1:9".into(),
                project_id: "demo-app".into(),
                access_token: Some(Secret::new("ya29.token")),
                service_account_file: None,
                service_account_json: None,
            },
        )
        .expect("valid config")
    }

    #[test]
    fn builds_a_v1_send() {
        let addr = Address::Push {
            platform: PushPlatform::Android,
            token: "dev-token".into(),
        };
        let req = adapter()
            .build(&message(Channel::Push, addr))
            .expect("builds");
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:9/v1/projects/demo-app/messages:send"
        );
        assert_eq!(req.headers()["authorization"], "Bearer ya29.token");
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(body["message"]["token"], "dev-token");
        assert_eq!(body["message"]["notification"]["title"], "Your code");
        assert_eq!(body["message"]["android"]["priority"], "HIGH");
        assert_eq!(
            body["message"]["data"]["order"], "42",
            "data values are strings"
        );
        assert_eq!(
            body["message"]["data"]["herald_delivery_key"],
            "0190a5e2-7c3b-7000-8000-000000000001"
        );
        assert!(body["message"].get("apns").is_none());
        assert!(
            body["message"]["android"].get("ttl").is_none(),
            "no expiry, no ttl"
        );
    }

    #[test]
    fn an_expiring_message_carries_its_ttl_to_both_platforms() {
        let mut msg = message(
            Channel::Push,
            Address::Push {
                platform: PushPlatform::Android,
                token: "dev-token".into(),
            },
        );
        msg.expires_at_ms = Some(msg.now_ms + 299_001);
        let body: serde_json::Value =
            serde_json::from_slice(adapter().build(&msg).expect("builds").body()).expect("json");
        assert_eq!(body["message"]["android"]["ttl"], "300s", "rounded up");
        msg.address = Address::Push {
            platform: PushPlatform::Ios,
            token: "dev-token".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(adapter().build(&msg).expect("builds").body()).expect("json");
        let headers = &body["message"]["apns"]["headers"];
        assert_eq!(headers["apns-expiration"], "1700000299");
        assert_eq!(headers["apns-priority"], "10");
    }

    #[test]
    fn classifies_by_fcm_error_code() {
        let a = adapter();
        let ok = a.classify(&response(
            200,
            &[],
            r#"{"name":"projects/demo-app/messages/0:1"}"#,
        ));
        assert_eq!(
            ok,
            Outcome::Accepted {
                vendor_id: Some("projects/demo-app/messages/0:1".into())
            }
        );
        let gone = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(a.classify(&response(404, &[], gone)).label(), "permanent");
        let quota = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}"#;
        assert_eq!(
            a.classify(&response(429, &[("retry-after", "10")], quota))
                .label(),
            "rate_limited"
        );
        let down = r#"{"error":{"code":503,"message":"unavailable","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNAVAILABLE"}]}}"#;
        assert_eq!(a.classify(&response(503, &[], down)).label(), "transient");
        // An expired or revoked access token: the account's.
        let expired = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#;
        assert_eq!(a.classify(&response(401, &[], expired)).label(), "account");
        let apns = r#"{"error":{"code":401,"message":"Auth error from APNS or Web Push Service","status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"THIRD_PARTY_AUTH_ERROR"}]}}"#;
        assert_eq!(a.classify(&response(401, &[], apns)).label(), "account");
        let denied = r#"{"error":{"code":403,"message":"Permission 'cloudmessaging.messages.create' denied","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(a.classify(&response(403, &[], denied)).label(), "account");
        // A token another sender registered is that token's problem.
        let mismatch = r#"{"error":{"code":403,"message":"SenderId mismatch","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"SENDER_ID_MISMATCH"}]}}"#;
        assert_eq!(
            a.classify(&response(403, &[], mismatch)).label(),
            "permanent"
        );
    }

    const KEY_FILE: &str = include_str!("../../../herald/tests/fixtures/fcm-service-account.json");
    const PUBLIC_KEY: &str =
        include_str!("../../../herald/tests/fixtures/fcm-service-account.pub.pem");

    fn with_service_account(json: &str) -> Result<Fcm, crate::ConfigError> {
        Fcm::new(
            "fcm",
            FcmConfig {
                base_url: "http://127.0.0.1:9".into(),
                project_id: String::new(),
                access_token: None,
                service_account_file: None,
                service_account_json: Some(Secret::new(json)),
            },
        )
    }

    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        scope: String,
        aud: String,
        iat: i64,
        exp: i64,
    }

    #[test]
    fn a_service_account_signs_its_token_request_and_reads_the_answer() {
        let a = with_service_account(KEY_FILE).expect("valid key file");
        let addr = Address::Push {
            platform: PushPlatform::Android,
            token: "dev-token".into(),
        };
        let send = a.build(&message(Channel::Push, addr)).expect("builds");
        assert_eq!(
            send.uri(),
            "http://127.0.0.1:9/v1/projects/herald-test/messages:send",
            "the service account's project"
        );
        assert!(send.headers().get("authorization").is_none());

        let now_ms = 1_764_000_000_123;
        let req = a
            .token_request(now_ms)
            .expect("uses tokens")
            .expect("signs");
        assert_eq!(req.uri(), "https://oauth2.googleapis.com/token");
        assert_eq!(
            req.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        let form: std::collections::HashMap<String, String> =
            serde_urlencoded::from_bytes(req.body()).expect("form");
        assert_eq!(form["grant_type"], JWT_BEARER);
        let jwt = &form["assertion"];
        let header = jsonwebtoken::decode_header(jwt).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(
            header.kid.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        // Checked with the public half of the key, as Google does.
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("pem");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.set_audience(&["https://oauth2.googleapis.com/token"]);
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &v)
            .expect("signed by the service account")
            .claims;
        assert_eq!(
            claims.iss,
            "herald-test@herald-test.iam.gserviceaccount.com"
        );
        assert_eq!(claims.scope, SCOPE);
        assert_eq!(claims.aud, "https://oauth2.googleapis.com/token");
        assert_eq!(claims.iat, now_ms / 1000);
        assert_eq!(claims.exp, claims.iat + 3600);

        let token = a
            .token_from(
                &response(
                    200,
                    &[],
                    r#"{"access_token":"ya29.c.b0","expires_in":3599,"token_type":"Bearer"}"#,
                ),
                now_ms,
            )
            .expect("a token");
        assert_eq!(token.expires_at_ms, now_ms + 3_599_000);
        assert!(!token.needs_renewal(now_ms + 54 * 60_000));
        assert!(
            token.needs_renewal(now_ms + 55 * 60_000),
            "five minutes before"
        );
        let mut send = send;
        a.authorize(&mut send, &token).expect("authorizes");
        assert_eq!(send.headers()["authorization"], "Bearer ya29.c.b0");

        // A refused grant is the account's; the endpoint down is transient.
        let refused = r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            a.token_from(&response(400, &[], refused), now_ms),
            Err(Outcome::Account {
                reason: "google token endpoint 400: invalid_grant: Invalid JWT Signature.".into()
            })
        );
        let down = a.token_from(&response(503, &[], ""), now_ms);
        assert_eq!(down.map_err(|o| o.label()), Err("transient"));
    }

    #[test]
    fn a_static_token_needs_no_token_request() {
        assert!(adapter().token_request(0).is_none());
    }

    #[test]
    fn service_account_settings_are_checked_at_start() {
        let not_json = with_service_account("{").expect_err("not a key file");
        assert!(
            not_json.to_string().contains("not a key file"),
            "{not_json}"
        );
        let mut file: serde_json::Value = serde_json::from_str(KEY_FILE).expect("json");
        file["type"] = "authorized_user".into();
        let user = with_service_account(&file.to_string()).expect_err("not a service account");
        assert!(user.to_string().contains("service_account"), "{user}");
        file["type"] = "service_account".into();
        file["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let key = with_service_account(&file.to_string()).expect_err("not a key");
        assert!(key.to_string().contains("private_key"), "{key}");
        let neither = Fcm::new(
            "fcm",
            FcmConfig {
                base_url: "http://127.0.0.1:9".into(),
                project_id: "p".into(),
                access_token: None,
                service_account_file: None,
                service_account_json: None,
            },
        )
        .expect_err("no credential");
        assert!(
            neither.to_string().contains("service_account_file"),
            "{neither}"
        );
        let missing = Fcm::new(
            "fcm",
            FcmConfig {
                base_url: "http://127.0.0.1:9".into(),
                project_id: String::new(),
                access_token: None,
                service_account_file: Some("/nonexistent/key.json".into()),
                service_account_json: None,
            },
        )
        .expect_err("no such file");
        assert!(
            missing.to_string().contains("/nonexistent/key.json"),
            "{missing}"
        );
    }
}
