//! The store's behavioural suite. Each check takes `&dyn Store`, so every
//! backend runs the same assertions: SQLite always, PostgreSQL when
//! `HERALD_TEST_POSTGRES_URL` names a database to use (each check gets a
//! schema of its own in it, made afresh).

use std::sync::Arc;

use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::receipt::{ReceiptKind, VendorReceipt};
use herald_core::store::roles::*;
use herald_core::store::{
    AttemptRecord, CallRecord, Claim, ClaimedDelivery, CountUpTo, CreateResult, DeadLetterCursor,
    DeadLetterFilter, IdempotencyRecord, LaneAsk, LaneLag, LaneQueue, LeaseToken, Leased,
    NewDelivery, NewNotification, Next, ReplayOutcome, StoredResponse,
};
use herald_core::store::{ChangeCursor, SuppressionCursor, SuppressionFilter};
use herald_core::store::{CircuitHold, KeyGrant, Scopes};
use herald_core::store::{NotificationView, ReceiptApplied};
use herald_core::suppression::{Suppression, SuppressionReason};
use herald_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

async fn sqlite(dir: &tempfile::TempDir) -> SqliteStore {
    sqlite_with(dir, false).await
}

async fn sqlite_with(dir: &tempfile::TempDir, outbox: bool) -> SqliteStore {
    SqliteStore::open(&SqliteOptions {
        path: dir.path().join("herald.db"),
        max_batch: 256,
        read_connections: 2,
        outbox,
        timeout: std::time::Duration::from_secs(5),
    })
    .await
    .expect("open sqlite")
}

/// The database PostgreSQL checks use, or `None` (and a notice that shows
/// in `cargo test`'s output) to skip them.
fn postgres_url() -> Option<String> {
    static NOTICE: std::sync::Once = std::sync::Once::new();
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        NOTICE.call_once(|| {
            // Straight to stderr: the test harness captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: the PostgreSQL store suite (set HERALD_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
        });
    }
    url
}

/// A check's schema: its name, cut to fit PostgreSQL's 63-byte identifiers.
fn schema(check: &str) -> String {
    format!("hs_{}", &check[..check.len().min(56)])
}

/// A PostgreSQL store in a fresh schema named for the check.
async fn postgres(check: &str) -> Option<PostgresStore> {
    postgres_with(check, false).await
}

async fn postgres_with(check: &str, outbox: bool) -> Option<PostgresStore> {
    let url = postgres_url()?;
    let schema = schema(check);
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    Some(postgres_open(check, outbox).await)
}

/// Another store on a check's schema, as a second node would open it.
async fn postgres_reopen(check: &str) -> PostgresStore {
    postgres_open(check, false).await
}

async fn postgres_open(check: &str, outbox: bool) -> PostgresStore {
    let url = postgres_url().expect("HERALD_TEST_POSTGRES_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    PostgresStore::open(&PostgresOptions {
        url: format!("{url}{sep}options=-c%20search_path%3D{}", schema(check)),
        max_connections: 6,
        writers: 3,
        max_batch: 256,
        outbox,
        timeout: std::time::Duration::from_secs(5),
        gather: std::time::Duration::from_millis(10),
    })
    .await
    .expect("open postgres")
}

fn request(priority: Priority, channels: &[&str]) -> NotificationRequest {
    serde_json::from_value(serde_json::json!({
        "priority": priority,
        "recipient": {"email": "a@example.com", "phone": "+14155550100"},
        "channels": channels,
        "content": {"subject": "s", "text": "t"}
    }))
    .expect("fixture")
}

fn new_notification(tenant: &str, req: NotificationRequest, now: i64) -> NewNotification {
    let deliveries = req
        .destinations()
        .into_iter()
        .map(|d| NewDelivery {
            id: uuid::Uuid::now_v7(),
            channel: d.channel,
            target: d.target,
            ended: None,
            held_until_ms: None,
            leased: None,
        })
        .collect();
    NewNotification {
        id: uuid::Uuid::now_v7(),
        tenant_id: tenant.into(),
        request: req,
        accepted_at_ms: now,
        due_at_ms: now,
        expires_at_ms: None,
        deliveries,
        idempotency: None,
        correlation_id: None,
        traceparent: None,
        cap: None,
    }
}

/// An attempt that made one call to `provider` and moves on to `next`.
fn attempt(d: &ClaimedDelivery, provider: &str, at: i64, next: Next) -> AttemptRecord {
    let (outcome, status, error) = match next {
        Next::Sent { .. } => ("accepted", 202, None),
        _ => ("transient", 503, Some("503 from the vendor".to_owned())),
    };
    AttemptRecord {
        delivery_id: d.id,
        lease_token: d.lease_token,
        attempt: d.attempt,
        calls: vec![CallRecord {
            provider: provider.into(),
            started_at_ms: at,
            latency_ms: 5,
            outcome: outcome.into(),
            status_code: Some(status),
            error: error.clone(),
        }],
        error,
        pin: None,
        ended_at_ms: at + 5,
        next,
    }
}

fn sent(d: &ClaimedDelivery, at: i64) -> AttemptRecord {
    let next = Next::Sent {
        vendor_id: Some("vendor-1".into()),
    };
    attempt(d, "sim", at, next)
}

async fn claims_by_channel_and_lane(store: &dyn Store) {
    let now = 1_000;
    let low = new_notification("t1", request(Priority::Low, &["email", "sms"]), now);
    let crit = new_notification("t1", request(Priority::Critical, &["sms"]), now);
    let r = store
        .create(vec![low.clone(), crit.clone()])
        .await
        .expect("create");
    assert_eq!(r, vec![CreateResult::Created, CreateResult::Created]);

    let none = store
        .claim(Claim::new(Channel::Push, Priority::Low, 10, now, 30_000))
        .await
        .expect("claim");
    assert!(none.is_empty());
    let c = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            10,
            now,
            30_000,
        ))
        .await
        .expect("claim");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].notification_id, crit.id);
    assert_eq!(c[0].attempt, 1);
    assert_eq!(c[0].tenant_id, "t1");
    let payload: NotificationRequest = serde_json::from_str(&c[0].payload).expect("payload");
    assert_eq!(payload, crit.request);

    // Claimed once: not claimable again while the lease holds.
    let again = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            10,
            now + 1,
            30_000,
        ))
        .await
        .expect("claim");
    assert!(again.is_empty());

    store.record(vec![sent(&c[0], now)]).await.expect("record");
    let view = store
        .notification("t1", crit.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(view.deliveries.len(), 1);
    assert_eq!(view.deliveries[0].state, DeliveryState::Sent);
    assert_eq!(view.deliveries[0].attempts.len(), 1);
    assert_eq!(view.deliveries[0].attempts[0].outcome, "accepted");
    assert_eq!(view.deliveries[0].provider.as_deref(), Some("sim"));
    assert_eq!(
        view.deliveries[0].vendor_message_id.as_deref(),
        Some("vendor-1")
    );

    // Another tenant cannot see it.
    assert!(store
        .notification("t2", crit.id)
        .await
        .expect("read")
        .is_none());

    let depths = store.queue_depths().await.expect("depths");
    let pending: u64 = depths.iter().map(|d| d.pending).sum();
    assert_eq!(
        pending, 2,
        "the low email and sms are still pending: {depths:?}"
    );
}

/// Claims of several channels and lanes at once (a node's worker pools
/// each claiming, and a second claim of one lane besides): each gets its
/// own lane's due work under its own lease, none a delivery another got,
/// and every claimed delivery is recorded with its claim's token.
async fn claims_at_once_each_get_their_own_lane(store: &dyn Store) {
    let now = 1_000;
    let mut batch = Vec::new();
    for lane in Priority::ALL {
        for _ in 0..3 {
            batch.push(new_notification(
                "t1",
                request(lane, &["email", "sms"]),
                now,
            ));
        }
    }
    store.create(batch).await.expect("create");
    let mut claims: Vec<(Channel, Priority)> = [Channel::Email, Channel::Sms]
        .into_iter()
        .flat_map(|c| Priority::ALL.map(|p| (c, p)))
        .collect();
    claims.push((Channel::Sms, Priority::Critical));
    let claimed = futures_util::future::join_all(
        claims
            .iter()
            .map(|&(c, p)| store.claim(Claim::new(c, p, 2, now, 30_000))),
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    for (&(channel, lane), got) in claims.iter().zip(claimed) {
        let got = got.expect("claim");
        for d in &got {
            assert_eq!((d.channel, d.priority), (channel, lane));
            assert_eq!(d.attempt, 1);
            assert!(seen.insert(d.id), "{} was claimed twice", d.id);
            records.push(sent(d, now));
        }
    }
    // 3 due in each of 8 lanes, claims of 2: 2 each, and the critical
    // SMS lane's third to its second claim.
    assert_eq!(seen.len(), 17);
    store.record(records).await.expect("record");
    let depths = store.queue_depths().await.expect("depths");
    let pending: u64 = depths.iter().map(|d| d.pending).sum();
    assert_eq!(
        pending,
        24 - 17,
        "the claimed ones were recorded sent: {depths:?}"
    );
}

/// Reads of stored recipients at once, by requests of several tenants
/// (PostgreSQL answers concurrent reads from one query): each gets its own
/// tenant's, and only those it named.
async fn concurrent_recipient_reads_each_get_their_own(store: &dyn Store) {
    use herald_core::recipient::Profile;
    for tenant in ["t1", "t2", "t3"] {
        for n in 0..4 {
            let p: Profile = serde_json::from_value(serde_json::json!({
                "email": format!("{tenant}-{n}@example.com")
            }))
            .expect("a profile");
            store
                .put_recipient(tenant, &format!("u{n}"), p, None, 1_000)
                .await
                .expect("put");
        }
    }
    let asks: Vec<(&str, Vec<String>)> = (0..30)
        .map(|i| {
            let tenant = ["t1", "t2", "t3", "t4"][i % 4];
            let mut ids = vec![
                format!("u{}", i % 4),
                format!("u{}", (i + 1) % 5),
                "nobody".into(),
            ];
            // A request's ids are distinct (the API dedups them).
            ids.sort();
            ids.dedup();
            (tenant, ids)
        })
        .collect();
    let got = futures_util::future::join_all(
        asks.iter()
            .map(|(tenant, ids)| store.recipients(tenant, ids)),
    )
    .await;
    for ((tenant, ids), got) in asks.iter().zip(got) {
        let mut got: Vec<(String, Option<String>)> = got
            .expect("read")
            .into_iter()
            .map(|r| (r.id, r.profile.email))
            .collect();
        got.sort();
        let mut expected: Vec<(String, Option<String>)> = ids
            .iter()
            .filter(|id| *tenant != "t4" && *id != "nobody" && *id != "u4")
            .map(|id| {
                (
                    id.clone(),
                    Some(format!("{tenant}-{}@example.com", &id[1..])),
                )
            })
            .collect();
        expected.sort();
        expected.dedup();
        assert_eq!(got, expected, "{tenant} asked for {ids:?}");
    }
}

async fn future_work_waits(store: &dyn Store) {
    let mut n = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
    n.due_at_ms = 5_000;
    store.create(vec![n]).await.expect("create");
    assert!(store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            10,
            4_999,
            1_000
        ))
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        store
            .claim(Claim::new(
                Channel::Email,
                Priority::Normal,
                10,
                5_000,
                1_000
            ))
            .await
            .expect("claim")
            .len(),
        1
    );
}

