//! Accepted notifications reach each requested channel exactly once, and the
//! status API tells their story.

use std::collections::HashSet;
use std::time::Duration;

use herald_sim::Fault;
use serde_json::json;

use crate::utils::{max_attempts, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_receives_each_notification_exactly_once() {
    // 20% of Twilio calls fail: with 20 attempts, a delivery dying is 0.2^20.
    let s = TestServer::start_with(|c| max_attempts(c, 20)).await;
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
    // SMS go out through Twilio, or through SNS when 20% errors happen to
    // open Twilio's circuit (five in a row): each exactly once either way.
    let sns = stats.get("sns").map_or(0, |s| s.unique);
    assert_eq!(stats["twilio"].unique + sns, 150, "{stats:?}");
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
    assert!(
        email["vendor_message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sim")),
        "X-Message-Id kept: {email}"
    );
    assert_eq!(email["attempts"][0]["outcome"], "accepted");
    assert_eq!(email["attempts"][0]["status_code"], 202);
    assert!(email["attempts"][0]["latency_ms"].is_i64());
    assert!(email["sent_at"].is_string());
    let key = email["delivery_id"].as_str().expect("delivery id");
    assert!(
        s.sim
            .entries()
            .iter()
            .any(|e| e.vendor == "sendgrid" && e.key == key),
        "the vendor got the delivery id as its key"
    );

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
async fn a_transient_failure_is_retried_with_the_same_vendor_key() {
    let s = TestServer::start_with(|c| max_attempts(c, 20)).await;
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
    let failed_twice = || {
        s.sim
            .stats()
            .get("sendgrid")
            .is_some_and(|st| st.faulted >= 2)
    };
    assert!(crate::utils::wait_until(Duration::from_secs(10), failed_twice).await);
    s.sim.clear_faults();
    let view = s.wait_finished(&id).await;
    let email = &view["channels"][0];
    assert_eq!(email["state"], "sent", "{view}");
    let attempts = email["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 3, "{view}");
    assert!(attempts[..attempts.len() - 1]
        .iter()
        .all(|a| a["outcome"] == "transient" && a["status_code"] == 503));
    assert_eq!(attempts[attempts.len() - 1]["outcome"], "accepted");
    let entries = s.sim.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].key,
        email["delivery_id"].as_str().expect("delivery id"),
        "the delivery id is the vendor key"
    );
}

#[tokio::test]
async fn exhausted_attempts_end_dead_with_the_last_error() {
    let s = TestServer::start_with(|c| max_attempts(c, 3)).await;
    s.fault(
        "sendgrid",
        Fault {
            outage: true,
            ..Fault::default()
        },
    );
    let (status, _, v) = s
        .post("/v1/notifications", &crate::utils::email("doomed"))
        .await;
    assert_eq!(status, 202);
    let view = s.wait_finished(v["id"].as_str().expect("id")).await;
    let email = &view["channels"][0];
    assert_eq!(email["state"], "dead", "{view}");
    assert_eq!(email["attempts"].as_array().map(Vec::len), Some(3));
    assert!(
        email["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{view}"
    );
    assert_eq!(s.sim.stats()["sendgrid"].faulted, 3);
    assert_eq!(s.delivered(), 0);
}

#[tokio::test]
async fn an_expired_notification_is_never_sent_late() {
    let s = TestServer::start_with(|c| max_attempts(c, 1000)).await;
    // Both SMS vendors down: failover cannot help either.
    for vendor in ["twilio", "sns"] {
        s.fault(
            vendor,
            Fault {
                outage: true,
                ..Fault::default()
            },
        );
    }
    let mut body = crate::utils::sms("your code is 123456", "critical");
    body["ttl_seconds"] = json!(1);
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202);
    let view = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(view["channels"][0]["state"], "expired", "{view}");
    s.sim.clear_faults();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.delivered(), 0, "a stale 2FA code is never sent");
}

#[tokio::test]
async fn send_at_defers_the_first_attempt() {
    let s = TestServer::start().await;
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let mut body = crate::utils::email("later");
    body["send_at"] = json!(at.to_rfc3339());
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    s.wait_delivered(1, Duration::from_secs(10)).await;
    let received = s.sim.entries()[0].received_at_ms;
    assert!(
        received >= at.timestamp_millis(),
        "sent {} ms before send_at",
        at.timestamp_millis() - received
    );
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
