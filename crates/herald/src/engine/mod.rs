//! The delivery engine: one worker pool per channel, fed by the bus.

pub mod accounts;
pub mod callbacks;
mod deliver;
mod dispatch;
pub mod fleet;
pub mod outbound;
mod smtp;
pub mod suppressions;
#[cfg(test)]
mod tests;
mod unwritten;

use std::sync::Arc;
use std::time::Duration;

use herald_core::bus::Bus;
use herald_core::lanes::{LaneRules, Lanes};
use herald_core::model::Channel;
use herald_core::pool::PoolPolicy;
use herald_core::status::Throughput;
use herald_core::store::{Queue, Suppressions, Upkeep};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::render::Templates;
use accounts::Accounts;
pub use deliver::{Screen, Shared};
use dispatch::Dispatcher;
use outbound::Outbound;
use unwritten::Unwritten;

/// The most outcomes held for a store that does not answer: a few
/// hundred bytes each, so tens of megabytes at most.
const MAX_UNWRITTEN: usize = 100_000;

/// The engine's own settings (`Config::engine_settings`).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Routing and retry rules per lane.
    pub lanes: Lanes<LaneRules>,
    /// The channels this node delivers, and how each one's pool is divided
    /// among the lanes.
    pub pools: Vec<(Channel, PoolPolicy)>,
    /// Deliveries claimed per lane at a time.
    pub claim_batch: usize,
    /// How often an idle pool looks for work, and the housekeeping tick.
    pub poll: Duration,
    /// How long shutdown waits for calls in flight.
    pub grace: Duration,
    /// Finished notifications older than this are deleted (zero: never).
    pub retention: Duration,
    /// How often the node's copy of the suppression lists reads changes.
    pub suppression_refresh: Duration,
    /// Critical notifications go to suppressed addresses too.
    pub suppression_critical_bypass: bool,
}

pub struct Engine {
    pools: JoinSet<()>,
    shutdown: CancellationToken,
    /// Writes held outcomes; stopped after the pools, so it writes theirs.
    outcomes: tokio::task::JoinHandle<()>,
    stop_outcomes: CancellationToken,
}

/// What the engine works with: the store by the roles it uses, the bus,
/// the accounts and their transport, the templates, and where it counts
/// what it finishes.
pub struct Parts {
    pub queue: Arc<dyn Queue>,
    pub upkeep: Arc<dyn Upkeep>,
    pub bus: Arc<dyn Bus>,
    pub accounts: Arc<Accounts>,
    pub outbound: Outbound,
    pub templates: Arc<Templates>,
    pub throughput: Arc<Throughput>,
    pub suppressions: Arc<dyn Suppressions>,
    pub recipients: Arc<dyn herald_core::store::Recipients>,
    /// The node's copy of the suppression lists, which the engine keeps
    /// (the API, on the same node, writes its own changes into it too).
    pub suppression_list: Arc<suppressions::SuppressionList>,
    /// Tenants' callbacks, told of each delivery's final state.
    pub callbacks: Option<Arc<callbacks::Callbacks>>,
}

impl Engine {
    /// Starts a pool per channel in `settings.pools` over the accounts, the
    /// expiry sweep and the retention purge.
    pub fn start(settings: &EngineSettings, parts: Parts) -> anyhow::Result<Engine> {
        let Parts {
            queue,
            upkeep,
            bus,
            accounts,
            outbound,
            templates,
            throughput,
            suppressions,
            recipients,
            suppression_list: list,
            callbacks,
        } = parts;
        let shared = Arc::new(Shared {
            queue,
            accounts,
            outbound,
            lanes: settings.lanes.clone(),
            templates,
            unwritten: Arc::new(Unwritten::new(MAX_UNWRITTEN)),
            throughput,
            callbacks,
            suppression: Screen {
                list: list.clone(),
                store: suppressions.clone(),
                recipients,
                critical_bypass: settings.suppression_critical_bypass,
            },
        });
        let shutdown = CancellationToken::new();
        let mut pools = JoinSet::new();
        pools.spawn(suppressions::follow(
            suppressions,
            list,
            settings.suppression_refresh,
            shutdown.child_token(),
        ));
        for (channel, policy) in &settings.pools {
            let d = Dispatcher {
                channel: *channel,
                policy: policy.clone(),
                claim_batch: settings.claim_batch,
                poll: settings.poll,
                grace: settings.grace,
                bus: bus.clone(),
                shared: shared.clone(),
            };
            pools.spawn(d.run(shutdown.child_token()));
        }
        let stop_outcomes = CancellationToken::new();
        let outcomes = tokio::spawn(unwritten::keep_writing(
            shared.unwritten.clone(),
            shared.queue.clone(),
            settings.grace,
            stop_outcomes.clone(),
        ));
        pools.spawn(housekeeping(
            upkeep,
            settings.poll,
            settings.retention,
            shutdown.child_token(),
        ));
        Ok(Engine {
            pools,
            shutdown,
            outcomes,
            stop_outcomes,
        })
    }

    /// Stops claiming, finishes or releases in-flight work, writes what
    /// outcomes it holds, and returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.pools.join_next().await.is_some() {}
        self.stop_outcomes.cancel();
        if let Err(e) = self.outcomes.await {
            tracing::error!(error = %e, "the held-outcome writer failed");
        }
    }
}

/// Expires waiting deliveries on time even when nothing claims them (a lane
/// held back while every circuit on its route is open), every `every`; and
/// once a minute deletes finished notifications older than `retention`
/// (zero: never).
async fn housekeeping(
    store: Arc<dyn Upkeep>,
    every: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    const PURGE_EVERY: Duration = Duration::from_secs(60);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.expire_overdue(herald_core::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                count = n,
                "waiting deliveries expired before they could be sent"
            ),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; the next one retries"),
        }
        if !retention.is_zero() && last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            purge(store.as_ref(), retention, &shutdown).await;
        }
    }
}

/// Deletes finished notifications older than `retention`, a batch at a time
/// (each its own short transaction, so claims and records are not held up),
/// until a batch comes back short.
async fn purge(store: &dyn Upkeep, retention: Duration, shutdown: &CancellationToken) {
    const BATCH: usize = 1_000;
    let before = herald_core::now_ms() - herald_core::ms(retention);
    let mut total = 0;
    while !shutdown.is_cancelled() {
        match store.purge_finished(before, BATCH).await {
            Ok(n) => {
                total += n;
                metrics::counter!(crate::telemetry::PURGED).increment(n);
                if (n as usize) < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention purge failed; the next one retries");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(
            count = total,
            "finished notifications past retention deleted"
        );
    }
}