async fn expired_lease_is_claimed_again_and_old_holder_cannot_write(store: &dyn Store) {
    let n = new_notification("t1", request(Priority::High, &["email"]), 1_000);
    store.create(vec![n.clone()]).await.expect("create");
    let first = store
        .claim(Claim::new(Channel::Email, Priority::High, 1, 1_000, 100))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    let second = store
        .claim(Claim::new(Channel::Email, Priority::High, 1, 1_200, 100))
        .await
        .expect("claim");
    assert_eq!(second.len(), 1, "lease expired at 1100");
    assert_eq!(second[0].id, first[0].id, "same delivery, same vendor key");
    assert_eq!(second[0].attempt, 2);

    // The first holder finishes late: its result is logged but does not move the row.
    let mut late = sent(&first[0], 1_000);
    late.next = Next::Failed;
    store.record(vec![late]).await.expect("record");
    let v = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(v.deliveries[0].state, DeliveryState::Sending);

    store
        .record(vec![sent(&second[0], 1_200)])
        .await
        .expect("record");
    let v = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(v.deliveries[0].state, DeliveryState::Sent);
}

async fn released_work_is_claimable_at_once(store: &dyn Store) {
    let n = new_notification("t1", request(Priority::Normal, &["sms"]), 1_000);
    store.create(vec![n]).await.expect("create");
    let c = store
        .claim(Claim::new(Channel::Sms, Priority::Normal, 5, 1_000, 60_000))
        .await
        .expect("claim");
    assert_eq!(c.len(), 1);
    store
        .release(vec![(c[0].id, c[0].lease_token)], false)
        .await
        .expect("release");
    let again = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Normal,
            5,
            herald_core::now_ms(),
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1, "a release is not an attempt");
    assert!(
        !again[0].in_doubt,
        "given back before any worker had it: nothing to doubt"
    );
}

/// The Kafka bus's sweep takes a queued delivery only once it has sat a
/// while (new work comes through Kafka), but a run-out lease at once.
async fn a_sweep_leaves_new_work_and_takes_run_out_leases(store: &dyn Store) {
    let fresh = new_notification("t1", request(Priority::High, &["sms"]), 1_000);
    let held = new_notification("t1", request(Priority::High, &["email"]), 1_000);
    store.create(vec![fresh, held]).await.expect("create");
    let leased = store
        .claim(Claim::new(Channel::Email, Priority::High, 5, 2_000, 100))
        .await
        .expect("claim");
    assert_eq!(leased.len(), 1);

    // At 5 s: the SMS delivery, stored at 1 s, has not sat since 0.5 s.
    let early = store
        .claim(Claim {
            channel: Channel::Sms,
            lane: Priority::High,
            limit: 5,
            now_ms: 5_000,
            lease_ms: 60_000,
            settled_before_ms: 500,
        })
        .await
        .expect("sweep");
    assert!(early.is_empty(), "new work is left to Kafka");
    let expired = store
        .claim(Claim {
            channel: Channel::Email,
            lane: Priority::High,
            limit: 5,
            now_ms: 5_000,
            lease_ms: 60_000,
            settled_before_ms: 500,
        })
        .await
        .expect("sweep");
    assert_eq!(expired.len(), 1, "a run-out lease is taken at once");
    assert!(expired[0].in_doubt);
    let settled = store
        .claim(Claim {
            channel: Channel::Sms,
            lane: Priority::High,
            limit: 5,
            now_ms: 5_000,
            lease_ms: 60_000,
            settled_before_ms: 1_000,
        })
        .await
        .expect("sweep");
    assert_eq!(settled.len(), 1, "work that sat a sweep interval is taken");
}

async fn idempotency_keys_are_per_tenant(store: &dyn Store) {
    let rec = IdempotencyRecord {
        request_hash: vec![1, 2, 3],
        response: StoredResponse {
            status: 202,
            body: "{\"id\":\"x\"}".into(),
        },
    };
    let mut a = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
    a.idempotency = Some(("k1".into(), rec.clone()));
    let mut b = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
    b.idempotency = Some((
        "k1".into(),
        IdempotencyRecord {
            request_hash: vec![9],
            ..rec.clone()
        },
    ));
    let mut c = new_notification("t2", request(Priority::Normal, &["email"]), 1_000);
    c.idempotency = Some(("k1".into(), rec.clone()));
    let r = store
        .create(vec![a.clone(), b.clone(), c])
        .await
        .expect("create");
    assert_eq!(
        r,
        vec![
            CreateResult::Created,
            CreateResult::KeyTaken(rec.clone()),
            CreateResult::Created
        ]
    );
    assert!(
        store
            .notification("t1", b.id)
            .await
            .expect("read")
            .is_none(),
        "nothing written for a taken key"
    );
    // Later: t1's key is still taken (its record comes back); a third
    // tenant's k1 is its own.
    let mut again = new_notification("t1", request(Priority::Normal, &["email"]), 2_000);
    again.idempotency = Some(("k1".into(), rec.clone()));
    let mut d = new_notification("t3", request(Priority::Normal, &["email"]), 2_000);
    d.idempotency = Some(("k1".into(), rec.clone()));
    assert_eq!(
        store.create(vec![again, d]).await.expect("create"),
        vec![CreateResult::KeyTaken(rec), CreateResult::Created]
    );
}

async fn api_keys(store: &dyn Store) {
    let t = store
        .add_api_key("acme", b"hash-1", "ci", Scopes::ALL)
        .await
        .expect("add");
    let send_read = Scopes::SEND.union(Scopes::READ);
    let t2 = store
        .add_api_key("acme", b"hash-2", "ci", send_read)
        .await
        .expect("add");
    assert_eq!(t, t2, "same tenant by name");
    assert_eq!(
        store.key_grant(b"hash-2").await.expect("read"),
        Some(KeyGrant {
            tenant_id: t.clone(),
            scopes: send_read
        })
    );
    assert_eq!(
        store.key_grant(b"hash-1").await.expect("read"),
        Some(KeyGrant {
            tenant_id: t,
            scopes: Scopes::ALL
        })
    );
    assert_eq!(store.key_grant(b"nope").await.expect("read"), None);
}

/// The support search: a tenant's notifications to an address, newest
/// first, among its latest `scan`; never another tenant's, never a
/// notification that only mentions the address elsewhere.
async fn notifications_to_an_address(store: &dyn Store) {
    let to = |email: &str, phone: &str, text: &str| {
        let req: NotificationRequest = serde_json::from_value(serde_json::json!({
            "recipient": {"email": email, "phone": phone},
            "channels": ["email"],
            "content": {"subject": "s", "text": text}
        }))
        .expect("fixture");
        new_notification("t1", req, 1_000)
    };
    let ada = to("ada@example.com", "+14155550100", "x");
    let grace = to("grace@example.com", "+14155550101", "for ada@example.com");
    let ada_again = to("Ada@Example.com", "+14155550102", "y");
    let mut other = to("ada@example.com", "+14155550100", "z");
    other.tenant_id = "t2".into();
    for n in [&ada, &grace, &ada_again, &other] {
        store.create(vec![n.clone()]).await.expect("create");
    }
    let found = |address: &'static str, scan| async move {
        store
            .notifications_to("t1", address, scan, 20)
            .await
            .expect("search")
    };
    assert_eq!(
        found("ada@example.com", 100).await,
        vec![ada_again.id, ada.id]
    );
    assert_eq!(found("+14155550101", 100).await, vec![grace.id]);
    assert_eq!(
        found("ada@example.com", 1).await,
        vec![ada_again.id],
        "scans the latest 1"
    );
    assert!(
        found("%", 100).await.is_empty(),
        "LIKE's wildcards are literal"
    );
    assert!(found("nobody@example.com", 100).await.is_empty());
}

