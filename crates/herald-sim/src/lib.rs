//! The vendor simulator: stands in for the vendors' servers (SendGrid v3,
//! Amazon SES v2, Twilio Messages, Amazon SNS Publish, FCM v1, APNs over HTTP/2, Slack
//! and webhook receivers) in the sandbox, the demo,
//! tests and benchmarks. It honours `Idempotency-Key` — a repeated key gets
//! the original answer and is counted as a duplicate, not delivered twice —
//! keeps a ledger of what it accepted, and injects faults per vendor.
//!
//! Control API: `GET /_sim/ledger`, `GET /_sim/stats`, `GET|POST|DELETE
//! /_sim/faults`, `POST /_sim/reset`.

pub mod apple;
pub mod aws;
pub mod faults;
pub mod google;
pub mod ledger;
pub mod slack;
pub mod vendors;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use faults::Verdict;
pub use faults::{Fault, FaultError};
pub use ledger::{Entry, VendorStats};
use ledger::{Ledger, Original};
use vendors::Emulated;

/// The vendors the simulator emulates, by name.
/// The sandbox's Twilio account SID and auth token, which the simulator
/// always takes.
pub const SANDBOX_TWILIO: (&str, &str) = ("ACsandbox", "sandbox");

/// The sandbox's AWS access key and secret (SNS, SES), which the
/// simulator always trusts.
pub const SANDBOX_AWS_KEY: (&str, &str) = ("AKIASANDBOX", "sandbox");

/// The sandbox's Slack bot token, which the simulator always takes.
pub const SANDBOX_SLACK_TOKEN: &str = "xoxb-sandbox";

pub const VENDORS: [&str; 8] = [
    "sendgrid", "ses", "twilio", "sns", "fcm", "apns", "slack", "webhook",
];

