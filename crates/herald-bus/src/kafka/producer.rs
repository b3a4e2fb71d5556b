//! The relay's producer, and the client the readiness probe asks: a
//! librdkafka producer whose events (acknowledgements, errors, logs) a
//! thread of its own serves.
//!
//! Why not rdkafka's `FutureProducer`: its `ThreadedProducer` serves the
//! events by calling `poll(100 ms)` in a loop, and `poll` waits in whole
//! milliseconds, rounding what is left of its timeout down, so each call
//! ends with up to a millisecond of zero-timeout polls in a busy loop (the
//! bug librdkafka fixed in its own main loop, confluentinc/librdkafka#4684).
//! Measured here: about 1% of a core per client, idle or not, which was a
//! quarter of what the Kafka fleet spent beyond the local bus at 3,000/s
//! (docs/benchmarks.md). The same loop in one-second windows spends a tenth
//! of that, and acknowledgements are served as they come either way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{OwnedHeaders, ToBytes};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use tokio::sync::oneshot;

use super::{KafkaError, KafkaOptions};

/// How long each of the event thread's waits lasts: the spin at its end is
/// a thousandth of it, and the thread ends within one after its producer is
/// dropped.
const WINDOW: Duration = Duration::from_secs(1);

/// A producer and the thread serving its events; dropping it stops the
/// thread, which then drops the client (unsent messages purged).
pub struct Producer {
    inner: Arc<BaseProducer<Acks>>,
    stop: Arc<AtomicBool>,
}

/// Answers each message's acknowledgement to whoever sent it.
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<bool>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        // The sender may have stopped waiting; nothing to tell then.
        let _ = ack.send(result.is_ok());
    }
}

impl Producer {
    /// A producer made with `config` (which names `opts`' brokers).
    pub fn new(config: &ClientConfig, opts: &KafkaOptions) -> Result<Producer, KafkaError> {
        let inner: Arc<BaseProducer<Acks>> = Arc::new(
            config
                .create_with_context(Acks)
                .map_err(|source| opts.client_error(source))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, stopped) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-events".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    producer.poll(WINDOW);
                }
            })
            .map_err(KafkaError::Thread)?;
        Ok(Producer { inner, stop })
    }

    /// Queues a message; the answer says whether Kafka acknowledged it
    /// (`false` when it failed for good, or the producer was dropped first).
    /// An error when it could not even be queued (the queue is full, say).
    pub fn send<K, P>(
        &self,
        topic: &str,
        key: &K,
        payload: &P,
        headers: OwnedHeaders,
    ) -> Result<oneshot::Receiver<bool>, rdkafka::error::KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (ack, acked) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(ack))
            .key(key)
            .payload(payload)
            .headers(headers);
        self.inner.send(record).map_err(|(e, _)| e)?;
        Ok(acked)
    }

    /// The cluster's metadata for `topic`; blocks its thread up to `timeout`.
    pub fn fetch_metadata(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Metadata, rdkafka::error::KafkaError> {
        self.inner.client().fetch_metadata(Some(topic), timeout)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
