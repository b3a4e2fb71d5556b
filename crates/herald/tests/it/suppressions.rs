//! Suppression lists end to end: an address listed through the API is not
//! sent to (no vendor call) until it is lifted; addresses a vendor reports
//! dead (an SMS STOP, an unregistered push token, a webhook's 410) are
//! listed by themselves, per tenant; the list's API refuses what it could
//! not mean; the CLI keeps the same list.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::Command;

use crate::utils::{decode, TestServer};

async fn put(s: &TestServer, key: &str, body: &Value) -> (u16, Value) {
    let resp = s
        .http
        .put(format!("{}/v1/suppressions", s.base))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let (status, _, v) = decode(resp).await;
    (status, v)
}

async fn delete(s: &TestServer, key: &str, query: &str) -> (u16, Value) {
    let resp = s
        .http
        .delete(format!("{}/v1/suppressions?{query}", s.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("request sent");
    let (status, _, v) = decode(resp).await;
    (status, v)
}

/// The delivery of `channel` in a finished notification.
fn delivery<'a>(n: &'a Value, channel: &str) -> &'a Value {
    n["channels"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["channel"] == channel))
        .unwrap_or_else(|| panic!("no {channel} delivery in {n}"))
}

async fn send(s: &TestServer, key: &str, body: &Value) -> Value {
    let (status, _, v) = s.post_as(key, "/v1/notifications", body, None).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("an id").to_owned();
    let (status, n) = s.get_as(key, &format!("/v1/notifications/{id}")).await;
    assert_eq!(status, 200, "{n}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, n) = s.get_as(key, &format!("/v1/notifications/{id}")).await;
        if n["status"] == "completed" || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_listed_address_is_not_sent_to_until_it_is_lifted() {
    let s = TestServer::start().await;
    let (status, v) = put(
        &s,
        &s.key,
        &json!({"channel": "email", "address": " Ann@Example.COM ", "reason": "bounce",
                "detail": "550 5.1.1 mailbox unknown"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["address"], "ann@example.com", "kept in its normal form");
    assert_eq!(v["reason"], "bounce");
    assert_eq!(v["source"], "api");
    // Listed again: not new; the entry takes the new reason.
    let (status, v) = put(
        &s,
        &s.key,
        &json!({"channel": "email", "address": "ann@example.com", "reason": "complaint"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reason"], "complaint");

    let both = json!({"channels": ["email", "sms"],
        "recipient": {"email": "ANN@example.com", "phone": "+14155550100"},
        "content": {"subject": "Your order shipped", "text": "It is on its way"}});
    let n = send(&s, &s.key, &both).await;
    let email = delivery(&n, "email");
    assert_eq!(email["state"], "suppressed", "{n}");
    assert!(
        email["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("suppression list") && e.contains("complaint")),
        "{email}"
    );
    assert_eq!(
        email["attempts"].as_array().map(Vec::len),
        Some(0),
        "no vendor call: {email}"
    );
    assert_eq!(
        delivery(&n, "sms")["state"],
        "sent",
        "the other channel goes: {n}"
    );
    let sendgrid = s.sim.stats().get("sendgrid").map_or(0, |st| st.received);
    assert_eq!(sendgrid, 0, "SendGrid never heard of it");

    let (status, v) = s.get("/v1/suppressions?channel=email").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["suppressions"].as_array().map(Vec::len), Some(1), "{v}");

    // Lifted (named as a client might have it): sent again.
    let (status, v) = delete(&s, &s.key, "channel=email&address=Ann%40example.com").await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = delete(&s, &s.key, "channel=email&address=ann%40example.com").await;
    assert_eq!(status, 404, "lifted already: {v}");
    let n = send(&s, &s.key, &both).await;
    assert_eq!(delivery(&n, "email")["state"], "sent", "{n}");
    assert_eq!(s.sim.stats()["sendgrid"].unique, 1);
    let (_, v) = s.get("/v1/suppressions").await;
    assert_eq!(v["suppressions"], json!([]), "{v}");
}

#[tokio::test]
async fn an_address_a_vendor_reports_dead_is_listed_for_that_tenant_and_not_sent_to_again() {
    let s = TestServer::start().await;
    let stop = json!({"channels": ["sms"], "recipient": {"phone": "+15005550004"},
        "content": {"text": "Your code is 123456"}});
    let n = send(&s, &s.key, &stop).await;
    assert_eq!(
        delivery(&n, "sms")["state"],
        "failed",
        "Twilio refused it: {n}"
    );
    let (_, v) = s.get("/v1/suppressions?channel=sms").await;
    let listed = &v["suppressions"][0];
    assert_eq!(listed["address"], "+15005550004", "{v}");
    assert_eq!(listed["reason"], "unsubscribed", "{v}");
    assert_eq!(listed["source"], "twilio", "{v}");
    assert!(
        listed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("21610")),
        "{v}"
    );
    let before = s.sim.stats()["twilio"].received;

    let n = send(&s, &s.key, &stop).await;
    assert_eq!(delivery(&n, "sms")["state"], "suppressed", "{n}");
    assert_eq!(
        s.sim.stats()["twilio"].received,
        before,
        "no second request"
    );

    // Another tenant's list is its own: its first message still goes.
    let other = s.key_for("other").await;
    let n = send(&s, &other, &stop).await;
    assert_eq!(delivery(&n, "sms")["state"], "failed", "{n}");
    assert_eq!(s.sim.stats()["twilio"].received, before + 1);

    // A push token the app lost and a webhook endpoint that is gone.
    let gone = json!({"channels": ["push", "webhook"],
        "recipient": {"push_tokens": [{"platform": "android", "token": "invalid-old-phone"}],
                      "webhook_url": format!("{}/hooks/orders/gone", s.sim_url)},
        "content": {"subject": "Order", "text": "shipped"}});
    let n = send(&s, &s.key, &gone).await;
    assert_eq!(delivery(&n, "push")["state"], "failed", "{n}");
    assert_eq!(delivery(&n, "webhook")["state"], "failed", "{n}");
    let (_, v) = s.get("/v1/suppressions?reason=unregistered").await;
    assert_eq!(v["suppressions"][0]["address"], "invalid-old-phone", "{v}");
    let (_, v) = s.get("/v1/suppressions?channel=webhook").await;
    assert_eq!(v["suppressions"][0]["reason"], "gone", "{v}");
    let calls = |s: &TestServer| {
        let st = s.sim.stats();
        ["fcm", "webhook"]
            .iter()
            .map(|v| st.get(v).map_or(0, |x| x.received))
            .sum::<u64>()
    };
    let before = calls(&s);
    let n = send(&s, &s.key, &gone).await;
    assert_eq!(delivery(&n, "push")["state"], "suppressed", "{n}");
    assert_eq!(delivery(&n, "webhook")["state"], "suppressed", "{n}");
    assert_eq!(calls(&s), before);
}

#[tokio::test]
async fn critical_traffic_may_be_let_through_to_a_listed_address() {
    let s = TestServer::start_with(|c| c.suppression.critical_bypass = true).await;
    let (status, v) = put(
        &s,
        &s.key,
        &json!({"channel": "sms", "address": "+14155550100"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["reason"], "manual");
    let code = |priority: &str| {
        json!({"priority": priority, "channels": ["sms"], "recipient": {"phone": "+14155550100"},
               "content": {"text": "Your code is 424242"}})
    };
    let n = send(&s, &s.key, &code("critical")).await;
    assert_eq!(delivery(&n, "sms")["state"], "sent", "{n}");
    let n = send(&s, &s.key, &code("normal")).await;
    assert_eq!(delivery(&n, "sms")["state"], "suppressed", "{n}");
}

#[tokio::test]
async fn the_list_api_refuses_what_it_could_not_mean_and_pages_what_it_keeps() {
    let s = TestServer::start().await;
    let refused = [
        (
            json!({"channel": "email", "address": "not-an-address"}),
            "address",
        ),
        (
            json!({"channel": "sms", "address": "4155550100"}),
            "address",
        ),
        (
            json!({"channel": "push", "address": "tok\u{0}en"}),
            "address",
        ),
        (
            json!({"channel": "webhook", "address": "ftp://example.com/x"}),
            "address",
        ),
        (
            json!({"channel": "fax", "address": "+14155550100"}),
            "channel",
        ),
        (
            json!({"channel": "email", "address": "a@example.com", "reason": "hard"}),
            "reason",
        ),
        (
            json!({"channel": "email", "address": "a@example.com", "color": "red"}),
            "color",
        ),
        (json!({"channel": "email"}), "address"),
        (
            json!({"channel": "email", "address": "a@example.com", "detail": "x".repeat(1_001)}),
            "detail",
        ),
    ];
    for (body, field) in refused {
        let (status, v) = put(&s, &s.key, &body).await;
        assert_eq!(status, 422, "{body}: {v}");
        let named = v["errors"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["field"].as_str().is_some_and(|f| f.contains(field)))
        });
        assert!(named, "{body}: the error names {field}: {v}");
    }
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "address=a%40example.com",
        "reason=hard",
        "channel=fax",
        "cursor=garbage",
        "bogus=1",
        "channel=sms&channel=email",
    ] {
        let (status, v) = s.get(&format!("/v1/suppressions?{query}")).await;
        assert_eq!(status, 422, "{query}: {v}");
    }
    let (status, v) = delete(&s, &s.key, "").await;
    assert_eq!(status, 422, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .map(|es| es.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["channel", "address"], "{v}");
    let resp = s
        .http
        .get(format!("{}/v1/suppressions", s.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);

    // Unicode addresses are kept as themselves (email in lower case).
    let (status, v) = put(
        &s,
        &s.key,
        &json!({"channel": "email", "address": "Ünïcødé@Exämple.de", "detail": "買い物 🛒"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["address"], "ünïcødé@exämple.de");
    assert_eq!(v["detail"], "買い物 🛒");
    for i in 0..6 {
        let (status, v) = put(
            &s,
            &s.key,
            &json!({"channel": "sms", "address": format!("+1415555010{i}")}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    // Seven in all, read three at a time, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let q = match &cursor {
            Some(c) => format!("/v1/suppressions?limit=3&cursor={c}"),
            None => "/v1/suppressions?limit=3".into(),
        };
        let (status, v) = s.get(&q).await;
        assert_eq!(status, 200, "{v}");
        for e in v["suppressions"].as_array().into_iter().flatten() {
            seen.push(e["address"].as_str().unwrap_or_default().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "no entry twice");
    // Another tenant sees none of them.
    let other = s.key_for("other").await;
    let (_, v) = s.get_as(&other, "/v1/suppressions").await;
    assert_eq!(v["suppressions"], json!([]), "{v}");
    let (status, _) = delete(&s, &other, "channel=sms&address=%2B14155550100").await;
    assert_eq!(status, 404, "nor can it lift them");
}

/// Runs `herald suppressions ARGS --data-dir DIR`: (success, stdout, stderr).
async fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("suppressions")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .await
        .expect("herald suppressions runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_keeps_the_same_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = {
        let mut c = herald::config::Config::load(None).expect("defaults");
        c.store.data_dir = dir.path().to_path_buf();
        c
    };
    let store = herald::app::open_store(&cfg).await.expect("store");
    store
        .add_api_key("acme", b"k", "test", herald_core::store::Scopes::ALL)
        .await
        .expect("tenant");
    drop(store);

    let (ok, out, err) = cli(
        dir.path(),
        &[
            "add",
            "--tenant",
            "acme",
            "--channel",
            "email",
            "--address",
            "Bob@Example.com",
            "--reason",
            "bounce",
            "--detail",
            "imported",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("bob@example.com"), "{out}");
    let (ok, out, err) = cli(dir.path(), &["list", "--tenant", "acme", "--json"]).await;
    assert!(ok, "{err}");
    let line: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(line["address"], "bob@example.com");
    assert_eq!(line["reason"], "bounce");
    assert_eq!(line["source"], "cli");
    let (ok, _, err) = cli(
        dir.path(),
        &[
            "add",
            "--tenant",
            "acme",
            "--channel",
            "sms",
            "--address",
            "555",
        ],
    )
    .await;
    assert!(!ok && err.contains("--address"), "{err}");
    let (ok, _, err) = cli(
        dir.path(),
        &[
            "add",
            "--tenant",
            "nobody",
            "--channel",
            "sms",
            "--address",
            "+14155550100",
        ],
    )
    .await;
    assert!(!ok && err.contains("nobody"), "{err}");
    let (ok, out, err) = cli(
        dir.path(),
        &[
            "remove",
            "--tenant",
            "acme",
            "--channel",
            "email",
            "--address",
            "bob@example.com",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(
        dir.path(),
        &[
            "remove",
            "--tenant",
            "acme",
            "--channel",
            "email",
            "--address",
            "bob@example.com",
        ],
    )
    .await;
    assert!(!ok && err.contains("not on"), "{err}");
    let (ok, out, _) = cli(dir.path(), &["list", "--json"]).await;
    assert!(ok && out.trim().is_empty(), "{out}");
}