/// Circuits held by hand: held, replaced, read by every node, released.
async fn circuit_holds(store: &dyn Store) {
    assert_eq!(store.circuit_holds().await.expect("read"), vec![]);
    let hold = |provider: &str, by: &str| CircuitHold {
        provider: provider.into(),
        by: by.into(),
        reason: "vendor incident 4411".into(),
        since_ms: 1_000,
    };
    store
        .hold_circuit(hold("twilio", "ada"))
        .await
        .expect("hold");
    store
        .hold_circuit(hold("sendgrid", "ada"))
        .await
        .expect("hold");
    store
        .hold_circuit(hold("twilio", "grace"))
        .await
        .expect("held again");
    assert_eq!(
        store.circuit_holds().await.expect("read"),
        vec![hold("sendgrid", "ada"), hold("twilio", "grace")]
    );
    assert!(store.release_circuit("twilio").await.expect("release"));
    assert!(!store.release_circuit("twilio").await.expect("release"));
    assert_eq!(
        store.circuit_holds().await.expect("read"),
        vec![hold("sendgrid", "ada")]
    );
}

/// A key stored before keys had scopes (the column NULL) keeps every scope.
async fn a_key_made_before_scopes_keeps_every_scope(store: &dyn Store) {
    let grant = store
        .key_grant(b"old")
        .await
        .expect("read")
        .expect("the key");
    assert_eq!(grant.scopes, Scopes::ALL);
}

#[tokio::test]
async fn sqlite_a_key_made_before_scopes_keeps_every_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(&dir).await;
    store
        .add_api_key("acme", b"old", "ci", Scopes::SEND)
        .await
        .expect("add");
    let db = rusqlite::Connection::open(dir.path().join("herald.db")).expect("open");
    db.execute("UPDATE api_keys SET scopes = NULL", [])
        .expect("as before scopes");
    a_key_made_before_scopes_keeps_every_scope(&store).await;
}

#[tokio::test]
async fn postgres_a_key_made_before_scopes_keeps_every_scope() {
    let check = "key_before_scopes";
    let Some(store) = postgres(check).await else {
        return;
    };
    store
        .add_api_key("acme", b"old", "ci", Scopes::SEND)
        .await
        .expect("add");
    let admin = sqlx::PgPool::connect(&postgres_url().expect("url"))
        .await
        .expect("connect");
    sqlx::query(&format!(
        "UPDATE {}.api_keys SET scopes = NULL",
        schema(check)
    ))
    .execute(&admin)
    .await
    .expect("as before scopes");
    a_key_made_before_scopes_keeps_every_scope(&store).await;
}

async fn failover_calls_are_all_logged_and_a_deferral_is_not_an_attempt(store: &dyn Store) {
    let n = new_notification("t1", request(Priority::Critical, &["sms"]), 1_000);
    store.create(vec![n.clone()]).await.expect("create");
    let c = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            1,
            1_000,
            60_000,
        ))
        .await
        .expect("claim");
    // Every circuit open: deferred, no call made.
    let deferred = AttemptRecord {
        calls: Vec::new(),
        error: Some("twilio: circuit open".into()),
        next: Next::Deferred(2_000),
        ..sent(&c[0], 1_000)
    };
    store.record(vec![deferred]).await.expect("record");
    let early = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            1,
            1_999,
            60_000,
        ))
        .await
        .expect("claim");
    assert!(early.is_empty(), "deferred until 2000");
    let c = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            1,
            2_000,
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(c[0].attempt, 1, "the deferral gave its attempt back");

    // Primary fails, backup takes it, in one attempt.
    let mut rec = attempt(
        &c[0],
        "twilio",
        2_000,
        Next::Sent {
            vendor_id: Some("SM1".into()),
        },
    );
    let mut failed = rec.calls[0].clone();
    failed.outcome = "transient".into();
    rec.calls[0].provider = "sns".into();
    rec.calls.insert(0, failed);
    store.record(vec![rec]).await.expect("record");
    let v = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("exists");
    let d = &v.deliveries[0];
    assert_eq!(d.state, DeliveryState::Sent);
    assert_eq!(
        d.provider.as_deref(),
        Some("sns"),
        "the provider that sent it"
    );
    let calls: Vec<_> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.provider.as_deref(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        calls,
        vec![
            (1, Some("twilio"), "transient"),
            (1, Some("sns"), "accepted")
        ]
    );
}

async fn a_pin_holds_for_later_attempts(store: &dyn Store) {
    let n = new_notification("t1", request(Priority::High, &["sms"]), 1_000);
    store.create(vec![n]).await.expect("create");
    let c = store
        .claim(Claim::new(Channel::Sms, Priority::High, 1, 1_000, 60_000))
        .await
        .expect("claim");
    assert_eq!(c[0].pinned_provider, None);
    let mut rec = attempt(&c[0], "twilio", 1_000, Next::RetryAt(1_100));
    rec.pin = Some("twilio".into());
    store.record(vec![rec]).await.expect("record");
    let c = store
        .claim(Claim::new(Channel::Sms, Priority::High, 1, 1_100, 60_000))
        .await
        .expect("claim");
    assert_eq!(c[0].pinned_provider.as_deref(), Some("twilio"));
    assert_eq!(c[0].attempt, 2);
}

async fn a_takeover_is_in_doubt_and_knows_the_backup_being_called(store: &dyn Store) {
    let n = new_notification("t1", request(Priority::High, &["sms"]), 1_000);
    store.create(vec![n]).await.expect("create");
    let first = store
        .claim(Claim::new(Channel::Sms, Priority::High, 1, 1_000, 100))
        .await
        .expect("claim");
    assert!(!first[0].in_doubt, "a fresh claim");
    store
        .note_call(first[0].id, first[0].lease_token, "sns")
        .await
        .expect("note");
    // The holder dies; the lease expires; another takes over.
    let second = store
        .claim(Claim::new(Channel::Sms, Priority::High, 1, 1_200, 100))
        .await
        .expect("claim");
    assert!(second[0].in_doubt);
    assert_eq!(second[0].calling.as_deref(), Some("sns"));
    store
        .record(vec![attempt(
            &second[0],
            "sns",
            1_200,
            Next::RetryAt(1_300),
        )])
        .await
        .expect("record");
    let third = store
        .claim(Claim::new(Channel::Sms, Priority::High, 1, 1_300, 100))
        .await
        .expect("claim");
    assert!(!third[0].in_doubt, "a recorded attempt settles the doubt");
    assert_eq!(third[0].calling, None);
    // A release at shutdown may have cut a call short: in doubt too.
    store
        .release(vec![(third[0].id, third[0].lease_token)], true)
        .await
        .expect("release");
    let fourth = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::High,
            1,
            herald_core::now_ms(),
            100,
        ))
        .await
        .expect("claim");
    assert!(fourth[0].in_doubt);
}

/// Kills one delivery per (tenant, channel) and returns them.
async fn kill(store: &dyn Store, tenant: &str, channel: &str, at: i64) -> ClaimedDelivery {
    let n = new_notification(tenant, request(Priority::Normal, &[channel]), at);
    store.create(vec![n]).await.expect("create");
    let ch: Channel = channel.parse().expect("channel");
    let c = store
        .claim(Claim::new(ch, Priority::Normal, 1, at, 60_000))
        .await
        .expect("claim");
    let provider = if ch == Channel::Sms {
        "twilio"
    } else {
        "sendgrid"
    };
    store
        .record(vec![attempt(&c[0], provider, at, Next::Dead)])
        .await
        .expect("record");
    c[0].clone()
}

async fn dead_letters_are_listed_paged_filtered_and_replayed(store: &dyn Store) {
    let a = kill(store, "t1", "sms", 1_000).await;
    let b = kill(store, "t1", "email", 2_000).await;
    let c = kill(store, "t1", "sms", 3_000).await;
    let other = kill(store, "t2", "sms", 4_000).await;

    let t1 = DeadLetterFilter {
        tenant_id: Some("t1".into()),
        ..DeadLetterFilter::default()
    };
    let all = store.dead_letters(&t1, None, 10).await.expect("list");
    let ids: Vec<_> = all.iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        vec![a.id, b.id, c.id],
        "oldest death first, own tenant only"
    );
    assert_eq!(all[0].provider.as_deref(), Some("twilio"));
    assert_eq!(all[0].last_error.as_deref(), Some("503 from the vendor"));
    assert_eq!(all[0].attempts, 1);
    assert_eq!(all[0].dead_at_ms, 1_005);

    // Paging with the cursor.
    let first = store.dead_letters(&t1, None, 2).await.expect("list");
    let cursor = DeadLetterCursor {
        dead_at_ms: first[1].dead_at_ms,
        id: first[1].id,
    };
    let rest = store
        .dead_letters(&t1, Some(cursor), 2)
        .await
        .expect("list");
    assert_eq!(rest.iter().map(|d| d.id).collect::<Vec<_>>(), vec![c.id]);

    // Filters.
    let sms = DeadLetterFilter {
        channel: Some(Channel::Sms),
        since_ms: Some(2_000),
        ..t1.clone()
    };
    let got = store.dead_letters(&sms, None, 10).await.expect("list");
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![c.id]);
    let by_provider = DeadLetterFilter {
        provider: Some("sendgrid".into()),
        until_ms: Some(5_000),
        ..DeadLetterFilter::default()
    };
    let got = store
        .dead_letters(&by_provider, None, 10)
        .await
        .expect("list");
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![b.id]);

    // Replay one: another tenant cannot; then it is queued with attempts reset.
    assert_eq!(
        store
            .replay_dead_letter(Some("t2"), a.id)
            .await
            .expect("replay"),
        ReplayOutcome::NotFound
    );
    assert_eq!(
        store
            .replay_dead_letter(Some("t1"), a.id)
            .await
            .expect("replay"),
        ReplayOutcome::Replayed
    );
    assert_eq!(
        store
            .replay_dead_letter(Some("t1"), a.id)
            .await
            .expect("replay"),
        ReplayOutcome::NotDead(DeliveryState::Queued)
    );
    let again = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Normal,
            10,
            herald_core::now_ms(),
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, a.id, "same delivery id: same vendor key");
    assert_eq!(again[0].attempt, 1, "attempts start over");

    // Bulk replay by filter: only what matches, at most `limit`.
    let n = store.replay_dead_letters(&t1, 10).await.expect("bulk");
    assert_eq!(n, 2, "b and c; a was replayed already");
    let left = store
        .dead_letters(&DeadLetterFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(
        left.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![other.id]
    );
    assert_eq!(store.tenant_id("nobody").await.expect("read"), None);
}

