//! Logs and metrics. Metric names live here, in one place:
//! `herald_<thing>_total` / `_seconds`, with labels of few values (channel,
//! provider, lane, outcome) and never an id.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const ACCEPTED: &str = "herald_notifications_accepted_total";
pub const REJECTED: &str = "herald_requests_rejected_total";
pub const ATTEMPTS: &str = "herald_attempts_total";
pub const ATTEMPT_SECONDS: &str = "herald_attempt_duration_seconds";
pub const DELIVERIES: &str = "herald_deliveries_total";
pub const ACCEPT_TO_VENDOR_SECONDS: &str = "herald_accept_to_vendor_seconds";
pub const QUEUE_DEPTH: &str = "herald_queue_depth";
/// How long the lane's longest-waiting due delivery has waited (labels
/// `channel`, `lane`; 0 when nothing due waits).
pub const QUEUE_LAG_SECONDS: &str = "herald_queue_lag_seconds";
/// The lane's objective, accept to vendor (label `lane`; lanes without
/// one are not shown).
pub const LANE_OBJECTIVE_SECONDS: &str = "herald_lane_objective_seconds";
/// Notifications refused by admission control (labels `lane`, `reason`:
/// `objective`, `backlog_cap`, `making_room`).
pub const ADMISSION_REFUSED: &str = "herald_admission_refused_total";
pub const STORE_ERRORS: &str = "herald_store_errors_total";
/// 1 when the node's latest `/readyz` found it ready, 0 when not (draining,
/// the store or Kafka not answering); set by each probe.
pub const READY: &str = "herald_ready";
/// 0 closed, 1 open, 2 half-open; label `provider`.
pub const CIRCUIT_STATE: &str = "herald_provider_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "herald_provider_circuit_transitions_total";
/// 1 while the vendor refuses the account's credential (the account error
/// class: bad, expired or revoked), else 0; label `provider`.
pub const CREDENTIALS_REFUSED: &str = "herald_provider_credentials_refused";
/// Access tokens got from a vendor's token endpoint (FCM's, for its
/// service account); label `provider`.
pub const TOKENS_ISSUED: &str = "herald_provider_tokens_issued_total";
/// Calls the vendor refused for the account's credential; label `provider`.
pub const CREDENTIAL_REFUSALS: &str = "herald_provider_credential_refusals_total";
/// For providers guarded per destination (webhooks): destinations whose
/// circuits are open or half-open; label `provider`.
pub const OPEN_DESTINATIONS: &str = "herald_provider_open_destinations";
/// Finished calls whose outcome the store could not take yet, held to be
/// written when it answers again.
pub const UNWRITTEN_OUTCOMES: &str = "herald_unwritten_outcomes";
/// Claims given back without a call because the lease could no longer
/// cover one (waits for Redis, a slot or the store ran too long).
pub const LEASE_RUN_OUT: &str = "herald_lease_run_out_total";
/// Attempts that went past their first provider; label `to` is the last one tried.
pub const FAILOVERS: &str = "herald_failovers_total";
/// Attempts that called no one (every usable circuit open, or the send rate
/// used up) and were put back for later.
pub const DEFERRED: &str = "herald_deliveries_deferred_total";
/// Calls held back by a provider's own send-rate limit.
pub const THROTTLED_LOCALLY: &str = "herald_provider_throttled_total";
/// Connections answered 503 and closed: `server.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "herald_http_connections_refused_total";
/// Connections closed for running out of time; label `reason` (`headers`:
/// a request's headers did not arrive in time; `idle`).
pub const CONNECTIONS_TIMED_OUT: &str = "herald_http_connections_timed_out_total";
/// Finished notifications deleted for being past `store.retention_hours`.
pub const PURGED: &str = "herald_notifications_purged_total";
/// Vendor receipts taken; labels `provider`, `kind` (`delivered`,
/// `undelivered`, `bounced`, `complained`).
pub const RECEIPTS: &str = "herald_receipts_total";
/// Entries in force in this worker node's copy of the suppression lists.
pub const SUPPRESSIONS: &str = "herald_suppressions";
/// Addresses this node put on a suppression list because a vendor said
/// they are gone; label `reason`.
pub const SUPPRESSIONS_ADDED: &str = "herald_suppressions_added_total";
/// Deliveries ended by a tenant's cancel before they were sent.
pub const CANCELLED: &str = "herald_deliveries_cancelled_total";
/// Deliveries made `suppressed` at acceptance because the recipient opted
/// out (or the tenant's default is off); label `channel`.
pub const PREFERENCE_SUPPRESSED: &str = "herald_preference_suppressed_total";
/// Deliveries held for their recipient's quiet hours; label `channel`.
pub const QUIET_HOURS_HELD: &str = "herald_quiet_hours_held_total";
/// Deliveries created leased and handed to this node's workers at
/// acceptance rather than claimed (the local bus's hand-off); label
/// `channel`.
pub const HANDED_OFF: &str = "herald_deliveries_handed_off_total";
/// One-click unsubscribes taken.
pub const UNSUBSCRIBED: &str = "herald_unsubscribes_total";
/// The store's own (recorded in herald-store, named here with the rest).
pub use herald_store::{COMMIT_OPERATIONS, COMMIT_SECONDS, WRITE_SECONDS};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ];
            let operations = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_operations".into()), &operations)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => {
                    // Shown as 0 from the start, so an alert on its rate
                    // has a series before the first failure.
                    metrics::counter!(STORE_ERRORS).increment(0);
                    h
                }
                // Another recorder is installed (an embedding application's):
                // keep a detached one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Logs to stderr with the defaults (`[telemetry]` not read): for the
