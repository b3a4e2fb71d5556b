//! Outcomes of finished vendor calls that the store could not take yet.
//!
//! Once a vendor has answered, its answer is the one thing that must not be
//! lost: if it were, the lease would run out and the delivery would be sent
//! again. So when recording fails because the store is unavailable (down,
//! disk full, failing over), the outcome is held here and written as soon
//! as the store answers again, every `RETRY_MIN` to `RETRY_MAX`; and a
//! delivery this node claims again while its outcome is held is not sent
//! again: the held outcome is written under the new lease instead.
//!
//! What remains (docs/resilience.md): on a fleet, another node may claim
//! the delivery first when the store comes back after more than a lease;
//! and outcomes held when the process dies are gone with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use herald_core::store::{AttemptRecord, LeaseToken, Queue, StoreError};
use tokio_util::sync::CancellationToken;

use crate::telemetry as m;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Held outcomes by delivery id, at most `max` of them.
pub struct Unwritten {
    held: Mutex<HashMap<uuid::Uuid, AttemptRecord>>,
    max: usize,
}

impl Unwritten {
    pub fn new(max: usize) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, AttemptRecord>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds an outcome to write later; false when the holder is full (the
    /// lease will run out and the delivery be tried again).
    pub fn hold(&self, rec: AttemptRecord) -> bool {
        let mut held = self.lock();
        if held.len() >= self.max && !held.contains_key(&rec.delivery_id) {
            return false;
        }
        held.insert(rec.delivery_id, rec);
        metrics::gauge!(m::UNWRITTEN_OUTCOMES).set(held.len() as f64);
        true
    }

    /// The held outcome of this delivery, if any, no longer held.
    pub fn take(&self, id: uuid::Uuid) -> Option<AttemptRecord> {
        let mut held = self.lock();
        let rec = held.remove(&id);
        metrics::gauge!(m::UNWRITTEN_OUTCOMES).set(held.len() as f64);
        rec
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Writes what is held. What the store refuses as unreadable (a bug,
    /// not an outage) is dropped with an error so it cannot block the rest;
    /// on any other failure everything stays held.
    pub async fn flush(&self, store: &dyn Queue) -> Result<usize, StoreError> {
        let batch: Vec<AttemptRecord> = self.lock().values().cloned().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let ids: Vec<(uuid::Uuid, LeaseToken)> = batch
            .iter()
            .map(|r| (r.delivery_id, r.lease_token))
            .collect();
        let written = match store.record(batch.clone()).await {
            Ok(()) => ids,
            Err(e) if !e.is_outage() => {
                // One by one, so one refused record does not hold the rest.
                let mut written = Vec::with_capacity(batch.len());
                for rec in batch {
                    let id = (rec.delivery_id, rec.lease_token);
                    match store.record(vec![rec]).await {
                        Ok(()) => written.push(id),
                        Err(e) if !e.is_outage() => {
                            tracing::error!(delivery_id = %id.0, error = %e, "the store refuses this outcome; dropping it");
                            written.push(id);
                        }
                        Err(e) => return Err(e),
                    }
                }
                written
            }
            Err(e) => return Err(e),
        };
        let mut held = self.lock();
        for (id, token) in &written {
            // Unless a newer outcome for it (under a new lease) came in meanwhile.
            if held.get(id).is_some_and(|r| r.lease_token == *token) {
                held.remove(id);
            }
        }
        metrics::gauge!(m::UNWRITTEN_OUTCOMES).set(held.len() as f64);
        Ok(written.len())
    }
}

/// Writes held outcomes as soon as the store takes them, until shutdown;
/// then once more, for up to `grace`.
pub async fn keep_writing(
    unwritten: std::sync::Arc<Unwritten>,
    store: std::sync::Arc<dyn Queue>,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = RETRY_MIN;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
        if unwritten.len() == 0 {
            wait = RETRY_MIN;
            continue;
        }
        match unwritten.flush(store.as_ref()).await {
            Ok(n) => {
                tracing::info!(
                    count = n,
                    "outcomes held while the store was unavailable are written"
                );
                wait = RETRY_MIN;
            }
            Err(e) => {
                tracing::debug!(error = %e, held = unwritten.len(), "the store still refuses held outcomes");
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
    // Shutting down: the workers have finished; one last chance.
    let left = unwritten.len();
    if left == 0 {
        return;
    }
    match tokio::time::timeout(grace, unwritten.flush(store.as_ref())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(count = left, error = %e, "outcomes of finished calls could not be written before exit; their leases will run out and they will be sent again")
        }
        Err(_) => {
            tracing::error!(count = left, "outcomes of finished calls could not be written before exit (timed out); their leases will run out and they will be sent again")
        }
    }
}