async fn waiting_deliveries_expire_without_a_claim(store: &dyn Store) {
    let mut soon = new_notification("t1", request(Priority::Critical, &["sms", "email"]), 1_000);
    soon.expires_at_ms = Some(5_000);
    let never = new_notification("t1", request(Priority::Critical, &["sms"]), 1_000);
    store
        .create(vec![soon.clone(), never.clone()])
        .await
        .expect("create");
    assert_eq!(store.expire_overdue(4_999).await.expect("sweep"), 0);
    assert_eq!(store.expire_overdue(5_000).await.expect("sweep"), 2);
    let v = store
        .notification("t1", soon.id)
        .await
        .expect("read")
        .expect("exists");
    assert!(v
        .deliveries
        .iter()
        .all(|d| d.state == DeliveryState::Expired));
    let left = store
        .claim(Claim::new(
            Channel::Sms,
            Priority::Critical,
            10,
            6_000,
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].notification_id, never.id, "no expiry: waits on");
}

async fn each_lane_says_how_long_its_oldest_due_delivery_has_waited(store: &dyn Store) {
    let first = new_notification("t1", request(Priority::Normal, &["sms"]), 1_000);
    let second = new_notification("t1", request(Priority::Normal, &["sms"]), 3_000);
    let critical = new_notification("t2", request(Priority::Critical, &["sms", "email"]), 2_000);
    let mut later = new_notification("t1", request(Priority::Low, &["email"]), 1_000);
    later.due_at_ms = 9_000;
    store
        .create(vec![first, second, critical, later])
        .await
        .expect("create");
    let lag = |mut v: Vec<LaneLag>| {
        v.sort_by_key(|l| (l.channel.as_str(), l.priority));
        v.into_iter()
            .map(|l| (l.channel, l.priority, l.oldest_due_at_ms, l.due))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lag(store.oldest_due(5_000).await.expect("read")),
        vec![
            (Channel::Email, Priority::Critical, 2_000, 1),
            (Channel::Sms, Priority::Critical, 2_000, 1),
            (Channel::Sms, Priority::Normal, 1_000, 2),
        ],
        "not yet due (the low email) is not lag"
    );
    // Taken deliveries no longer wait: the normal lane's oldest is the
    // second one now.
    let taken = store
        .claim(Claim::new(Channel::Sms, Priority::Normal, 1, 5_000, 60_000))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1);
    let now = lag(store.oldest_due(9_000).await.expect("read"));
    assert!(
        now.contains(&(Channel::Sms, Priority::Normal, 3_000, 1)),
        "{now:?}"
    );
    assert!(
        now.contains(&(Channel::Email, Priority::Low, 9_000, 1)),
        "{now:?}"
    );

    // One lane at a time for admission control, each count stopped at its
    // bound; the taken one is still held.
    let lane = |channel, lane, now_ms, due, waiting| async move {
        let ask = LaneAsk {
            channel,
            lane,
            up_to: CountUpTo { due, waiting },
        };
        let mut one = store.lane_queues(now_ms, &[ask]).await?;
        Ok::<_, herald_core::store::StoreError>(one.pop().expect("one lane asked, one answered"))
    };
    let queue = |oldest_due_at_ms, due, waiting| LaneQueue {
        oldest_due_at_ms,
        due,
        waiting,
    };
    assert_eq!(
        lane(Channel::Sms, Priority::Normal, 9_000, 10, 10)
            .await
            .expect("read"),
        queue(Some(3_000), 1, 2)
    );
    assert_eq!(
        lane(Channel::Sms, Priority::Normal, 9_000, 0, 1)
            .await
            .expect("read"),
        queue(Some(3_000), 0, 1),
        "counted only as far as asked"
    );
    assert_eq!(
        lane(Channel::Email, Priority::Low, 5_000, 10, 10)
            .await
            .expect("read"),
        queue(None, 0, 1),
        "held, not yet due"
    );
    // A delivery whose lease ran out (taken at 5 s for 60 s) is due again.
    assert_eq!(
        lane(Channel::Sms, Priority::Normal, 65_001, 10, 10)
            .await
            .expect("read"),
        queue(Some(3_000), 2, 2)
    );
    assert_eq!(
        lane(Channel::Webhook, Priority::High, 65_001, 10, 10)
            .await
            .expect("read"),
        queue(None, 0, 0)
    );

    // Several lanes in one read (the judge's), each as if read alone and
    // in the order asked, each with its own bounds.
    let ask = |channel, lane, due, waiting| LaneAsk {
        channel,
        lane,
        up_to: CountUpTo { due, waiting },
    };
    let asks = [
        ask(Channel::Webhook, Priority::High, 10, 10),
        ask(Channel::Sms, Priority::Normal, 1, 10),
        ask(Channel::Email, Priority::Low, 10, 10),
        ask(Channel::Sms, Priority::Normal, 10, 10),
    ];
    assert_eq!(
        store.lane_queues(65_001, &asks).await.expect("read"),
        vec![
            queue(None, 0, 0),
            queue(Some(3_000), 1, 2),
            queue(Some(9_000), 1, 1),
            queue(Some(3_000), 2, 2),
        ]
    );
    assert_eq!(
        store.lane_queues(65_001, &[]).await.expect("read"),
        vec![],
        "nothing asked, nothing read"
    );
}

async fn finished_notifications_are_purged_with_everything_they_hold(store: &dyn Store) {
    let rec = IdempotencyRecord {
        request_hash: vec![7],
        response: StoredResponse {
            status: 202,
            body: "{}".into(),
        },
    };
    let now = herald_core::now_ms();
    let mut done = new_notification("t1", request(Priority::High, &["email"]), now);
    done.idempotency = Some(("purge-me".into(), rec.clone()));
    let waiting = new_notification("t1", request(Priority::Normal, &["email"]), now);
    store
        .create(vec![done.clone(), waiting.clone()])
        .await
        .expect("create");
    let claimed = store
        .claim(Claim::new(Channel::Email, Priority::High, 10, now, 60_000))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    store
        .record(vec![sent(&claimed[0], now)])
        .await
        .expect("record");

    // Nothing made before an hour ago: nothing goes.
    let n = store
        .purge_finished(now - 3_600_000, 100)
        .await
        .expect("purge");
    assert_eq!(n, 0);
    // Everything made before a second from now: only the finished one goes.
    let n = store.purge_finished(now + 1_000, 100).await.expect("purge");
    assert_eq!(n, 1, "the waiting notification stays");
    assert!(store
        .notification("t1", done.id)
        .await
        .expect("read")
        .is_none());
    assert!(store
        .notification("t1", waiting.id)
        .await
        .expect("read")
        .is_some());
    // Its idempotency key went with it: the key is free again.
    let mut again = new_notification("t1", request(Priority::High, &["email"]), now);
    again.idempotency = Some(("purge-me".into(), rec));
    assert_eq!(
        store.create(vec![again]).await.expect("create"),
        vec![CreateResult::Created]
    );
    let n = store.purge_finished(now + 1_000, 100).await.expect("purge");
    assert_eq!(n, 0, "nothing else has finished");
}

async fn a_bus_consumer_claims_named_deliveries_once(store: &dyn Store) {
    let now = 10_000;
    let mut later = new_notification("t1", request(Priority::Low, &["email"]), now);
    later.due_at_ms = now + 60_000; // scheduled: not due yet
    let mut n = new_notification("t1", request(Priority::Critical, &["email", "sms"]), now);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    n.traceparent = Some(traceparent.into());
    store
        .create(vec![n.clone(), later.clone()])
        .await
        .expect("create");
    let (email, sms) = (n.deliveries[0].id, n.deliveries[1].id);

    // The event names both: each is claimed once, with its own channel,
    // lane and notification.
    let got = store
        .claim_ids(vec![email, sms, later.deliveries[0].id], now, 1_000)
        .await
        .expect("claim ids");
    assert_eq!(got.len(), 2, "the scheduled one is not due");
    let e = got.iter().find(|d| d.id == email).expect("email");
    assert_eq!(e.channel, Channel::Email);
    assert_eq!(e.priority, Priority::Critical);
    assert_eq!(e.tenant_id, "t1");
    assert_eq!(e.notification_id, n.id);
    assert!(!e.payload.is_empty());
    let s = got.iter().find(|d| d.id == sms).expect("sms");
    assert_eq!(s.channel, Channel::Sms);
    // Both carry the trace context the notification was accepted under.
    assert_eq!(e.traceparent.as_deref(), Some(traceparent));
    assert_eq!(s.traceparent.as_deref(), Some(traceparent));

    // The event again (redelivered): nothing, the leases hold.
    let again = store
        .claim_ids(vec![email, sms], now + 10, 1_000)
        .await
        .expect("claim ids");
    assert!(again.is_empty(), "a repeated event sends nothing");
    // One is sent; after the leases run out only the other comes back, in doubt.
    store.record(vec![sent(e, now + 20)]).await.expect("record");
    let late = store
        .claim_ids(vec![email, sms], now + 2_000, 1_000)
        .await
        .expect("claim ids");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].id, sms);
    assert!(late[0].in_doubt, "taken over from an expired lease");
    assert_eq!(late[0].attempt, 2);
}

