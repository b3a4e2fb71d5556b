//! A tenant's recipients: `PUT`, `GET`, `PATCH` and `DELETE
//! /v1/recipients/{id}`, the people its notifications may name by
//! `recipient.id` alone (`herald_core::recipient`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_core::recipient::{
    check_id, validate_preferences, validate_profile, validate_tenant_preferences, Preferences,
    Profile, StoredRecipient, TenantPreferences,
};
use herald_core::store::StoreError;
use herald_core::store::{update_profile, PutRecipient, Updated};

use super::auth::{Admin, Reader, Sender};
use super::json::{body, from_value, parse};
use super::problem::ApiError;
use super::types::{ErasedOut, RecipientOut};
use super::AppState;
use crate::dlq::rfc3339;

/// How many times a PATCH reads and writes again when another write came
/// between its read and its write.
const PATCH_ROUNDS: usize = 5;

fn out(id: String, profile: Profile, version: i64, updated_at_ms: i64) -> RecipientOut {
    RecipientOut::new(id, profile, version, rfc3339(updated_at_ms))
}

/// The path's recipient id, to store a recipient under: one Herald cannot
/// use is a 422 naming it.
fn new_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    check_id(&id).map_err(|why| ApiError::field("id", why))?;
    Ok(id)
}

/// The path's recipient id, of one that may be stored: an id no recipient
/// could have is simply not found (as any other miss).
fn recipient_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    check_id(&id).map_err(|_| ApiError::NotFound)?;
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
        super::problem::Forbidden,
        (status = 422, description = "An address, the locale, the time zone or the data is not one Herald can use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RecipientOut>), ApiError> {
    let id = new_id(id)?;
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
    Ok((status, Json(out(id, profile, version, now))))
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
        super::problem::Forbidden,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RecipientOut>, ApiError> {
    let id = recipient_id(id)?;
    let r = stored(&state, &tenant, &id).await?;
    Ok(Json(out(r.id, r.profile, r.version, r.updated_at_ms)))
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
        super::problem::Forbidden,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other writes kept coming between this one's read and write; try again", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The patched profile is not one Herald can use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
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
    let patched = update_profile(
        state.recipients.as_ref(),
        &tenant,
        &id,
        PATCH_ROUNDS,
        |current| {
            let mut doc = serde_json::to_value(&current)
                .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            merge_patch(&mut doc, &patch);
            let profile: Profile = from_value(doc, "")?;
            checked(&state, &profile)?;
            Ok::<_, ApiError>(Some(profile))
        },
    )
    .await?;
    match patched {
        Updated::Written {
            profile,
            version,
            at_ms,
        } => Ok(Json(out(id, *profile, version, at_ms))),
        Updated::Missing | Updated::Unchanged => Err(ApiError::NotFound),
        Updated::Conflict => Err(ApiError::Conflict(
            "the recipient kept changing while this patch was applied; send it again".into(),
        )),
    }
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
        super::problem::Forbidden,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ErasedOut>, ApiError> {
    let id = recipient_id(id)?;
    let Some(gone) = state.recipients.delete_recipient(&tenant, &id).await? else {
        return Err(ApiError::NotFound);
    };
    tracing::info!(tenant = %tenant, "a recipient was erased");
    let mut erased = gone.profile.erased();
    erased.preferences = gone.preferences.categories.len();
    Ok(Json(ErasedOut { id, erased }))
}

/// A recipient's preferences: per category, per channel, opted in or out.
#[utoipa::path(
    get,
    path = "/v1/recipients/{id}/preferences",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person")),
    responses(
        (status = 200, description = "The preferences (empty when none were set)", body = Preferences),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get_preferences(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Preferences>, ApiError> {
    let id = recipient_id(id)?;
    Ok(Json(stored(&state, &tenant, &id).await?.preferences))
}

/// Set a recipient's preferences (replacing them): `{"categories":
/// {"marketing": {"email": false, "sms": false}}}`. A notification of a
/// category the recipient opted out of on a channel is accepted, and that
/// delivery ends `suppressed` (reason `preference`) without a vendor call.
/// The tenant's required categories cannot be opted out of.
#[utoipa::path(
    put,
    path = "/v1/recipients/{id}/preferences",
    tag = "recipients",
    params(("id" = String, Path, description = "The tenant's own id for the person")),
    request_body = Preferences,
    responses(
        (status = 200, description = "Set", body = Preferences),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No recipient with this id", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A category name Herald cannot use, or an opt-out of a required category", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put_preferences(
    State(state): State<Arc<AppState>>,
    Sender(tenant): Sender,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Preferences>, ApiError> {
    let id = recipient_id(id)?;
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let prefs: Preferences = parse(&bytes, "")?;
    let defaults = state.tenant_preferences.get(&tenant, &state).await?;
    let errs = validate_preferences(&prefs, &defaults);
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let written = state
        .recipients
        .set_preferences(&tenant, &id, prefs.clone(), None, herald_core::now_ms())
        .await?;
    if written.is_some() {
        Ok(Json(prefs))
    } else {
        Err(ApiError::NotFound)
    }
}

/// The tenant's default preferences and required categories.
#[utoipa::path(
    get,
    path = "/v1/preferences",
    tag = "recipients",
    responses(
        (status = 200, description = "The defaults (empty when none were set)", body = TenantPreferences),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn get_defaults(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
) -> Result<Json<TenantPreferences>, ApiError> {
    Ok(Json(state.recipients.tenant_preferences(&tenant).await?))
}

/// Set the tenant's defaults: per category, per channel, on or off for a
/// recipient who has not said (`{"categories": {"marketing": {"sms":
/// false}}}`: marketing texts only to those who opted in), and the
/// categories no recipient may opt out of (`"required": ["security"]`).
#[utoipa::path(
    put,
    path = "/v1/preferences",
    tag = "recipients",
    request_body = TenantPreferences,
    responses(
        (status = 200, description = "Set", body = TenantPreferences),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "A category name Herald cannot use", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put_defaults(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantPreferences>, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let prefs: TenantPreferences = parse(&bytes, "")?;
    let errs = validate_tenant_preferences(&prefs);
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    state
        .recipients
        .set_tenant_preferences(&tenant, prefs.clone())
        .await?;
    state.tenant_preferences.put(&tenant, prefs.clone());
    Ok(Json(prefs))
}

/// Each tenant's default preferences as this node last read them: read
/// from the store at most every `DEFAULTS_FOR` per tenant (they change
/// rarely; a change made through this node is seen at once, one made
/// through another within that time).
#[derive(Default)]
pub struct TenantDefaults(Mutex<HashMap<String, (Instant, Arc<TenantPreferences>)>>);

const DEFAULTS_FOR: Duration = Duration::from_secs(5);

impl TenantDefaults {
    pub async fn get(
        &self,
        tenant: &str,
        state: &AppState,
    ) -> Result<Arc<TenantPreferences>, StoreError> {
        if let Some((at, p)) = self.lock().get(tenant) {
            if at.elapsed() < DEFAULTS_FOR {
                return Ok(p.clone());
            }
        }
        let fresh = state.recipients.tenant_preferences(tenant).await?;
        Ok(self.put(tenant, fresh))
    }

    fn put(&self, tenant: &str, prefs: TenantPreferences) -> Arc<TenantPreferences> {
        let p = Arc::new(prefs);
        self.lock()
            .insert(tenant.to_owned(), (Instant::now(), p.clone()));
        p
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<TenantPreferences>)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
