//! A tenant's recipients: `PUT`, `GET`, `PATCH` and `DELETE
//! /v1/recipients/{id}`, the people its notifications may name by
//! `recipient.id` alone (`herald_core::recipient`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_core::recipient::{check_id, validate_profile, Profile, StoredRecipient};
use herald_core::store::PutRecipient;

use super::auth::Tenant;
use super::json::{body, from_value, parse};
use super::problem::ApiError;
use super::types::{ErasedOut, RecipientOut};
use super::AppState;
use crate::dlq::rfc3339;

/// How many times a PATCH reads and writes again when another write came
/// between its read and its write.
const PATCH_ROUNDS: usize = 5;

fn out(r: StoredRecipient) -> RecipientOut {
    RecipientOut {
        id: r.id,
        profile: r.profile,
        version: r.version,
        updated_at: rfc3339(r.updated_at_ms),
    }
}

/// The path's recipient id, checked.
fn recipient_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    check_id(&id).map_err(|why| ApiError::field("id", why))?;
    Ok(id)
}

fn checked(state: &AppState, profile: &Profile) -> Result<(), ApiError> {
    let errs = validate_profile(profile, &state.limits);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errs))
    }
}

async fn stored(state: &AppState, tenant: &str, id: &str) -> Result<StoredRecipient, ApiError> {
    state
        .recipients
        .recipients(tenant, &[id.to_owned()])
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound)
}

/// Store a recipient: their addresses, locale, time zone and template
/// data, replacing what was stored under this id. Notifications already
/// accepted keep the addresses they were accepted with.
#[utoipa::path(
    put,
    path = "/v1/recipients/{id}",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person (1 to 256 bytes)")),
    request_body = Profile,
    responses(
        (status = 200, description = "Replaced", body = RecipientOut),
        (status = 201, description = "Created", body = RecipientOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        (status = 422, description = "An address, the locale, the time zone or the data is not one Herald can use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RecipientOut>), ApiError> {
    let id = recipient_id(id)?;
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let profile: Profile = parse(&bytes, "")?;
    checked(&state, &profile)?;
    let now = herald_core::now_ms();
    let written = state
        .recipients
        .put_recipient(&tenant, &id, profile.clone(), None, now)
        .await?;
    let PutRecipient::Written { version, created } = written else {
        // An unconditional write is never refused for its version.
        return Err(ApiError::KeyInFlight);
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let r = StoredRecipient {
        id,
        profile,
        version,
        updated_at_ms: now,
    };
    Ok((status, Json(out(r))))
}

/// A stored recipient.
#[utoipa::path(
    get,
    path = "/v1/recipients/{id}",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person")),
    responses(
        (status = 200, description = "The recipient", body = RecipientOut),
        super::problem::Unauthorized,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RecipientOut>, ApiError> {
    let id = recipient_id(id)?;
    Ok(Json(out(stored(&state, &tenant, &id).await?)))
}

/// Change some of a recipient's fields: a JSON merge patch (RFC 7396):
/// the fields given replace the stored ones, `null` removes one, an
/// object (`data`) is merged key by key. Concurrent changes do not lose
/// each other.
#[utoipa::path(
    patch,
    path = "/v1/recipients/{id}",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person")),
    request_body(content = Object, description = "A JSON merge patch of the profile", content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Changed", body = RecipientOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other writes kept coming between this one's read and write; try again", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The patched profile is not one Herald can use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<RecipientOut>, ApiError> {
    let id = recipient_id(id)?;
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let patch: serde_json::Value = parse(&bytes, "")?;
    if !patch.is_object() {
        return Err(ApiError::field(
            "",
            "a merge patch of a profile is a JSON object",
        ));
    }
    for _ in 0..PATCH_ROUNDS {
        let current = stored(&state, &tenant, &id).await?;
        let mut doc = serde_json::to_value(&current.profile)
            .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        merge_patch(&mut doc, &patch);
        let profile: Profile = from_value(doc, "")?;
        checked(&state, &profile)?;
        let now = herald_core::now_ms();
        let written = state
            .recipients
            .put_recipient(&tenant, &id, profile.clone(), Some(current.version), now)
            .await?;
        if let PutRecipient::Written { version, .. } = written {
            return Ok(Json(out(StoredRecipient {
                id,
                profile,
                version,
                updated_at_ms: now,
            })));
        }
    }
    Err(ApiError::Conflict(
        "the recipient kept changing while this patch was applied; send it again".into(),
    ))
}

/// Erase a recipient (a right-to-erasure request): the profile and every
/// address, language, time zone and datum it held. Says what it removed.
/// Notifications already accepted keep what they were accepted with until
/// `store.retention_hours` purges them; suppression-list entries stay, so
/// an address that bounced or complained is not written to again.
#[utoipa::path(
    delete,
    path = "/v1/recipients/{id}",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person")),
    responses(
        (status = 200, description = "Erased; what was removed", body = ErasedOut),
        super::problem::Unauthorized,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ErasedOut>, ApiError> {
    let id = recipient_id(id)?;
    let Some(gone) = state.recipients.delete_recipient(&tenant, &id).await? else {
        return Err(ApiError::NotFound);
    };
    tracing::info!(tenant = %tenant, "a recipient was erased");
    Ok(Json(ErasedOut {
        id,
        erased: gone.profile.erased(),
    }))
}

/// RFC 7396: `patch`'s members replace `target`'s, `null` removes one,
/// objects merge member by member. (Ten lines of the RFC's own
/// pseudo-code; not worth a crate.)
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(t) = target {
        for (k, v) in members {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_patch;

    #[test]
    fn merge_patch_follows_rfc_7396s_examples() {
        // RFC 7396, appendix A (a selection).
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
    }
}
