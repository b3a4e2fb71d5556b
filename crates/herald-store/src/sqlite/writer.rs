//! The single SQLite writer with group commit.
//!
//! SQLite allows one writer at a time, so every write goes through one task
//! that owns the only write connection. The task takes whatever has queued up
//! while the previous commit was syncing (up to `max_batch` operations) and
//! applies it in ONE transaction: one fsync serves every request in the batch,
//! and no caller hears "done" before that fsync. No timer: under light load a
//! lone request commits at once; under heavy load batches grow by themselves.
//!
//! Statements, not fsyncs, are what cost here (sqlx runs each on a worker
//! thread), so a batch's attempt records become one multi-row INSERT and one
//! UPDATE, and a create writes all its rows with multi-row INSERTs. If any
//! operation fails, the batch is rolled back and each operation is replayed
//! in its own transaction, so only the failing one fails.

use herald_core::model::{Channel, DeliveryState, Priority};
use herald_core::store::{
    AttemptRecord, ClaimedDelivery, CreateResult, DeadLetterFilter, IdempotencyRecord,
    NewNotification, Next, ReplayOutcome, StoreError, StoredResponse,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{db_err, push_dead_letter_filter};

/// SQLite's limit on bound parameters per statement is 32,766; stay well below.
const MAX_ROWS_PER_INSERT: usize = 500;

pub(super) enum Request {
    Create(Vec<NewNotification>),
    Claim(ClaimArgs),
    Record(Vec<AttemptRecord>),
    Release(Vec<(uuid::Uuid, i64)>),
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
    NoteCall {
        id: uuid::Uuid,
        lease_token: i64,
        provider: String,
    },
}

impl Request {
    /// For metrics.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Claim(_) => "claim",
            Request::Record(_) => "record",
            Request::Release(_) => "release",
            Request::AddKey(_) => "add_key",
            Request::ReplayOne { .. } | Request::ReplayMany { .. } => "replay",
            Request::Expire { .. } => "expire",
            Request::NoteCall { .. } => "note_call",
        }
    }
}

pub(super) enum Response {
    Created(Vec<CreateResult>),
    Claimed(Vec<ClaimedDelivery>),
    Done,
    Tenant(String),
    Replay(ReplayOutcome),
    Count(u64),
}

pub(super) type Reply = oneshot::Sender<Result<Response, StoreError>>;

pub(super) struct ClaimArgs {
    pub channel: Channel,
    pub priority: Priority,
    pub limit: usize,
    pub now_ms: i64,
    pub lease_ms: i64,
}

pub(super) struct AddKeyArgs {
    pub tenant_name: String,
    pub key_hash: Vec<u8>,
    pub label: String,
}

pub(super) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<(Request, Reply)>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let started = std::time::Instant::now();
        let (requests, replies): (Vec<Request>, Vec<Reply>) = batch.drain(..).unzip();
        let results = match apply(&mut conn, &requests).await {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(e) if requests.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, ops = requests.len(), "group commit failed; replaying each operation alone");
                let mut results = Vec::with_capacity(requests.len());
                for r in &requests {
                    let one = apply(&mut conn, std::slice::from_ref(r)).await;
                    results.push(one.and_then(|mut v| v.pop().ok_or(StoreError::Closed)));
                }
                results
            }
        };
        metrics::histogram!(super::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(super::COMMIT_OPERATIONS).record(requests.len() as f64);
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that went away (request cancelled) no longer needs it.
            let _ = reply.send(result);
        }
    }
    tracing::debug!("store writer stopped");
}

