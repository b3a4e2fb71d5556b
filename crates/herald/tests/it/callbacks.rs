//! A tenant's callback: signed Standard Webhooks events for the final
//! states it asked for, from the engine (sent, failed) and from receipts
//! (delivered, bounced), each once, through a receiver the test runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::utils::{decode, wait_until, TestServer};

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver that keeps every request; its URL.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().expect("lock").push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/events"), got)
}

/// The events received so far, each checked against its Standard Webhooks
/// signature (the sandbox's signing secret).
fn events(got: &Received) -> Vec<Value> {
    let secret = herald::config::SANDBOX_WEBHOOK_SECRET
        .strip_prefix("whsec_")
        .expect("whsec_");
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .expect("base64");
    got.lock()
        .expect("lock")
        .iter()
        .map(|(h, body)| {
            let header = |n: &str| h[n].to_str().expect("ascii").to_owned();
            let signed = format!(
                "{}.{}.{}",
                header("webhook-id"),
                header("webhook-timestamp"),
                String::from_utf8_lossy(body)
            );
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
            mac.update(signed.as_bytes());
            let expected = format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            );
            assert!(
                header("webhook-signature")
                    .split(' ')
                    .any(|s| s == expected),
                "a valid signature"
            );
            serde_json::from_slice(body).expect("JSON")
        })
        .collect()
}

async fn put(s: &TestServer, body: &Value) -> (u16, Value) {
    let resp = s
        .http
        .put(format!("{}/v1/callbacks", s.base))
        .bearer_auth(&s.key)
        .json(body)
        .send()
        .await
        .expect("sent");
    let (status, _, v) = decode(resp).await;
    (status, v)
}

#[tokio::test]
async fn a_tenant_hears_once_of_each_final_state_it_asked_for() {
    let s = TestServer::start().await;
    let (url, got) = receiver().await;
    let (status, v) = s.get("/v1/callbacks").await;
    assert_eq!(status, 404, "none yet: {v}");
    let (status, v) = put(
        &s,
        &json!({"url": url, "events": ["sent", "failed", "delivered"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["events"], json!(["sent", "failed", "delivered"]));
    let (status, v) = s.get("/v1/callbacks").await;
    assert_eq!(
        (status, v["url"].as_str()),
        (200, Some(url.as_str())),
        "{v}"
    );

    // One sent, one failed: two events, each once.
    let sms = |to: &str| json!({"channels": ["sms"], "recipient": {"phone": to}, "content": {"text": "code 123456"}});
    let (_, _, a) = s.post("/v1/notifications", &sms("+14155550100")).await;
    let (_, _, b) = s.post("/v1/notifications", &sms("+15005550001")).await;
    let a = a["id"].as_str().expect("id").to_owned();
    let b = b["id"].as_str().expect("id").to_owned();
    s.wait_finished(&a).await;
    s.wait_finished(&b).await;
    assert!(
        wait_until(Duration::from_secs(15), || got
            .lock()
            .map(|g| g.len())
            .unwrap_or(0)
            >= 2)
        .await,
        "two events arrive"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: Vec<(String, String, String)> = events(&got)
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["data"]["notification_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["data"]["channel"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        ("notification.sent".to_owned(), a.clone(), "sms".to_owned()),
        (
            "notification.failed".to_owned(),
            b.clone(),
            "sms".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(seen, want);
    let failed = events(&got)
        .into_iter()
        .find(|e| e["type"] == "notification.failed")
        .expect("the failure");
    assert!(
        failed["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("21211")),
        "{failed}"
    );
    assert_eq!(failed["data"]["provider"], "twilio");

    // A receipt's news is an event too: Twilio says the first was delivered.
    let (_, n) = s.get(&format!("/v1/notifications/{a}")).await;
    let delivery = n["channels"][0]["delivery_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, v) = crate::receipts::post_twilio(
        &s,
        &delivery,
        &[
            ("MessageSid", "SM1"),
            ("MessageStatus", "delivered"),
            ("To", "+14155550100"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        wait_until(Duration::from_secs(15), || got
            .lock()
            .map(|g| g.len())
            .unwrap_or(0)
            >= 3)
        .await,
        "the delivered event arrives"
    );
    let delivered = events(&got)
        .into_iter()
        .find(|e| e["type"] == "notification.delivered")
        .expect("delivered");
    assert_eq!(delivered["data"]["delivery_id"], delivery.as_str());
    // The same receipt again changes nothing, and makes no second event;
    // the callbacks' own deliveries make none either.
    crate::receipts::post_twilio(
        &s,
        &delivery,
        &[
            ("MessageSid", "SM1"),
            ("MessageStatus", "delivered"),
            ("To", "+14155550100"),
        ],
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.lock().map(|g| g.len()).unwrap_or(0), 3);

    // Removed: no more events.
    let resp = s
        .http
        .delete(format!("{}/v1/callbacks", s.base))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 204);
    let (_, _, c) = s.post("/v1/notifications", &sms("+14155550101")).await;
    s.wait_finished(c["id"].as_str().expect("id")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().map(|g| g.len()).unwrap_or(0),
        3,
        "nothing after removal"
    );
}

#[tokio::test]
async fn a_callback_that_could_not_be_sent_to_is_refused() {
    let s = TestServer::start().await;
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "http://10.0.0.1/x"}), "url"),
        (
            json!({"url": "https://example.com/x", "events": ["queued"]}),
            "events[0]",
        ),
        (
            json!({"url": "https://example.com/x", "events": []}),
            "events",
        ),
        (json!({"url": "https://example.com/x", "extra": 1}), "extra"),
    ] {
        let (status, v) = put(&s, &body).await;
        assert_eq!(status, 422, "{body}: {v}");
        let named = v["errors"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["field"] == field));
        assert!(named, "{body}: names {field}: {v}");
    }
    let resp = s
        .http
        .delete(format!("{}/v1/callbacks", s.base))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 404);
}
