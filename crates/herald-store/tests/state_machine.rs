//! The delivery state machine under any sequence of events, against the real
//! (SQLite) store: two workers claim, call the vendor, record, crash, give
//! back; time passes and leases run out; the expiry sweep runs; dead
//! letters are replayed. Workers keep the engine's rule: a vendor call
//! starts only if the claim's lease covers it (`herald_core::lease`).
//!
//! What must hold, whatever happens:
//! 1. every request to the vendor carries the delivery's one key;
//! 2. no request goes out after the store has recorded the delivery sent;
//! 3. the store never hands out a lease while another is still good;
//! 4. a worker whose lease was taken over changes nothing by recording.
//!
//! Cases run: `PROPTEST_CASES` (CI fixes it), 512 by default. With the
//! lease rule taken out of the workers, a few hundred cases find the
//! second send (a stale holder calling after another recorded it sent);
//! `a_stale_holder_never_calls_after_the_next_one_sent` pins that case.

use std::time::Duration;

use herald_core::lease::Lease;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::store::roles::*;
use herald_core::store::{
    AttemptRecord, CallRecord, Claim, ClaimedDelivery, LeaseToken, NewDelivery, NewNotification,
    Next, ReplayOutcome,
};
use herald_store::{SqliteOptions, SqliteStore};
use proptest::prelude::*;

const LEASE_MS: i64 = 2_000;
/// The longest a vendor call may take (the provider's request timeout).
const CALL: Duration = Duration::from_millis(500);
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Accepted,
    Transient,
    /// A timeout after the request went out: the vendor may have it.
    Ambiguous,
    Permanent,
    RateLimited,
}

#[derive(Debug, Clone)]
enum Op {
    /// The worker claims: by the delivery's id (a bus event) or by lane.
    Claim {
        worker: usize,
        by_id: bool,
    },
    /// The worker calls the vendor under the claim it holds, if its lease
    /// covers a call.
    Call {
        worker: usize,
        answer: Answer,
    },
    /// The worker records what its claim came to.
    Record {
        worker: usize,
    },
    /// The worker dies: it forgets its claim; its lease runs out.
    Crash {
        worker: usize,
    },
    /// The worker gives its claim back (shutdown).
    Release {
        worker: usize,
        started: bool,
    },
    /// Time passes.
    Advance {
        ms: u16,
    },
    Expire,
    Replay,
}

fn op() -> impl Strategy<Value = Op> {
    let worker = 0..2usize;
    let answer = prop_oneof![
        5 => Just(Answer::Accepted),
        2 => Just(Answer::Transient),
        2 => Just(Answer::Ambiguous),
        1 => Just(Answer::Permanent),
        1 => Just(Answer::RateLimited),
    ];
    prop_oneof![
        6 => (worker.clone(), any::<bool>()).prop_map(|(worker, by_id)| Op::Claim { worker, by_id }),
        6 => (worker.clone(), answer).prop_map(|(worker, answer)| Op::Call { worker, answer }),
        3 => worker.clone().prop_map(|worker| Op::Record { worker }),
        1 => worker.clone().prop_map(|worker| Op::Crash { worker }),
        1 => (worker, any::<bool>()).prop_map(|(worker, started)| Op::Release { worker, started }),
        // A moment, or past a lease: both matter.
        2 => (0u16..300).prop_map(|ms| Op::Advance { ms }),
        2 => (2_000u16..2_600).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        1 => Just(Op::Replay),
    ]
}

/// What a worker holds: its claim and the calls made under it.
struct Held {
    claim: ClaimedDelivery,
    calls: Vec<(Answer, i64)>,
}

fn next_of(held: &Held, now: i64) -> Next {
    let Some((answer, _)) = held.calls.last() else {
        return Next::Deferred(now);
    };
    match answer {
        Answer::Accepted => Next::Sent {
            vendor_id: Some("v-1".into()),
        },
        Answer::Permanent => Next::Failed,
        Answer::RateLimited => Next::RetryAt(now + 100),
        Answer::Transient | Answer::Ambiguous if held.claim.attempt >= MAX_ATTEMPTS => Next::Dead,
        Answer::Transient | Answer::Ambiguous => Next::RetryAt(now + 100),
    }
}