/// Applies every request in one transaction; all or nothing.
async fn apply(
    conn: &mut SqliteConnection,
    requests: &[Request],
) -> Result<Vec<Response>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // Attempt records first, all together: a delivery finishing and being
    // re-claimed in one batch then ends up re-claimed only if it did not finish.
    let records: Vec<&AttemptRecord> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Record(v) => Some(v.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    record(&mut tx, &records).await?;
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        out.push(match r {
            Request::Create(batch) => Response::Created(create(&mut tx, batch).await?),
            Request::Claim(args) => Response::Claimed(claim(&mut tx, args).await?),
            Request::Record(_) => Response::Done,
            Request::Release(leases) => {
                release(&mut tx, leases).await?;
                Response::Done
            }
            Request::AddKey(args) => Response::Tenant(add_key(&mut tx, args).await?),
            Request::ReplayOne { tenant_id, id } => {
                Response::Replay(replay_one(&mut tx, tenant_id.as_deref(), *id).await?)
            }
            Request::ReplayMany { filter, limit } => {
                Response::Count(replay_many(&mut tx, filter, *limit).await?)
            }
            Request::Expire { now_ms } => Response::Count(expire(&mut tx, *now_ms).await?),
            Request::NoteCall {
                id,
                lease_token,
                provider,
            } => {
                sqlx::query(
                    "UPDATE deliveries SET calling = ? WHERE id = ? AND lease_token = ? AND state = 'sending'",
                )
                .bind(provider)
                .bind(id)
                .bind(lease_token)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Response::Done
            }
        });
    }
    tx.commit().await.map_err(db_err)?;
    Ok(out)
}

