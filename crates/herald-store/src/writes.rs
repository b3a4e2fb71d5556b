//! What both stores' group-commit writers take and answer, and the queue
//! callers reach them through. A writer takes whatever has queued up (up to
//! its batch size), applies it in one transaction and answers each caller
//! only after the commit.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::model::{Channel, Priority};
use herald_core::store::{
    AttemptRecord, ClaimedDelivery, CreateResult, DeadLetterFilter, NewNotification, ReplayOutcome,
    StoreError,
};
use tokio::sync::{mpsc, oneshot};

/// Seconds each group commit took (its statements and the fsync).
pub const COMMIT_SECONDS: &str = "herald_store_commit_seconds";
/// Operations each group commit carried.
pub const COMMIT_OPERATIONS: &str = "herald_store_commit_operations";
/// Seconds a write took as its caller saw it (queueing for the writer, then
/// the commit); label `op`.
pub const WRITE_SECONDS: &str = "herald_store_write_seconds";

pub(crate) enum Request {
    Create(Vec<NewNotification>),
    Claim(ClaimArgs),
    ClaimIds {
        ids: Vec<uuid::Uuid>,
        now_ms: i64,
        lease_ms: i64,
    },
    Record(Vec<AttemptRecord>),
    Release {
        leases: Vec<(uuid::Uuid, i64)>,
        started: bool,
    },
    AddKey(AddKeyArgs),
    ReplayOne {
        tenant_id: Option<String>,
        id: uuid::Uuid,
    },
    ReplayMany {
        filter: DeadLetterFilter,
        limit: usize,
    },
    Expire {
        now_ms: i64,
    },
    Purge {
        before_ms: i64,
        limit: usize,
    },
    RelayLease {
        holder: String,
        now_ms: i64,
        lease_ms: i64,
    },
    OutboxPublished(Vec<i64>),
    NoteCall {
        id: uuid::Uuid,
        lease_token: i64,
        provider: String,
    },
    /// A small real write (a padded row in `health_probe`), to learn
    /// whether the store takes writes again after they failed.
    Probe,
}

impl Request {
    /// For metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Claim(_) | Request::ClaimIds { .. } => "claim",
            Request::Record(_) => "record",
            Request::Release { .. } => "release",
            Request::AddKey(_) => "add_key",
            Request::ReplayOne { .. } | Request::ReplayMany { .. } => "replay",
            Request::Expire { .. } => "expire",
            Request::Purge { .. } => "purge",
            Request::RelayLease { .. } => "relay_lease",
            Request::OutboxPublished(_) => "outbox_published",
            Request::NoteCall { .. } => "note_call",
            Request::Probe => "probe",
        }
    }

    /// The attempt records of a batch, all together: a writer applies them
    /// first, so a delivery finishing and being re-claimed in one batch ends
    /// up re-claimed only if it did not finish.
    pub(crate) fn records(batch: &[Request]) -> impl Iterator<Item = &AttemptRecord> {
        batch
            .iter()
            .filter_map(|r| match r {
                Request::Record(v) => Some(v.iter()),
                _ => None,
            })
            .flatten()
    }
}

pub(crate) enum Response {
    Created(Vec<CreateResult>),
    Claimed(Vec<ClaimedDelivery>),
    Done,
    Tenant(String),
    Replay(ReplayOutcome),
    Count(u64),
}

pub(crate) type Reply = oneshot::Sender<Result<Response, StoreError>>;

pub(crate) struct ClaimArgs {
    pub channel: Channel,
    pub priority: Priority,
    pub limit: usize,
    pub now_ms: i64,
    pub lease_ms: i64,
    /// A `queued` delivery counts only if untouched since this (`i64::MAX`:
    /// always); retries and run-out leases always count.
    pub settled_before_ms: i64,
}

pub(crate) struct AddKeyArgs {
    pub tenant_name: String,
    pub key_hash: Vec<u8>,
    pub label: String,
}

