//! The engine's loop with no I/O: the in-memory store, the local bus,
//! vendors answered by a script, and tokio's clock paused (Herald's clock
//! follows it on this thread), so a 60 s circuit passes in milliseconds.
//! What is checked is what a user would: which vendor got which request,
//! and where each delivery ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_bus::LocalBus;
use herald_core::bus::Bus;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::provider::{Outcome, VendorRequest, VendorResponse};
use herald_core::store::{ClaimedDelivery, Intake, NewDelivery, NewNotification};
use herald_store::MemoryStore;

use super::accounts::Accounts;
use super::outbound::{Outbound, Transport};
use super::Engine;
use crate::config::{Config, ProviderGuards};
use crate::render::Templates;

fn lane_of(lane: &str) -> Priority {
    serde_json::from_value(serde_json::json!(lane)).expect("a lane")
}

/// How a scripted vendor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Up = 0,
    /// 503 to everything.
    Down = 1,
    /// Takes the request and never answers in time: an ambiguous timeout.
    TimesOut = 2,
    /// Refuses the account's credential (a revoked token), in its own
    /// words.
    Revoked = 3,
}

/// A vendor the test scripts: how it answers now, and every request's
/// idempotency key it got.
#[derive(Default)]
struct Vendor {
    mode: AtomicU8,
    keys: Mutex<Vec<String>>,
}

impl Vendor {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

/// One account's transport: its vendor's script, answering in its wire
/// format.
struct Scripted {
    account: String,
    vendor: Arc<Vendor>,
}

#[async_trait::async_trait]
impl Transport for Scripted {
    async fn send(
        &self,
        req: VendorRequest,
        _timeout: Duration,
    ) -> Result<VendorResponse, Outcome> {
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut keys) = self.vendor.keys.lock() {
            keys.push(key);
        }
        // A vendor's answer takes a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, body) = match self.vendor.mode.load(Ordering::SeqCst) {
            0 if self.account == "sns" => (
                200,
                "<PublishResponse><PublishResult><MessageId>m-1</MessageId></PublishResult></PublishResponse>",
            ),
            0 => (201, r#"{"sid": "SM1", "status": "queued"}"#),
            1 => (503, ""),
            3 if self.account == "sns" => (
                403,
                "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>",
            ),
            3 => (
                401,
                r#"{"code": 20003, "message": "Authenticate", "status": 401}"#,
            ),
            _ => {
                return Err(Outcome::Transient {
                    reason: "timed out waiting for the vendor".into(),
                    ambiguous: true,
                })
            }
        };
        Ok(VendorResponse {
            status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK),
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        })
    }
}

/// An SMS in `lane`, due now, as the API makes it.
fn sms_request(lane: &str) -> NewNotification {
    let request: NotificationRequest = serde_json::from_value(serde_json::json!({
        "priority": lane, "channels": ["sms"],
        "recipient": {"phone": "+14155550100"}, "content": {"text": "code 123456"}
    }))
    .expect("request");
    let now = herald_core::now_ms();
    NewNotification {
        id: uuid::Uuid::now_v7(),
        tenant_id: "t".into(),
        request,
        accepted_at_ms: now,
        due_at_ms: now,
        expires_at_ms: None,
        deliveries: vec![NewDelivery {
            id: uuid::Uuid::now_v7(),
            channel: Channel::Sms,
            target: 0,
            ended: None,
            held_until_ms: None,
            leased: None,
        }],
        idempotency: None,
        correlation_id: None,
        traceparent: None,
        cap: None,
    }
}

struct Rig {
    store: Arc<MemoryStore>,
    bus: Arc<dyn Bus>,
    engine: Option<Engine>,
    accounts: Arc<Accounts>,
    vendors: HashMap<&'static str, Arc<Vendor>>,
    _clock: herald_core::clock::Guard,
}

