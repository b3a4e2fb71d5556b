//! The node's copy of every tenant's suppression list, for the delivery
//! path: each delivery is checked by a lookup in memory, not a query, so
//! a list of hundreds of thousands costs the hot path next to nothing.
//!
//! `follow` keeps the copy: one full read at start, then every `refresh`
//! the changes (lifts included) stamped since a few seconds before the
//! previous read began, because a change another node's transaction
//! commits late (or stamps with a clock a little behind) carries a time
//! earlier than that read. The window moves with the clock, not with the
//! newest change, so a quiet list costs an empty index range per read.
//! Reading a change twice is harmless: each row is the entry's current
//! state. When the store has not answered for a minute, the next read is a
//! full one again (lifted entries are purged with the retention, so a long
//! gap could miss a lift), and every ten minutes one is made anyway, so
//! nothing a clock far off made the reads miss stays missed for long.
//!
//! Until the first full read has finished nothing is sent: a delivery
//! waits for it (`wait_ready`), then is deferred, never sent unchecked.
//! What this node changes itself is in its copy at once: an address a
//! vendor reports gone (`add`), and the API's additions and lifts when the
//! node also serves the API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::model::Channel;
use herald_core::store::{ChangeCursor, SuppressionChange, Suppressions};
use herald_core::suppression::{Suppression, SuppressionReason};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::telemetry as m;

/// How far before the previous read began each read of changes starts.
const OVERLAP_MS: i64 = 5_000;
/// A full read at least this often.
const FULL_READ_EVERY: Duration = Duration::from_secs(600);
/// Changes read per query.
const PAGE: usize = 10_000;
/// After this long without an answer, the next read is a full one.
const FULL_READ_AFTER: Duration = Duration::from_secs(60);
/// Each read's bound.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an address is not sent to, as the node's copy has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub reason: SuppressionReason,
    pub since_ms: i64,
}

/// Per tenant, per channel: address → entry.
type Lists = HashMap<String, [HashMap<String, Entry>; Channel::ALL.len()]>;

pub struct SuppressionList {
    lists: RwLock<Lists>,
    len: AtomicUsize,
    ready: watch::Sender<bool>,
}

impl Default for SuppressionList {
    fn default() -> Self {
        Self {
            lists: RwLock::default(),
            len: AtomicUsize::new(0),
            ready: watch::Sender::new(false),
        }
    }
}

impl SuppressionList {
    /// Whether `address` (in its normal form) is suppressed for the tenant.
    pub fn check(&self, tenant_id: &str, channel: Channel, address: &str) -> Option<Entry> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        lists
            .get(tenant_id)
            .and_then(|by_channel| by_channel[channel.index()].get(address))
            .copied()
    }

    /// Entries in force.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits up to `within` for the first full read; whether it is done.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        if *self.ready.borrow() {
            return true;
        }
        let mut rx = self.ready.subscribe();
        let done = tokio::time::timeout(within, rx.wait_for(|ready| *ready)).await;
        matches!(done, Ok(Ok(_)))
    }

    /// An entry this node learnt of itself, in force here at once.
    pub fn add(&self, s: &Suppression) {
        let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
        put(&mut lists, s);
        self.len.store(count(&lists), Ordering::Relaxed);
    }

    /// An entry this node lifted itself, lifted here at once.
    pub fn lift(&self, tenant_id: &str, channel: Channel, address: &str) {
        let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
        if let Some(by_channel) = lists.get_mut(tenant_id) {
            by_channel[channel.index()].remove(address);
        }
        self.len.store(count(&lists), Ordering::Relaxed);
    }

    fn apply(&self, changes: &[SuppressionChange]) {
        if changes.is_empty() {
            return;
        }
        let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            if c.lifted {
                remove(&mut lists, &c.suppression);
            } else {
                put(&mut lists, &c.suppression);
            }
        }
        self.len.store(count(&lists), Ordering::Relaxed);
    }

    fn replace(&self, fresh: Lists) {
        let n = count(&fresh);
        *self.lists.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.len.store(n, Ordering::Relaxed);
        self.ready.send_replace(true);
    }
}

