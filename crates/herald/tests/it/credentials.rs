//! Vendor credentials that renew: FCM through a Google service account
//! (a signed JWT exchanged for an access token at the token endpoint,
//! which the simulator plays and checks), and what Herald does when the
//! vendor refuses the account.

use std::time::Duration;

use herald::config::Config;
use herald_providers::ProviderConfig;
use serde_json::{json, Value};

use crate::utils::TestServer;

const KEY_FILE: &str = include_str!("../fixtures/fcm-service-account.json");
const PUBLIC_KEY: &str = include_str!("../fixtures/fcm-service-account.pub.pem");
const ACCOUNT: &str = "herald-test@herald-test.iam.gserviceaccount.com";

/// The FCM account signs in with the fixture's service account, its
/// `token_uri` pointed at the simulator's token endpoint, as a user's file
/// points at Google's.
fn with_service_account(c: &mut Config) {
    let fcm = c.providers.get_mut("fcm").expect("fcm");
    fcm.circuit_open_ms = Some(500);
    let ProviderConfig::Fcm(f) = &mut fcm.account else {
        panic!("fcm is an fcm account");
    };
    let mut file: Value = serde_json::from_str(KEY_FILE).expect("key file");
    file["token_uri"] = json!(format!("{}/token", f.base_url));
    f.access_token = None;
    f.project_id = String::new(); // the service account's
    f.service_account_json = Some(herald_core::secret::Secret::new(file.to_string()));
}

fn push(i: usize) -> Value {
    json!({"channels": ["push"],
        "recipient": {"push_tokens": [{"platform": "android", "token": format!("device-{i}")}]},
        "content": {"subject": "Your order", "text": format!("update {i}")}})
}

/// Push keeps going past its access token's life: the token is renewed
/// before it expires (the simulated FCM refuses an expired one), once per
/// renewal for every worker, not once per message.
#[tokio::test]
async fn push_with_a_service_account_renews_its_token_before_it_expires() {
    let s = TestServer::start_with(with_service_account).await;
    // Tokens last 2 s here (Google's: an hour).
    s.sim
        .trust_service_account(ACCOUNT, PUBLIC_KEY, 2)
        .expect("public key");
    const PUSHES: usize = 60;
    for i in 0..PUSHES {
        let (status, _, v) = s.post("/v1/notifications", &push(i)).await;
        assert_eq!(status, 202, "{v}");
        // Six seconds in all: three tokens' lives.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.wait_delivered(PUSHES as u64, Duration::from_secs(15))
        .await;
    let fcm = s.sim.stats()["fcm"];
    assert_eq!(fcm.unique, PUSHES as u64);
    assert_eq!(fcm.rejected, 0, "no call went out with an expired token");
    let issued = s.sim.tokens_issued();
    assert!(
        (3..=12).contains(&issued),
        "a token per renewal, not per message: {issued} for {PUSHES} pushes"
    );
}

/// A service account the token endpoint refuses (its key unknown there:
/// `invalid_grant`) is the account's failure: push waits and shows why on
/// `/v1/providers`; once the account is trusted, it all goes out.
#[tokio::test]
async fn a_refused_service_account_holds_push_until_the_grant_works() {
    let s = TestServer::start_with(with_service_account).await;
    s.sim
        .trust_service_account(
            "someone-else@example.iam.gserviceaccount.com",
            PUBLIC_KEY,
            3600,
        )
        .expect("public key");
    for i in 0..3 {
        let (status, _, v) = s.post("/v1/notifications", &push(i)).await;
        assert_eq!(status, 202, "{v}");
    }
    let providers = || async {
        let (_, v) = s.get("/v1/providers").await;
        v["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "fcm").cloned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut fcm = providers().await;
    while fcm["credential_refused"].is_null() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fcm = providers().await;
    }
    let why = fcm["credential_refused"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("invalid_grant"), "{fcm}");
    assert_eq!(s.sim.stats().get("fcm").map_or(0, |f| f.received), 0);
    let (_, dead) = s.get("/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"], json!([]));

    s.sim
        .trust_service_account(ACCOUNT, PUBLIC_KEY, 3600)
        .expect("public key");
    s.wait_delivered(3, Duration::from_secs(15)).await;
    assert!(providers().await["credential_refused"].is_null());
}

/// The simulated Twilio checks HTTP Basic against the accounts it knows, as
/// Twilio does: a wrong auth token gets Twilio's 401 (code 20003), the
/// account's error, and the SMS waits; once the token is right it goes.
#[tokio::test]
async fn a_wrong_twilio_token_is_refused_as_twilio_refuses_it_and_the_sms_waits() {
    let s = TestServer::start_with(|c| {
        let twilio = c.providers.get_mut("twilio").expect("twilio");
        twilio.circuit_open_ms = Some(300);
        let ProviderConfig::Twilio(t) = &mut twilio.account else {
            panic!("twilio is a twilio account");
        };
        t.auth_token = herald_core::secret::Secret::new("not-the-token");
        c.channels
            .get_mut(&herald_core::Channel::Sms)
            .expect("sms")
            .providers = vec!["twilio".into()];
    })
    .await;
    let body = json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"},
        "content": {"text": "Your code is 123456"}, "ttl_seconds": 600});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    let refused = s.wait_credential_refused("twilio").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("20003")),
        "{refused}"
    );
    assert_eq!(s.sim.stats()["twilio"].unique, 0);
    s.sim.trust_twilio_account("ACsandbox", "not-the-token");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
}

/// An SNS account without static keys takes its credentials from AWS's
/// standard chain (here a named profile in a credentials file, as on a
/// developer's machine), through the AWS crates, and signs with them; a
/// profile the chain cannot find is the account's error, and the SMS waits.
#[tokio::test]
async fn sns_signs_with_credentials_from_the_aws_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        "[herald-test]\naws_access_key_id = AKIACHAINTEST\naws_secret_access_key = chain-secret\n",
    )
    .expect("write");
    let on_chain = |profile: &'static str, file: std::path::PathBuf| {
        move |c: &mut herald::config::Config| {
            let sns = c.providers.get_mut("sns").expect("sns");
            let ProviderConfig::Sns(cfg) = &mut sns.account else {
                panic!("sns is an sns account");
            };
            cfg.access_key_id = String::new();
            cfg.secret_access_key = herald_core::secret::Secret::default();
            cfg.profile = Some(profile.into());
            cfg.shared_credentials_file = Some(file);
            c.channels
                .get_mut(&herald_core::Channel::Sms)
                .expect("sms")
                .providers = vec!["sns".into()];
        }
    };
    let s = TestServer::start_with(on_chain("herald-test", file.clone())).await;
    s.sim.trust_aws_key("AKIACHAINTEST", "chain-secret");
    let body = json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"},
        "content": {"text": "Your code is 123456"}, "ttl_seconds": 600});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    assert_eq!(n["channels"][0]["provider"], "sns", "{n}");

    // A profile the chain does not have: held as the account's error.
    let s = TestServer::start_with(on_chain("nobody", file)).await;
    let (_, _, v) = s.post("/v1/notifications", &body).await;
    let refused = s.wait_credential_refused("sns").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("AWS credentials")),
        "{refused}"
    );
    let (_, n) = s
        .get(&format!(
            "/v1/notifications/{}",
            v["id"].as_str().expect("id")
        ))
        .await;
    assert_ne!(n["channels"][0]["state"], "failed", "waits: {n}");
}
