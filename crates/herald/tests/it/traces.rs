//! Traces over OTLP, received by a real OTLP/HTTP receiver built on the
//! official protobuf definitions (`opentelemetry-proto`): the binary,
//! started as a user would with `OTEL_EXPORTER_OTLP_ENDPOINT`, exports one
//! notification's spans as one tree under the caller's `traceparent`, from
//! the API request to the vendor call, on the local bus and on the Kafka
//! bus (librdkafka's mock cluster, `herald kafka-mock`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::utils::{decode, spawn_serve};

/// A span as received.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// The `traceparent` headers webhook requests arrived with.
type Hooks = Arc<Mutex<Vec<String>>>;

/// An OTLP/HTTP receiver on a free port: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, as the OpenTelemetry Collector takes it.
async fn receiver() -> (String, Spans, Hooks) {
    async fn take(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
        let Ok(req) = ExportTraceServiceRequest::decode(body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let mut spans = spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        name: s.name,
                        trace_id: hex::encode(s.trace_id),
                        span_id: hex::encode(s.span_id),
                        parent: hex::encode(s.parent_span_id),
                        service: service.clone(),
                    });
                }
            }
        }
        axum::http::StatusCode::OK
    }
    let spans: Spans = Arc::default();
    let hooks: Hooks = Arc::default();
    let seen = hooks.clone();
    // A webhook endpoint too: what trace context a webhook request carries.
    let hook = post(move |headers: axum::http::HeaderMap| async move {
        let tp = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(tp);
        axum::http::StatusCode::OK
    });
    let app = axum::Router::new()
        .route("/v1/traces", post(take))
        .with_state(spans.clone())
        .route("/hook", hook);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans, hooks)
}

const KEY: &str = "hrld_traces_test_key_0123456789abcdef";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Sends one SMS (and a webhook to `webhook`, if given) through a node
/// exporting to `endpoint` (on Kafka when `brokers` is given), with the
/// caller's trace context, stops the node (which sends what it holds), and
/// returns the spans of that trace.
async fn one_notification(
    endpoint: &str,
    spans: &Spans,
    brokers: Option<&str>,
    webhook: Option<&str>,
    sampled: bool,
) -> Vec<Received> {
    let flags = if sampled { "01" } else { "00" };
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("HERALD_DEV_API_KEY", KEY)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", "herald-under-test")
        // A slow first event (the consumer group joining) is not a lane behind.
        .env("HERALD__SERVER__ADMISSION", "false");
    if let Some(b) = brokers {
        // The store sweep (claiming what no event brought) seldom, so the
        // event, not the sweep, brings the traced delivery.
        cmd.env("HERALD__KAFKA__BROKERS", b)
            .env("HERALD__KAFKA__SWEEP_INTERVAL_MS", "10000");
    }
    let (child, base) = spawn_serve(cmd).await;
    let http = reqwest::Client::new();
    if brokers.is_some() {
        // A first notification, untraced, until the consumer group has
        // joined and takes events.
        let warm_up = json!({"priority": "critical", "channels": ["sms"],
            "recipient": {"phone": "+14155550101"}, "content": {"text": "warm-up"}});
        send_until_sent(&http, &base, &warm_up, None).await;
    }
    let sms = json!({"priority": "critical", "channels": ["sms"],
        "recipient": {"phone": "+14155550100"}, "content": {"text": "traced"}});
    send_until_sent(&http, &base, &sms, Some(&caller)).await;
    if let Some(url) = webhook {
        let hook = json!({"priority": "critical", "channels": ["webhook"],
            "recipient": {"webhook_url": url}, "content": {"text": "traced"}});
        send_until_sent(&http, &base, &hook, Some(&caller)).await;
    }
    // SIGTERM: the node shuts down and flushes its spans.
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut child = child;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let ours = || -> Vec<Received> {
        spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == CALLER_TRACE)
            .cloned()
            .collect()
    };
    for _ in 0..100 {
        if ours().iter().any(|s| s.name == "vendor call") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ours()
}

