//! What the Kafka tests share: the mock cluster with the lane topics, a real
//! SQLite store with the outbox on, and notifications to store.

use std::sync::Arc;

use herald_bus::kafka::mock_cluster;
use herald_core::model::{NotificationRequest, Priority};
use herald_core::store::roles::*;
use herald_core::store::{NewDelivery, NewNotification};
use herald_store::{SqliteOptions, SqliteStore};
use rdkafka::mocking::MockCluster;

pub const PREFIX: &str = "herald";

pub type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Three brokers with the four lane topics (`partitions` each, replicated
/// three times), and their bootstrap servers.
pub fn cluster(partitions: i32) -> (Cluster, String) {
    let cluster = mock_cluster(3, partitions, PREFIX).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

pub async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let s = SqliteStore::open(&SqliteOptions {
        path: dir.path().join("herald.db"),
        max_batch: 256,
        read_connections: 2,
        outbox: true,
        timeout: std::time::Duration::from_secs(5),
    })
    .await
    .expect("open");
    Arc::new(s)
}

/// Notification `i` for email and SMS to `email`, its lane by `i % 4`.
pub fn notification(i: usize, email: &str) -> NewNotification {
    let request: NotificationRequest = serde_json::from_value(serde_json::json!({
        "priority": Priority::ALL[i % 4],
        "channels": ["email", "sms"],
        "recipient": {"email": email, "phone": "+14155550100"},
        "content": {"subject": format!("n{i}"), "text": "t"}
    }))
    .expect("fixture");
    let deliveries = request
        .destinations()
        .into_iter()
        .map(|d| NewDelivery {
            id: uuid::Uuid::now_v7(),
            channel: d.channel,
            target: d.target,
            ended: None,
            held_until_ms: None,
            leased: None,
        })
        .collect();
    let now = herald_core::now_ms();
    NewNotification {
        id: uuid::Uuid::now_v7(),
        tenant_id: "acme".into(),
        request,
        accepted_at_ms: now,
        due_at_ms: now,
        expires_at_ms: None,
        deliveries,
        idempotency: None,
        correlation_id: Some(format!("req-{i}")),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        cap: None,
    }
}
