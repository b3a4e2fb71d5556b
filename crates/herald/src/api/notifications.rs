//! `POST /v1/notifications`, `POST /v1/notifications/batch` and
//! `GET /v1/notifications/{id}`. Both POSTs go through one path, `accept`:
//! parse → validate → idempotency → one durable store transaction → 202.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::model::{Channel, NotificationRequest};
use herald_core::store::{
    CreateResult, IdempotencyRecord, NewDelivery, NewNotification, NotificationView, StoredResponse,
};
use herald_core::validate::{check_idempotency_key, validate, FieldError};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::Tenant;
use super::problem::{problem_response, ApiError};
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
enum Accepted {
    /// Newly stored (or replayed from an earlier identical request).
    Stored {
        response: StoredResponse,
        replayed: bool,
    },
    Refused(ApiError),
}

/// Reads the body, mapping the size limit to 413 and checking the media type.
fn body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::MalformedJson(rej.body_text())
        }
    })
}

/// Parses JSON, telling malformed JSON (400) from a well-formed body of the
/// wrong shape (422, with the path of the offending field).
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = match (prefix.is_empty(), path == ".") {
                    (true, true) => "body".to_owned(),
                    (true, false) => path,
                    (false, true) => prefix.to_owned(),
                    (false, false) => format!("{prefix}.{path}"),
                };
                ApiError::field(field, strip_position(&inner.to_string()))
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn check(
    state: &AppState,
    req: &NotificationRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let mut errs = validate(req, &state.limits, now);
    for (i, c) in req.channels.iter().enumerate() {
        if !state.channels.contains(c) {
            errs.push(FieldError::new(
                format!("channels[{i}]"),
                format!("channel {c} is not configured on this server"),
            ));
        }
    }
    if let Some(t) = &req.template {
        if !state.templates.exists(&t.id) {
            errs.push(FieldError::new(
                "template.id",
                format!("unknown template {:?}", t.id),
            ));
        } else if let Err(e) = state.templates.render(t) {
            errs.push(FieldError::new("template.data", e.to_string()));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errs))
    }
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

/// Accepts a list of requests (each with its idempotency key, if any): the
/// ones that pass are stored together in one durable transaction.
async fn accept(
    state: &AppState,
    tenant: &str,
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
    let mut channels: HashSet<Channel> = HashSet::new();

    for item in items {
        let (req, key) = match item.and_then(|(r, k)| check(state, &r, now).map(|()| (r, k))) {
            Ok(x) => x,
            Err(e) => {
                out.push(Some(Accepted::Refused(e)));
                continue;
            }
        };
        let hash = request_hash(&req);
        if let Some(k) = &key {
            let Some(g) = state.in_flight.enter(tenant, k) else {
                out.push(Some(Accepted::Refused(ApiError::KeyInFlight)));
                continue;
            };
            guards.push(g);
            match state.store.idempotency(tenant, k).await {
                Ok(Some(existing)) => {
                    out.push(Some(replay_or_conflict(existing, &hash)));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out.push(Some(Accepted::Refused(e.into())));
                    continue;
                }
            }
        }
        let id = uuid::Uuid::now_v7();
        let response = StoredResponse {
            status: 202,
            body: json!({"id": id, "status": "accepted"}).to_string(),
        };
        let starts = req
            .send_at
            .map_or(now_ms, |t| t.timestamp_millis().max(now_ms));
        let expires_at_ms = req
            .ttl_seconds
            .map(|ttl| starts.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX / 2000) * 1000));
        let deliveries = req
            .destinations()
            .into_iter()
            .map(|d| {
                channels.insert(d.channel);
                NewDelivery {
                    id: uuid::Uuid::now_v7(),
                    channel: d.channel,
                    target: d.target,
                }
            })
            .collect();
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
        });
        pending.push((
            out.len(),
            hash,
            response,
            batch[batch.len() - 1].request.priority.as_str(),
        ));
        out.push(None);
    }

    if !batch.is_empty() {
        match state.store.create(batch).await {
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
                let chans: Vec<Channel> = channels.into_iter().collect();
                state.bus.announce(&chans);
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

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().map_err(|_| {
        ApiError::field("Idempotency-Key", "must be printable ASCII without spaces")
    })?;
    check_idempotency_key(key).map_err(|why| ApiError::field("Idempotency-Key", why))?;
    Ok(Some(key.to_owned()))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let key = idempotency_header(&headers)?;
    let req: NotificationRequest = parse(&bytes, "")?;
    if req.idempotency_key.is_some() {
        return Err(ApiError::field(
            "idempotency_key",
            "belongs to batch items; use the Idempotency-Key header here",
        ));
    }
    let mut results = accept(&state, &tenant, vec![Ok((req, key))]).await;
    match results.pop() {
        Some(Accepted::Stored { response, replayed }) => Ok(stored_response(response, replayed)),
        Some(Accepted::Refused(e)) => Err(e),
        None => Err(ApiError::ShuttingDown),
    }
}

fn stored_response(r: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::ACCEPTED);
    let location = serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(|id| format!("/v1/notifications/{id}")));
    let mut resp = (status, r.body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, l);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    notifications: Vec<Box<serde_json::value::RawValue>>,
}

