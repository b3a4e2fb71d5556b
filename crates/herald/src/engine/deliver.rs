//! One delivery attempt: check expiry and the suppression list, render,
//! walk the channel's route (failing over as the lane allows), decide what
//! comes next, record it.

use herald_core::status::Throughput;
use std::sync::Arc;

use herald_core::attempt::{plan, Walk};
use herald_core::lanes::{LaneRules, Lanes};
use herald_core::lease::Lease;
use herald_core::model::{Channel, Content, NotificationRequest, Priority};
use herald_core::provider::{Address, OutboundMessage, Outcome};
use herald_core::store::{AttemptRecord, ClaimedDelivery, Next, Queue, Suppressions};
use herald_core::suppression::{key_of, Suppression, SuppressionReason};
use rand::Rng;
use tracing::Instrument;

use super::accounts::{Accounts, Try};
use super::outbound::{Outbound, TargetError};
use super::suppressions::SuppressionList;
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
    /// Deliveries finished, per channel and lane (admission control's rate).
    pub throughput: Arc<Throughput>,
    pub suppression: Screen,
    /// Tenants' callbacks, told of each delivery's final state.
    pub callbacks: Option<Arc<super::callbacks::Callbacks>>,
}

/// The suppression check on the delivery path, and where the addresses
/// vendors report gone are written.
pub struct Screen {
    /// The node's copy of the lists (`suppressions.rs`).
    pub list: Arc<SuppressionList>,
    pub store: Arc<dyn Suppressions>,
    /// Where dead push tokens are taken off their recipients.
    pub recipients: Arc<dyn herald_core::store::Recipients>,
    /// Critical notifications go to suppressed addresses too.
    pub critical_bypass: bool,
}

