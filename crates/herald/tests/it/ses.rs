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
