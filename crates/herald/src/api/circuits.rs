//! Circuits by hand: `PUT /v1/providers/{name}/hold` holds a provider's
//! circuit open (no call goes to it, critical messages fail over at once),
//! `DELETE` releases the hold and closes the circuit by hand. Holds live in
//! the store, so every delivering node of a fleet keeps them (each reads
//! them every two seconds; this node at once). The console acts through
//! [`hold`] and [`release`] too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use herald_core::store::CircuitHold;
use herald_core::validate::Errors;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Admin;
use super::json::{body, parse};
use super::problem::ApiError;
use super::types::ProviderOut;
use super::AppState;

/// Why the circuit is held: kept with it, shown wherever it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldIn {
    /// 1 to 500 characters, no control characters.
    #[schema(example = "Twilio incident INC-4411: failing over to SNS")]
    pub reason: String,
}

/// Longest reason kept with a hold.
const MAX_REASON: usize = 500;

/// The reason as kept, or why it is refused.
pub fn check_reason(reason: &str) -> Result<String, &'static str> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("say why (it is kept with the hold and shown wherever the circuit is)");
    }
    if reason.chars().count() > MAX_REASON {
        return Err("at most 500 characters");
    }
    if reason.chars().any(char::is_control) {
        return Err("no control characters");
    }
    Ok(reason.to_owned())
}

/// Holds `provider`'s circuit open for `by` with `reason` (checked); the
/// provider as it stands after.
pub async fn hold(
    state: &AppState,
    provider: &str,
    by: &str,
    reason: &str,
) -> Result<ProviderOut, ApiError> {
    known(state, provider)?;
    let reason = check_reason(reason).map_err(|why| ApiError::field("reason", why))?;
    let hold = CircuitHold {
        provider: provider.to_owned(),
        by: by.to_owned(),
        reason,
        since_ms: herald_core::now_ms(),
    };
    tracing::warn!(provider, by, reason = %hold.reason, "circuit held open by hand");
    state.circuits.hold_circuit(hold).await?;
    take_holds(state).await?;
    known(state, provider)
}

/// Releases `provider`'s hold (if any) and closes its circuit by hand; the
/// provider as it stands after.
pub async fn release(state: &AppState, provider: &str, by: &str) -> Result<ProviderOut, ApiError> {
    known(state, provider)?;
    let was_held = state.circuits.release_circuit(provider).await?;
    tracing::info!(provider, by, was_held, "circuit closed by hand");
    take_holds(state).await?;
    state.providers.close_by_hand(provider);
    known(state, provider)
}

/// This node takes the store's holds now, not at its next read.
async fn take_holds(state: &AppState) -> Result<(), ApiError> {
    let holds = state.circuits.circuit_holds().await?;
    state.providers.apply_holds(&holds);
    Ok(())
}

/// The provider account named, as the API shows it.
fn known(state: &AppState, provider: &str) -> Result<ProviderOut, ApiError> {
    state
        .providers
        .views(herald_core::now_ms(), None)
        .into_iter()
        .find(|a| a.name == provider)
        .map(ProviderOut::from)
        .ok_or(ApiError::NotFound)
}

/// Hold a provider's circuit open by hand: no call goes to it on any node
/// (each takes the hold within two seconds) until it is released;
/// critical messages fail over at once, others wait.
#[utoipa::path(
    put,
    path = "/v1/providers/{name}/hold",
    tag = "providers",
    params(("name" = String, Path, description = "The provider account's name")),
    request_body = HoldIn,
    responses(
        (status = 200, description = "Held: the provider as it stands now", body = ProviderOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No such provider account", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The reason is missing or unusable", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put_hold(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ProviderOut>, ApiError> {
    let Ok(Path(name)) = name else {
        return Err(ApiError::NotFound);
    };
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let input: HoldIn = parse(&bytes, "")?;
    let mut errs = Errors::default();
    if let Err(why) = check_reason(&input.reason) {
        errs.add("reason", why);
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let by = format!("API key of tenant {tenant}");
    Ok(Json(hold(&state, &name, &by, &input.reason).await?))
}

/// Release a provider's hold and close its circuit by hand (an
/// automatically opened circuit too, on this node): calls go to it again.
#[utoipa::path(
    delete,
    path = "/v1/providers/{name}/hold",
    tag = "providers",
    params(("name" = String, Path, description = "The provider account's name")),
    responses(
        (status = 200, description = "Closed: the provider as it stands now", body = ProviderOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No such provider account", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn delete_hold(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ProviderOut>, ApiError> {
    let Ok(Path(name)) = name else {
        return Err(ApiError::NotFound);
    };
    let by = format!("API key of tenant {tenant}");
    Ok(Json(release(&state, &name, &by).await?))
}
