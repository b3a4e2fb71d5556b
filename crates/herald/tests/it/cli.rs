//! The real binary, as a user runs it: `herald serve` (the sandbox, configured
//! by an environment override), SIGTERM, `herald keys create`, and a restart
//! on the same data directory.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::utils::{create_key, decode, email, spawn_serve};

const DEV_KEY: &str = "hrld_cli-test-dev-key";

/// Starts the sandbox `herald serve` on a port the OS picks.
async fn serve(data_dir: &std::path::Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .env("HERALD__SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_DEV_API_KEY", DEV_KEY);
    spawn_serve(cmd).await
}

async fn sigterm(mut child: Child) {
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

#[tokio::test]
async fn the_binary_serves_stops_cleanly_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();

    let (child, base) = serve(dir.path()).await;
    let resp = http
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(DEV_KEY)
        .json(&email("from the binary"))
        .send()
        .await
        .expect("sent");
    let (status, _, v) = decode(resp).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let view_url = format!("{base}/v1/notifications/{id}");
    let mut done = false;
    for _ in 0..200 {
        let v: serde_json::Value = http
            .get(&view_url)
            .bearer_auth(DEV_KEY)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if v["status"] == "completed" {
            assert_eq!(v["channels"][0]["state"], "sent", "{v}");
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "delivered through the sandbox's simulator");
    sigterm(child).await;

    let acme = create_key("acme", &["--data-dir".as_ref(), dir.path().as_os_str()]).await;
    assert!(acme.starts_with("hrld_") && acme.len() > 40, "{acme}");
    let sender = create_key(
        "sandbox",
        &[
            "--scope".as_ref(),
            "send".as_ref(),
            "--data-dir".as_ref(),
            dir.path().as_os_str(),
        ],
    )
    .await;
    let refused = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--tenant", "acme", "--scope", "send,root"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .expect("runs");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("\"root\""), "names the unknown scope: {err}");
    assert!(refused.stdout.is_empty(), "no key printed");

    let (child, base) = serve(dir.path()).await;
    let view_url = format!("{base}/v1/notifications/{id}");
    let (st, _, _) = decode(
        http.get(&view_url)
            .bearer_auth(DEV_KEY)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(st, 200, "the notification survived the restart");
    let (st, _, _) = decode(
        http.get(&view_url)
            .bearer_auth(&acme)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(st, 404, "another tenant cannot see it");
    let (st, _, _) = decode(
        http.get(&view_url)
            .bearer_auth(&sender)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(st, 403, "a key made with --scope send does not read");
    let resp = http
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&acme)
        .json(&json!({"channels": ["sms"], "recipient": {"phone": "+14155550100"}, "content": {"text": "hi"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202, "the new key works");
    sigterm(child).await;
}

#[tokio::test]
async fn a_bad_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("herald.toml");
    std::fs::write(&cfg, "[engine]\nlease_seconds = 1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("engine.lease_seconds"), "{err}");

    // Production config without vendor credentials: refused, naming them.
    std::fs::write(&cfg, "[store]\ndata_dir = \"data\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&cfg)
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers."), "{err}");
}

/// Runs `herald dlq ARGS --data-dir DIR` and returns (success, stdout, stderr).
async fn dlq(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("dlq")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .await
        .expect("herald dlq runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dlq_lists_and_replays_from_the_command_line() {
    use herald_core::store::{AttemptRecord, Claim, NewDelivery, NewNotification, Next};
    let dir = tempfile::tempdir().expect("tempdir");
    // Two dead deliveries (an email and an SMS) of tenant "acme", written
    // through the store the way the engine would.
    let cfg = {
        let mut c = herald::config::Config::load(None).expect("defaults");
        c.store.data_dir = dir.path().to_path_buf();
        c
    };
    let store = herald::app::open_store(&cfg).await.expect("store");
    let acme = store
        .add_api_key("acme", b"k", "test", herald_core::store::Scopes::ALL)
        .await
        .expect("tenant");
    let mut dead = Vec::new();
    for channel in ["email", "sms"] {
        let req: herald_core::NotificationRequest = serde_json::from_value(json!({
            "channels": [channel],
            "recipient": {"email": "ada@example.com", "phone": "+14155550100"},
            "content": {"subject": "s", "text": "t"}
        }))
        .expect("request");
        let ch: herald_core::Channel = channel.parse().expect("channel");
        let delivery = uuid::Uuid::now_v7();
        let now = herald_core::now_ms();
        store
            .create(vec![NewNotification {
                id: uuid::Uuid::now_v7(),
                tenant_id: acme.clone(),
                request: req,
                accepted_at_ms: now,
                due_at_ms: now,
                expires_at_ms: None,
                deliveries: vec![NewDelivery {
                    id: delivery,
                    channel: ch,
                    target: 0,
                    ended: None,
                    held_until_ms: None,
                    leased: None,
                }],
                idempotency: None,
                correlation_id: None,
                traceparent: None,
                cap: None,
            }])
            .await
            .expect("create");
        let c = store
            .claim(Claim::new(
                ch,
                herald_core::Priority::Normal,
                1,
                now,
                60_000,
            ))
            .await
            .expect("claim");
        store
            .record(vec![AttemptRecord {
                delivery_id: c[0].id,
                lease_token: c[0].lease_token,
                attempt: 1,
                calls: vec![],
                error: Some(format!("{channel} vendor kept failing")),
                pin: None,
                ended_at_ms: now,
                next: Next::Dead,
            }])
            .await
            .expect("record");
        dead.push(delivery.to_string());
    }
    drop(store);

    let (ok, out, err) = dlq(dir.path(), &["list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&dead[0]) && out.contains(&dead[1]), "{out}");
    assert!(out.contains("sms vendor kept failing"), "{out}");
    let (ok, out, _) = dlq(dir.path(), &["list", "--channel", "sms", "--json"]).await;
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["id"], dead[1].as_str());
    let (ok, _, err) = dlq(dir.path(), &["list", "--tenant", "nobody"]).await;
    assert!(!ok);
    assert!(err.contains("--tenant"), "{err}");
    let (ok, _, err) = dlq(dir.path(), &["list", "--since", "last tuesday"]).await;
    assert!(!ok);
    assert!(err.contains("--since"), "{err}");

    let (ok, out, err) = dlq(dir.path(), &["replay", &dead[0]]).await;
    assert!(ok, "{err}");
    assert!(out.contains("replayed"), "{out}");
    let (ok, _, err) = dlq(dir.path(), &["replay", &dead[0]]).await;
    assert!(!ok, "a replayed letter is no longer dead");
    assert!(err.contains("not dead"), "{err}");
    let (ok, out, err) = dlq(dir.path(), &["replay", "--all", "--tenant", "acme"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("replayed 1 dead letters"), "{out}");
    let (ok, out, _) = dlq(dir.path(), &["list", "--json"]).await;
    assert!(ok);
    assert!(out.trim().is_empty(), "none left: {out}");
}

/// `keys` and `dlq` with a data directory that holds no store refuse it,
/// naming the path, instead of making a new empty store there (a key made
/// there would be unknown to the running server).
#[tokio::test]
async fn commands_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("herald-dta");
    for args in [
        vec!["keys", "create", "--tenant", "acme"],
        vec!["dlq", "list"],
        vec!["dlq", "replay", "--all"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .arg("--data-dir")
            .arg(&missing)
            .output()
            .await
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(&missing.join("herald.db").display().to_string()),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a key or a list");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // Asked to, `keys create --init` makes the store of a new deployment.
    let key = create_key(
        "acme",
        &[
            "--init".as_ref(),
            "--data-dir".as_ref(),
            missing.as_os_str(),
        ],
    )
    .await;
    assert!(key.starts_with("hrld_"), "{key}");
    assert!(missing.join("herald.db").is_file());
}

/// Logs written to a pipe or file are JSON lines without colour (for a log
/// shipper), and `serve` says it is listening once.
#[tokio::test]
async fn serve_logs_json_lines_off_a_terminal_and_announces_itself_once() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("HERALD_DEV_API_KEY", DEV_KEY)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.starts_with("herald listening on ");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    // What follows right after, too (a second announcement would be here).
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
    })
    .await;
    assert!(listening, "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI escapes in a piped log: {seen:?}"
    );
    let json: Vec<Value> = seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(
        json.iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"].is_string()),
        "no JSON log line: {seen:?}"
    );
    let announcements = seen
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("listening"))
        .count();
    assert_eq!(announcements, 1, "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("SANDBOX") && l.contains("simulator")),
        "a sandbox says so at start-up: {seen:?}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["keys", "create", "--help"])
        .output()
        .await
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    let (_, after) = help
        .rsplit_once("--tenant <TENANT>")
        .expect("--tenant in help");
    assert!(
        after
            .trim_start()
            .starts_with("The tenant the key belongs to"),
        "--tenant has no description: {help}"
    );
}

/// A sandbox (no --config) refuses an address beyond loopback unless asked
/// for by name; asked, it runs there and every response says it is one.
#[tokio::test]
async fn a_sandbox_stays_on_loopback_unless_asked_for_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("HERALD_DEV_API_KEY", DEV_KEY)
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success(), "a sandbox on 0.0.0.0 started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sandbox") && err.contains("loopback"),
        "{err}"
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "--sandbox", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env("HERALD_DEV_API_KEY", DEV_KEY);
    let (child, base) = spawn_serve(cmd).await;
    let resp = reqwest::get(format!("{base}/healthz")).await.expect("get");
    assert!(
        resp.headers()["herald-sandbox"]
            .to_str()
            .expect("ascii")
            .contains("simulated"),
        "{:?}",
        resp.headers()
    );
    // `herald health`, a container's health check without curl.
    let health = |args: Vec<String>| async move {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("health")
            .args(args)
            .output()
            .await
            .expect("runs")
            .status
            .success()
    };
    assert!(health(vec!["--url".into(), base.clone()]).await, "ready");
    assert!(health(vec!["--live".into(), "--url".into(), base.clone()]).await);
    sigterm(child).await;
    assert!(
        !health(vec!["--url".into(), base.clone()]).await,
        "a stopped node is not ready"
    );
}
