//! Accepting notifications: validation beyond the request's own rules,
//! idempotency (in flight here, or stored: the store decides as it
//! creates), and one durable store transaction for everything that passed.
//! Both POST endpoints use it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use herald_core::bus::Handoff;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::recipient::{StoredRecipient, TenantPreferences};
use herald_core::store::{
    ClaimedDelivery, CreateResult, IdempotencyRecord, NewDelivery, NewNotification, StoreError,
    StoredResponse,
};
use herald_core::validate::{validate, validate_rendered};
use sha2::{Digest, Sha256};

use super::problem::ApiError;
use super::AppState;
use crate::telemetry as m;

/// Idempotency keys whose first request is still being processed here.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<(String, String)>>);

struct InFlightGuard<'a> {
    set: &'a InFlight,
    entry: (String, String),
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, tenant: &str, key: &str) -> Option<InFlightGuard<'_>> {
        let entry = (tenant.to_owned(), key.to_owned());
        let inserted = self.lock().insert(entry.clone());
        // Only the request that inserted the key may hold the guard: its drop
        // removes the key.
        if inserted {
            Some(InFlightGuard { set: self, entry })
        } else {
            None
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.entry);
    }
}

/// The outcome of one submitted notification.
pub enum Accepted {
    /// Newly stored (or replayed from an earlier identical request).
    Stored {
        response: StoredResponse,
        replayed: bool,
    },
    Refused(ApiError),
}

/// The stored recipients `items` name by id, read in one round trip, and
/// (when any is found) the tenant's default preferences.
async fn profiles(
    state: &AppState,
    tenant: &str,
    items: &[Result<(NotificationRequest, Option<String>), ApiError>],
) -> Result<Stored, StoreError> {
    let mut ids: Vec<String> = items
        .iter()
        .filter_map(|i| i.as_ref().ok()?.0.recipient.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(Stored::default());
    }
    ids.sort_unstable();
    ids.dedup();
    let found = state.recipients.recipients(tenant, &ids).await?;
    let defaults = if found.is_empty() {
        Arc::default()
    } else {
        state.tenant_preferences.get(tenant, state).await?
    };
    Ok(Stored {
        recipients: found.into_iter().map(|r| (r.id.clone(), r)).collect(),
        defaults,
    })
}

/// The recipients a request names, as stored, and the tenant's defaults.
#[derive(Default)]
struct Stored {
    recipients: HashMap<String, StoredRecipient>,
    defaults: Arc<TenantPreferences>,
}

/// Fills what the request leaves out from the recipient it names by id.
/// The stored recipient, if it names one.
fn resolve<'a>(
    req: &mut NotificationRequest,
    stored: &'a Result<Stored, StoreError>,
) -> Result<Option<&'a StoredRecipient>, ApiError> {
    let Some(id) = &req.recipient.id else {
        return Ok(None);
    };
    match stored {
        Ok(found) => {
            let r = found.recipients.get(id);
            if let Some(r) = r {
                r.profile.resolve(req);
            }
            Ok(r)
        }
        Err(e) => Err(ApiError::Store(e.clone())),
    }
}

/// A stored recipient a notification names, and the tenant's defaults:
/// what that person's rules are decided from.
#[derive(Clone, Copy)]
struct Person<'a> {
    recipient: &'a StoredRecipient,
    defaults: &'a TenantPreferences,
}

impl<'a> Person<'a> {
    fn of(
        recipient: Option<&'a StoredRecipient>,
        stored: &'a Result<Stored, StoreError>,
    ) -> Option<Person<'a>> {
        Some(Person {
            recipient: recipient?,
            defaults: &stored.as_ref().ok()?.defaults,
        })
    }
}

/// An email to a stored recipient, of a category the tenant does not
/// require, carries a one-click unsubscribe link (RFC 8058): handed to the
/// engine under a `herald_` metadata key no client can set.
fn with_unsubscribe_link(
    state: &AppState,
    tenant: &str,
    mut req: NotificationRequest,
    person: Option<Person<'_>>,
) -> NotificationRequest {
    let (Some(links), Some(p), Some(category)) = (&state.unsubscribe, person, req.category.clone())
    else {
        return req;
    };
    if !req.channels.contains(&Channel::Email) || p.defaults.required.contains(&category) {
        return req;
    }
    let subject = super::unsubscribe::Subject {
        tenant_id: tenant.to_owned(),
        recipient_id: p.recipient.id.clone(),
        category,
    };
    if let Some(url) = links.url(&subject) {
        req.metadata.get_or_insert_with(Default::default).insert(
            herald_core::provider::UNSUBSCRIBE_KEY.to_owned(),
            url.into(),
        );
    }
    req
}

