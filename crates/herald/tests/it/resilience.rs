//! Circuit breakers, failover, retries and dead letters, observed where a
//! user would look: requests counted at the simulated vendors, states and
//! attempts through the API, `/metrics`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_sim::Fault;
use serde_json::{json, Value};

use crate::utils::{max_attempts, wait_until, TestServer};

fn down() -> Fault {
    Fault {
        outage: true,
        ..Fault::default()
    }
}

fn sms_to(phone: &str, priority: &str) -> Value {
    json!({"priority": priority, "channels": ["sms"],
        "recipient": {"phone": phone}, "content": {"text": format!("for {phone}")}})
}

async fn circuit(s: &TestServer, name: &str) -> String {
    s.provider(name).await["circuit"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_breaker_stops_calls_while_open_and_a_probe_closes_it() {
    let s = TestServer::start_with(|c| {
        // Twilio alone, one call at a time, so "after 5 failures" is exact.
        c.channels
            .get_mut(&herald_core::Channel::Sms)
            .expect("sms")
            .providers = vec!["twilio".into()];
        let t = c.providers.get_mut("twilio").expect("twilio");
        t.max_concurrency = Some(1);
        t.circuit_open_ms = Some(3_000);
        max_attempts(c, 100);
    })
    .await;
    s.fault("twilio", down());
    for i in 0..10 {
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &sms_to(&format!("+1415555{i:04}"), "normal"),
            )
            .await;
        assert_eq!(status, 202, "{v}");
    }
    let received = || s.sim.stats().get("twilio").map_or(0, |t| t.received);
    assert!(
        wait_until(Duration::from_secs(10), || received() >= 5).await,
        "twilio was called"
    );
    let opened = Instant::now();
    let p = s.provider("twilio").await;
    assert_eq!(p["circuit"]["state"], "open", "{p}");
    assert_eq!(p["circuit"]["consecutive_failures"], 5, "{p}");
    assert!(p["circuit"]["reopens_at"].is_string(), "{p}");
    let metrics = s.get_raw("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("herald_provider_circuit_state{provider=\"twilio\"} 1"),
        "the gauge shows it open"
    );

    // Half the open period: nothing more reaches the vendor.
    tokio::time::sleep(Duration::from_millis(1_500).saturating_sub(opened.elapsed())).await;
    assert_eq!(received(), 5, "no request while the circuit is open");

    // The vendor recovers; after the open time one probe closes the circuit
    // and everything is delivered, each once.
    s.sim.clear_faults();
    s.wait_delivered(10, Duration::from_secs(15)).await;
    let twilio = s.sim.stats()["twilio"];
    assert_eq!(twilio.unique, 10);
    assert_eq!(twilio.duplicates, 0);
    assert_eq!(circuit(&s, "twilio").await, "closed");
    assert!(
        opened.elapsed() >= Duration::from_millis(2_500),
        "the first call after opening waited for the open period"
    );
}

#[tokio::test]
async fn critical_fails_over_at_once_and_low_waits_for_its_primary() {
    let s = TestServer::start_with(|c| {
        c.providers
            .get_mut("twilio")
            .expect("twilio")
            .circuit_open_ms = Some(1_500);
        max_attempts(c, 100);
    })
    .await;
    s.fault("twilio", down());
    let mut critical = Vec::new();
    for i in 0..12 {
        let phone = format!("+1415556{i:04}");
        let sent_at = herald_core::now_ms();
        let (status, _, v) = s
            .post("/v1/notifications", &sms_to(&phone, "critical"))
            .await;
        assert_eq!(status, 202, "{v}");
        critical.push((phone, sent_at, v["id"].as_str().expect("id").to_owned()));
    }
    let low: Vec<String> = (0..5).map(|i| format!("+1415557{i:04}")).collect();
    for phone in &low {
        let (status, _, v) = s.post("/v1/notifications", &sms_to(phone, "low")).await;
        assert_eq!(status, 202, "{v}");
    }

    s.wait_delivered(12, Duration::from_secs(10)).await;
    let opened_at = s.provider("twilio").await["circuit"]["opened_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let entries = s.sim.entries();
    for (phone, sent_at, id) in &critical {
        let e = entries
            .iter()
            .find(|e| &e.recipient == phone)
            .unwrap_or_else(|| panic!("{phone} delivered"));
        assert_eq!(e.vendor, "sns", "critical SMS go to the backup");
        // Never a retry's back-off: at once after the failure, or straight
        // to the backup once the circuit is open.
        let from = opened_at.map_or(*sent_at, |o| o.max(*sent_at));
        assert!(
            e.received_at_ms - from <= 1_000,
            "{phone} reached SNS {} ms after it could",
            e.received_at_ms - from
        );
        let (_, v) = s.get(&format!("/v1/notifications/{id}")).await;
        let ch = &v["channels"][0];
        assert_eq!(ch["state"], "sent");
        assert_eq!(ch["provider"], "sns");
        assert!(
            ch["attempts"]
                .as_array()
                .is_some_and(|a| a.iter().all(|a| a["attempt"] == 1)),
            "one attempt, failing over within it: {ch}"
        );
    }
    let twilio = s.sim.stats()["twilio"];
    // Five failures open it (calls already in flight when it opened still
    // land); most of the 17 messages never reached Twilio while it was down.
    assert!(
        (5..12).contains(&twilio.received),
        "the breaker kept traffic off the failing vendor: {twilio:?}"
    );

    // Low never went to the backup; it waits, then goes out through Twilio.
    assert!(entries.iter().all(|e| !low.contains(&e.recipient)));
    s.sim.clear_faults();
    s.wait_delivered(17, Duration::from_secs(15)).await;
    let entries = s.sim.entries();
    for phone in &low {
        let at: Vec<_> = entries.iter().filter(|e| &e.recipient == phone).collect();
        assert_eq!(at.len(), 1, "{phone} delivered once");
        assert_eq!(at[0].vendor, "twilio", "low waited for its primary");
    }
    assert_eq!(s.sim.stats()["sns"].unique, 12);
}

/// A revoked credential (Twilio's own 401, code 20003) is the account's
/// failure, not the messages': critical fails over, low waits for its
/// primary without using up its attempts (a 503 would have made dead
/// letters of them), the account shows it on `/v1/providers`, `/readyz`
/// and `/metrics`, and once the key works again everything goes out, once.
#[tokio::test]
async fn a_revoked_credential_fails_no_message_and_shows_on_the_account() {
    let s = TestServer::start_with(|c| {
        c.providers
            .get_mut("twilio")
            .expect("twilio")
            .circuit_open_ms = Some(500);
        max_attempts(c, 2);
    })
    .await;
    s.fault(
        "twilio",
        Fault {
            credential_revoked: true,
            ..Fault::default()
        },
    );
    let (status, _, v) = s
        .post("/v1/notifications", &sms_to("+14155580000", "critical"))
        .await;
    assert_eq!(status, 202, "{v}");
    let mut low = Vec::new();
    for i in 0..4 {
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &sms_to(&format!("+1415558{:04}", i + 1), "low"),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        low.push(v["id"].as_str().expect("id").to_owned());
    }
    s.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(s.sim.stats()["sns"].unique, 1, "critical failed over");

    // Four times as many refusals as the low SMS have attempts.
    let refused = || s.sim.stats().get("twilio").map_or(0, |t| t.faulted);
    assert!(
        wait_until(Duration::from_secs(30), || refused() >= 16).await,
        "twilio was tried again and again: {}",
        refused()
    );
    for id in &low {
        let (_, v) = s.get(&format!("/v1/notifications/{id}")).await;
        let state = v["channels"][0]["state"].as_str().unwrap_or_default();
        assert!(
            ["queued", "retry_scheduled", "sending"].contains(&state),
            "waits for the credential: {v}"
        );
    }
    let (_, dead) = s.get("/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"], json!([]), "no dead letters");
    let p = s.provider("twilio").await;
    let why = p["credential_refused"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("20003"), "{p}");
    assert!(p["credential_refused"]["calls"].as_u64() >= Some(16), "{p}");
    let ready = s.get_raw("/readyz").await;
    assert_eq!(ready.status(), 200, "the node still takes work");
    let ready: Value = ready.json().await.expect("json");
    assert!(
        ready["credentials"][0]
            .as_str()
            .is_some_and(|l| l.starts_with("twilio: credential refused since")),
        "{ready}"
    );
    let metrics = s.get_raw("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("herald_provider_credentials_refused{provider=\"twilio\"} 1"),
        "the gauge shows it"
    );

    // The key is fixed: everything goes out through Twilio, once each.
    s.sim.clear_faults();
    s.wait_delivered(5, Duration::from_secs(15)).await;
    let twilio = s.sim.stats()["twilio"];
    assert_eq!((twilio.unique, twilio.duplicates), (4, 0));
    assert!(s.provider("twilio").await["credential_refused"].is_null());
    let metrics = s.get_raw("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("herald_provider_credentials_refused{provider=\"twilio\"} 0"));
}

#[tokio::test]
async fn normal_fails_over_only_past_an_open_circuit() {
    let s = TestServer::start_with(|c| max_attempts(c, 100)).await;
    // Twilio fails once, then works: a normal message retries Twilio.
    s.fault(
        "twilio",
        Fault {
            error_rate: 1.0,
            ..Fault::default()
        },
    );
    let (status, _, v) = s
        .post("/v1/notifications", &sms_to("+14155558000", "normal"))
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .sim
            .stats()
            .get("twilio")
            .is_some_and(|t| t.faulted >= 1))
        .await
    );
    s.sim.clear_faults();
    let v = s.wait_finished(&id).await;
    let ch = &v["channels"][0];
    assert_eq!(ch["state"], "sent", "{v}");
    assert_eq!(
        ch["provider"], "twilio",
        "a transient error alone does not fail normal over"
    );
    assert!(s.sim.stats().get("sns").is_none_or(|t| t.received == 0));
}

