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
use herald_core::model::{Channel, Priority};
use herald_core::store::{NewNotification, Store};
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
    };
    tokio::spawn(relay.run(stop.clone()));
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
    let (_cluster, brokers) = cluster(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let stop = CancellationToken::new();
    start_relay(&store, &brokers, &stop);
    let opts = options(&brokers, "herald");
    let email = bus(&store, &opts, Channel::Email, &stop);
    let sms = bus(&store, &opts, Channel::Sms, &stop);

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
    let (_cluster, brokers) = cluster(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let stop = CancellationToken::new();
    start_relay(&store, &brokers, &stop);
    let opts = options(&brokers, "herald");
    // Two email workers in one group.
    let a = bus(&store, &opts, Channel::Email, &stop);
    let b = bus(&store, &opts, Channel::Email, &stop);
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
    let replay = bus(&store, &options(&brokers, "replay"), Channel::Email, &stop);
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
