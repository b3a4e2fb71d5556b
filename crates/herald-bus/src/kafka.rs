//! Kafka, the fleet's bus: the outbox relay and the consumers. Each notification's
//! `NotificationRequested` event is written to the outbox in the same
//! transaction as the notification (the store does that when opened with
//! `outbox`); the relay publishes unpublished events, the highest lane's
//! first and in outbox order within a lane, with the idempotent producer
//! (`enable.idempotence`, `acks=all`), and then marks them published. One topic per lane, `{prefix}.notifications.{lane}`;
//! the key is the recipient, so one recipient's events keep their order;
//! headers carry the tenant, the correlation id and W3C `traceparent`.
//!
//! Any number of nodes may run the relay: one at a time holds the store's
//! relay lease and publishes; the others wait, and take over when a holder
//! stops renewing it. Delivery is at least once: a relay that dies between
//! publishing and marking leaves those events to be published again, which
//! consumers absorb (a delivery row moves into `sending` once).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_core::bus::{Bus, BusError};
use herald_core::events::{NotificationRequested, OutboxEvent};
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::store::{Claim, ClaimedDelivery, Outbox, Queue};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The relay's published events (label `lane`).
pub const PUBLISHED: &str = "herald_bus_published_total";
/// 1 while a lane's consumer is paused because its buffer is full (labels
/// `channel`, `lane`).
pub const PAUSED: &str = "herald_bus_lane_paused";

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

/// librdkafka's mock cluster, `brokers` strong, with the four lane topics
/// made (`partitions` each, replicated up to three times). It speaks the
/// real Kafka protocol over TCP and keeps everything in memory: a Kafka to
/// run the fleet against where there is none (tests, benchmarks,
/// `herald kafka-mock`), never one to keep data in.
pub fn mock_cluster(
    brokers: i32,
    partitions: i32,
    topic_prefix: &str,
) -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(brokers).map_err(|e| anyhow::anyhow!("mock cluster: {e}"))?;
    for lane in Priority::ALL {
        let name = topic(topic_prefix, lane);
        cluster
            .create_topic(&name, partitions, brokers.min(3))
            .map_err(|e| anyhow::anyhow!("creating {name} on the mock cluster: {e}"))?;
    }
    Ok(cluster)
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

/// Whether the cluster answers, for readiness: a metadata request for the
/// lane topics on a client of its own (the consumers' and the relay's are
/// busy with their work, and a readiness probe must not disturb them).
#[derive(Clone)]
pub struct KafkaProbe {
    client: FutureProducer,
    topic: String,
}

impl KafkaProbe {
    pub fn new(opts: &KafkaOptions) -> anyhow::Result<KafkaProbe> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .create()
            .map_err(|e| anyhow::anyhow!("kafka client for {}: {e}", opts.brokers))?;
        Ok(KafkaProbe {
            client,
            topic: topic(&opts.topic_prefix, Priority::Critical),
        })
    }

    /// `Ok` when a broker answered within `timeout` and knows the critical
    /// lane's topic; otherwise why not.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let probe = self.clone();
        // librdkafka's metadata call blocks its thread.
        let answer = tokio::task::spawn_blocking(move || {
            probe
                .client
                .client()
                .fetch_metadata(Some(&probe.topic), timeout)
        })
        .await
        .map_err(|e| format!("kafka probe: {e}"))?;
        let metadata = answer.map_err(|e| format!("kafka: {e}"))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!("kafka: topic {} not found", self.topic)),
        }
    }
}

