//! The API's front door: auth, validation, malformed, oversized, hostile and
//! unicode-heavy input, tenant isolation, and the ops endpoints.

use serde_json::{json, Value};

use crate::utils::{decode, email, sms, TestServer};

async fn post_raw(
    s: &TestServer,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = s
        .http
        .post(format!("{}/v1/notifications", s.base))
        .bearer_auth(&s.key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("sent");
    decode(resp).await
}

fn assert_problem(h: &reqwest::header::HeaderMap, v: &Value, status: u16, kind: &str) {
    assert_eq!(h["content-type"], "application/problem+json", "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["type"], format!("urn:herald:problem:{kind}"), "{v}");
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let s = TestServer::start().await;
    let no_auth = s
        .http
        .post(format!("{}/v1/notifications", s.base))
        .json(&email("x"))
        .send()
        .await
        .expect("sent");
    let (st, h, v) = decode(no_auth).await;
    assert_eq!(st, 401);
    assert_problem(&h, &v, 401, "unauthorized");
    assert_eq!(h["www-authenticate"], "Bearer");
    let (st, _, _) = s
        .post_as(
            "hrld_not-a-real-key",
            "/v1/notifications",
            &email("x"),
            None,
        )
        .await;
    assert_eq!(st, 401);
    let basic = s
        .http
        .get(format!("{}/v1/notifications/x", s.base))
        .basic_auth("user", Some("pw"))
        .send()
        .await
        .expect("sent");
    assert_eq!(basic.status(), 401);
}

/// A key does what its scopes allow and is refused the rest with a 403
/// that names the scope it lacks; the tenant is the key's either way.
#[tokio::test]
async fn a_key_does_only_what_its_scopes_allow() {
    use herald_core::store::Scopes;
    let s = TestServer::start().await;
    let sender = s.key_with("sandbox", Scopes::SEND).await;
    let reader = s.key_with("sandbox", Scopes::READ).await;
    let admin = s.key_with("sandbox", Scopes::ADMIN).await;

    let (st, _, v) = s
        .post_as(&sender, "/v1/notifications", &email("scoped"), None)
        .await;
    assert_eq!(st, 202, "a send key sends: {v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/notifications/{id}");

    let resp = s
        .http
        .get(format!("{}{path}", s.base))
        .bearer_auth(&sender)
        .send()
        .await
        .expect("sent");
    let (st, h, v) = decode(resp).await;
    assert_problem(&h, &v, 403, "forbidden");
    assert_eq!(st, 403);
    assert!(
        v["detail"].as_str().expect("detail").contains("read"),
        "{v}"
    );

    let (st, v) = s.get_as(&reader, &path).await;
    assert_eq!(st, 200, "a read key reads the send key's notification: {v}");
    let (st, _, v) = s
        .post_as(&reader, "/v1/notifications", &email("no"), None)
        .await;
    assert_eq!(st, 403, "a read key does not send: {v}");
    assert!(
        v["detail"].as_str().expect("detail").contains("send"),
        "{v}"
    );

    // Replaying dead letters and changing callbacks are the admin's.
    for key in [&sender, &reader] {
        let (st, _, v) = s
            .post_as(key, "/v1/dead-letters/replay", &json!({}), None)
            .await;
        assert_eq!(st, 403, "{v}");
        assert!(
            v["detail"].as_str().expect("detail").contains("admin"),
            "{v}"
        );
    }
    let (st, _, v) = s
        .post_as(&admin, "/v1/dead-letters/replay", &json!({}), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.get_as(&admin, &path).await;
    assert_eq!(st, 403, "admin alone does not read notifications: {v}");

    // The sandbox's key, made as every key before scopes, does it all.
    let (st, _) = s.get(&path).await;
    assert_eq!(st, 200);
    // An unknown key is still a 401, not a 403.
    let (st, _) = s.get_as("hrld_unknown", &path).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn validation_names_the_field_and_the_reason() {
    let s = TestServer::start().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"channels": ["sms"], "recipient": {"phone": "4155550100"}, "content": {"text": "x"}}),
            "recipient.phone",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+1 (415) 555-0100"}, "content": {"text": "x"}}),
            "recipient.phone",
        ),
        (
            json!({"channels": ["email"], "recipient": {"email": "not-an-email"}, "content": {"subject": "s", "text": "x"}}),
            "recipient.email",
        ),
        (
            json!({"channels": ["email"], "recipient": {"phone": "+14155550100"}, "content": {"subject": "s", "text": "x"}}),
            "recipient.email",
        ),
        (
            json!({"channels": ["fax"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}}),
            "channels[0]",
        ),
        (
            json!({"channels": [], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}}),
            "channels",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}}),
            "content",
        ),
        (
            json!({"channels": ["email"], "recipient": {"email": "a@example.com"}, "content": {"text": "no subject"}}),
            "content.subject",
        ),
        (
            json!({"priority": "urgent", "channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}}),
            "priority",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}, "ttl_seconds": -5}),
            "ttl_seconds",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}, "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}, "surprise": 1}),
            "surprise",
        ),
        (
            json!({"channels": ["webhook"], "recipient": {"webhook_url": "ftp://example.com/x"}, "content": {"text": "x"}}),
            "recipient.webhook_url",
        ),
        (
            json!({"channels": ["push"], "recipient": {"push_tokens": [{"platform": "symbian", "token": "t"}]}, "content": {"text": "x"}}),
            "recipient.push_tokens[0].platform",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "template": {"id": "nope"}}),
            "template.id",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "template": {"id": "otp", "data": {}}}),
            "template.data",
        ),
        (
            json!({"channels": ["email"], "recipient": {"email": "a@example.com"}, "content": {"subject": "🔥".repeat(999), "text": "x"}}),
            "content.subject",
        ),
        (
            json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x"}, "send_at": "tomorrow"}),
            "send_at",
        ),
    ];
    for (body, field) in cases {
        let (st, h, v) = s.post("/v1/notifications", &body).await;
        assert_eq!(st, 422, "{body} → {v}");
        assert_problem(&h, &v, 422, "invalid-request");
        let fields: Vec<&str> = v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(
            fields.contains(&field),
            "expected {field} in {fields:?} for {body}"
        );
        assert!(v["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
    }
    assert_eq!(s.delivered(), 0);
}

#[tokio::test]
async fn malformed_oversized_and_hostile_bodies_get_clear_errors() {
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 64 * 1024).await;
    for bad in [
        &b"{"[..],
        b"",
        b"nul\0l",
        b"[1,2",
        b"{\"channels\": [\"sms\"],}",
        &[0xff, 0xfe, 0x00],
    ] {
        let (st, h, v) = post_raw(&s, bad.to_vec(), "application/json").await;
        assert_eq!(st, 400, "{:?} → {v}", String::from_utf8_lossy(bad));
        assert_problem(&h, &v, 400, "malformed-json");
    }
    // A JSON array where an object belongs is well-formed but the wrong shape.
    let (st, _, _) = post_raw(&s, b"[]".to_vec(), "application/json").await;
    assert_eq!(st, 422);

    let big = json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "x".repeat(100 * 1024)}});
    let (st, h, v) = post_raw(
        &s,
        serde_json::to_vec(&big).expect("json"),
        "application/json",
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert_problem(&h, &v, 413, "payload-too-large");

    // Nesting far past any sane depth, inside a field that must be parsed
    // recursively: refused as malformed, not a stack overflow.
    let deep = format!(
        "{{\"channels\": [\"sms\"], \"recipient\": {{\"phone\": \"+14155550100\"}}, \"content\": {{\"text\": \"x\"}}, \"metadata\": {}1{}}}",
        "{\"a\": ".repeat(2_000),
        "}".repeat(2_000)
    );
    let (st, h, v) = post_raw(&s, deep.into_bytes(), "application/json").await;
    assert_eq!(st, 400, "{v}");
    assert_problem(&h, &v, 400, "malformed-json");

    let (st, h, v) = post_raw(&s, b"{}".to_vec(), "text/plain").await;
    assert_eq!(st, 415);
    assert_problem(&h, &v, 415, "unsupported-media-type");

    // The server is still healthy after all of it.
    let (st, _, v) = s
        .post("/v1/notifications", &sms("still here", "normal"))
        .await;
    assert_eq!(st, 202, "{v}");
}

