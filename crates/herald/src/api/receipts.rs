//! `POST /v1/receipts/{provider}`: a vendor's receipts for the messages an
//! account sent (Twilio status callbacks, SendGrid's signed Event Webhook,
//! Amazon SES's events through SNS, whose signing certificate is fetched
//! here and kept, and whose subscriptions are confirmed here).
//! No API key: the vendor's signature is the credential, checked before
//! anything changes. A receipt for a delivery Herald does not know is
//! answered 200 all the same (and logged): a vendor must never retry it
//! forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::Json;
use herald_core::receipt::{InboundRequest, ReceiptError, VendorReceipt};
use herald_core::store::ReceiptApplied;
use herald_core::suppression::{normalize, Suppression};

use super::problem::ApiError;
use super::types::ReceiptsOut;
use super::AppState;
use crate::engine::callbacks::Event;
use crate::telemetry as m;

/// Take a vendor's receipts: each moves its delivery to `delivered`,
/// `undelivered`, `bounced` or `complained` (news of higher rank wins,
/// whatever order it comes in), and a bounce, complaint or opt-out puts
/// the address on the tenant's suppression list.
#[utoipa::path(
    post,
    path = "/v1/receipts/{provider}",
    tag = "receipts",
    params(("provider" = String, Path, description = "The provider account's name in config (`[providers.NAME]`)")),
    request_body(content = String, description = "The vendor's own callback, as it sends it (a form for Twilio, a JSON array of events for SendGrid, an SNS message for SES)"),
    responses(
        (status = 200, description = "Taken (receipts for deliveries Herald does not know are counted and dropped)", body = ReceiptsOut),
        (status = 400, description = "Signed, but not what the vendor sends", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "The vendor's signature is missing, wrong or stale: nothing changed", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account, or its vendor sends no receipts", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over server.max_body_bytes", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    )
)]
pub async fn receive(
    State(state): State<Arc<AppState>>,
    provider: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ReceiptsOut>, ApiError> {
    let Ok(Path(provider)) = provider else {
        return Err(ApiError::NotFound);
    };
    let Some(account) = state.accounts.get(&provider) else {
        return Err(ApiError::NotFound);
    };
    let Some(parser) = account.receipt_parser() else {
        return Err(ApiError::NotFound);
    };
    let body = super::json::bytes(raw, state.max_body_bytes)?;
    let url = called_url(state.public_url.as_deref(), &headers, &uri);
    let now = herald_core::now_ms();
    let mut req = InboundRequest {
        url: &url,
        headers: &headers,
        body: &body,
        now_ms: now,
        certificate: None,
    };
    let refused = |e: ReceiptError| match e {
        ReceiptError::Unverified(why) => {
            tracing::warn!(provider = %provider, "a receipt was refused: {why}");
            ApiError::ReceiptUnverified(format!("the receipt's signature does not verify: {why}"))
        }
        ReceiptError::Malformed(why) => ApiError::MalformedJson(why),
    };
    let certificate = match parser.certificate_url(&req).map_err(refused)? {
        Some(cert_url) => Some(state.certificates.get(&cert_url).await?),
        None => None,
    };
    req.certificate = certificate.as_deref();
    if let Some(confirm) = parser.subscribe_url(&req).map_err(refused)? {
        state.certificates.confirm(&confirm).await?;
        tracing::info!(provider = %provider, "confirmed the vendor's receipt subscription");
        return Ok(Json(ReceiptsOut {
            received: 0,
            changed: 0,
            unknown: 0,
        }));
    }
    let receipts = parser.receipts(&req).map_err(refused)?;
    let received = receipts.len();
    let applied = state
        .receipts
        .record_receipts(&provider, receipts.clone(), now)
        .await?;
    let mut out = ReceiptsOut {
        received,
        changed: 0,
        unknown: 0,
    };
    for (r, a) in receipts.iter().zip(applied) {
        if let Some(kind) = r.kind {
            metrics::counter!(m::RECEIPTS, "provider" => provider.clone(), "kind" => kind.as_str())
                .increment(1);
        }
        match a {
            ReceiptApplied::Unknown => {
                out.unknown += 1;
                tracing::info!(provider = %provider, delivery_id = %r.delivery_id, "a receipt for a delivery this store does not hold");
            }
            ReceiptApplied::Found {
                tenant_id,
                notification_id,
                channel,
                changed,
            } => {
                out.changed += usize::from(changed);
                if let (true, Some(kind), Some(cb)) = (changed, r.kind, &state.callbacks) {
                    let event = Event {
                        tenant_id: tenant_id.clone(),
                        notification_id,
                        delivery_id: r.delivery_id,
                        channel,
                        state: kind.state(),
                        provider: Some(provider.clone()),
                        reason: r.reason.clone(),
                        at_ms: if r.at_ms > 0 { r.at_ms } else { now },
                    };
                    cb.emit(event, None).await;
                }
                if let Some((address, why)) = &r.suppress {
                    let s = Suppression {
                        tenant_id,
                        channel,
                        address: normalize(channel, address).into_owned(),
                        reason: *why,
                        detail: r.reason.clone(),
                        source: provider.clone(),
                        created_at_ms: if r.at_ms > 0 { r.at_ms } else { now },
                    };
                    suppress(&state, s, r).await?;
                }
            }
        }
    }
    Ok(Json(out))
}

async fn suppress(state: &AppState, s: Suppression, r: &VendorReceipt) -> Result<(), ApiError> {
    let local = s.clone();
    if state.suppressions.suppress(s).await? {
        tracing::info!(delivery_id = %r.delivery_id, reason = %local.reason, channel = %local.channel, "a receipt put the address on the tenant's suppression list");
        metrics::counter!(m::SUPPRESSIONS_ADDED, "reason" => local.reason.as_str()).increment(1);
    }
    if let Some(list) = &state.local_suppressions {
        list.add(&local);
    }
    Ok(())
}

/// Vendors' receipt-signing certificates (Amazon SNS publishes its own at
/// a URL each message names), fetched on first use and kept: SNS signs
/// with few certificates, changed rarely. Each fetch is bounded in time
/// and size; a failure is not kept, so the vendor's retry fetches again.
pub struct Certificates {
    client: reqwest::Client,
    cache: Mutex<HashMap<String, Bytes>>,
}

/// How long a vendor's server has to answer a certificate fetch or a
/// subscription confirmation.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest certificate taken (SNS's are under 2 KiB).
const MAX_CERT_BYTES: usize = 64 * 1024;
/// The most certificates kept; past it the cache starts over.
const MAX_CERTS: usize = 64;

impl Default for Certificates {
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            client,
            cache: Mutex::default(),
        }
    }
}