fn put(lists: &mut Lists, s: &Suppression) {
    let entry = Entry {
        reason: s.reason,
        since_ms: s.created_at_ms,
    };
    lists.entry(s.tenant_id.clone()).or_default()[s.channel.index()]
        .insert(s.address.clone(), entry);
}

fn remove(lists: &mut Lists, s: &Suppression) {
    if let Some(by_channel) = lists.get_mut(&s.tenant_id) {
        by_channel[s.channel.index()].remove(&s.address);
        if by_channel.iter().all(HashMap::is_empty) {
            lists.remove(&s.tenant_id);
        }
    }
}

fn count(lists: &Lists) -> usize {
    lists
        .values()
        .map(|by_channel| by_channel.iter().map(HashMap::len).sum::<usize>())
        .sum()
}

/// Keeps `list` in step with the store until `shutdown`.
pub async fn follow(
    store: Arc<dyn Suppressions>,
    list: Arc<SuppressionList>,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    // When the last read that answered began (this node's clock); None:
    // the next read is a full one.
    let mut last_read: Option<i64> = None;
    let mut last_answer = tokio::time::Instant::now();
    let mut last_full = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        let began = herald_core::now_ms();
        if last_full.elapsed() >= FULL_READ_EVERY {
            last_read = None;
        }
        let read = match last_read {
            None => full_read(store.as_ref()).await.map(|lists| {
                let n = count(&lists);
                list.replace(lists);
                last_full = tokio::time::Instant::now();
                tracing::debug!(entries = n, "suppression lists read");
            }),
            Some(before) => changes_since(store.as_ref(), before - OVERLAP_MS)
                .await
                .map(|changes| list.apply(&changes)),
        };
        match read {
            Ok(()) => {
                if failing {
                    tracing::info!("suppression lists are read again");
                    failing = false;
                }
                last_read = Some(began);
                last_answer = tokio::time::Instant::now();
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                if !failing {
                    tracing::warn!(error = %e, "cannot read the suppression lists; deliveries are checked against the copy held, and wait for the first read");
                    failing = true;
                }
                if last_answer.elapsed() >= FULL_READ_AFTER {
                    last_read = None;
                }
            }
        }
        metrics::gauge!(m::SUPPRESSIONS).set(list.len() as f64);
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Every entry in force.
async fn full_read(store: &dyn Suppressions) -> Result<Lists, String> {
    let mut lists = Lists::new();
    read_pages(store, ChangeCursor::from_ms(i64::MIN), |page| {
        for c in page {
            if !c.lifted {
                put(&mut lists, &c.suppression);
            }
        }
    })
    .await?;
    Ok(lists)
}

/// The changes stamped at or after `from_ms`.
async fn changes_since(
    store: &dyn Suppressions,
    from_ms: i64,
) -> Result<Vec<SuppressionChange>, String> {
    let mut all = Vec::new();
    read_pages(store, ChangeCursor::from_ms(from_ms), |page| {
        all.extend_from_slice(page);
    })
    .await?;
    Ok(all)
}

async fn read_pages(
    store: &dyn Suppressions,
    mut cursor: ChangeCursor,
    mut each: impl FnMut(&[SuppressionChange]),
) -> Result<(), String> {
    loop {
        let page = tokio::time::timeout(READ_TIMEOUT, store.suppression_changes(&cursor, PAGE))
            .await
            .map_err(|_| format!("no answer within {READ_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        each(&page);
        match page.last() {
            Some(last) if page.len() == PAGE => cursor = ChangeCursor::after(last),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_store::memory::MemoryStore;

    fn entry(tenant: &str, channel: Channel, address: &str, at: i64) -> Suppression {
        Suppression {
            tenant_id: tenant.into(),
            channel,
            address: address.into(),
            reason: SuppressionReason::Bounce,
            detail: None,
            source: "test".into(),
            created_at_ms: at,
        }
    }

    #[tokio::test]
    async fn the_copy_follows_additions_and_lifts_per_tenant_and_channel() {
        let store = Arc::new(MemoryStore::new(false));
        let now = herald_core::now_ms();
        store
            .suppress(entry("t1", Channel::Email, "a@example.com", now))
            .await
            .expect("the memory store answers");
        let list = Arc::new(SuppressionList::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            store.clone(),
            list.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        assert!(list.wait_ready(Duration::from_secs(5)).await);
        assert!(list.check("t1", Channel::Email, "a@example.com").is_some());
        assert!(list.check("t2", Channel::Email, "a@example.com").is_none());
        assert!(list.check("t1", Channel::Sms, "a@example.com").is_none());

        store
            .suppress(entry("t2", Channel::Sms, "+15550001111", now))
            .await
            .expect("the memory store answers");
        store
            .lift_suppression("t1", Channel::Email, "a@example.com", now + 1)
            .await
            .expect("the memory store answers");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (list.check("t2", Channel::Sms, "+15550001111").is_none()
            || list.check("t1", Channel::Email, "a@example.com").is_some())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(list.check("t2", Channel::Sms, "+15550001111").is_some());
        assert!(list.check("t1", Channel::Email, "a@example.com").is_none());
        assert_eq!(list.len(), 1);
        stop.cancel();
        task.await.expect("the follower ends cleanly");
    }

    #[tokio::test]
    async fn a_full_read_takes_every_page() {
        let store = Arc::new(MemoryStore::new(false));
        let now = herald_core::now_ms();
        for i in 0..(PAGE + 7) {
            let address = format!("user{i}@example.com");
            store
                .suppress(entry("t", Channel::Email, &address, now))
                .await
                .expect("the memory store answers");
        }
        let lists = full_read(store.as_ref())
            .await
            .expect("the memory store answers");
        assert_eq!(count(&lists), PAGE + 7);
    }

    /// A store that answers until it is told to fail (a store outage).
    struct Flaky {
        inner: MemoryStore,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Suppressions for Flaky {
        async fn suppress(&self, s: Suppression) -> Result<bool, herald_core::store::StoreError> {
            self.inner.suppress(s).await
        }
        async fn lift_suppression(
            &self,
            tenant_id: &str,
            channel: Channel,
            address: &str,
            now_ms: i64,
        ) -> Result<bool, herald_core::store::StoreError> {
            self.inner
                .lift_suppression(tenant_id, channel, address, now_ms)
                .await
        }
        async fn suppressions(
            &self,
            filter: &herald_core::store::SuppressionFilter,
            after: Option<herald_core::store::SuppressionCursor>,
            limit: usize,
        ) -> Result<Vec<Suppression>, herald_core::store::StoreError> {
            self.inner.suppressions(filter, after, limit).await
        }
        async fn suppression_changes(
            &self,
            after: &ChangeCursor,
            limit: usize,
        ) -> Result<Vec<SuppressionChange>, herald_core::store::StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(herald_core::store::StoreError::Unavailable(
                    "the store is down".into(),
                ));
            }
            self.inner.suppression_changes(after, limit).await
        }
    }

    /// While the store does not answer, a node that never read the lists
    /// is not ready (its deliveries wait), and one that did keeps its copy.
    #[tokio::test]
    async fn a_store_outage_keeps_the_copy_and_a_node_never_read_sends_nothing() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(false),
            down: std::sync::atomic::AtomicBool::new(true),
        });
        let now = herald_core::now_ms();
        store
            .suppress(entry("t", Channel::Email, "a@example.com", now))
            .await
            .expect("the memory store answers");
        let list = Arc::new(SuppressionList::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            store.clone(),
            list.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        assert!(
            !list.wait_ready(Duration::from_millis(200)).await,
            "never read: not ready"
        );
        store.down.store(false, Ordering::SeqCst);
        assert!(list.wait_ready(Duration::from_secs(5)).await);
        assert!(list.check("t", Channel::Email, "a@example.com").is_some());
        store.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            list.check("t", Channel::Email, "a@example.com").is_some(),
            "the copy holds through the outage"
        );
        assert!(list.wait_ready(Duration::from_millis(1)).await);
        stop.cancel();
        task.await.expect("the follower ends cleanly");
    }

    #[test]
    fn nothing_is_suppressed_until_something_is() {
        let list = SuppressionList::default();
        assert_eq!(list.check("t", Channel::Push, "tok"), None);
        list.add(&entry("t", Channel::Push, "tok", 5));
        assert_eq!(
            list.check("t", Channel::Push, "tok"),
            Some(Entry {
                reason: SuppressionReason::Bounce,
                since_ms: 5
            })
        );
    }
}
