//! Accepted notifications reach each requested channel exactly once, and the
//! status API tells their story.

use std::collections::HashSet;
use std::time::Duration;

use herald_sim::Fault;
use serde_json::json;

use crate::utils::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_receives_each_notification_exactly_once() {
    let s = TestServer::start().await;
    s.fault(
        "twilio",
        Fault {
            error_rate: 0.2,
            latency_max_ms: 5,
            ..Fault::default()
        },
    );
    let mut items = Vec::new();
    for i in 0..300 {
        let mut channels = vec!["email"];
        let mut recipient = json!({"email": format!("u{i}@example.com")});
        if i % 2 == 0 {
            channels.push("sms");
            recipient["phone"] = json!(format!("+1415555{:04}", i));
        }
        if i % 3 == 0 {
            channels.push("push");
            recipient["push_tokens"] = json!([{"platform": "android", "token": format!("a-{i}")}, {"platform": "ios", "token": format!("i-{i}")}]);
        }
        if i % 5 == 0 {
            channels.push("webhook");
            recipient["webhook_url"] = json!(format!("{}/hooks/t/{i}", s.sim_url));
        }
        items.push(json!({"channels": channels, "recipient": recipient,
            "content": {"subject": format!("n{i}"), "text": format!("text {i}")}}));
    }
    let expected: u64 = 300 + 150 + 2 * 100 + 60;
    let (status, _, body) = s
        .post("/v1/notifications/batch", &json!({"notifications": items}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["status"] == "accepted"),
        "{body}"
    );

    s.wait_delivered(expected, Duration::from_secs(30)).await;
    // Give any stray second send time to show up, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = s.sim.stats();
    assert_eq!(stats["sendgrid"].unique, 300);
    assert_eq!(stats["twilio"].unique, 150);
    assert_eq!(stats["fcm"].unique, 200);
    assert_eq!(stats["webhook"].unique, 60);
    assert!(stats["twilio"].faulted > 0, "the fault was injected");
    let dups: u64 = stats.values().map(|v| v.duplicates).sum();
    assert_eq!(dups, 0, "no vendor saw a key twice: {stats:?}");
    let keys: HashSet<String> = s.sim.entries().into_iter().map(|e| e.key).collect();
    assert_eq!(keys.len() as u64, expected, "one distinct key per delivery");
}

#[tokio::test]
async fn the_status_api_shows_states_and_attempts() {
    let s = TestServer::start().await;
    let body = json!({
        "priority": "high",
        "category": "order-update",
        "channels": ["email", "sms", "push"],
        "recipient": {"id": "u1", "email": "ada@example.com", "phone": "+15005550001",
            "push_tokens": [{"platform": "android", "token": "good"}, {"platform": "ios", "token": "invalid-gone"}]},
        "content": {"subject": "Order shipped", "text": "Your order is on its way"},
        "metadata": {"order": 42}
    });
    let (status, headers, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "accepted");
    let id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(
        headers["location"],
        format!("/v1/notifications/{id}").as_str()
    );

    let view = s.wait_finished(&id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["priority"], "high");
    assert_eq!(view["metadata"]["order"], 42);
    let channels = view["channels"].as_array().expect("channels");
    assert_eq!(
        channels.len(),
        4,
        "email, sms and one entry per push device: {view}"
    );
    let find = |ch: &str, device: Option<u64>| {
        channels
            .iter()
            .find(|c| c["channel"] == ch && device.is_none_or(|d| c["device"] == d))
            .unwrap_or_else(|| panic!("no {ch} entry in {view}"))
            .clone()
    };
    let email = find("email", None);
    assert_eq!(email["state"], "sent");
    assert_eq!(email["provider"], "sendgrid");
    assert_eq!(email["attempts"][0]["outcome"], "accepted");
    assert_eq!(email["attempts"][0]["status_code"], 202);
    assert!(email["attempts"][0]["latency_ms"].is_i64());
    assert!(email["sent_at"].is_string());

    // Twilio's invalid-number test recipient: permanent, tried once.
    let sms = find("sms", None);
    assert_eq!(sms["state"], "failed", "{sms}");
    assert_eq!(sms["attempts"].as_array().map(Vec::len), Some(1));
    assert!(
        sms["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("21211")),
        "{sms}"
    );

    assert_eq!(find("push", Some(0))["state"], "sent");
    let gone = find("push", Some(1));
    assert_eq!(
        gone["state"], "failed",
        "an unregistered token fails alone: {gone}"
    );
    assert!(gone["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("UNREGISTERED")));
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_key_then_dead() {
    let s = TestServer::start_with(|c| c.engine.max_attempts = 3).await;
    s.fault(
        "sendgrid",
        Fault {
            outage: true,
            ..Fault::default()
        },
    );
    let (status, _, v) = s
        .post("/v1/notifications", &crate::utils::email("retry me"))
        .await;
    assert_eq!(status, 202);
    let id = v["id"].as_str().expect("id").to_owned();
    let view = s.wait_finished(&id).await;
    let email = &view["channels"][0];
    assert_eq!(email["state"], "dead", "{view}");
    let attempts = email["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a["outcome"] == "transient" && a["status_code"] == 503));
    assert_eq!(s.sim.stats()["sendgrid"].faulted, 3);
}

#[tokio::test]
async fn templates_are_rendered_per_locale_with_unicode_intact() {
    let s = TestServer::start().await;
    let body = json!({"channels": ["email", "sms"],
        "recipient": {"email": "zoë@exämple.de", "phone": "+81312345678"},
        "template": {"id": "password-reset", "locale": "pt-BR",
            "data": {"name": "Zoë 李 🚀", "link": "https://x.example/r"}}});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    s.wait_delivered(2, Duration::from_secs(10)).await;
    let entries = s.sim.entries();
    let email = entries
        .iter()
        .find(|e| e.vendor == "sendgrid")
        .expect("email sent");
    assert_eq!(email.summary, "Redefina sua senha");
    assert_eq!(email.recipient, "zoë@exämple.de");
    let sms = entries
        .iter()
        .find(|e| e.vendor == "twilio")
        .expect("sms sent");
    assert!(sms.summary.contains("Olá Zoë 李 🚀"), "{}", sms.summary);
}
