//! Whether the cluster answers, for readiness.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::model::Priority;
use herald_core::status::{BusHealth, NotReady};
use rdkafka::config::ClientConfig;

use super::{topic, KafkaError, KafkaOptions, Producer};

/// Whether the cluster answers, for readiness: a metadata request for the
/// lane topics on a client of its own (the consumers' and the relay's are
/// busy with their work, and a readiness probe must not disturb them).
#[derive(Clone)]
pub struct KafkaProbe {
    client: Arc<Producer>,
    topic: String,
}

impl KafkaProbe {
    pub fn new(opts: &KafkaOptions) -> Result<KafkaProbe, KafkaError> {
        let client = Producer::new(
            ClientConfig::new().set("bootstrap.servers", &opts.brokers),
            opts,
        )?;
        Ok(KafkaProbe {
            client: Arc::new(client),
            topic: topic(&opts.topic_prefix, Priority::Critical),
        })
    }
}

#[async_trait]
impl BusHealth for KafkaProbe {
    /// `Ok` when a broker answered within `timeout` and knows the critical
    /// lane's topic; otherwise why not.
    async fn check(&self, timeout: Duration) -> Result<(), NotReady> {
        let probe = self.clone();
        // librdkafka's metadata call blocks its thread.
        let answer =
            tokio::task::spawn_blocking(move || probe.client.fetch_metadata(&probe.topic, timeout))
                .await
                .map_err(|e| NotReady(format!("kafka probe: {e}")))?;
        let metadata = answer.map_err(|e| NotReady(format!("kafka: {e}")))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(NotReady(format!("kafka: topic {} not found", self.topic))),
        }
    }
}
