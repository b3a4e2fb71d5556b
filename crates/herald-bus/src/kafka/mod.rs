//! Kafka, the fleet's bus: the outbox relay (`relay.rs`), the consumers
//! (`consumer.rs`), the readiness probe (`probe.rs`) and, for tests and
//! benchmarks, librdkafka's mock cluster. Each notification's
//! `NotificationRequested` event is written to the outbox in the same
//! transaction as the notification (the store does that when opened with
//! `outbox`); the relay publishes unpublished events, the highest lane's
//! first and in outbox order within a lane, with the idempotent producer
//! (`enable.idempotence`, `acks=all`), and then marks them published. One
//! topic per lane, `{prefix}.notifications.{lane}`;
//! the key is the recipient, so one recipient's events keep their order;
//! headers carry the tenant, the correlation id and W3C `traceparent`.
//!
//! Any number of nodes may run the relay: one at a time holds the store's
//! relay lease and publishes; the others wait, and take over when a holder
//! stops renewing it. Delivery is at least once: a relay that dies between
//! publishing and marking leaves those events to be published again, which
//! consumers absorb (a delivery row moves into `sending` once).

mod consumer;
mod probe;
mod producer;
mod relay;

use herald_core::model::Priority;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub use consumer::KafkaBus;
pub use probe::KafkaProbe;
pub use producer::Producer;
pub use relay::{Relay, Traced};

/// The relay's published events (label `lane`).
pub const PUBLISHED: &str = "herald_bus_published_total";
/// How long the oldest event the relay read last had waited in the outbox
/// (0 when it found none): the relay's lag behind the API.
pub const RELAY_LAG_SECONDS: &str = "herald_relay_lag_seconds";
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

/// Why a Kafka client could not be made or set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client for {brokers}")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("subscribing to {topic}")]
    Subscribe {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("the mock cluster")]
    Mock(#[source] rdkafka::error::KafkaError),
    #[error("starting a kafka client's event thread")]
    Thread(#[source] std::io::Error),
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
) -> Result<MockCluster<'static, DefaultProducerContext>, KafkaError> {
    let cluster = MockCluster::new(brokers).map_err(KafkaError::Mock)?;
    for lane in Priority::ALL {
        cluster
            .create_topic(&topic(topic_prefix, lane), partitions, brokers.min(3))
            .map_err(KafkaError::Mock)?;
    }
    Ok(cluster)
}

/// The idempotent producer the relay publishes with.
pub fn producer(opts: &KafkaOptions) -> Result<Producer, KafkaError> {
    Producer::new(
        ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000"),
        opts,
    )
}

impl KafkaOptions {
    fn client_error(&self, source: rdkafka::error::KafkaError) -> KafkaError {
        KafkaError::Client {
            brokers: self.brokers.clone(),
            source,
        }
    }
}