impl Certificates {
    /// The certificate at `url` (one the parser checked is the vendor's).
    pub async fn get(&self, url: &str) -> Result<Bytes, ApiError> {
        if let Some(c) = self.lock().get(url) {
            return Ok(c.clone());
        }
        let unreachable = |why: String| {
            tracing::warn!(url, "cannot fetch a receipt-signing certificate: {why}");
            ApiError::VendorUnreachable(format!(
                "the signing certificate {url} could not be fetched ({why}); retry later"
            ))
        };
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unreachable(format!("HTTP {}", resp.status().as_u16())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_CERT_BYTES as u64)
        {
            return Err(unreachable("too large".into()));
        }
        let pem = resp.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        if pem.len() > MAX_CERT_BYTES {
            return Err(unreachable("too large".into()));
        }
        let mut cache = self.lock();
        if cache.len() >= MAX_CERTS {
            cache.clear();
        }
        cache.insert(url.to_owned(), pem.clone());
        Ok(pem)
    }

    /// Visits a subscription's confirmation URL.
    pub async fn confirm(&self, url: &str) -> Result<(), ApiError> {
        let answer = self.client.get(url).send().await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            other => {
                let why = match other {
                    Ok(r) => format!("HTTP {}", r.status().as_u16()),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("cannot confirm a receipt subscription: {why}");
                Err(ApiError::VendorUnreachable(format!(
                    "the subscription could not be confirmed ({why}); retry later"
                )))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The URL the vendor called: `server.public_url` and the path when set;
/// else the scheme a proxy reports (`X-Forwarded-Proto`, or http) and the
/// request's `Host`.
fn called_url(public: Option<&str>, headers: &HeaderMap, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(base) = public {
        return format!("{base}{path}");
    }
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = get("x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .map_or("http", str::trim);
    let host = get(header::HOST.as_str()).unwrap_or("localhost");
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_called_url_is_the_public_one_or_the_hosts() {
        let uri: Uri = "/v1/receipts/twilio?delivery=abc".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "herald.internal:8080".parse().expect("host"));
        assert_eq!(
            called_url(None, &headers, &uri),
            "http://herald.internal:8080/v1/receipts/twilio?delivery=abc"
        );
        headers.insert("x-forwarded-proto", "https".parse().expect("proto"));
        assert_eq!(
            called_url(None, &headers, &uri),
            "https://herald.internal:8080/v1/receipts/twilio?delivery=abc"
        );
        assert_eq!(
            called_url(Some("https://herald.example.com"), &headers, &uri),
            "https://herald.example.com/v1/receipts/twilio?delivery=abc"
        );
    }
}
