//! What both stores' group-commit writers take and answer, and the queue
//! callers reach them through. A writer takes whatever has queued up (up to
//! its batch size), applies it in one transaction and answers each caller
//! only after the commit.

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

/// The sending side of a store's writer queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WriteQueue(pub(crate) mpsc::Sender<(Request, Reply)>);

impl WriteQueue {
    async fn write(&self, request: Request) -> Result<Response, StoreError> {
        let started = std::time::Instant::now();
        let op = request.name();
        let (tx, rx) = oneshot::channel();
        self.0
            .send((request, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let done = rx.await.map_err(|_| StoreError::Closed)?;
        metrics::histogram!(WRITE_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        done
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
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
