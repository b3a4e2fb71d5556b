//! Priority lanes: critical work is not stuck behind a low-lane flood.

use std::time::Duration;

use herald_sim::Fault;
use serde_json::json;

use crate::utils::{sms, wait_until, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_is_delivered_before_a_low_lane_backlog() {
    let s = TestServer::start_with(|c| {
        let sms = c
            .channels
            .get_mut(&herald_core::Channel::Sms)
            .expect("sms channel");
        sms.concurrency = 4;
        sms.reserved_critical = 1;
        sms.low_max_share = 0.5;
    })
    .await;
    s.fault(
        "twilio",
        Fault {
            latency_min_ms: 50,
            latency_max_ms: 50,
            ..Fault::default()
        },
    );

    let flood: Vec<_> = (0..200)
        .map(|i| sms(&format!("newsletter {i}"), "low"))
        .collect();
    let (st, _, _) = s
        .post("/v1/notifications/batch", &json!({"notifications": flood}))
        .await;
    assert_eq!(st, 200);
    // The pool is now busy with the flood.
    assert!(wait_until(Duration::from_secs(10), || s.delivered() >= 4).await);

    let urgent: Vec<_> = (0..10)
        .map(|i| sms(&format!("2FA code {i}"), "critical"))
        .collect();
    let (st, _, _) = s
        .post("/v1/notifications/batch", &json!({"notifications": urgent}))
        .await;
    assert_eq!(st, 200);
    let critical_done = || {
        s.sim
            .entries()
            .iter()
            .filter(|e| e.summary.starts_with("2FA"))
            .count()
            == 10
    };
    assert!(
        wait_until(Duration::from_secs(20), critical_done).await,
        "critical delivered"
    );

    let low_before = s
        .sim
        .entries()
        .iter()
        .filter(|e| e.summary.starts_with("newsletter"))
        .count();
    assert!(
        low_before < 100,
        "all 10 critical went out while {low_before} of 200 newsletters had: the flood did not hold them back"
    );
}
