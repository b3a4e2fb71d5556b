//! The tenant's callback: `GET`, `PUT` and `DELETE /v1/callbacks`. Herald
//! posts a signed `notification.<state>` event there when a delivery
//! reaches a state the tenant asked for (`engine::callbacks`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_core::model::DeliveryState;
use herald_core::store::Callback;
use herald_core::validate::{check_webhook_url, Errors};

use super::auth::{Admin, Reader};
use super::json::{body, parse};
use super::problem::ApiError;
use super::types::{CallbackIn, CallbackOut};
use super::AppState;

/// The states a callback may ask for (and gets by default): the final ones.
pub const EVENTS: [DeliveryState; 9] = [
    DeliveryState::Sent,
    DeliveryState::Failed,
    DeliveryState::Dead,
    DeliveryState::Expired,
    DeliveryState::Suppressed,
    DeliveryState::Delivered,
    DeliveryState::Undelivered,
    DeliveryState::Bounced,
    DeliveryState::Complained,
];

fn out(c: Callback) -> CallbackOut {
    CallbackOut {
        url: c.url,
        events: c.events,
    }
}

/// The tenant's callback.
#[utoipa::path(
    get,
    path = "/v1/callbacks",
    tag = "callbacks",
    responses(
        (status = 200, description = "The callback", body = CallbackOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "The tenant has no callback", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
) -> Result<Json<CallbackOut>, ApiError> {
    match state.tenants.callback(&tenant).await? {
        Some(c) => Ok(Json(out(c))),
        None => Err(ApiError::NotFound),
    }
}

/// Set the tenant's callback: Herald posts `notification.<state>` events
/// (Standard Webhooks, signed as every webhook) to `url` for the `events`
/// asked for (by default every final state), with the retries, circuit and
/// dead letters of any webhook.
#[utoipa::path(
    put,
    path = "/v1/callbacks",
    tag = "callbacks",
    request_body = CallbackIn,
    responses(
        (status = 200, description = "Set", body = CallbackOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "The URL or an event is not one Herald can use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackOut>, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let input: CallbackIn = parse(&bytes, "")?;
    let mut errs = Errors::default();
    if let Err(why) = check_webhook_url(&input.url, &state.limits) {
        errs.add("url", why.0);
    }
    let events = match input.events {
        None => EVENTS.to_vec(),
        Some(e) if e.is_empty() => {
            errs.add(
                "events",
                "at least one, or leave it out for every final state",
            );
            Vec::new()
        }
        Some(e) => {
            for (i, s) in e.iter().enumerate() {
                if !EVENTS.contains(s) {
                    let names: Vec<&str> = EVENTS.iter().map(|s| s.as_str()).collect();
                    errs.add(
                        format!("events[{i}]"),
                        format!("must be a final state: {}", names.join(", ")),
                    );
                }
            }
            let mut e = e;
            e.dedup();
            e
        }
    };
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let callback = Callback {
        url: input.url,
        events,
    };
    state
        .tenants
        .set_callback(&tenant, Some(callback.clone()))
        .await?;
    if let Some(cb) = &state.callbacks {
        cb.forget(&tenant);
    }
    Ok(Json(out(callback)))
}

/// Remove the tenant's callback.
#[utoipa::path(
    delete,
    path = "/v1/callbacks",
    tag = "callbacks",
    responses(
        (status = 204, description = "Removed"),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "The tenant has no callback", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
) -> Result<StatusCode, ApiError> {
    if state.tenants.callback(&tenant).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    state.tenants.set_callback(&tenant, None).await?;
    if let Some(cb) = &state.callbacks {
        cb.forget(&tenant);
    }
    Ok(StatusCode::NO_CONTENT)
}
