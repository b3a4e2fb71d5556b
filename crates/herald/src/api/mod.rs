//! The HTTP API (axum). Handlers are thin: they parse, call the store and
//! the bus, and turn errors into problem documents in one place.

mod auth;
mod notifications;
mod ops;
pub mod problem;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use herald_core::bus::Bus;
use herald_core::model::Channel;
use herald_core::store::Store;
use herald_core::validate::Limits;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{generate_key, hash_key};

use crate::render::Templates;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub limits: Limits,
    pub templates: Arc<Templates>,
    pub channels: HashSet<Channel>,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub keys: auth::KeyCache,
    pub in_flight: notifications::InFlight,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Set when shutdown begins: /readyz turns 503 so load balancers drain.
    pub draining: AtomicBool,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        limits: Limits,
        templates: Arc<Templates>,
        channels: HashSet<Channel>,
        max_body_bytes: usize,
        max_batch_items: usize,
    ) -> Self {
        Self {
            store,
            bus,
            limits,
            templates,
            channels,
            max_body_bytes,
            max_batch_items,
            keys: auth::KeyCache::default(),
            in_flight: notifications::InFlight::default(),
            metrics: crate::telemetry::metrics(),
            draining: AtomicBool::new(false),
        }
    }
}

pub fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/notifications", post(notifications::create))
        .route("/v1/notifications/batch", post(notifications::batch))
        .route("/v1/notifications/{id}", get(notifications::get))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(notifications::fallback)
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(CatchPanicLayer::custom(ops::panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