fn suppression(tenant: &str, channel: Channel, address: &str, at: i64) -> Suppression {
    Suppression {
        tenant_id: tenant.into(),
        channel,
        address: address.into(),
        reason: SuppressionReason::Bounce,
        detail: Some("550 5.1.1 no such user".into()),
        source: "sendgrid".into(),
        created_at_ms: at,
    }
}

async fn suppressions_are_kept_per_tenant_listed_newest_first_and_lifted(store: &dyn Store) {
    let now = herald_core::now_ms();
    let ann = suppression("t1", Channel::Email, "ann@example.com", now - 3_000);
    assert!(store.suppress(ann.clone()).await.expect("suppress"));
    for (i, address) in ["b@example.com", "c@example.com", "d@example.com"]
        .into_iter()
        .enumerate()
    {
        let s = suppression("t1", Channel::Email, address, now - 2_000 + i as i64);
        assert!(store.suppress(s).await.expect("suppress"));
    }
    let mut sms = suppression("t1", Channel::Sms, "+15005550004", now - 1_000);
    sms.reason = SuppressionReason::Unsubscribed;
    assert!(store.suppress(sms.clone()).await.expect("suppress"));
    let other = suppression("t2", Channel::Email, "ann@example.com", now);
    assert!(store.suppress(other).await.expect("suppress"));

    // Per tenant, newest first, a page at a time.
    let t1 = SuppressionFilter {
        tenant_id: Some("t1".into()),
        ..SuppressionFilter::default()
    };
    let first = store.suppressions(&t1, None, 2).await.expect("list");
    let addresses =
        |page: &[Suppression]| -> Vec<String> { page.iter().map(|s| s.address.clone()).collect() };
    assert_eq!(addresses(&first), ["+15005550004", "d@example.com"]);
    let after = first.last().map(SuppressionCursor::after);
    let second = store.suppressions(&t1, after, 10).await.expect("list");
    assert_eq!(
        addresses(&second),
        ["c@example.com", "b@example.com", "ann@example.com"]
    );
    assert_eq!(second[2], ann, "kept as given");

    // Filtered by channel, reason and address.
    let by = |channel, reason, address: Option<&str>| SuppressionFilter {
        tenant_id: Some("t1".into()),
        channel,
        reason,
        address: address.map(str::to_owned),
    };
    let sms_only = store
        .suppressions(&by(Some(Channel::Sms), None, None), None, 10)
        .await
        .expect("list");
    assert_eq!(sms_only, vec![sms]);
    let unsubscribed = store
        .suppressions(
            &by(None, Some(SuppressionReason::Unsubscribed), None),
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(unsubscribed.len(), 1);
    let one = store
        .suppressions(
            &by(Some(Channel::Email), None, Some("ann@example.com")),
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(one.len(), 1, "t2's entry for the same address is t2's");

    // Added again: not new, and it takes the new reason.
    let mut again = ann.clone();
    again.reason = SuppressionReason::Complaint;
    again.created_at_ms = now;
    assert!(!store.suppress(again).await.expect("suppress"));
    let one = store
        .suppressions(
            &by(Some(Channel::Email), None, Some("ann@example.com")),
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(one[0].reason, SuppressionReason::Complaint);

    // Lifted: gone from the list, only once; added after a lift, new again.
    let lift =
        |address: &'static str| store.lift_suppression("t1", Channel::Email, address, now + 10);
    assert!(lift("ann@example.com").await.expect("lift"));
    assert!(!lift("ann@example.com").await.expect("lift"));
    assert!(!lift("nobody@example.com").await.expect("lift"));
    let left = store.suppressions(&t1, None, 10).await.expect("list");
    assert_eq!(left.len(), 4);
    assert!(!addresses(&left).contains(&"ann@example.com".to_owned()));
    assert!(store.suppress(ann).await.expect("suppress"));
    let everyone = SuppressionFilter::default();
    assert_eq!(
        store
            .suppressions(&everyone, None, 100)
            .await
            .expect("list")
            .len(),
        6
    );
}

async fn every_suppression_change_is_followed_in_order_lifts_included(store: &dyn Store) {
    let now = herald_core::now_ms();
    let mut read = Vec::new();
    let mut cursor = ChangeCursor::from_ms(i64::MIN);
    for i in 0..5 {
        let s = suppression("t1", Channel::Push, &format!("token-{i}"), now);
        store.suppress(s).await.expect("suppress");
    }
    store
        .lift_suppression("t1", Channel::Push, "token-3", now + 1_000)
        .await
        .expect("lift");
    // Two at a time, each read after the last.
    loop {
        let page = store
            .suppression_changes(&cursor, 2)
            .await
            .expect("changes");
        let Some(last) = page.last() else { break };
        cursor = ChangeCursor::after(last);
        read.extend(page);
    }
    assert_eq!(read.len(), 5, "every entry once, as it is now");
    let lifted: Vec<&str> = read
        .iter()
        .filter(|c| c.lifted)
        .map(|c| c.suppression.address.as_str())
        .collect();
    assert_eq!(lifted, ["token-3"]);
    assert!(read
        .windows(2)
        .all(|w| w[0].changed_at_ms <= w[1].changed_at_ms));
    assert_eq!(
        read.last().map(|c| c.suppression.address.as_str()),
        Some("token-3"),
        "the lift is the newest change"
    );
    // Nothing new: nothing after the cursor.
    assert!(store
        .suppression_changes(&cursor, 10)
        .await
        .expect("changes")
        .is_empty());
    // The retention purge takes the lifted entry; the others stay.
    store.purge_finished(now + 2_000, 100).await.expect("purge");
    let all = store
        .suppression_changes(&ChangeCursor::from_ms(i64::MIN), 100)
        .await
        .expect("changes");
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|c| !c.lifted));
}

async fn a_suppressed_delivery_ends_suppressed_with_why(store: &dyn Store) {
    let now = herald_core::now_ms();
    let n = new_notification("t1", request(Priority::Normal, &["email"]), now);
    store.create(vec![n.clone()]).await.expect("create");
    let claimed = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            10,
            now,
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let mut rec = attempt(&claimed[0], "none", now, Next::Suppressed);
    rec.calls.clear();
    rec.error = Some("the address is on the suppression list: bounce".into());
    store.record(vec![rec]).await.expect("record");
    let view = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(view.deliveries[0].state, DeliveryState::Suppressed);
    assert_eq!(
        view.deliveries[0].last_error.as_deref(),
        Some("the address is on the suppression list: bounce")
    );
    // Finished: nothing claims it again.
    let again = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            10,
            now + 120_000,
            60_000,
        ))
        .await
        .expect("claim");
    assert!(again.is_empty());
}

fn receipt(d: uuid::Uuid, kind: ReceiptKind, at: i64) -> VendorReceipt {
    VendorReceipt {
        delivery_id: d,
        kind: Some(kind),
        at_ms: at,
        reason: Some(format!("{kind} at {at}")),
        suppress: None,
    }
}

