//! Provider accounts at run time: each adapter with the guards around its
//! calls, in the order STYLE.md gives — rate limit → concurrency limit →
//! circuit breaker → timeout → adapter — and the routes that order them per
//! channel.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::breaker::{
    Admission, Breaker, BreakerView, CircuitState, Health, Ticket, Transition,
};
use herald_core::model::Channel;
use herald_core::provider::{OutboundMessage, Outcome, Provider};
use herald_core::store::CallRecord;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::fleet::Fleet;
use super::outbound::{self, Outbound};
use crate::config::{Config, ProviderGuards};
use crate::telemetry as m;

/// The longest a call waits in-process for the vendor's send rate; beyond
/// it the delivery is deferred (or fails over) rather than hold a worker.
const MAX_RATE_WAIT: Duration = Duration::from_millis(500);

/// One vendor account and its guards.
pub struct Account {
    pub provider: Arc<dyn Provider>,
    pub channel: Channel,
    guards: ProviderGuards,
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    slots: Option<Semaphore>,
    breaker: Mutex<Breaker>,
    /// Shares the send rate and open circuits with the other nodes.
    fleet: Option<Arc<Fleet>>,
}

/// What one try at an account came to.
pub enum Try {
    /// The vendor was called (or the request could not even be built).
    Called { outcome: Outcome, call: CallRecord },
    /// Not called: its circuit is open or its send rate is used up. Usable
    /// again at `retry_at_ms`.
    Skipped { retry_at_ms: i64, why: String },
}

/// What `GET /v1/providers` shows for one account.
#[derive(Debug, Serialize)]
pub struct AccountView {
    pub name: String,
    pub vendor: &'static str,
    pub channel: Channel,
    pub circuit: BreakerView,
    pub rate_limit_per_second: Option<u32>,
    pub max_concurrency: Option<usize>,
    pub in_flight: Option<usize>,
    pub request_timeout_ms: u128,
}