/// Sends `body` (with the caller's trace context, if given) and waits
/// until its one delivery is sent.
async fn send_until_sent(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
    traceparent: Option<&str>,
) {
    let mut req = http
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(KEY)
        .json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let (status, _, v) = decode(req.send().await.expect("sent")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let mut state = Value::Null;
    for _ in 0..600 {
        let resp = http
            .get(format!("{base}/v1/notifications/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get");
        state = decode(resp).await.2["channels"][0]["state"].clone();
        if state == "sent" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{body} was not sent: {state}");
}

/// The spans form one tree under the caller's span, and each named one is
/// where it belongs; returns them by name.
fn tree(spans: &[Received]) -> HashMap<String, Received> {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in spans {
        assert_eq!(s.service, "herald-under-test", "{s:?}");
        // Up the parents, every span reaches the caller's.
        let mut at = s;
        let mut hops = 0;
        while at.parent != CALLER_SPAN {
            at = by_id.get(at.parent.as_str()).unwrap_or_else(|| {
                panic!("{s:?}'s parent {} was not exported: {spans:#?}", at.parent)
            });
            hops += 1;
            assert!(hops < 20, "a loop: {spans:#?}");
        }
    }
    spans.iter().map(|s| (s.name.clone(), s.clone())).collect()
}

fn parent_of<'a>(named: &'a HashMap<String, Received>, name: &str) -> &'a str {
    let s = named
        .get(name)
        .unwrap_or_else(|| panic!("no {name:?} span: {named:#?}"));
    named
        .values()
        .find(|p| p.span_id == s.parent)
        .map_or(s.parent.as_str(), |p| p.name.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_is_one_trace_from_the_api_to_the_vendor() {
    let (endpoint, spans, hooks) = receiver().await;
    let hook = format!("{endpoint}/hook");
    let received = one_notification(&endpoint, &spans, None, Some(&hook), true).await;
    // The webhook's request carried its vendor call's context.
    let sent = hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(
        parts[1], CALLER_TRACE,
        "the webhook continues the caller's trace"
    );
    assert!(
        received
            .iter()
            .any(|s| s.name == "vendor call" && s.span_id == parts[2]),
        "the webhook's parent is a vendor call span: {sent:?} {received:#?}"
    );
    // Two notifications under the one caller span, each the same shape.
    let named = tree(&received);
    assert_eq!(
        parent_of(&named, "request"),
        CALLER_SPAN,
        "the caller's traceparent is continued"
    );
    assert_eq!(parent_of(&named, "store write"), "request");
    assert_eq!(
        parent_of(&named, "deliver"),
        "request",
        "the worker's claim joins the request's trace"
    );
    assert_eq!(parent_of(&named, "vendor call"), "deliver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kafka_bus_the_trace_goes_through_the_relay_and_the_event() {
    let (_mock, brokers) = crate::utils::kafka_mock().await;
    let (endpoint, spans, _) = receiver().await;
    let received = one_notification(&endpoint, &spans, Some(&brokers), None, true).await;
    let named = tree(&received);
    assert_eq!(parent_of(&named, "request"), CALLER_SPAN);
    assert_eq!(
        parent_of(&named, "kafka publish"),
        "request",
        "the relay publishes under the request"
    );
    assert_eq!(
        parent_of(&named, "deliver"),
        "kafka publish",
        "the worker's claim hangs under the event's hop"
    );
    assert_eq!(parent_of(&named, "vendor call"), "deliver");
}

/// A caller's trace that is not sampled exports nothing, and a webhook
/// still learns the trace, flagged not sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_not_sampled_exports_nothing_but_still_propagates() {
    let (endpoint, spans, hooks) = receiver().await;
    let hook = format!("{endpoint}/hook");
    let received = one_notification(&endpoint, &spans, None, Some(&hook), false).await;
    assert!(
        received.is_empty(),
        "spans of an unsampled trace: {received:#?}"
    );
    let sent = hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].starts_with(&format!("00-{CALLER_TRACE}-")) && sent[0].ends_with("-00"),
        "{sent:?}"
    );
}
