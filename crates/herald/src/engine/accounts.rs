//! Provider accounts at run time: each adapter with the guards around its
//! calls, in the order STYLE.md gives — rate limit → concurrency limit →
//! circuit breaker → timeout → adapter — and the routes that order them per
//! channel.
//!
//! A guard is keyed by what fails together. A vendor account (Twilio,
//! SendGrid…) fails for every message at once, so it has one set of guards.
//! The webhook channel calls each customer's own endpoint, and one
//! receiver's outage says nothing of another's: its guards are kept per
//! destination (tenant and endpoint origin), as Svix disables per endpoint,
//! so one broken receiver never holds back another tenant's webhooks.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::breaker::{Admission, Breaker, CircuitState, Health, Ticket, Transition};
use herald_core::lease::Lease;
use herald_core::model::Channel;
use herald_core::provider::{AccessToken, Address, AwsChain, OutboundMessage, Outcome, Provider};
use herald_core::status::{
    AccountView, DestinationsView, LastError, OpenDestination, ProviderStatus, Refused,
};
use herald_core::store::{CallRecord, CircuitHold};
use herald_providers::ProviderConfig;
use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::fleet::Fleet;
use super::outbound::{Http, Outbound, Transport};
use crate::config::ProviderGuards;
use crate::telemetry as m;

/// The longest a call waits in-process for the vendor's send rate; beyond
/// it the delivery is deferred (or fails over) rather than hold a worker.
const MAX_RATE_WAIT: Duration = Duration::from_millis(500);

/// One vendor account and its guards.
pub struct Account {
    pub provider: Arc<dyn Provider>,
    pub channel: Channel,
    guards: ProviderGuards,
    transport: Arc<dyn Transport>,
    scope: Scope,
    /// Shares the send rate and open circuits with the other nodes.
    fleet: Option<Arc<Fleet>>,
    /// Set while the vendor refuses the account's credential: logged when
    /// it starts and when it ends, not once per message.
    refused: Mutex<Option<Refused>>,
    /// The account's access token, for providers that get one from their
    /// vendor (`Provider::token_request`).
    token: Token,
    /// Set while an operator holds the circuit open (the store's holds,
    /// read by every delivering node): no call goes out.
    hold: Mutex<Option<CircuitHold>>,
}

/// An account's access token: one for every call, got once however many
/// calls find it missing or due for renewal (they wait for the one
/// request), and forgotten when the vendor refuses it.
#[derive(Default)]
struct Token {
    /// Whether the account uses one at all (a token endpoint, or AWS's
    /// chain): the others' calls skip the lock below.
    used: bool,
    current: Mutex<Option<AccessToken>>,
    renewing: tokio::sync::Mutex<()>,
    /// For an AWS account on the standard chain: its credentials provider
    /// (made at the first call; `None` if the chain has none at all).
    aws: tokio::sync::OnceCell<Option<aws_credential_types::provider::SharedCredentialsProvider>>,
}

/// How long resolving AWS credentials from the chain may take.
const AWS_CHAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long credentials without an expiry (keys in a profile file or the
/// environment) are used before the chain is asked again.
const AWS_STATIC_REUSE_MS: i64 = 15 * 60_000;

/// The guards of one set of calls that fail together.
struct Guard {
    /// What the guard covers: the account's name, or the account and a
    /// webhook destination (`webhook https://hooks.example.com:443`).
    label: String,
    /// Its key in the fleet's Redis (destinations hashed: keys stay short
    /// and hold no customer URL).
    fleet_key: String,
    limiter: Option<DefaultDirectRateLimiter>,
    slots: Option<Semaphore>,
    breaker: Mutex<Breaker>,
    /// The latest call that counted against the circuit.
    last_error: Mutex<Option<LastError>>,
}

/// How an account's calls share guards.
enum Scope {
    /// One set for the whole account.
    Account(Arc<Guard>),
    /// One set per destination, the least recently used forgotten beyond
    /// the bound (its circuit starts closed again if it comes back).
    Destination(Mutex<LruCache<Destination, Arc<Guard>>>),
}

/// A webhook's destination: the tenant and the endpoint's origin (scheme,
/// host and port), which is what fails together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    tenant_id: String,
    origin: String,
}

impl Destination {
    fn of(msg: &OutboundMessage) -> Destination {
        let origin = match &msg.address {
            Address::Webhook(u) => url::Url::parse(u)
                .map(|u| {
                    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
                    let port = u.port_or_known_default().unwrap_or(0);
                    format!("{}://{host}:{port}", u.scheme())
                })
                .unwrap_or_else(|_| u.clone()),
            _ => String::new(),
        };
        Destination {
            tenant_id: msg.tenant_id.clone(),
            origin,
        }
    }
}