/// commands other than `serve`, and before a config is loaded.
pub fn init_logging() {
    let _ = init(&crate::config::TelemetryConfig::default());
}

/// What `init` set up; `shutdown` sends the spans still buffered.
#[must_use = "shut down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is buffered (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether traces are exported: spans per notification and delivery are
/// made only then, so a node without tracing pays nothing per delivery.
pub fn tracing_on() -> bool {
    TRACING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether Herald makes its own extra spans (store write, vendor call)
/// here: tracing is on and the current trace is sampled, so a low
/// `sample_ratio` saves their cost.
pub fn sampled_here() -> bool {
    tracing_on() && context::sampled(&tracing::Span::current())
}

/// Where OTLP traces go: `[telemetry] otlp_endpoint`, else the standard
/// environment (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_ENDPOINT`); `None` (off) when neither is set or
/// `OTEL_SDK_DISABLED=true`.
fn otlp_endpoint(cfg: &crate::config::TelemetryConfig) -> Option<Option<String>> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let set = |v: &str| !v.trim().is_empty();
    if set(&cfg.otlp_endpoint) {
        let base = cfg.otlp_endpoint.trim().trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        };
        return Some(Some(url));
    }
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| set(&v)));
    // The exporter reads the environment itself (and adds /v1/traces to
    // the general endpoint, as the specification says).
    from_env.then_some(None)
}

/// Logs to stderr, and traces over OTLP when configured. `RUST_LOG` sets
/// the log filter (default `info`); the format is `[telemetry] log_format`
/// (`HERALD_LOG_FORMAT` overrides): `auto` is coloured text on a terminal
/// (never with `NO_COLOR`) and JSON lines otherwise. Spans carry the trace
/// and notification ids, so JSON log lines do too.
pub fn init(cfg: &crate::config::TelemetryConfig) -> anyhow::Result<Telemetry> {
    use crate::config::LogFormat;
    use opentelemetry::trace::TracerProvider as _;
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let terminal = std::io::stderr().is_terminal();
    let format = match std::env::var("HERALD_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => cfg.log_format,
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        let colour = terminal && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let provider = match otlp_endpoint(cfg) {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_timeout(std::time::Duration::from_secs(5));
            if let Some(url) = endpoint {
                exporter = exporter.with_endpoint(url);
            }
            let exporter = exporter
                .build()
                .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
            let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(cfg.sample_ratio),
            ));
            let name = std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| cfg.service_name.clone());
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(sampler)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    // Herald's own spans only, whatever RUST_LOG says for the logs.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("herald", tracing::Level::INFO),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    TRACING.store(
        installed && provider.is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(Telemetry { provider })
}

/// The relay's span for publishing one event to Kafka: a child of the
/// context the event was stored under; its own context goes in the
/// event's headers.
pub fn kafka_publish(stored: Option<&str>) -> (tracing::Span, Option<String>) {
    // A trace not sampled gets no publish span: its context passes through.
    let parent = context::parent(stored);
    if stored.is_some()
        && !opentelemetry::trace::TraceContextExt::span(&parent)
            .span_context()
            .is_sampled()
    {
        return (tracing::Span::none(), stored.map(str::to_owned));
    }
    let span = tracing::info_span!(
        "kafka publish",
        otel.kind = "producer",
        trace_id = tracing::field::Empty
    );
    context::join(&span, stored);
    let traceparent = context::traceparent(&span).or_else(|| stored.map(str::to_owned));
    (span, traceparent)
}

/// W3C trace context: reading a `traceparent` into a parent context, and
/// writing a span's context out (event headers, stored notifications,
/// webhook requests).
pub mod context {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// A context whose remote parent is `traceparent` (invalid or absent:
    /// the empty context, so the span starts a new trace).
    pub fn parent(traceparent: Option<&str>) -> opentelemetry::Context {
        let mut carrier = HashMap::new();
        if let Some(t) = traceparent {
            carrier.insert("traceparent".to_owned(), t.to_owned());
        }
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier)
    }

    /// `span`'s W3C `traceparent`, when it has a valid context.
    pub fn traceparent(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }

    /// Whether `span`'s trace is sampled (exported).
    pub fn sampled(span: &tracing::Span) -> bool {
        span.context().span().span_context().is_sampled()
    }

    /// `span`'s trace id in hex (for logs), when it has one.
    pub fn trace_id(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// Makes `span` a child of `traceparent` and records its trace id in
    /// the span's `trace_id` field (declared empty by the caller).
    pub fn join(span: &tracing::Span, traceparent: Option<&str>) {
        if traceparent.is_some() {
            let _ = span.set_parent(parent(traceparent));
        }
        if let Some(id) = trace_id(span) {
            span.record("trace_id", id.as_str());
        }
    }
}
