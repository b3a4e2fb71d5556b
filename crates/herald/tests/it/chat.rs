//! The chat channel through Slack, against the simulator's Slack: a
//! conversation id goes through `chat.postMessage` with the bot token
//! (checked), an incoming-webhook address to its webhook; an archived
//! conversation and a removed webhook are listed and not posted to again;
//! a revoked token is the account's error (the message waits); addresses
//! and texts Slack would refuse are refused at the API.

use herald_sim::Fault;
use serde_json::{json, Value};

use crate::utils::TestServer;

fn chat(to: &str) -> Value {
    json!({"channels": ["chat"], "priority": "high", "recipient": {"chat": to},
           "content": {"subject": "Deploy <prod> finished", "text": "Build 42 is live :rocket: — déployé"}})
}

async fn finished(s: &TestServer, body: &Value) -> Value {
    let (status, _, v) = s.post("/v1/notifications", body).await;
    assert_eq!(status, 202, "{v}");
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    n["channels"][0].clone()
}

#[tokio::test]
async fn chat_messages_go_to_slack_conversations_and_incoming_webhooks() {
    let s = TestServer::start().await;

    let ch = finished(&s, &chat("C024BE91L")).await;
    assert_eq!(ch["state"], "sent", "{ch}");
    assert_eq!(ch["provider"], "slack", "{ch}");
    assert!(
        ch["vendor_message_id"]
            .as_str()
            .is_some_and(|ts| ts.starts_with("1700000000.")),
        "Slack's ts is kept: {ch}"
    );
    let hook = "https://hooks.slack.com/services/T0001/B0001/AbCdEf123";
    let ch = finished(&s, &chat(hook)).await;
    assert_eq!(ch["state"], "sent", "{ch}");

    let entries = s.sim.entries();
    let slack: Vec<_> = entries.iter().filter(|e| e.vendor == "slack").collect();
    assert_eq!(slack.len(), 2, "{slack:?}");
    assert_eq!(slack[0].recipient, "C024BE91L");
    assert_eq!(
        slack[0].summary, "*Deploy &lt;prod&gt; finished*\nBuild 42 is live :rocket: — déployé",
        "the subject heads the text, escaped as Slack asks"
    );
    assert_eq!(slack[1].recipient, "/services/T0001/B0001/AbCdEf123");

    // An archived conversation and a removed webhook: failed for good,
    // listed, and the next message to them makes no call.
    for dead in [
        "CARCHIVED0",
        "https://hooks.slack.com/services/T0001/B0002/revoked",
    ] {
        let ch = finished(&s, &chat(dead)).await;
        assert_eq!(ch["state"], "failed", "{ch}");
        let before = s.sim.stats()["slack"].received;
        let ch = finished(&s, &chat(dead)).await;
        assert_eq!(ch["state"], "suppressed", "{ch}");
        assert_eq!(s.sim.stats()["slack"].received, before, "no call to Slack");
    }
    let (_, v) = s.get("/v1/suppressions?channel=chat").await;
    assert_eq!(v["suppressions"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["suppressions"][0]["reason"], "gone", "{v}");

    // A conversation that does not exist fails alone; nothing is listed.
    let ch = finished(&s, &chat("CNOTFOUND0")).await;
    assert_eq!(ch["state"], "failed", "{ch}");
    assert!(
        ch["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("channel_not_found")),
        "{ch}"
    );
}

#[tokio::test]
async fn a_revoked_slack_token_holds_messages_and_a_rate_limit_is_waited_out() {
    let s = TestServer::start().await;
    s.fault(
        "slack",
        Fault {
            credential_revoked: true,
            ..Fault::default()
        },
    );
    let (status, _, v) = s.post("/v1/notifications", &chat("C024BE91L")).await;
    assert_eq!(status, 202, "{v}");
    let refused = s.wait_credential_refused("slack").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("token_revoked")),
        "{refused}"
    );
    s.sim.clear_faults();
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(
        n["channels"][0]["state"], "sent",
        "sent once the token works: {n}"
    );

    s.fault(
        "slack",
        Fault {
            rate_limit_rate: 1.0,
            retry_after_s: Some(1),
            ..Fault::default()
        },
    );
    let (_, _, v) = s.post("/v1/notifications", &chat("C024BE91L")).await;
    let id = v["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.sim.clear_faults();
    let n = s.wait_finished(&id).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
}

#[tokio::test]
async fn chat_addresses_and_texts_slack_would_refuse_are_refused_at_the_api() {
    let s = TestServer::start().await;
    for (bad, why) in [
        ("#general", "a channel name, not an id"),
        ("c024be91l", "ids are upper case"),
        (
            "https://hooks.slack.com.evil.example/services/T/B/x",
            "another host",
        ),
        ("http://hooks.slack.com/services/T0/B0/x", "not https"),
        ("https://hooks.slack.com/services/T0/B0", "two parts"),
        ("https://hooks.slack.com/services/T0/B0/x?y=1", "a query"),
        ("C024BE91L\n", "a line break"),
        ("", "empty"),
    ] {
        let (status, _, v) = s.post("/v1/notifications", &chat(bad)).await;
        assert_eq!(status, 422, "{why}: {v}");
        assert_eq!(v["errors"][0]["field"], "recipient.chat", "{why}: {v}");
    }
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"channels": ["chat"], "recipient": {}, "content": {"text": "hi"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "recipient.chat", "{v}");
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"channels": ["chat"], "recipient": {"chat": "C024BE91L"},
                    "content": {"subject": "Twenty characters ok", "text": "a".repeat(39_990)}}),
        )
        .await;
    assert_eq!(
        status, 422,
        "Slack's 40,000 characters, the subject included: {v}"
    );
    assert_eq!(v["errors"][0]["field"], "content.text", "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("40000") && r.contains("40013")),
        "{v}"
    );
    let (status, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"channels": ["chat"], "recipient": {"chat": "C024BE91L"},
                    "content": {"html": "<p>only html</p>"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "content.text", "{v}");
}
