//! The Kafka bus's consumers against librdkafka's mock cluster and a real
//! SQLite store, fed by the outbox relay: every channel's group sees every
//! event and takes its own deliveries, workers of one channel split them,
//! and an event read again (another group, a restart before the offset was
//! committed) claims nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_bus::kafka::{producer, KafkaBus, KafkaOptions, Relay};
use herald_core::bus::Bus;
use herald_core::model::{Channel, DeliveryState, Priority};
use herald_core::store::roles::*;
use herald_core::store::{Claim, NewNotification};
use tokio_util::sync::CancellationToken;

mod common;

use common::{cluster, store, PREFIX};

/// Long: in these tests everything must come through Kafka.
const NO_SWEEP: Duration = Duration::from_secs(3_600);

fn options(brokers: &str, group_prefix: &str) -> KafkaOptions {
    KafkaOptions {
        brokers: brokers.to_owned(),
        topic_prefix: PREFIX.to_owned(),
        group_prefix: group_prefix.to_owned(),
    }
}

fn notification(i: usize) -> NewNotification {
    common::notification(i, &format!("r{i}@example.com"))
}

/// A worker's bus for one channel, with 60 s leases and no store sweep.
fn bus(
    store: &Arc<dyn Store>,
    opts: &KafkaOptions,
    channel: Channel,
    stop: &CancellationToken,
) -> KafkaBus {
    KafkaBus::start(
        store.clone(),
        opts,
        &[channel],
        Duration::from_secs(60),
        NO_SWEEP,
        stop.clone(),
    )
    .expect("bus")
}

fn start_relay(store: &Arc<dyn Store>, brokers: &str, stop: &CancellationToken) {
    let relay = Relay {
        store: store.clone(),
        producer: producer(&options(brokers, PREFIX)).expect("producer"),
        topic_prefix: PREFIX.to_owned(),
        holder: "relay".into(),
        batch: 100,
        lease: Duration::from_secs(5),
        idle: Duration::from_millis(20),
        traced: None,
    };
    tokio::spawn(relay.run(stop.clone()));
}

/// What every test here runs on: the mock cluster, a SQLite store with the
/// outbox on, and a relay publishing it; `stop` stops the relay.
struct Fleet {
    _cluster: common::Cluster,
    _dir: tempfile::TempDir,
    brokers: String,
    store: Arc<dyn Store>,
    stop: CancellationToken,
}