impl Rig {
    /// The sandbox's config (SMS: Twilio, then SNS), short retries.
    fn start() -> Rig {
        let started = tokio::time::Instant::now();
        let base = herald_core::now_ms();
        let clock = herald_core::clock::set_for_this_thread(move || {
            base + herald_core::ms(tokio::time::Instant::now().duration_since(started))
        });
        let mut cfg = Config::load(None)
            .expect("defaults")
            .into_sandbox("http://127.0.0.1:1");
        for lane in cfg.lanes.all_mut() {
            lane.retry_base_ms = 100;
            lane.retry_cap_ms = 500;
        }
        cfg.engine.poll_interval_ms = 50;
        let vendors: HashMap<&'static str, Arc<Vendor>> = ["twilio", "sns"]
            .into_iter()
            .map(|n| (n, Arc::new(Vendor::default())))
            .collect();
        let scripts = vendors.clone();
        let transports = move |name: &str, _: &ProviderGuards, _: Channel| {
            let vendor = scripts.get(name).cloned().unwrap_or_default();
            Ok(Arc::new(Scripted {
                account: name.to_owned(),
                vendor,
            }) as Arc<dyn Transport>)
        };
        let accounts = Arc::new(
            Accounts::with_transports(&cfg.account_settings(), &transports, None)
                .expect("accounts"),
        );
        let store = Arc::new(MemoryStore::new(false));
        let bus: Arc<dyn Bus> = Arc::new(
            LocalBus::new(
                store.clone(),
                Duration::from_secs(cfg.engine.lease_seconds),
                Duration::from_millis(cfg.engine.poll_interval_ms),
            )
            .handing_off(&[Channel::Sms], cfg.engine.claim_batch),
        );
        let templates = Arc::new(Templates::new(&cfg.templates).expect("templates"));
        let outbound = Outbound::new(&cfg.http, cfg.limits());
        let parts = super::Parts {
            queue: store.clone(),
            upkeep: store.clone(),
            bus: bus.clone(),
            accounts: accounts.clone(),
            outbound,
            templates,
            throughput: Arc::default(),
            suppressions: store.clone(),
            recipients: store.clone(),
            suppression_list: Arc::default(),
            callbacks: None,
        };
        let engine = Engine::start(&cfg.engine_settings(), parts).expect("engine");
        Rig {
            store,
            bus,
            engine: Some(engine),
            accounts,
            vendors,
            _clock: clock,
        }
    }

    fn vendor(&self, name: &str) -> &Vendor {
        &self.vendors[name]
    }

    /// An SMS in `lane`, accepted as the API would.
    async fn sms(&self, lane: &str) -> uuid::Uuid {
        let (id, _) = self.sms_unannounced(lane).await;
        self.bus.announce(&[(Channel::Sms, lane_of(lane))]);
        id
    }

    /// An SMS in `lane`, due at once, accepted as the API accepts it on a
    /// node with SMS workers: created leased and handed to them (it must
    /// be given a place).
    async fn sms_handed(&self, lane: &str) -> uuid::Uuid {
        let place = self
            .bus
            .reserve(Channel::Sms, lane_of(lane))
            .expect("a place in the hand-off");
        let mut n = sms_request(lane);
        n.deliveries[0].leased = Some(place.lease);
        let handed = ClaimedDelivery::handed(
            &n,
            &n.deliveries[0],
            place.lease,
            serde_json::to_string(&n.request).expect("payload"),
        );
        let id = n.id;
        self.store.create(vec![n]).await.expect("create");
        self.bus.hand(vec![(place, handed)]).await;
        id
    }

    /// An SMS in `lane`, stored but not yet announced to the engine: the
    /// notification's id and its delivery's (the vendor's key).
    async fn sms_unannounced(&self, lane: &str) -> (uuid::Uuid, uuid::Uuid) {
        let n = sms_request(lane);
        let (id, delivery) = (n.id, n.deliveries[0].id);
        self.store.create(vec![n]).await.expect("create");
        (id, delivery)
    }

    async fn state(&self, id: uuid::Uuid) -> (DeliveryState, Option<String>) {
        let v = self
            .store
            .notification("t", id)
            .await
            .expect("read")
            .expect("exists");
        (v.deliveries[0].state, v.deliveries[0].provider.clone())
    }

    /// Lets the engine run until `f` holds, for at most `within` of
    /// (paused, so instant) time.
    async fn until<F: std::future::Future<Output = bool>>(
        &self,
        within: Duration,
        mut f: impl FnMut() -> F,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if f().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f().await
    }

    async fn sent(&self, id: uuid::Uuid) -> bool {
        self.state(id).await.0 == DeliveryState::Sent
    }

