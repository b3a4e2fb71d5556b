//! One delivery attempt: check expiry, render, walk the channel's route
//! (failing over as the lane allows), decide what comes next, record it.

use std::sync::Arc;

use herald_core::lanes::{LaneRules, Lanes};
use herald_core::lease::Lease;
use herald_core::model::{Channel, Content, NotificationRequest};
use herald_core::provider::{Address, OutboundMessage, Outcome};
use herald_core::store::{AttemptRecord, ClaimedDelivery, Next, Queue};
use rand::Rng;
use tracing::Instrument;

use super::accounts::{Account, Accounts, Try};
use super::outbound::{Outbound, TargetError};
use super::unwritten::Unwritten;
use crate::render::Templates;
use crate::telemetry as m;

/// What every delivery task shares.
pub struct Shared {
    pub queue: Arc<dyn Queue>,
    pub accounts: Arc<Accounts>,
    pub outbound: Outbound,
    /// Routing and retry rules per lane.
    pub lanes: Lanes<LaneRules>,
    pub templates: Arc<Templates>,
    /// Outcomes the store could not take yet, written when it answers.
    pub unwritten: Arc<Unwritten>,
}

/// The longest a deferred delivery (every usable circuit open) waits past
/// the reopening time, spread so the probes are not met by a stampede.
const DEFER_SPREAD_MS: f64 = 1_000.0;

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
        if let Some(mut held) = shared.unwritten.take(d.id) {
            // Its last call's outcome is known, only not written yet (the
            // store was unavailable and its lease ran out): write it now,
            // under this lease, instead of sending again.
            tracing::info!("the outcome of an earlier call is held; writing it instead of sending again");
            held.lease_token = d.lease_token;
            write(&shared, held).await;
            return;
        }
        let record = attempt(&shared, &d).await;
        let state = record.next.state();
        let provider = record.provider().unwrap_or("none").to_owned();
        if state.is_terminal() {
            metrics::counter!(m::DELIVERIES, "channel" => d.channel.as_str(), "provider" => provider.clone(), "outcome" => state.as_str())
                .increment(1);
        }
        match &record.next {
            Next::Sent { .. } => {
                let waited = record
                    .calls
                    .last()
                    .map_or(0, |c| c.started_at_ms + c.latency_ms - d.accepted_at_ms)
                    .max(0);
                metrics::histogram!(m::ACCEPT_TO_VENDOR_SECONDS, "channel" => d.channel.as_str(), "lane" => d.priority.as_str())
                    .record(waited as f64 / 1000.0);
            }
            Next::Deferred(_) => {
                metrics::counter!(m::DEFERRED, "channel" => d.channel.as_str(), "lane" => d.priority.as_str())
                    .increment(1);
            }
            _ => {}
        }
        if record.calls.len() > 1 {
            metrics::counter!(m::FAILOVERS, "channel" => d.channel.as_str(), "to" => provider)
                .increment(1);
        }
        tracing::debug!(state = %state, calls = record.calls.len(), error = record.error.as_deref().unwrap_or(""), "attempt recorded");
        write(&shared, record).await;
    }
    .instrument(span)
    .await
}

/// Records an attempt. If the store is unavailable and a vendor was
/// called, the outcome is held and written when the store answers again
/// (`unwritten.rs`), so the call is not made a second time.
async fn write(shared: &Shared, record: AttemptRecord) {
    let Err(e) = shared.queue.record(vec![record.clone()]).await else {
        return;
    };
    metrics::counter!(m::STORE_ERRORS).increment(1);
    if !e.is_outage() {
        tracing::error!(error = %e, "the store refuses the attempt; its lease will expire and it will be retried");
        return;
    }
    if record.calls.is_empty() {
        // Nothing was sent: trying again after the lease is harmless.
        tracing::warn!(error = %e, "could not record the attempt; the lease will expire and it will be retried");
    } else if shared.unwritten.hold(record) {
        tracing::warn!(error = %e, "could not record the vendor's answer; holding it to write when the store is back");
    } else {
        tracing::error!(error = %e, "could not record the vendor's answer and too many are held already; the lease will expire and it will be sent again");
    }
}

