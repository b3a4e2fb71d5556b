//! Priority lanes: critical work is not stuck behind a low-lane flood.

use std::time::Duration;

use herald_sim::Fault;
use serde_json::json;

use crate::utils::{sms, wait_until, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_is_delivered_before_a_low_lane_backlog() {
    let s = narrow_sms(50, |c| {
        if let Some(sms) = c.channels.get_mut(&herald_core::Channel::Sms) {
            sms.low_max_share = 0.5;
        }
    })
    .await;

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

/// Admission control: a normal lane flooded past its objective refuses new
/// normal notifications with 429, `Retry-After` and the lane named, per item
/// in a batch too, while critical is still admitted and delivered in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_behind_its_objective_refuses_new_work_and_critical_still_goes() {
    let s = narrow_sms(100, |c| {
        c.server.admission = true;
        c.server.admission_refresh_ms = 50;
        c.lanes.normal.objective_ms = 300;
    })
    .await;
    // 300 normal SMS at 4 at a time and 100 ms each: 7 s of work, far
    // past the lane's 300 ms objective.
    let flood: Vec<_> = (0..300)
        .map(|i| sms(&format!("order update {i}"), "normal"))
        .collect();
    let (st, _, v) = s
        .post("/v1/notifications/batch", &json!({"notifications": flood}))
        .await;
    assert_eq!(st, 200, "{v}");

    let mut refused = None;
    for _ in 0..100 {
        let (st, headers, v) = s
            .post("/v1/notifications", &sms("one more", "normal"))
            .await;
        if st == 429 {
            refused = Some((headers, v));
            break;
        }
        assert_eq!(st, 202, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, v) = refused.expect("the normal lane refuses once it is behind");
    assert_eq!(v["type"], "urn:herald:problem:lane-behind", "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("normal lane for sms")),
        "{v}"
    );
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // In a batch, only the normal item is refused; critical is admitted.
    let (st, _, v) = s
        .post(
            "/v1/notifications/batch",
            &json!({"notifications": [sms("2FA code", "critical"), sms("late", "normal")]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    assert_eq!(
        v["results"][1]["error"]["type"], "urn:herald:problem:lane-behind",
        "{v}"
    );
    let critical_done = || s.sim.entries().iter().any(|e| e.summary.starts_with("2FA"));
    assert!(
        wait_until(Duration::from_secs(3), critical_done).await,
        "critical delivered while the normal lane is behind"
    );
    let (st, ready) = s.get("/readyz").await;
    assert_eq!(st, 200, "shedding load is not being unready: {ready}");
    assert!(
        ready["shedding"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == "sms normal: objective")),
        "{ready}"
    );
    let metrics = s.get_raw("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("herald_admission_refused_total{lane=\"normal\",reason=\"objective\"}"),
        "refusals are counted"
    );
}

/// A server whose SMS pool is 4 slots (one kept for critical) and whose
/// Twilio answers in `latency_ms`, with `tweak` on top.
async fn narrow_sms(
    latency_ms: u64,
    tweak: impl FnOnce(&mut herald::config::Config),
) -> TestServer {
    let s = TestServer::start_with(|c| {
        let sms = c
            .channels
            .get_mut(&herald_core::Channel::Sms)
            .expect("sms channel");
        sms.concurrency = 4;
        sms.reserved_critical = 1;
        tweak(c);
    })
    .await;
    s.fault(
        "twilio",
        Fault {
            latency_min_ms: latency_ms,
            latency_max_ms: latency_ms,
            ..Fault::default()
        },
    );
    s
}
