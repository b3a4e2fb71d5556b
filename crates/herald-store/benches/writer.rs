//! Micro-benchmarks of the store writer's hot operations on a real SQLite
//! file (WAL, synchronous=FULL, so each includes its fsync): claiming a
//! batch of due deliveries, and recording a batch of attempts (the state
//! update after the vendor answered).
//!
//! `cargo bench -p herald-store`; figures in docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald_core::model::{Channel, NotificationRequest, Priority};
use herald_core::store::roles::*;
use herald_core::store::{
    AttemptRecord, CallRecord, Claim, ClaimedDelivery, NewDelivery, NewNotification, Next,
};
use herald_store::{SqliteOptions, SqliteStore};

const BATCH: usize = 128;
const LEASE_MS: i64 = 60_000;

fn notification(now: i64) -> NewNotification {
    let request: NotificationRequest = serde_json::from_value(serde_json::json!({
        "priority": "normal",
        "channels": ["email"],
        "recipient": {"email": "ada@example.com"},
        "content": {"subject": "Order A-1 shipped", "text": "Your order A-1 is on its way."}
    }))
    .expect("fixture");
    NewNotification {
        id: uuid::Uuid::now_v7(),
        tenant_id: "bench".into(),
        deliveries: vec![NewDelivery {
            id: uuid::Uuid::now_v7(),
            channel: Channel::Email,
            target: 0,
            ended: None,
            held_until_ms: None,
            leased: None,
        }],
        request,
        accepted_at_ms: now,
        due_at_ms: now,
        expires_at_ms: None,
        idempotency: None,
        correlation_id: None,
        traceparent: None,
        cap: None,
    }
}

fn sent(d: &ClaimedDelivery, at: i64) -> AttemptRecord {
    AttemptRecord {
        delivery_id: d.id,
        lease_token: d.lease_token,
        attempt: d.attempt,
        calls: vec![CallRecord {
            provider: "sendgrid".into(),
            started_at_ms: at,
            latency_ms: 40,
            outcome: "accepted".into(),
            status_code: Some(202),
            error: None,
        }],
        error: None,
        pin: None,
        ended_at_ms: at + 40,
        next: Next::Sent {
            vendor_id: Some("msg-1".into()),
        },
    }
}

/// A store holding `BATCH` due deliveries for each of `rounds` claims.
async fn filled(dir: &tempfile::TempDir, rounds: usize) -> SqliteStore {
    let store = SqliteStore::open(&SqliteOptions {
        path: dir.path().join("bench.db"),
        max_batch: 512,
        read_connections: 1,
        outbox: false,
        timeout: std::time::Duration::from_secs(5),
    })
    .await
    .expect("open");
    let now = herald_core::now_ms();
    for _ in 0..rounds {
        store
            .create((0..BATCH).map(|_| notification(now)).collect())
            .await
            .expect("create");
    }
    store
}

fn claim_and_record(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt.block_on(filled(&dir, 8));
    let mut g = c.benchmark_group("store_writer");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("claim_batch_128", |b| {
        b.iter(|| {
            rt.block_on(async {
                let now = herald_core::now_ms();
                // A lease of 0: the rows are due again at once, so the queue
                // never runs dry (a re-claim does the same work as a claim).
                let claimed = store
                    .claim(Claim::new(Channel::Email, Priority::Normal, BATCH, now, 0))
                    .await
                    .expect("claim");
                assert_eq!(claimed.len(), BATCH, "the queue ran dry");
            })
        })
    });
    g.bench_function("record_batch_128", |b| {
        b.iter_batched(
            || {
                rt.block_on(async {
                    let now = herald_core::now_ms();
                    store
                        .create((0..BATCH).map(|_| notification(now)).collect())
                        .await
                        .expect("create");
                    store
                        .claim(Claim::new(
                            Channel::Email,
                            Priority::Normal,
                            BATCH,
                            now,
                            LEASE_MS,
                        ))
                        .await
                        .expect("claim")
                })
            },
            |claimed| {
                rt.block_on(async {
                    let now = herald_core::now_ms();
                    store
                        .record(claimed.iter().map(|d| sent(d, now)).collect())
                        .await
                        .expect("record");
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, claim_and_record);
criterion_main!(benches);
