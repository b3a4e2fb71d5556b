//! Stop with a backlog, start again on the same data: everything delivered,
//! each exactly once.

use std::collections::HashSet;
use std::time::Duration;

use herald_sim::Fault;
use serde_json::json;

use crate::utils::{config, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_the_backlog_exactly_once() {
    let shrink = |c: &mut herald::config::Config| {
        // The backlog is the point here, so every lane takes it in:
        // admission control, which would shed part of it, is tested in
        // priority.rs.
        c.server.admission = false;
        for ch in c.channels.values_mut() {
            ch.concurrency = 16;
            ch.reserved_critical = 2;
        }
    };
    let mut s = TestServer::start_with(shrink).await;
    for v in ["sendgrid", "twilio"] {
        s.fault(
            v,
            Fault {
                latency_min_ms: 5,
                latency_max_ms: 30,
                ..Fault::default()
            },
        );
    }
    let total = 3000usize;
    for chunk in 0..(total / 500) {
        let items: Vec<_> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                let lane = ["critical", "high", "normal", "low"][n % 4];
                json!({"priority": lane, "channels": ["email", "sms"],
                    "recipient": {"email": format!("u{n}@example.com"), "phone": format!("+1415{:07}", n)},
                    "content": {"subject": format!("n{n}"), "text": format!("n{n}")}})
            })
            .collect();
        let (st, _, v) = s
            .post("/v1/notifications/batch", &json!({"notifications": items}))
            .await;
        assert_eq!(st, 200);
        assert!(v["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["status"] == "accepted"));
    }
    s.wait_delivered(200, Duration::from_secs(30)).await;
    s.stop().await;
    let at_stop = s.delivered();
    assert!(
        (at_stop as usize) < 2 * total - 1000,
        "a real backlog was pending at shutdown ({at_stop} of {} delivered)",
        2 * total
    );

    let mut cfg = config(&s.sim_url, &s.data_dir);
    shrink(&mut cfg);
    s.boot(cfg).await;
    s.wait_delivered(2 * total as u64, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stats = s.sim.stats();
    assert_eq!(stats["sendgrid"].unique as usize, total);
    assert_eq!(stats["twilio"].unique as usize, total);
    let dups: u64 = stats.values().map(|v| v.duplicates).sum();
    assert_eq!(dups, 0, "a graceful stop sends nothing twice: {stats:?}");
    let entries = s.sim.entries();
    let keys: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys.len(), 2 * total);
    assert!(entries.iter().all(|e| e.requests == 1));
}
