//! The tenant's suppression list: `GET /v1/suppressions` (paged,
//! filtered), `PUT /v1/suppressions` (add one, or give it a new reason)
//! and `DELETE /v1/suppressions?channel=…&address=…` (lift one).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use herald_core::model::Channel;
use herald_core::store::{SuppressionCursor, SuppressionFilter};
use herald_core::suppression::{check_address, normalize, Suppression, SuppressionReason};
use herald_core::validate::Errors;
use serde::Deserialize;

use super::auth::{Admin, Reader};
use super::json::{body, parse, query_args};
use super::problem::ApiError;
use super::types::{SuppressionIn, SuppressionOut, SuppressionsOut};
use super::AppState;

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1_000;
/// The longest note an entry keeps.
pub const MAX_DETAIL_BYTES: usize = 1_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    channel: Option<String>,
    reason: Option<String>,
    address: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiftArgs {
    channel: Option<String>,
    address: Option<String>,
}

/// The tenant's suppressed addresses, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/suppressions",
    tag = "suppressions",
    params(
        ("channel" = Option<String>, Query, description = "email, sms, push or webhook"),
        ("reason" = Option<String>, Query, description = "bounce, complaint, unsubscribed, unregistered, gone or manual"),
        ("address" = Option<String>, Query, description = "One address (needs channel)"),
        ("limit" = Option<u32>, Query, description = "1 to 1,000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = SuppressionsOut),
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
) -> Result<Json<SuppressionsOut>, ApiError> {
    let args: ListArgs = query_args(query.as_deref().unwrap_or(""))?;
    let mut errs = Errors::default();
    let channel = channel_arg(args.channel.as_deref(), &mut errs);
    let reason = args.reason.as_deref().and_then(|r| {
        r.parse::<SuppressionReason>()
            .map_err(|_| errs.add("reason", reasons_allowed()))
            .ok()
    });
    let address = match (&args.address, channel) {
        (Some(a), Some(c)) => Some(normalize(c, a).into_owned()),
        (Some(_), None) => {
            errs.add("address", "needs channel: an address is listed per channel");
            None
        }
        (None, _) => None,
    };
    if args.limit.is_some_and(|l| l == 0 || l > MAX_PAGE) {
        errs.add("limit", format!("must be 1 to {MAX_PAGE}"));
    }
    let after = args.cursor.as_deref().and_then(|c| {
        parse_cursor(c, &tenant)
            .ok_or_else(|| errs.add("cursor", "is not a cursor this API gave out"))
            .ok()
    });
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let filter = SuppressionFilter {
        tenant_id: Some(tenant),
        channel,
        reason,
        address,
    };
    let limit = args.limit.unwrap_or(DEFAULT_PAGE);
    let page = state
        .suppressions
        .suppressions(&filter, after, limit)
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(cursor_after))
        .flatten();
    Ok(Json(SuppressionsOut {
        suppressions: page.iter().map(SuppressionOut::from).collect(),
        next_cursor: next,
    }))
}

/// Put an address on the tenant's suppression list (`201`), or give the
/// entry already there a new reason and note (`200`). Deliveries to it end
/// `suppressed` from then on, without a vendor call, on every worker node
/// within about `suppression.refresh_interval_ms`.
#[utoipa::path(
    put,
    path = "/v1/suppressions",
    tag = "suppressions",
    request_body = SuppressionIn,
    responses(
        (status = 201, description = "Added", body = SuppressionOut),
        (status = 200, description = "It was listed already; its reason and note are the new ones", body = SuppressionOut),
        super::problem::BodyRefused,
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 422, description = "A field is missing or invalid", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(&headers, raw, state.max_body_bytes)?;
    let input: SuppressionIn = parse(&bytes, "")?;
    let mut errs = Errors::default();
    if let Err(why) = check_address(input.channel, &input.address, &state.limits) {
        errs.add("address", why);
    }
    if let Some(d) = &input.detail {
        if d.len() > MAX_DETAIL_BYTES || d.chars().any(|c| c.is_control() && c != '\n') {
            errs.add(
                "detail",
                format!("must be at most {MAX_DETAIL_BYTES} bytes without control characters"),
            );
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(errs));
    }
    let s = Suppression {
        tenant_id: tenant,
        channel: input.channel,
        address: normalize(input.channel, &input.address).into_owned(),
        reason: input.reason.unwrap_or(SuppressionReason::Manual),
        detail: input.detail,
        source: "api".into(),
        created_at_ms: herald_core::now_ms(),
    };
    let out = SuppressionOut::from(&s);
    let local = s.clone();
    let added = state.suppressions.suppress(s).await?;
    if let Some(list) = &state.local_suppressions {
        list.add(&local);
    }
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out)).into_response())
}