#[tokio::test]
async fn unicode_heavy_input_is_accepted_and_kept_intact() {
    let s = TestServer::start().await;
    let text = "Ваш код: 123456 — 您的验证码 — رمز التحقق — 🔐✨ — e\u{301} — \u{202e}reversed";
    let body = json!({"channels": ["sms", "email"], "category": "auth",
        "recipient": {"id": "用户-1", "phone": "+447700900123", "email": "δοκιμή@παράδειγμα.ελ"},
        "content": {"subject": "Код 🔐", "text": text},
        "metadata": {"ключ": "значение", "emoji": "🎉"}});
    let (st, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    s.wait_delivered(2, std::time::Duration::from_secs(10))
        .await;
    let sms = s
        .sim
        .entries()
        .into_iter()
        .find(|e| e.vendor == "twilio")
        .expect("sms");
    assert!(text.starts_with(&sms.summary), "{} vs {text}", sms.summary);
    let (_, view) = s.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(view["metadata"]["ключ"], "значение");
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_notifications() {
    let s = TestServer::start().await;
    let other = s.key_for("acme").await;
    let (_, _, v) = s.post("/v1/notifications", &email("mine")).await;
    let id = v["id"].as_str().expect("id");
    let (st, mine) = s.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(st, 200, "{mine}");
    let (st, theirs) = s.get_as(&other, &format!("/v1/notifications/{id}")).await;
    assert_eq!(st, 404, "404, not 403: ids do not leak");
    assert_eq!(theirs["type"], "urn:herald:problem:not-found");
    let (st, _) = s.get("/v1/notifications/not-a-uuid").await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(&format!("/v1/notifications/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn batch_gives_one_result_per_item_in_order() {
    let s = TestServer::start().await;
    let bad = json!({"channels": ["sms"], "recipient": {"phone": "555"}, "content": {"text": "x"}});
    let wrong_shape = json!({"channels": "sms"});
    let (st, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": [sms("a", "low"), bad, wrong_shape, sms("b", "critical")]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let r = v["results"].as_array().expect("results");
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["status"], "accepted");
    assert_eq!(r[1]["error"]["errors"][0]["field"], "recipient.phone");
    assert_eq!(
        r[2]["error"]["errors"][0]["field"],
        "notifications[2].channels"
    );
    assert_eq!(r[3]["status"], "accepted");
    s.wait_delivered(2, std::time::Duration::from_secs(10))
        .await;

    let too_many: Vec<Value> = (0..1001).map(|i| sms(&i.to_string(), "low")).collect();
    let (st, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": too_many}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "notifications");
    let (st, _, _) = s
        .post("/v1/notifications/batch", &json!({"notifications": []}))
        .await;
    assert_eq!(st, 422);
}

#[tokio::test]
async fn webhooks_to_loopback_are_refused_unless_allowed() {
    let s = TestServer::start_with(|c| c.webhooks.allow_loopback = false).await;
    let body = json!({"channels": ["webhook"], "recipient": {"webhook_url": format!("{}/hooks/x", s.sim_url)},
        "content": {"text": "x"}});
    let (st, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "recipient.webhook_url");
    let meta = json!({"channels": ["webhook"], "recipient": {"webhook_url": "http://169.254.169.254/latest/meta-data"},
        "content": {"text": "x"}});
    assert_eq!(s.post("/v1/notifications", &meta).await.0, 422);
}

#[tokio::test]
async fn ops_endpoints() {
    let s = TestServer::start().await;
    let ok = s.get_raw("/healthz").await;
    assert_eq!(ok.status(), 200);
    let ready = s.get_raw("/readyz").await;
    assert_eq!(ready.status(), 200);
    s.post("/v1/notifications", &sms("count me", "critical"))
        .await;
    let (st, _) = s
        .get(&format!("/v1/notifications/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(st, 404);
    s.wait_delivered(1, std::time::Duration::from_secs(10))
        .await;
    let text = s.get_raw("/metrics").await.text().await.expect("text");
    for needle in [
        "herald_notifications_accepted_total",
        "herald_attempts_total",
        "herald_attempt_duration_seconds_bucket",
        "herald_queue_depth{channel=\"sms\",lane=\"critical\"}",
        "herald_queue_lag_seconds{channel=\"sms\",lane=\"critical\"}",
        "herald_lane_objective_seconds{lane=\"critical\"} 1",
        "herald_requests_rejected_total{type=\"not-found\"}",
        // One node with the SMS workers: what it accepted and could send
        // at once went straight to them.
        "herald_deliveries_handed_off_total{channel=\"sms\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics");
    }
    let (st, v) = s.get("/no/such/route").await;
    assert_eq!(st, 404);
    assert_eq!(v["type"], "urn:herald:problem:not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_bodies_never_cause_a_server_error() {
    use rand::{Rng, SeedableRng};
    let s = TestServer::start().await;
    let valid = serde_json::to_vec(&json!({"priority": "critical", "category": "2fa",
        "channels": ["sms", "email", "push", "webhook"],
        "recipient": {"id": "u1", "email": "a@example.com", "phone": "+14155550100",
            "push_tokens": [{"platform": "ios", "token": "t1"}], "webhook_url": format!("{}/hooks/x", s.sim_url)},
        "content": {"subject": "Код", "text": "🔐 123456"}, "ttl_seconds": 60, "metadata": {"k": [1, {"n": null}]}}))
    .expect("json");
    let nasty: [&[u8]; 8] = [
        b"\"",
        b"{",
        b"}",
        b"\\u0000",
        "\u{202e}".as_bytes(),
        "🔥".as_bytes(),
        b"\xff",
        b"1e999999",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let mut body = valid.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..body.len());
            match rng.gen_range(0..4) {
                0 => body.truncate(at),
                1 => body[at] = rng.gen(),
                2 => {
                    let n = nasty[rng.gen_range(0..nasty.len())];
                    body.splice(at..at, n.iter().copied());
                }
                _ => {
                    body.remove(at);
                }
            }
            if body.is_empty() {
                break;
            }
        }
        let (st, _, v) = post_raw(&s, body, "application/json").await;
        assert!(st < 500, "a mutated body got {st}: {v}");
        if st != 202 {
            assert!(
                v["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:herald:problem:")),
                "{v}"
            );
        }
        *statuses.entry(st).or_insert(0) += 1;
    }
    assert!(
        statuses.len() >= 2,
        "mutations hit more than one path: {statuses:?}"
    );
    let ready = s.get_raw("/readyz").await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn every_response_carries_a_correlation_id_and_errors_stay_problems() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .get(format!("{}/healthz", s.base))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-me-123",
        "the client's id is echoed"
    );
    let resp = s.get_raw("/healthz").await;
    let generated = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "one is made when absent: {generated}"
    );

    // (DELETE cancels by idempotency key now; PUT is still no method here.)
    let resp = s
        .http
        .put(format!("{}/v1/notifications", s.base))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("sent");
    let (st, h, v) = decode(resp).await;
    assert_eq!(st, 405);
    assert_problem(&h, &v, 405, "method-not-allowed");
}

#[tokio::test]
async fn a_request_past_the_timeout_gets_a_problem() {
    let s = TestServer::start_with(|c| c.server.request_timeout_ms = 1).await;
    let items: Vec<Value> = (0..1000).map(|i| sms(&format!("n{i}"), "low")).collect();
    let (st, h, v) = s
        .post("/v1/notifications/batch", &json!({"notifications": items}))
        .await;
    assert_eq!(st, 503, "{v}");
    assert_problem(&h, &v, 503, "timeout");
}

#[tokio::test]
async fn each_tenant_is_rate_limited_on_its_own() {
    let s = TestServer::start_with(|c| {
        c.server.rate_limit_per_second = 5;
        c.server.rate_limit_burst = 10;
        c.server.max_batch_items = 10;
    })
    .await;
    let other = s.key_for("acme").await;
    let batch: Vec<Value> = (0..10).map(|i| sms(&i.to_string(), "low")).collect();
    let (st, _, _) = s
        .post("/v1/notifications/batch", &json!({"notifications": batch}))
        .await;
    assert_eq!(st, 200, "a full burst is allowed");
    let (st, h, v) = s
        .post("/v1/notifications", &sms("one more", "critical"))
        .await;
    assert_eq!(st, 429, "{v}");
    assert_problem(&h, &v, 429, "rate-limited");
    let wait: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let (st, _, _) = s
        .post_as(&other, "/v1/notifications", &sms("mine", "critical"), None)
        .await;
    assert_eq!(st, 202, "another tenant has its own bucket");
}

/// An SMS the vendors would refuse (over 1,600 characters), or longer than
/// the configured segments, is a 422 naming `content.text` now, not a
/// failed delivery later; the batch endpoint refuses that item alone.
#[tokio::test]
async fn an_sms_too_long_for_the_vendors_or_its_segments_is_refused_at_the_api() {
    let s = TestServer::start_with(|c| {
        c.channels
            .get_mut(&herald_core::Channel::Sms)
            .expect("sms")
            .max_segments = Some(3);
    })
    .await;
    let sms_of = |text: String| {
        json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"},
            "content": {"text": text}})
    };
    // Three GSM-7 segments go; a fourth is refused.
    let (status, _, v) = s.post("/v1/notifications", &sms_of("a".repeat(459))).await;
    assert_eq!(status, 202, "{v}");
    let (status, _, v) = s.post("/v1/notifications", &sms_of("a".repeat(460))).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "content.text", "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("4 in GSM-7")),
        "{v}"
    );
    // One emoji makes it UCS-2: 202 characters are then four segments.
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &sms_of(format!("{}🔐", "a".repeat(200))),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("UCS-2")),
        "{v}"
    );
    // In a batch, only the long one is refused.
    let (status, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": [sms_of("short".into()), sms_of("b".repeat(500))]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    assert_ne!(v["results"][1]["status"], "accepted", "{v}");
    assert_eq!(
        v["results"][1]["error"]["errors"][0]["field"], "content.text",
        "{v}"
    );

    // Without a cap, up to what the vendors take.
    let s = TestServer::start().await;
    let (status, _, v) = s
        .post("/v1/notifications", &sms_of("字".repeat(1_600)))
        .await;
    assert_eq!(status, 202, "{v}");
    let (status, _, v) = s
        .post("/v1/notifications", &sms_of("字".repeat(1_601)))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "content.text", "{v}");
}