pub struct Relay {
    pub store: Arc<dyn Outbox>,
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
        // Until when this relay holds the lease, as far as it knows. It is
        // renewed once half of it has passed, not at every batch: under
        // load the store's writers are the relay's slowest step.
        let mut held_until = 0;
        tracing::info!(holder = %self.holder, "outbox relay started");
        while !shutdown.is_cancelled() {
            let now = herald_core::now_ms();
            if held_until - now <= lease_ms / 2 {
                held_until = match self.store.relay_lease(&self.holder, now, lease_ms).await {
                    Ok(true) => now + lease_ms,
                    Ok(false) => 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "relay lease failed; retrying");
                        0
                    }
                };
            }
            let published = if held_until > now {
                self.publish_batch().await
            } else {
                0
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
        let topics = Lanes::from_fn(|lane| topic(&self.topic_prefix, lane));
        let mut acks = Vec::with_capacity(events.len());
        for e in &events {
            let record = FutureRecord::to(&topics[e.lane])
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
/// Retries coming due, leases run out (a worker died mid-call), deliveries
/// given back and any whose event never came are not on Kafka: each lane
/// also sweeps the store once every `sweep`, which is how they re-enter.
/// The sweep leaves new work to Kafka until it has waited a sweep interval.
pub struct KafkaBus {
    store: Arc<dyn Queue>,
    lease: Duration,
    sweep: Duration,
    lanes: HashMap<Channel, Lanes<LaneBuffer>>,
    wake: HashMap<Channel, Arc<Notify>>,
    consumers: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Stops the consumers: `close`, or the token given to `start`.
    stop: CancellationToken,
}

/// How long `close` waits for the consumers to leave their groups. Leaving
/// takes a rebalance; a cluster that is down would keep them forever.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

struct LaneBuffer {
    rx: tokio::sync::Mutex<mpsc::Receiver<ClaimedDelivery>>,
    /// Set by `defer`, cleared by the next `take`: the lane's consumer
    /// claims nothing meanwhile.
    deferred: Arc<AtomicBool>,
    /// When the store was last swept for this lane (Unix ms).
    swept_at_ms: AtomicI64,
}

/// Claimed deliveries waiting for a worker slot, per lane. A consumer
/// claims only what fits, so nothing waits long under a lease.
const BUFFER: usize = 512;

/// Most deliveries a consumer claims at once (at most `BUFFER`): one store
/// round trip for a batch of ready events, not one per event.
const BATCH: usize = 256;

impl KafkaBus {
    /// Starts the consumers for `channels`; they stop with `shutdown` or
    /// `close`.
    pub fn start(
        store: Arc<dyn Queue>,
        opts: &KafkaOptions,
        channels: &[Channel],
        lease: Duration,
        sweep: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<KafkaBus> {
        let mut lanes = HashMap::new();
        let mut wake = HashMap::new();
        let mut consumers = tokio::task::JoinSet::new();
        let stop = shutdown.child_token();
        for &channel in channels {
            let notify = Arc::new(Notify::new());
            let mut buffers = Vec::with_capacity(4);
            for lane in Priority::ALL {
                let (tx, rx) = mpsc::channel(BUFFER);
                let deferred = Arc::new(AtomicBool::new(false));
                let consumer = consumer(opts, channel, lane)?;
                let lane_consumer = LaneConsumer {
                    consumer,
                    store: store.clone(),
                    channel,
                    lane,
                    lease,
                    tx,
                    wake: notify.clone(),
                    deferred: deferred.clone(),
                };
                consumers.spawn(lane_consumer.run(stop.clone()));
                buffers.push(LaneBuffer {
                    rx: tokio::sync::Mutex::new(rx),
                    deferred,
                    // The first sweep comes a `sweep` after the start:
                    // until then, work comes through Kafka.
                    swept_at_ms: AtomicI64::new(herald_core::now_ms()),
                });
            }
            let mut buffers = buffers.into_iter();
            let mut next = || buffers.next().ok_or_else(|| anyhow::anyhow!("four lanes"));
            let buffers = Lanes::from([next()?, next()?, next()?, next()?]);
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
            stop,
        })
    }

    /// Gives back the deliveries claimed into these lane buffers that no
    /// worker took: queued again, due now, not in doubt.
    async fn give_back<'a>(&self, lanes: impl IntoIterator<Item = &'a LaneBuffer>) {
        let mut untaken = Vec::new();
        for lane in lanes {
            let mut rx = lane.rx.lock().await;
            while let Ok(d) = rx.try_recv() {
                untaken.push((d.id, d.lease_token));
            }
        }
        if untaken.is_empty() {
            return;
        }
        tracing::debug!(
            count = untaken.len(),
            "giving back deliveries no worker took"
        );
        if let Err(e) = self.store.release(untaken, false).await {
            tracing::warn!(error = %e, "giving back failed; the leases will expire instead");
        }
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
        // What a consumer fetches ahead, per consumer (64 MiB by default):
        // a paused lane's backlog stays in Kafka.
        .set("queued.max.messages.kbytes", "4096")
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
    store: Arc<dyn Queue>,
    channel: Channel,
    lane: Priority,
    lease: Duration,
    tx: mpsc::Sender<ClaimedDelivery>,
    wake: Arc<Notify>,
    deferred: Arc<AtomicBool>,
}

/// How often a deferred lane's consumer looks whether it may go on.
const DEFER_CHECK: Duration = Duration::from_millis(100);

impl LaneConsumer {
    async fn run(self, shutdown: CancellationToken) {
        self.consume(&shutdown).await;
        // Closing leaves the group, which waits for the group to rebalance:
        // done on a blocking thread, so the other consumers (of this node
        // too) keep running and leave at the same time.
        let LaneConsumer { consumer, .. } = self;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }

    /// Reads events in batches (the first waited for, then whatever else
    /// is ready, up to `BATCH` deliveries), claims the batch's deliveries
    /// in one `claim_ids`, hands them to the dispatcher, and only then
    /// stores the events' offsets.
    async fn consume(&self, shutdown: &CancellationToken) {
        // Events read while the lane was paused (from partitions assigned
        // meanwhile), to handle before reading more.
        let mut held = VecDeque::new();
        loop {
            let first = match held.pop_front() {
                Some(m) => m,
                None => tokio::select! {
                    m = self.consumer.recv() => match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(channel = %self.channel, lane = %self.lane, error = %e, "kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                },
            };
            let mut ids = self.ids(&first);
            let mut batch = vec![first];
            while ids.len() < BATCH {
                let next = match held.pop_front() {
                    Some(m) => m,
                    // Only what is ready now: a batch never waits to fill.
                    None => match self.consumer.recv().now_or_never() {
                        Some(Ok(m)) => m,
                        _ => break,
                    },
                };
                ids.extend(self.ids(&next));
                batch.push(next);
            }
            for chunk in ids.chunks(BATCH) {
                // Room first, then the claim: a claimed delivery never
                // waits in the buffer for long under its lease.
                let Some(permits) = self.room(chunk.len(), &mut held, shutdown).await else {
                    return;
                };
                let Some(claimed) = self.claim(chunk, shutdown).await else {
                    return;
                };
                if !claimed.is_empty() {
                    for (permit, d) in permits.zip(claimed) {
                        permit.send(d);
                    }
                    self.wake.notify_one();
                }
            }
            for m in &batch {
                if let Err(e) = self.consumer.store_offset_from_message(m) {
                    // Its partition moved to another worker in a rebalance:
                    // that worker reads the event again and claims nothing.
                    tracing::debug!(channel = %self.channel, error = %e, "storing an offset failed; the event may be read again");
                }
            }
        }
    }

    /// Room for `n` claimed deliveries in the lane's buffer. When the lane
    /// is saturated (the dispatcher is not taking its work as fast as it
    /// comes) or deferred (its routes are closed), its partitions are
    /// paused, so the backlog waits in Kafka, not in this node's memory or
    /// under its leases, while other lanes go on; the consumer keeps polling
    /// meanwhile, which keeps it in its group, and resumes once there is
    /// room and the lane is taken from. `None` on shutdown.
    async fn room<'a>(
        &'a self,
        n: usize,
        held: &mut VecDeque<BorrowedMessage<'a>>,
        shutdown: &CancellationToken,
    ) -> Option<mpsc::PermitIterator<'a, ClaimedDelivery>> {
        let deferred = || self.deferred.load(Ordering::Relaxed);
        if !deferred() {
            match self.tx.try_reserve_many(n) {
                Ok(permits) => return Some(permits),
                Err(mpsc::error::TrySendError::Closed(())) => return None,
                Err(mpsc::error::TrySendError::Full(())) => {}
            }
        }
        self.pause(true);
        let permits = loop {
            tokio::select! {
                p = self.tx.reserve_many(n), if !deferred() => break p.ok(),
                _ = tokio::time::sleep(DEFER_CHECK), if deferred() => {}
                m = self.consumer.recv() => match m {
                    // From a partition assigned while paused: hold it, and
                    // pause the new assignment too.
                    Ok(m) => {
                        held.push_back(m);
                        self.pause(true);
                    }
                    Err(e) => tracing::warn!(channel = %self.channel, lane = %self.lane, error = %e, "kafka consumer error while paused"),
                },
                _ = shutdown.cancelled() => break None,
            }
        };
        self.pause(false);
        permits
    }

    /// Pauses or resumes fetching for all of this consumer's partitions.
    fn pause(&self, paused: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(channel = %self.channel, lane = %self.lane, error = %e, "reading the assignment failed");
                return;
            }
        };
        let done = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match done {
            Ok(()) => {
                metrics::gauge!(PAUSED, "channel" => self.channel.as_str(), "lane" => self.lane.as_str())
                    .set(if paused { 1.0 } else { 0.0 });
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, lane = %self.lane, error = %e, paused, "pausing or resuming the lane failed")
            }
        }
    }

    /// Claims `ids` in the store, retrying until it answers. `None` on
    /// shutdown (the events' offsets are not stored: they are read again).
    async fn claim(
        &self,
        ids: &[uuid::Uuid],
        shutdown: &CancellationToken,
    ) -> Option<Vec<ClaimedDelivery>> {
        let lease_ms = herald_core::ms(self.lease);
        loop {
            match self
                .store
                .claim_ids(ids.to_vec(), herald_core::now_ms(), lease_ms)
                .await
            {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "claiming events' deliveries failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// This channel's deliveries in an event; none from an event this
    /// version cannot read (an unknown schema or version), which stays on
    /// the topic for whoever can.
    fn ids(&self, message: &BorrowedMessage<'_>) -> Vec<uuid::Uuid> {
        Self::ids_in(message.payload(), self.channel).unwrap_or_else(|why| {
            tracing::warn!(channel = %self.channel, offset = message.offset(), "skipping an event: {why}");
            Vec::new()
        })
    }

    /// The deliveries of `channel` an event names.
    fn ids_in(payload: Option<&[u8]>, channel: Channel) -> Result<Vec<uuid::Uuid>, String> {
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
        if self.stop.is_cancelled() {
            // Closed: what is left in the buffers is given back.
            return Ok(Vec::new());
        }
        let lane = &lanes[priority];
        lane.deferred.store(false, Ordering::Relaxed);
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
            // New work is left to Kafka for a sweep interval.
            let lease_ms = herald_core::ms(self.lease);
            out.extend(
                self.store
                    .claim(Claim {
                        channel,
                        lane: priority,
                        limit: limit - out.len(),
                        now_ms: now,
                        lease_ms,
                        settled_before_ms: now - sweep_ms,
                    })
                    .await?,
            );
        }
        Ok(out)
    }

    /// Stops the consumers and waits (up to `LEAVE_WAIT`) for them to
    /// leave their groups, so their partitions move to the other workers at
    /// once rather than after a session timeout; then gives back the
    /// deliveries claimed into the buffers that no worker took.
    async fn close(&self) {
        self.stop.cancel();
        let left = tokio::time::timeout(LEAVE_WAIT, async {
            let mut consumers = self.consumers.lock().await;
            while consumers.join_next().await.is_some() {}
        })
        .await;
        if left.is_err() {
            tracing::warn!("kafka consumers did not leave their groups in time; their partitions move on after the session timeout");
        }
        self.give_back(self.lanes.values().flatten()).await;
    }

    async fn defer(&self, channel: Channel, priority: Priority) {
        if let Some(lanes) = self.lanes.get(&channel) {
            let lane = &lanes[priority];
            lane.deferred.store(true, Ordering::Relaxed);
            self.give_back([lane]).await;
        }
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
