//! What both stores' group-commit writers share: the queue callers reach
//! them through (typed: each operation gets its own kind of answer), the
//! writers' health (fail fast while the store does not take writes), and
//! what recording an attempt or a notification's outbox row writes. A
//! writer takes whatever has queued up (up to its batch size), applies it in
//! one transaction and answers each caller only after the commit.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::store::{AttemptRecord, Cause, NewNotification, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::ops::Op;

/// Seconds each group commit took (its statements and the fsync).
pub const COMMIT_SECONDS: &str = "herald_store_commit_seconds";
/// Operations each group commit carried.
pub const COMMIT_OPERATIONS: &str = "herald_store_commit_operations";
/// Seconds a write took as its caller saw it (queueing for the writer, then
/// the commit); label `op`.
pub const WRITE_SECONDS: &str = "herald_store_write_seconds";

/// Where a writer sends an operation's answer.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued operation, and its answer once applied (kept until the
/// batch commits: a batch that fails after it was applied answers with the
/// failure instead).
pub struct Pending<O: Op> {
    pub op: O,
    out: Option<O::Output>,
    reply: Reply<O::Output>,
}

impl<O: Op> Pending<O> {
    pub(crate) fn new(op: O, reply: Reply<O::Output>) -> Self {
        Self {
            op,
            out: None,
            reply,
        }
    }

    /// Keeps what applying the operation gave (until the commit).
    pub(crate) fn applied(&mut self, out: O::Output) {
        self.out = Some(out);
    }

    /// Answers the caller: what it was applied to, if its transaction
    /// committed; the failure otherwise. A caller that went away (its
    /// request cancelled) no longer needs it.
    pub(crate) fn answer(self, committed: Result<(), StoreError>) {
        let answer = committed.and_then(|()| {
            self.out
                .ok_or_else(|| StoreError::Unavailable("the write was not applied".into()))
        });
        let _ = self.reply.send(answer);
    }
}

/// A backend's queued write, with the operation's type erased (each
/// backend's writer has its own trait for it: `sqlite::writer::Job`,
/// `postgres::writer::Job`).
pub trait Backend: Send + Sync + 'static {
    type Job: Send + 'static;
}

/// A backend that can apply `O`: how a pending `O` joins its queue.
pub trait Runs<O: Op>: Backend {
    fn job(pending: Pending<O>) -> Self::Job;
}

/// Records a group commit's metrics.
pub(crate) fn committed(operations: usize, started: std::time::Instant) {
    metrics::histogram!(COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(COMMIT_OPERATIONS).record(operations as f64);
}

/// While writes fail for the store's own reasons, a writer tries a batch
/// at most this often; the batches in between fail at once.
const TRY_EVERY_WHILE_FAILING: Duration = Duration::from_millis(250);

/// Whether the store takes writes, as its writers last found, shared by
/// the writers (which fail fast while it does not) and readiness.
#[derive(Default)]
pub struct WriteHealth {
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
        Err(StoreError::Unavailable(
            format!("writes have failed for {secs} s: {last}").into(),
        ))
    }

    /// The answer for every request of a batch not tried.
    pub(crate) fn refusal(&self) -> StoreError {
        self.check()
            .err()
            .unwrap_or_else(|| StoreError::Unavailable("the store does not take writes now".into()))
    }

    /// `Some(error)` when a batch is not to be tried now: writes fail, and
    /// it is not this batch's turn to try. Every request in it fails with
    /// the error, at once.
    pub(crate) fn refuses(&self) -> Option<StoreError> {
        (!self.should_try()).then(|| self.refusal())
    }

    /// Notes how a batch of `n` went, and what its requests are answered.
    pub(crate) fn settle(&self, applied: Result<(), StoreError>, n: usize) -> Settled {
        match applied {
            Ok(()) => {
                self.succeeded();
                Settled::Committed
            }
            Err(e) => {
                self.failed(&e);
                if fails_whole(&e, n) {
                    Settled::Failed(e)
                } else {
                    Settled::ReplayEach(e)
                }
            }
        }
    }
}

/// How a batch ended, for its requests.
pub(crate) enum Settled {
    /// Each request gets what it was applied to.
    Committed,
    /// Each request fails with this.
    Failed(StoreError),
    /// One request broke the batch (this error): each is applied again in
    /// its own transaction, so only the failing one fails.
    ReplayEach(StoreError),
}

/// Whether a batch that failed with `e` fails as a whole, every request
/// with `e`: when the store itself failed (down, disk full, too slow),
/// where replaying each request alone would only fail N times slower. A
/// batch that broke on one request (a constraint, an unreadable row) is
/// replayed one request at a time instead, so only that one fails.
pub(crate) fn fails_whole(e: &StoreError, n: usize) -> bool {
    n == 1 || e.is_outage()
}

/// `call`, or `Unavailable` if it takes longer than `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                format!("no answer from the store within {} ms", timeout.as_millis()).into(),
            ))
        })
}

