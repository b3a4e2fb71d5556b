//! The local bus's hand-off, on a real SQLite store: deliveries created
//! leased go to this node's workers from memory, never past work waiting
//! in the store, a claim batch at a time, and back to the store whenever
//! they cannot be sent under their lease (the lane deferred, the lease
//! run low while waiting, shutdown).

#[allow(dead_code)] // the Kafka tests' helpers are unused here
mod common;

use std::sync::Arc;
use std::time::Duration;

use herald_bus::LocalBus;
use herald_core::bus::Bus;
use herald_core::model::{Channel, Priority};
use herald_core::store::roles::*;
use herald_core::store::{Claim, ClaimedDelivery, NewNotification};

const LEASE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(3600);

fn bus(store: &Arc<dyn Store>, lease: Duration, cap: usize) -> LocalBus {
    LocalBus::new(store.clone(), lease, POLL).handing_off(&[Channel::Email], cap)
}

/// Notification `i` (email and SMS, its lane by `i % 4`), stored as the
/// API stores it: what the bus gives a place to is created leased and
/// handed over once stored. Its email delivery's id, and whether it was
/// handed.
async fn accept(store: &Arc<dyn Store>, bus: &LocalBus, i: usize) -> (uuid::Uuid, bool) {
    let mut n: NewNotification = common::notification(i, "a@example.com");
    let mut places = Vec::new();
    for (at, d) in n.deliveries.iter_mut().enumerate() {
        if let Some(place) = bus.reserve(d.channel, n.request.priority) {
            d.leased = Some(place.lease);
            places.push((at, place));
        }
    }
    let email = n.deliveries[0].id;
    let payload = serde_json::to_string(&n.request).expect("payload");
    let handed: Vec<_> = places
        .into_iter()
        .map(|(at, place)| {
            let lease = place.lease;
            let d = ClaimedDelivery::handed(&n, &n.deliveries[at], lease, payload.clone());
            (place, d)
        })
        .collect();
    let was_handed = !handed.is_empty();
    store.create(vec![n]).await.expect("create");
    bus.hand(handed).await;
    (email, was_handed)
}

#[tokio::test]
async fn handed_work_is_taken_from_memory_and_held_from_every_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::store(&dir).await;
    let bus = bus(&store, LEASE, 128);
    // Lane: i % 4 == 1 is high.
    let (email, handed) = accept(&store, &bus, 1).await;
    assert!(handed, "an idle lane with workers here is handed off to");
    let now = herald_core::now_ms();
    let claimed = store
        .claim(Claim::new(Channel::Email, Priority::High, 10, now, 60_000))
        .await
        .expect("claim");
    assert!(
        claimed.is_empty(),
        "the store holds it for its handed lease"
    );
    let taken = bus
        .take(Channel::Email, Priority::High, 10)
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, email);
    assert_eq!(taken[0].attempt, 1);
    assert!(!taken[0].in_doubt);
    assert!(taken[0].lease_until_ms >= now + 59_000);
    // SMS has no workers on this node: it was stored queued, for a claim.
    let sms = store
        .claim(Claim::new(Channel::Sms, Priority::High, 10, now, 60_000))
        .await
        .expect("claim");
    assert_eq!(sms.len(), 1, "not handed: no SMS workers here");
}