/// Sends an email that SendGrid answers with 429 and `Retry-After: 2`;
/// returns its id once the 429 has happened (the fault is still on).
async fn throttled_email(s: &TestServer) -> String {
    s.fault(
        "sendgrid",
        Fault {
            rate_limit_rate: 1.0,
            retry_after_s: Some(2),
            ..Fault::default()
        },
    );
    let (status, _, v) = s
        .post("/v1/notifications", &crate::utils::email("throttled"))
        .await;
    assert_eq!(status, 202, "{v}");
    let throttled = || {
        s.sim
            .stats()
            .get("sendgrid")
            .is_some_and(|t| t.faulted >= 1)
    };
    assert!(wait_until(Duration::from_secs(5), throttled).await);
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let s = TestServer::start().await;
    let id = throttled_email(&s).await;
    s.sim.clear_faults();
    let v = s.wait_finished(&id).await;
    let attempts = v["channels"][0]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{v}");
    assert_eq!(attempts[0]["outcome"], "rate_limited");
    assert_eq!(attempts[0]["status_code"], 429);
    let at = |a: &Value| {
        chrono::DateTime::parse_from_rfc3339(a["at"].as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    };
    let waited = at(&attempts[1]) - at(&attempts[0]);
    assert!(
        waited >= 2_000,
        "retried after {waited} ms, before Retry-After"
    );
    assert_eq!(
        circuit(&s, "sendgrid").await,
        "closed",
        "a 429 does not trip the breaker"
    );
}

#[tokio::test]
async fn a_permanent_error_is_tried_once_and_never_failed_over() {
    let s = TestServer::start().await;
    // Twilio's own "invalid number" (code 21211), even for a critical message.
    let (status, _, v) = s
        .post("/v1/notifications", &sms_to("+15005550001", "critical"))
        .await;
    assert_eq!(status, 202, "{v}");
    let v = s.wait_finished(v["id"].as_str().expect("id")).await;
    let ch = &v["channels"][0];
    assert_eq!(ch["state"], "failed", "{v}");
    assert_eq!(ch["attempts"].as_array().map(Vec::len), Some(1));
    assert!(
        ch["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("21211")),
        "{ch}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sim.stats()["twilio"].received, 1);
    assert!(!s.sim.stats().contains_key("sns"), "not sent to the backup");
}

#[tokio::test]
async fn a_retry_scheduled_before_a_restart_happens_after_it() {
    let mut s = TestServer::start().await;
    let id = throttled_email(&s).await;
    s.stop().await;
    s.sim.clear_faults();
    let cfg = crate::utils::config(&s.sim_url, &s.data_dir);
    s.boot(cfg).await;
    s.wait_delivered(1, Duration::from_secs(10)).await;
    let v = s.wait_finished(&id).await;
    assert_eq!(v["channels"][0]["state"], "sent", "{v}");
}

#[tokio::test]
async fn dead_letters_are_listed_filtered_paged_and_replayed_once() {
    let s = TestServer::start_with(|c| {
        max_attempts(c, 2);
        // Keep the breaker out of it: this is about attempts running out.
        c.circuit_breaker.failure_threshold = 1_000;
    })
    .await;
    s.fault("sendgrid", down());
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &crate::utils::email(&format!("dead {i}")),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let v = s.wait_finished(id).await;
        assert_eq!(v["channels"][0]["state"], "dead", "{v}");
    }

    let (status, v) = s.get("/v1/dead-letters").await;
    assert_eq!(status, 200, "{v}");
    let listed = v["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 3, "{v}");
    let ids_listed: HashSet<_> = listed
        .iter()
        .filter_map(|d| d["notification_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids_listed, ids.iter().cloned().collect());
    assert_eq!(listed[0]["channel"], "email");
    assert_eq!(listed[0]["provider"], "sendgrid");
    assert_eq!(listed[0]["attempts"], 2);
    assert!(listed[0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("503")));

    // Filters and pages.
    let (_, v) = s.get("/v1/dead-letters?channel=sms").await;
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0));
    let (_, v) = s
        .get("/v1/dead-letters?provider=sendgrid&since=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(3));
    let (_, page1) = s.get("/v1/dead-letters?limit=2").await;
    assert_eq!(page1["dead_letters"].as_array().map(Vec::len), Some(2));
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let (_, page2) = s
        .get(&format!("/v1/dead-letters?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page2["dead_letters"].as_array().map(Vec::len), Some(1));
    assert!(page2["next_cursor"].is_null());

    // Bad filters are problems naming the field.
    for (q, field) in [
        ("channel=fax", "channel"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "query"),
    ] {
        let (status, v) = s.get(&format!("/v1/dead-letters?{q}")).await;
        assert_eq!(status, 422, "{q}: {v}");
        assert_eq!(v["type"], "urn:herald:problem:invalid-request");
        assert_eq!(v["errors"][0]["field"], field, "{q}: {v}");
    }
    // Another tenant sees none of them and cannot replay them.
    let other = s.key_for("other").await;
    let (_, v) = s.get_as(&other, "/v1/dead-letters").await;
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0));
    let first = listed[0]["id"].as_str().expect("id");
    let (status, _, _) = s
        .post_as(
            &other,
            &format!("/v1/dead-letters/{first}/replay"),
            &json!({}),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The vendor is back: replay one, then the rest in bulk; each is sent once.
    s.sim.clear_faults();
    let (status, _, v) = s
        .post(&format!("/v1/dead-letters/{first}/replay"), &json!({}))
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "queued");
    let (status, _, v) = s
        .post(&format!("/v1/dead-letters/{first}/replay"), &json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["type"], "urn:herald:problem:not-dead");
    let (status, _, v) = s
        .post("/v1/dead-letters/replay", &json!({"channel": "email"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["replayed"], 2);
    s.wait_delivered(3, Duration::from_secs(10)).await;
    for id in &ids {
        let v = s.wait_finished(id).await;
        assert_eq!(v["channels"][0]["state"], "sent", "{v}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sg = s.sim.stats()["sendgrid"];
    assert_eq!(sg.unique, 3);
    assert_eq!(sg.duplicates, 0);
    let (_, v) = s.get("/v1/dead-letters").await;
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0));
    let (status, _, _) = s
        .post(
            "/v1/dead-letters/00000000-0000-0000-0000-000000000000/replay",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_send_rate_limit_paces_calls_to_the_vendor() {
    let s = TestServer::start_with(|c| {
        let t = c.providers.get_mut("sendgrid").expect("sendgrid");
        t.rate_limit_per_second = Some(10);
        t.rate_limit_burst = Some(1);
    })
    .await;
    let started = Instant::now();
    for i in 0..20 {
        let (status, _, v) = s
            .post(
                "/v1/notifications",
                &crate::utils::email(&format!("paced {i}")),
            )
            .await;
        assert_eq!(status, 202, "{v}");
    }
    s.wait_delivered(20, Duration::from_secs(20)).await;
    // 20 calls at 10/s with a burst of 1 take at least 1.9 s: a floor the
    // limiter guarantees, not a speed claim.
    let entries = s.sim.entries();
    let first = entries.iter().map(|e| e.received_at_ms).min().unwrap_or(0);
    let last = entries.iter().map(|e| e.received_at_ms).max().unwrap_or(0);
    assert!(
        last - first >= 1_800,
        "20 sends spread over {} ms, faster than 10/s",
        last - first
    );
    assert!(started.elapsed() >= Duration::from_millis(1_800));
    assert_eq!(
        s.sim.stats()["sendgrid"].received,
        20,
        "never sent early and retried"
    );
}

#[tokio::test]
async fn dead_letter_requests_refuse_hostile_input_cleanly() {
    let s = TestServer::start().await;
    // Odd but harmless filters are just filters: nothing matches.
    for q in [
        "provider=%F0%9F%92%A5%E2%80%AE%00",
        "provider=' OR 1=1 --",
        "since=2026-11-21T10:00:00%2B05:30&until=2026-11-21T10:00:00Z",
    ] {
        let (status, v) = s.get(&format!("/v1/dead-letters?{q}")).await;
        assert_eq!(status, 200, "{q}: {v}");
        assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0), "{q}");
    }
    let long = "x".repeat(10_000);
    for (q, field) in [
        (format!("cursor={long}"), "cursor"),
        ("limit=1001".to_owned(), "limit"),
        ("limit=-1".to_owned(), "limit"),
        ("limit=1&limit=2".to_owned(), "limit"),
        ("channel=%E2%9C%89".to_owned(), "channel"),
    ] {
        let (status, v) = s.get(&format!("/v1/dead-letters?{q}")).await;
        assert_eq!(status, 422, "{field}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    // Bulk replay bodies: malformed JSON, wrong shapes, unknown fields.
    let raw = |body: &'static str| {
        s.http
            .post(format!("{}/v1/dead-letters/replay", s.base))
            .bearer_auth(&s.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status) in [
        ("{", 400),
        ("[]", 422),
        (r#"{"channel": 5}"#, 422),
        (r#"{"everything": true}"#, 422),
        (r#"{"cursor": "abc"}"#, 422),
        (r#"{"limit": 0}"#, 422),
    ] {
        let resp = raw(body).await.expect("sent");
        assert_eq!(resp.status().as_u16(), status, "{body}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
    }
    let resp = raw("{}").await.expect("sent");
    assert_eq!(resp.status(), 200, "an empty filter replays what there is");
    let (status, _, _) = s
        .post("/v1/dead-letters/not-a-uuid/replay", &json!({}))
        .await;
    assert_eq!(status, 404);
}

/// A webhook's circuit belongs to its destination (tenant and endpoint
/// origin): one customer's receiver failing opens its own circuit and
/// holds back no other tenant's webhooks, nor the same tenant's to another
/// receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_receivers_failures_hold_back_no_other_webhooks() {
    let s = TestServer::start_with(|c| max_attempts(c, 3)).await;
    // A second receiver (its own origin), down for the whole test.
    let broken = herald_sim::Sim::new(Some(7));
    let (broken_addr, _task) = broken
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    broken.set_fault("webhook", down()).expect("fault");
    let hook = |base: &str, i: usize, priority: &str| {
        json!({"priority": priority, "channels": ["webhook"],
            "recipient": {"webhook_url": format!("{base}/hooks/h/{i}")},
            "content": {"text": "event"}})
    };
    let broken_url = format!("http://{broken_addr}");
    for i in 0..10 {
        let (status, _, v) = s
            .post("/v1/notifications", &hook(&broken_url, i, "normal"))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    // Five failures there open a circuit.
    let failed = wait_until(Duration::from_secs(10), || {
        broken.stats().get("webhook").map_or(0, |w| w.received) >= 5
    })
    .await;
    assert!(
        failed,
        "the broken receiver was called: {:?}",
        broken.stats()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Meanwhile another tenant's critical webhook goes out at once, and so
    // does the first tenant's to a healthy receiver.
    let other = s.key_for("another-tenant").await;
    let (status, _, v) = s
        .post_as(
            &other,
            "/v1/notifications",
            &hook(&s.sim_url, 1, "critical"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let (status, _, v) = s
        .post("/v1/notifications", &hook(&s.sim_url, 2, "high"))
        .await;
    assert_eq!(status, 202, "{v}");
    s.wait_delivered(2, Duration::from_secs(10)).await;

    // The open circuit is that destination's, not the webhook provider's,
    // and only its tenant sees where it points.
    let webhook = s.provider("webhook").await;
    assert_eq!(webhook["circuit"]["state"], "closed", "{webhook}");
    assert_eq!(webhook["destinations"]["open_count"], 1, "{webhook}");
    let open = &webhook["destinations"]["open"][0];
    assert_eq!(open["origin"], broken_url, "{webhook}");
    assert_eq!(open["circuit"]["state"], "open", "{webhook}");
    let (_, theirs) = s.get_as(&other, "/v1/providers").await;
    let theirs = theirs["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "webhook"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(theirs["destinations"]["open"], json!([]), "{theirs}");
    // The broken receiver is not called while its circuit is open.
    let calls = broken.stats()["webhook"].received;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        broken.stats()["webhook"].received,
        calls,
        "called while open"
    );
}

/// An operator holds Twilio's circuit open by hand: nothing goes to it,
/// critical SMS fail over to SNS at once, low ones wait; the hold shows on
/// `/v1/providers` with who and why; released, the circuit closes and what
/// waited goes out through Twilio.
#[tokio::test]
async fn a_circuit_held_by_hand_stops_calls_until_released() {
    use herald_core::store::Scopes;
    use reqwest::Method;
    let s = TestServer::start_with(|c| max_attempts(c, 100)).await;
    let hold = json!({"reason": "Twilio incident INC-4411"});

    let reader = s.key_with("sandbox", Scopes::READ).await;
    let (st, v) = s
        .send_as(
            &reader,
            Method::PUT,
            "/v1/providers/twilio/hold",
            Some(&hold),
        )
        .await;
    assert_eq!(st, 403, "holding is the admin's: {v}");
    let (st, v) = s
        .send(Method::PUT, "/v1/providers/nope/hold", Some(&hold))
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/providers/twilio/hold",
            Some(&json!({"reason": " "})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "reason", "{v}");

    let (st, v) = s
        .send(Method::PUT, "/v1/providers/twilio/hold", Some(&hold))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["circuit"]["state"], "open", "{v}");
    assert_eq!(v["held"]["reason"], "Twilio incident INC-4411", "{v}");
    assert!(
        v["held"]["by"].as_str().is_some_and(|b| !b.is_empty()),
        "{v}"
    );

    let (st, _, v) = s
        .post("/v1/notifications", &sms_to("+14155550001", "critical"))
        .await;
    assert_eq!(st, 202, "{v}");
    let (st, _, v) = s
        .post("/v1/notifications", &sms_to("+14155550002", "low"))
        .await;
    assert_eq!(st, 202, "{v}");
    s.wait_delivered(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = s.sim.entries();
    assert_eq!(entries.len(), 1, "only the critical one went: {entries:?}");
    assert_eq!(entries[0].vendor, "sns");
    assert_eq!(s.sim.stats().get("twilio").map_or(0, |t| t.received), 0);
    assert_eq!(
        s.provider("twilio").await["held"]["reason"],
        "Twilio incident INC-4411"
    );

    let (st, v) = s
        .send(Method::DELETE, "/v1/providers/twilio/hold", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["circuit"]["state"], "closed", "{v}");
    assert!(v["held"].is_null(), "{v}");
    s.wait_delivered(2, Duration::from_secs(15)).await;
    let low = s
        .sim
        .entries()
        .into_iter()
        .find(|e| e.recipient == "+14155550002")
        .expect("the low one went out");
    assert_eq!(low.vendor, "twilio", "it waited for its primary");
}
