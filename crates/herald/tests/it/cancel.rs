//! Cancelling: `DELETE /v1/notifications/{id}` (or by idempotency key)
//! ends what has not gone out, reports what had, and never lets a
//! cancelled delivery out, even racing the workers.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::utils::TestServer;

fn scheduled(i: usize, in_ms: i64) -> Value {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(in_ms);
    json!({"channels": ["email", "sms"], "send_at": at.to_rfc3339(),
           "recipient": {"email": format!("c{i}@example.com"), "phone": format!("+1415555{i:04}")},
           "content": {"subject": "Your order", "text": format!("Order {i} ✓")}})
}

#[tokio::test]
async fn a_scheduled_notification_is_cancelled_and_never_sent() {
    let s = TestServer::start().await;
    let (status, _, v) = s.post("/v1/notifications", &scheduled(1, 1_500)).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let (status, v) = s
        .send(Method::DELETE, &format!("/v1/notifications/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cancelled"], 2, "{v}");
    assert!(
        v["channels"].as_array().is_some_and(|c| c
            .iter()
            .all(|d| d["state"] == "cancelled" && d["cancelled"] == true)),
        "{v}"
    );
    // Cancelling again changes nothing.
    let (_, again) = s
        .send(Method::DELETE, &format!("/v1/notifications/{id}"), None)
        .await;
    assert_eq!(again["cancelled"], 0, "{again}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(s.sim.entries().is_empty(), "nothing went out");
    let (_, n) = s.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["status"], "completed", "{n}");
    assert_eq!(n["channels"][0]["state"], "cancelled", "{n}");

    // Sent already: reported as such.
    let (_, _, v) = s.post("/v1/notifications", &scheduled(2, 0)).await;
    let id = v["id"].as_str().expect("id").to_owned();
    s.wait_finished(&id).await;
    let (status, v) = s
        .send(Method::DELETE, &format!("/v1/notifications/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cancelled"], 0, "{v}");
    assert_eq!(v["channels"][0]["state"], "sent", "{v}");

    // Another tenant's, or no such id: 404.
    let other = s.key_for("other").await;
    let (status, _) = s
        .send_as(
            &other,
            Method::DELETE,
            &format!("/v1/notifications/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .send(Method::DELETE, "/v1/notifications/not-a-uuid", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_notification_is_cancelled_by_its_idempotency_key() {
    let s = TestServer::start().await;
    let (status, _, v) = s
        .post_as(
            &s.key,
            "/v1/notifications",
            &scheduled(3, 60_000),
            Some("order-3/x+y"),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let (status, v) = s
        .send(
            Method::DELETE,
            "/v1/notifications?idempotency_key=order-3%2Fx%2By",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cancelled"], 2, "{v}");
    for (query, want) in [
        ("idempotency_key=nope", 404),
        ("", 422),
        ("idempotency_key=", 422),
        ("idempotency_key=a&idempotency_key=b", 422),
        ("key=order-3", 422),
    ] {
        let (status, v) = s
            .send(Method::DELETE, &format!("/v1/notifications?{query}"), None)
            .await;
        assert_eq!(status, want, "{query}: {v}");
    }
}

/// Cancels race the workers: 150 notifications come due one after another
/// while a cancel for each is sent. Whatever each cancel says it
/// cancelled never reaches a vendor; the rest arrive.
#[tokio::test]
async fn a_cancel_racing_the_workers_never_lets_a_cancelled_delivery_out() {
    let s = TestServer::start().await;
    let count = 150;
    let mut ids = Vec::new();
    // Due one after another over 600 ms: the cancels, sent in the same
    // order from the middle of that window, meet some already out, some
    // being claimed right then, some still waiting.
    let items: Vec<Value> = (0..count)
        .map(|i| scheduled(100 + i, 400 + 4 * i as i64))
        .collect();
    let (status, _, v) = s
        .post("/v1/notifications/batch", &json!({"notifications": items}))
        .await;
    assert_eq!(status, 200, "{v}");
    for r in v["results"].as_array().expect("results") {
        ids.push(r["id"].as_str().expect("accepted").to_owned());
    }
    tokio::time::sleep(Duration::from_millis(650)).await;
    let mut cancels = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (http, base, key, id) = (s.http.clone(), s.base.clone(), s.key.clone(), id.clone());
        cancels.spawn(async move {
            let v: Value = http
                .delete(format!("{base}/v1/notifications/{id}"))
                .bearer_auth(key)
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("json");
            (100 + i, v)
        });
    }
    let mut cancelled = Vec::new();
    while let Some(done) = cancels.join_next().await {
        let (i, v) = done.expect("task");
        for d in v["channels"].as_array().expect("channels") {
            if d["cancelled"] == true {
                cancelled.push(match d["channel"].as_str() {
                    Some("email") => format!("c{i}@example.com"),
                    _ => format!("+1415555{i:04}"),
                });
            } else {
                assert_ne!(d["state"], "cancelled", "{v}");
            }
        }
    }
    for id in &ids {
        s.wait_finished(id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached: std::collections::HashSet<String> =
        s.sim.entries().into_iter().map(|e| e.recipient).collect();
    eprintln!(
        "race: {} of {} deliveries cancelled, {} sent",
        cancelled.len(),
        count * 2,
        reached.len()
    );
    let leaked: Vec<&String> = cancelled.iter().filter(|a| reached.contains(*a)).collect();
    assert!(leaked.is_empty(), "cancelled yet sent: {leaked:?}");
    assert_eq!(
        reached.len() + cancelled.len(),
        count * 2,
        "every delivery either cancelled or sent ({} cancelled)",
        cancelled.len()
    );
}
