//! Email over SMTP against a real SMTP server the test starts: aiosmtpd
//! (`tests/fixtures/smtp_server.py`), with STARTTLS on a self-signed
//! certificate the test trusts, AUTH, a deferral and a refused mailbox.
//! Needs a Python with aiosmtpd: `HERALD_TEST_PYTHON` names it (CI makes
//! one), else `python3` is tried; without it the tests say so and skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald::config::{Config, ProviderSettings};
use herald_providers::smtp::{SmtpConfig, SmtpTls};
use herald_providers::ProviderConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::utils::TestServer;

/// A Python that has aiosmtpd, or None (with a notice) to skip.
fn python() -> Option<String> {
    let candidate = std::env::var("HERALD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the SMTP tests (no Python with aiosmtpd; set HERALD_TEST_PYTHON)"
        );
    }
    ok.then_some(candidate)
}

struct MailServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl MailServer {
    async fn start(python: &str, args: &[&str]) -> MailServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SMTP server says where it listens")
            .expect("reads")
            .expect("a line");
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected: {line}"));
        MailServer { child, port, dir }
    }

    /// The messages it accepted, raw.
    fn messages(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("the mail dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .map(|p| std::fs::read_to_string(p).expect("a message"))
            .collect();
        out.sort();
        out
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Email goes only through an SMTP account with these settings.
fn over_smtp(c: &mut Config, smtp: SmtpConfig) {
    c.providers.insert(
        "relay".into(),
        ProviderSettings {
            connect_timeout_ms: Some(5_000),
            request_timeout_ms: Some(10_000),
            ..ProviderSettings::new(ProviderConfig::Smtp(smtp))
        },
    );
    c.channels
        .get_mut(&herald_core::Channel::Email)
        .expect("email")
        .providers = vec!["relay".into()];
}

fn smtp(host: &str, port: u16, tls: SmtpTls) -> SmtpConfig {
    SmtpConfig {
        host: host.into(),
        port: Some(port),
        tls,
        username: None,
        password: None,
        from_email: "orders@shop.example".into(),
        from_name: Some("Zoë's Shop".into()),
        ca_file: None,
        pool_size: 2,
        message_id_domain: None,
    }
}

async fn send(s: &TestServer, to: &str, subject: &str) -> Value {
    let body = json!({"channels": ["email"], "recipient": {"email": to},
        "content": {"subject": subject, "text": "Ihre Bestellung ist unterwegs.",
                    "html": "<p>Ihre Bestellung ist <b>unterwegs</b>.</p>"}});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    s.wait_finished(v["id"].as_str().expect("id")).await
}

#[tokio::test]
async fn email_over_starttls_with_auth_arrives_as_a_real_mime_message() {
    let Some(py) = python() else { return };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    let tls_dir = tempfile::tempdir().expect("tempdir");
    let cert_file: PathBuf = tls_dir.path().join("cert.pem");
    let key_file = tls_dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).expect("write");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write");
    let server = MailServer::start(
        &py,
        &[
            "--tls-cert",
            cert_file.to_str().expect("utf-8"),
            "--tls-key",
            key_file.to_str().expect("utf-8"),
            "--auth",
            "herald:s3cret",
        ],
    )
    .await;
    let mut cfg = smtp("localhost", server.port, SmtpTls::Starttls);
    cfg.ca_file = Some(cert_file.clone());
    cfg.username = Some("herald".into());
    cfg.password = Some(herald_core::secret::Secret::new("s3cret"));
    let s = TestServer::start_with(|c| over_smtp(c, cfg)).await;

    let n = send(&s, "Ann@Example.org", "Ihre Bestellung 🚚 ist unterwegs").await;
    let ch = &n["channels"][0];
    assert_eq!(ch["state"], "sent", "{n}");
    assert_eq!(ch["provider"], "relay", "{n}");
    let key = ch["delivery_id"].as_str().expect("id");
    assert_eq!(
        ch["vendor_message_id"],
        format!("<{key}@shop.example>"),
        "the Message-ID is the vendor's id"
    );
    let mail = server.messages();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let m = &mail[0];
    assert!(m.contains("X-Tls: yes"), "over STARTTLS: {m}");
    assert!(m.contains("X-Envelope-From: orders@shop.example"), "{m}");
    assert!(m.contains("X-Envelope-To: Ann@Example.org"), "{m}");
    assert!(
        m.contains(&format!("Message-ID: <{key}@shop.example>")),
        "{m}"
    );
    assert!(m.contains("Date: "), "{m}");
    assert!(
        m.contains("Subject: Ihre Bestellung =?utf-8?b?"),
        "the UTF-8 word is encoded: {m}"
    );
    assert!(
        m.contains("From: =?utf-8?b?"),
        "the sender's UTF-8 name is encoded: {m}"
    );
    assert!(m.contains("multipart/alternative"), "{m}");
    assert!(m.contains("text/plain") && m.contains("text/html"), "{m}");
}

#[tokio::test]
async fn a_deferral_is_retried_and_a_mailbox_that_does_not_exist_is_listed() {
    let Some(py) = python() else { return };
    let server = MailServer::start(&py, &["--defer-first", "1"]).await;
    let cfg = smtp("127.0.0.1", server.port, SmtpTls::None);
    let s = TestServer::start_with(|c| over_smtp(c, cfg)).await;

    // 451 first, then 250: sent on the second attempt, once.
    let n = send(&s, "bob@example.org", "Your receipt").await;
    let ch = &n["channels"][0];
    assert_eq!(ch["state"], "sent", "{n}");
    let outcomes: Vec<&str> = ch["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["transient", "accepted"], "{ch}");
    assert!(
        ch["attempts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("451")),
        "{ch}"
    );
    assert_eq!(server.messages().len(), 1);

    // 550 5.1.1: failed, and the address goes on the list.
    let n = send(&s, "nobody@refused.example", "Your receipt").await;
    assert_eq!(n["channels"][0]["state"], "failed", "{n}");
    let (_, v) = s.get("/v1/suppressions?channel=email").await;
    assert_eq!(
        v["suppressions"][0]["address"], "nobody@refused.example",
        "{v}"
    );
    assert_eq!(v["suppressions"][0]["reason"], "bounce", "{v}");
    assert_eq!(v["suppressions"][0]["source"], "relay", "{v}");
    let n = send(&s, "nobody@refused.example", "Your receipt").await;
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");
    assert_eq!(server.messages().len(), 1, "nothing more arrived");
}

#[tokio::test]
async fn a_refused_password_holds_mail_for_the_account_and_fails_none() {
    let Some(py) = python() else { return };
    let server = MailServer::start(&py, &["--auth", "herald:right"]).await;
    let mut cfg = smtp("127.0.0.1", server.port, SmtpTls::None);
    cfg.username = Some("herald".into());
    cfg.password = Some(herald_core::secret::Secret::new("wrong"));
    let s = TestServer::start_with(|c| over_smtp(c, cfg)).await;
    let body = json!({"channels": ["email"], "recipient": {"email": "cy@example.org"},
        "content": {"subject": "s", "text": "t"}, "ttl_seconds": 600});
    let (status, _, v) = s.post("/v1/notifications", &body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    // The account shows the refusal; the message waits, not failed.
    let refused = s.wait_credential_refused("relay").await;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("535")),
        "{refused}"
    );
    let (_, n) = s.get(&format!("/v1/notifications/{id}")).await;
    let state = n["channels"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        state == "retry_scheduled" || state == "sending",
        "waits: {n}"
    );
    assert!(server.messages().is_empty());
}

/// One-click unsubscribe (RFC 8058) end to end: a newsletter to a stored
/// recipient arrives with `List-Unsubscribe` and `List-Unsubscribe-Post`;
/// following the link shows a page and changes nothing; the mailbox
/// provider's POST records the opt-out, so the next newsletter is
/// suppressed; a required category carries no link; a changed token is
/// not taken.
#[tokio::test]
async fn a_newsletter_carries_a_one_click_unsubscribe_that_works() {
    let Some(py) = python() else { return };
    let server = MailServer::start(&py, &[]).await;
    let s = TestServer::start_with(|c| over_smtp(c, smtp("127.0.0.1", server.port, SmtpTls::None)))
        .await;
    let put = |path: &str, body: Value| {
        let (s, path) = (&s, path.to_owned());
        async move { s.send(reqwest::Method::PUT, &path, Some(&body)).await }
    };
    assert_eq!(
        put("/v1/recipients/u-5", json!({"email": "five@example.org"}))
            .await
            .0,
        201
    );
    assert_eq!(
        put("/v1/preferences", json!({"required": ["security"]}))
            .await
            .0,
        200
    );
    let by_id = |category: &str| {
        json!({"recipient": {"id": "u-5"}, "channels": ["email"], "category": category,
               "content": {"subject": format!("Our {category}"), "text": "Hello"}})
    };
    let (_, _, v) = s.post("/v1/notifications", &by_id("newsletter")).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    let mail = server.messages();
    let m = &mail[0];
    let start = m.find("List-Unsubscribe: <").expect("the header") + "List-Unsubscribe: <".len();
    let url = m[start..].split('>').next().expect("closed").to_owned();
    assert!(
        url.starts_with(&format!("{}/v1/unsubscribe/", s.base)),
        "{url}"
    );
    assert!(
        m.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{m}"
    );

    // A person (or a link scanner) following it: a page, nothing changed.
    let page = s.http.get(&url).send().await.expect("sent");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("text");
    assert!(
        html.contains("newsletter") && html.contains("<form method=\"post\""),
        "{html}"
    );
    let (_, prefs) = s.get("/v1/recipients/u-5/preferences").await;
    assert_eq!(prefs["categories"], json!({}), "{prefs}");

    // A changed token is not taken.
    let forged = format!("{}A", url.trim_end_matches(|c: char| c != '.'));
    let resp = s.http.post(&forged).send().await.expect("sent");
    assert_eq!(resp.status(), 404);

    // The mailbox provider's one-click POST (no API key).
    let resp = s
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let (_, prefs) = s.get("/v1/recipients/u-5/preferences").await;
    assert_eq!(prefs["categories"]["newsletter"]["email"], false, "{prefs}");
    // Twice is the same.
    assert_eq!(s.http.post(&url).send().await.expect("sent").status(), 200);

    let (_, _, v) = s.post("/v1/notifications", &by_id("newsletter")).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "suppressed", "{n}");
    // A required category: sent, and without a link.
    let (_, _, v) = s.post("/v1/notifications", &by_id("security")).await;
    let n = s.wait_finished(v["id"].as_str().expect("id")).await;
    assert_eq!(n["channels"][0]["state"], "sent", "{n}");
    let mail = server.messages();
    assert_eq!(mail.len(), 2, "the suppressed newsletter never went out");
    let security = mail
        .iter()
        .find(|m| m.contains("Our security"))
        .expect("sent");
    assert!(!security.contains("List-Unsubscribe"), "{security}");
}