async fn receipts_move_deliveries_on_by_rank_whenever_they_come(store: &dyn Store) {
    let now = herald_core::now_ms();
    let n = new_notification("t1", request(Priority::Normal, &["email", "sms"]), now);
    store.create(vec![n.clone()]).await.expect("create");
    let email = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            10,
            now,
            60_000,
        ))
        .await
        .expect("claim")
        .remove(0);
    let sms = store
        .claim(Claim::new(Channel::Sms, Priority::Normal, 10, now, 60_000))
        .await
        .expect("claim")
        .remove(0);
    let state = |view: &NotificationView, id: uuid::Uuid| {
        view.deliveries
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.state)
            .expect("the delivery")
    };

    // The email's receipt comes before its send is recorded: it waits in
    // the row, and recording `sent` takes it.
    let applied = store
        .record_receipts(
            "sendgrid",
            vec![receipt(email.id, ReceiptKind::Delivered, now + 1)],
            now + 2,
        )
        .await
        .expect("receipts");
    assert_eq!(
        applied,
        vec![ReceiptApplied::Found {
            tenant_id: "t1".into(),
            notification_id: n.id,
            channel: Channel::Email,
            changed: true
        }]
    );
    let view = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        state(&view, email.id),
        DeliveryState::Sending,
        "still the worker's"
    );
    store
        .record(vec![sent(&email, now + 3), sent(&sms, now + 3)])
        .await
        .expect("record");
    let view = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(state(&view, email.id), DeliveryState::Delivered);
    assert_eq!(state(&view, sms.id), DeliveryState::Sent);

    // Out of order: the bounce stands, the late delivered changes nothing,
    // the same bounce twice is one entry in the timeline.
    let bounce = receipt(sms.id, ReceiptKind::Bounced, now + 10);
    let late = receipt(sms.id, ReceiptKind::Delivered, now + 5);
    let applied = store
        .record_receipts("twilio", vec![bounce.clone(), late, bounce], now + 11)
        .await
        .expect("receipts");
    let changed: Vec<bool> = applied
        .iter()
        .map(|a| matches!(a, ReceiptApplied::Found { changed: true, .. }))
        .collect();
    assert_eq!(changed, [true, false, false]);
    let view = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(state(&view, sms.id), DeliveryState::Bounced);
    let timeline: Vec<(ReceiptKind, i64)> = view
        .deliveries
        .iter()
        .find(|d| d.id == sms.id)
        .map(|d| d.receipts.iter().map(|r| (r.kind, r.at_ms)).collect())
        .unwrap_or_default();
    assert_eq!(
        timeline,
        [
            (ReceiptKind::Delivered, now + 5),
            (ReceiptKind::Bounced, now + 10)
        ],
        "each distinct receipt once, in the vendor's order"
    );
    // A complaint outranks everything.
    store
        .record_receipts(
            "twilio",
            vec![receipt(sms.id, ReceiptKind::Complained, now + 20)],
            now + 21,
        )
        .await
        .expect("receipts");
    let view = store
        .notification("t1", n.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(state(&view, sms.id), DeliveryState::Complained);

    // A delivery no one knows: answered, nothing changed.
    let stranger = receipt(uuid::Uuid::now_v7(), ReceiptKind::Delivered, now);
    assert_eq!(
        store
            .record_receipts("sendgrid", vec![stranger], now)
            .await
            .expect("receipts"),
        vec![ReceiptApplied::Unknown]
    );
    // Purged with their notification.
    assert_eq!(
        store.purge_finished(now + 60_000, 10).await.expect("purge"),
        1
    );
    assert_eq!(
        store
            .record_receipts(
                "twilio",
                vec![receipt(sms.id, ReceiptKind::Complained, now + 30)],
                now + 31
            )
            .await
            .expect("receipts"),
        vec![ReceiptApplied::Unknown]
    );
}

/// Recipients are kept per tenant; a write bumps the version, a conditional
/// write over another version is refused, and an erasure returns what it
/// removed and leaves nothing behind.
async fn recipients_are_kept_per_tenant_versioned_and_erased(store: &dyn Store) {
    use herald_core::recipient::Profile;
    use herald_core::store::PutRecipient;
    let ada: Profile = serde_json::from_value(serde_json::json!({
        "email": "ada@example.com", "phone": "+14155550100",
        "push_tokens": [{"platform": "ios", "token": "tok-1", "app": "com.example"}],
        "locale": "pt-BR", "timezone": "Asia/Kolkata", "data": {"name": "Zoë 🎉"}
    }))
    .expect("a profile");
    let put = |tenant: &'static str, id: &'static str, p: Profile, v: Option<i64>| {
        store.put_recipient(tenant, id, p, v, 1_000)
    };
    assert_eq!(
        put("t1", "u-42", ada.clone(), None).await.expect("put"),
        PutRecipient::Written {
            version: 1,
            created: true
        }
    );
    // Create-only over an existing one, and an update over a stale version.
    assert_eq!(
        put("t1", "u-42", Profile::default(), Some(0))
            .await
            .expect("put"),
        PutRecipient::Conflict
    );
    assert_eq!(
        put("t1", "u-42", Profile::default(), Some(7))
            .await
            .expect("put"),
        PutRecipient::Conflict
    );
    let mut moved = ada.clone();
    moved.email = Some("ada@new.example".into());
    assert_eq!(
        put("t1", "u-42", moved.clone(), Some(1))
            .await
            .expect("put"),
        PutRecipient::Written {
            version: 2,
            created: false
        }
    );
    assert_eq!(
        put("t2", "u-42", Profile::default(), Some(0))
            .await
            .expect("put"),
        PutRecipient::Written {
            version: 1,
            created: true
        },
        "another tenant's u-42 is another person"
    );
    let ids = vec!["u-42".to_owned(), "nobody".to_owned()];
    let got = store.recipients("t1", &ids).await.expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].profile, moved, "the profile reads back whole");
    assert_eq!((got[0].version, got[0].updated_at_ms), (2, 1_000));
    assert_eq!(store.recipients("t3", &ids).await.expect("read"), vec![]);
    // Many at once (an import; the last of one id wins), read back in more
    // than one read's worth.
    let mut batch: Vec<(String, Profile)> = (0..600)
        .map(|i| (format!("bulk-{i}"), Profile::default()))
        .collect();
    let last = Profile {
        locale: Some("fr".into()),
        ..Profile::default()
    };
    batch.push(("bulk-7".into(), last.clone()));
    assert_eq!(
        store.put_recipients("t1", batch, 5).await.expect("import"),
        600
    );
    let many: Vec<String> = (0..700).map(|i| format!("bulk-{i}")).collect();
    let got = store.recipients("t1", &many).await.expect("read");
    assert_eq!(got.len(), 600);
    let seventh = got.iter().find(|r| r.id == "bulk-7").expect("bulk-7");
    assert_eq!(seventh.profile, last);
    // Imported again: replaced, versions bumped.
    let again = vec![("bulk-7".to_owned(), Profile::default())];
    store.put_recipients("t1", again, 6).await.expect("import");
    let got = store
        .recipients("t1", &["bulk-7".to_owned()])
        .await
        .expect("read");
    assert_eq!((got[0].version, got[0].profile.locale.clone()), (2, None));

    let erased = store
        .delete_recipient("t1", "u-42")
        .await
        .expect("delete")
        .expect("it was there");
    assert_eq!(erased.profile, moved);
    assert_eq!(store.recipients("t1", &ids).await.expect("read"), vec![]);
    assert_eq!(
        store.delete_recipient("t1", "u-42").await.expect("delete"),
        None
    );
    assert_eq!(
        store.recipients("t2", &ids).await.expect("read").len(),
        1,
        "the other tenant's is untouched"
    );
    // Preferences live beside the profile: a profile write keeps them, an
    // erasure takes them; the tenant's defaults are the tenant's own.
    let prefs: herald_core::recipient::Preferences =
        serde_json::from_value(serde_json::json!({"categories": {"marketing": {"sms": false}}}))
            .expect("prefs");
    assert_eq!(
        store
            .set_preferences("t2", "u-42", prefs.clone(), None, 7)
            .await
            .expect("set"),
        Some(2),
        "written, the version bumped"
    );
    assert_eq!(
        store
            .set_preferences("t2", "u-42", Default::default(), Some(1), 7)
            .await
            .expect("set"),
        None,
        "not over a version since replaced"
    );
    assert_eq!(
        store
            .set_preferences("t2", "nobody", prefs.clone(), None, 7)
            .await
            .expect("set"),
        None
    );
    store
        .put_recipient("t2", "u-42", Profile::default(), None, 8)
        .await
        .expect("put");
    let got = store
        .recipients("t2", &["u-42".to_owned()])
        .await
        .expect("read");
    assert_eq!(got[0].preferences, prefs, "kept across a profile write");
    let gone = store
        .delete_recipient("t2", "u-42")
        .await
        .expect("delete")
        .expect("there");
    assert_eq!(gone.preferences, prefs);
    assert_eq!(
        store.tenant_preferences("t2").await.expect("read"),
        Default::default()
    );
    let defaults: herald_core::recipient::TenantPreferences = serde_json::from_value(
        serde_json::json!({"categories": {"marketing": {"email": false}}, "required": ["security"]}),
    )
    .expect("defaults");
    let t2 = store
        .add_api_key("tenant-two", b"k2", "test", Scopes::ALL)
        .await
        .expect("tenant");
    store
        .set_tenant_preferences(&t2, defaults.clone())
        .await
        .expect("set");
    assert_eq!(store.tenant_preferences(&t2).await.expect("read"), defaults);

    // Stored again after an erasure: a new recipient.
    assert_eq!(
        put("t1", "u-42", ada, None).await.expect("put"),
        PutRecipient::Written {
            version: 1,
            created: true
        }
    );
}

