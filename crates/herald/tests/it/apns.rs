//! iOS push over APNs: HTTP/2, a provider token signed ES256 with a `.p8`
//! key (the simulator checks it with the key's public half), each device
//! token going to the account on the push route that takes it (iOS to
//! APNs, Android to FCM), and a token Apple no longer knows listed.

use herald::config::{Config, ProviderSettings};
use herald_providers::apns::ApnsConfig;
use herald_providers::ProviderConfig;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

use crate::utils::TestServer;

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "ABC123DEFG";

fn key() -> (String, String) {
    let k = p256::ecdsa::SigningKey::from_slice(&[21u8; 32]).expect("a valid scalar");
    let private = k.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let public = k
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (private, public)
}

fn with_apns(c: &mut Config, private_pem: String) {
    let fcm_base = match &c.providers["fcm"].account {
        ProviderConfig::Fcm(f) => f.base_url.clone(),
        _ => panic!("fcm is an fcm account"),
    };
    c.providers.insert(
        "apns".into(),
        ProviderSettings::new(ProviderConfig::Apns(ApnsConfig {
            base_url: fcm_base,
            team_id: TEAM.into(),
            key_id: KEY_ID.into(),
            key_file: None,
            key_pem: Some(herald_core::secret::Secret::new(private_pem)),
            topic: "com.example.shop".into(),
        })),
    );
    c.channels
        .get_mut(&herald_core::Channel::Push)
        .expect("push")
        .providers = vec!["apns".into(), "fcm".into()];
}

#[tokio::test]
async fn ios_tokens_go_to_apns_over_http2_with_a_signed_token_and_android_ones_to_fcm() {
    let (private, public) = key();
    let s = TestServer::start_with(|c| with_apns(c, private)).await;
    s.sim
        .trust_apns_key(TEAM, KEY_ID, &public)
        .expect("a public key");
    let body = json!({"priority": "high", "channels": ["push"],
        "recipient": {"push_tokens": [
            {"platform": "ios", "token": "a0b1c2d3e4f5"},
            {"platform": "android", "token": "fcm-token-1"}]},
        "content": {"subject": "Your order", "text": "shipped 📦"},
        "metadata": {"order": "A-1"}});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    let by_device: Vec<(u64, String, String)> = n["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["device"].as_u64().unwrap_or(99),
                d["state"].as_str().unwrap_or_default().to_owned(),
                d["provider"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        by_device,
        [
            (0, "sent".to_owned(), "apns".to_owned()),
            (1, "sent".to_owned(), "fcm".to_owned())
        ],
        "{n}"
    );
    let entries = s.sim.entries();
    let apns: Vec<_> = entries.iter().filter(|e| e.vendor == "apns").collect();
    assert_eq!(apns.len(), 1, "{entries:?}");
    assert_eq!(apns[0].recipient, "a0b1c2d3e4f5");
    assert_eq!(apns[0].summary, "Your order");

    // A device Apple no longer knows: failed, listed, not tried again.
    let gone = json!({"channels": ["push"],
        "recipient": {"push_tokens": [{"platform": "ios", "token": "gone-old-iphone"}]},
        "content": {"subject": "Sale", "text": "now"}});
    let (_, _, v) = s.post("/v1/notifications", &gone).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "failed", "{n}");
    assert!(
        n["channels"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Unregistered")),
        "{n}"
    );
    let (_, v) = s.get("/v1/suppressions?channel=push").await;
    assert_eq!(v["suppressions"][0]["address"], "gone-old-iphone", "{v}");
    assert_eq!(v["suppressions"][0]["source"], "apns", "{v}");
    let (_, _, v) = s.post("/v1/notifications", &gone).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_the_accounts_error_not_the_messages() {
    let (private, _) = key();
    let other = p256::ecdsa::SigningKey::from_slice(&[22u8; 32]).expect("a valid scalar");
    let other_public = other
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let s = TestServer::start_with(|c| with_apns(c, private)).await;
    s.sim
        .trust_apns_key(TEAM, KEY_ID, &other_public)
        .expect("a public key");
    let body = json!({"channels": ["push"], "ttl_seconds": 600,
        "recipient": {"push_tokens": [{"platform": "ios", "token": "a0b1c2"}]},
        "content": {"subject": "s", "text": "t"}});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let refused = s.wait_credential_refused("apns").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("InvalidProviderToken")),
        "{refused}"
    );
    let (_, n) = s.get(&format!("/v1/notifications/{id}")).await;
    let state = n["channels"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(state, "failed", "the message waits for the key: {n}");
}