/// How long a delivery waits for the node's first read of the suppression
/// lists before it is put back for later.
const LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long writing an address a vendor reported gone may take.
const SUPPRESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn deliver(shared: Arc<Shared>, d: ClaimedDelivery) {
    let span = tracing::info_span!(
        "deliver",
        notification_id = %d.notification_id,
        delivery_id = %d.id,
        channel = %d.channel,
        lane = %d.priority,
        attempt = d.attempt,
        provider = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if crate::telemetry::tracing_on() {
        // The notification's trace: this attempt is a child of the API
        // request that accepted it (retries are siblings).
        crate::telemetry::context::join(&span, d.traceparent.as_deref());
    }
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
            shared.throughput.finished(d.channel, d.priority);
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
        let event = (state.is_terminal()).then(|| super::callbacks::Event {
            tenant_id: d.tenant_id.clone(),
            notification_id: d.notification_id,
            delivery_id: d.id,
            channel: d.channel,
            state,
            provider: record.provider().map(str::to_owned),
            reason: record.error.clone(),
            at_ms: record.ended_at_ms,
        });
        if write(&shared, record).await {
            if let (Some(cb), Some(e)) = (&shared.callbacks, event) {
                cb.emit(e, Some(&d.payload)).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Records an attempt; whether it is recorded now. If the store is
/// unavailable and a vendor was called, the outcome is held and written
/// when the store answers again (`unwritten.rs`), so the call is not made
/// a second time.
async fn write(shared: &Shared, record: AttemptRecord) -> bool {
    let Err(e) = shared.queue.record(vec![record.clone()]).await else {
        return true;
    };
    metrics::counter!(m::STORE_ERRORS).increment(1);
    if !e.is_outage() {
        tracing::error!(error = %e, "the store refuses the attempt; its lease will expire and it will be retried");
        return false;
    }
    if record.calls.is_empty() {
        // Nothing was sent: trying again after the lease is harmless.
        tracing::warn!(error = %e, "could not record the attempt; the lease will expire and it will be retried");
    } else if shared.unwritten.hold(record) {
        tracing::warn!(error = %e, "could not record the vendor's answer; holding it to write when the store is back");
    } else {
        tracing::error!(error = %e, "could not record the vendor's answer and too many are held already; the lease will expire and it will be sent again");
    }
    false
}

/// One attempt: the decisions are `herald_core::attempt`'s (the plan, the
/// walk along it, where the delivery goes next); here are the effects —
/// rendering, the DNS check, the note before a failover, the guarded call.
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
    let route = shared.accounts.route(d.channel);
    let names: Vec<&str> = route.iter().map(|a| a.name()).collect();
    let plan = plan(
        &names,
        lane,
        d.pinned_provider.as_deref(),
        d.in_doubt,
        d.calling.as_deref(),
    );
    if let Some(note) = &plan.note {
        tracing::warn!("{note}");
    }
    if plan.providers.is_empty() {
        let why = format!("no provider is configured for {}", d.channel);
        return end(rec, Next::Failed, why);
    }
    let (req, address) = match addressed(d) {
        Ok(found) => found,
        Err(why) => return end(rec, Next::Failed, why),
    };
    if let Some((next, why)) = screen(&shared.suppression, d, &address).await {
        return end(rec, next, why);
    }
    let recipient_id = req.recipient.id.clone();
    let mut msg = match message(shared, d, req, address, started_at_ms) {
        Ok(m) => m,
        Err(why) => return end(rec, Next::Failed, why),
    };
    let lease = Lease {
        until_ms: d.lease_until_ms,
    };
    let mut walk = Walk::new(lane, plan.pin);
    let mut go = true;
    if let Address::Webhook(url) = &msg.address {
        match shared.outbound.check_webhook_target(url).await {
            Ok(()) => {}
            Err(TargetError::Refused(why)) => {
                return end(rec, Next::Failed, format!("webhook target refused: {why}"))
            }
            // Not resolvable now (DNS down or slow): the destination's
            // trouble, retried like a connection that failed.
            Err(TargetError::Unresolved(why)) => {
                walk.unreachable(why);
                go = false;
            }
        }
    }
    let primary = names.first().copied();
    // A route may hold accounts for other addresses than this one's (APNs
    // takes iOS device tokens only): those are passed over.
    let planned: Vec<usize> = plan
        .providers
        .iter()
        .copied()
        .filter(|&i| route[i].provider.takes(&msg.address))
        .collect();
    if planned.is_empty() {
        let why = format!("no provider on the {} route takes this address", d.channel);
        return end(rec, Next::Failed, why);
    }
    let planned = &planned;
    // A vendor's word that the address is dead: (why, its words, who).
    let mut gone: Option<(SuppressionReason, String, String)> = None;
    for (n, &i) in planned.iter().enumerate() {
        if !go {
            break;
        }
        let account = &route[i];
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
                let why = format!("{}: the failover could not be noted", account.name());
                walk.must_stop(why, false);
                break;
            }
        }
        go = match account.call(&mut msg, lease).await {
            Try::LeaseRunOut { why } => {
                metrics::counter!(m::LEASE_RUN_OUT, "channel" => d.channel.as_str()).increment(1);
                tracing::warn!(provider = account.name(), "{why}; giving the delivery back");
                walk.must_stop(why, true);
                false
            }
            Try::Skipped { retry_at_ms, why } => walk.skipped(retry_at_ms, why),
            Try::Called { outcome, call } => {
                if let Outcome::Permanent {
                    reason,
                    gone: Some(why),
                } = &outcome
                {
                    gone = Some((*why, reason.clone(), account.name().to_owned()));
                }
                rec.calls.push(call);
                walk.called(account.name(), outcome, n + 1 < planned.len())
            }
        };
    }
    let now = herald_core::now_ms();
    let jitter: f64 = rand::thread_rng().gen();
    // (If the lease is already another worker's, the record is refused, as
    // it should be.)
    let c = walk.finish(d.attempt, now, d.expires_at_ms, jitter);
    if let Some((why, detail, provider)) = gone {
        suppress_gone(&shared.suppression, d, &msg.address, why, detail, provider).await;
        if let (Address::Push { token, .. }, Some(id)) = (&msg.address, &recipient_id) {
            forget_device(&shared.suppression, &d.tenant_id, id, token).await;
        }
    }
    rec.ended_at_ms = now;
    rec.next = c.next;
    rec.error = c.error;
    rec.pin = c.pin;
    rec
}

/// Whether the delivery must not go out: its address is on the tenant's
/// suppression list (`Next::Suppressed`, unless the lane is critical and
/// critical traffic is let through), or the node has not read the lists
/// yet (put back for later: nothing goes out unchecked).
async fn screen(screen: &Screen, d: &ClaimedDelivery, address: &Address) -> Option<(Next, String)> {
    if d.priority == Priority::Critical && screen.critical_bypass {
        return None;
    }
    if !screen.list.wait_ready(LIST_WAIT).await {
        let at = herald_core::now_ms() + 1_000;
        let next = match d.expires_at_ms {
            Some(exp) if at >= exp => Next::Expired,
            _ => Next::Deferred(at),
        };
        return Some((next, "the suppression lists are not read yet".into()));
    }
    let (channel, key) = key_of(address);
    let entry = screen.list.check(&d.tenant_id, channel, &key)?;
    let since = chrono::DateTime::from_timestamp_millis(entry.since_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let why = format!(
        "the address is on the suppression list: {} since {since}",
        entry.reason
    );
    Some((Next::Suppressed, why))
}

/// Takes a push token a vendor reported dead off the stored recipient the
/// notification named, so later notifications by id do not fan out to it
/// (bounded; a profile changed meanwhile is read again, a few times).
async fn forget_device(screen: &Screen, tenant: &str, id: &str, token: &str) {
    use herald_core::store::{update_profile, StoreError, Updated};
    let work = update_profile(screen.recipients.as_ref(), tenant, id, 3, |mut p| {
        let before = p.push_tokens.len();
        p.push_tokens.retain(|t| t.token.trim() != token.trim());
        Ok::<_, StoreError>((p.push_tokens.len() < before).then_some(p))
    });
    match tokio::time::timeout(SUPPRESS_TIMEOUT, work).await {
        Ok(Ok(Updated::Written { .. })) => {
            tracing::info!("a dead push token was taken off its recipient's devices")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not take a dead push token off its recipient")
        }
        Err(_) => tracing::warn!("taking a dead push token off its recipient took too long"),
    }
}

/// Puts an address a vendor reported dead on the tenant's suppression
/// list: in this node's copy at once, and in the store (bounded; if the
/// store does not take it, other nodes learn it when a vendor says so to
/// them).
async fn suppress_gone(
    screen: &Screen,
    d: &ClaimedDelivery,
    address: &Address,
    reason: SuppressionReason,
    detail: String,
    provider: String,
) {
    let (channel, key) = key_of(address);
    let s = Suppression {
        tenant_id: d.tenant_id.clone(),
        channel,
        address: key.into_owned(),
        reason,
        detail: Some(detail),
        source: provider,
        created_at_ms: herald_core::now_ms(),
    };
    screen.list.add(&s);
    metrics::counter!(m::SUPPRESSIONS_ADDED, "reason" => reason.as_str()).increment(1);
    match tokio::time::timeout(SUPPRESS_TIMEOUT, screen.store.suppress(s)).await {
        Ok(Ok(_)) => {
            tracing::info!(%reason, %channel, "the vendor reports the address gone; it is on the tenant's suppression list now")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %reason, "the vendor reports the address gone, and the store did not take the suppression; this node holds it")
        }
        Err(_) => {
            tracing::warn!(%reason, "the vendor reports the address gone, and the store did not take the suppression in time; this node holds it")
        }
    }
}

/// The stored request and the address this delivery goes to.
fn addressed(d: &ClaimedDelivery) -> Result<(NotificationRequest, Address), String> {
    let req: NotificationRequest = serde_json::from_str(&d.payload)
        .map_err(|e| format!("stored notification is unreadable: {e}"))?;
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
        Channel::Chat => r.chat.clone().map(Address::Chat),
    }
    .ok_or_else(|| format!("the recipient has no address for {}", d.channel))?;
    Ok((req, address))
}

/// The vendor-neutral message for this delivery, or why there cannot be one.
fn message(
    shared: &Shared,
    d: &ClaimedDelivery,
    req: NotificationRequest,
    address: Address,
    now_ms: i64,
) -> Result<OutboundMessage, String> {
    let content = match (&req.content, &req.template) {
        (Some(c), _) => c.clone(),
        (None, Some(t)) => shared.templates.render(t).map_err(|e| e.to_string())?,
        (None, None) => Content::default(),
    };
    let mut metadata = req.metadata;
    let unsubscribe = metadata
        .as_mut()
        .and_then(|m| m.remove(herald_core::provider::UNSUBSCRIBE_KEY))
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|_| d.channel == Channel::Email);
    if metadata.as_ref().is_some_and(|m| m.is_empty()) {
        metadata = None;
    }
    Ok(OutboundMessage {
        delivery_key: d.id.to_string(),
        notification_id: d.notification_id.to_string(),
        tenant_id: d.tenant_id.clone(),
        channel: d.channel,
        priority: d.priority,
        category: req.category,
        address,
        content,
        metadata,
        accepted_at_ms: d.accepted_at_ms,
        now_ms,
        expires_at_ms: d.expires_at_ms,
        unsubscribe,
    })
}