/// A running simulator's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Mutex<Ledger>,
    faults: Mutex<HashMap<String, Fault>>,
    rng: Mutex<StdRng>,
    /// The service account FCM's tokens come from, when a test trusts
    /// one; without it FCM takes any bearer token.
    google: Mutex<Option<google::GoogleAuth>>,
    apple: Mutex<Option<apple::AppleAuth>>,
    /// AWS access keys whose signatures SNS and SES check.
    aws: Mutex<aws::AwsKeys>,
    /// Twilio accounts (SID → auth token) whose Basic auth is taken.
    twilio: Mutex<HashMap<String, String>>,
    /// Slack bot tokens the workspace issued.
    slack: Mutex<std::collections::HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the ledger half-written
    // (every update is one push or insert), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sim {
    /// `seed` makes fault decisions repeatable.
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Self {
            inner: Arc::new(Inner {
                ledger: Mutex::new(Ledger::default()),
                faults: Mutex::new(HashMap::new()),
                rng: Mutex::new(rng),
                google: Mutex::new(None),
                apple: Mutex::new(None),
                slack: Mutex::new([SANDBOX_SLACK_TOKEN.to_owned()].into()),
                twilio: Mutex::new(HashMap::from([(
                    SANDBOX_TWILIO.0.to_owned(),
                    SANDBOX_TWILIO.1.to_owned(),
                )])),
                aws: Mutex::new({
                    let mut keys = aws::AwsKeys::default();
                    keys.trust(SANDBOX_AWS_KEY.0, SANDBOX_AWS_KEY.1);
                    keys
                }),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v3/mail/send", post(sendgrid))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/", post(sns))
            .route("/v1/projects/{project}/messages:send", post(fcm))
            .route("/token", post(google_token))
            .route("/3/device/{token}", post(apns))
            .route("/v2/email/outbound-emails", post(ses))
            .route("/hooks/{*path}", post(webhook))
            .route("/api/chat.postMessage", post(slack_post))
            .route("/services/{*path}", post(slack_hook))
            .route("/_sim/ledger", get(ledger))
            .route("/_sim/stats", get(stats))
            .route(
                "/_sim/faults",
                get(get_faults).post(set_fault).delete(clear_faults),
            )
            .route("/_sim/reset", post(reset))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the returned task is aborted.
    pub fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        })
    }

    /// Binds `addr` (port 0 for any) and serves; returns the bound address.
    pub async fn start(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, self.serve(listener)))
    }

    pub fn stats(&self) -> BTreeMap<&'static str, VendorStats> {
        lock(&self.inner.ledger).stats()
    }

    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.inner.ledger).entries().to_vec()
    }

    pub fn set_fault(&self, vendor: &str, fault: Fault) -> Result<(), FaultError> {
        if !VENDORS.contains(&vendor) {
            return Err(FaultError::UnknownVendor(vendor.to_owned()));
        }
        fault.validate()?;
        lock(&self.inner.faults).insert(vendor.to_owned(), fault);
        Ok(())
    }

    /// From now on FCM takes only access tokens issued at `POST /token`
    /// (Google's OAuth 2 token endpoint) for a JWT the service account
    /// `email` signed with the key whose public half is `public_key_pem`;
    /// each lasts `lifetime_s`.
    pub fn trust_service_account(
        &self,
        email: &str,
        public_key_pem: &str,
        lifetime_s: u64,
    ) -> Result<(), String> {
        *lock(&self.inner.google) =
            Some(google::GoogleAuth::new(email, public_key_pem, lifetime_s)?);
        Ok(())
    }

    /// Twilio also takes this account's SID and auth token (HTTP Basic, the
    /// SID also in the path, as Twilio checks them).
    /// A Slack bot token the workspace issued (besides the sandbox's).
    pub fn trust_slack_token(&self, token: &str) {
        lock(&self.inner.slack).insert(token.to_owned());
    }

    pub fn trust_twilio_account(&self, account_sid: &str, auth_token: &str) {
        lock(&self.inner.twilio).insert(account_sid.to_owned(), auth_token.to_owned());
    }

    /// SNS and SES also take requests signed with this access key (checked
    /// by recomputing the SigV4 signature with `secret`).
    pub fn trust_aws_key(&self, access_key_id: &str, secret: &str) {
        lock(&self.inner.aws).trust(access_key_id, secret);
    }

    /// The AWS signature's verdict on a request: `None` when it is good.
    fn aws_refusal(
        &self,
        vendor: &'static str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<aws::Refusal> {
        let refused = lock(&self.inner.aws)
            .verify(vendor, method, uri, headers, body)
            .err()?;
        let mut ledger = lock(&self.inner.ledger);
        let stats = ledger.stats_mut(vendor);
        stats.received += 1;
        stats.rejected += 1;
        Some(refused)
    }

    /// From now on APNs takes only provider tokens signed by the key
    /// `key_id` of team `team_id` (its public half `public_key_pem`).
    pub fn trust_apns_key(
        &self,
        team_id: &str,
        key_id: &str,
        public_key_pem: &str,
    ) -> Result<(), String> {
        *lock(&self.inner.apple) = Some(apple::AppleAuth::new(team_id, key_id, public_key_pem)?);
        Ok(())
    }

    /// Access tokens issued at `POST /token`.
    pub fn tokens_issued(&self) -> u64 {
        lock(&self.inner.google)
            .as_ref()
            .map_or(0, google::GoogleAuth::issued)
    }

    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    pub fn reset(&self) {
        lock(&self.inner.ledger).clear();
        self.clear_faults();
    }

    async fn handle<V: Emulated>(&self, vendor: V, headers: &HeaderMap, body: &[u8]) -> Response {
        // When the request arrived, before the injected latency: the moment
        // the vendor had the message, which accept-to-vendor latency ends at.
        let arrived_at_ms = now_ms();
        lock(&self.inner.ledger).stats_mut(V::NAME).received += 1;
        let parsed = match vendor.parse(headers, body) {
            Ok(p) => p,
            Err(resp) => {
                lock(&self.inner.ledger).stats_mut(V::NAME).rejected += 1;
                return *resp;
            }
        };
        let fault = lock(&self.inner.faults)
            .get(V::NAME)
            .cloned()
            .unwrap_or_default();
        let (latency, a, b, c) = {
            let mut rng = lock(&self.inner.rng);
            let latency = fault.latency_ms(rng.gen(), rng.gen());
            (
                latency,
                rng.gen::<f64>(),
                rng.gen::<f64>(),
                rng.gen::<f64>(),
            )
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let key = headers
            .get("idempotency-key")
            .or_else(|| headers.get("webhook-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);

        // Decide and record under one lock, so two concurrent requests with
        // one key cannot both be delivered.
        let (original, hang) = {
            let mut ledger = lock(&self.inner.ledger);
            if let Some(orig) = key.as_deref().and_then(|k| ledger.repeat(V::NAME, k)) {
                (orig, None)
            } else {
                match fault.decide(a, b, c) {
                    Verdict::CredentialRevoked => {
                        ledger.stats_mut(V::NAME).faulted += 1;
                        return vendor.refused_credential();
                    }
                    Verdict::Outage => {
                        ledger.stats_mut(V::NAME).faulted += 1;
                        return vendor.error(StatusCode::SERVICE_UNAVAILABLE, None);
                    }
                    Verdict::Error(s) => {
                        ledger.stats_mut(V::NAME).faulted += 1;
                        let status =
                            StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return vendor.error(status, None);
                    }
                    Verdict::RateLimited { retry_after_s } => {
                        ledger.stats_mut(V::NAME).faulted += 1;
                        return vendor.error(StatusCode::TOO_MANY_REQUESTS, Some(retry_after_s));
                    }
                    Verdict::Accept { hang_ms } => {
                        if let Some(rejection) = vendor.reject(&parsed) {
                            ledger.stats_mut(V::NAME).rejected += 1;
                            return rejection;
                        }
                        let seq = ledger.next_seq();
                        let message_id = format!("sim{seq:012}");
                        let (status, body) = vendor.accepted(&message_id);
                        let original = Original {
                            status: status.as_u16(),
                            body,
                            message_id,
                        };
                        ledger.accept(
                            Entry {
                                seq,
                                vendor: V::NAME,
                                key: key.clone().unwrap_or_else(|| format!("unkeyed-{seq}")),
                                recipient: parsed.recipient,
                                summary: parsed.summary,
                                received_at_ms: arrived_at_ms,
                                stamped_at_ms: stamped_at(headers),
                                requests: 1,
                            },
                            original.clone(),
                        );
                        (original, hang_ms)
                    }
                }
            }
        };
        if let Some(h) = hang {
            tokio::time::sleep(Duration::from_millis(h)).await;
        }
        let status = StatusCode::from_u16(original.status).unwrap_or(StatusCode::OK);
        let has_body = !original.body.is_empty();
        let mut resp = (status, original.body).into_response();
        if has_body {
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static(V::CONTENT_TYPE));
        }
        if let Some(h) = V::MESSAGE_ID_HEADER {
            if let Ok(v) = HeaderValue::from_str(&original.message_id) {
                resp.headers_mut().insert(h, v);
            }
        }
        resp
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn slack_post(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let known_token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| lock(&sim.inner.slack).contains(t));
    sim.handle(slack::PostMessage { known_token }, &headers, &body)
        .await
}

async fn slack_hook(
    State(sim): State<Sim>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(slack::Hook { path }, &headers, &body).await
}

async fn sendgrid(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    sim.handle(vendors::SendGrid, &headers, &body).await
}

async fn twilio(
    State(sim): State<Sim>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // HTTP Basic with a known account's SID and token, the SID the path's.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let known = basic
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .is_some_and(|(user, token)| {
            user == sid
                && lock(&sim.inner.twilio)
                    .get(user)
                    .is_some_and(|t| t == token)
        });
    if !known {
        let mut ledger = lock(&sim.inner.ledger);
        let stats = ledger.stats_mut("twilio");
        stats.received += 1;
        stats.rejected += 1;
        return vendors::Twilio::authenticate();
    }
    sim.handle(vendors::Twilio, &headers, &body).await
}

async fn sns(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = sim.aws_refusal("sns", &method, &uri, &headers, &body) {
        return vendors::Sns::refused_signature(refused);
    }
    sim.handle(vendors::Sns, &headers, &body).await
}

async fn fcm(
    State(sim): State<Sim>,
    Path(_project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refused = lock(&sim.inner.google)
        .as_ref()
        .and_then(|g| g.check(&headers, now_ms()));
    if let Some(refused) = refused {
        lock(&sim.inner.ledger).stats_mut("fcm").rejected += 1;
        return refused;
    }
    sim.handle(vendors::Fcm, &headers, &body).await
}

async fn ses(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = sim.aws_refusal("ses", &method, &uri, &headers, &body) {
        return vendors::Ses::refused_signature(refused);
    }
    sim.handle(vendors::Ses, &headers, &body).await
}

/// APNs: HTTP/2 only, as Apple's servers (an HTTP/1.1 request gets 505).
async fn apns(
    State(sim): State<Sim>,
    Path(token): Path<String>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version != axum::http::Version::HTTP_2 {
        return StatusCode::HTTP_VERSION_NOT_SUPPORTED.into_response();
    }
    let refused = lock(&sim.inner.apple)
        .as_ref()
        .and_then(|a| a.check(&headers, now_ms()));
    if let Some(refused) = refused {
        lock(&sim.inner.ledger).stats_mut("apns").rejected += 1;
        return refused;
    }
    sim.handle(vendors::Apns { token }, &headers, &body).await
}

/// Google's OAuth 2 token endpoint (`https://oauth2.googleapis.com/token`).
async fn google_token(State(sim): State<Sim>, body: Bytes) -> Response {
    match lock(&sim.inner.google).as_mut() {
        Some(g) => g.token(&body, now_ms()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn webhook(
    State(sim): State<Sim>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(
        vendors::Webhook {
            path: format!("/hooks/{path}"),
        },
        &headers,
        &body,
    )
    .await
}

#[derive(Deserialize)]
struct LedgerQuery {
    vendor: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn ledger(State(sim): State<Sim>, Query(q): Query<LedgerQuery>) -> Json<serde_json::Value> {
    let ledger = lock(&sim.inner.ledger);
    let entries: Vec<&Entry> = ledger
        .entries()
        .iter()
        .filter(|e| q.vendor.as_deref().is_none_or(|v| v == e.vendor))
        .skip(q.offset)
        .take(q.limit.unwrap_or(1000).min(10_000))
        .collect();
    Json(serde_json::json!({ "entries": entries }))
}

async fn stats(State(sim): State<Sim>) -> Json<BTreeMap<&'static str, VendorStats>> {
    Json(sim.stats())
}

async fn get_faults(State(sim): State<Sim>) -> Json<HashMap<String, Fault>> {
    Json(lock(&sim.inner.faults).clone())
}

/// `{"vendor": "twilio", ...Fault fields}`.
async fn set_fault(State(sim): State<Sim>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|mut m| {
            let vendor = match m.remove("vendor") {
                Some(serde_json::Value::String(v)) => v,
                _ => return Err("vendor (a string) is required".to_owned()),
            };
            let fault: Fault = serde_json::from_value(m.into()).map_err(|e| e.to_string())?;
            Ok((vendor, fault))
        });
    let (vendor, fault) = match parsed {
        Ok(p) => p,
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    };
    match sim.set_fault(&vendor, fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

async fn clear_faults(State(sim): State<Sim>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn reset(State(sim): State<Sim>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

/// When a request says it was made, in Unix ms: Standard Webhooks'
/// `webhook-timestamp` (seconds) or SigV4's `x-amz-date`.
fn stamped_at(headers: &HeaderMap) -> Option<i64> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secs) = text("webhook-timestamp").and_then(|v| v.parse::<i64>().ok()) {
        return Some(secs * 1000);
    }
    let date = text("x-amz-date")?;
    chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}
