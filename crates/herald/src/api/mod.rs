//! The HTTP API (axum). Handlers are thin: they parse, call the store and
//! the bus, and turn errors into problem documents in one place.

mod accept;
pub mod admission;
mod auth;
mod callbacks;
pub(crate) mod circuits;
mod json;
mod limits;
pub(crate) mod notifications;
pub mod openapi;
mod ops;
pub mod problem;
mod receipts;
mod recipients;
mod resilience;
pub mod server;
mod suppressions;
pub mod types;
pub mod unsubscribe;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum::{extract, middleware};
use herald_core::bus::Bus;
use herald_core::model::Channel;
use herald_core::provider::Provider;
use herald_core::status::{BusHealth, ProviderStatus};
use herald_core::store::{
    Circuits, DeadLetters, Depths, Health, Intake, Receipts, Recipients, Store, Suppressions,
    Tenants,
};
use herald_core::validate::Limits;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{generate_key, hash_key};

use crate::render::Templates;

/// The API's own settings, from `[server]`, `[webhooks]` and the enabled
/// channels (`Config::api_settings`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub limits: Limits,
    /// Channels with a provider: a notification for another is refused.
    pub channels: HashSet<Channel>,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    /// Per tenant; 0 for no limit.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// The base URL vendors call this API at (`server.public_url`).
    pub public_url: Option<String>,
    /// A sandbox's simulator URL: the node says it is a sandbox.
    pub sandbox: Option<String>,
}

/// What the API reaches: the store by the roles it uses, the bus, and the
/// node's other parts through the narrow interfaces they report by.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub providers: Arc<dyn ProviderStatus>,
    pub templates: Arc<Templates>,
    /// On nodes that use Kafka themselves (workers, relays): /readyz asks it.
    pub bus_health: Option<Arc<dyn BusHealth>>,
    /// On nodes that also deliver: their copy of the suppression lists,
    /// which takes this node's changes at once.
    pub local_suppressions: Option<Arc<crate::engine::suppressions::SuppressionList>>,
    /// The provider accounts by name: where receipts are verified and read.
    pub accounts: HashMap<String, Arc<dyn Provider>>,
    /// Tenants' callbacks (receipts make events too).
    pub callbacks: Option<Arc<crate::engine::callbacks::Callbacks>>,
}

pub struct AppState {
    /// The store, by the roles the API uses.
    pub intake: Arc<dyn Intake>,
    pub tenants: Arc<dyn Tenants>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub suppressions: Arc<dyn Suppressions>,
    pub local_suppressions: Option<Arc<crate::engine::suppressions::SuppressionList>>,
    pub receipts: Arc<dyn Receipts>,
    pub recipients: Arc<dyn Recipients>,
    pub circuits: Arc<dyn Circuits>,
    /// Tenants' default preferences, as this node last read them.
    pub tenant_preferences: recipients::TenantDefaults,
    /// One-click unsubscribe links, when keys and a public URL are set.
    pub unsubscribe: Option<Arc<unsubscribe::Links>>,
    pub accounts: HashMap<String, Arc<dyn Provider>>,
    pub callbacks: Option<Arc<crate::engine::callbacks::Callbacks>>,
    pub public_url: Option<String>,
    /// A sandbox's simulator URL (`/readyz` and `/v1/providers` name it).
    pub sandbox: Option<String>,
    /// Vendors' receipt-signing certificates, fetched once (Amazon SNS).
    pub certificates: receipts::Certificates,
    pub depths: Arc<dyn Depths>,
    pub health: Arc<dyn Health>,
    pub bus: Arc<dyn Bus>,
    pub providers: Arc<dyn ProviderStatus>,
    pub bus_health: Option<Arc<dyn BusHealth>>,
    pub limits: Limits,
    pub templates: Arc<Templates>,
    pub channels: HashSet<Channel>,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub keys: auth::KeyCache,
    pub in_flight: accept::InFlight,
    pub limiter: limits::TenantLimiter,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Set when shutdown begins: /readyz turns 503 so load balancers drain.
    pub draining: AtomicBool,
    /// Admission control's verdicts per channel and lane.
    pub admission: Arc<admission::Gate>,
    /// The console's samples of this node's metrics.
    pub console: Arc<crate::console::Sampler>,
}