/// A writer's two queues, as it takes from them: the delivery path's
/// writes (`Op::DELIVERY`: claims, records, releases) first, then intake's
/// and the rest's, up to the batch size.
///
/// When the writer is what the machine waits on (SQLite's one writer under
/// overload), one queue in arrival order let a few batches of creates stand
/// between every claim and its commit, so what was accepted waited on what
/// was being accepted. Taken first, the delivery path's writes wait for at
/// most the commit in progress; creates wait longer instead, and the API's
/// latency rises with them, which is the backpressure a client sees.
pub(crate) struct Inbox<J> {
    delivery: mpsc::Receiver<J>,
    rest: mpsc::Receiver<J>,
}

/// A writer queue's two sides, each queue holding `capacity` operations.
pub(crate) fn write_queues<J>(capacity: usize) -> (Senders<J>, Inbox<J>) {
    let (delivery_tx, delivery) = mpsc::channel(capacity);
    let (rest_tx, rest) = mpsc::channel(capacity);
    (
        Senders {
            delivery: delivery_tx,
            rest: rest_tx,
        },
        Inbox { delivery, rest },
    )
}

impl<J> Inbox<J> {
    /// Waits for an operation, then takes up to `max` into `batch`, the
    /// delivery path's first; 0 once both queues are closed and empty.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<J>, max: usize) -> usize {
        let first = tokio::select! {
            biased;
            job = self.delivery.recv() => job,
            job = self.rest.recv() => job,
        };
        let first = match first {
            Some(job) => job,
            // One queue is closed and empty; the other may still hold some.
            None => match self.delivery.recv().await {
                Some(job) => job,
                None => match self.rest.recv().await {
                    Some(job) => job,
                    None => return 0,
                },
            },
        };
        batch.push(first);
        self.top_up(batch, max)
    }

    /// Adds what is waiting now to `batch`, up to `max`, the delivery
    /// path's first; never waits.
    pub(crate) fn top_up(&mut self, batch: &mut Vec<J>, max: usize) -> usize {
        for queue in [&mut self.delivery, &mut self.rest] {
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        batch.len()
    }
}

/// The sending sides of a writer's `Inbox`.
pub(crate) struct Senders<J> {
    delivery: mpsc::Sender<J>,
    rest: mpsc::Sender<J>,
}

impl<J> Clone for Senders<J> {
    fn clone(&self) -> Self {
        Self {
            delivery: self.delivery.clone(),
            rest: self.rest.clone(),
        }
    }
}

/// The sending side of a store's writer queue. Cheap to clone.
pub struct WriteQueue<B: Backend> {
    pub(crate) tx: Senders<B::Job>,
    pub(crate) health: Arc<WriteHealth>,
    /// The longest a caller waits for its write (queueing and commit).
    pub(crate) timeout: Duration,
}

impl<B: Backend> Clone for WriteQueue<B> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            health: self.health.clone(),
            timeout: self.timeout,
        }
    }
}

impl<B: Backend> WriteQueue<B> {
    /// Queues `op` and waits for its commit, at most `timeout`: a caller
    /// never waits on a store that does not answer. (A write that timed out
    /// may still commit later; a client retries it with its idempotency key.)
    pub(crate) async fn run<O: Op>(&self, op: O) -> Result<O::Output, StoreError>
    where
        B: Runs<O>,
    {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = B::job(Pending::new(op, reply));
        let queue = if O::DELIVERY {
            &self.tx.delivery
        } else {
            &self.tx.rest
        };
        let done = bounded(self.timeout, async {
            queue.send(job).await.map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
        .await;
        metrics::histogram!(WRITE_SECONDS, "op" => O::NAME).record(started.elapsed().as_secs_f64());
        done
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.rest.is_closed()
    }

    /// `Ok` if the store takes writes: at once while the writers find it
    /// does; while they find it does not, only if a probe write succeeds
    /// now (so a node that is idle notices the store is back).
    pub(crate) async fn check(&self) -> Result<(), StoreError>
    where
        B: Runs<crate::ops::Probe>,
    {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        if self.health.check().is_ok() {
            return Ok(());
        }
        self.run(crate::ops::Probe).await?;
        self.health.check()
    }
}

/// What recording an attempt writes to its delivery, worked out once for
/// both stores; refused if the state machine has no such move.
pub(crate) struct RowChange<'a> {
    pub state: &'static str,
    /// When the delivery is due again (retries), else when the attempt ended.
    pub due_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub vendor_id: Option<&'a str>,
    /// 1 if the attempt gives its count back (a deferral made no call).
    pub uncount: i64,
}

impl<'a> RowChange<'a> {
    pub(crate) fn of(r: &'a AttemptRecord) -> Result<Self, StoreError> {
        use herald_core::model::DeliveryState;
        use herald_core::store::Next;
        // Only the state machine's moves out of `sending` may be recorded.
        let state = r.next.state();
        if !DeliveryState::Sending.can_move_to(state) {
            return Err(StoreError::Corrupt(
                format!(
                    "delivery {}: sending → {state} is not a transition of the state machine",
                    r.delivery_id
                )
                .into(),
            ));
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
            .map_err(|e| StoreError::Corrupt(Cause::new("event does not serialize", e)))?;
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

/// A callback's events as stored: delivery states, comma-separated.
pub(crate) fn callback_events_text(events: &[herald_core::model::DeliveryState]) -> String {
    events
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The stored events read back.
pub(crate) fn callback_events(
    text: &str,
) -> Result<Vec<herald_core::model::DeliveryState>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| StoreError::Corrupt(format!("callback event {s:?}").into()))
        })
        .collect()
}

/// Before this, a frequency-cap count is outside every window (the
/// longest a cap may have), so it can go.
pub(crate) fn cap_horizon_ms() -> i64 {
    let longest = i64::try_from(herald_core::recipient::MAX_CAP_SECONDS).unwrap_or(i64::MAX / 1000);
    herald_core::now_ms().saturating_sub(longest.saturating_mul(1000))
}

/// A delivery row as a cancel left it.
pub(crate) fn cancelled_delivery(
    id: uuid::Uuid,
    channel: &str,
    target: i64,
    state: &str,
    cancelled: &[uuid::Uuid],
) -> Result<herald_core::store::CancelledDelivery, StoreError> {
    Ok(herald_core::store::CancelledDelivery {
        id,
        channel: channel
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("channel {channel:?}").into()))?,
        target: u32::try_from(target)
            .map_err(|_| StoreError::Corrupt(format!("target {target}").into()))?,
        state: state
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("state {state:?}").into()))?,
        cancelled: cancelled.contains(&id),
    })
}

