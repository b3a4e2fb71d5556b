//! `POST /v1/notifications`, `POST /v1/notifications/batch` and
//! `GET /v1/notifications/{id}`: thin handlers. Both POSTs go through
//! `accept` (parse → validate → idempotency → one durable transaction → 202).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::model::NotificationRequest;
use herald_core::store::StoredResponse;
use herald_core::validate::check_idempotency_key;

use super::accept::{accept, Accepted, Trace};
use super::auth::{Reader, Sender};
use super::json::{body, parse, query_args};
use super::problem::{problem_response, ApiError};
use super::types::{self, BatchItem, BatchOut, CancelOut, NotificationOut};
use super::AppState;

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

/// Accept a notification: stored durably, then delivered on each channel.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "notifications",
    request_body = NotificationRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1–255 printable ASCII characters, per tenant: a repeat with the same body answers the original response (Idempotent-Replayed: true)"),
    ),
    responses(
        (status = 202, description = "Stored durably", body = types::Accepted,
            headers(("Location" = String, description = "The notification's status URL"))),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 409, description = "A request with this Idempotency-Key is still being processed", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule (errors names each), or the key was used with another body", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Throttled,
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
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

/// Accept up to `server.max_batch_items` notifications at once: one result
/// per item, in order; one bad item does not sink the others.
#[utoipa::path(
    post,
    path = "/v1/notifications/batch",
    tag = "notifications",
    request_body = types::BatchIn,
    responses(
        (status = 200, description = "One result per item", body = BatchOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "The batch is empty, too large or not of this shape", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Throttled,
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
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
    let results = accept(&state, &tenant, &trace, items)
        .await
        .into_iter()
        .map(|a| match a {
            Accepted::Stored { response, replayed } => {
                match serde_json::from_str::<types::Accepted>(&response.body) {
                    Ok(stored) => BatchItem::Accepted {
                        id: stored.id,
                        status: stored.status,
                        replayed: replayed.then_some(true),
                    },
                    Err(e) => BatchItem::Refused {
                        error: ApiError::Store(herald_core::store::StoreError::Corrupt(
                            format!("a stored response does not read back: {e}").into(),
                        ))
                        .problem(),
                    },
                }
            }
            Accepted::Refused(e) => {
                e.count();
                BatchItem::Refused { error: e.problem() }
            }
        })
        .collect();
    Ok((StatusCode::OK, Json(BatchOut { results })).into_response())
}

/// A notification, with one entry per channel (per device for push) and
/// every attempt.
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "The notification", body = NotificationOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No such notification for this tenant", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<NotificationOut>, ApiError> {
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
    Ok(Json(NotificationOut::from(&view)))
}

/// Cancel what of a notification has not gone out: each delivery still
/// queued or scheduled (a `send_at` in the future, a retry) ends
/// `cancelled`, in one step with the workers' claims, so none is sent
/// after; one already sent, failed or being sent right now stays as it is
/// and is reported with its state. Cancelling twice changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "Each delivery as the cancel left it", body = CancelOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No such notification for this tenant", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CancelOut>, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    cancelled(&state, &tenant, id).await
}

/// `DELETE /v1/notifications?idempotency_key=…`'s query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ByKey {
    idempotency_key: String,
}

/// Cancel the notification an idempotency key made (as
/// `DELETE /v1/notifications/{id}`), for a client that never heard its id.
#[utoipa::path(
    delete,
    path = "/v1/notifications",
    tag = "notifications",
    params(("idempotency_key" = String, Query, description = "The Idempotency-Key the notification was sent with")),
    responses(
        (status = 200, description = "Each delivery as the cancel left it", body = CancelOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No notification made with this key for this tenant (or the key has been purged)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No idempotency_key given, or not a valid one", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn cancel_by_key(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
    RawQuery(query): RawQuery,
) -> Result<Json<CancelOut>, ApiError> {
    let args: ByKey = query_args(query.as_deref().unwrap_or(""))?;
    check_idempotency_key(&args.idempotency_key)
        .map_err(|why| ApiError::field("idempotency_key", why))?;
    let id = state
        .intake
        .notification_for_key(&tenant, &args.idempotency_key)
        .await?
        .ok_or(ApiError::NotFound)?;
    cancelled(&state, &tenant, id).await
}

pub(crate) async fn cancelled(
    state: &AppState,
    tenant: &str,
    id: uuid::Uuid,
) -> Result<Json<CancelOut>, ApiError> {
    let left = state
        .intake
        .cancel(tenant, id, herald_core::now_ms())
        .await?
        .ok_or(ApiError::NotFound)?;
    let n = left.iter().filter(|d| d.cancelled).count();
    if n > 0 {
        tracing::info!(notification_id = %id, cancelled = n, "a notification was cancelled");
        metrics::counter!(crate::telemetry::CANCELLED).increment(n as u64);
    }
    Ok(Json(CancelOut {
        id,
        cancelled: n,
        channels: left.iter().map(types::CancelledOut::from).collect(),
    }))
}

/// Any unmatched route: a problem document, not an empty 404.
pub async fn fallback() -> Response {
    problem_response(StatusCode::NOT_FOUND, &ApiError::NotFound.problem())
}
