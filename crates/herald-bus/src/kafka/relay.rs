//! The outbox relay: publishes the outbox's events to the lane topics,
//! one relay at a time (the store's relay lease).

use std::sync::Arc;
use std::time::Duration;

use herald_core::events::OutboxEvent;
use herald_core::lanes::Lanes;
use herald_core::store::Outbox;
use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use super::{topic, Producer, PUBLISHED, RELAY_LAG_SECONDS};

pub struct Relay {
    pub store: Arc<dyn Outbox>,
    pub producer: Producer,
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
    /// With tracing on: makes an event's publish span, a child of the
    /// context the event was stored under, and gives the `traceparent` its
    /// Kafka headers carry (the span's own, so the consumer's side hangs
    /// under the hop). Without it the stored context passes through.
    pub traced: Option<Traced>,
}

/// `traced`'s signature: the stored `traceparent` in, the span and the
/// `traceparent` to send out.
pub type Traced = fn(Option<&str>) -> (tracing::Span, Option<String>);

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
        let oldest = events.iter().map(|e| e.created_at_ms).min();
        let lag_ms = oldest.map_or(0, |at| (herald_core::now_ms() - at).max(0));
        metrics::gauge!(RELAY_LAG_SECONDS).set(lag_ms as f64 / 1000.0);
        if events.is_empty() {
            return 0;
        }
        // Queue them all, in order, then await the acknowledgements: the
        // idempotent producer keeps each partition's order across retries.
        let topics = Lanes::from_fn(|lane| topic(&self.topic_prefix, lane));
        let mut acks = Vec::with_capacity(events.len());
        for e in &events {
            let (span, traceparent) = match self.traced {
                Some(traced) => {
                    let (span, tp) = traced(e.traceparent.as_deref());
                    (Some(span), tp)
                }
                None => (None, e.traceparent.clone()),
            };
            let queued = self.producer.send(
                &topics[e.lane],
                &e.key,
                &e.payload,
                headers(e, traceparent.as_deref()),
            );
            acks.push((e.seq, e.lane, queued, span));
        }
        let mut done = Vec::with_capacity(events.len());
        // Each publish span ends when its acknowledgement is in.
        for (seq, lane, queued, _span) in acks {
            let acked = match queued {
                Ok(ack) => ack.await.unwrap_or(false),
                Err(e) => {
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

fn headers(e: &OutboxEvent, traceparent: Option<&str>) -> OwnedHeaders {
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
    if let Some(tp) = traceparent {
        h = h.insert(Header {
            key: "traceparent",
            value: Some(tp),
        });
    }
    h
}
