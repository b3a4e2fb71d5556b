//! The console in a real browser: headless Chromium (Debian's `chromium`),
//! driven by Playwright (`tests/browser/console.mjs`, its packages pinned in
//! `tests/browser/package-lock.json`, installed by `npm ci` there). The
//! browser signs in with an admin key, finds a notification sent through
//! the API, replays a dead letter, holds a circuit open; every page is also
//! checked at a phone's width, for browser-console errors and with axe-core.
//! This test then checks, through the API, that what the browser did
//! happened: the replayed letter is delivered, the circuit is held.
//! Screenshots go to `HERALD_SCREENSHOTS` (CI keeps them) or a temporary
//! directory. Without Node, the packages or Chromium the test says so and
//! skips, except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_core::store::Scopes;
use herald_sim::Fault;
use serde_json::{json, Value};

use crate::utils::{max_attempts, wait_until, TestServer};

/// The browser test's directory, when it can run here.
fn browser_test() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = [
        (!node).then_some("node"),
        (!dir.join("node_modules/playwright-core").is_dir())
            .then_some("tests/browser/node_modules (npm ci there)"),
        (!Path::new(&chromium).exists()).then_some("chromium (apt install chromium)"),
    ];
    let missing: Vec<&str> = missing.into_iter().flatten().collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!("the console's browser test needs {}", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    None
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let Some(dir) = browser_test() else { return };
    let s = TestServer::start_with(|c| max_attempts(c, 1)).await;
    let admin = s.key_with("sandbox", Scopes::ADMIN).await;

    // A dead letter: an email whose one attempt meets an outage.
    s.fault(
        "sendgrid",
        Fault {
            outage: true,
            ..Fault::default()
        },
    );
    let (st, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"channels": ["email"], "recipient": {"email": "ada@example.com"},
                    "content": {"subject": "replay me", "text": "hello"}}),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let email_id = v["id"].as_str().expect("id").to_owned();
    let dead = s.wait_finished(&email_id).await;
    assert_eq!(dead["channels"][0]["state"], "dead", "{dead}");
    let dead_id = dead["channels"][0]["delivery_id"]
        .as_str()
        .expect("delivery id")
        .to_owned();
    s.sim.clear_faults();

    // A notification to find by its recipient's phone.
    let phone = "+14155550199";
    let (st, _, v) = s
        .post(
            "/v1/notifications",
            &json!({"priority": "critical", "channels": ["sms"], "recipient": {"phone": phone},
                    "content": {"text": "your code is 123456"}}),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let sms_id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(
        s.wait_finished(&sms_id).await["channels"][0]["state"],
        "sent"
    );

    let shots = std::env::var("HERALD_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("herald-console-screenshots"));
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(dir.join("console.mjs"))
            .current_dir(&dir)
            .env("HERALD_URL", &s.base)
            .env("HERALD_KEY", &admin)
            .env("SHOTS", &shots)
            .env("PHONE", phone)
            .env("NOTIFICATION_ID", &sms_id)
            .env("DEAD_ID", &dead_id)
            .env("DEAD_NOTIFICATION_ID", &email_id)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within 3 minutes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no summary ({e}): {stdout}\n{stderr}"));
    assert!(
        out.status.success() && summary["failures"].as_array().is_some_and(Vec::is_empty),
        "the browser found: {:#}\n{stderr}",
        summary["failures"]
    );
    // Sign-in, now, find, notification, dead letters, replayed, the replayed
    // letter delivered, held; and five pages at a phone's width.
    assert_eq!(
        summary["pages"].as_array().map_or(0, Vec::len),
        13,
        "{summary}"
    );
    eprintln!("console screenshots: {}", shots.display());

    // What the browser did, seen through the API.
    let delivered = wait_until(Duration::from_secs(15), || {
        s.sim
            .entries()
            .iter()
            .any(|e| e.recipient == "ada@example.com")
    })
    .await;
    assert!(delivered, "the replayed dead letter reached the vendor");
    let mut letter = Value::Null;
    for _ in 0..100 {
        letter = s.get(&format!("/v1/notifications/{email_id}")).await.1;
        if letter["channels"][0]["state"] == "sent" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letter["channels"][0]["state"], "sent", "{letter}");
    let twilio = s.provider("twilio").await;
    assert_eq!(
        twilio["held"]["reason"], "browser test: vendor incident",
        "{twilio}"
    );
    assert!(
        twilio["held"]["by"]
            .as_str()
            .is_some_and(|b| b.contains("Browser Test")),
        "{twilio}"
    );
}

/// The console at its edges, without a browser: signed out it sends you to
/// sign in; a wrong, unknown or non-admin key is refused on the page; a
/// form without the session's token or from another origin changes
/// nothing; what it shows back is escaped; names in any script survive.
#[tokio::test]
async fn the_console_refuses_what_it_should() {
    let s = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = |p: &str| format!("{}{p}", s.base);

    let r = http.get(url("/console/now")).send().await.expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/sign-in");

    let r = http
        .post(url("/console/sign-in"))
        .json(&json!({"key": s.key}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400, "a JSON body is not the form");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/html"));

    let reader = s.key_with("sandbox", Scopes::READ).await;
    for (key, says) in [
        ("hrld_nope", "No such API key"),
        (reader.as_str(), "admin scope"),
    ] {
        let r = http
            .post(url("/console/sign-in"))
            .form(&[("key", key), ("who", "Ada")])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.expect("body").contains(says));
    }

    let who = "Zoë 😀 <b>";
    let r = http
        .post(url("/console/sign-in"))
        .form(&[("key", s.key.as_str()), ("who", who)])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("pair").to_owned();

    let page = http
        .get(url("/console/find?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"))
        .header("cookie", &session)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("body");
    assert!(!html.contains("<script>alert(1)"), "the query is escaped");
    assert!(
        html.contains("Zoë 😀 &lt;b&gt;"),
        "the name survives, escaped"
    );

    // No token, or another origin: refused, and the circuit stays closed.
    let hold = |csrf: &str, origin: &str| {
        http.post(url("/console/providers/twilio/hold"))
            .header("cookie", &session)
            .header("origin", origin.to_owned())
            .form(&[("csrf", csrf.to_owned()), ("reason", "x".to_owned())])
            .send()
    };
    let same = s.base.clone();
    assert_eq!(hold("", &same).await.expect("post").status(), 403);
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("the page's token")
        .to_owned();
    assert_eq!(
        hold(&token, "https://evil.example")
            .await
            .expect("post")
            .status(),
        403
    );
    assert_eq!(s.provider("twilio").await["circuit"]["state"], "closed");
    assert_eq!(hold(&token, &same).await.expect("post").status(), 303);
    assert_eq!(s.provider("twilio").await["circuit"]["state"], "open");
}