/// The tenant's frequency cap on the notification's category, for the
/// recipient it names, if any: the store counts it as it stores it.
fn cap_check(
    req: &NotificationRequest,
    person: Option<Person<'_>>,
) -> Option<herald_core::store::CapCheck> {
    let (p, category) = (person?, req.category.as_ref()?);
    if p.defaults.required.contains(category) {
        return None;
    }
    let cap = p.defaults.caps.get(category)?;
    Some(herald_core::store::CapCheck {
        recipient_id: p.recipient.id.clone(),
        category: category.clone(),
        max: cap.max,
        window_ms: i64::try_from(cap.per_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
    })
}

/// Until when a delivery of the normal or low lane that would go out at
/// `starts` waits for the recipient's quiet hours (theirs, else the
/// tenant's), in their time zone (UTC when they have none).
fn quiet_until(
    req: &NotificationRequest,
    channel: Channel,
    person: Option<Person<'_>>,
    starts: i64,
) -> Option<i64> {
    if matches!(req.priority, Priority::Critical | Priority::High) {
        return None;
    }
    let p = person?;
    let profile = &p.recipient.profile;
    let quiet = profile
        .quiet_hours
        .as_ref()
        .or(p.defaults.quiet_hours.as_ref())?;
    let tz = profile
        .timezone
        .as_deref()
        .and_then(|z| z.parse::<chrono_tz::Tz>().ok())
        .unwrap_or(chrono_tz::UTC);
    quiet.held_until(channel, starts, tz)
}

/// Why a destination is not sent to (the recipient's preferences), if not.
fn opted_out(
    req: &NotificationRequest,
    channel: Channel,
    person: Option<Person<'_>>,
) -> Option<String> {
    let p = person?;
    p.defaults
        .allows(&p.recipient.preferences, req.category.as_deref(), channel)
        .err()
}

fn check(
    state: &AppState,
    req: &NotificationRequest,
    now: chrono::DateTime<chrono::Utc>,
    resolved: bool,
) -> Result<(), ApiError> {
    let mut errs = validate(req, &state.limits, now);
    let unknown_id = !resolved && req.recipient.id.is_some();
    if unknown_id && errs.fields().iter().any(|f| f.starts_with("recipient.")) {
        errs.add(
            "recipient.id",
            "no recipient is stored under this id (PUT /v1/recipients/{id}), and the request does not give the addresses itself",
        );
    }
    for (i, c) in req.channels.iter().enumerate().take(Channel::ALL.len()) {
        if !state.channels.contains(c) {
            errs.add(
                format!("channels[{i}]"),
                format!("channel {c} is not configured on this server"),
            );
        }
    }
    // A template is rendered here, once, and what it renders is held to
    // the rules inline content keeps: the request's data must not make a
    // subject with a line break or a body over the limits.
    if let Some(t) = &req.template {
        if !state.templates.exists(&t.id) {
            errs.add("template.id", format!("unknown template {:?}", t.id));
        } else {
            match state.templates.render(t) {
                Ok(rendered) => errs.extend(validate_rendered(req, &rendered, &state.limits)),
                Err(e) => errs.add("template.data", e.to_string()),
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errs))
    }
}

/// Where a request came from, for the bus event's headers: its correlation
/// id (`x-request-id`, the client's or ours) and W3C trace context.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
}

impl Trace {
    pub fn of(headers: &axum::http::HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // With tracing on, the trace continues from this request's span
        // (itself the caller's child); off, the caller's context passes
        // through to the bus's event headers as it came.
        let traceparent = if crate::telemetry::tracing_on() {
            crate::telemetry::context::traceparent(&tracing::Span::current())
        } else {
            text("traceparent").filter(|t| valid_traceparent(t))
        };
        Trace {
            correlation_id: text("x-request-id").filter(|id| id.len() <= 200),
            traceparent,
        }
    }
}

/// `version-traceid-parentid-flags` in lowercase hex (W3C Trace Context);
/// anything else is dropped rather than passed on.
fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

fn request_hash(req: &NotificationRequest) -> Vec<u8> {
    // The parsed request re-serialized: field order and whitespace in the
    // client's JSON do not make an identical request look different.
    Sha256::digest(serde_json::to_vec(req).unwrap_or_default()).to_vec()
}

