//! The workers' side of the Kafka bus: a consumer per channel and lane.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_core::bus::{Bus, BusError};
use herald_core::events::NotificationRequested;
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::store::{Claim, ClaimedDelivery, Queue};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{topic, KafkaError, KafkaOptions, PAUSED};

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
/// also sweeps the store once every `sweep`, and again at the next take
/// while a sweep comes back full, which is how they re-enter. The sweep
/// leaves new work to Kafka until it has waited a sweep interval.
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
    ) -> Result<KafkaBus, KafkaError> {
        let mut lanes = HashMap::new();
        let mut wake = HashMap::new();
        let mut consumers = tokio::task::JoinSet::new();
        let stop = shutdown.child_token();
        for &channel in channels {
            let notify = Arc::new(Notify::new());
            let buffers = Lanes::try_from_fn(|lane| {
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
                Ok::<_, KafkaError>(LaneBuffer {
                    rx: tokio::sync::Mutex::new(rx),
                    deferred,
                    // The first sweep comes a `sweep` after the start:
                    // until then, work comes through Kafka.
                    swept_at_ms: AtomicI64::new(herald_core::now_ms()),
                })
            })?;
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
) -> Result<StreamConsumer, KafkaError> {
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
        .map_err(|source| opts.client_error(source))?;
    let topic = topic(&opts.topic_prefix, lane);
    c.subscribe(&[&topic])
        .map_err(|source| KafkaError::Subscribe { topic, source })?;
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
            // The trace context each event's header carries, for the
            // deliveries it names (their spans then hang under the hop).
            let mut traced = HashMap::new();
            note_traceparent(&first, &ids, &mut traced);
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
                let more = self.ids(&next);
                note_traceparent(&next, &more, &mut traced);
                ids.extend(more);
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
                    for (permit, mut d) in permits.zip(claimed) {
                        if let Some(tp) = traced.get(&d.id) {
                            d.traceparent = Some(String::clone(tp));
                        }
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
    fn announce(&self, _work: &[(Channel, Priority)]) {}

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
            let room = limit - out.len();
            let swept = self
                .store
                .claim(Claim {
                    channel,
                    lane: priority,
                    limit: room,
                    now_ms: now,
                    lease_ms,
                    settled_before_ms: now - sweep_ms,
                })
                .await?;
            if swept.len() == room {
                // A full sweep leaves more behind (a circuit's deferrals
                // all come due at once): the next take sweeps again, so
                // they drain at the pool's pace, not a pool's room per
                // sweep interval.
                lane.swept_at_ms.store(now - sweep_ms, Ordering::Relaxed);
            }
            out.extend(swept);
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

/// Notes `message`'s `traceparent` header, if any, for each delivery id it
/// names.
fn note_traceparent(
    message: &BorrowedMessage<'_>,
    ids: &[uuid::Uuid],
    traced: &mut HashMap<uuid::Uuid, std::sync::Arc<String>>,
) {
    use rdkafka::message::Headers as _;
    let Some(headers) = message.headers() else {
        return;
    };
    let Some(tp) = headers
        .iter()
        .find(|h| h.key == "traceparent")
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
    else {
        return;
    };
    let tp = std::sync::Arc::new(tp.to_owned());
    for id in ids {
        traced.insert(*id, tp.clone());
    }
}
