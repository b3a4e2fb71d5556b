//! Kafka, the fleet's bus: the outbox relay and the consumers. Each notification's
//! `NotificationRequested` event is written to the outbox in the same
//! transaction as the notification (the store does that when opened with
//! `outbox`); the relay publishes unpublished events in outbox order with
//! the idempotent producer (`enable.idempotence`, `acks=all`) and then marks
//! them published. One topic per lane, `{prefix}.notifications.{lane}`;
//! the key is the recipient, so one recipient's events keep their order;
//! headers carry the tenant, the correlation id and W3C `traceparent`.
//!
//! Any number of nodes may run the relay: one at a time holds the store's
//! relay lease and publishes; the others wait, and take over when a holder
//! stops renewing it. Delivery is at least once: a relay that dies between
//! publishing and marking leaves those events to be published again, which
//! consumers absorb (a delivery row moves into `sending` once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::bus::{Bus, BusError};
use herald_core::events::{NotificationRequested, OutboxEvent};
use herald_core::model::{Channel, Priority};
use herald_core::store::{ClaimedDelivery, Store};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The relay's published events (label `lane`).
pub const PUBLISHED: &str = "herald_bus_published_total";

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,host:port`
    pub brokers: String,
    /// Topics are `{prefix}.notifications.{lane}`.
    pub topic_prefix: String,
    /// Consumer groups are `{prefix}-{channel}`.
    pub group_prefix: String,
}

/// The lane's topic.
pub fn topic(prefix: &str, lane: Priority) -> String {
    format!("{prefix}.notifications.{}", lane.as_str())
}

/// The idempotent producer the relay publishes with.
pub fn producer(opts: &KafkaOptions) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| anyhow::anyhow!("kafka producer for {}: {e}", opts.brokers))
}

pub struct Relay {
    pub store: Arc<dyn Store>,
    pub producer: FutureProducer,
    pub topic_prefix: String,
    /// This relay's name in the lease (unique per process).
    pub holder: String,
    /// Events read and published at a time.
    pub batch: usize,
    /// How long the lease lasts without renewal: a stopped relay's successor
    /// waits this long.
    pub lease: Duration,
    /// How long to wait when there is nothing to publish, or the lease is
    /// another relay's.
    pub idle: Duration,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let lease_ms = herald_core::ms(self.lease);
        tracing::info!(holder = %self.holder, "outbox relay started");
        while !shutdown.is_cancelled() {
            let published = match self
                .store
                .relay_lease(&self.holder, herald_core::now_ms(), lease_ms)
                .await
            {
                Ok(true) => self.publish_batch().await,
                Ok(false) => 0,
                Err(e) => {
                    tracing::warn!(error = %e, "relay lease failed; retrying");
                    0
                }
            };
            if published < self.batch {
                tokio::select! {
                    _ = tokio::time::sleep(self.idle) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        tracing::info!(holder = %self.holder, "outbox relay stopped");
    }

    /// Publishes the next batch of pending events and marks those Kafka
    /// acknowledged; returns how many were read.
    async fn publish_batch(&self) -> usize {
        let events = match self.store.outbox_pending(self.batch).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed; retrying");
                return 0;
            }
        };
        if events.is_empty() {
            return 0;
        }
        // Queue them all, in order, then await the acknowledgements: the
        // idempotent producer keeps each partition's order across retries.
        let topics = Priority::ALL.map(|lane| topic(&self.topic_prefix, lane));
        let mut acks = Vec::with_capacity(events.len());
        for e in &events {
            let record = FutureRecord::to(&topics[e.lane.index()])
                .key(&e.key)
                .payload(&e.payload)
                .headers(headers(e));
            acks.push((e.seq, e.lane, self.producer.send_result(record)));
        }
        let mut done = Vec::with_capacity(events.len());
        for (seq, lane, queued) in acks {
            let acked = match queued {
                Ok(ack) => matches!(ack.await, Ok(Ok(_))),
                Err((e, _)) => {
                    tracing::warn!(error = %e, seq, "could not queue an event; it stays in the outbox");
                    false
                }
            };
            if acked {
                metrics::counter!(PUBLISHED, "lane" => lane.as_str()).increment(1);
                done.push(seq);
            } else {
                tracing::warn!(
                    seq,
                    "kafka did not acknowledge an event; it will be published again"
                );
            }
        }
        if let Err(e) = self.store.outbox_published(done).await {
            // Published but not marked: published again later, at least once.
            tracing::warn!(error = %e, "marking events published failed");
        }
        events.len()
    }
}

fn headers(e: &OutboxEvent) -> OwnedHeaders {
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: "event",
            value: Some(herald_core::events::NOTIFICATION_REQUESTED),
        })
        .insert(Header {
            key: "tenant",
            value: Some(e.tenant_id.as_str()),
        });
    if let Some(id) = &e.correlation_id {
        h = h.insert(Header {
            key: "x-request-id",
            value: Some(id.as_str()),
        });
    }
    if let Some(tp) = &e.traceparent {
        h = h.insert(Header {
            key: "traceparent",
            value: Some(tp.as_str()),
        });
    }
    h
}

/// The Kafka bus, the workers' side: for each channel this node delivers,
/// one consumer per lane topic, all in the channel's consumer group
/// (`{group_prefix}-{channel}`), so every channel sees every event and the group's
/// workers split its partitions. A consumer takes its channel's deliveries
/// from each event with `claim_ids` (a repeated event claims nothing) and
/// only then stores the event's offset, so an offset is committed once the
/// delivery's new state is in the store. The dispatcher takes claimed
/// deliveries lane by lane, highest first, as from the local bus.
///
/// Retries coming due, leases run out (a worker died mid-call) and any
/// delivery whose event never came are not on Kafka: each lane also claims
/// from the store once every `sweep`, which is how they re-enter.
pub struct KafkaBus {
    store: Arc<dyn Store>,
    lease: Duration,
    sweep: Duration,
    lanes: HashMap<Channel, [LaneBuffer; 4]>,
    wake: HashMap<Channel, Arc<Notify>>,
    consumers: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

struct LaneBuffer {
    rx: tokio::sync::Mutex<mpsc::Receiver<ClaimedDelivery>>,
    /// When the store was last swept for this lane (Unix ms).
    swept_at_ms: AtomicI64,
}

/// Claimed deliveries waiting for a worker slot, per lane. A consumer
/// claims only what fits, so nothing waits long under a lease.
const BUFFER: usize = 256;

impl KafkaBus {
    /// Starts the consumers for `channels`; they stop with `shutdown`.
    pub fn start(
        store: Arc<dyn Store>,
        opts: &KafkaOptions,
        channels: &[Channel],
        lease: Duration,
        sweep: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<KafkaBus> {
        let mut lanes = HashMap::new();
        let mut wake = HashMap::new();
        let mut consumers = tokio::task::JoinSet::new();
        for &channel in channels {
            let notify = Arc::new(Notify::new());
            let mut buffers = Vec::with_capacity(4);
            for lane in Priority::ALL {
                let (tx, rx) = mpsc::channel(BUFFER);
                let consumer = consumer(opts, channel, lane)?;
                let lane_consumer = LaneConsumer {
                    consumer,
                    store: store.clone(),
                    channel,
                    lease,
                    tx,
                    wake: notify.clone(),
                };
                consumers.spawn(lane_consumer.run(shutdown.clone()));
                buffers.push(LaneBuffer {
                    rx: tokio::sync::Mutex::new(rx),
                    // The first sweep comes a `sweep` after the start:
                    // until then, work comes through Kafka.
                    swept_at_ms: AtomicI64::new(herald_core::now_ms()),
                });
            }
            let buffers: [LaneBuffer; 4] = buffers
                .try_into()
                .map_err(|_| anyhow::anyhow!("four lanes"))?;
            lanes.insert(channel, buffers);
            wake.insert(channel, notify);
        }
        Ok(KafkaBus {
            store,
            lease,
            sweep,
            lanes,
            wake,
            consumers: tokio::sync::Mutex::new(consumers),
        })
    }

    /// After `shutdown` (given to `start`) is cancelled: waits for the
    /// consumers to close, leaving their groups, so the partitions move to
    /// the other workers at once rather than after a session timeout.
    pub async fn stopped(&self) {
        let mut consumers = self.consumers.lock().await;
        while consumers.join_next().await.is_some() {}
    }
}

/// A consumer in the channel's group for one lane's topic.
fn consumer(
    opts: &KafkaOptions,
    channel: Channel,
    lane: Priority,
) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set(
            "group.id",
            format!("{}-{}", opts.group_prefix, channel.as_str()),
        )
        .set("enable.auto.commit", "true")
        // Offsets are stored by hand, after the claim is recorded.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A consumer waits for room in its buffer without polling; give it
        // longer than a flood of low-lane work should ever hold it.
        .set("max.poll.interval.ms", "900000")
        // A worker that dies hands its partitions on within 10 s.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .map_err(|e| anyhow::anyhow!("kafka consumer for {}: {e}", opts.brokers))?;
    c.subscribe(&[&topic(&opts.topic_prefix, lane)])
        .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", topic(&opts.topic_prefix, lane)))?;
    Ok(c)
}

struct LaneConsumer {
    consumer: StreamConsumer,
    store: Arc<dyn Store>,
    channel: Channel,
    lease: Duration,
    tx: mpsc::Sender<ClaimedDelivery>,
    wake: Arc<Notify>,
}

impl LaneConsumer {
    async fn run(self, shutdown: CancellationToken) {
        self.consume(&shutdown).await;
        // Closing leaves the group, which waits for the group to rebalance:
        // done on a blocking thread, so the other consumers (of this node
        // too) keep running and leave at the same time.
        let LaneConsumer { consumer, .. } = self;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }

    async fn consume(&self, shutdown: &CancellationToken) {
        let lease_ms = herald_core::ms(self.lease);
        loop {
            let message = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.cancelled() => return,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let ids = match Self::ids(message.payload(), self.channel) {
                Ok(ids) => ids,
                Err(why) => {
                    // Not ours to read (an unknown schema or version): it
                    // stays on the topic for whoever can; we move on.
                    tracing::warn!(channel = %self.channel, offset = message.offset(), "skipping an event: {why}");
                    Vec::new()
                }
            };
            if !ids.is_empty() {
                // Room first, then the claim: a claimed delivery never
                // waits in the buffer for long under its lease.
                let permits = tokio::select! {
                    p = self.tx.reserve_many(ids.len()) => p,
                    _ = shutdown.cancelled() => return,
                };
                let Ok(permits) = permits else { return };
                let claimed = loop {
                    match self
                        .store
                        .claim_ids(ids.clone(), herald_core::now_ms(), lease_ms)
                        .await
                    {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::warn!(channel = %self.channel, error = %e, "claiming an event's deliveries failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = shutdown.cancelled() => return,
                            }
                        }
                    }
                };
                if !claimed.is_empty() {
                    for (permit, d) in permits.zip(claimed) {
                        permit.send(d);
                    }
                    self.wake.notify_one();
                }
            }
            if let Err(e) = self.consumer.store_offset_from_message(&message) {
                tracing::warn!(channel = %self.channel, error = %e, "storing an offset failed; the event may be read again");
            }
        }
    }

    /// The deliveries of `channel` an event names.
    fn ids(payload: Option<&[u8]>, channel: Channel) -> Result<Vec<uuid::Uuid>, String> {
        let payload = payload.ok_or("no payload")?;
        let event: NotificationRequested = serde_json::from_slice(payload)
            .map_err(|e| format!("not a NotificationRequested: {e}"))?;
        if event.schema != herald_core::events::NOTIFICATION_REQUESTED
            || event.version != NotificationRequested::VERSION
        {
            return Err(format!("schema {} version {}", event.schema, event.version));
        }
        Ok(event
            .deliveries
            .iter()
            .filter(|d| d.channel == channel)
            .map(|d| d.id)
            .collect())
    }
}

#[async_trait]
impl Bus for KafkaBus {
    /// Stored notifications reach workers through the outbox and the relay.
    fn announce(&self, _channels: &[Channel]) {}

    async fn take(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, BusError> {
        let Some(lanes) = self.lanes.get(&channel) else {
            return Ok(Vec::new());
        };
        let lane = &lanes[priority.index()];
        let mut out = Vec::new();
        {
            let mut rx = lane.rx.lock().await;
            while out.len() < limit {
                match rx.try_recv() {
                    Ok(d) => out.push(d),
                    Err(_) => break,
                }
            }
        }
        let now = herald_core::now_ms();
        let sweep_ms = herald_core::ms(self.sweep);
        let last = lane.swept_at_ms.load(Ordering::Relaxed);
        if out.len() < limit
            && now - last >= sweep_ms
            && lane
                .swept_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let lease_ms = herald_core::ms(self.lease);
            out.extend(
                self.store
                    .claim(channel, priority, limit - out.len(), now, lease_ms)
                    .await?,
            );
        }
        Ok(out)
    }

    async fn wait(&self, channel: Channel, at_most: Duration) {
        match self.wake.get(&channel) {
            Some(n) => {
                let _ = tokio::time::timeout(at_most, n.notified()).await;
            }
            None => tokio::time::sleep(at_most).await,
        }
    }
}
