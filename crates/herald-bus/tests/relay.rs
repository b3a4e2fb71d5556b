//! The outbox relay against librdkafka's mock cluster (real Kafka protocol,
//! in process, three brokers) and a real SQLite store: every stored
//! notification's event is published once, on its lane's topic, keyed by
//! recipient, with its headers; relays on several nodes take turns through
//! the lease, and one that stops is taken over without gaps; what Kafka
//! refuses waits in the outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_bus::kafka::{producer, topic, KafkaOptions, Relay};
use herald_core::events::NotificationRequested;
use herald_core::model::Priority;
use herald_core::store::roles::*;
use herald_core::store::NewNotification;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

mod common;

use common::{cluster, store, PREFIX};

/// Notification `i`, to one of five recipients, so each recipient has many
/// events whose order can be checked.
fn notification(i: usize) -> NewNotification {
    common::notification(i, &format!("r{}@example.com", i % 5))
}

fn relay(store: &Arc<dyn Store>, brokers: &str, holder: &str) -> Relay {
    let opts = KafkaOptions {
        brokers: brokers.to_owned(),
        topic_prefix: PREFIX.to_owned(),
        group_prefix: "herald".to_owned(),
    };
    Relay {
        store: store.clone(),
        producer: producer(&opts).expect("producer"),
        topic_prefix: PREFIX.to_owned(),
        holder: holder.to_owned(),
        batch: 64,
        lease: Duration::from_millis(600),
        idle: Duration::from_millis(20),
        traced: None,
    }
}

/// One consumed event: its topic, partition, offset, key, headers, body.
struct Got {
    topic: String,
    partition: i32,
    key: String,
    headers: HashMap<String, String>,
    event: NotificationRequested,
}

/// Reads every lane's topic from the start until `n` events came or
/// `within` passed.
async fn consume(brokers: &str, n: usize, within: Duration) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topics: Vec<String> = Priority::ALL.iter().map(|l| topic(PREFIX, *l)).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < n && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            tokio::task::yield_now().await;
            continue;
        };
        let m = m.expect("message");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), v.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        got.push(Got {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            headers,
            event: serde_json::from_slice(m.payload().unwrap_or_default()).expect("event json"),
        });
    }
    got
}

#[tokio::test(flavor = "current_thread")]
async fn the_relay_publishes_every_event_once_in_order_with_its_headers() {
    let (_cluster, brokers) = cluster(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let sent: Vec<NewNotification> = (0..200).map(notification).collect();
    for chunk in sent.chunks(50) {
        store.create(chunk.to_vec()).await.expect("create");
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay(&store, &brokers, "node-a").run(stop.clone()));

    let got = consume(&brokers, sent.len(), Duration::from_secs(30)).await;
    stop.cancel();
    task.await.expect("relay task");

    assert_eq!(got.len(), sent.len(), "every event arrived");
    let mut seen = HashMap::new();
    for g in &got {
        *seen.entry(g.event.notification_id).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "each event once");
    let by_id: HashMap<_, _> = sent.iter().map(|n| (n.id, n)).collect();
    for g in &got {
        let n = by_id[&g.event.notification_id];
        assert_eq!(
            g.topic,
            topic(PREFIX, n.request.priority),
            "its lane's topic"
        );
        assert_eq!(g.key, n.request.recipient.email.clone().expect("email"));
        assert_eq!(g.event.version, 1);
        assert_eq!(g.event.deliveries.len(), 2, "both channels' deliveries");
        assert_eq!(g.headers["tenant"], "acme");
        assert_eq!(g.headers["event"], "herald.notification_requested");
        assert_eq!(
            g.headers["x-request-id"],
            n.correlation_id.clone().expect("id")
        );
        assert!(g.headers["traceparent"].starts_with("00-4bf92f35"));
    }
    // Per recipient, within a topic, events come in the order stored.
    let order: HashMap<_, _> = sent.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut last: HashMap<(String, i32, String), usize> = HashMap::new();
    for g in &got {
        let i = order[&g.event.notification_id];
        let slot = last
            .entry((g.topic.clone(), g.partition, g.key.clone()))
            .or_insert(0);
        assert!(
            i >= *slot,
            "{} came after a later event of its recipient",
            g.event.notification_id
        );
        *slot = i;
    }
    assert!(
        store.outbox_pending(10).await.expect("pending").is_empty(),
        "all marked published"
    );
}

async fn drained(store: &Arc<dyn Store>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.outbox_pending(1).await.expect("pending").is_empty() {
        assert!(Instant::now() < deadline, "the outbox drains");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn distinct(got: &[Got]) -> usize {
    let mut ids: Vec<_> = got.iter().map(|g| g.event.notification_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

#[tokio::test(flavor = "current_thread")]
async fn relays_on_several_nodes_take_turns_and_one_that_stops_is_taken_over() {
    let (_cluster, brokers) = cluster(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;

    // A alone takes the lease and publishes.
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(relay(&store, &brokers, "node-a").run(stop_a.clone()));
    store
        .create((0..100).map(notification).collect())
        .await
        .expect("create");
    drained(&store).await;

    // B starts beside it; what is stored now is published once, by A.
    let b = tokio::spawn(relay(&store, &brokers, "node-b").run(stop_b.clone()));
    for chunk in (100..200).collect::<Vec<_>>().chunks(10) {
        store
            .create(chunk.iter().map(|i| notification(*i)).collect())
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    drained(&store).await;
    let got = consume(&brokers, 200, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 200, "nothing published twice by two relays");
    assert_eq!(distinct(&got), 200);

    // A stops (a crash: no hand-over); B takes over once A's lease runs out
    // and publishes what comes after.
    stop_a.cancel();
    a.await.expect("relay a");
    store
        .create((200..300).map(notification).collect())
        .await
        .expect("create");
    let all = consume(&brokers, 300, Duration::from_secs(30)).await;
    stop_b.cancel();
    b.await.expect("relay b");
    assert_eq!(all.len(), 300, "every event, once");
    assert_eq!(distinct(&all), 300, "no gap after the take-over");
    assert!(store.outbox_pending(10).await.expect("pending").is_empty());
}

/// While Kafka refuses what the relay produces, nothing is marked
/// published: the events wait in the outbox, and go out, once each, when
/// Kafka takes them again.
#[tokio::test(flavor = "current_thread")]
async fn events_kafka_refuses_stay_in_the_outbox_until_it_takes_them() {
    let (cluster, brokers) = cluster(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    // Every produce request refused, for good (not retried by the client).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1_000],
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay(&store, &brokers, "node-a").run(stop.clone()));
    store
        .create((0..50).map(notification).collect())
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.outbox_pending(100).await.expect("pending").len(),
        50,
        "nothing Kafka refused is marked published"
    );

    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    drained(&store).await;
    let got = consume(&brokers, 50, Duration::from_secs(30)).await;
    stop.cancel();
    task.await.expect("relay task");
    assert_eq!(got.len(), 50, "every event, once");
    assert_eq!(distinct(&got), 50);
}
