//! Recipients: stored per tenant under the tenant's own id, checked as
//! strictly as a notification's addresses, changed by merge patch, erased
//! on request; a notification naming `recipient.id` alone goes to the
//! stored addresses (inline ones win), and what it was accepted with does
//! not change when the profile does.

use reqwest::Method;
use serde_json::{json, Value};

use crate::utils::TestServer;

fn ada() -> Value {
    json!({
        "email": "ada@example.com", "phone": "+14155550100",
        "push_tokens": [{"platform": "android", "token": "tok-ada-1", "app": "com.example.shop"}],
        "chat": "U024BE91L", "locale": "pt-BR", "timezone": "America/Sao_Paulo",
        "data": {"name": "Ada Lovelace 👩‍💻", "plan": "pro"}
    })
}

/// What the simulated vendors received for a notification, by vendor:
/// (vendor, recipient, summary).
fn sent_to(s: &TestServer) -> Vec<(String, String, String)> {
    s.sim
        .entries()
        .into_iter()
        .map(|e| (e.vendor.to_owned(), e.recipient, e.summary))
        .collect()
}

#[tokio::test]
async fn a_recipient_is_stored_read_patched_and_erased() {
    let s = TestServer::start().await;
    let (status, v) = s
        .send(Method::PUT, "/v1/recipients/u-42", Some(&ada()))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["version"], 1);
    let (status, v) = s
        .send(Method::PUT, "/v1/recipients/u-42", Some(&ada()))
        .await;
    assert_eq!(status, 200, "replaced: {v}");
    assert_eq!(v["version"], 2);
    let (status, v) = s.get("/v1/recipients/u-42").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], "u-42");
    assert_eq!(v["data"]["name"], "Ada Lovelace 👩‍💻");
    assert_eq!(v["push_tokens"][0]["app"], "com.example.shop");

    // Another tenant does not see it.
    let other = s.key_for("other-shop").await;
    let (status, _) = s
        .send_as(&other, Method::GET, "/v1/recipients/u-42", None)
        .await;
    assert_eq!(status, 404);

    // A merge patch: a new phone, the locale removed, data merged by key.
    let (status, v) = s
        .send(
            Method::PATCH,
            "/v1/recipients/u-42",
            Some(&json!({"phone": "+351912345678", "locale": null, "data": {"plan": "free", "city": "Lisboa"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["phone"], "+351912345678");
    assert!(v.get("locale").is_none(), "{v}");
    assert_eq!(
        v["data"],
        json!({"name": "Ada Lovelace 👩‍💻", "plan": "free", "city": "Lisboa"})
    );
    assert_eq!(v["email"], "ada@example.com", "untouched");
    assert_eq!(v["version"], 3);
    // A patch that would make it invalid changes nothing.
    let (status, v) = s
        .send(
            Method::PATCH,
            "/v1/recipients/u-42",
            Some(&json!({"timezone": "Mars/Olympus_Mons", "emial": "typo@example.com"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = s
        .send(
            Method::PATCH,
            "/v1/recipients/u-42",
            Some(&json!({"timezone": "Mars/Olympus_Mons"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "timezone", "{v}");
    assert_eq!(s.get("/v1/recipients/u-42").await.1["version"], 3);
    let (status, _) = s
        .send(
            Method::PATCH,
            "/v1/recipients/nobody",
            Some(&json!({"phone": null})),
        )
        .await;
    assert_eq!(status, 404);

    // Erasure says what it removed; afterwards there is nothing.
    let (status, v) = s.send(Method::DELETE, "/v1/recipients/u-42", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"id": "u-42", "erased": {"email": true, "phone": true, "push_tokens": 1,
            "webhook_url": false, "chat": true, "locale": false, "timezone": true, "data_keys": 3,
            "preferences": 0}})
    );
    assert_eq!(s.get("/v1/recipients/u-42").await.0, 404);
    assert_eq!(
        s.send(Method::DELETE, "/v1/recipients/u-42", None).await.0,
        404
    );
}

#[tokio::test]
async fn profiles_and_ids_herald_cannot_use_are_refused() {
    let s = TestServer::start().await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/u-1",
            Some(
                &json!({"email": "nope", "phone": "12", "timezone": "Europe/Atlantis",
                         "locale": "en US", "chat": "#general",
                         "push_tokens": [{"platform": "ios", "token": ""}],
                         "webhook_url": "http://169.254.169.254/latest"}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let mut fields: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "chat",
            "email",
            "locale",
            "phone",
            "push_tokens[0].token",
            "timezone",
            "webhook_url"
        ]
    );
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/u-1",
            Some(&json!({"emial": "a@example.com"})),
        )
        .await;
    assert_eq!(status, 422, "an unknown field: {v}");
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/u-1",
            Some(&json!({"data": {"x": "y".repeat(17_000)}})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "data", "{v}");
    let long = "x".repeat(257);
    for bad in [long.as_str(), "a%0Ab", "%00"] {
        let (status, v) = s
            .send(
                Method::PUT,
                &format!("/v1/recipients/{bad}"),
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {v}");
        assert_eq!(v["errors"][0]["field"], "id", "{v}");
    }
    // Unicode ids are ids like any other.
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/us%C3%A9r-%F0%9F%8E%89",
            Some(&json!({"email": "z@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], "usér-🎉");
}

#[tokio::test]
async fn a_notification_by_recipient_id_goes_to_the_stored_addresses() {
    let s = TestServer::start().await;
    let (status, _) = s
        .send(Method::PUT, "/v1/recipients/u-42", Some(&ada()))
        .await;
    assert_eq!(status, 201);
    // Email from the profile, in the profile's locale, with its data; SMS
    // to the stored phone.
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"recipient": {"id": "u-42"}, "channels": ["email", "sms"], "priority": "high",
                    "template": {"id": "password-reset", "data": {"link": "https://app.example.com/r/1"}}}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let n = s.wait_finished(&id).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    assert_eq!(n["channels"][1]["state"], "sent", "{n}");
    assert_eq!(
        n["recipient"]["email"], "ada@example.com",
        "what was used: {n}"
    );
    let sent = sent_to(&s);
    assert!(
        sent.contains(&(
            "sendgrid".into(),
            "ada@example.com".into(),
            "Redefina sua senha".into()
        )),
        "the profile's address and locale: {sent:?}"
    );
    assert!(
        sent.iter().any(|(v, to, text)| v == "twilio"
            && to == "+14155550100"
            && text.contains("Ada Lovelace")),
        "the profile's phone and data: {sent:?}"
    );

    // Inline addresses win over the stored ones.
    let (_, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"recipient": {"id": "u-42", "email": "ada@work.example"}, "channels": ["email"],
                    "content": {"subject": "Hi", "text": "Inline wins"}}),
        )
        .await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["recipient"]["email"], "ada@work.example", "{n}");

    // Accepted before a change, sent after it: the accepted address stands.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (_, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"recipient": {"id": "u-42"}, "channels": ["email"], "send_at": later,
                    "content": {"subject": "Scheduled", "text": "Accepted before the change"}}),
        )
        .await;
    let scheduled = v["id"].as_str().expect("id").to_owned();
    let (status, _) = s
        .send(
            Method::PATCH,
            "/v1/recipients/u-42",
            Some(&json!({"email": "ada@moved.example"})),
        )
        .await;
    assert_eq!(status, 200);
    let n = s.wait_finished(&scheduled).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    assert!(
        sent_to(&s).contains(&(
            "sendgrid".into(),
            "ada@example.com".into(),
            "Scheduled".into()
        )),
        "sent where it was addressed when accepted"
    );

    // An id nobody stored, with no addresses: refused, saying why.
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"recipient": {"id": "u-404"}, "channels": ["sms"], "content": {"text": "hi"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert!(fields.contains(&"recipient.id"), "{v}");

    // Erased: a notification by id alone is refused again.
    s.send(Method::DELETE, "/v1/recipients/u-42", None).await;
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"recipient": {"id": "u-42"}, "channels": ["email"],
                    "content": {"subject": "Hi", "text": "Gone"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");

    // The batch endpoint resolves each item.
    s.send(
        Method::PUT,
        "/v1/recipients/u-1",
        Some(&json!({"phone": "+14155550111"})),
    )
    .await;
    s.send(
        Method::PUT,
        "/v1/recipients/u-2",
        Some(&json!({"phone": "+14155550122"})),
    )
    .await;
    let (status, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": [
                {"recipient": {"id": "u-1"}, "channels": ["sms"], "content": {"text": "one"}},
                {"recipient": {"id": "u-2"}, "channels": ["sms"], "content": {"text": "two"}},
                {"recipient": {"id": "u-3"}, "channels": ["sms"], "content": {"text": "three"}}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], "accepted", "{v}");
    assert_eq!(results[1]["status"], "accepted", "{v}");
    assert_ne!(results[2]["status"], "accepted", "{v}");
    assert!(
        results[2]["error"]["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["field"] == "recipient.id")),
        "{v}"
    );
}

/// `herald recipients import`: JSON lines and CSV, streamed into the
/// store; good rows go in, bad ones are reported by line and the exit
/// status says some were refused; a second import replaces.
#[tokio::test]
async fn recipients_are_imported_from_json_lines_and_csv() {
    use tokio::process::Command;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = {
        let mut c = herald::config::Config::load(None).expect("defaults");
        c.store.data_dir = dir.path().join("data");
        c
    };
    let store = herald::app::open_store(&cfg).await.expect("store");
    let tenant = store
        .add_api_key("acme", b"k", "test", herald_core::store::Scopes::ALL)
        .await
        .expect("tenant");
    drop(store);
    let run = |file: std::path::PathBuf| {
        let data = dir.path().join("data");
        async move {
            let out = Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["recipients", "import", "--tenant", "acme", "--quiet"])
                .arg(&file)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .await
                .expect("herald recipients import runs");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let jsonl = dir.path().join("people.jsonl");
    let mut lines: Vec<String> = (0..2_500)
        .map(|i| {
            json!({"id": format!("u{i}"), "email": format!("u{i}@example.com"),
                   "locale": "pt-BR", "data": {"name": format!("Zoë {i}")}})
            .to_string()
        })
        .collect();
    lines.insert(10, json!({"id": "bad", "phone": "12"}).to_string());
    std::fs::write(&jsonl, lines.join("\n")).expect("write");
    let (code, out, err) = run(jsonl).await;
    assert_eq!(code, Some(2), "some lines were refused: {out}{err}");
    assert!(out.contains("imported 2500 recipients"), "{out}");
    assert!(err.contains("line 11: phone"), "{err}");

    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "id,email,push_token,push_platform,timezone,data.name\n\
         u7,seven@example.com,tok-7,android,Asia/Kolkata,\"Sete, o sétimo\"\n",
    )
    .expect("write");
    let (code, out, err) = run(csv).await;
    assert_eq!(code, Some(0), "{out}{err}");

    let store = herald::app::open_store(&cfg).await.expect("store");
    let ids: Vec<String> = ["u0", "u7", "u2499", "bad"].map(String::from).to_vec();
    let mut got = store.recipients(&tenant, &ids).await.expect("read");
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].profile.data["name"], "Zoë 0");
    let seven = got.iter().find(|r| r.id == "u7").expect("u7");
    assert_eq!(seven.profile.email.as_deref(), Some("seven@example.com"));
    assert_eq!(
        seven.profile.locale, None,
        "the CSV row replaced the JSON one"
    );
    assert_eq!(seven.profile.push_tokens.len(), 1);
    assert_eq!(seven.version, 2);
}

/// Preferences: a recipient's per category and channel over the tenant's
/// defaults; required categories cannot be opted out of; an opted-out
/// delivery is accepted and ends `suppressed` without a vendor call.
#[tokio::test]
async fn preferences_suppress_what_the_recipient_opted_out_of() {
    let s = TestServer::start().await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/preferences",
            Some(&json!({"categories": {"marketing": {"sms": false}}, "required": ["security"]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    s.send(
        Method::PUT,
        "/v1/recipients/u-1",
        Some(&json!({"email": "one@example.com", "phone": "+14155550101"})),
    )
    .await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/u-1/preferences",
            Some(&json!({"categories": {"marketing": {"email": false}, "digest": {"sms": true}}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/u-1/preferences",
            Some(&json!({"categories": {"security": {"sms": false}}})),
        )
        .await;
    assert_eq!(status, 422, "a required category: {v}");
    assert_eq!(v["errors"][0]["field"], "categories.security", "{v}");
    let (status, _) = s
        .send(
            Method::PUT,
            "/v1/recipients/nobody/preferences",
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, v) = s.get("/v1/recipients/u-1/preferences").await;
    assert_eq!(v["categories"]["marketing"]["email"], false, "{v}");

    let send = |category: &str| {
        json!({"recipient": {"id": "u-1"}, "channels": ["email", "sms"], "category": category,
               "content": {"subject": "Hello", "text": format!("A {category} message")}})
    };
    // Marketing: email opted out by the recipient, SMS off by the tenant's
    // default. Accepted all the same; nothing goes out.
    let (status, _, v) = s.post("/v1/notifications", &send("marketing")).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["status"], "completed", "{n}");
    for ch in n["channels"].as_array().expect("channels") {
        assert_eq!(ch["state"], "suppressed", "{n}");
        assert!(
            ch["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("preference:")),
            "{n}"
        );
    }
    // Security is required: both go. Digest: both go (opted in to SMS).
    for category in ["security", "digest"] {
        let (_, _, v) = s.post("/v1/notifications", &send(category)).await;
        let n = s.wait_finished(v["id"].as_str().expect("id")).await;
        assert!(
            n["channels"]
                .as_array()
                .expect("channels")
                .iter()
                .all(|c| c["state"] == "sent"),
            "{category}: {n}"
        );
    }
    let texts: Vec<String> = s.sim.entries().into_iter().map(|e| e.summary).collect();
    assert!(
        !texts.iter().any(|t| t.contains("marketing")),
        "no marketing went out: {texts:?}"
    );
    // The recipient opts in to marketing texts: the default no longer holds.
    s.send(
        Method::PUT,
        "/v1/recipients/u-1/preferences",
        Some(&json!({"categories": {"marketing": {"email": false, "sms": true}}})),
    )
    .await;
    let (_, _, v) = s.post("/v1/notifications", &send("marketing")).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    let states: Vec<&str> = n["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["suppressed", "sent"],
        "email still out, SMS in: {n}"
    );
    // Erasure counts the preferences too.
    let (_, v) = s.send(Method::DELETE, "/v1/recipients/u-1", None).await;
    assert_eq!(v["erased"]["preferences"], 1, "{v}");
}

/// A push token the vendor reports dead is taken off the recipient the
/// notification named, so the next notification by id skips it.
#[tokio::test]
async fn a_dead_push_token_is_taken_off_its_recipient() {
    let s = TestServer::start().await;
    s.send(
        Method::PUT,
        "/v1/recipients/u-9",
        Some(&json!({"push_tokens": [
            {"platform": "android", "token": "invalid-old-phone"},
            {"platform": "android", "token": "live-new-phone", "app": "com.example"}
        ]})),
    )
    .await;
    let push = json!({"recipient": {"id": "u-9"}, "channels": ["push"],
                      "content": {"subject": "Shipped", "text": "Your order shipped"}});
    let (status, _, v) = s.post("/v1/notifications", &push).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    let states: Vec<&str> = n["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert_eq!(states, ["failed", "sent"], "{n}");
    let (_, r) = s.get("/v1/recipients/u-9").await;
    assert_eq!(
        r["push_tokens"],
        json!([{"platform": "android", "token": "live-new-phone", "app": "com.example"}]),
        "{r}"
    );
    let (_, _, v) = s.post("/v1/notifications", &push).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"].as_array().map(Vec::len), Some(1), "{n}");
}

/// Quiet hours: a normal-lane notification to a recipient inside them
/// waits for their end; a high one goes at once; one whose TTL ends first
/// is expired at once, saying why.
#[tokio::test]
async fn quiet_hours_hold_the_lower_lanes_and_respect_the_ttl() {
    let s = TestServer::start().await;
    let now = chrono::Utc::now();
    let hhmm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/recipients/night-owl",
            Some(&json!({"phone": "+14155550199", "timezone": "UTC",
                "quiet_hours": {"start": hhmm(now - chrono::Duration::hours(1)),
                                "end": hhmm(now + chrono::Duration::hours(2))}})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let sms = |priority: &str, ttl: u64| {
        json!({"recipient": {"id": "night-owl"}, "channels": ["sms"], "priority": priority,
               "ttl_seconds": ttl, "content": {"text": format!("A {priority} text")}})
    };
    let (_, _, v) = s.post("/v1/notifications", &sms("normal", 86_400)).await;
    let held = v["id"].as_str().expect("id").to_owned();
    let (_, _, v) = s.post("/v1/notifications", &sms("high", 86_400)).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "high is never held: {n}");
    let (_, _, v) = s.post("/v1/notifications", &sms("low", 600)).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "expired", "{n}");
    assert!(
        n["channels"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quiet hours")),
        "{n}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let (_, n) = s.get(&format!("/v1/notifications/{held}")).await;
    assert_eq!(
        n["channels"][0]["state"], "queued",
        "held for the hours: {n}"
    );
    let texts: Vec<String> = s.sim.entries().into_iter().map(|e| e.summary).collect();
    assert_eq!(texts, ["A high text"], "only the high one went out");
    let (status, v) = s
        .send(
            Method::PATCH,
            "/v1/recipients/night-owl",
            Some(&json!({"quiet_hours": {"start": "25:00", "end": "08:00"}})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "quiet_hours", "{v}");
}

/// A tenant's frequency cap: past it, a recipient's notifications of the
/// category are accepted and suppressed (`frequency_cap`), across
/// channels; other recipients and categories are not held by it.
#[tokio::test]
async fn a_frequency_cap_suppresses_past_its_count() {
    let s = TestServer::start().await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/preferences",
            Some(&json!({"caps": {"marketing": {"max": 2, "per_seconds": 86400}}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/preferences",
            Some(&json!({"caps": {"marketing": {"max": 0, "per_seconds": 60}}})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    for id in ["u-a", "u-b"] {
        s.send(
            Method::PUT,
            &format!("/v1/recipients/{id}"),
            Some(&json!({"email": format!("{id}@example.com"), "phone": "+14155550150"})),
        )
        .await;
    }
    let send = |id: &str, category: &str| {
        json!({"recipient": {"id": id}, "channels": ["email", "sms"], "category": category,
               "content": {"subject": "Sale", "text": "20% off"}})
    };
    let mut states = Vec::new();
    for _ in 0..4 {
        let (status, _, v) = s.post("/v1/notifications", &send("u-a", "marketing")).await;
        assert_eq!(status, 202, "{v}");
        let n = s.wait_finished(v["id"].as_str().expect("id")).await;
        states.push(
            n["channels"][0]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if n["channels"][0]["state"] == "suppressed" {
            assert!(
                n["channels"][1]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("frequency_cap")),
                "every channel: {n}"
            );
        }
    }
    assert_eq!(states, ["sent", "sent", "suppressed", "suppressed"]);
    for (id, category) in [("u-b", "marketing"), ("u-a", "digest")] {
        let (_, _, v) = s.post("/v1/notifications", &send(id, category)).await;
        let n = s.wait_finished(v["id"].as_str().expect("id")).await;
        assert_eq!(n["channels"][0]["state"], "sent", "{id} {category}: {n}");
    }
}