/// While writes fail for the store's own reasons, a writer tries a batch
/// at most this often; the batches in between fail at once.
const TRY_EVERY_WHILE_FAILING: Duration = Duration::from_millis(250);

/// Whether the store takes writes, as its writers last found, shared by
/// the writers (which fail fast while it does not) and readiness.
#[derive(Default)]
pub(crate) struct WriteHealth {
    /// 0 while writes succeed; else when they began to fail (Unix ms).
    failing_since_ms: AtomicI64,
    /// When a writer last tried a batch while failing (Unix ms).
    tried_at_ms: AtomicI64,
    last_error: Mutex<String>,
}

impl WriteHealth {
    /// Whether a writer should try its batch now: always while writes
    /// succeed; while they fail, one batch every `TRY_EVERY_WHILE_FAILING`
    /// (the others fail at once rather than each waiting out a timeout).
    pub(crate) fn should_try(&self) -> bool {
        if self.failing_since_ms.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let now = herald_core::now_ms();
        let last = self.tried_at_ms.load(Ordering::Relaxed);
        now - last >= herald_core::ms(TRY_EVERY_WHILE_FAILING)
            && self
                .tried_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// A batch committed.
    pub(crate) fn succeeded(&self) {
        if self.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("the store takes writes again");
        }
    }

    /// A batch failed; only the store's own failures (`is_outage`) count.
    pub(crate) fn failed(&self, e: &StoreError) {
        if !e.is_outage() {
            return;
        }
        let now = herald_core::now_ms();
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
        self.tried_at_ms.store(now, Ordering::Relaxed);
        if self
            .failing_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::error!(error = %e, "the store does not take writes; failing writes fast until it does");
        }
    }

    /// `Err` while writes fail, saying since when and why.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let secs = (herald_core::now_ms() - since).max(0) / 1000;
        Err(StoreError::Unavailable(format!(
            "writes have failed for {secs} s: {last}"
        )))
    }

    /// The answer for every request of a batch not tried.
    pub(crate) fn refusal(&self) -> StoreError {
        self.check()
            .err()
            .unwrap_or_else(|| StoreError::Unavailable("the store does not take writes now".into()))
    }

    /// The answers for a batch of `n` that is not to be tried now (writes
    /// fail, and it is not this batch's turn to try), or `None`: try it.
    pub(crate) fn refuse(&self, n: usize) -> Option<Vec<Result<Response, StoreError>>> {
        if self.should_try() {
            return None;
        }
        let e = self.refusal();
        Some((0..n).map(|_| Err(e.clone())).collect())
    }

    /// Notes how a batch of `n` went and gives its answers; `Err` when the
    /// batch broke on one of its requests and each must be replayed alone
    /// (`fails_whole`).
    pub(crate) fn settle(
        &self,
        applied: Result<Vec<Response>, StoreError>,
        n: usize,
    ) -> Result<Vec<Result<Response, StoreError>>, StoreError> {
        match applied {
            Ok(results) => {
                self.succeeded();
                Ok(results.into_iter().map(Ok).collect())
            }
            Err(e) => {
                self.failed(&e);
                if fails_whole(&e, n) {
                    Ok((0..n).map(|_| Err(e.clone())).collect())
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Whether a batch that failed with `e` fails as a whole, every request
/// with `e`: when the store itself failed (down, disk full, too slow),
/// where replaying each request alone would only fail N times slower. A
/// batch that broke on one request (a constraint, an unreadable row) is
/// replayed one request at a time instead, so only that one fails.
pub(crate) fn fails_whole(e: &StoreError, n: usize) -> bool {
    n == 1 || e.is_outage()
}

/// Answers each caller of a batch with its own result: the batch's, if it
/// committed; if not, each request's own when replayed alone (so only a
/// failing one fails). Records the commit metrics.
pub(crate) fn answer(
    replies: Vec<Reply>,
    results: Vec<Result<Response, StoreError>>,
    started: std::time::Instant,
) {
    metrics::histogram!(COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(COMMIT_OPERATIONS).record(replies.len() as f64);
    for (reply, result) in replies.into_iter().zip(results) {
        // A caller that went away (request cancelled) no longer needs it.
        let _ = reply.send(result);
    }
}

/// The writer answers each request with its own kind of response; anything
/// else is a bug in the writer, reported rather than panicking.
fn mismatch() -> StoreError {
    StoreError::Corrupt("the store writer answered with the wrong kind of response".into())
}

/// `call`, or `Unavailable` if it takes longer than `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer from the store within {} ms",
                timeout.as_millis()
            )))
        })
}