async fn attempt(shared: &Shared, d: &ClaimedDelivery) -> AttemptRecord {
    let started_at_ms = herald_core::now_ms();
    let mut rec = AttemptRecord {
        delivery_id: d.id,
        lease_token: d.lease_token,
        attempt: d.attempt,
        calls: Vec::new(),
        error: None,
        pin: None,
        ended_at_ms: started_at_ms,
        next: Next::Failed,
    };
    let end = |mut rec: AttemptRecord, next: Next, why: String| {
        rec.next = next;
        rec.error = Some(why);
        rec.ended_at_ms = herald_core::now_ms();
        rec
    };
    if d.expires_at_ms.is_some_and(|e| started_at_ms >= e) {
        return end(rec, Next::Expired, "expired before it could be sent".into());
    }
    let lane = &shared.lanes[d.priority];
    let (route, pin) = route_for(&shared.accounts, lane, d);
    rec.pin = pin;
    if route.is_empty() {
        let why = format!("no provider is configured for {}", d.channel);
        return end(rec, Next::Failed, why);
    }
    let mut msg = match message(shared, d, started_at_ms) {
        Ok(m) => m,
        Err(why) => return end(rec, Next::Failed, why),
    };
    let lease = Lease {
        until_ms: d.lease_until_ms,
    };

    let mut last: Option<Outcome> = None;
    if let Address::Webhook(url) = &msg.address {
        match shared.outbound.check_webhook_target(url).await {
            Ok(()) => {}
            Err(TargetError::Refused(why)) => {
                return end(rec, Next::Failed, format!("webhook target refused: {why}"))
            }
            // Not resolvable now (DNS down or slow): the destination's
            // trouble, retried like a connection that failed.
            Err(TargetError::Unresolved(why)) => {
                last = Some(Outcome::Transient {
                    reason: why,
                    ambiguous: false,
                })
            }
        }
    }

    let mut usable_again_at: Option<i64> = None;
    let mut lease_run_out = false;
    let mut skipped = Vec::new();
    let primary = shared.accounts.route(d.channel).first().map(|a| a.name());
    let route = if last.is_some() { &[][..] } else { &route[..] };
    for (i, account) in route.iter().enumerate() {
        tracing::Span::current().record("provider", account.name());
        if Some(account.name()) != primary {
            // A backup may take it: say so first, so a holder that dies
            // mid-call leaves the next one knowing where it may already be.
            if let Err(e) = shared
                .queue
                .note_call(d.id, d.lease_token, account.name())
                .await
            {
                tracing::warn!(error = %e, provider = account.name(), "cannot note the failover; retrying later instead");
                skipped.push(format!(
                    "{}: the failover could not be noted",
                    account.name()
                ));
                break;
            }
        }
        match account.call(&mut msg, lease).await {
            Try::LeaseRunOut { why } => {
                metrics::counter!(m::LEASE_RUN_OUT, "channel" => d.channel.as_str()).increment(1);
                tracing::warn!(provider = account.name(), "{why}; giving the delivery back");
                skipped.push(why);
                lease_run_out = true;
                break;
            }
            Try::Skipped { retry_at_ms, why } => {
                usable_again_at = Some(usable_again_at.map_or(retry_at_ms, |t| t.min(retry_at_ms)));
                skipped.push(why);
                if !lane.skips_open_circuits() {
                    break;
                }
            }
            Try::Called { outcome, call } => {
                rec.calls.push(call);
                if lane.pins_after(&outcome) {
                    rec.pin = Some(account.name().to_owned());
                }
                let more = i + 1 < route.len();
                let go_on = more && lane.fails_over_after(&outcome);
                last = Some(outcome);
                if !go_on {
                    break;
                }
            }
        }
    }

    let now = herald_core::now_ms();
    let jitter: f64 = rand::thread_rng().gen();
    rec.ended_at_ms = now;
    match last {
        Some(outcome) => {
            rec.error = outcome.reason().map(str::to_owned);
            rec.next = lane
                .retry
                .next(&outcome, d.attempt, now, d.expires_at_ms, jitter);
        }
        None if lease_run_out => {
            // Nothing was sent, and this claim may no longer send: back in
            // the queue at once, for a claim with a fresh lease. Not an
            // attempt. (If the lease is already another worker's, this
            // record is refused, as it should be.)
            rec.error = Some(skipped.join("; "));
            rec.next = Next::Deferred(now);
        }
        None => {
            // No provider was called: wait for the first to be usable again.
            // Not an attempt, so it does not use up the delivery's tries.
            let at = usable_again_at.unwrap_or(now) + (jitter * DEFER_SPREAD_MS) as i64;
            rec.error = Some(skipped.join("; "));
            rec.next = match d.expires_at_ms {
                Some(exp) if at >= exp => Next::Expired,
                _ => Next::Deferred(at),
            };
        }
    }
    rec
}

/// The route for this delivery, and the provider to pin it to (if this
/// attempt starts a pin): the channel's route; or only the provider it is
/// pinned to (an earlier ambiguous outcome it may not fail over from); or,
/// when it is taken over in doubt (its last holder may have been mid-call)
/// and the lane may not fail over from an ambiguous outcome, only the
/// provider that was being called — the primary unless a backup was noted.
fn route_for(
    accounts: &Accounts,
    lane: &LaneRules,
    d: &ClaimedDelivery,
) -> (Vec<Arc<Account>>, Option<String>) {
    let route = accounts.route(d.channel);
    let only = |name: &str| route.iter().find(|a| a.name() == name).cloned();
    if let Some(pin) = &d.pinned_provider {
        if let Some(a) = only(pin) {
            return (vec![a], None);
        }
        tracing::warn!(pinned = %pin, "the pinned provider is no longer on the route; using the whole route");
    } else if d.in_doubt && !lane.failover_ambiguous {
        let held = d
            .calling
            .as_deref()
            .or_else(|| route.first().map(|a| a.name()));
        if let Some(a) = held.and_then(only) {
            let name = a.name().to_owned();
            return (vec![a], Some(name));
        }
    }
    (route.to_vec(), None)
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
        expires_at_ms: d.expires_at_ms,
    })
}
