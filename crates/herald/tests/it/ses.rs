//! Email through Amazon SES (API v2, SigV4 for `ses`) against the
//! simulator's SES: sent, refused for good, and a revoked key held as the
//! account's error.

use herald::config::{Config, ProviderSettings};
use herald_providers::ses::SesConfig;
use herald_providers::ProviderConfig;
use herald_sim::Fault;
use serde_json::json;

use crate::utils::TestServer;

fn over_ses(c: &mut Config) {
    let sim = match &c.providers["sendgrid"].account {
        ProviderConfig::Sendgrid(s) => s.base_url.clone(),
        _ => panic!("a sendgrid account"),
    };
    c.providers.insert(
        "ses".into(),
        ProviderSettings {
            circuit_open_ms: Some(500),
            ..ProviderSettings::new(ProviderConfig::Ses(SesConfig {
                region: "eu-west-1".into(),
                base_url: Some(sim),
                access_key_id: "AKIATEST".into(),
                secret_access_key: herald_core::secret::Secret::new("secret"),
                session_token: None,
                profile: None,
                shared_credentials_file: None,
                from_email: "orders@shop.example".into(),
                from_name: Some("Shop".into()),
                configuration_set: None,
                receipt_topic_arns: vec![],
                receipt_certificate_url_prefixes: vec![],
            }))
        },
    );
    c.channels
        .get_mut(&herald_core::Channel::Email)
        .expect("email")
        .providers = vec!["ses".into()];
}

fn email(to: &str) -> serde_json::Value {
    json!({"channels": ["email"], "recipient": {"email": to}, "ttl_seconds": 600,
           "content": {"subject": "Your receipt", "text": "Thanks", "html": "<p>Thanks</p>"}})
}

#[tokio::test]
async fn email_goes_through_ses_and_its_refusals_are_classified() {
    let s = TestServer::start_with(over_ses).await;
    s.sim.trust_aws_key("AKIATEST", "secret");
    let (status, _, v) = s.post("/v1/notifications", &email("ann@example.org")).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    let ch = &n["channels"][0];
    assert_eq!(ch["state"], "sent", "{n}");
    assert_eq!(ch["provider"], "ses", "{n}");
    assert!(
        ch["vendor_message_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{n}"
    );
    assert_eq!(s.sim.stats()["ses"].unique, 1);

    let (_, _, v) = s
        .post("/v1/notifications", &email("x@invalid.example"))
        .await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "failed", "{n}");
    assert!(
        n["channels"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("MessageRejected")),
        "{n}"
    );

    // A revoked key: the account's, the message waits.
    s.fault(
        "ses",
        Fault {
            credential_revoked: true,
            ..Fault::default()
        },
    );
    let (_, _, v) = s.post("/v1/notifications", &email("bob@example.org")).await;
    let id = v["id"].as_str().expect("id").to_owned();
    s.wait_credential_refused("ses").await;
    s.sim.clear_faults();
    let n = s.wait_finished(&id).await;
    assert_eq!(
        n["channels"][0]["state"], "sent",
        "sent once the key works: {n}"
    );
}

/// The simulator recomputes each SigV4 signature with the key's secret, as
/// AWS does: signed with the wrong secret, SES answers
/// `SignatureDoesNotMatch`, which is the account's error, not the message's.
#[tokio::test]
async fn a_signature_made_with_the_wrong_secret_is_refused_as_aws_refuses_it() {
    let s = TestServer::start_with(over_ses).await;
    s.sim.trust_aws_key("AKIATEST", "not-the-configured-secret");
    let (status, _, v) = s.post("/v1/notifications", &email("cy@example.org")).await;
    assert_eq!(status, 202, "{v}");
    let refused = s.wait_credential_refused("ses").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("SignatureDoesNotMatch")),
        "{refused}"
    );
    assert_eq!(s.sim.stats()["ses"].unique, 0, "nothing was sent");
    // The right secret: the same message goes.
    s.sim.trust_aws_key("AKIATEST", "secret");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
}