/// A batch with one entry per id, the last given for each (in order of
/// those last entries).
pub(crate) fn last_of_each<T>(batch: Vec<(String, T)>) -> Vec<(String, T)> {
    let mut last = std::collections::HashMap::with_capacity(batch.len());
    for (i, (id, _)) in batch.iter().enumerate() {
        last.insert(id.clone(), i);
    }
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, (id, _))| last.get(id) == Some(i))
        .map(|(_, entry)| entry)
        .collect()
}

/// A recipient's profile as stored (JSON text).
pub(crate) fn profile_json(p: &herald_core::recipient::Profile) -> Result<String, StoreError> {
    to_json(p, "a recipient's profile")
}

/// The notification a stored idempotent response (`{"id": …}`) names.
pub(crate) fn notification_in(response_body: &str) -> Result<Option<uuid::Uuid>, StoreError> {
    let body: serde_json::Value = from_json(response_body, "a stored response")?;
    Ok(body["id"]
        .as_str()
        .and_then(|id| uuid::Uuid::parse_str(id).ok()))
}

/// A recipient row read back.
pub(crate) fn stored_recipient(
    id: String,
    profile: &str,
    preferences: Option<&str>,
    version: i64,
    updated_at_ms: i64,
) -> Result<herald_core::recipient::StoredRecipient, StoreError> {
    Ok(herald_core::recipient::StoredRecipient {
        id,
        profile: from_json(profile, "a recipient's profile")?,
        preferences: match preferences {
            Some(p) => from_json(p, "a recipient's preferences")?,
            None => Default::default(),
        },
        version,
        updated_at_ms,
    })
}

/// A stored JSON column read back (`what` names it when it cannot be).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}").into()))
}

/// A value stored as a JSON column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(
    v: &T,
    what: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Rejected(format!("{what}: {e}").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_delivery_paths_writes_are_taken_first_and_nothing_is_left_at_close() {
        let (tx, mut inbox) = write_queues::<&str>(16);
        for job in ["create 1", "create 2", "create 3"] {
            tx.rest.send(job).await.expect("open");
        }
        for job in ["claim", "record"] {
            tx.delivery.send(job).await.expect("open");
        }
        let mut batch = Vec::new();
        assert_eq!(inbox.recv_many(&mut batch, 3).await, 3);
        assert_eq!(batch, ["claim", "record", "create 1"]);
        batch.clear();
        tx.delivery.send("release").await.expect("open");
        drop(tx);
        assert_eq!(inbox.recv_many(&mut batch, 10).await, 3);
        assert_eq!(batch, ["release", "create 2", "create 3"]);
        batch.clear();
        assert_eq!(inbox.recv_many(&mut batch, 10).await, 0, "closed and empty");
    }

    #[tokio::test]
    async fn a_writer_waits_for_either_queue() {
        let (tx, mut inbox) = write_queues::<u32>(4);
        let rest = tx.rest.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            rest.send(7).await.expect("open");
        });
        let mut batch = Vec::new();
        assert_eq!(inbox.recv_many(&mut batch, 4).await, 1);
        assert_eq!(batch, [7]);
        drop(tx);
    }

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
