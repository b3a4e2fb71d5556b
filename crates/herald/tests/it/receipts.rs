//! Receipts end to end: Twilio status callbacks and SendGrid's signed Event
//! Webhook, signed here as the vendors sign them (HMAC-SHA1 over the URL
//! and sorted form; ECDSA P-256 over timestamp and body), posted to
//! `POST /v1/receipts/{provider}`. Valid ones move deliveries on and list
//! dead addresses; forged, stale and replayed ones change nothing.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Value};

use crate::utils::{decode, TestServer};

/// The sandbox Twilio account's auth token.
const TWILIO_TOKEN: &str = "sandbox";

fn twilio_signature(url: &str, form: &[(&str, &str)]) -> String {
    let mut sorted = form.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).expect("any key");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub async fn post_twilio(
    s: &TestServer,
    delivery: &str,
    form: &[(&str, &str)],
    signature: Option<String>,
) -> (u16, Value) {
    let url = format!("{}/v1/receipts/twilio?delivery={delivery}", s.base);
    let sig = signature.unwrap_or_else(|| twilio_signature(&url, form));
    let resp = s
        .http
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(form)
        .send()
        .await
        .expect("sent");
    let (status, _, v) = decode(resp).await;
    (status, v)
}

/// Sends one notification and waits for it to finish; its first channel's
/// delivery id and the notification's id.
async fn sent(s: &TestServer, body: &Value) -> (String, String) {
    let (status, _, v) = s.post("/v1/notifications", body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let n = s.wait_finished(&id).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    let delivery = n["channels"][0]["delivery_id"]
        .as_str()
        .expect("delivery id")
        .to_owned();
    (delivery, id)
}

async fn channel_of(s: &TestServer, id: &str) -> Value {
    let (status, n) = s.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(status, 200, "{n}");
    n["channels"][0].clone()
}

#[tokio::test]
async fn twilio_status_callbacks_move_deliveries_on_and_forgeries_change_nothing() {
    let s = TestServer::start().await;
    let sms = |to: &str| json!({"channels": ["sms"], "recipient": {"phone": to}, "content": {"text": "Your code is 123456"}});
    let (delivery, id) = sent(&s, &sms("+14155550100")).await;

    // Forged: a wrong signature, none, a signature of another delivery's URL.
    let delivered = [
        ("MessageSid", "SM123"),
        ("MessageStatus", "delivered"),
        ("To", "+14155550100"),
    ];
    let (status, v) = post_twilio(&s, &delivery, &delivered, Some("bm9wZQ==".into())).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["type"], "urn:herald:problem:receipt-unverified");
    let resp = s
        .http
        .post(format!("{}/v1/receipts/twilio?delivery={delivery}", s.base))
        .form(&delivered)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    let elsewhere = twilio_signature(
        &format!(
            "{}/v1/receipts/twilio?delivery={}",
            s.base,
            uuid::Uuid::now_v7()
        ),
        &delivered,
    );
    let (status, _) = post_twilio(&s, &delivery, &delivered, Some(elsewhere)).await;
    assert_eq!(status, 401);
    assert_eq!(
        channel_of(&s, &id).await["state"],
        "sent",
        "nothing changed"
    );

    // Genuine: delivered, with the receipt in the timeline; again: no change.
    let (status, v) = post_twilio(&s, &delivery, &delivered, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"received": 1, "changed": 1, "unknown": 0}));
    let ch = channel_of(&s, &id).await;
    assert_eq!(ch["state"], "delivered", "{ch}");
    assert_eq!(ch["receipts"][0]["kind"], "delivered", "{ch}");
    assert_eq!(ch["receipts"][0]["provider"], "twilio", "{ch}");
    let (_, v) = post_twilio(&s, &delivery, &delivered, None).await;
    assert_eq!(v["changed"], 0, "a repeat changes nothing: {v}");

    // A STOP reported by callback: undelivered, and the number is listed.
    let (delivery, id) = sent(&s, &sms("+14155550199")).await;
    let stopped = [
        ("MessageSid", "SM456"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "21610"),
        ("To", "+14155550199"),
    ];
    let (status, v) = post_twilio(&s, &delivery, &stopped, None).await;
    assert_eq!(status, 200, "{v}");
    // The late "delivered" of the same message changes nothing.
    let (_, v) = post_twilio(&s, &delivery, &delivered, None).await;
    assert_eq!(v["changed"], 0, "{v}");
    let ch = channel_of(&s, &id).await;
    assert_eq!(ch["state"], "undelivered", "{ch}");
    assert!(
        ch["receipts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("21610")),
        "{ch}"
    );
    let (_, v) = s.get("/v1/suppressions?channel=sms").await;
    assert_eq!(v["suppressions"][0]["address"], "+14155550199", "{v}");
    assert_eq!(v["suppressions"][0]["reason"], "unsubscribed", "{v}");
    assert_eq!(v["suppressions"][0]["source"], "twilio", "{v}");
    let n = {
        let (status, _, v) = s.post("/v1/notifications", &sms("+14155550199")).await;
        assert_eq!(status, 202);
        s.wait_finished(v["id"].as_str().expect("id")).await
    };
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");

    // A callback for a delivery Herald does not hold: 200, counted.
    let (status, v) = post_twilio(&s, &uuid::Uuid::now_v7().to_string(), &delivered, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["unknown"], 1, "{v}");
    // Progress reports (sent, queued) change nothing and are not receipts.
    let (_, v) = post_twilio(&s, &delivery, &[("MessageStatus", "sent")], None).await;
    assert_eq!(v["received"], 0, "{v}");
    // An account that is not configured, or takes no receipts.
    let resp = s
        .http
        .post(format!("{}/v1/receipts/nobody", s.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 404);
    let resp = s
        .http
        .post(format!("{}/v1/receipts/fcm", s.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 404);
}

fn sendgrid_key() -> (SigningKey, String) {
    let signing = SigningKey::from_slice(&[11u8; 32]).expect("a valid scalar");
    let der = signing
        .verifying_key()
        .to_public_key_der()
        .expect("encodes");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
    (signing, b64)
}

async fn post_sendgrid(s: &TestServer, key: &SigningKey, ts: i64, body: &str) -> (u16, Value) {
    let ts = ts.to_string();
    let sig: Signature = key.sign([ts.as_bytes(), body.as_bytes()].concat().as_slice());
    let resp = s
        .http
        .post(format!("{}/v1/receipts/sendgrid", s.base))
        .header("content-type", "application/json")
        .header("x-twilio-email-event-webhook-timestamp", &ts)
        .header(
            "x-twilio-email-event-webhook-signature",
            base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("sent");
    let (status, _, v) = decode(resp).await;
    (status, v)
}

#[tokio::test]
async fn sendgrid_events_bounce_and_complain_and_the_next_send_is_suppressed() {
    let (signing, public) = sendgrid_key();
    let s = TestServer::start_with(|c| {
        let sg = c.providers.get_mut("sendgrid").expect("sendgrid");
        let herald_providers::ProviderConfig::Sendgrid(cfg) = &mut sg.account else {
            panic!("a sendgrid account");
        };
        cfg.event_webhook_public_key = Some(public);
    })
    .await;
    let email = |to: &str| {
        json!({"channels": ["email"], "recipient": {"email": to},
               "content": {"subject": "Your receipt", "text": "Thanks"}})
    };
    let (bounced, bounced_id) = sent(&s, &email("gone@example.com")).await;
    let (fine, fine_id) = sent(&s, &email("ok@example.com")).await;
    let now = herald_core::now_ms() / 1000;
    let body = json!([
        {"email": "gone@example.com", "timestamp": now, "event": "processed", "herald_delivery_key": bounced},
        {"email": "gone@example.com", "timestamp": now, "event": "bounce", "type": "bounce",
         "status": "5.1.1", "reason": "550 5.1.1 The email account does not exist", "herald_delivery_key": bounced},
        {"email": "ok@example.com", "timestamp": now, "event": "delivered", "response": "250 2.0.0 OK", "herald_delivery_key": fine},
        {"email": "ok@example.com", "timestamp": now + 60, "event": "spamreport", "herald_delivery_key": fine},
    ])
    .to_string();

    // A stale signature, and one over another body: refused, nothing changes.
    let (status, v) = post_sendgrid(&s, &signing, now - 3_600, &body).await;
    assert_eq!(status, 401, "{v}");
    let other = SigningKey::from_slice(&[12u8; 32]).expect("a valid scalar");
    let (status, _) = post_sendgrid(&s, &other, now, &body).await;
    assert_eq!(status, 401);
    assert_eq!(channel_of(&s, &bounced_id).await["state"], "sent");

    let (status, v) = post_sendgrid(&s, &signing, now, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"received": 3, "changed": 3, "unknown": 0}));
    let ch = channel_of(&s, &bounced_id).await;
    assert_eq!(ch["state"], "bounced", "{ch}");
    assert!(
        ch["receipts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("5.1.1")),
        "{ch}"
    );
    let ch = channel_of(&s, &fine_id).await;
    assert_eq!(
        ch["state"], "complained",
        "delivered, then reported as spam: {ch}"
    );
    assert_eq!(ch["receipts"].as_array().map(Vec::len), Some(2), "{ch}");
    // The same post again (SendGrid retries): nothing new.
    let (_, v) = post_sendgrid(&s, &signing, now, &body).await;
    assert_eq!(v["changed"], 0, "{v}");

    let (_, v) = s.get("/v1/suppressions?channel=email").await;
    let mut listed: Vec<(String, String)> = v["suppressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("gone@example.com".to_owned(), "bounce".to_owned()),
            ("ok@example.com".to_owned(), "complaint".to_owned())
        ]
    );
    let before = s.sim.stats()["sendgrid"].received;
    let (status, _, v) = s
        .post("/v1/notifications", &email("Gone@Example.com"))
        .await;
    assert_eq!(status, 202);
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");
    assert_eq!(s.sim.stats()["sendgrid"].received, before, "no vendor call");

    // Not an array of events (but signed): 400 naming the body.
    let (status, v) = post_sendgrid(&s, &signing, now, r#"{"event": "delivered"}"#).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn an_account_without_a_verification_key_refuses_receipts() {
    let s = TestServer::start().await;
    let (signing, _) = sendgrid_key();
    let now = herald_core::now_ms() / 1000;
    let (status, v) = post_sendgrid(&s, &signing, now, "[]").await;
    assert_eq!(status, 401, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("event_webhook_public_key")),
        "{v}"
    );
}

/// Hostile receipts: oversized, binary, unicode-heavy and half-formed bodies
/// get a problem document, never a 5xx, and change nothing.
#[tokio::test]
async fn hostile_receipts_get_a_clear_answer_and_change_nothing() {
    // A small body limit, so the oversized body is written whole before the
    // answer (a bigger one races the server's close: a broken pipe).
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 64 * 1024).await;
    let sms = json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"},
        "content": {"text": "Your code is 123456"}});
    let (delivery, id) = sent(&s, &sms).await;
    let url = format!("{}/v1/receipts/twilio?delivery={delivery}", s.base);

    // Over the body limit: 413, before anything reads it.
    let big = vec![b'a'; 100 * 1024];
    let resp = s
        .http
        .post(&url)
        .header("x-twilio-signature", "x")
        .body(big)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 413);
    // Binary garbage, and a form of unicode with a made-up signature: 401.
    for body in [
        vec![0u8, 159, 146, 150, 255, 0, 1],
        "MessageStatus=d%C3%A9livr%C3%A9&To=%F0%9F%93%B1&%00=%FF"
            .as_bytes()
            .to_vec(),
    ] {
        let resp = s
            .http
            .post(&url)
            .header("x-twilio-signature", "bm9wZQ==")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("sent");
        let status = resp.status().as_u16();
        let (_, headers, v) = decode(resp).await;
        assert_eq!(status, 401, "{v}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    // Signed, unicode-heavy and with statuses Twilio never sends: taken,
    // nothing changes.
    let odd = [
        ("MessageStatus", "délivré 📱"),
        ("To", "+14155550100"),
        ("ErrorCode", "🙃"),
    ];
    let (status, v) = post_twilio(&s, &delivery, &odd, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["received"], 0, "{v}");
    // A SendGrid body that is not JSON, unsigned: 401 (no key configured).
    let resp = s
        .http
        .post(format!("{}/v1/receipts/sendgrid", s.base))
        .header("content-type", "application/json")
        .body("[{\"event\": \"delivered\", \"email\": \"\u{0}\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    assert_eq!(channel_of(&s, &id).await["state"], "sent");
}