async fn create(
    tx: &mut SqliteConnection,
    batch: &[NewNotification],
) -> Result<Vec<CreateResult>, StoreError> {
    let taken = claim_keys(tx, batch).await?;
    let mut results = Vec::with_capacity(batch.len());
    let mut fresh: Vec<&NewNotification> = Vec::with_capacity(batch.len());
    for (n, taken) in batch.iter().zip(taken) {
        match taken {
            None => {
                fresh.push(n);
                results.push(CreateResult::Created);
            }
            Some(existing) => results.push(CreateResult::KeyTaken(existing)),
        }
    }
    let mut payloads = Vec::with_capacity(fresh.len());
    for n in &fresh {
        payloads.push(
            serde_json::to_string(&n.request)
                .map_err(|e| StoreError::Corrupt(format!("request does not serialize: {e}")))?,
        );
    }
    for (chunk, payloads) in fresh
        .chunks(MAX_ROWS_PER_INSERT)
        .zip(payloads.chunks(MAX_ROWS_PER_INSERT))
    {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO notifications (id, tenant_id, priority, payload, accepted_at_ms, expires_at_ms) ",
        );
        q.push_values(chunk.iter().zip(payloads), |mut b, (n, payload)| {
            b.push_bind(n.id)
                .push_bind(&n.tenant_id)
                .push_bind(n.request.priority.index() as i64)
                .push_bind(payload)
                .push_bind(n.accepted_at_ms)
                .push_bind(n.expires_at_ms);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    let deliveries: Vec<_> = fresh
        .iter()
        .flat_map(|n| n.deliveries.iter().map(move |d| (*n, d)))
        .collect();
    for chunk in deliveries.chunks(MAX_ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries (id, notification_id, channel, target, priority, state, due_at_ms, updated_at_ms, expires_at_ms) ",
        );
        q.push_values(chunk, |mut b, (n, d)| {
            b.push_bind(d.id)
                .push_bind(n.id)
                .push_bind(d.channel.as_str())
                .push_bind(i64::from(d.target))
                .push_bind(n.request.priority.index() as i64)
                .push_bind("queued")
                .push_bind(n.due_at_ms)
                .push_bind(n.accepted_at_ms)
                .push_bind(n.expires_at_ms);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(results)
}

/// Takes the idempotency keys of `batch` with one multi-row INSERT (a
/// statement per key was most of the writer's work at high rates). For each
/// notification: `None` if it took its key (or has none), or the record of
/// the request that holds it already (stored earlier, or earlier in this
/// batch).
async fn claim_keys(
    tx: &mut SqliteConnection,
    batch: &[NewNotification],
) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
    let mut out: Vec<Option<IdempotencyRecord>> = vec![None; batch.len()];
    // A key twice in one batch: the first takes it, the rest find it taken.
    let mut seen = std::collections::HashSet::new();
    let mut to_insert = Vec::new();
    let mut to_find = Vec::new();
    for (i, n) in batch.iter().enumerate() {
        if let Some((key, rec)) = &n.idempotency {
            if seen.insert((n.tenant_id.as_str(), key.as_str())) {
                to_insert.push((i, n, key, rec));
            } else {
                to_find.push(i);
            }
        }
    }
    for chunk in to_insert.chunks(MAX_ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO idempotency_keys \
             (tenant_id, key, request_hash, response_status, response_body, created_at_ms) ",
        );
        q.push_values(chunk, |mut b, (_, n, key, rec)| {
            b.push_bind(&n.tenant_id)
                .push_bind(key.as_str())
                .push_bind(&rec.request_hash)
                .push_bind(i64::from(rec.response.status))
                .push_bind(&rec.response.body)
                .push_bind(n.accepted_at_ms);
        });
        q.push(" ON CONFLICT DO NOTHING RETURNING tenant_id, key");
        let inserted: std::collections::HashSet<(String, String)> = q
            .build()
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| Ok((r.try_get("tenant_id")?, r.try_get("key")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err)?;
        for (i, n, key, _) in chunk {
            if !inserted.contains(&(n.tenant_id.clone(), (*key).clone())) {
                to_find.push(*i);
            }
        }
    }
    // Rare: replays and conflicts. One lookup each.
    for i in to_find {
        let n = &batch[i];
        let Some((key, _)) = &n.idempotency else {
            continue;
        };
        let row = sqlx::query(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE tenant_id = ? AND key = ?",
        )
        .bind(&n.tenant_id)
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        out[i] = Some(idempotency_from_row(&row)?);
    }
    Ok(out)
}

fn idempotency_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<IdempotencyRecord, StoreError> {
    let status: i64 = row.try_get("response_status").map_err(db_err)?;
    Ok(IdempotencyRecord {
        request_hash: row.try_get("request_hash").map_err(db_err)?,
        response: StoredResponse {
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("status {status}")))?,
            body: row.try_get("response_body").map_err(db_err)?,
        },
    })
}

async fn claim(
    tx: &mut SqliteConnection,
    a: &ClaimArgs,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let token: i64 = rand::random();
    let rows = sqlx::query(
        "UPDATE deliveries SET state = 'sending', due_at_ms = ?1 + ?2, lease_token = ?3, \
             attempts = attempts + 1, updated_at_ms = ?1, \
             in_doubt = CASE WHEN state = 'sending' THEN 1 ELSE in_doubt END \
         WHERE rowid IN (SELECT rowid FROM deliveries \
             WHERE channel = ?4 AND priority = ?5 \
               AND state IN ('queued', 'retry_scheduled', 'sending') AND due_at_ms <= ?1 \
             ORDER BY due_at_ms LIMIT ?6) \
         RETURNING id, notification_id, target, attempts, pinned_provider, calling, in_doubt",
    )
    .bind(a.now_ms)
    .bind(a.lease_ms)
    .bind(token)
    .bind(a.channel.as_str())
    .bind(a.priority.index() as i64)
    .bind(i64::try_from(a.limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut claimed = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let notification_id: uuid::Uuid = row.try_get("notification_id").map_err(db_err)?;
        let target: i64 = row.try_get("target").map_err(db_err)?;
        let attempts: i64 = row.try_get("attempts").map_err(db_err)?;
        ids.push(notification_id);
        claimed.push(ClaimedDelivery {
            id: row.try_get("id").map_err(db_err)?,
            notification_id,
            tenant_id: String::new(),
            channel: a.channel,
            target: u32::try_from(target).unwrap_or(0),
            priority: a.priority,
            attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            lease_token: token,
            accepted_at_ms: 0,
            expires_at_ms: None,
            payload: String::new(),
            pinned_provider: row.try_get("pinned_provider").map_err(db_err)?,
            calling: row.try_get("calling").map_err(db_err)?,
            in_doubt: row.try_get::<i64, _>("in_doubt").map_err(db_err)? != 0,
        });
    }
    ids.sort_unstable();
    ids.dedup();
    let mut q = QueryBuilder::<Sqlite>::new(
        "SELECT id, tenant_id, payload, accepted_at_ms, expires_at_ms FROM notifications WHERE id IN (",
    );
    let mut sep = q.separated(", ");
    for id in &ids {
        sep.push_bind(*id);
    }
    q.push(")");
    let notes = q.build().fetch_all(&mut *tx).await.map_err(db_err)?;
    let mut by_id = std::collections::HashMap::with_capacity(notes.len());
    for row in notes {
        let id: uuid::Uuid = row.try_get("id").map_err(db_err)?;
        by_id.insert(id, row);
    }
    for c in &mut claimed {
        let row = by_id
            .get(&c.notification_id)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {} has no notification", c.id)))?;
        c.tenant_id = row.try_get("tenant_id").map_err(db_err)?;
        c.payload = row.try_get("payload").map_err(db_err)?;
        c.accepted_at_ms = row.try_get("accepted_at_ms").map_err(db_err)?;
        c.expires_at_ms = row.try_get("expires_at_ms").map_err(db_err)?;
    }
    Ok(claimed)
}

/// Records attempts and moves their deliveries on: one INSERT for every
/// vendor call and one UPDATE per chunk, however many workers reported.
async fn record(tx: &mut SqliteConnection, records: &[&AttemptRecord]) -> Result<(), StoreError> {
    // Only the state machine's moves out of `sending` may be recorded.
    if let Some(bad) = records
        .iter()
        .find(|r| !DeliveryState::Sending.can_move_to(r.next.state()))
    {
        return Err(StoreError::Corrupt(format!(
            "delivery {}: sending → {} is not a transition of the state machine",
            bad.delivery_id,
            bad.next.state()
        )));
    }
    let calls: Vec<_> = records
        .iter()
        .flat_map(|r| r.calls.iter().map(move |c| (r, c)))
        .collect();
    for chunk in calls.chunks(MAX_ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO attempts (delivery_id, attempt, provider, started_at_ms, latency_ms, outcome, status_code, error) ",
        );
        q.push_values(chunk, |mut b, (r, c)| {
            b.push_bind(r.delivery_id)
                .push_bind(i64::from(r.attempt))
                .push_bind(&c.provider)
                .push_bind(c.started_at_ms)
                .push_bind(c.latency_ms)
                .push_bind(&c.outcome)
                .push_bind(c.status_code.map(i64::from))
                .push_bind(&c.error);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    for chunk in records.chunks(MAX_ROWS_PER_INSERT) {
        // Compare-and-set on the lease: a worker whose lease expired and was
        // taken over does not overwrite the newer holder's state. A deferred
        // attempt made no call, so it gives its attempt back.
        let mut q = QueryBuilder::<Sqlite>::new(
            "WITH v(id, token, state, due, provider, vendor_id, error, sent_at, updated, uncount, pin) AS (",
        );
        q.push_values(chunk, |mut b, r| {
            let ended_at = r.ended_at_ms;
            let (due, sent_at, vendor_id) = match &r.next {
                Next::RetryAt(at) | Next::Deferred(at) => (*at, None, None),
                Next::Sent { vendor_id } => (ended_at, Some(ended_at), vendor_id.as_deref()),
                _ => (ended_at, None, None),
            };
            b.push_bind(r.delivery_id)
                .push_bind(r.lease_token)
                .push_bind(r.next.state().as_str())
                .push_bind(due)
                .push_bind(r.provider())
                .push_bind(vendor_id)
                .push_bind(&r.error)
                .push_bind(sent_at)
                .push_bind(ended_at)
                .push_bind(i64::from(matches!(r.next, Next::Deferred(_))))
                .push_bind(&r.pin);
        });
        q.push(
            ") UPDATE deliveries SET state = v.state, due_at_ms = v.due, lease_token = NULL, \
                 attempts = MAX(deliveries.attempts - v.uncount, 0), \
                 provider = COALESCE(v.provider, deliveries.provider), \
                 vendor_message_id = COALESCE(v.vendor_id, deliveries.vendor_message_id), last_error = v.error, \
                 sent_at_ms = COALESCE(v.sent_at, deliveries.sent_at_ms), updated_at_ms = v.updated, \
                 pinned_provider = COALESCE(deliveries.pinned_provider, v.pin), \
                 calling = NULL, in_doubt = 0 \
             FROM v WHERE deliveries.id = v.id AND deliveries.lease_token = v.token \
                 AND deliveries.state = 'sending'",
        );
        q.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

/// Waiting deliveries past their notification's expiry become `expired`
/// (a claim would find the same; this does not wait for one).
async fn expire(tx: &mut SqliteConnection, now_ms: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'expired', last_error = 'expired before it could be sent', \
             updated_at_ms = ?1 \
         WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
    )
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}

/// Starts the UPDATE that puts dead deliveries back in the queue: due now,
/// attempts reset, the same id (so the same vendor key). The caller adds
/// which rows.
fn replay_update() -> QueryBuilder<'static, Sqlite> {
    let now = herald_core::now_ms();
    let mut q = QueryBuilder::new("UPDATE deliveries SET state = 'queued', due_at_ms = ");
    q.push_bind(now)
        .push(", attempts = 0, lease_token = NULL, updated_at_ms = ")
        .push_bind(now)
        .push(" WHERE ");
    q
}

async fn replay_one(
    tx: &mut SqliteConnection,
    tenant_id: Option<&str>,
    id: uuid::Uuid,
) -> Result<ReplayOutcome, StoreError> {
    let row = sqlx::query(
        "SELECT d.state FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
         WHERE d.id = ?1 AND (?2 IS NULL OR n.tenant_id = ?2)",
    )
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(ReplayOutcome::NotFound);
    };
    let state: String = row.try_get("state").map_err(db_err)?;
    let state: DeliveryState = state
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("delivery {id} has state {state:?}")))?;
    if state != DeliveryState::Dead {
        return Ok(ReplayOutcome::NotDead(state));
    }
    let mut q = replay_update();
    q.push("id = ").push_bind(id).push(" AND state = 'dead'");
    q.build().execute(&mut *tx).await.map_err(db_err)?;
    Ok(ReplayOutcome::Replayed)
}

async fn replay_many(
    tx: &mut SqliteConnection,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut q = replay_update();
    q.push(
        "rowid IN (SELECT d.rowid FROM deliveries d \
         JOIN notifications n ON n.id = d.notification_id WHERE d.state = 'dead'",
    );
    push_dead_letter_filter(&mut q, filter);
    q.push(" ORDER BY d.updated_at_ms, d.id LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .push(")");
    let done = q.build().execute(&mut *tx).await.map_err(db_err)?;
    Ok(done.rows_affected())
}

async fn release(
    tx: &mut SqliteConnection,
    leases: &[(uuid::Uuid, i64)],
) -> Result<(), StoreError> {
    let now = herald_core::now_ms();
    for (id, token) in leases {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', due_at_ms = ?, lease_token = NULL, \
                 attempts = MAX(attempts - 1, 0), updated_at_ms = ?, in_doubt = 1 \
             WHERE id = ? AND lease_token = ? AND state = 'sending'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

async fn add_key(tx: &mut SqliteConnection, a: &AddKeyArgs) -> Result<String, StoreError> {
    let now = herald_core::now_ms();
    sqlx::query("INSERT INTO tenants (id, name, created_at_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&a.tenant_name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let tenant_id: String = sqlx::query_scalar("SELECT id FROM tenants WHERE name = ?")
        .bind(&a.tenant_name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO api_keys (key_hash, tenant_id, label, created_at_ms) VALUES (?, ?, ?, ?) \
         ON CONFLICT (key_hash) DO NOTHING",
    )
    .bind(&a.key_hash)
    .bind(&tenant_id)
    .bind(&a.label)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(tenant_id)
}
