//! API errors, converted once at the edge into `application/problem+json`
//! (RFC 9457), each with a stable `type`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::store::StoreError;
use herald_core::validate::{Errors, FieldError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request is invalid")]
    Invalid(Errors),
    #[error("a valid API key is required")]
    Unauthorized,
    #[error("this API key does not have the {0} scope")]
    Forbidden(herald_core::store::Scopes),
    #[error("not found")]
    NotFound,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    #[error("too many notifications from this tenant; retry after {} s", retry_after_secs(.0))]
    RateLimited(std::time::Duration),
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    ReceiptUnverified(String),
    /// A vendor's server Herald must call to take a receipt (its signing
    /// certificate) did not answer: the vendor retries.
    #[error("{0}")]
    VendorUnreachable(String),
    /// Another write won a race this request cannot settle by itself.
    #[error("{0}")]
    Conflict(String),
    #[error("delivery {0} is {1}, not dead: only dead letters are replayed")]
    NotDead(uuid::Uuid, herald_core::DeliveryState),
    #[error(
        "the {} lane for {channel} cannot deliver more in time ({}); retry after {} s with the same Idempotency-Key",
        lane.as_str(), reason.as_str(), retry_after_secs(retry_after)
    )]
    LaneBehind {
        lane: herald_core::Priority,
        channel: herald_core::Channel,
        reason: herald_core::admission::Refusal,
        retry_after: std::time::Duration,
    },
}

/// The problem document (RFC 9457): every error Herald sends.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URN per error, `urn:herald:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// How many rules the request broke, when more than `errors` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_total: Option<usize>,
}

/// The refusals of a JSON body, before anything reads it: for the OpenAPI
/// document of every endpoint that takes one.
#[derive(utoipa::IntoResponses)]
pub enum BodyRefused {
    #[response(
        status = 400,
        description = "The body is not one well-formed JSON document",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 413,
        description = "The body is over server.max_body_bytes",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "The body is not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// `401`, for the OpenAPI document of every endpoint under `/v1`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "No API key, or an unknown one",
    content_type = "application/problem+json"
)]
pub struct Unauthorized(pub Problem);

/// `403`, for the OpenAPI document of every endpoint that takes a key.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 403,
    description = "The API key does not have the scope this operation needs (send, read or admin)",
    content_type = "application/problem+json"
)]
pub struct Forbidden(pub Problem);

/// `429`, for the OpenAPI document of the endpoints that take notifications.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Over the tenant's rate limit, or (urn:herald:problem:lane-behind) a lane the notification would join cannot deliver it within its objective; Retry-After says when",
    content_type = "application/problem+json"
)]
pub struct Throttled(pub Problem);

/// `503`, for the OpenAPI document of every endpoint under `/v1`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "The store is unavailable, the request took too long, or the server is stopping; retry (with the same Idempotency-Key)",
    content_type = "application/problem+json"
)]
pub struct Unavailable(pub Problem);

impl ApiError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid(FieldError::new(field, reason).into())
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request",
            ),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            KeyInFlight => (
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
            ),
            Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Service unavailable",
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "Service unavailable",
            ),
            NotDead(..) => (StatusCode::CONFLICT, "not-dead", "Not a dead letter"),
            ReceiptUnverified(_) => (
                StatusCode::UNAUTHORIZED,
                "receipt-unverified",
                "Receipt signature not verified",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            VendorUnreachable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "vendor-unreachable",
                "Vendor unreachable",
            ),
            LaneBehind { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "lane-behind",
                "Lane behind its objective",
            ),
        }
    }

    /// Counts the refusal by its problem type (`herald_requests_rejected_total`).
    pub fn count(&self) {
        let (_, slug, _) = self.parts();
        metrics::counter!(crate::telemetry::REJECTED, "type" => slug).increment(1);
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let (detail, errors) = match self {
            ApiError::Invalid(errs) => {
                // The detail names the first few; `errors` has up to 50.
                let mut detail = errs
                    .list
                    .iter()
                    .take(5)
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                if errs.total > 5 {
                    detail.push_str(&format!("; and {} more", errs.total - 5));
                }
                (detail, errs.list.clone())
            }
            // Store details are for the logs, not for clients.
            ApiError::Store(_) => (
                "the store is unavailable; retry with the same Idempotency-Key".into(),
                vec![],
            ),
            other => (other.to_string(), vec![]),
        };
        let errors_total = match self {
            ApiError::Invalid(errs) if errs.total > errs.list.len() => Some(errs.total),
            _ => None,
        };
        Problem {
            kind: format!("urn:herald:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            errors,
            errors_total,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Store(e) = &self {
            tracing::error!(error = %e, "store error");
        }
        self.count();
        let p = self.problem();
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = problem_response(status, &p);
        if let ApiError::RateLimited(wait)
        | ApiError::LaneBehind {
            retry_after: wait, ..
        } = self
        {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(&wait)),
            );
        }
        r
    }
}

/// Whole seconds to wait, rounded up (Retry-After has no fractions).
fn retry_after_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

pub fn problem_response(status: StatusCode, p: &Problem) -> Response {
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