/// A cancel ends what is still queued, in one step with the claims: a
/// delivery a worker holds stays with it, a cancelled one is never claimed,
/// a second cancel changes nothing, another tenant cannot, and an
/// idempotency key finds its notification.
async fn a_cancel_ends_what_is_queued_and_no_claim_takes_it_after(store: &dyn Store) {
    let now = 1_000;
    let mut n = new_notification("t1", request(Priority::High, &["email", "sms"]), now);
    let id = n.id;
    n.idempotency = Some((
        "order-7".into(),
        IdempotencyRecord {
            request_hash: vec![1],
            response: StoredResponse {
                status: 202,
                body: format!("{{\"id\":\"{id}\",\"status\":\"accepted\"}}"),
            },
        },
    ));
    store.create(vec![n]).await.expect("create");
    assert_eq!(
        store
            .notification_for_key("t1", "order-7")
            .await
            .expect("read"),
        Some(id)
    );
    assert_eq!(
        store
            .notification_for_key("t2", "order-7")
            .await
            .expect("read"),
        None
    );
    // A worker has the SMS.
    let held = store
        .claim(Claim::new(Channel::Sms, Priority::High, 10, now, 30_000))
        .await
        .expect("claim");
    assert_eq!(held.len(), 1);

    assert_eq!(store.cancel("t2", id, now).await.expect("cancel"), None);
    let left = store
        .cancel("t1", id, now + 1)
        .await
        .expect("cancel")
        .expect("found");
    let by_channel: Vec<(Channel, DeliveryState, bool)> = left
        .iter()
        .map(|d| (d.channel, d.state, d.cancelled))
        .collect();
    assert_eq!(
        by_channel,
        [
            (Channel::Email, DeliveryState::Cancelled, true),
            (Channel::Sms, DeliveryState::Sending, false)
        ]
    );
    let none = store
        .claim(Claim::new(
            Channel::Email,
            Priority::High,
            10,
            now + 60_000,
            30_000,
        ))
        .await
        .expect("claim");
    assert!(none.is_empty(), "a cancelled delivery is never claimed");
    let email_id = left[0].id;
    assert!(store
        .claim_ids(vec![email_id], now + 60_000, 30_000)
        .await
        .expect("claim by id")
        .is_empty());
    // The held one finishes as it would have.
    store
        .record(vec![sent(&held[0], now + 10)])
        .await
        .expect("record");
    let again = store
        .cancel("t1", id, now + 20)
        .await
        .expect("cancel")
        .expect("found");
    assert!(again.iter().all(|d| !d.cancelled), "{again:?}");
    assert_eq!(again[1].state, DeliveryState::Sent);
    let view = store
        .notification("t1", id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(view.deliveries[0].state, DeliveryState::Cancelled);
}

/// A delivery may be created held (quiet hours) or already ended (an
/// opt-out, quiet hours past the TTL): a held one is claimed only when
/// due, an ended one never, each with its reason.
async fn deliveries_may_be_created_held_or_ended(store: &dyn Store) {
    let now = 1_000;
    let mut n = new_notification("t1", request(Priority::Normal, &["email", "sms"]), now);
    n.deliveries[0].held_until_ms = Some(now + 60_000);
    n.deliveries[1].ended = Some((DeliveryState::Suppressed, "preference: no".into()));
    let id = n.id;
    store.create(vec![n]).await.expect("create");
    let claim = |channel, at| store.claim(Claim::new(channel, Priority::Normal, 10, at, 30_000));
    assert!(
        claim(Channel::Email, now + 1)
            .await
            .expect("claim")
            .is_empty(),
        "held"
    );
    assert!(
        claim(Channel::Sms, now + 120_000)
            .await
            .expect("claim")
            .is_empty(),
        "ended"
    );
    assert_eq!(
        claim(Channel::Email, now + 60_000)
            .await
            .expect("claim")
            .len(),
        1,
        "due once the hours end"
    );
    let view = store
        .notification("t1", id)
        .await
        .expect("read")
        .expect("found");
    let sms = view
        .deliveries
        .iter()
        .find(|d| d.channel == Channel::Sms)
        .expect("sms");
    assert_eq!(sms.state, DeliveryState::Suppressed);
    assert_eq!(sms.last_error.as_deref(), Some("preference: no"));
}

/// A delivery created leased (handed to the accepting node's workers, not
/// claimed) is held as a claim would hold it: no claim takes it while its
/// lease lasts, its holder records it with the lease's token as attempt 1,
/// a release gives it back at once, and once its lease runs out any claim
/// takes it over, in doubt. A frequency cap still suppresses it.
async fn a_delivery_created_leased_is_held_as_a_claim_holds_it(store: &dyn Store) {
    let now = 1_000;
    let lease = |token| Leased {
        token: LeaseToken(token),
        until_ms: now + 30_000,
    };
    let claim = |channel, at| store.claim(Claim::new(channel, Priority::Normal, 10, at, 30_000));
    let mut n = new_notification("t1", request(Priority::Normal, &["email", "sms"]), now);
    n.deliveries[0].leased = Some(lease(41));
    let held = ClaimedDelivery::handed(&n, &n.deliveries[0], lease(41), String::new());
    let mut other = new_notification("t1", request(Priority::Normal, &["email"]), now);
    other.deliveries[0].leased = Some(lease(42));
    let taken_over = other.deliveries[0].id;
    let mut given_back = new_notification("t1", request(Priority::Normal, &["email"]), now);
    given_back.deliveries[0].leased = Some(lease(43));
    let back = ClaimedDelivery::handed(
        &given_back,
        &given_back.deliveries[0],
        lease(43),
        String::new(),
    );
    let mut capped_leased = capped("t1", "u1", "news", now);
    for d in &mut capped_leased.deliveries {
        d.leased = Some(lease(44));
    }
    capped_leased.cap.as_mut().expect("cap").max = 0;
    let (id, capped_id) = (n.id, capped_leased.id);
    store
        .create(vec![n, other, given_back, capped_leased])
        .await
        .expect("create");

    let sms = claim(Channel::Sms, now + 1).await.expect("claim");
    assert_eq!(sms.len(), 1, "only what was created leased is held");
    assert!(
        claim(Channel::Email, now + 29_000)
            .await
            .expect("claim")
            .is_empty(),
        "no claim takes what a lease holds"
    );
    assert_eq!(
        states(store, "t1", capped_id).await,
        [DeliveryState::Suppressed, DeliveryState::Suppressed],
        "a cap suppresses what was to be handed too"
    );

    store
        .record(vec![sent(&held, now + 10)])
        .await
        .expect("record");
    let view = store
        .notification("t1", id)
        .await
        .expect("read")
        .expect("found");
    let email = view
        .deliveries
        .iter()
        .find(|d| d.channel == Channel::Email)
        .expect("email");
    assert_eq!(email.state, DeliveryState::Sent, "recorded with its token");
    assert_eq!(email.attempts.len(), 1);
    assert_eq!(email.attempts[0].attempt, 1, "its first attempt");

    store
        .release(vec![(back.id, back.lease_token)], false)
        .await
        .expect("release");
    // The lease `taken_over` was created under has run out (a long lease
    // for the taker, so the claim after this one finds only `back`).
    let late = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            10,
            now + 30_001,
            10_000_000_000_000,
        ))
        .await
        .expect("claim");
    assert_eq!(late.len(), 1, "the lease ran out");
    assert_eq!(late[0].id, taken_over);
    assert_eq!(late[0].attempt, 2);
    assert!(late[0].in_doubt, "its holder may have called the vendor");

    let again = claim(Channel::Email, herald_core::now_ms())
        .await
        .expect("claim");
    assert_eq!(again.len(), 1, "given back: due at once");
    assert_eq!(again[0].id, back.id);
    assert_eq!(again[0].attempt, 1, "a release is not an attempt");
    assert!(!again[0].in_doubt);
}

fn capped(tenant: &str, recipient: &str, category: &str, at: i64) -> NewNotification {
    let mut n = new_notification(tenant, request(Priority::Low, &["email", "sms"]), at);
    n.cap = Some(herald_core::store::CapCheck {
        recipient_id: recipient.into(),
        category: category.into(),
        max: 3,
        window_ms: 60_000,
    });
    n
}

/// The state each of a notification's deliveries was created in.
async fn states(store: &dyn Store, tenant: &str, id: uuid::Uuid) -> Vec<DeliveryState> {
    let view = store
        .notification(tenant, id)
        .await
        .expect("read")
        .expect("found");
    view.deliveries.iter().map(|d| d.state).collect()
}

/// A frequency cap counts per tenant, recipient and category over its
/// window: past `max`, every delivery not already ended is suppressed
/// with the cap's reason; the window moves on.
async fn frequency_caps_count_per_recipient_and_category(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let n = capped("t1", "u1", "marketing", 1_000 + i);
        ids.push(n.id);
        store.create(vec![n]).await.expect("create");
    }
    use DeliveryState::{Queued, Suppressed};
    assert_eq!(states(store, "t1", ids[2]).await, [Queued, Queued]);
    assert_eq!(states(store, "t1", ids[3]).await, [Suppressed, Suppressed]);
    let view = store
        .notification("t1", ids[4])
        .await
        .expect("read")
        .expect("found");
    assert!(view.deliveries[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.starts_with("frequency_cap: at most 3 marketing")));
    // Another recipient, category or tenant counts apart; one already
    // ended keeps its own reason.
    for (tenant, recipient, category) in [
        ("t1", "u2", "marketing"),
        ("t1", "u1", "digest"),
        ("t2", "u1", "marketing"),
    ] {
        let n = capped(tenant, recipient, category, 1_010);
        let id = n.id;
        store.create(vec![n]).await.expect("create");
        assert_eq!(
            states(store, tenant, id).await,
            [Queued, Queued],
            "{tenant} {recipient} {category}"
        );
    }
    let mut opted = capped("t1", "u1", "marketing", 1_020);
    opted.deliveries[0].ended = Some((Suppressed, "preference: no".into()));
    let id = opted.id;
    store.create(vec![opted]).await.expect("create");
    let view = store
        .notification("t1", id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        view.deliveries[0].last_error.as_deref(),
        Some("preference: no")
    );
    // A minute on, the first three have left the window.
    let later = capped("t1", "u1", "marketing", 1_003 + 60_000);
    let id = later.id;
    store.create(vec![later]).await.expect("create");
    assert_eq!(states(store, "t1", id).await, [Queued, Queued]);
    // An erased recipient's counts go with them.
    for i in 0..2 {
        store
            .create(vec![capped("t1", "u1", "marketing", 1_004 + 60_000 + i)])
            .await
            .expect("create");
    }
    let full = capped("t1", "u1", "marketing", 1_010 + 60_000);
    let id = full.id;
    store.create(vec![full]).await.expect("create");
    assert_eq!(states(store, "t1", id).await, [Suppressed, Suppressed]);
    store.delete_recipient("t1", "u1").await.expect("erase");
    let after = capped("t1", "u1", "marketing", 1_011 + 60_000);
    let id = after.id;
    store.create(vec![after]).await.expect("create");
    assert_eq!(states(store, "t1", id).await, [Queued, Queued]);
}

