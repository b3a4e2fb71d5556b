//! `POST /v1/notifications`, `POST /v1/notifications/batch` and
//! `GET /v1/notifications/{id}`: thin handlers. Both POSTs go through
//! `accept` (parse → validate → idempotency → one durable transaction → 202).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::model::{Channel, NotificationRequest};
use herald_core::store::{NotificationView, StoredResponse};
use herald_core::validate::check_idempotency_key;
use serde_json::json;

use super::accept::{accept, Accepted, Trace};
use super::auth::Tenant;
use super::json::{body, parse};
use super::problem::{problem_response, ApiError};
use super::AppState;
use crate::dlq::rfc3339;

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
    state.limiter.check(&tenant, 1)?;
    let req: NotificationRequest = parse(&bytes, "")?;
    if req.idempotency_key.is_some() {
        return Err(ApiError::field(
            "idempotency_key",
            "belongs to batch items; use the Idempotency-Key header here",
        ));
    }
    let trace = Trace::of(&headers);
    let mut results = accept(&state, &tenant, &trace, vec![Ok((req, key))]).await;
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
    state.limiter.check(&tenant, b.notifications.len())?;
    let items = b
        .notifications
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let prefix = format!("notifications[{i}]");
            let mut r = parse::<NotificationRequest>(raw.get().as_bytes(), &prefix)?;
            // The same rules as the Idempotency-Key header.
            let key = r.idempotency_key.take();
            if let Some(k) = &key {
                check_idempotency_key(k)
                    .map_err(|why| ApiError::field(format!("{prefix}.idempotency_key"), why))?;
            }
            Ok((r, key))
        })
        .collect();
    let trace = Trace::of(&headers);
    let results: Vec<serde_json::Value> = accept(&state, &tenant, &trace, items)
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
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An id that is not a UUID (or not even UTF-8) cannot exist: the same
    // 404 as any other miss.
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let view = state
        .intake
        .notification(&tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(view_json(&view)))
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