impl Fleet {
    async fn start() -> Fleet {
        let (cluster, brokers) = cluster(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        let stop = CancellationToken::new();
        start_relay(&store, &brokers, &stop);
        Fleet {
            _cluster: cluster,
            _dir: dir,
            brokers,
            store,
            stop,
        }
    }
}

/// Takes from `bus`, every lane, highest first, for `within`, or until
/// `enough` in all; returns delivery id → channel.
async fn drain(
    buses: &[(&KafkaBus, Channel)],
    enough: usize,
    within: Duration,
) -> Vec<HashMap<uuid::Uuid, Channel>> {
    let mut got: Vec<HashMap<uuid::Uuid, Channel>> = vec![HashMap::new(); buses.len()];
    let deadline = Instant::now() + within;
    while got.iter().map(HashMap::len).sum::<usize>() < enough && Instant::now() < deadline {
        for (i, (bus, channel)) in buses.iter().enumerate() {
            for lane in Priority::ALL {
                for d in bus.take(*channel, lane, 64).await.expect("take") {
                    assert_eq!(d.priority, lane, "taken from its lane");
                    let again = got[i].insert(d.id, d.channel);
                    assert!(again.is_none(), "{} taken twice", d.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got
}

#[tokio::test(flavor = "current_thread")]
async fn every_channel_group_sees_every_event_and_takes_its_own_deliveries() {
    let fleet = Fleet::start().await;
    let (brokers, store, stop) = (&fleet.brokers, &fleet.store, &fleet.stop);
    let opts = options(brokers, "herald");
    let email = bus(store, &opts, Channel::Email, stop);
    let sms = bus(store, &opts, Channel::Sms, stop);

    let sent: Vec<NewNotification> = (0..100).map(notification).collect();
    store.create(sent.clone()).await.expect("create");
    let got = drain(
        &[(&email, Channel::Email), (&sms, Channel::Sms)],
        200,
        Duration::from_secs(30),
    )
    .await;
    stop.cancel();
    email.close().await;
    sms.close().await;

    assert_eq!(
        got[0].len(),
        100,
        "the email group took every email delivery"
    );
    assert_eq!(got[1].len(), 100, "the sms group took every sms delivery");
    assert!(got[0].values().all(|c| *c == Channel::Email));
    assert!(got[1].values().all(|c| *c == Channel::Sms));
    for n in &sent {
        for d in &n.deliveries {
            let taken = got[0].contains_key(&d.id) || got[1].contains_key(&d.id);
            assert!(taken, "delivery {} of {} was taken", d.id, n.id);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn workers_of_a_channel_split_its_events_and_a_reread_event_claims_nothing() {
    let fleet = Fleet::start().await;
    let (brokers, store, stop) = (&fleet.brokers, &fleet.store, &fleet.stop);
    let opts = options(brokers, "herald");
    // Two email workers in one group.
    let a = bus(store, &opts, Channel::Email, stop);
    let b = bus(store, &opts, Channel::Email, stop);
    store
        .create((0..200).map(notification).collect())
        .await
        .expect("create");
    let got = drain(
        &[(&a, Channel::Email), (&b, Channel::Email)],
        200,
        Duration::from_secs(30),
    )
    .await;
    let (by_a, by_b) = (got[0].len(), got[1].len());
    assert_eq!(by_a + by_b, 200, "every email delivery taken");
    assert!(
        got[0].keys().all(|id| !got[1].contains_key(id)),
        "none by both"
    );

    // A worker reading every event again from the start (a new group here;
    // in production, a restart before its offsets were committed) claims
    // nothing: the deliveries are leased already.
    let replay = bus(store, &options(brokers, "replay"), Channel::Email, stop);
    let again = drain(&[(&replay, Channel::Email)], 1, Duration::from_secs(8)).await;
    stop.cancel();
    for worker in [&a, &b, &replay] {
        worker.close().await;
    }
    assert!(
        again[0].is_empty(),
        "an event read twice sends nothing: {}",
        again[0].len()
    );
    eprintln!("split between two workers: {by_a} and {by_b}");
}

/// The states of `notifications`' email deliveries, by lane.
async fn email_states(
    store: &Arc<dyn Store>,
    notifications: &[NewNotification],
) -> HashMap<Priority, Vec<DeliveryState>> {
    let mut by_lane: HashMap<Priority, Vec<DeliveryState>> = HashMap::new();
    for n in notifications {
        let view = store
            .notification(&n.tenant_id, n.id)
            .await
            .expect("read")
            .expect("stored");
        for d in view
            .deliveries
            .iter()
            .filter(|d| d.channel == Channel::Email)
        {
            by_lane.entry(n.request.priority).or_default().push(d.state);
        }
    }
    by_lane
}

/// Waits until every email delivery of `notifications` is `sending`
/// (claimed by the bus into its buffers).
async fn until_all_claimed(store: &Arc<dyn Store>, notifications: &[NewNotification]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = email_states(store, notifications).await;
        if states
            .values()
            .flatten()
            .all(|s| *s == DeliveryState::Sending)
        {
            return;
        }
        assert!(Instant::now() < deadline, "not claimed in time: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When every route of a lane is closed the dispatcher defers it: the bus
/// gives back what it had claimed for the lane (queued again, not in
/// doubt: no worker had it) and claims none of the lane's new events until
/// the lane is taken from again; the other lanes go on.
#[tokio::test(flavor = "current_thread")]
async fn a_deferred_lane_gives_its_claims_back_and_takes_no_more_until_taken_from() {
    let fleet = Fleet::start().await;
    let (brokers, store, stop) = (&fleet.brokers, &fleet.store, &fleet.stop);
    let email = bus(store, &options(brokers, "herald"), Channel::Email, stop);

    let first: Vec<NewNotification> = (0..40).map(notification).collect();
    store.create(first.clone()).await.expect("create");
    until_all_claimed(store, &first).await;

    email.defer(Channel::Email, Priority::Normal).await;
    let states = email_states(store, &first).await;
    assert!(
        states[&Priority::Normal]
            .iter()
            .all(|s| *s == DeliveryState::Queued),
        "given back: {:?}",
        states[&Priority::Normal]
    );
    assert!(
        states[&Priority::High]
            .iter()
            .all(|s| *s == DeliveryState::Sending),
        "other lanes keep theirs"
    );

    // New events while deferred: the lane claims none of them.
    let second: Vec<NewNotification> = (40..80).map(notification).collect();
    store.create(second.clone()).await.expect("create");
    let others: Vec<NewNotification> = second
        .iter()
        .filter(|n| n.request.priority != Priority::Normal)
        .cloned()
        .collect();
    until_all_claimed(store, &others).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let states = email_states(store, &second).await;
    assert!(
        states[&Priority::Normal]
            .iter()
            .all(|s| *s == DeliveryState::Queued),
        "nothing claimed while deferred: {:?}",
        states[&Priority::Normal]
    );

    // Taken from again: the lane's new events flow.
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken < 10 && Instant::now() < deadline {
        taken += email
            .take(Channel::Email, Priority::Normal, 64)
            .await
            .expect("take")
            .len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    email.close().await;
    assert_eq!(taken, 10, "the second batch's normal lane, once resumed");

    // What was given back waits in the store for a sweep, due and not in
    // doubt.
    let swept = store
        .claim(Claim::new(
            Channel::Email,
            Priority::Normal,
            64,
            herald_core::now_ms(),
            60_000,
        ))
        .await
        .expect("claim");
    assert_eq!(swept.len(), 10);
    assert!(swept.iter().all(|d| !d.in_doubt && d.attempt == 1));
}

/// Workers join and leave a channel's group while its events stream in:
/// each rebalance moves partitions, and what a leaving worker had claimed
/// but not handed out is given back, not stranded under its lease. Every
/// delivery ends up taken exactly once, by the store sweep at most for
/// what was given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_and_leaving_mid_stream_take_every_delivery_once() {
    let fleet = Fleet::start().await;
    let (brokers, store, stop) = (&fleet.brokers, &fleet.store, &fleet.stop);
    let opts = options(brokers, "herald");
    let sweep = Duration::from_millis(500);
    let start = |stop: &CancellationToken| {
        KafkaBus::start(
            store.clone(),
            &opts,
            &[Channel::Email],
            Duration::from_secs(60),
            sweep,
            stop.clone(),
        )
        .expect("bus")
    };

    const TOTAL: usize = 600;
    let mut taken: HashMap<uuid::Uuid, usize> = HashMap::new();
    let a = start(stop);
    let mut joined: Option<KafkaBus> = None;
    let mut left = false;
    let mut by = [0usize; 2];
    // Shorter than the lease: a stranded claim would not come back in time.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut created = 0;
    while taken.len() < TOTAL && Instant::now() < deadline {
        // Events keep streaming in, a little ahead of the workers.
        if created < TOTAL && created - taken.len() < 100 {
            let batch: Vec<NewNotification> = (created..created + 20).map(notification).collect();
            store.create(batch).await.expect("create");
            created += 20;
        }
        // A second worker joins once the first is well under way. Once the
        // second has partitions of its own the first stops taking, and
        // leaves with the work it claimed meanwhile not handed out.
        if joined.is_none() && by[0] >= TOTAL / 6 {
            joined = Some(start(stop));
        }
        let stalled = by[1] >= 20;
        if !left && stalled && created - taken.len() >= 60 {
            a.close().await;
            left = true;
        }
        let mut workers: Vec<(usize, &KafkaBus, usize)> = Vec::new();
        if !left && !stalled {
            workers.push((0, &a, 4));
        }
        if let Some(b) = &joined {
            workers.push((1, b, 64));
        }
        for (i, w, limit) in workers {
            for lane in Priority::ALL {
                for d in w.take(Channel::Email, lane, limit).await.expect("take") {
                    *taken.entry(d.id).or_default() += 1;
                    by[i] += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.cancel();
    if let Some(b) = &joined {
        b.close().await;
    }
    eprintln!(
        "taken by the worker that left: {}, by the one that joined: {}",
        by[0], by[1]
    );
    assert!(left, "the first worker left mid-stream");
    let twice = taken.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "deliveries taken twice");
    assert_eq!(taken.len(), TOTAL, "every email delivery taken");
}

/// What only the store sweep brings (retries come due, a circuit's
/// deferrals, deliveries given back, events lost: here, events no relay
/// published) drains at the pace of the takes, not one pool's room per
/// sweep interval: a sweep that comes back full is followed by another at
/// the next take.
#[tokio::test(flavor = "current_thread")]
async fn the_sweep_goes_on_while_it_comes_back_full() {
    let (_cluster, brokers) = cluster(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let stop = CancellationToken::new();
    // No relay: Kafka brings none of these.
    let stored: Vec<NewNotification> = (0..80).map(notification).collect();
    store.create(stored).await.expect("create");
    let sweep = Duration::from_millis(300);
    let email = KafkaBus::start(
        store.clone(),
        &options(&brokers, "herald"),
        &[Channel::Email],
        Duration::from_secs(60),
        sweep,
        stop.clone(),
    )
    .expect("bus");
    // Settled, and the first sweep is due.
    tokio::time::sleep(sweep * 2).await;

    // Twenty normal-lane email deliveries wait; a worker with room for
    // four takes six times in a row, well within one sweep interval.
    let mut taken = Vec::new();
    for _ in 0..6 {
        taken.extend(
            email
                .take(Channel::Email, Priority::Normal, 4)
                .await
                .expect("take"),
        );
    }
    stop.cancel();
    email.close().await;
    assert_eq!(taken.len(), 20, "every waiting delivery swept at once");
    let unique: std::collections::HashSet<_> = taken.iter().map(|d| d.id).collect();
    assert_eq!(unique.len(), 20, "none twice");
}
