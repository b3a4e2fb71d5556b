//! Property-based: whatever body a client sends to the notification
//! endpoints — random bytes, random JSON, a valid request with one field
//! replaced by anything — Herald answers cleanly: never a panic, never a
//! 5xx, every refusal a problem document. Cases: `PROPTEST_CASES` (CI fixes
//! it), 256 by default, per property.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::utils::TestServer;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

/// The request's own field names, so random JSON often hits real fields.
const NAMES: &[&str] = &[
    "priority",
    "category",
    "recipient",
    "channels",
    "content",
    "template",
    "ttl_seconds",
    "send_at",
    "metadata",
    "idempotency_key",
    "id",
    "email",
    "phone",
    "push_tokens",
    "platform",
    "token",
    "webhook_url",
    "subject",
    "text",
    "html",
    "data",
    "locale",
    "notifications",
];

/// Strings a hostile or careless client sends: control characters, RTL
/// and combining marks, emoji, NUL, huge repeats, JSON-looking text.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z]{0,12}",
        Just("\u{0}\r\n\t\u{7f}".to_owned()),
        Just("\u{202e}evil\u{202c} ٠١٢ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧨👩‍👩‍👧 é".to_owned()),
        Just("+1415555010٠".to_owned()),
        Just("http://[::ffff:127.0.0.1]/x".to_owned()),
        Just("critical".to_owned()),
        Just("sms".to_owned()),
        Just("{{ 7*7 }}{% for x in y %}".to_owned()),
        (1usize..5_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(NAMES).prop_map(str::to_owned),
                        nasty_string()
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn valid() -> Value {
    json!({"priority": "high", "category": "order-update", "channels": ["email", "sms"],
        "recipient": {"email": "ada@example.com", "phone": "+14155550100"},
        "content": {"subject": "Hi", "text": "Hello"}, "ttl_seconds": 300,
        "metadata": {"order": "42"}})
}

/// A valid request with the value at one path replaced.
fn mutated() -> impl Strategy<Value = Value> {
    let paths: Vec<Vec<&'static str>> = vec![
        vec!["priority"],
        vec!["category"],
        vec!["channels"],
        vec!["recipient"],
        vec!["recipient", "email"],
        vec!["recipient", "phone"],
        vec!["recipient", "push_tokens"],
        vec!["recipient", "webhook_url"],
        vec!["content"],
        vec!["content", "subject"],
        vec!["content", "text"],
        vec!["template"],
        vec!["ttl_seconds"],
        vec!["send_at"],
        vec!["metadata"],
        vec!["idempotency_key"],
    ];
    (prop::sample::select(paths), json_value()).prop_map(|(path, v)| {
        let mut req = valid();
        let mut at = &mut req;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*key] = v.clone();
            } else {
                at = &mut at[*key];
            }
        }
        req
    })
}

/// Sends `body` and checks the answer is clean.
async fn check(s: &TestServer, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(&s.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.bytes().await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| TestCaseError::fail(format!("{status}: not JSON: {bytes:?}")))?;
    prop_assert!(status < 500, "{status}: {v}");
    match status {
        200 => {
            let results = v["results"]
                .as_array()
                .ok_or_else(|| TestCaseError::fail(format!("{v}")))?;
            for r in results {
                prop_assert!(
                    r["status"] == "accepted" || r["error"]["type"].is_string(),
                    "{r}"
                );
            }
        }
        202 => prop_assert!(v["id"].is_string(), "{v}"),
        _ => {
            prop_assert!(matches!(status, 400 | 413 | 415 | 422), "{status}: {v}");
            prop_assert_eq!(ct.as_str(), "application/problem+json");
            prop_assert_eq!(&v["status"], &json!(status));
            prop_assert!(v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:herald:problem:")));
            prop_assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
        }
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn any_body_gets_a_clean_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(TestServer::start());
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2_048),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        mutated().prop_map(|v| v.to_string().into_bytes()),
        (mutated(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(v, tail)| {
            let mut b = v.to_string().into_bytes();
            b.extend(tail);
            b
        }),
    ];
    let endpoints = prop::sample::select(vec!["/v1/notifications", "/v1/notifications/batch"]);
    runner()
        .run(&(endpoints, bodies), |(path, body)| {
            // The batch endpoint gets the same bodies wrapped as one item too.
            rt.block_on(check(&s, path, body.clone()))?;
            if path.ends_with("batch") {
                if let Ok(item) = serde_json::from_slice::<Value>(&body) {
                    let wrapped = json!({ "notifications": [item, valid()] });
                    rt.block_on(check(&s, path, wrapped.to_string().into_bytes()))?;
                }
            }
            Ok(())
        })
        .expect("every body gets a clean answer");
    // And the server is still up and taking work.
    let (status, _, v) = rt.block_on(s.post("/v1/notifications", &valid()));
    assert_eq!(status, 202, "{v}");
    rt.block_on(async move {
        let mut s = s;
        s.stop().await;
    });
}