/// Lift a suppression: the address may be sent to again (on every worker
/// node within about `suppression.refresh_interval_ms`).
#[utoipa::path(
    delete,
    path = "/v1/suppressions",
    tag = "suppressions",
    params(
        ("channel" = String, Query, description = "email, sms, push or webhook"),
        ("address" = String, Query, description = "The address, as listed or as sent to"),
    ),
    responses(
        (status = 204, description = "Lifted"),
        super::problem::Unauthorized,
        super::problem::Forbidden,
        (status = 404, description = "The address is not on the tenant's list", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is missing, unknown or repeated", body = super::problem::Problem, content_type = "application/problem+json"),
        super::problem::Unavailable,
    ),
    security(("api_key" = []))
)]
pub async fn lift(
    State(state): State<Arc<AppState>>,
    Admin(tenant): Admin,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let args: LiftArgs = query_args(query.as_deref().unwrap_or(""))?;
    let mut errs = Errors::default();
    let channel = channel_arg(args.channel.as_deref(), &mut errs);
    if args.channel.is_none() {
        errs.add("channel", "is required");
    }
    match &args.address {
        None => errs.add("address", "is required"),
        Some(a) if a.trim().is_empty() => errs.add("address", "must not be empty"),
        Some(_) => {}
    }
    let (Some(channel), Some(address), true) = (channel, &args.address, errs.is_empty()) else {
        return Err(ApiError::Invalid(errs));
    };
    let address = normalize(channel, address);
    let now = herald_core::now_ms();
    if state
        .suppressions
        .lift_suppression(&tenant, channel, &address, now)
        .await?
    {
        if let Some(list) = &state.local_suppressions {
            list.lift(&tenant, channel, &address);
        }
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

fn channel_arg(raw: Option<&str>, errs: &mut Errors) -> Option<Channel> {
    raw.and_then(|c| {
        c.parse::<Channel>()
            .map_err(|_| errs.add("channel", "must be email, sms, push or webhook"))
            .ok()
    })
}

fn reasons_allowed() -> String {
    let names: Vec<&str> = SuppressionReason::ALL.iter().map(|r| r.as_str()).collect();
    format!("must be one of {}", names.join(", "))
}

/// An opaque cursor: where the page ended, base64url.
fn cursor_after(s: &Suppression) -> String {
    let raw = serde_json::json!([s.created_at_ms, s.channel.as_str(), s.address]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_cursor(s: &str, tenant_id: &str) -> Option<SuppressionCursor> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let (created_at_ms, channel, address): (i64, String, String) =
        serde_json::from_slice(&raw).ok()?;
    Some(SuppressionCursor {
        created_at_ms,
        tenant_id: tenant_id.to_owned(),
        channel: channel.parse().ok()?,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_a_forged_one_does_not() {
        let s = Suppression {
            tenant_id: "t".into(),
            channel: Channel::Email,
            address: "ä\"@example.com".into(),
            reason: SuppressionReason::Bounce,
            detail: None,
            source: "api".into(),
            created_at_ms: 42,
        };
        let c = parse_cursor(&cursor_after(&s), "t").expect("a cursor");
        assert_eq!(c, SuppressionCursor::after(&s));
        assert!(parse_cursor("bm90IGEgY3Vyc29y", "t").is_none());
        assert!(parse_cursor("%%%", "t").is_none());
    }
}
