//! What trying to break the API found, each asserted as a client would see
//! it: the status, that the answer is a problem document naming the field,
//! and that nothing was stored or sent that should not be.

use serde_json::{json, Value};

use crate::utils::{decode, sms, TestServer};

async fn post_bytes(
    s: &TestServer,
    path: &str,
    auth: &str,
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    decode(resp).await
}

fn is_problem(h: &reqwest::header::HeaderMap, v: &Value, status: u16) {
    assert_eq!(h["content-type"], "application/problem+json", "{v}");
    assert_eq!(v["status"], status, "{v}");
}

fn fields(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_second_document_after_the_first_is_refused_not_dropped() {
    let s = TestServer::start().await;
    let auth = format!("Bearer {}", s.key);
    let one = serde_json::to_string(&sms("one", "normal")).expect("json");
    for body in [
        format!("{one} xyz"),
        format!("{one}{one}"),
        format!("{one}\n{one}"),
    ] {
        let (st, h, v) = post_bytes(&s, "/v1/notifications", &auth, body.into_bytes()).await;
        assert_eq!(st, 400, "{v}");
        is_problem(&h, &v, 400);
        assert_eq!(v["type"], "urn:herald:problem:malformed-json");
    }
    let batch = serde_json::to_string(&json!({"notifications": [sms("a", "low")]})).expect("json");
    let (st, h, v) = post_bytes(
        &s,
        "/v1/notifications/batch",
        &auth,
        format!("{batch}{batch}").into_bytes(),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    is_problem(&h, &v, 400);
    assert_eq!(s.delivered(), 0, "nothing from a refused body was sent");
}

#[tokio::test]
async fn wrong_types_are_422_naming_the_field_never_400() {
    let s = TestServer::start().await;
    let auth = format!("Bearer {}", s.key);
    let cases = [
        (json!({"priority": null}), "priority"),
        (json!({"priority": 1}), "priority"),
        (json!({"priority": []}), "priority"),
        (json!({"channels": [1]}), "channels[0]"),
    ];
    for (patch, field) in cases {
        let mut body = sms("x", "normal");
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (st, h, v) = post_bytes(
            &s,
            "/v1/notifications",
            &auth,
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(st, 422, "{body} → {v}");
        is_problem(&h, &v, 422);
        assert_eq!(fields(&v), vec![field], "{v}");
    }
    let push = json!({"channels": ["push"], "content": {"text": "x"},
        "recipient": {"push_tokens": [{"platform": 1, "token": "t"}]}});
    let (st, _, v) = post_bytes(
        &s,
        "/v1/notifications",
        &auth,
        push.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(fields(&v), vec!["recipient.push_tokens[0].platform"]);
}

#[tokio::test]
async fn a_batch_items_idempotency_key_keeps_the_headers_rules() {
    let s = TestServer::start().await;
    let item = |key: Value| {
        let mut n = sms("k", "normal");
        n["idempotency_key"] = key;
        n
    };
    let bad = [
        json!(""),
        json!("has space"),
        json!("clé"),
        json!("k".repeat(300)),
    ];
    let mut items: Vec<Value> = bad.iter().cloned().map(item).collect();
    items.push(item(json!("good-key-1")));
    let (st, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({ "notifications": items }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    for (i, r) in results.iter().take(bad.len()).enumerate() {
        assert_eq!(r["error"]["status"], 422, "{i}: {r}");
        assert_eq!(
            fields(&r["error"]),
            vec![format!("notifications[{i}].idempotency_key")],
            "{r}"
        );
    }
    assert_eq!(results[bad.len()]["status"], "accepted");
}

#[tokio::test]
async fn a_body_that_breaks_a_rule_a_quarter_million_times_gets_a_small_answer() {
    let s = TestServer::start().await;
    let channels = vec!["sms"; 262_000];
    let body = json!({"channels": channels, "recipient": {"phone": "+14155550100"},
        "content": {"text": "x"}});
    let (st, h, v) = post_bytes(
        &s,
        "/v1/notifications",
        &format!("Bearer {}", s.key),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 422);
    is_problem(&h, &v, 422);
    assert!(
        v.to_string().len() < 16 * 1024,
        "{} bytes",
        v.to_string().len()
    );
    // Many different rules broken at once: the first 50 named, all counted.
    let mut n = json!({"channels": ["sms", "email", "push"],
        "recipient": {"phone": "bad", "email": "bad",
            "push_tokens": (0..16).map(|_| json!({"platform": "ios", "token": ""})).collect::<Vec<_>>()},
        "content": {"subject": "a\nb", "text": ""}, "ttl_seconds": 0, "category": "!"});
    n["metadata"] = json!({"from": "x"});
    let (st, _, v) = s.post("/v1/notifications", &n).await;
    assert_eq!(st, 422, "{v}");
    assert!(fields(&v).len() <= 50);
    assert!(fields(&v).len() >= 20, "{v}");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = TestServer::start().await;
    let body = sms("hi", "normal").to_string().into_bytes();
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let (st, _, v) = post_bytes(
            &s,
            "/v1/notifications",
            &format!("{scheme} {}", s.key),
            body.clone(),
        )
        .await;
        assert_eq!(st, 202, "{scheme}: {v}");
    }
    let (st, h, v) = post_bytes(&s, "/v1/notifications", &format!("Basic {}", s.key), body).await;
    assert_eq!(st, 401);
    is_problem(&h, &v, 401);
}

#[tokio::test]
async fn what_a_template_renders_is_validated_at_the_api() {
    let s = TestServer::start().await;
    let reset = |data: Value| {
        json!({"priority": "high", "channels": ["email"],
            "recipient": {"email": "ada@example.com"},
            "template": {"id": "password-reset", "data": data}})
    };
    let newsletter = |data: Value| {
        json!({"priority": "low", "channels": ["email"],
            "recipient": {"email": "ada@example.com"},
            "template": {"id": "newsletter", "data": data}})
    };
    // A header injection through the data is refused, as in content.subject.
    let (st, _, v) = s
        .post(
            "/v1/notifications",
            &newsletter(json!({"title": "Hello\r\nBcc: victim@example.com", "body": "x"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(fields(&v), vec!["template.subject"], "{v}");
    // A body past the limits through the data, too.
    let (st, _, v) = s
        .post(
            "/v1/notifications",
            &newsletter(json!({"title": "Hi", "body": "x".repeat(200 * 1024)})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(fields(&v), vec!["template.text"], "{v}");
    // Markup in the data is accepted, and escaped in the HTML part.
    let (st, _, v) = s
        .post(
            "/v1/notifications",
            &reset(json!({"name": "<img src=x onerror=alert(1)>", "link": "https://e.example/r"})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    s.wait_delivered(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(s.delivered(), 1);
}

#[tokio::test]
async fn push_payloads_fcm_would_refuse_are_refused_at_the_api() {
    let s = TestServer::start().await;
    let push = |metadata: Value| {
        json!({"channels": ["push"], "content": {"subject": "Hi", "text": "x"},
            "recipient": {"push_tokens": [{"platform": "android", "token": "tok"}]},
            "metadata": metadata})
    };
    for (meta, field) in [
        (json!({"from": "me"}), "metadata.from"),
        (json!({"google.c.a.e": "1"}), "metadata.google.c.a.e"),
        (json!({"gcm.n.e": "1"}), "metadata.gcm.n.e"),
        (json!({"message_type": "x"}), "metadata.message_type"),
        (json!({"blob": "x".repeat(4_100)}), "metadata"),
    ] {
        let (st, _, v) = s.post("/v1/notifications", &push(meta.clone())).await;
        assert_eq!(st, 422, "{meta} → {v}");
        assert_eq!(fields(&v), vec![field], "{v}");
    }
    let (st, _, v) = s
        .post("/v1/notifications", &push(json!({"order": "42"})))
        .await;
    assert_eq!(st, 202, "{v}");
}

#[tokio::test]
async fn webhooks_to_addresses_that_embed_inside_ones_are_refused() {
    let s = TestServer::start_with(|c| c.webhooks.allow_loopback = false).await;
    for url in [
        "http://[64:ff9b::7f00:1]:8080/x",
        "http://[64:ff9b::a00:1]/x",
        "http://[2002:c0a8:0101::1]/x",
        "http://[fec0::1]/x",
        "http://0.0.0.0:8080/x",
        "http://224.0.0.1/x",
        "http://240.0.0.1/x",
        "http://198.18.0.1/x",
    ] {
        let body = json!({"channels": ["webhook"], "recipient": {"webhook_url": url},
            "content": {"text": "x"}});
        let (st, _, v) = s.post("/v1/notifications", &body).await;
        assert_eq!(st, 422, "{url}: {v}");
        assert_eq!(fields(&v), vec!["recipient.webhook_url"], "{v}");
    }
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_a_problem_not_plain_text() {
    let s = TestServer::start().await;
    for path in ["/v1/notifications/%ff", "/v1/dead-letters/%ff%fe/replay"] {
        let resp = if path.ends_with("replay") {
            s.http
                .post(format!("{}{path}", s.base))
                .bearer_auth(&s.key)
                .send()
                .await
        } else {
            s.http
                .get(format!("{}{path}", s.base))
                .bearer_auth(&s.key)
                .send()
                .await
        }
        .expect("sent");
        let (st, h, v) = decode(resp).await;
        assert_eq!(st, 404, "{path}: {v}");
        is_problem(&h, &v, 404);
    }
}
