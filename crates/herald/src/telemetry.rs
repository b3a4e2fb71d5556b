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

/// Logs to stderr; `RUST_LOG` sets the filter (default `info`), and
/// `HERALD_LOG_FORMAT=json` switches to JSON lines. Colours only on a
/// terminal (and never with `NO_COLOR` set): a log written to a file or a
/// pipe is plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