/// Many notifications for one capped key at once, through `stores`
/// (several nodes' on one database): exactly `max` are let through.
async fn a_cap_holds_under_concurrent_creates(stores: Vec<Arc<dyn Store>>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let store = stores[i % stores.len()].clone();
        tasks.spawn(async move {
            let n = capped("t1", "u1", "marketing", 5_000 + i as i64);
            let id = n.id;
            store.create(vec![n]).await.expect("create");
            id
        });
    }
    let mut through = 0;
    while let Some(id) = tasks.join_next().await {
        let id = id.expect("task");
        if states(stores[0].as_ref(), "t1", id).await[0] == DeliveryState::Queued {
            through += 1;
        }
    }
    assert_eq!(through, 3, "the cap holds across writers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_cap_holds_under_concurrent_creates() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_cap_holds_under_concurrent_creates(vec![Arc::new(sqlite(&dir).await)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_cap_holds_under_concurrent_creates() {
    a_cap_holds_under_concurrent_creates(vec![Arc::new(herald_store::MemoryStore::new(false))])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cap_holds_across_two_nodes() {
    let Some(one) = postgres("cap_two_nodes").await else {
        return;
    };
    let two = postgres_reopen("cap_two_nodes").await;
    a_cap_holds_under_concurrent_creates(vec![Arc::new(one), Arc::new(two)]).await;
}

/// Runs every check of the suite against each backend, each on a fresh store.
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let store = super::sqlite(&dir).await;
                    super::$check(&store).await;
                }
            )*
        }
        mod memory_backend {
            $(
                #[tokio::test]
                async fn $check() {
                    let store = herald_store::MemoryStore::new(false);
                    super::$check(&store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(store) = super::postgres(stringify!($check)).await {
                        super::$check(&store).await;
                    }
                }
            )*
        }
    };
}

suite!(
    claims_by_channel_and_lane,
    claims_at_once_each_get_their_own_lane,
    concurrent_recipient_reads_each_get_their_own,
    future_work_waits,
    expired_lease_is_claimed_again_and_old_holder_cannot_write,
    released_work_is_claimable_at_once,
    a_sweep_leaves_new_work_and_takes_run_out_leases,
    idempotency_keys_are_per_tenant,
    api_keys,
    circuit_holds,
    notifications_to_an_address,
    failover_calls_are_all_logged_and_a_deferral_is_not_an_attempt,
    a_pin_holds_for_later_attempts,
    dead_letters_are_listed_paged_filtered_and_replayed,
    waiting_deliveries_expire_without_a_claim,
    a_takeover_is_in_doubt_and_knows_the_backup_being_called,
    finished_notifications_are_purged_with_everything_they_hold,
    a_bus_consumer_claims_named_deliveries_once,
    each_lane_says_how_long_its_oldest_due_delivery_has_waited,
    suppressions_are_kept_per_tenant_listed_newest_first_and_lifted,
    every_suppression_change_is_followed_in_order_lifts_included,
    a_suppressed_delivery_ends_suppressed_with_why,
    receipts_move_deliveries_on_by_rank_whenever_they_come,
    recipients_are_kept_per_tenant_versioned_and_erased,
    a_cancel_ends_what_is_queued_and_no_claim_takes_it_after,
    deliveries_may_be_created_held_or_ended,
    a_delivery_created_leased_is_held_as_a_claim_holds_it,
    frequency_caps_count_per_recipient_and_category,
);

/// 400 creates at once, each its own request: all land (group commit
/// shares transactions among them).
async fn concurrent_creates(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let s = store.clone();
        tasks.spawn(async move {
            let n = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
            s.create(vec![n]).await.expect("create")
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("task"), vec![CreateResult::Created]);
    }
}

async fn all_claimable(store: &dyn Store, expected: usize) {
    let depths = store.queue_depths().await.expect("depths");
    assert_eq!(
        depths.iter().map(|d| d.pending).sum::<u64>(),
        expected as u64
    );
    let all = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            1_000,
            2_000,
            1_000,
        ))
        .await
        .expect("claim");
    assert_eq!(all.len(), expected);
}

/// One create among 50 concurrent ones reuses a notification id: it alone
/// fails, whatever group commit it shared.
async fn a_failing_write_fails_alone(store: Arc<dyn Store>) {
    let first = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
    store.create(vec![first.clone()]).await.expect("create");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let s = store.clone();
        let mut n = new_notification("t1", request(Priority::Normal, &["email"]), 1_000);
        if i == 25 {
            n.id = first.id; // primary key taken: this one must fail
        }
        tasks.spawn(async move { s.create(vec![n]).await.is_ok() });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.expect("task"));
    }
    assert_eq!(ok, 49, "only the conflicting create failed");
    let pending: u64 = store
        .queue_depths()
        .await
        .expect("depths")
        .iter()
        .map(|d| d.pending)
        .sum();
    assert_eq!(
        pending, 50,
        "the first and the 49 good ones, nothing of the failed one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writers_share_commits_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    concurrent_creates(Arc::new(sqlite(&dir).await)).await;
    // Reopen: everything acknowledged is on disk.
    all_claimable(&sqlite(&dir).await, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_write_fails_alone_in_its_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_failing_write_fails_alone(Arc::new(sqlite(&dir).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_share_commits_and_lose_nothing() {
    let Some(store) = postgres("concurrent_writers").await else {
        return;
    };
    concurrent_creates(Arc::new(store)).await;
    // A second store on the same schema (another node) sees all of it.
    let other = postgres_reopen("concurrent_writers").await;
    all_claimable(&other, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_write_fails_alone_in_its_group_commit() {
    if let Some(store) = postgres("failing_write").await {
        a_failing_write_fails_alone(Arc::new(store)).await;
    }
}

/// With the outbox on, each stored notification's event waits in it (the
/// highest lane first, in order within a lane) until marked published; a replayed key writes none; one relay
/// holds the lease at a time until it lapses.
async fn the_outbox_holds_each_stored_event_until_published(store: &dyn Store) {
    let now = herald_core::now_ms();
    let mut a = new_notification("t1", request(Priority::Critical, &["sms", "email"]), now);
    a.correlation_id = Some("req-1".into());
    a.idempotency = Some((
        "k".into(),
        IdempotencyRecord {
            request_hash: vec![1],
            response: StoredResponse {
                status: 202,
                body: "{}".into(),
            },
        },
    ));
    let b = new_notification("t1", request(Priority::Low, &["email"]), now);
    let c = new_notification("t1", request(Priority::Low, &["email"]), now);
    let replay = a.clone();
    // The newsletters are stored first; the critical event still leads.
    store.create(vec![b.clone()]).await.expect("create");
    store
        .create(vec![a.clone(), c.clone()])
        .await
        .expect("create");
    store.create(vec![replay]).await.expect("replayed key");
    let pending = store.outbox_pending(10).await.expect("pending");
    assert_eq!(pending.len(), 3, "one event per stored notification");
    let order: Vec<_> = pending
        .iter()
        .map(|e| {
            serde_json::from_str::<herald_core::events::NotificationRequested>(&e.payload)
                .expect("event json")
                .notification_id
        })
        .collect();
    assert_eq!(
        order,
        [a.id, b.id, c.id],
        "highest lane first, then outbox order"
    );
    assert!(pending[1].seq < pending[2].seq);
    assert_eq!(pending[0].lane, Priority::Critical);
    assert_eq!(pending[0].key, "a@example.com");
    assert_eq!(pending[0].correlation_id.as_deref(), Some("req-1"));
    let event: herald_core::events::NotificationRequested =
        serde_json::from_str(&pending[0].payload).expect("event json");
    assert_eq!(event.notification_id, a.id);
    assert_eq!(event.deliveries.len(), 2);
    store
        .outbox_published(vec![pending[0].seq])
        .await
        .expect("mark");
    let left = store.outbox_pending(10).await.expect("pending");
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].lane, Priority::Low);

    assert!(store.relay_lease("a", now, 1_000).await.expect("lease"));
    assert!(
        !store
            .relay_lease("b", now + 500, 1_000)
            .await
            .expect("lease"),
        "a holds it"
    );
    assert!(
        store
            .relay_lease("a", now + 900, 1_000)
            .await
            .expect("lease"),
        "a renews"
    );
    assert!(
        !store
            .relay_lease("b", now + 1_500, 1_000)
            .await
            .expect("lease"),
        "renewed"
    );
    assert!(
        store
            .relay_lease("b", now + 2_000, 1_000)
            .await
            .expect("lease"),
        "lapsed: b takes it"
    );
}

#[tokio::test]
async fn sqlite_the_outbox_holds_each_stored_event_until_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    the_outbox_holds_each_stored_event_until_published(&sqlite_with(&dir, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_outbox_holds_each_stored_event_until_published() {
    if let Some(store) = postgres_with("outbox", true).await {
        the_outbox_holds_each_stored_event_until_published(&store).await;
    }
}

#[tokio::test]
async fn memory_the_outbox_holds_each_stored_event_until_published() {
    the_outbox_holds_each_stored_event_until_published(&herald_store::MemoryStore::new(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_writers_lose_nothing_and_a_failing_write_fails_alone() {
    let store: Arc<dyn Store> = Arc::new(herald_store::MemoryStore::new(false));
    concurrent_creates(store.clone()).await;
    all_claimable(store.as_ref(), 400).await;
    let store: Arc<dyn Store> = Arc::new(herald_store::MemoryStore::new(false));
    a_failing_write_fails_alone(store).await;
}