/// SES's receipts come through SNS: a local server stands in for SNS's
/// certificate host and its subscription confirmation, and the test signs
/// messages as SNS signs them (RSA over the canonical fields, the key in
/// the certificate served). A bounce moves the delivery and lists the
/// address, so the next send to it is suppressed without a vendor call;
/// forged, foreign-topic and altered messages change nothing; the
/// certificate is fetched once, and with its server gone, a message
/// naming a certificate not yet fetched is answered 503 (SNS retries).
#[tokio::test]
async fn ses_receipts_through_signed_sns_messages() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use herald_providers::ses::events::testing::{notification, signed_message, CERT_PEM};

    const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:herald-ses-events";
    let fetched = Arc::new(AtomicUsize::new(0));
    let confirmed = Arc::new(AtomicUsize::new(0));
    let app = {
        let (fetched, confirmed) = (fetched.clone(), confirmed.clone());
        axum::Router::new()
            .route(
                "/cert.pem",
                axum::routing::get(move || async move {
                    fetched.fetch_add(1, Ordering::SeqCst);
                    CERT_PEM
                }),
            )
            .route(
                "/confirm",
                axum::routing::get(move || async move {
                    confirmed.fetch_add(1, Ordering::SeqCst);
                    "<ConfirmSubscriptionResponse/>"
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let sns = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let prefix = format!("{sns}/");
    let s = TestServer::start_with(move |c| {
        over_ses(c);
        let ProviderConfig::Ses(ses) = &mut c.providers.get_mut("ses").expect("ses").account else {
            panic!("an SES account");
        };
        ses.receipt_topic_arns = vec![TOPIC.into()];
        ses.receipt_certificate_url_prefixes = vec![prefix];
    })
    .await;
    s.sim.trust_aws_key("AKIATEST", "secret");
    let cert_url = format!("{sns}/cert.pem");
    let post = |body: String| {
        let s = &s;
        async move {
            let resp = s
                .http
                .post(format!("{}/v1/receipts/ses", s.base))
                .header("content-type", "text/plain; charset=UTF-8")
                .header("x-amz-sns-message-type", "Notification")
                .body(body)
                .send()
                .await
                .expect("sent");
            let (status, _, v) = crate::utils::decode(resp).await;
            (status, v)
        }
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // The subscription is confirmed by visiting its URL.
    let confirmation = signed_message(
        json!({"Type": "SubscriptionConfirmation", "MessageId": "0f1c", "Token": "2336412f37",
               "TopicArn": TOPIC, "Message": "You have chosen to subscribe to the topic.",
               "SubscribeURL": format!("{sns}/confirm"), "Timestamp": now}),
        &cert_url,
    );
    let (status, v) = post(confirmation).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(confirmed.load(Ordering::SeqCst), 1);

    let (status, _, v) = s
        .post("/v1/notifications", &email("gone@example.org"))
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let n = s.wait_finished(&id).await;
    let delivery = n["channels"][0]["delivery_id"].as_str().expect("delivery");
    let bounce = json!({
        "eventType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "gone@example.org", "action": "failed",
                "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": now, "feedbackId": "0100"},
        "mail": {"timestamp": now, "messageId": n["channels"][0]["vendor_message_id"],
            "destination": ["gone@example.org"], "tags": {"herald_delivery_key": [delivery]}}
    });
    let good = signed_message(notification(TOPIC, bounce.clone(), &now), &cert_url);

    // Forgeries first: nothing changes.
    let altered = good.replace("5.1.1 user unknown", "5.1.1 user UNKNOWN");
    let (status, v) = post(altered).await;
    assert_eq!(status, 401, "{v}");
    let foreign = signed_message(
        notification("arn:aws:sns:eu-west-1:999999999999:not-ours", bounce, &now),
        &cert_url,
    );
    let (status, v) = post(foreign).await;
    assert_eq!(status, 401, "{v}");
    let elsewhere = signed_message(
        notification(TOPIC, json!({}), &now),
        "https://evil.example/cert.pem",
    );
    assert_eq!(post(elsewhere).await.0, 401);
    assert_eq!(
        s.get(&format!("/v1/notifications/{id}")).await.1["channels"][0]["state"],
        "sent"
    );

    let (status, v) = post(good.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"received": 1, "changed": 1, "unknown": 0}));
    let (_, n) = s.get(&format!("/v1/notifications/{id}")).await;
    assert_eq!(n["channels"][0]["state"], "bounced", "{n}");
    // SNS delivers at least once: the same message again changes nothing.
    assert_eq!(post(good).await.1["changed"], 0);
    assert_eq!(fetched.load(Ordering::SeqCst), 1, "the certificate is kept");

    let sent_before = s.sim.stats()["ses"].received;
    let (_, _, v) = s
        .post("/v1/notifications", &email("gone@example.org"))
        .await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");
    assert_eq!(s.sim.stats()["ses"].received, sent_before, "no vendor call");

    // SNS's certificate host gone: a new certificate cannot be fetched,
    // the message is refused for now (SNS retries), nothing changes.
    server.abort();
    let _ = server.await;
    let later = signed_message(
        notification(TOPIC, json!({"eventType": "Send", "mail": {}}), &now),
        &format!("{sns}/rotated.pem"),
    );
    let (status, v) = post(later).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["type"], "urn:herald:problem:vendor-unreachable", "{v}");
}
