//! `GET /v1/providers` (circuit state per provider account) and the dead
//! letters: `GET /v1/dead-letters`, `POST /v1/dead-letters/{id}/replay` and
//! `POST /v1/dead-letters/replay` (bulk, by filter).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::store::{DeadLetterFilter, ReplayOutcome};
use serde::Deserialize;

use super::auth::{Admin, Reader};
use super::json::{body, parse, query_args};
use super::problem::ApiError;
use super::types::{
    DeadLetterOut, DeadLettersOut, ProviderOut, ProvidersOut, ReplayFilter, Replayed, ReplayedMany,
};
use super::AppState;
use crate::dlq;

/// Every provider account on a route, with its circuit (per destination
/// for webhooks).
#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "providers",
    responses(
        (status = 200, description = "The providers", body = ProvidersOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn providers(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
) -> Json<ProvidersOut> {
    let now = herald_core::now_ms();
    let providers = state
        .providers
        .views(now, Some(&tenant))
        .into_iter()
        .map(ProviderOut::from)
        .collect();
    Json(ProvidersOut {
        providers,
        simulator: state.sandbox.clone(),
    })
}

/// The filter fields, as a query string (list) or a JSON body (bulk replay).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterArgs {
    channel: Option<String>,
    provider: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl FilterArgs {
    fn filter(&self, tenant: &str, state: &AppState) -> Result<DeadLetterFilter, ApiError> {
        let raw = dlq::RawFilter {
            channel: self.channel.as_deref(),
            provider: self.provider.as_deref(),
            since: self.since.as_deref(),
            until: self.until.as_deref(),
        };
        let limit = self
            .limit
            .filter(|l| *l == 0 || *l > dlq::MAX_PAGE)
            .map(|_| ("limit", format!("must be 1 to {}", dlq::MAX_PAGE)));
        match (
            raw.parse(Some(tenant.to_owned()), |ch| state.channels.contains(&ch)),
            limit,
        ) {
            (Ok(filter), None) => Ok(filter),
            (parsed, limit) => {
                let errors = parsed.err().unwrap_or_default().into_iter().chain(limit);
                let mut all = herald_core::validate::Errors::default();
                for (f, why) in errors {
                    all.add(f, why);
                }
                Err(ApiError::Invalid(all))
            }
        }
    }
}

/// The tenant's dead letters, oldest death first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "dead letters",
    params(
        ("channel" = Option<String>, Query, description = "email, sms, push or webhook"),
        ("provider" = Option<String>, Query, description = "The provider of the last attempt"),
        ("since" = Option<String>, Query, description = "Died at or after (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Died before (RFC 3339)"),
        ("limit" = Option<u32>, Query, description = "1 to 1,000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = DeadLettersOut),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "A parameter is unknown, repeated or out of range", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Reader(tenant): Reader,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLettersOut>, ApiError> {
    let args: FilterArgs = query_args(query.as_deref().unwrap_or(""))?;
    let filter = args.filter(&tenant, &state)?;
    let after = match &args.cursor {
        Some(c) => Some(
            dlq::parse_cursor(c)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API gave out"))?,
        ),
        None => None,
    };
    let limit = args.limit.unwrap_or(dlq::DEFAULT_PAGE);
    let page = state
        .dead_letters
        .dead_letters(&filter, after, limit)
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(dlq::cursor_after))
        .flatten();
    Ok(Json(DeadLettersOut {
        dead_letters: page.iter().map(DeadLetterOut::from).collect(),
        next_cursor: next,
    }))
}

/// Put one dead letter back in the queue: same delivery id (so the same
/// vendor key), fresh attempts.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    tag = "dead letters",
    params(("id" = String, Path, description = "The dead letter's (delivery's) id")),
    responses(
        (status = 202, description = "Queued again", body = Replayed),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "No such delivery for this tenant", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is not dead", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn replay_one(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::NotFound);
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    match state
        .dead_letters
        .replay_dead_letter(Some(&tenant), id)
        .await?
    {
        ReplayOutcome::Replayed => {
            state.bus.announce_all();
            let replayed = Replayed {
                id,
                status: "queued".into(),
            };
            Ok((StatusCode::ACCEPTED, Json(replayed)).into_response())
        }
        ReplayOutcome::NotFound => Err(ApiError::NotFound),
        ReplayOutcome::NotDead(s) => Err(ApiError::NotDead(id, s)),
    }
}

/// Put the oldest dead letters matching a filter back in the queue.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/replay",
    tag = "dead letters",
    request_body = ReplayFilter,
    responses(
        (status = 200, description = "How many were queued again", body = ReplayedMany),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "A filter field is unknown or out of range", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn replay_many(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ReplayedMany>, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let f: ReplayFilter = parse(&bytes, "")?;
    let args = FilterArgs {
        channel: f.channel,
        provider: f.provider,
        since: f.since,
        until: f.until,
        limit: f.limit,
        cursor: f.cursor,
    };
    if args.cursor.is_some() {
        return Err(ApiError::field(
            "cursor",
            "bulk replay takes the oldest first; it has no cursor",
        ));
    }
    let filter = args.filter(&tenant, &state)?;
    let limit = args.limit.unwrap_or(dlq::MAX_PAGE);
    let replayed = state
        .dead_letters
        .replay_dead_letters(&filter, limit)
        .await?;
    if replayed > 0 {
        state.bus.announce_all();
    }
    Ok(Json(ReplayedMany { replayed }))
}