/// What one try at an account came to.
pub enum Try {
    /// The vendor was called (or the request could not even be built).
    Called { outcome: Outcome, call: CallRecord },
    /// Not called: its circuit is open or its send rate is used up. Usable
    /// again at `retry_at_ms`.
    Skipped { retry_at_ms: i64, why: String },
    /// Not called, and no call may be made under this claim: the waits left
    /// too little of the lease for a call to end before it runs out (after
    /// which another worker may hold the delivery and send it too).
    LeaseRunOut { why: String },
}

/// What an outcome tells the account's circuit.
fn health(outcome: &Outcome) -> Health {
    match outcome {
        Outcome::Accepted { .. } | Outcome::Permanent { .. } => Health::Up,
        Outcome::Transient { .. } | Outcome::Account { .. } => Health::Failing,
        Outcome::RateLimited { .. } => Health::Throttled,
    }
}

/// Keeps a call that counted against the circuit as the guard's last error.
fn note_failure(guard: &Guard, outcome: &Outcome, at_ms: i64) {
    if health(outcome) == Health::Failing {
        *lock(&guard.last_error) = Some(LastError {
            at_ms,
            reason: outcome.reason().unwrap_or("failed").to_owned(),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks panics midway; a poisoned lock is sound.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    fn new(label: String, fleet_key: String, guards: &ProviderGuards) -> Guard {
        let limiter = guards.rate_limit.and_then(|(rate, burst)| {
            let rate = NonZeroU32::new(rate)?;
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Some(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Guard {
            label,
            fleet_key,
            limiter,
            slots: guards.max_concurrency.map(Semaphore::new),
            breaker: Mutex::new(Breaker::new(guards.breaker)),
            last_error: Mutex::new(None),
        }
    }

    fn in_flight(&self, max: Option<usize>) -> usize {
        match (&self.slots, max) {
            (Some(s), Some(max)) => max.saturating_sub(s.available_permits()),
            _ => 0,
        }
    }
}

impl Account {
    fn new(
        settings: &AccountSettings,
        max_destinations: usize,
        transports: &Transports<'_>,
        fleet: Option<Arc<Fleet>>,
    ) -> anyhow::Result<Arc<Account>> {
        let name = settings.name.as_str();
        let provider = herald_providers::from_config(name, &settings.account)?;
        let guards = settings.guards.clone();
        let channel = settings.account.channel();
        let transport = transports(name, &guards, channel)?;
        let scope = if channel == Channel::Webhook {
            let max = NonZeroUsize::new(max_destinations).unwrap_or(NonZeroUsize::MIN);
            Scope::Destination(Mutex::new(LruCache::new(max)))
        } else {
            metrics::gauge!(m::CIRCUIT_STATE, "provider" => name.to_owned())
                .set(CircuitState::Closed.gauge());
            Scope::Account(Arc::new(Guard::new(
                name.to_owned(),
                name.to_owned(),
                &guards,
            )))
        };
        // A service account's key signs its first assertion here, so a
        // key that cannot is refused at start-up, not at the first message.
        let first = provider.token_request(herald_core::now_ms());
        if let Some(Err(e)) = &first {
            anyhow::bail!("providers.{name}: {e}");
        }
        let token = Token {
            used: first.is_some() || provider.aws_chain().is_some(),
            ..Token::default()
        };
        let account = Account {
            provider,
            channel,
            guards,
            transport,
            scope,
            fleet,
            refused: Mutex::new(None),
            token,
            hold: Mutex::new(None),
        };
        metrics::gauge!(m::CREDENTIALS_REFUSED, "provider" => name.to_owned()).set(0.0);
        Ok(Arc::new(account))
    }

    pub fn name(&self) -> &str {
        self.provider.name()
    }

    /// The account's own circuit. An account guarded per destination has
    /// none of its own: it reads closed, and each destination is judged
    /// when its delivery is tried.
    pub fn circuit(&self, now_ms: i64) -> CircuitState {
        if lock(&self.hold).is_some() {
            return CircuitState::Open;
        }
        match &self.scope {
            Scope::Account(g) => lock(&g.breaker).state(now_ms),
            Scope::Destination(_) => CircuitState::Closed,
        }
    }

    /// The guard this message's call passes.
    fn guard_for(&self, msg: &OutboundMessage) -> Arc<Guard> {
        match &self.scope {
            Scope::Account(g) => g.clone(),
            Scope::Destination(map) => {
                let dest = Destination::of(msg);
                let mut map = lock(map);
                if let Some(g) = map.get(&dest) {
                    return g.clone();
                }
                let mut hash = Sha256::new();
                hash.update(dest.tenant_id.as_bytes());
                hash.update([0]);
                hash.update(dest.origin.as_bytes());
                let hash = hex::encode(&hash.finalize()[..12]);
                let g = Arc::new(Guard::new(
                    format!("{} {}", self.name(), dest.origin),
                    format!("{}:{hash}", self.name()),
                    &self.guards,
                ));
                map.put(dest, g.clone());
                g
            }
        }
    }

    /// One call, guarded: rate limit → concurrency → breaker → timeout. No
    /// call starts unless `lease` covers it, checked after the last wait;
    /// the message is stamped (`now_ms`, which signatures and timestamps
    /// are made from) right before it is built and sent.
    pub async fn call(&self, msg: &mut OutboundMessage, lease: Lease) -> Try {
        let guard = self.guard_for(msg);
        let now = herald_core::now_ms();
        // A circuit held open by hand stays open, whatever its own says.
        if let Some(h) = lock(&self.hold).as_ref() {
            return Try::Skipped {
                retry_at_ms: now + self.guards.breaker.open_ms,
                why: format!(
                    "{}: circuit held open by {}: {}",
                    self.name(),
                    h.by,
                    h.reason
                ),
            };
        }
        // An open circuit is skipped before anything is spent on it.
        if let Some(retry_at_ms) = lock(&guard.breaker).open_until(now) {
            return Try::Skipped {
                retry_at_ms,
                why: format!("{}: circuit open", guard.label),
            };
        }
        if let Err(wait) = self.take_send_slot(&guard, lease).await {
            metrics::counter!(m::THROTTLED_LOCALLY, "provider" => self.name().to_owned())
                .increment(1);
            return Try::Skipped {
                retry_at_ms: now + herald_core::ms(wait),
                why: format!("{}: send rate limit reached", guard.label),
            };
        }
        let Ok(_permit) = self.take_concurrency_slot(&guard, lease).await else {
            return Try::LeaseRunOut {
                why: format!(
                    "{}: no concurrency slot came free while the lease allowed a call",
                    guard.label
                ),
            };
        };
        let (admission, transition) = lock(&guard.breaker).admit(herald_core::now_ms());
        self.transitioned(&guard, transition, None);
        let ticket = match admission {
            Admission::Allowed(t) => Admitted {
                guard: &guard,
                ticket: Some(t),
            },
            Admission::Rejected { retry_at_ms } => {
                return Try::Skipped {
                    retry_at_ms,
                    why: format!("{}: circuit half-open, waiting for its probe", guard.label),
                }
            }
        };
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => {
                // The token endpoint's failure is the account's call.
                let now = herald_core::now_ms();
                let transition = ticket.report(health(&outcome));
                note_failure(&guard, &outcome, now);
                self.transitioned(&guard, transition, outcome.reason());
                self.note_credential(&outcome, now);
                let call = self.call_record(&outcome, None, now, 0);
                return Try::Called { outcome, call };
            }
        };
        // The fence: every wait is behind us; from here the request goes out.
        let started_at_ms = herald_core::now_ms();
        if !lease.covers(started_at_ms, self.guards.request_timeout) {
            return Try::LeaseRunOut {
                why: format!(
                    "{}: the lease ran out before the call could start",
                    guard.label
                ),
            };
        }
        msg.now_ms = started_at_ms;
        let built = self.provider.build(msg).and_then(|mut req| {
            if let Some(t) = &token {
                self.provider.authorize(&mut req, t)?;
            }
            Ok(req)
        });
        let mut req = match built {
            Ok(r) => r,
            Err(e) => {
                let outcome = Outcome::permanent(e.to_string());
                let call = self.call_record(&outcome, None, started_at_ms, 0);
                return Try::Called { outcome, call };
            }
        };
        let sending = tokio::time::Instant::now();
        let result = if crate::telemetry::sampled_here() {
            use tracing::Instrument as _;
            let span = tracing::info_span!(
                "vendor call",
                provider = %self.name(),
                vendor = self.provider.vendor(),
                otel.kind = "client",
                http.response.status_code = tracing::field::Empty,
            );
            // A webhook's receiver may trace too: it gets the call's context.
            if self.channel == Channel::Webhook {
                if let Some(tp) = crate::telemetry::context::traceparent(&span) {
                    if let Ok(v) = http::HeaderValue::from_str(&tp) {
                        req.headers_mut().insert("traceparent", v);
                    }
                }
            }
            let result = self
                .transport
                .send(req, self.guards.request_timeout)
                .instrument(span.clone())
                .await;
            if let Ok(resp) = &result {
                span.record("http.response.status_code", resp.status.as_u16());
            }
            result
        } else {
            // Traced but not sampled: no span of its own, but a webhook's
            // receiver still learns the trace (and that it is not sampled).
            if crate::telemetry::tracing_on() && self.channel == Channel::Webhook {
                if let Some(tp) = crate::telemetry::context::traceparent(&tracing::Span::current())
                {
                    if let Ok(v) = http::HeaderValue::from_str(&tp) {
                        req.headers_mut().insert("traceparent", v);
                    }
                }
            }
            self.transport.send(req, self.guards.request_timeout).await
        };
        let took = sending.elapsed();
        let (outcome, status) = match result {
            Ok(resp) => (self.provider.classify(&resp), Some(resp.status.as_u16())),
            Err(transport) => (transport, None),
        };
        self.note_credential(&outcome, started_at_ms);
        let transition = ticket.report(health(&outcome));
        note_failure(&guard, &outcome, started_at_ms);
        self.transitioned(&guard, transition, outcome.reason());
        let latency_ms = herald_core::ms(took);
        metrics::histogram!(m::ATTEMPT_SECONDS, "channel" => self.channel.as_str(), "provider" => self.name().to_owned())
            .record(took.as_secs_f64());
        metrics::counter!(m::ATTEMPTS, "channel" => self.channel.as_str(), "provider" => self.name().to_owned(), "outcome" => outcome.label())
            .increment(1);
        let call = self.call_record(&outcome, status, started_at_ms, latency_ms);
        Try::Called { outcome, call }
    }

    /// The account's access token, if its provider uses one: the current
    /// one, or a new one from the vendor's token endpoint when there is
    /// none or it is due for renewal. `Err`: what getting one came to.
    async fn access_token(&self) -> Result<Option<AccessToken>, Outcome> {
        if !self.token.used {
            return Ok(None);
        }
        let fresh = |now| {
            lock(&self.token.current)
                .as_ref()
                .filter(|t| !t.needs_renewal(now))
                .cloned()
        };
        if let Some(t) = fresh(herald_core::now_ms()) {
            return Ok(Some(t));
        }
        let _renewing = self.token.renewing.lock().await;
        // Another call may have renewed it while this one waited.
        let now = herald_core::now_ms();
        if let Some(t) = fresh(now) {
            return Ok(Some(t));
        }
        let req = match self.provider.token_request(now) {
            None => {
                let Some(chain) = self.provider.aws_chain() else {
                    return Ok(None);
                };
                let token = self.aws_credentials(chain).await?;
                metrics::counter!(m::TOKENS_ISSUED, "provider" => self.name().to_owned())
                    .increment(1);
                *lock(&self.token.current) = Some(token.clone());
                return Ok(Some(token));
            }
            Some(Ok(req)) => req,
            Some(Err(e)) => {
                return Err(Outcome::Account {
                    reason: e.to_string(),
                })
            }
        };
        let resp = self
            .transport
            .send(req, self.guards.request_timeout)
            .await?;
        let token = self.provider.token_from(&resp, herald_core::now_ms())?;
        tracing::info!(provider = %self.name(), expires_at_ms = token.expires_at_ms, "got a new access token");
        metrics::counter!(m::TOKENS_ISSUED, "provider" => self.name().to_owned()).increment(1);
        *lock(&self.token.current) = Some(token.clone());
        Ok(Some(token))
    }

    /// Credentials from AWS's standard chain (environment, profile files,
    /// web identity, ECS, instance metadata) through `aws-config`, as an
    /// access token for the adapter to sign with; bounded, and the
    /// account's error when there are none.
    async fn aws_credentials(&self, chain: &AwsChain) -> Result<AccessToken, Outcome> {
        use aws_credential_types::provider::ProvideCredentials;
        let provider = self
            .token
            .aws
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(chain.region.clone()));
                if let Some(p) = &chain.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(f) = &chain.shared_credentials_file {
                    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
                    loader = loader.profile_files(
                        EnvConfigFiles::builder()
                            .include_default_config_file(true)
                            .include_default_credentials_file(true)
                            .with_file(EnvConfigFileKind::Credentials, f)
                            .build(),
                    );
                }
                loader.load().await.credentials_provider()
            })
            .await
            .as_ref()
            .ok_or_else(|| Outcome::Account {
                reason: "AWS's standard chain has no credentials provider".into(),
            })?;
        let creds = tokio::time::timeout(AWS_CHAIN_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| Outcome::Account {
                reason: format!("AWS credentials: no answer within {AWS_CHAIN_TIMEOUT:?}"),
            })?
            .map_err(|e| Outcome::Account {
                reason: format!("AWS credentials from the standard chain: {e}"),
            })?;
        let now = herald_core::now_ms();
        let expires_at_ms = creds
            .expiry()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now + AWS_STATIC_REUSE_MS, |d| {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
            });
        tracing::info!(provider = %self.name(), expires_at_ms, "got AWS credentials from the standard chain");
        Ok(AccessToken {
            value: herald_core::secret::Secret::new(AwsChain::encode(
                creds.access_key_id(),
                creds.secret_access_key(),
                creds.session_token(),
            )),
            issued_at_ms: now,
            expires_at_ms,
        })
    }

    /// Follows whether the vendor takes the account's credential: the first
    /// refusal is logged as an error for the account (its messages wait),
    /// the first answer after that shows it works again (the vendor took
    /// a message, or refused the message itself) ends it.
    fn note_credential(&self, outcome: &Outcome, now_ms: i64) {
        let provider = self.name();
        match outcome {
            Outcome::Account { reason } => {
                metrics::counter!(m::CREDENTIAL_REFUSALS, "provider" => provider.to_owned())
                    .increment(1);
                // A token the vendor refuses is not used again.
                lock(&self.token.current).take();
                let mut refused = lock(&self.refused);
                match refused.as_mut() {
                    Some(r) => {
                        r.calls += 1;
                        r.reason.clone_from(reason);
                    }
                    None => {
                        tracing::error!(
                            provider, reason = %reason,
                            "the vendor refuses this account's credential: its messages wait for it to be fixed (or their TTL), critical ones fail over"
                        );
                        metrics::gauge!(m::CREDENTIALS_REFUSED, "provider" => provider.to_owned())
                            .set(1.0);
                        *refused = Some(Refused {
                            since_ms: now_ms,
                            reason: reason.clone(),
                            calls: 1,
                        });
                    }
                }
            }
            Outcome::Accepted { .. } | Outcome::Permanent { .. } => {
                if let Some(r) = lock(&self.refused).take() {
                    tracing::info!(
                        provider,
                        refused_calls = r.calls,
                        refused_for_ms = now_ms - r.since_ms,
                        "the vendor takes this account's credential again"
                    );
                    metrics::gauge!(m::CREDENTIALS_REFUSED, "provider" => provider.to_owned())
                        .set(0.0);
                }
            }
            Outcome::Transient { .. } | Outcome::RateLimited { .. } => {}
        }
    }

    /// The vendor refuses the account's credential now: since when and why.
    pub fn refused(&self) -> Option<Refused> {
        lock(&self.refused).clone()
    }

    /// Takes a token from the send-rate bucket (the fleet's, through Redis,
    /// or this node's own when there is no Redis or it does not answer at
    /// once), waiting up to `MAX_RATE_WAIT` and never past what the lease
    /// leaves for the call; otherwise says how long until one is free.
    async fn take_send_slot(&self, guard: &Guard, lease: Lease) -> Result<(), Duration> {
        let Some(limiter) = &guard.limiter else {
            return Ok(());
        };
        let timeout = self.guards.request_timeout;
        let mut waited = Duration::ZERO;
        loop {
            let fleet = match (&self.fleet, self.guards.rate_limit) {
                (Some(f), Some((rate, burst))) => f.take(&guard.fleet_key, rate, burst).await,
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
                    let room = lease.slack(herald_core::now_ms(), timeout);
                    if waited + wait > MAX_RATE_WAIT || wait > room {
                        return Err(wait.max(Duration::from_millis(1)));
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    /// A concurrency slot, waiting no longer than the lease leaves for the
    /// call; `Err` when none came free in time.
    async fn take_concurrency_slot<'g>(
        &self,
        guard: &'g Guard,
        lease: Lease,
    ) -> Result<Option<SemaphorePermit<'g>>, ()> {
        let Some(slots) = &guard.slots else {
            return Ok(None);
        };
        if let Ok(p) = slots.try_acquire() {
            return Ok(Some(p));
        }
        let room = lease.slack(herald_core::now_ms(), self.guards.request_timeout);
        match tokio::time::timeout(room, slots.acquire()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(()),
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

    fn transitioned(&self, guard: &Guard, t: Option<Transition>, cause: Option<&str>) {
        let Some(t) = t else { return };
        let name = self.name().to_owned();
        metrics::counter!(m::CIRCUIT_TRANSITIONS, "provider" => name.clone(), "to" => t.to.as_str())
            .increment(1);
        let view = lock(&guard.breaker).view(herald_core::now_ms());
        if let Scope::Account(_) = self.scope {
            metrics::gauge!(m::CIRCUIT_STATE, "provider" => name.clone()).set(t.to.gauge());
            if let (CircuitState::Open, Some(fleet), Some(at)) =
                (t.to, &self.fleet, view.opened_at_ms)
            {
                let (fleet, open_ms, provider) =
                    (fleet.clone(), self.guards.breaker.open_ms, name.clone());
                tokio::spawn(async move { fleet.opened(&provider, at, open_ms).await });
            }
        }
        match t.to {
            CircuitState::Open => tracing::warn!(
                provider = %name, circuit = %guard.label, from = %t.from, to = %t.to,
                failures = view.consecutive_failures, reopens_at_ms = view.reopens_at_ms,
                cause = cause.unwrap_or(""), "circuit opened: requests to it stop"
            ),
            _ => {
                tracing::info!(provider = %name, circuit = %guard.label, from = %t.from, to = %t.to, "circuit changed")
            }
        }
    }

    /// The account as `tenant_id` may see it (its own destinations only).
    pub fn view(&self, now_ms: i64, tenant_id: Option<&str>) -> AccountView {
        let max = self.guards.max_concurrency;
        let (mut circuit, destinations, in_flight, last_error) = match &self.scope {
            Scope::Account(g) => (
                lock(&g.breaker).view(now_ms),
                None,
                g.in_flight(max),
                lock(&g.last_error).clone(),
            ),
            Scope::Destination(map) => {
                let map = lock(map);
                let mut open = Vec::new();
                let (mut in_flight, mut open_count) = (0, 0);
                for (dest, g) in map.iter() {
                    in_flight += g.in_flight(max);
                    let circuit = lock(&g.breaker).view(now_ms);
                    if circuit.state == CircuitState::Closed {
                        continue;
                    }
                    open_count += 1;
                    if tenant_id == Some(dest.tenant_id.as_str()) && open.len() < 20 {
                        open.push(OpenDestination {
                            origin: dest.origin.clone(),
                            circuit,
                        });
                    }
                }
                let view = DestinationsView {
                    tracked: map.len(),
                    max_tracked: map.cap().get(),
                    open,
                    open_count,
                };
                let closed = Breaker::new(self.guards.breaker).view(now_ms);
                (closed, Some(view), in_flight, None)
            }
        };
        let hold = lock(&self.hold).clone();
        if let Some(h) = &hold {
            circuit.state = CircuitState::Open;
            circuit.opened_at_ms = Some(h.since_ms);
            circuit.reopens_at_ms = None;
        }
        AccountView {
            name: self.name().to_owned(),
            vendor: self.provider.vendor(),
            channel: self.channel,
            circuit,
            destinations,
            rate_limit_per_second: self.guards.rate_limit.map(|(r, _)| r),
            max_concurrency: max,
            in_flight: max.map(|_| in_flight),
            request_timeout_ms: self.guards.request_timeout.as_millis(),
            refused: self.refused(),
            hold,
            last_error,
        }
    }

    /// The destinations whose circuits are not closed (0 for an account
    /// guarded as a whole).
    fn open_destinations(&self, now_ms: i64) -> usize {
        match &self.scope {
            Scope::Account(_) => 0,
            Scope::Destination(map) => lock(map)
                .iter()
                .filter(|(_, g)| lock(&g.breaker).state(now_ms) != CircuitState::Closed)
                .count(),
        }
    }
}

/// An admitted call's ticket. Dropped unreported (the task was cancelled
/// mid-call, or the call never started), it gives its probe slot back, so a
/// half-open circuit is never left waiting for a probe that will not report.
struct Admitted<'a> {
    guard: &'a Guard,
    ticket: Option<Ticket>,
}

impl Admitted<'_> {
    fn report(mut self, health: Health) -> Option<Transition> {
        let ticket = self.ticket.take()?;
        lock(&self.guard.breaker).report(ticket, health, herald_core::now_ms())
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            lock(&self.guard.breaker).cancel(t);
        }
    }
}

/// Every configured account that a channel routes to, and the routes.
pub struct Accounts {
    routes: BTreeMap<Channel, Vec<Arc<Account>>>,
    all: Vec<Arc<Account>>,
}

/// One account's own settings: the vendor's (its `kind` and keys) and the
/// guards around its calls, defaults filled in.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub name: String,
    pub account: ProviderConfig,
    pub guards: ProviderGuards,
}

/// The accounts' settings (`Config::account_settings`): each enabled
/// channel's route, the primary first.
#[derive(Debug, Clone)]
pub struct AccountsSettings {
    pub routes: BTreeMap<Channel, Vec<AccountSettings>>,
    /// Webhook destinations whose guards are tracked at once.
    pub max_destinations: usize,
}

/// How each account reaches its vendor: given the account's name, guards
/// and channel, its transport.
pub type Transports<'a> =
    dyn Fn(&str, &ProviderGuards, Channel) -> anyhow::Result<Arc<dyn Transport>> + 'a;

impl Accounts {
    /// The accounts on their routes, each over HTTP with a client of its
    /// own (webhooks with the guarded resolver).
    pub fn over_http(
        settings: &AccountsSettings,
        outbound: &Outbound,
        fleet: Option<Arc<Fleet>>,
    ) -> anyhow::Result<Accounts> {
        let http = |name: &str, guards: &ProviderGuards, channel: Channel| {
            let account = settings
                .routes
                .values()
                .flatten()
                .find(|a| a.name == name)
                .map(|a| &a.account);
            if let Some(ProviderConfig::Smtp(cfg)) = account {
                return Ok(Arc::new(super::smtp::Smtp::new(cfg, guards)?) as Arc<dyn Transport>);
            }
            // APNs speaks HTTP/2 only.
            let http2 = matches!(account, Some(ProviderConfig::Apns(_)));
            let client = outbound.client(guards, channel == Channel::Webhook, http2)?;
            Ok(Arc::new(Http(client)) as Arc<dyn Transport>)
        };
        Self::with_transports(settings, &http, fleet)
    }

    /// The accounts on their routes, each reaching its vendor the way
    /// `transports` says (a script, in the engine's tests).
    pub fn with_transports(
        settings: &AccountsSettings,
        transports: &Transports<'_>,
        fleet: Option<Arc<Fleet>>,
    ) -> anyhow::Result<Accounts> {
        let mut by_name: BTreeMap<&str, Arc<Account>> = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (ch, route_settings) in &settings.routes {
            let mut route = Vec::new();
            for account in route_settings {
                let account = match by_name.get(account.name.as_str()) {
                    Some(a) => a.clone(),
                    None => {
                        let a = Account::new(
                            account,
                            settings.max_destinations,
                            transports,
                            fleet.clone(),
                        )?;
                        by_name.insert(&account.name, a.clone());
                        a
                    }
                };
                route.push(account);
            }
            routes.insert(*ch, route);
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

    /// The accounts whose circuits the fleet shares (those guarded as a
    /// whole; a webhook destination's circuit is this node's own).
    pub fn names(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|a| matches!(a.scope, Scope::Account(_)))
            .map(|a| a.name().to_owned())
            .collect()
    }

    /// Another node opened `name`'s circuit at `opened_at_ms`: open it here.
    pub fn opened_elsewhere(&self, name: &str, opened_at_ms: i64) {
        let Some(a) = self.all.iter().find(|a| a.name() == name) else {
            return;
        };
        let Scope::Account(g) = &a.scope else { return };
        let t = lock(&g.breaker).opened_elsewhere(opened_at_ms, herald_core::now_ms());
        a.transitioned(g, t, Some("opened by another node"));
    }
}

impl Accounts {
    /// Takes the store's holds: a newly held account stops calling at once;
    /// a released one has its circuits closed by hand (failures forgotten).
    fn take_holds(&self, holds: &[CircuitHold]) {
        let now = herald_core::now_ms();
        for a in &self.all {
            let new = holds.iter().find(|h| h.provider == a.name()).cloned();
            let old = std::mem::replace(&mut *lock(&a.hold), new.clone());
            match (old, new) {
                (None, Some(h)) => {
                    tracing::warn!(provider = %a.name(), by = %h.by, reason = %h.reason, "circuit held open by hand: no calls until released");
                    metrics::gauge!(m::CIRCUIT_STATE, "provider" => a.name().to_owned())
                        .set(CircuitState::Open.gauge());
                }
                (Some(h), None) => {
                    a.close_by_hand(now);
                    tracing::info!(provider = %a.name(), held_by = %h.by, "circuit hold released: closed by hand");
                }
                _ => {}
            }
        }
    }

    /// Closes `name`'s circuits by hand (an automatically opened one too):
    /// calls go to it again, its failures forgotten. `false`: no such account.
    fn close_account(&self, name: &str) -> bool {
        let Some(a) = self.all.iter().find(|a| a.name() == name) else {
            return false;
        };
        a.close_by_hand(herald_core::now_ms());
        true
    }
}

/// Keeps the accounts' holds as the store has them: read every `every`
/// (each read bounded by the store's own timeout); while the store does
/// not answer, the holds last read stand.
pub async fn follow_holds(
    store: Arc<dyn herald_core::store::Circuits>,
    accounts: Arc<Accounts>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.circuit_holds().await {
            Ok(holds) => {
                failing = false;
                accounts.take_holds(&holds);
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read circuit holds; the last ones read stand");
            }
            Err(_) => {}
        }
    }
}

impl Account {
    fn close_by_hand(&self, now_ms: i64) {
        let guards: Vec<Arc<Guard>> = match &self.scope {
            Scope::Account(g) => vec![g.clone()],
            Scope::Destination(map) => lock(map).iter().map(|(_, g)| g.clone()).collect(),
        };
        for g in guards {
            let t = lock(&g.breaker).close_by_hand(now_ms);
            self.transitioned(&g, t, Some("closed by hand"));
        }
    }
}

impl ProviderStatus for Accounts {
    fn apply_holds(&self, holds: &[CircuitHold]) {
        self.take_holds(holds);
    }

    fn close_by_hand(&self, provider: &str) -> bool {
        self.close_account(provider)
    }

    fn views(&self, now_ms: i64, tenant_id: Option<&str>) -> Vec<AccountView> {
        self.all.iter().map(|a| a.view(now_ms, tenant_id)).collect()
    }

    /// Also, for accounts guarded per destination, how many destinations'
    /// circuits are open.
    fn publish_gauges(&self, now_ms: i64) {
        for a in &self.all {
            let refused = if a.refused().is_some() { 1.0 } else { 0.0 };
            metrics::gauge!(m::CREDENTIALS_REFUSED, "provider" => a.name().to_owned()).set(refused);
            match &a.scope {
                Scope::Account(_) => {
                    metrics::gauge!(m::CIRCUIT_STATE, "provider" => a.name().to_owned())
                        .set(a.circuit(now_ms).gauge());
                }
                Scope::Destination(_) => {
                    metrics::gauge!(m::OPEN_DESTINATIONS, "provider" => a.name().to_owned())
                        .set(a.open_destinations(now_ms) as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use herald_core::model::Priority;
    use herald_core::provider::OutboundMessage;

    fn webhook(tenant: &str, url: &str) -> OutboundMessage {
        OutboundMessage {
            delivery_key: "k".into(),
            notification_id: "n".into(),
            tenant_id: tenant.into(),
            channel: Channel::Webhook,
            priority: Priority::Normal,
            category: None,
            address: Address::Webhook(url.into()),
            content: Default::default(),
            metadata: None,
            accepted_at_ms: 0,
            now_ms: 0,
            expires_at_ms: None,
            unsubscribe: None,
        }
    }

    #[test]
    fn a_webhook_destination_is_its_tenant_and_endpoint_origin() {
        let d = |t, u| Destination::of(&webhook(t, u));
        assert_eq!(
            d("t1", "https://Hooks.Example.com/a?x=1"),
            d("t1", "https://hooks.example.com:443/b")
        );
        assert_ne!(
            d("t1", "https://hooks.example.com/a"),
            d("t2", "https://hooks.example.com/a"),
            "another tenant's endpoint fails on its own"
        );
        assert_ne!(
            d("t1", "https://hooks.example.com/a"),
            d("t1", "https://hooks.example.com:8443/a")
        );
        assert_ne!(
            d("t1", "https://hooks.example.com/a"),
            d("t1", "http://hooks.example.com/a")
        );
    }

    fn account(max_destinations: usize) -> Arc<Account> {
        let cfg = Config::load_with(None, |c| c.webhooks.max_destinations = max_destinations)
            .expect("defaults")
            .into_sandbox("http://127.0.0.1:1");
        let outbound = Outbound::new(&cfg.http, cfg.limits());
        let http = |_: &str, guards: &ProviderGuards, channel: Channel| {
            let client = outbound.client(guards, channel == Channel::Webhook, false)?;
            Ok(Arc::new(Http(client)) as Arc<dyn Transport>)
        };
        let settings = cfg.account_settings();
        let webhook = &settings.routes[&Channel::Webhook][0];
        Account::new(webhook, settings.max_destinations, &http, None).expect("account")
    }

    #[test]
    fn webhook_circuits_are_kept_per_destination_and_bounded() {
        let a = account(3);
        let bad = webhook("t1", "https://down.example.com/hook");
        let g = a.guard_for(&bad);
        for _ in 0..5 {
            let (admission, _) = lock(&g.breaker).admit(1_000);
            let Admission::Allowed(t) = admission else {
                panic!("closed circuits admit")
            };
            lock(&g.breaker).report(t, Health::Failing, 1_000);
        }
        assert_eq!(lock(&g.breaker).state(1_000), CircuitState::Open);
        assert_eq!(
            a.circuit(1_000),
            CircuitState::Closed,
            "the account as a whole stays usable"
        );
        let other = a.guard_for(&webhook("t2", "https://down.example.com/hook"));
        assert_eq!(lock(&other.breaker).state(1_000), CircuitState::Closed);
        assert!(Arc::ptr_eq(&g, &a.guard_for(&bad)), "the same guard again");
        assert_eq!(a.open_destinations(1_000), 1);
        let dests = a
            .view(1_000, Some("t1"))
            .destinations
            .expect("per destination");
        assert_eq!((dests.tracked, dests.open_count), (2, 1));
        assert_eq!(dests.open[0].origin, "https://down.example.com:443");
        let theirs = a
            .view(1_000, Some("t2"))
            .destinations
            .expect("per destination");
        assert_eq!(theirs.open_count, 1);
        assert!(
            theirs.open.is_empty(),
            "another tenant's endpoints are not shown"
        );

        // Bounded: a fourth and fifth destination push the least recently
        // used out, however many receivers there are.
        for host in ["a", "b", "c", "d"] {
            a.guard_for(&webhook("t3", &format!("https://{host}.example.com/")));
        }
        assert_eq!(a.view(1_000, None).destinations.expect("dests").tracked, 3);
    }
}