fn replay_or_conflict(existing: IdempotencyRecord, hash: &[u8]) -> Accepted {
    if existing.request_hash == hash {
        Accepted::Stored {
            response: existing.response,
            replayed: true,
        }
    } else {
        Accepted::Refused(ApiError::KeyReused)
    }
}

/// Stores `batch` in one write and, once it is stored, hands the
/// deliveries it created leased to this node's workers (`handed`: each
/// with the place of its notification in `batch`). A notification whose
/// key was taken was not stored: its places are dropped, free again. If
/// the write failed, what may have been created leased goes back to the
/// queue (most likely nothing was stored).
///
/// With something to hand, the write and the hand-off run as a task of
/// their own: a request that goes away (its client, or the request
/// timeout) while its write commits must not strand what it created
/// leased, held from every claim until the lease ran out.
async fn store(
    state: &AppState,
    batch: Vec<NewNotification>,
    handed: Vec<(usize, Handoff, ClaimedDelivery)>,
) -> Result<Vec<CreateResult>, StoreError> {
    let intake = state.intake.clone();
    let span = crate::telemetry::sampled_here()
        .then(|| tracing::info_span!("store write", otel.kind = "client"));
    let create = async move {
        use tracing::Instrument as _;
        match span {
            Some(span) => intake.create(batch).instrument(span).await,
            None => intake.create(batch).await,
        }
    };
    if handed.is_empty() {
        return create.await;
    }
    let bus = state.bus.clone();
    let write = async move {
        let created = create.await;
        match &created {
            Ok(results) => {
                let handed: Vec<_> = handed
                    .into_iter()
                    .filter(|(n, ..)| matches!(results.get(*n), Some(CreateResult::Created)))
                    .map(|(_, place, d)| (place, d))
                    .collect();
                for (_, d) in &handed {
                    metrics::counter!(m::HANDED_OFF, "channel" => d.channel.as_str()).increment(1);
                }
                bus.hand(handed).await;
            }
            Err(_) => {
                let handed = handed.into_iter().map(|(_, place, d)| (place, d)).collect();
                bus.give_back(handed).await;
            }
        }
        created
    };
    tokio::spawn(write).await.unwrap_or(Err(StoreError::Closed))
}

