//! One delivery attempt: check expiry, render, build the vendor request,
//! send, classify, decide what comes next, record it.

use std::sync::Arc;

use herald_core::model::{Channel, Content, NotificationRequest};
use herald_core::provider::{Address, OutboundMessage, Outcome, Provider};
use herald_core::retry::RetryPolicy;
use herald_core::store::{AttemptRecord, ClaimedDelivery, Next, Store};
use rand::Rng;
use tracing::Instrument;

use super::outbound::Outbound;
use crate::render::Templates;
use crate::telemetry as m;

/// What every delivery task shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    /// Per channel, the ordered providers (the first is the primary).
    pub routes: std::collections::BTreeMap<Channel, Vec<Arc<dyn Provider>>>,
    pub outbound: Outbound,
    pub retry: RetryPolicy,
    pub templates: Arc<Templates>,
}

pub async fn deliver(shared: Arc<Shared>, d: ClaimedDelivery) {
    let span = tracing::info_span!(
        "deliver",
        notification_id = %d.notification_id,
        delivery_id = %d.id,
        channel = %d.channel,
        lane = %d.priority,
        attempt = d.attempt,
        provider = tracing::field::Empty,
    );
    async move {
        let record = attempt(&shared, &d).await;
        let state = record.next.state();
        if state.is_terminal() {
            let provider = record.provider.clone().unwrap_or_else(|| "none".into());
            metrics::counter!(m::DELIVERIES, "channel" => d.channel.as_str(), "provider" => provider, "outcome" => state.as_str())
                .increment(1);
        }
        if let Next::Sent { .. } = record.next {
            let waited = (record.started_at_ms + record.latency_ms - d.accepted_at_ms).max(0);
            metrics::histogram!(m::ACCEPT_TO_VENDOR_SECONDS, "channel" => d.channel.as_str(), "lane" => d.priority.as_str())
                .record(waited as f64 / 1000.0);
        }
        tracing::debug!(state = %state, outcome = %record.outcome, "attempt recorded");
        if let Err(e) = shared.store.record(vec![record]).await {
            // The lease will expire and the delivery will be tried again with
            // the same key, which the vendor (or simulator) deduplicates.
            metrics::counter!(m::STORE_ERRORS).increment(1);
            tracing::error!(error = %e, "could not record the attempt; the lease will expire and it will be retried");
        }
    }
    .instrument(span)
    .await
}

async fn attempt(shared: &Shared, d: &ClaimedDelivery) -> AttemptRecord {
    let started_at_ms = herald_core::now_ms();
    let finish = |provider: Option<&str>,
                  outcome: &Outcome,
                  next: Next,
                  status: Option<u16>,
                  latency_ms: i64| {
        AttemptRecord {
            delivery_id: d.id,
            lease_token: d.lease_token,
            attempt: d.attempt,
            provider: provider.map(str::to_owned),
            started_at_ms,
            latency_ms,
            outcome: outcome.label().to_owned(),
            status_code: status,
            error: outcome.reason().map(str::to_owned),
            next,
        }
    };
    let permanent = |reason: String| Outcome::Permanent { reason };

    if d.expires_at_ms.is_some_and(|e| started_at_ms >= e) {
        let o = permanent("expired before it could be sent".into());
        return finish(None, &o, Next::Expired, None, 0);
    }
    let Some(provider) = shared.routes.get(&d.channel).and_then(|r| r.first()) else {
        let o = permanent(format!("no provider is configured for {}", d.channel));
        return finish(None, &o, Next::Failed, None, 0);
    };
    tracing::Span::current().record("provider", provider.name());

    let msg = match message(shared, d, started_at_ms) {
        Ok(m) => m,
        Err(reason) => {
            return finish(
                Some(provider.name()),
                &permanent(reason),
                Next::Failed,
                None,
                0,
            )
        }
    };
    let is_webhook = d.channel == Channel::Webhook;
    if let Address::Webhook(url) = &msg.address {
        if let Err(why) = shared.outbound.check_webhook_target(url).await {
            let o = permanent(format!("webhook target refused: {why}"));
            return finish(Some(provider.name()), &o, Next::Failed, None, 0);
        }
    }
    let req = match provider.build(&msg) {
        Ok(r) => r,
        Err(e) => {
            return finish(
                Some(provider.name()),
                &permanent(e.to_string()),
                Next::Failed,
                None,
                0,
            )
        }
    };
    let (result, took) = shared.outbound.send(req, is_webhook).await;
    let (outcome, status) = match result {
        Ok(resp) => (provider.classify(&resp), Some(resp.status.as_u16())),
        Err(transport) => (transport, None),
    };
    metrics::histogram!(m::ATTEMPT_SECONDS, "channel" => d.channel.as_str(), "provider" => provider.name().to_owned())
        .record(took.as_secs_f64());
    metrics::counter!(m::ATTEMPTS, "channel" => d.channel.as_str(), "provider" => provider.name().to_owned(), "outcome" => outcome.label())
        .increment(1);
    let now = herald_core::now_ms();
    let jitter: f64 = rand::thread_rng().gen();
    let next = shared
        .retry
        .next(&outcome, d.attempt, now, d.expires_at_ms, jitter);
    let latency_ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    finish(Some(provider.name()), &outcome, next, status, latency_ms)
}

/// The vendor-neutral message for this delivery, or why there cannot be one.
fn message(shared: &Shared, d: &ClaimedDelivery, now_ms: i64) -> Result<OutboundMessage, String> {
    let req: NotificationRequest = serde_json::from_str(&d.payload)
        .map_err(|e| format!("stored notification is unreadable: {e}"))?;
    let content = match (&req.content, &req.template) {
        (Some(c), _) => c.clone(),
        (None, Some(t)) => shared.templates.render(t).map_err(|e| e.to_string())?,
        (None, None) => Content::default(),
    };
    let r = &req.recipient;
    let address = match d.channel {
        Channel::Email => r.email.clone().map(Address::Email),
        Channel::Sms => r.phone.clone().map(Address::Phone),
        Channel::Push => usize::try_from(d.target)
            .ok()
            .and_then(|i| r.push_tokens.get(i))
            .map(|t| Address::Push {
                platform: t.platform,
                token: t.token.clone(),
            }),
        Channel::Webhook => r.webhook_url.clone().map(Address::Webhook),
    }
    .ok_or_else(|| format!("the recipient has no address for {}", d.channel))?;
    Ok(OutboundMessage {
        delivery_key: d.id.to_string(),
        notification_id: d.notification_id.to_string(),
        tenant_id: d.tenant_id.clone(),
        channel: d.channel,
        priority: d.priority,
        category: req.category.clone(),
        address,
        content,
        metadata: req.metadata.clone(),
        accepted_at_ms: d.accepted_at_ms,
        now_ms,
    })
}