fn record_of(held: &Held, now: i64) -> AttemptRecord {
    let calls = held
        .calls
        .iter()
        .map(|(a, at)| CallRecord {
            provider: "sim".into(),
            started_at_ms: *at,
            latency_ms: 1,
            outcome: format!("{a:?}").to_lowercase(),
            status_code: None,
            error: None,
        })
        .collect();
    AttemptRecord {
        delivery_id: held.claim.id,
        lease_token: held.claim.lease_token,
        attempt: held.claim.attempt,
        calls,
        error: None,
        pin: None,
        ended_at_ms: now,
        next: next_of(held, now),
    }
}

async fn state(store: &dyn Store, tenant: &str, notification: uuid::Uuid) -> DeliveryState {
    store
        .notification(tenant, notification)
        .await
        .expect("read")
        .expect("exists")
        .deliveries[0]
        .state
}

/// The stores the property runs against: SQLite, and the in-memory one.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Memory,
}

async fn run(ops: Vec<Op>, ttl_ms: Option<i64>, backend: Backend) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Box<dyn Store> = match backend {
        Backend::Sqlite => Box::new(
            SqliteStore::open(&SqliteOptions {
                path: dir.path().join("herald.db"),
                max_batch: 64,
                read_connections: 1,
                outbox: false,
                timeout: Duration::from_secs(5),
            })
            .await
            .expect("open"),
        ),
        Backend::Memory => Box::new(herald_store::MemoryStore::new(false)),
    };
    let store = store.as_ref();
    let mut now = herald_core::now_ms();
    let req: NotificationRequest = serde_json::from_value(serde_json::json!({
        "priority": "high", "channels": ["sms"],
        "recipient": {"phone": "+14155550100"}, "content": {"text": "t"}
    }))
    .expect("request");
    let key = uuid::Uuid::now_v7();
    let notification = uuid::Uuid::now_v7();
    store
        .create(vec![NewNotification {
            id: notification,
            tenant_id: "t".into(),
            request: req,
            accepted_at_ms: now,
            due_at_ms: now,
            expires_at_ms: ttl_ms.map(|t| now + t),
            deliveries: vec![NewDelivery {
                id: key,
                channel: Channel::Sms,
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

    let mut workers: [Option<Held>; 2] = [None, None];
    let mut sent_recorded = false;
    // The lease the store holds the delivery under, as the model knows it.
    let mut current: Option<LeaseToken> = None;
    for op in ops {
        match op {
            Op::Advance { ms } => now += i64::from(ms),
            Op::Claim { worker, by_id } => {
                if workers[worker].is_some() {
                    continue; // a worker holds one claim at a time here
                }
                let claimed = if by_id {
                    store.claim_ids(vec![key], now, LEASE_MS).await
                } else {
                    store
                        .claim(Claim::new(Channel::Sms, Priority::High, 10, now, LEASE_MS))
                        .await
                }
                .expect("claim");
                if let Some(c) = claimed.into_iter().next() {
                    // 1: the one key.
                    prop_assert_eq!(c.id, key);
                    prop_assert!(!sent_recorded, "a delivery recorded sent was claimed again");
                    // 3: nobody else holds a good lease now.
                    let other = &workers[1 - worker];
                    if let Some(o) = other {
                        prop_assert!(
                            o.claim.lease_until_ms <= now,
                            "a second lease while the first was good until {} (now {now})",
                            o.claim.lease_until_ms
                        );
                    }
                    prop_assert_eq!(c.lease_until_ms, now + LEASE_MS);
                    current = Some(c.lease_token);
                    workers[worker] = Some(Held {
                        claim: c,
                        calls: Vec::new(),
                    });
                }
            }
            Op::Call { worker, answer } => {
                let Some(held) = workers[worker].as_mut() else {
                    continue;
                };
                let lease = Lease {
                    until_ms: held.claim.lease_until_ms,
                };
                // The engine's rule, right before the request leaves.
                if !lease.covers(now, CALL) {
                    continue;
                }
                // 2: nothing goes out once the store says sent.
                prop_assert!(
                    !sent_recorded,
                    "a request went out for a delivery already recorded sent"
                );
                prop_assert_eq!(held.claim.id, key);
                held.calls.push((answer, now));
            }
            Op::Record { worker } => {
                let Some(held) = workers[worker].take() else {
                    continue;
                };
                let before = state(store, "t", notification).await;
                let rec = record_of(&held, now);
                let wants = rec.next.state();
                store.record(vec![rec]).await.expect("record");
                let after = state(store, "t", notification).await;
                if current == Some(held.claim.lease_token) {
                    prop_assert_eq!(after, wants, "the holder's record was not applied");
                    sent_recorded |= wants == DeliveryState::Sent;
                    current = None;
                } else {
                    // 4: a stale holder (taken over, or given back) changes
                    // nothing.
                    prop_assert_eq!(after, before, "a stale holder moved the delivery");
                }
            }
            Op::Crash { worker } => workers[worker] = None,
            Op::Release { worker, started } => {
                if let Some(held) = workers[worker].take() {
                    // A holder that called must record, not release: the
                    // engine releases only what it never finished.
                    if held.calls.is_empty() || started {
                        store
                            .release(vec![(held.claim.id, held.claim.lease_token)], started)
                            .await
                            .expect("release");
                        if current == Some(held.claim.lease_token) {
                            current = None;
                        }
                    }
                }
            }
            Op::Expire => {
                store.expire_overdue(now).await.expect("expire");
            }
            Op::Replay => {
                let r = store
                    .replay_dead_letter(Some("t"), key)
                    .await
                    .expect("replay");
                if r == ReplayOutcome::Replayed {
                    prop_assert!(!sent_recorded, "a sent delivery was replayed");
                }
            }
        }
        // The store's view agrees with what the model saw recorded.
        if sent_recorded {
            prop_assert_eq!(state(store, "t", notification).await, DeliveryState::Sent);
        }
    }
    Ok(())
}

/// The case the property is after, spelled out: A's lease runs out, B
/// takes the delivery over and sends it, and A — back from a pause — may
/// not call.
#[test]
fn a_stale_holder_never_calls_after_the_next_one_sent() {
    let ops = vec![
        Op::Claim {
            worker: 0,
            by_id: true,
        },
        Op::Advance { ms: 2_100 },
        Op::Claim {
            worker: 1,
            by_id: false,
        },
        Op::Call {
            worker: 1,
            answer: Answer::Accepted,
        },
        Op::Record { worker: 1 },
        Op::Call {
            worker: 0,
            answer: Answer::Accepted,
        },
        Op::Record { worker: 0 },
    ];
    for backend in [Backend::Sqlite, Backend::Memory] {
        on_a_runtime(run(ops.clone(), None, backend)).expect("holds");
    }
}

/// Runs a scenario to its end on a runtime of its own (proptest's cases
/// are synchronous).
fn on_a_runtime<T>(scenario: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scenario)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_sequence_of_events_sends_a_delivery_twice_or_under_another_key(
        ops in prop::collection::vec(op(), 1..40),
        ttl_ms in prop::option::of(500i64..20_000),
    ) {
        on_a_runtime(run(ops, ttl_ms, Backend::Sqlite))?;
    }

    #[test]
    fn the_in_memory_store_keeps_the_same_promise(
        ops in prop::collection::vec(op(), 1..40),
        ttl_ms in prop::option::of(500i64..20_000),
    ) {
        on_a_runtime(run(ops, ttl_ms, Backend::Memory))?;
    }
}