impl AppState {
    pub fn new(settings: ApiSettings, parts: Parts) -> Self {
        let store = parts.store;
        Self {
            intake: store.clone(),
            tenants: store.clone(),
            dead_letters: store.clone(),
            suppressions: store.clone(),
            local_suppressions: parts.local_suppressions,
            receipts: store.clone(),
            recipients: store.clone(),
            circuits: store.clone(),
            tenant_preferences: recipients::TenantDefaults::default(),
            unsubscribe: None,
            accounts: parts.accounts,
            callbacks: parts.callbacks,
            public_url: settings.public_url,
            sandbox: settings.sandbox,
            certificates: receipts::Certificates::default(),
            depths: store.clone(),
            health: store,
            bus: parts.bus,
            providers: parts.providers,
            bus_health: parts.bus_health,
            limits: settings.limits,
            templates: parts.templates,
            channels: settings.channels,
            max_body_bytes: settings.max_body_bytes,
            max_batch_items: settings.max_batch_items,
            keys: auth::KeyCache::default(),
            in_flight: accept::InFlight::default(),
            limiter: limits::TenantLimiter::new(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
            ),
            metrics: crate::telemetry::metrics(),
            console: crate::console::Sampler::new(crate::telemetry::metrics()),
            draining: AtomicBool::new(false),
            admission: Arc::default(),
        }
    }
}

/// On a sandbox's every response: its vendors are simulated.
pub const SANDBOX_HEADER: &str = "herald-sandbox";

pub fn router(state: Arc<AppState>, request_timeout: Duration, serve_api: bool) -> Router {
    let limit = state.max_body_bytes;
    let sandbox = state.sandbox.is_some();
    let request_id = HeaderName::from_static("x-request-id");
    // A node without the api role serves only the operations endpoints.
    let api = if serve_api {
        Router::new()
            .route(
                "/v1/notifications",
                post(notifications::create).delete(notifications::cancel_by_key),
            )
            .route("/v1/notifications/batch", post(notifications::batch))
            .route(
                "/v1/notifications/{id}",
                get(notifications::get).delete(notifications::cancel),
            )
            .route("/v1/providers", get(resilience::providers))
            .route(
                "/v1/providers/{name}/hold",
                axum::routing::put(circuits::put_hold).delete(circuits::delete_hold),
            )
            .route("/v1/dead-letters", get(resilience::list))
            .route("/v1/dead-letters/replay", post(resilience::replay_many))
            .route("/v1/dead-letters/{id}/replay", post(resilience::replay_one))
            .route(
                "/v1/suppressions",
                get(suppressions::list)
                    .put(suppressions::put)
                    .delete(suppressions::lift),
            )
            .route("/v1/receipts/{provider}", post(receipts::receive))
            .route(
                "/v1/recipients/{id}",
                get(recipients::get)
                    .put(recipients::put)
                    .patch(recipients::patch)
                    .delete(recipients::delete),
            )
            .route(
                "/v1/recipients/{id}/preferences",
                get(recipients::get_preferences).put(recipients::put_preferences),
            )
            .route(
                "/v1/unsubscribe/{token}",
                get(unsubscribe::show).post(unsubscribe::confirm),
            )
            .route(
                "/v1/preferences",
                get(recipients::get_defaults).put(recipients::put_defaults),
            )
            .route(
                "/v1/callbacks",
                get(callbacks::get)
                    .put(callbacks::put)
                    .delete(callbacks::delete),
            )
            .route("/openapi.json", get(openapi::openapi_json))
            .merge(crate::console::routes())
    } else {
        Router::new()
    };
    api.route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(notifications::fallback)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(limit, refuse_oversized))
        .layer(
            ServiceBuilder::new()
                // Outermost first: a correlation id for every request (the
                // client's `x-request-id` if it sent one), in the trace span
                // and echoed on the response.
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, trace_id = tracing::field::Empty, otel.kind = "server");
                    if crate::telemetry::tracing_on() {
                        // The caller's trace context, if it sent one.
                        let caller = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
                        crate::telemetry::context::join(&span, caller);
                    }
                    span
                }))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(ops::panic_response))
                .layer(HandleErrorLayer::new(ops::timed_out))
                .timeout(request_timeout),
        )
        // Outermost: every answer a sandbox gives says so, errors too.
        .layer(tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(SANDBOX_HEADER),
            move |_: &Response| {
                sandbox.then(|| {
                    axum::http::HeaderValue::from_static(
                        "vendors are simulated: nothing reaches a real person",
                    )
                })
            },
        ))
        .with_state(state)
}

/// A body whose `Content-Length` is past the limit is refused at once (413,
/// and the connection closed), before anything waits for it to arrive.
async fn refuse_oversized(
    extract::State(limit): extract::State<usize>,
    req: extract::Request,
    next: middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut r = problem::ApiError::TooLarge(limit).into_response();
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return r;
    }
    next.run(req).await
}
