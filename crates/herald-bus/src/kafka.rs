//! Kafka, the fleet's bus: the outbox relay. Each notification's
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

use std::sync::Arc;
use std::time::Duration;

use herald_core::events::OutboxEvent;
use herald_core::model::Priority;
use herald_core::store::Store;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// The relay's published events (label `lane`).
pub const PUBLISHED: &str = "herald_bus_published_total";

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,host:port`
    pub brokers: String,
    /// Topics are `{prefix}.notifications.{lane}`.
    pub topic_prefix: String,
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
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
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