/// Accepts a list of requests (each with its idempotency key, if any): the
/// ones that pass are stored together in one durable transaction.
pub async fn accept(
    state: &AppState,
    tenant: &str,
    trace: &Trace,
    items: Vec<Result<(NotificationRequest, Option<String>), ApiError>>,
) -> Vec<Accepted> {
    let now = chrono::Utc::now();
    let now_ms = now.timestamp_millis();
    let mut out: Vec<Option<Accepted>> = Vec::with_capacity(items.len());
    let mut guards = Vec::new();
    // For each notification sent to the store: its index in `out`, request
    // hash, response and lane.
    let mut pending: Vec<(usize, Vec<u8>, StoredResponse, &'static str)> = Vec::new();
    let mut batch = Vec::new();
    // The channels and lanes of what is due now, to wake their workers.
    let mut due: HashSet<(Channel, Priority)> = HashSet::new();
    // Deliveries created leased, to hand to this node's workers once
    // stored: the place in `pending` of each one's notification.
    let mut handed: Vec<(usize, Handoff, ClaimedDelivery)> = Vec::new();

    let stored = profiles(state, tenant, &items).await;
    for item in items {
        let (req, key, hash, recipient) = match item.and_then(|(mut r, k)| {
            // Idempotency compares what the client sent: a retry is the
            // same request even if the stored profile changed in between.
            let hash = request_hash(&r);
            let recipient = resolve(&mut r, &stored)?;
            check(state, &r, now, recipient.is_some())?;
            state.admission.check(r.priority, &r.channels)?;
            Ok((r, k, hash, recipient))
        }) {
            Ok(x) => x,
            Err(e) => {
                out.push(Some(Accepted::Refused(e)));
                continue;
            }
        };
        let person = Person::of(recipient, &stored);
        let req = with_unsubscribe_link(state, tenant, req, person);
        if let Some(k) = &key {
            let Some(g) = state.in_flight.enter(tenant, k) else {
                out.push(Some(Accepted::Refused(ApiError::KeyInFlight)));
                continue;
            };
            // A key already stored is found by the create itself
            // (`KeyTaken`), in the same transaction: no lookup per item here.
            guards.push(g);
        }
        let id = uuid::Uuid::now_v7();
        let response = StoredResponse {
            status: 202,
            body: serde_json::to_string(&super::types::Accepted::new(id)).unwrap_or_default(),
        };
        let starts = req
            .send_at
            .map_or(now_ms, |t| t.timestamp_millis().max(now_ms));
        let expires_at_ms = req
            .ttl_seconds
            .map(|ttl| starts.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX / 2000) * 1000));
        let mut deliveries: Vec<NewDelivery> = req
            .destinations()
            .into_iter()
            .map(|d| {
                let mut held_until_ms = None;
                let ended = if let Some(why) = opted_out(&req, d.channel, person) {
                    metrics::counter!(m::PREFERENCE_SUPPRESSED, "channel" => d.channel.as_str())
                        .increment(1);
                    Some((DeliveryState::Suppressed, why))
                } else {
                    match quiet_until(&req, d.channel, person, starts) {
                        Some(until) if expires_at_ms.is_some_and(|e| e <= until) => Some((
                            DeliveryState::Expired,
                            "expired: the recipient's quiet hours end after its TTL".to_owned(),
                        )),
                        until => {
                            if until.is_some() {
                                metrics::counter!(m::QUIET_HOURS_HELD, "channel" => d.channel.as_str())
                                    .increment(1);
                            }
                            held_until_ms = until;
                            None
                        }
                    }
                };
                NewDelivery {
                    id: uuid::Uuid::now_v7(),
                    channel: d.channel,
                    target: d.target,
                    ended,
                    held_until_ms,
                    leased: None,
                }
            })
            .collect();
        // Only a notification that will send something counts.
        let cap = cap_check(&req, person).filter(|_| deliveries.iter().any(|d| d.ended.is_none()));
        // What is due at once goes straight to this node's workers where
        // the bus can hand it off (not what a cap may still suppress);
        // the rest is announced.
        let mut places = Vec::new();
        for (i, d) in deliveries.iter_mut().enumerate() {
            if d.ended.is_some() {
                continue;
            }
            let now_due = starts <= now_ms && d.held_until_ms.is_none() && cap.is_none();
            match now_due
                .then(|| state.bus.reserve(d.channel, req.priority))
                .flatten()
            {
                Some(place) => {
                    d.leased = Some(place.lease);
                    places.push((i, place));
                }
                None => {
                    due.insert((d.channel, req.priority));
                }
            }
        }
        batch.push(NewNotification {
            id,
            tenant_id: tenant.to_owned(),
            accepted_at_ms: now_ms,
            due_at_ms: starts,
            expires_at_ms,
            deliveries,
            idempotency: key.map(|k| {
                (
                    k,
                    IdempotencyRecord {
                        request_hash: hash.clone(),
                        response: response.clone(),
                    },
                )
            }),
            request: req,
            correlation_id: trace.correlation_id.clone(),
            traceparent: trace.traceparent.clone(),
            cap,
        });
        let n = &batch[batch.len() - 1];
        if !places.is_empty() {
            let payload = serde_json::to_string(&n.request).unwrap_or_default();
            for (i, place) in places {
                let d = ClaimedDelivery::handed(n, &n.deliveries[i], place.lease, payload.clone());
                handed.push((pending.len(), place, d));
            }
        }
        pending.push((out.len(), hash, response, n.request.priority.as_str()));
        out.push(None);
    }

    if !batch.is_empty() {
        let created = store(state, batch, handed).await;
        match created {
            Ok(results) => {
                for ((idx, hash, response, prio), result) in pending.into_iter().zip(results) {
                    out[idx] = Some(match result {
                        CreateResult::Created => {
                            metrics::counter!(m::ACCEPTED, "priority" => prio).increment(1);
                            Accepted::Stored {
                                response,
                                replayed: false,
                            }
                        }
                        CreateResult::KeyTaken(existing) => replay_or_conflict(existing, &hash),
                    });
                }
                let due: Vec<(Channel, Priority)> = due.into_iter().collect();
                state.bus.announce(&due);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store notifications");
                for (idx, ..) in pending {
                    out[idx] = Some(Accepted::Refused(ApiError::Store(e.clone())));
                }
            }
        }
    }
    drop(guards);
    out.into_iter()
        .map(|a| a.unwrap_or(Accepted::Refused(ApiError::ShuttingDown)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_well_formed_trace_context_is_passed_on() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(super::valid_traceparent(ok));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert!(!super::valid_traceparent(bad), "{bad}");
        }
    }
}