    async fn stop(mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn five_failures_open_the_circuit_critical_fails_over_low_waits_and_a_probe_closes_it() {
    let rig = Rig::start();
    rig.vendor("twilio").set(Mode::Down);

    // Critical fails over to SNS at once, in the same attempt.
    let mut critical = Vec::new();
    for _ in 0..5 {
        critical.push(rig.sms("critical").await);
    }
    for id in &critical {
        assert!(rig.until(Duration::from_secs(5), || rig.sent(*id)).await);
        assert_eq!(rig.state(*id).await.1.as_deref(), Some("sns"));
    }
    assert_eq!(rig.vendor("twilio").calls(), 5);

    // Five failures opened Twilio's circuit: the next critical SMS goes
    // straight to SNS.
    let sixth = rig.sms("critical").await;
    assert!(rig.until(Duration::from_secs(5), || rig.sent(sixth)).await);
    assert_eq!(
        rig.vendor("twilio").calls(),
        5,
        "an open circuit is not called"
    );
    assert_eq!(rig.vendor("sns").calls(), 6);

    // Low waits for its primary: not sent, not even tried, for 30 s.
    let low = rig.sms("low").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(rig.state(low).await.0, DeliveryState::Queued);
    assert_eq!(rig.vendor("twilio").calls(), 5);
    assert_eq!(rig.vendor("sns").calls(), 6, "low never fails over");

    // Twilio is back; once the circuit's 60 s are up a probe goes out,
    // succeeds and closes it, and the low SMS goes through Twilio.
    rig.vendor("twilio").set(Mode::Up);
    assert!(rig.until(Duration::from_secs(40), || rig.sent(low)).await);
    assert_eq!(rig.state(low).await.1.as_deref(), Some("twilio"));
    assert_eq!(rig.vendor("twilio").calls(), 6, "one probe");
    let after = rig.sms("normal").await;
    assert!(rig.until(Duration::from_secs(5), || rig.sent(after)).await);
    assert_eq!(
        rig.state(after).await.1.as_deref(),
        Some("twilio"),
        "closed"
    );
    rig.stop().await;
}

/// A revoked credential is the account's failure, not the messages': they
/// wait (critical fails over; low, which never does, waits for its
/// primary) without using up their attempts, the account
/// is called about once per open period meanwhile, and every message goes
/// out once the credential is fixed.
#[tokio::test(start_paused = true)]
async fn a_revoked_credential_holds_messages_until_it_is_fixed_and_fails_none() {
    let rig = Rig::start();
    rig.vendor("twilio").set(Mode::Revoked);
    let mut low = Vec::new();
    for _ in 0..8 {
        low.push(rig.sms("low").await);
    }
    let critical = rig.sms("critical").await;
    assert!(
        rig.until(Duration::from_secs(5), || rig.sent(critical))
            .await
    );
    assert_eq!(rig.state(critical).await.1.as_deref(), Some("sns"));

    // Ten minutes: a 503 would have made every one a dead letter after its
    // attempts by now.
    tokio::time::sleep(Duration::from_secs(600)).await;
    for id in &low {
        assert_eq!(
            rig.state(*id).await.0,
            DeliveryState::RetryScheduled,
            "waits for the credential"
        );
    }
    // The first nine went out together, before the circuit opened; then
    // one probe per 60 s open period.
    let calls = rig.vendor("twilio").calls();
    assert!(
        (9..=9 + 11).contains(&calls),
        "the circuit spaces the tries: {calls} calls in 10 minutes"
    );
    assert_eq!(rig.vendor("sns").calls(), 1, "low does not fail over");
    let twilio = |rig: &Rig| {
        rig.accounts
            .route(Channel::Sms)
            .iter()
            .find(|a| a.name() == "twilio")
            .and_then(|a| a.refused())
    };
    let refused = twilio(&rig).expect("the account shows the refusal");
    assert_eq!(refused.calls, calls as u64);
    assert!(refused.reason.contains("20003"), "{}", refused.reason);

    // The token is fixed: at the next probe everything goes out.
    rig.vendor("twilio").set(Mode::Up);
    for id in &low {
        assert!(rig.until(Duration::from_secs(120), || rig.sent(*id)).await);
        assert_eq!(rig.state(*id).await.1.as_deref(), Some("twilio"));
    }
    assert_eq!(twilio(&rig), None, "the refusal is over");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn low_waits_while_a_lane_above_it_has_more_due_than_one_claim_takes() {
    let rig = Rig::start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 300 high (more than two claims of 128) and 50 low, due together.
    let mut high = std::collections::HashSet::new();
    for _ in 0..300 {
        high.insert(rig.sms_unannounced("high").await.1.to_string());
    }
    let mut low = std::collections::HashSet::new();
    for _ in 0..50 {
        low.insert(rig.sms_unannounced("low").await.1.to_string());
    }
    rig.bus.announce(&[
        (Channel::Sms, Priority::High),
        (Channel::Sms, Priority::Low),
    ]);
    let twilio = rig.vendor("twilio");
    assert!(
        rig.until(Duration::from_secs(30), || async { twilio.calls() == 350 })
            .await
    );
    let keys = twilio.keys();
    let first_low = keys
        .iter()
        .position(|k| low.contains(k))
        .expect("low was sent");
    let high_before = keys[..first_low]
        .iter()
        .filter(|k| high.contains(*k))
        .count();
    assert!(
        high_before >= 256,
        "low started after {high_before} high: it took slots while high had full claims waiting"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_timeout_pins_the_delivery_to_its_vendor_under_the_same_key() {
    let rig = Rig::start();
    // High may fail over, but not after an ambiguous outcome: the retry
    // stays with Twilio, under the same key.
    rig.vendor("twilio").set(Mode::TimesOut);
    let id = rig.sms("high").await;
    assert!(
        rig.until(Duration::from_secs(5), || async {
            rig.vendor("twilio").calls() >= 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    rig.vendor("twilio").set(Mode::Up);
    assert!(rig.until(Duration::from_secs(10), || rig.sent(id)).await);
    assert_eq!(rig.state(id).await.1.as_deref(), Some("twilio"));
    assert_eq!(rig.vendor("sns").calls(), 0, "never failed over");
    let keys = rig.vendor("twilio").keys();
    assert!(keys.len() >= 2, "{keys:?}");
    assert!(keys.iter().all(|k| k == &keys[0]), "one key: {keys:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_vendor_down_for_good_makes_a_dead_letter_after_the_lanes_attempts() {
    let rig = Rig::start();
    rig.vendor("twilio").set(Mode::Down);
    rig.vendor("sns").set(Mode::Down);
    // Normal: no failover on a 503, five attempts, then dead.
    let id = rig.sms("normal").await;
    assert!(
        rig.until(Duration::from_secs(30), || async {
            rig.state(id).await.0 == DeliveryState::Dead
        })
        .await,
        "{:?}",
        rig.state(id).await
    );
    assert_eq!(rig.vendor("twilio").calls(), 5);
    assert_eq!(rig.vendor("sns").calls(), 0);
    rig.stop().await;
}

/// Workers ask the store only for lanes that may hold work: what was
/// announced, and every lane once a poll interval. A delivery stored
/// without an announcement (a retry come due, another node's) is still
/// found while another lane's announcements keep the workers awake.
#[tokio::test(start_paused = true)]
async fn a_lane_nothing_is_announced_for_is_still_asked_each_poll_interval() {
    let rig = Rig::start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (quiet, _) = rig.sms_unannounced("low").await;
    // Critical SMS announced every 5 ms: ten a poll interval (50 ms here).
    let mut announced = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline && !rig.sent(quiet).await {
        announced.push(rig.sms("critical").await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        rig.sent(quiet).await,
        "the unannounced delivery was never claimed"
    );
    assert!(
        announced.len() >= 5,
        "the workers were woken many times meanwhile ({})",
        announced.len()
    );
    for id in announced {
        assert!(rig.until(Duration::from_secs(1), || rig.sent(id)).await);
    }
    rig.stop().await;
}

/// Work due at once, accepted on a node with its channel's workers, is
/// handed to them as it is stored: sent at once, each as its first
/// attempt under its own key, though nothing was announced and no claim
/// could have taken it (the store holds it under the handed lease, a
/// minute here, while the engine polls every 50 ms).
#[tokio::test(start_paused = true)]
async fn work_handed_off_is_sent_at_once_without_a_claim() {
    let rig = Rig::start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids = Vec::new();
    for lane in ["critical", "high", "normal", "low"].repeat(5) {
        ids.push(rig.sms_handed(lane).await);
    }
    for id in &ids {
        assert!(rig.until(Duration::from_secs(1), || rig.sent(*id)).await);
        let view = rig
            .store
            .notification("t", *id)
            .await
            .expect("read")
            .expect("exists");
        let attempts = &view.deliveries[0].attempts;
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(attempts[0].attempt, 1);
    }
    let mut keys = rig.vendor("twilio").keys();
    assert_eq!(keys.len(), 20);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20, "one call each");
    rig.stop().await;
}