#[tokio::test]
async fn no_handoff_past_a_backlog_and_at_most_a_claim_batch_per_lane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::store(&dir).await;
    let bus = bus(&store, LEASE, 2);
    // Three handed at most two at a time: the third is queued.
    let mut handed = Vec::new();
    for i in [0, 4, 8] {
        handed.push(accept(&store, &bus, i).await.1);
    }
    assert_eq!(handed, [true, true, false], "two places in the lane");
    // A claim of one takes one handed delivery, which frees its place.
    let one = bus
        .take(Channel::Email, Priority::Critical, 1)
        .await
        .expect("take");
    assert_eq!(one.len(), 1);
    assert!(accept(&store, &bus, 12).await.1, "a place came free");

    // A claim that comes back full says the store holds a backlog: no
    // hand-off until a claim finds the lane drained.
    for i in [2, 6, 10] {
        let mut n = common::notification(i, "b@example.com");
        n.deliveries.truncate(1);
        store.create(vec![n]).await.expect("create");
    }
    bus.announce(&[(Channel::Email, Priority::Normal)]);
    let first = bus
        .take(Channel::Email, Priority::Normal, 2)
        .await
        .expect("take");
    assert_eq!(first.len(), 2, "full: more may wait");
    assert!(
        !accept(&store, &bus, 14).await.1,
        "behind a backlog: queued"
    );
    let rest = bus
        .take(Channel::Email, Priority::Normal, 10)
        .await
        .expect("take");
    assert_eq!(
        rest.len(),
        2,
        "the backlog's last and the one queued behind it"
    );
    assert!(
        accept(&store, &bus, 18).await.1,
        "drained: handed off again"
    );
}

#[tokio::test]
async fn handed_work_goes_back_to_the_store_when_deferred_stale_or_closing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::store(&dir).await;
    let lease = Duration::from_millis(400);
    let bus = bus(&store, lease, 128);
    let queued_at_once = |store: Arc<dyn Store>, lane: Priority| async move {
        store
            .claim(Claim::new(
                Channel::Email,
                lane,
                10,
                herald_core::now_ms(),
                60_000,
            ))
            .await
            .expect("claim")
    };

    // Deferred (its route is closed): given back, and no more is handed
    // until the lane is taken from again.
    let (low, handed) = accept(&store, &bus, 3).await;
    assert!(handed);
    bus.defer(Channel::Email, Priority::Low).await;
    assert!(!accept(&store, &bus, 7).await.1, "deferred: queued");
    let back = queued_at_once(store.clone(), Priority::Low).await;
    assert_eq!(back.len(), 2);
    assert!(back.iter().any(|d| d.id == low));
    assert!(
        back.iter().all(|d| d.attempt == 1 && !d.in_doubt),
        "given back before any call"
    );

    // Waited past half its lease: it goes back and a claim takes it under
    // a lease of its own.
    let (stale, handed) = accept(&store, &bus, 1).await;
    assert!(handed);
    tokio::time::sleep(lease / 2 + Duration::from_millis(50)).await;
    bus.announce(&[(Channel::Email, Priority::High)]);
    let taken = bus
        .take(Channel::Email, Priority::High, 10)
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, stale);
    assert!(
        taken[0].lease_until_ms >= herald_core::now_ms() + herald_core::ms(lease) - 100,
        "a fresh lease, not the one run low"
    );
    assert_eq!(taken[0].attempt, 1);

    // Closing gives back what was not taken, and what is handed after
    // (a request that was being stored as the node began to stop).
    let (before, _) = accept(&store, &bus, 0).await;
    let mut late = common::notification(8, "c@example.com");
    late.deliveries.truncate(1);
    let place = bus
        .reserve(Channel::Email, Priority::Critical)
        .expect("a place");
    late.deliveries[0].leased = Some(place.lease);
    let late_handed = ClaimedDelivery::handed(&late, &late.deliveries[0], place.lease, "{}".into());
    let late_id = late_handed.id;
    store.create(vec![late]).await.expect("create");
    bus.close().await;
    bus.hand(vec![(place, late_handed)]).await;
    assert!(
        bus.reserve(Channel::Email, Priority::Critical).is_none(),
        "closed"
    );
    let after = accept(&store, &bus, 4).await;
    assert!(!after.1);
    let back = queued_at_once(store.clone(), Priority::Critical).await;
    let ids: Vec<_> = back.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in [before, late_id, after.0] {
        assert!(ids.contains(&id), "{id} not given back: {ids:?}");
    }
}