/// A sandbox says so on every response (errors too), and `/readyz` and
/// `/v1/providers` name its simulator.
#[tokio::test]
async fn a_sandbox_says_so_everywhere_it_answers() {
    let s = TestServer::start().await;
    for (resp, status) in [
        (s.get_raw("/healthz").await, 200),
        (s.get_raw("/v1/notifications/nope").await, 401),
        (s.get_raw("/no-such-route").await, 404),
    ] {
        assert_eq!(resp.status(), status);
        assert!(
            resp.headers().contains_key("herald-sandbox"),
            "{status}: {:?}",
            resp.headers()
        );
    }
    let (_, _, ready) = decode(s.get_raw("/readyz").await).await;
    assert_eq!(ready["simulator"], s.sim_url.as_str(), "{ready}");
    let (_, providers) = s.get("/v1/providers").await;
    assert_eq!(providers["simulator"], s.sim_url.as_str(), "{providers}");

    // A node from a config (here pointed at the same simulator, as at any
    // vendor) does not call itself a sandbox.
    let real = TestServer::start_with(|c| c.sandbox = None).await;
    let resp = real.get_raw("/healthz").await;
    assert!(!resp.headers().contains_key("herald-sandbox"));
    let (_, _, ready) = decode(real.get_raw("/readyz").await).await;
    assert!(ready.get("simulator").is_none(), "{ready}");
}
