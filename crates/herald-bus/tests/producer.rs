//! The Kafka producer's event thread (the relay's and the readiness
//! probe's client): it lives as long as its producer, not longer.

use std::time::{Duration, Instant};

use herald_bus::kafka::{mock_cluster, producer, KafkaOptions};

/// This process's threads named `kafka-events` (Linux).
fn event_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "kafka-events")
        .count()
}

#[test]
fn a_dropped_producer_leaves_no_thread_behind() {
    let cluster = mock_cluster(1, 1, "herald").expect("mock cluster");
    let opts = KafkaOptions {
        brokers: cluster.bootstrap_servers(),
        topic_prefix: "herald".to_owned(),
        group_prefix: "herald".to_owned(),
    };
    let before = event_threads();
    let made: Vec<_> = (0..3).map(|_| producer(&opts).expect("producer")).collect();
    assert_eq!(event_threads(), before + 3, "one event thread each");
    drop(made);
    let deadline = Instant::now() + Duration::from_secs(5);
    while event_threads() > before {
        assert!(
            Instant::now() < deadline,
            "the event threads end once their producers are dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
