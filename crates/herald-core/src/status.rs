//! What a running node says about its parts, through interfaces narrow
//! enough for the API to depend on: the provider accounts as their
//! circuits and guards stand ([`ProviderStatus`], implemented by the
//! engine's accounts), and whether the bus's own cluster answers
//! ([`BusHealth`], implemented by the Kafka probe). The store reports its
//! own through its `Health` role.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::breaker::BreakerView;
use crate::lanes::Lanes;
use crate::model::{Channel, Priority};

/// One provider account as `GET /v1/providers` shows it.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub name: String,
    pub vendor: &'static str,
    pub channel: Channel,
    pub circuit: BreakerView,
    /// For accounts guarded per destination (webhooks): how many are
    /// tracked and whose circuits are open.
    pub destinations: Option<DestinationsView>,
    pub rate_limit_per_second: Option<u32>,
    pub max_concurrency: Option<usize>,
    pub in_flight: Option<usize>,
    pub request_timeout_ms: u128,
    /// Set while the vendor refuses the account's credential.
    pub refused: Option<Refused>,
    /// Set while an operator holds the circuit open by hand.
    pub hold: Option<crate::store::CircuitHold>,
    /// The latest call that counted against the circuit (5xx, timeout,
    /// connection trouble, a refused credential): when, and the answer.
    pub last_error: Option<LastError>,
}

/// A failed call, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub at_ms: i64,
    pub reason: String,
}

/// The vendor refuses an account's credential (the account error class):
/// since when, why (its latest answer), and how many calls it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub since_ms: i64,
    pub reason: String,
    pub calls: u64,
}

#[derive(Debug, Clone)]
pub struct DestinationsView {
    pub tracked: usize,
    pub max_tracked: usize,
    /// Destinations whose circuits are open or half-open, every tenant's.
    pub open_count: usize,
    /// The asking tenant's own (at most 20): another tenant's endpoints are
    /// not its business.
    pub open: Vec<OpenDestination>,
}

#[derive(Debug, Clone)]
pub struct OpenDestination {
    /// The endpoint's origin, `https://hooks.example.com:443`.
    pub origin: String,
    pub circuit: BreakerView,
}

/// The provider accounts, as their circuits and guards stand now.
pub trait ProviderStatus: Send + Sync {
    /// Every account as `tenant_id` may see it (another tenant's webhook
    /// destinations are counted, never named).
    fn views(&self, now_ms: i64, tenant_id: Option<&str>) -> Vec<AccountView>;
    /// Brings the circuit and credential gauges up to date (a circuit
    /// whose open time is up reads half-open before any probe has run),
    /// for a metrics scrape.
    fn publish_gauges(&self, now_ms: i64);
    /// Takes the store's circuit holds at once (an operator's change on
    /// this node need not wait for the next read).
    fn apply_holds(&self, holds: &[crate::store::CircuitHold]);
    /// Closes a provider's circuits on this node by hand; `false`: no such
    /// provider.
    fn close_by_hand(&self, provider: &str) -> bool;
}

/// Deliveries this node's engine has finished (sent, failed, dead or
/// expired), per channel and lane: how fast each lane drains, for
/// admission control on a node that also delivers.
#[derive(Debug, Default)]
pub struct Throughput {
    finished: [Lanes<AtomicU64>; Channel::ALL.len()],
}

impl Throughput {
    /// One more delivery of `channel` and `lane` finished.
    pub fn finished(&self, channel: Channel, lane: Priority) {
        self.finished[channel.index()][lane].fetch_add(1, Ordering::Relaxed);
    }

    /// How many have finished since the process started.
    pub fn total(&self, channel: Channel, lane: Priority) -> u64 {
        self.finished[channel.index()][lane].load(Ordering::Relaxed)
    }
}

/// Why a dependency is not ready, in words for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// Whether the bus's own cluster answers, for readiness (a bus that is the
/// store has none of its own and needs no probe).
#[async_trait]
pub trait BusHealth: Send + Sync {
    /// `Ok` when the cluster answered within `timeout`; otherwise why not.
    async fn check(&self, timeout: Duration) -> Result<(), NotReady>;
}
