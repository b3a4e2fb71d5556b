//! Health, readiness and metrics.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::problem::{problem_response, Problem};
use super::types::{Health, Readiness};
use super::AppState;
use crate::telemetry as m;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// How long readiness waits for each dependency to answer: a load
/// balancer's probe gets its 503 well before its own timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The process can take work now: it is not draining, the store answers
/// and takes writes (a node whose writes fail — disk full, PostgreSQL down
/// or read-only — is not ready, and turns ready again by itself once a
/// probe write succeeds), and Kafka answers where this node uses it
/// (workers and relays; the local bus is the store). Each dependency is
/// reported, "ok" or why not.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Draining, or a dependency is not answering", body = Readiness),
    ))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        let draining = Readiness {
            status: "draining".into(),
            store: None,
            bus: None,
            shedding: Vec::new(),
            credentials: Vec::new(),
            simulator: state.sandbox.clone(),
        };
        metrics::gauge!(crate::telemetry::READY).set(0.0);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(draining)).into_response();
    }
    let store = match tokio::time::timeout(PROBE_TIMEOUT, state.health.ping()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the store did not answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        )),
    };
    let bus = match &state.bus_health {
        Some(probe) => probe.check(PROBE_TIMEOUT).await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let ready = store.is_ok() && bus.is_ok();
    metrics::gauge!(crate::telemetry::READY).set(if ready { 1.0 } else { 0.0 });
    let report = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
    let body = Json(Readiness {
        status: if ready { "ready" } else { "unavailable" }.into(),
        store: Some(report(store)),
        bus: Some(report(bus)),
        shedding: state.admission.shedding(),
        credentials: refused_credentials(state.providers.as_ref()),
        simulator: state.sandbox.clone(),
    });
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// The accounts whose credential the vendor refuses, for `/readyz`.
fn refused_credentials(providers: &dyn herald_core::status::ProviderStatus) -> Vec<String> {
    providers
        .views(herald_core::now_ms(), None)
        .into_iter()
        .filter_map(|a| {
            let r = a.refused?;
            Some(format!(
                "{}: credential refused since {}: {}",
                a.name,
                crate::dlq::rfc3339(r.since_ms),
                r.reason
            ))
        })
        .collect()
}

/// Prometheus text format. Queue depths and lags are read from the store
/// per scrape, circuit states from the breakers.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.providers.publish_gauges(herald_core::now_ms());
    // The same reading of the lanes admission control judges by.
    let channels: Vec<_> = state.channels.iter().copied().collect();
    let now = herald_core::now_ms();
    match super::admission::measure(state.depths.as_ref(), &channels, now).await {
        Ok(loads) => {
            for (ch, lanes) in &loads {
                for (lane, load) in lanes.iter() {
                    let labels = [("channel", ch.as_str()), ("lane", lane.as_str())];
                    metrics::gauge!(m::QUEUE_DEPTH, &labels).set(load.waiting as f64);
                    metrics::gauge!(m::QUEUE_LAG_SECONDS, &labels)
                        .set(load.oldest_wait_ms as f64 / 1000.0);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "queue depth and lag unavailable for this scrape"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A handler panic becomes a 500 problem; the process stays up.
pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    problem_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &Problem {
            kind: "urn:herald:problem:internal".into(),
            title: "Internal server error".into(),
            status: 500,
            detail: "an unexpected error occurred; it has been logged".into(),
            errors: vec![],
            errors_total: None,
        },
    )
}

/// A request that ran past `server.request_timeout_ms`: 503 as a problem.
pub async fn timed_out(_: tower::BoxError) -> Response {
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &Problem {
            kind: "urn:herald:problem:timeout".into(),
            title: "Service unavailable".into(),
            status: 503,
            detail: "the request took too long; retry it with the same Idempotency-Key".into(),
            errors: vec![],
            errors_total: None,
        },
    )
}

/// A known path with the wrong method: 405 as a problem.
pub async fn method_not_allowed() -> Response {
    problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &Problem {
            kind: "urn:herald:problem:method-not-allowed".into(),
            title: "Method not allowed".into(),
            status: 405,
            detail: "this path does not accept that method".into(),
            errors: vec![],
            errors_total: None,
        },
    )
}