fn lock(m: &Mutex<Breaker>) -> MutexGuard<'_, Breaker> {
    // The breaker's methods never panic midway; a poisoned lock is still sound.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Account {
    fn new(
        name: &str,
        cfg: &Config,
        outbound: &Outbound,
        fleet: Option<Arc<Fleet>>,
    ) -> anyhow::Result<Arc<Account>> {
        let settings = cfg
            .providers
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("providers.{name}: not configured"))?;
        let provider = herald_providers::from_config(name, &settings.account)?;
        let guards = cfg.provider_guards(name);
        let channel = settings.account.channel();
        let client = outbound.client(&guards, channel == Channel::Webhook)?;
        let limiter = guards.rate_limit.and_then(|(rate, burst)| {
            let rate = NonZeroU32::new(rate)?;
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Some(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let slots = guards.max_concurrency.map(Semaphore::new);
        metrics::gauge!(m::CIRCUIT_STATE, "provider" => name.to_owned())
            .set(CircuitState::Closed.gauge());
        let account = Account {
            provider,
            channel,
            breaker: Mutex::new(Breaker::new(guards.breaker)),
            guards,
            client,
            limiter,
            slots,
            fleet,
        };
        Ok(Arc::new(account))
    }

    pub fn name(&self) -> &str {
        self.provider.name()
    }

    pub fn circuit(&self, now_ms: i64) -> CircuitState {
        lock(&self.breaker).state(now_ms)
    }

    /// One call, guarded: rate limit → concurrency → breaker → timeout.
    pub async fn call(&self, msg: &OutboundMessage) -> Try {
        let now = herald_core::now_ms();
        // An open circuit is skipped before anything is spent on it.
        if let Some(retry_at_ms) = lock(&self.breaker).open_until(now) {
            return Try::Skipped {
                retry_at_ms,
                why: format!("{}: circuit open", self.name()),
            };
        }
        if let Err(wait) = self.take_send_slot().await {
            metrics::counter!(m::THROTTLED_LOCALLY, "provider" => self.name().to_owned())
                .increment(1);
            return Try::Skipped {
                retry_at_ms: now + herald_core::ms(wait),
                why: format!("{}: send rate limit reached", self.name()),
            };
        }
        let _permit = match &self.slots {
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        let req = match self.provider.build(msg) {
            Ok(r) => r,
            Err(e) => {
                let outcome = Outcome::Permanent {
                    reason: e.to_string(),
                };
                let call = self.call_record(&outcome, None, herald_core::now_ms(), 0);
                return Try::Called { outcome, call };
            }
        };
        let started_at_ms = herald_core::now_ms();
        let (admission, transition) = lock(&self.breaker).admit(started_at_ms);
        self.transitioned(transition, None);
        let ticket = match admission {
            Admission::Allowed(t) => Admitted {
                account: self,
                ticket: Some(t),
            },
            Admission::Rejected { retry_at_ms } => {
                return Try::Skipped {
                    retry_at_ms,
                    why: format!("{}: circuit half-open, waiting for its probe", self.name()),
                }
            }
        };
        let (result, took) = outbound::send(&self.client, req, self.guards.request_timeout).await;
        let (outcome, status) = match result {
            Ok(resp) => (self.provider.classify(&resp), Some(resp.status.as_u16())),
            Err(transport) => (transport, None),
        };
        let health = match &outcome {
            Outcome::Accepted { .. } | Outcome::Permanent { .. } => Health::Up,
            Outcome::Transient { .. } => Health::Failing,
            Outcome::RateLimited { .. } => Health::Throttled,
        };
        let transition = ticket.report(health);
        self.transitioned(transition, outcome.reason());
        let latency_ms = herald_core::ms(took);
        metrics::histogram!(m::ATTEMPT_SECONDS, "channel" => self.channel.as_str(), "provider" => self.name().to_owned())
            .record(took.as_secs_f64());
        metrics::counter!(m::ATTEMPTS, "channel" => self.channel.as_str(), "provider" => self.name().to_owned(), "outcome" => outcome.label())
            .increment(1);
        let call = self.call_record(&outcome, status, started_at_ms, latency_ms);
        Try::Called { outcome, call }
    }

    /// Takes a token from the send-rate bucket (the fleet's, through Redis,
    /// or this node's own when there is no Redis or it does not answer),
    /// waiting up to `MAX_RATE_WAIT`; otherwise says how long until one is
    /// free.
    async fn take_send_slot(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut waited = Duration::ZERO;
        loop {
            let fleet = match (&self.fleet, self.guards.rate_limit) {
                (Some(f), Some((rate, burst))) => f.take(self.name(), rate, burst).await,
                _ => None,
            };
            let taken = fleet.unwrap_or_else(|| {
                limiter
                    .check()
                    .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
            });
            match taken {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    if waited + wait > MAX_RATE_WAIT {
                        return Err(wait.max(Duration::from_millis(1)));
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    fn call_record(
        &self,
        outcome: &Outcome,
        status: Option<u16>,
        started_at_ms: i64,
        latency_ms: i64,
    ) -> CallRecord {
        CallRecord {
            provider: self.name().to_owned(),
            started_at_ms,
            latency_ms,
            outcome: outcome.label().to_owned(),
            status_code: status,
            error: outcome.reason().map(str::to_owned),
        }
    }

    fn transitioned(&self, t: Option<Transition>, cause: Option<&str>) {
        let Some(t) = t else { return };
        let name = self.name().to_owned();
        metrics::gauge!(m::CIRCUIT_STATE, "provider" => name.clone()).set(t.to.gauge());
        metrics::counter!(m::CIRCUIT_TRANSITIONS, "provider" => name.clone(), "to" => t.to.as_str())
            .increment(1);
        let view = lock(&self.breaker).view(herald_core::now_ms());
        if let (CircuitState::Open, Some(fleet), Some(at)) = (t.to, &self.fleet, view.opened_at_ms)
        {
            let (fleet, open_ms, provider) =
                (fleet.clone(), self.guards.breaker.open_ms, name.clone());
            tokio::spawn(async move { fleet.opened(&provider, at, open_ms).await });
        }
        match t.to {
            CircuitState::Open => tracing::warn!(
                provider = %name, from = %t.from, to = %t.to,
                failures = view.consecutive_failures, reopens_at_ms = view.reopens_at_ms,
                cause = cause.unwrap_or(""), "circuit opened: requests to this provider stop"
            ),
            _ => tracing::info!(provider = %name, from = %t.from, to = %t.to, "circuit changed"),
        }
    }

    pub fn view(&self, now_ms: i64) -> AccountView {
        AccountView {
            name: self.name().to_owned(),
            vendor: self.provider.vendor(),
            channel: self.channel,
            circuit: lock(&self.breaker).view(now_ms),
            rate_limit_per_second: self.guards.rate_limit.map(|(r, _)| r),
            max_concurrency: self.guards.max_concurrency,
            in_flight: self
                .slots
                .as_ref()
                .zip(self.guards.max_concurrency)
                .map(|(s, max)| max.saturating_sub(s.available_permits())),
            request_timeout_ms: self.guards.request_timeout.as_millis(),
        }
    }
}

/// An admitted call's ticket. Dropped unreported (the task was cancelled
/// mid-call), it gives its probe slot back, so a half-open circuit is never
/// left waiting for a probe that will not report.
struct Admitted<'a> {
    account: &'a Account,
    ticket: Option<Ticket>,
}

impl Admitted<'_> {
    fn report(mut self, health: Health) -> Option<Transition> {
        let ticket = self.ticket.take()?;
        lock(&self.account.breaker).report(ticket, health, herald_core::now_ms())
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            lock(&self.account.breaker).cancel(t);
        }
    }
}

/// Every configured account that a channel routes to, and the routes.
pub struct Accounts {
    routes: BTreeMap<Channel, Vec<Arc<Account>>>,
    all: Vec<Arc<Account>>,
}

impl Accounts {
    pub fn from_config(
        cfg: &Config,
        outbound: &Outbound,
        fleet: Option<Arc<Fleet>>,
    ) -> anyhow::Result<Accounts> {
        let mut by_name: BTreeMap<&str, Arc<Account>> = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for ch in cfg.enabled_channels() {
            let mut route = Vec::new();
            for name in &cfg.channels[&ch].providers {
                let account = match by_name.get(name.as_str()) {
                    Some(a) => a.clone(),
                    None => {
                        let a = Account::new(name, cfg, outbound, fleet.clone())?;
                        by_name.insert(name, a.clone());
                        a
                    }
                };
                route.push(account);
            }
            routes.insert(ch, route);
        }
        Ok(Accounts {
            routes,
            all: by_name.into_values().collect(),
        })
    }

    /// The channel's providers in order, the primary first.
    pub fn route(&self, channel: Channel) -> &[Arc<Account>] {
        self.routes.get(&channel).map_or(&[], Vec::as_slice)
    }

    pub fn names(&self) -> Vec<String> {
        self.all.iter().map(|a| a.name().to_owned()).collect()
    }

    /// Another node opened `name`'s circuit at `opened_at_ms`: open it here.
    pub fn opened_elsewhere(&self, name: &str, opened_at_ms: i64) {
        let Some(a) = self.all.iter().find(|a| a.name() == name) else {
            return;
        };
        let t = lock(&a.breaker).opened_elsewhere(opened_at_ms, herald_core::now_ms());
        a.transitioned(t, Some("opened by another node"));
    }

    pub fn views(&self, now_ms: i64) -> Vec<AccountView> {
        self.all.iter().map(|a| a.view(now_ms)).collect()
    }

    /// Refreshes the circuit gauges (an open circuit whose time is up reads
    /// half-open before any probe has run).
    pub fn publish_gauges(&self, now_ms: i64) {
        for a in &self.all {
            metrics::gauge!(m::CIRCUIT_STATE, "provider" => a.name().to_owned())
                .set(a.circuit(now_ms).gauge());
        }
    }
}
