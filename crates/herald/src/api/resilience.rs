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
use herald_core::model::Channel;
use herald_core::store::{DeadLetterFilter, ReplayOutcome};
use serde::Deserialize;
use serde_json::json;

use super::auth::Tenant;
use super::json::{body, parse};
use super::problem::ApiError;
use super::AppState;
use crate::dlq::{self, rfc3339};

pub async fn providers(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
) -> Json<serde_json::Value> {
    let now = herald_core::now_ms();
    let list: Vec<serde_json::Value> = state
        .accounts
        .views(now, Some(&tenant))
        .into_iter()
        .map(|a| {
            let circuit = |c: &herald_core::breaker::BreakerView| {
                json!({
                    "state": c.state,
                    "consecutive_failures": c.consecutive_failures,
                    "opened_at": c.opened_at_ms.map(rfc3339),
                    "reopens_at": c.reopens_at_ms.map(rfc3339),
                })
            };
            let mut v = json!({
                "name": a.name,
                "vendor": a.vendor,
                "channel": a.channel,
                "circuit": circuit(&a.circuit),
                "rate_limit_per_second": a.rate_limit_per_second,
                "max_concurrency": a.max_concurrency,
                "in_flight": a.in_flight,
                "request_timeout_ms": a.request_timeout_ms,
            });
            if let Some(d) = &a.destinations {
                let open: Vec<serde_json::Value> = d
                    .open
                    .iter()
                    .map(|o| json!({"origin": o.origin, "circuit": circuit(&o.circuit)}))
                    .collect();
                v["destinations"] = json!({
                    "tracked": d.tracked,
                    "max_tracked": d.max_tracked,
                    "open_count": d.open_count,
                    "open": open,
                });
            }
            v
        })
        .collect();
    Json(json!({ "providers": list }))
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

pub async fn list(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let args: FilterArgs = serde_urlencoded_args(query.as_deref().unwrap_or(""))?;
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
    let items: Vec<_> = page.iter().map(dlq::view).collect();
    Ok(Json(json!({ "dead_letters": items, "next_cursor": next })))
}

/// Query strings are parsed strictly: an unknown or repeated parameter is a
/// 422 naming it, not silently ignored.
fn serde_urlencoded_args(q: &str) -> Result<FilterArgs, ApiError> {
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        let value = if k == "limit" {
            match v.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => return Err(ApiError::field("limit", "must be a whole number")),
            }
        } else {
            json!(v)
        };
        if map.insert(k.to_string(), value).is_some() {
            return Err(ApiError::field(k.to_string(), "is given more than once"));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
        let msg = e.to_string();
        ApiError::field("query", msg)
    })
}

pub async fn replay_one(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
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
            state.bus.announce(&Channel::ALL);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "status": "queued"})),
            )
                .into_response())
        }
        ReplayOutcome::NotFound => Err(ApiError::NotFound),
        ReplayOutcome::NotDead(s) => Err(ApiError::NotDead(id, s)),
    }
}

pub async fn replay_many(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let args: FilterArgs = parse(&bytes, "")?;
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
        state.bus.announce(&Channel::ALL);
    }
    Ok(Json(json!({ "replayed": replayed })))
}
