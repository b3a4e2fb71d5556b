//! The simulator over real HTTP: idempotency, ledger and faults.

use herald_sim::{Fault, Sim};

async fn start(seed: u64) -> (Sim, String) {
    let sim = Sim::new(Some(seed));
    sim.trust_twilio_account("AC1", "token");
    sim.trust_aws_key("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let (addr, _task) = sim
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    (sim, format!("http://{addr}"))
}

async fn twilio_send(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    to: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/2010-04-01/Accounts/AC1/Messages.json"))
        .basic_auth("AC1", Some("token"))
        .header("idempotency-key", key)
        .form(&[("To", to), ("From", "+15005550006"), ("Body", "hello")])
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn a_repeated_key_is_a_duplicate_not_a_second_delivery() {
    let (sim, base) = start(1).await;
    let c = reqwest::Client::new();
    let first = twilio_send(&c, &base, "k-1", "+14155550100").await;
    assert_eq!(first.status(), 201);
    let first_body: serde_json::Value = first.json().await.expect("json");
    let again = twilio_send(&c, &base, "k-1", "+14155550100").await;
    assert_eq!(again.status(), 201);
    let again_body: serde_json::Value = again.json().await.expect("json");
    assert_eq!(
        first_body["sid"], again_body["sid"],
        "the original answer is replayed"
    );
    twilio_send(&c, &base, "k-2", "+14155550100").await;

    let stats = sim.stats()["twilio"];
    assert_eq!((stats.received, stats.unique, stats.duplicates), (3, 2, 1));
    let ledger: serde_json::Value = c
        .get(format!("{base}/_sim/ledger?vendor=twilio"))
        .send()
        .await
        .expect("ledger")
        .json()
        .await
        .expect("json");
    assert_eq!(ledger["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(ledger["entries"][0]["requests"], 2);
}

#[tokio::test]
async fn checks_auth_and_rejects_known_bad_recipients() {
    let (sim, base) = start(2).await;
    let c = reqwest::Client::new();
    let unauth = c
        .post(format!("{base}/v3/mail/send"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(unauth.status(), 401);
    let bad = twilio_send(&c, &base, "k-bad", "+15005550001").await;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["code"], 21211);
    assert_eq!(sim.stats()["twilio"].unique, 0);
}

#[tokio::test]
async fn injected_faults_and_their_removal() {
    let (sim, base) = start(3).await;
    let c = reqwest::Client::new();
    let set = c
        .post(format!("{base}/_sim/faults"))
        .json(&serde_json::json!({"vendor": "twilio", "outage": true}))
        .send()
        .await
        .expect("set");
    assert_eq!(set.status(), 204);
    assert_eq!(
        twilio_send(&c, &base, "k-1", "+14155550100").await.status(),
        503
    );
    sim.set_fault(
        "twilio",
        Fault {
            rate_limit_rate: 1.0,
            retry_after_s: Some(4),
            ..Fault::default()
        },
    )
    .expect("valid");
    let limited = twilio_send(&c, &base, "k-1", "+14155550100").await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "4");
    let refused = c
        .post(format!("{base}/_sim/faults"))
        .json(&serde_json::json!({"vendor": "twilio", "error_rate": 7}))
        .send()
        .await
        .expect("set");
    assert_eq!(refused.status(), 422);
    c.delete(format!("{base}/_sim/faults"))
        .send()
        .await
        .expect("clear");
    assert_eq!(
        twilio_send(&c, &base, "k-1", "+14155550100").await.status(),
        201
    );
    let s = sim.stats()["twilio"];
    assert_eq!((s.faulted, s.unique), (2, 1));
}

#[tokio::test]
async fn sns_wants_a_sigv4_signature_and_answers_in_xml() {
    let (sim, base) = start(7).await;
    let c = reqwest::Client::new();
    let form = "Action=Publish&Version=2010-03-31&PhoneNumber=%2B14155550100&Message=hi";
    let unsigned = c
        .post(format!("{base}/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("sent");
    assert_eq!(unsigned.status(), 403);
    assert!(unsigned
        .text()
        .await
        .expect("body")
        .contains("<Code>InvalidClientTokenId</Code>"));

    // Signed as the AWS SDKs sign (AWS's own signer), with a secret.
    let signed = |phone: &str, secret: &str| {
        let body = form.replace("%2B14155550100", &phone.replace('+', "%2B"));
        let url = format!("{base}/");
        let host = base.trim_start_matches("http://").to_owned();
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", host.as_str()),
        ];
        let identity =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", secret, None, None, "test")
                .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("sns")
            .time(std::time::SystemTime::now())
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            url.clone(),
            headers.into_iter(),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .expect("signable");
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .expect("signed")
            .into_parts();
        let mut req = c
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", format!("key-{phone}"));
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        req.body(body)
    };
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let forged = signed("+14155550100", "not-the-secret")
        .send()
        .await
        .expect("sent");
    assert_eq!(forged.status(), 403);
    assert!(forged
        .text()
        .await
        .expect("body")
        .contains("<Code>SignatureDoesNotMatch</Code>"));
    let ok = signed("+14155550100", secret).send().await.expect("sent");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "text/xml");
    let body = ok.text().await.expect("body");
    assert!(body.contains("<PublishResult><MessageId>sim"), "{body}");
    let bad = signed("+15005550001", secret).send().await.expect("sent");
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .expect("body")
        .contains("<Code>InvalidParameter</Code>"));
    let stats = sim.stats()["sns"];
    assert_eq!((stats.received, stats.unique, stats.rejected), (4, 1, 3));
}