/// The sending side of a store's writer queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WriteQueue {
    pub(crate) tx: mpsc::Sender<(Request, Reply)>,
    pub(crate) health: Arc<WriteHealth>,
    /// The longest a caller waits for its write (queueing and commit).
    pub(crate) timeout: Duration,
}

impl WriteQueue {
    /// Queues a write and waits for its commit, at most `timeout`: a caller
    /// never waits on a store that does not answer. (A write that timed out
    /// may still commit later; a client retries it with its idempotency key.)
    async fn write(&self, request: Request) -> Result<Response, StoreError> {
        let started = std::time::Instant::now();
        let op = request.name();
        let (tx, rx) = oneshot::channel();
        let done = bounded(self.timeout, async {
            self.tx
                .send((request, tx))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
        .await;
        metrics::histogram!(WRITE_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        done
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// `Ok` if the store takes writes: at once while the writers find it
    /// does; while they find it does not, only if a probe write succeeds
    /// now (so a node that is idle notices the store is back).
    pub(crate) async fn check(&self) -> Result<(), StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        if self.health.check().is_ok() {
            return Ok(());
        }
        self.done(Request::Probe).await?;
        self.health.check()
    }

    pub(crate) async fn create(
        &self,
        batch: Vec<NewNotification>,
    ) -> Result<Vec<CreateResult>, StoreError> {
        match self.write(Request::Create(batch)).await? {
            Response::Created(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn claim(&self, args: ClaimArgs) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claimed(Request::Claim(args)).await
    }

    pub(crate) async fn claimed(
        &self,
        request: Request,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        match self.write(request).await? {
            Response::Claimed(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn done(&self, request: Request) -> Result<(), StoreError> {
        match self.write(request).await? {
            Response::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn count(&self, request: Request) -> Result<u64, StoreError> {
        match self.write(request).await? {
            Response::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn replay_one(
        &self,
        tenant_id: Option<&str>,
        id: uuid::Uuid,
    ) -> Result<ReplayOutcome, StoreError> {
        let req = Request::ReplayOne {
            tenant_id: tenant_id.map(str::to_owned),
            id,
        };
        match self.write(req).await? {
            Response::Replay(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    pub(crate) async fn relay_lease(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let req = Request::RelayLease {
            holder: holder.to_owned(),
            now_ms,
            lease_ms,
        };
        Ok(self.count(req).await? == 1)
    }

    pub(crate) async fn add_key(&self, args: AddKeyArgs) -> Result<String, StoreError> {
        match self.write(Request::AddKey(args)).await? {
            Response::Tenant(t) => Ok(t),
            _ => Err(mismatch()),
        }
    }
}

/// What recording an attempt writes to its delivery, worked out once for
/// both stores; refused if the state machine has no such move.
pub(crate) struct Outcome<'a> {
    pub state: &'static str,
    /// When the delivery is due again (retries), else when the attempt ended.
    pub due_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub vendor_id: Option<&'a str>,
    /// 1 if the attempt gives its count back (a deferral made no call).
    pub uncount: i64,
}

impl<'a> Outcome<'a> {
    pub(crate) fn of(r: &'a AttemptRecord) -> Result<Self, StoreError> {
        use herald_core::model::DeliveryState;
        use herald_core::store::Next;
        // Only the state machine's moves out of `sending` may be recorded.
        let state = r.next.state();
        if !DeliveryState::Sending.can_move_to(state) {
            return Err(StoreError::Corrupt(format!(
                "delivery {}: sending → {state} is not a transition of the state machine",
                r.delivery_id
            )));
        }
        let ended = r.ended_at_ms;
        let (due_at_ms, sent_at_ms, vendor_id) = match &r.next {
            Next::RetryAt(at) | Next::Deferred(at) => (*at, None, None),
            Next::Sent { vendor_id } => (ended, Some(ended), vendor_id.as_deref()),
            _ => (ended, None, None),
        };
        Ok(Self {
            state: state.as_str(),
            due_at_ms,
            sent_at_ms,
            vendor_id,
            uncount: i64::from(matches!(r.next, Next::Deferred(_))),
        })
    }
}

/// A notification's outbox row: its lane, partition key and event.
pub(crate) struct OutboxRow {
    pub lane: i64,
    pub key: String,
    pub payload: String,
}

impl OutboxRow {
    pub(crate) fn of(n: &NewNotification) -> Result<Self, StoreError> {
        use herald_core::events::{recipient_key, NotificationRequested};
        let payload = serde_json::to_string(&NotificationRequested::of(n))
            .map_err(|e| StoreError::Corrupt(format!("event does not serialize: {e}")))?;
        Ok(Self {
            lane: n.request.priority.index() as i64,
            key: recipient_key(n),
            payload,
        })
    }
}

/// The smallest UUIDv7 of millisecond `ms`: every id Herald made at or after
/// `ms` sorts after it (a v7 id starts with its time, big-endian), so
/// `id < v7_floor(t)` finds what was made before `t` by primary key.
pub(crate) fn v7_floor(ms: i64) -> uuid::Uuid {
    let ms = u64::try_from(ms).unwrap_or(0).min((1 << 48) - 1);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70; // version 7
    b[8] = 0x80; // RFC 4122 variant
    uuid::Uuid::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_writes_fail_batches_fail_at_once_but_now_and_then_one_is_tried() {
        let h = WriteHealth::default();
        assert!(h.check().is_ok());
        assert!(h.should_try() && h.should_try(), "healthy: every batch");
        h.failed(&StoreError::Rejected("a constraint".into()));
        assert!(
            h.check().is_ok(),
            "one operation's fault is not the store's"
        );
        h.failed(&StoreError::Unavailable("database or disk is full".into()));
        let e = h.check().expect_err("failing");
        assert!(e.to_string().contains("disk is full"), "{e}");
        assert!(
            !h.should_try(),
            "right after a failure the next fails at once"
        );
        assert!(h.refusal().is_outage());
        h.succeeded();
        assert!(h.check().is_ok() && h.should_try());
    }

    #[test]
    fn a_store_failure_fails_the_whole_batch_and_an_operations_fails_only_it() {
        let down = StoreError::Unavailable("connection refused".into());
        let bad = StoreError::Rejected("unique violation".into());
        assert!(fails_whole(&down, 100));
        assert!(!fails_whole(&bad, 100), "replayed one by one");
        assert!(fails_whole(&bad, 1));
    }

    #[test]
    fn v7_floor_orders_ids_by_their_time() {
        let t = 1_763_700_000_000_i64;
        let at = |ms: i64| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                (ms / 1000) as u64,
                ((ms % 1000) * 1_000_000) as u32,
            );
            uuid::Uuid::new_v7(ts)
        };
        assert!(at(t - 1) < super::v7_floor(t));
        assert!(at(t) >= super::v7_floor(t));
        assert!(at(t + 1) > super::v7_floor(t));
        assert_eq!(super::v7_floor(t).get_version_num(), 7);
    }
}
