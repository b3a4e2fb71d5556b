//! One channel's worker pool: claims due work highest lane first, within the
//! lane policy's room, and runs each delivery as a task in a bounded
//! `JoinSet`. On shutdown it stops claiming, lets in-flight deliveries finish
//! within the grace period, and releases whatever is left for the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::breaker::CircuitState;
use herald_core::bus::Bus;
use herald_core::lanes::Lanes;
use herald_core::model::{Channel, Priority};
use herald_core::pool::PoolPolicy;
use herald_core::store::LeaseToken;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::deliver::{deliver, Shared};

pub struct Dispatcher {
    pub channel: Channel,
    pub policy: PoolPolicy,
    pub claim_batch: usize,
    pub poll: Duration,
    pub grace: Duration,
    pub bus: Arc<dyn Bus>,
    pub shared: Arc<Shared>,
}

/// What a running delivery task holds, to release it if it must be abandoned.
struct Held {
    lane: Priority,
    delivery: uuid::Uuid,
    lease: LeaseToken,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut held: HashMap<Id, Held> = HashMap::new();
        let mut in_flight: Lanes<usize> = Lanes::default();
        let mut backoff = Duration::from_millis(50);
        tracing::info!(channel = %self.channel, concurrency = self.policy.concurrency, "worker pool started");

        while !shutdown.is_cancelled() {
            // Claim, highest lane first, as long as claims come back full.
            // A lane under one that filled a whole claim batch waits for
            // the next pass: what is due above it goes first, so under
            // overload the pool's slots go to the lanes with objectives,
            // and a newsletter flood is delivered as capacity allows. (A
            // claim cut short by the pool's room says nothing of what
            // waits; the lanes under it have no more room than it had.)
            let mut more = false;
            let mut behind_above = false;
            let mut failed = false;
            for lane in Priority::ALL {
                if behind_above {
                    break;
                }
                let room = self.policy.room(lane, &in_flight).min(self.claim_batch);
                if room == 0 {
                    continue;
                }
                if self.waits_for_its_route(lane) {
                    self.bus.defer(self.channel, lane).await;
                    continue;
                }
                match self.bus.take(self.channel, lane, room).await {
                    Ok(batch) => {
                        more |= batch.len() == room;
                        behind_above = batch.len() == self.claim_batch;
                        for d in batch {
                            in_flight[lane] += 1;
                            let (delivery, lease) = (d.id, d.lease_token);
                            let handle = tasks.spawn(deliver(self.shared.clone(), d));
                            held.insert(
                                handle.id(),
                                Held {
                                    lane,
                                    delivery,
                                    lease,
                                },
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %self.channel, error = %e, "claim failed; backing off");
                        failed = true;
                        break;
                    }
                }
            }
            let full = Priority::ALL
                .iter()
                .all(|&l| self.policy.room(l, &in_flight) == 0);
            let wait = if failed {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            } else {
                backoff = Duration::from_millis(50);
                if more && !full {
                    Duration::ZERO
                } else {
                    self.poll
                }
            };
            if wait.is_zero() {
                // Still reap what finished, so counts stay true.
                while let Some(done) = tasks.try_join_next_with_id() {
                    self.reap(done, &mut held, &mut in_flight);
                }
                continue;
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    self.reap(done, &mut held, &mut in_flight);
                    while let Some(done) = tasks.try_join_next_with_id() {
                        self.reap(done, &mut held, &mut in_flight);
                    }
                }
                // When the pool is full only a finishing task makes room.
                _ = self.bus.wait(self.channel, wait), if !full => {}
                _ = shutdown.cancelled() => {}
            }
        }
        self.drain(tasks, held).await;
    }

    /// Whether this lane's work could only be deferred now: its primary's
    /// circuit is open and the lane may not fail over, or every provider's
    /// circuit is open. Such work is left in the queue, not claimed.
    fn waits_for_its_route(&self, lane: Priority) -> bool {
        let now = herald_core::now_ms();
        let route = self.shared.accounts.route(self.channel);
        let open =
            |a: &std::sync::Arc<super::accounts::Account>| a.circuit(now) == CircuitState::Open;
        let Some(primary) = route.first() else {
            return false;
        };
        let rules = &self.shared.lanes[lane];
        if rules.skips_open_circuits() {
            route.iter().all(open)
        } else {
            open(primary)
        }
    }

    fn reap(
        &self,
        done: Result<(Id, ()), tokio::task::JoinError>,
        held: &mut HashMap<Id, Held>,
        in_flight: &mut Lanes<usize>,
    ) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(channel = %self.channel, "a delivery task panicked; its lease will expire and it will be retried");
                }
                e.id()
            }
        };
        if let Some(h) = held.remove(&id) {
            in_flight[h.lane] = in_flight[h.lane].saturating_sub(1);
        }
    }

    /// Finish in-flight work within the grace period; release the rest.
    async fn drain(&self, mut tasks: JoinSet<()>, mut held: HashMap<Id, Held>) {
        let pending = tasks.len();
        if pending > 0 {
            tracing::info!(channel = %self.channel, pending, "finishing in-flight deliveries");
        }
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = tasks.join_next_with_id() => match next {
                    Some(Ok((id, ()))) => { held.remove(&id); }
                    Some(Err(e)) => { held.remove(&e.id()); }
                    None => break,
                },
                _ = &mut deadline => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        if !held.is_empty() {
            let leases: Vec<_> = held.values().map(|h| (h.delivery, h.lease)).collect();
            tracing::warn!(channel = %self.channel, count = leases.len(), "releasing deliveries that did not finish in time");
            if let Err(e) = self.shared.queue.release(leases, true).await {
                tracing::error!(error = %e, "release failed; the leases will expire instead");
            }
        }
        tracing::info!(channel = %self.channel, "worker pool stopped");
    }
}
