//! Idempotency-Key: replay, conflict, in-flight, per tenant.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::utils::{email, TestServer};

#[tokio::test]
async fn same_key_same_body_replays_the_original_response() {
    let s = TestServer::start().await;
    let (s1, h1, v1) = s
        .post_as(&s.key, "/v1/notifications", &email("hi"), Some("order-1"))
        .await;
    assert_eq!(s1, 202);
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, v2) = s
        .post_as(&s.key, "/v1/notifications", &email("hi"), Some("order-1"))
        .await;
    assert_eq!(s2, 202);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(v1, v2, "the original body again");
    s.wait_delivered(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.delivered(), 1, "one notification, one delivery");
}

#[tokio::test]
async fn same_key_different_body_is_422() {
    let s = TestServer::start().await;
    let (st, _, _) = s
        .post_as(&s.key, "/v1/notifications", &email("one"), Some("k"))
        .await;
    assert_eq!(st, 202);
    let (st, h, v) = s
        .post_as(&s.key, "/v1/notifications", &email("two"), Some("k"))
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(v["type"], "urn:herald:problem:idempotency-key-reused");
}

#[tokio::test]
async fn keys_are_scoped_per_tenant() {
    let s = TestServer::start().await;
    let other = s.key_for("acme").await;
    let (_, _, a) = s
        .post_as(&s.key, "/v1/notifications", &email("x"), Some("shared"))
        .await;
    let (st, h, b) = s
        .post_as(&other, "/v1/notifications", &email("x"), Some("shared"))
        .await;
    assert_eq!(st, 202);
    assert!(h.get("idempotent-replayed").is_none());
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_one_key_create_exactly_one_notification() {
    let s = Arc::new(TestServer::start().await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.spawn(async move {
            s.post_as(&s.key, "/v1/notifications", &email("once"), Some("race"))
                .await
        });
    }
    let mut ids = HashSet::new();
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, _, v) = r.expect("task");
        statuses.push(status);
        match status {
            202 => {
                ids.insert(v["id"].as_str().expect("id").to_owned());
            }
            409 => assert_eq!(v["type"], "urn:herald:problem:idempotency-key-in-flight"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "every 202 names the same notification: {statuses:?}"
    );
    s.wait_delivered(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.delivered(), 1);
    assert_eq!(
        s.sim.stats()["sendgrid"].received,
        1,
        "exactly one notification was created"
    );
}

#[tokio::test]
async fn batch_items_carry_their_own_keys() {
    let s = TestServer::start().await;
    let mut a = email("a");
    a["idempotency_key"] = json!("item-a");
    let mut dup = email("a");
    dup["idempotency_key"] = json!("item-a");
    let (st, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": [a.clone(), dup]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["results"][0]["status"], "accepted");
    assert_eq!(v["results"][1]["error"]["status"], 409, "{v}");
    // Sent again later: replayed, not created.
    let (_, _, again) = s
        .post("/v1/notifications/batch", &json!({"notifications": [a]}))
        .await;
    assert_eq!(again["results"][0]["id"], v["results"][0]["id"]);
    assert_eq!(again["results"][0]["replayed"], true);
}