pub async fn batch(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::field(
            "Idempotency-Key",
            "a batch is not idempotent as a whole; give each item its own idempotency_key",
        ));
    }
    let b: BatchBody = parse(&bytes, "")?;
    if b.notifications.is_empty() || b.notifications.len() > state.max_batch_items {
        return Err(ApiError::field(
            "notifications",
            format!("must hold 1 to {} items", state.max_batch_items),
        ));
    }
    let items = b
        .notifications
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let prefix = format!("notifications[{i}]");
            parse::<NotificationRequest>(raw.get().as_bytes(), &prefix).map(|mut r| {
                let k = r.idempotency_key.take();
                (r, k)
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = accept(&state, &tenant, items)
        .await
        .into_iter()
        .map(|a| match a {
            Accepted::Stored { response, replayed } => {
                let mut v: serde_json::Value =
                    serde_json::from_str(&response.body).unwrap_or_default();
                if replayed {
                    v["replayed"] = json!(true);
                }
                v
            }
            Accepted::Refused(e) => {
                e.count();
                json!({"error": e.problem()})
            }
        })
        .collect();
    Ok((StatusCode::OK, Json(json!({ "results": results }))).into_response())
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An id that is not a UUID cannot exist: the same 404 as any other miss.
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let view = state
        .store
        .notification(&tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(view_json(&view)))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn view_json(v: &NotificationView) -> serde_json::Value {
    let done = v.deliveries.iter().all(|d| d.state.is_terminal());
    let deliveries: Vec<serde_json::Value> = v
        .deliveries
        .iter()
        .map(|d| {
            let attempts: Vec<serde_json::Value> = d
                .attempts
                .iter()
                .map(|a| {
                    json!({
                        "attempt": a.attempt,
                        "at": rfc3339(a.at_ms),
                        "provider": a.provider,
                        "outcome": a.outcome,
                        "status_code": a.status_code,
                        "latency_ms": a.latency_ms,
                        "error": a.error,
                    })
                })
                .collect();
            let mut e = json!({
                "delivery_id": d.id,
                "channel": d.channel,
                "state": d.state,
                "provider": d.provider,
                "vendor_message_id": d.vendor_message_id,
                "attempts": attempts,
                "last_error": d.last_error,
                "sent_at": d.sent_at_ms.map(rfc3339),
                "updated_at": rfc3339(d.updated_at_ms),
            });
            if d.channel == Channel::Push {
                e["device"] = json!(d.target);
            }
            e
        })
        .collect();
    json!({
        "id": v.id,
        "status": if done { "completed" } else { "in_progress" },
        "priority": v.request.priority,
        "category": v.request.category,
        "created_at": rfc3339(v.accepted_at_ms),
        "expires_at": v.expires_at_ms.map(rfc3339),
        "metadata": v.request.metadata,
        "channels": deliveries,
    })
}

/// Any unmatched route: a problem document, not an empty 404.
pub async fn fallback() -> Response {
    problem_response(StatusCode::NOT_FOUND, &ApiError::NotFound.problem())
}
