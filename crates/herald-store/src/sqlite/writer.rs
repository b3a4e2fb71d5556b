//! The single SQLite writer with group commit.
//!
//! SQLite allows one writer at a time, so every write goes through one task
//! that owns the only write connection. The task takes whatever has queued up
//! while the previous commit was syncing (up to `max_batch` operations) and
//! applies it in ONE transaction: one fsync serves every request in the batch,
//! and no caller hears "done" before that fsync. No timer: under light load a
//! lone request commits at once; under heavy load batches grow by themselves.

use herald_core::model::{Channel, Priority};
use herald_core::store::{
    AttemptRecord, ClaimedDelivery, CreateResult, IdempotencyRecord, NewNotification, Next,
    StoreError, StoredResponse,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::db_err;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriteOp {
    Create(Vec<NewNotification>, Reply<Vec<CreateResult>>),
    Claim(ClaimArgs, Reply<Vec<ClaimedDelivery>>),
    Record(Vec<AttemptRecord>, Reply<()>),
    Release(Vec<(uuid::Uuid, i64)>, Reply<()>),
    AddKey(AddKeyArgs, Reply<String>),
}

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

/// A finished operation, waiting for the commit before its caller hears of it.
enum Done {
    Create(
        Reply<Vec<CreateResult>>,
        Result<Vec<CreateResult>, StoreError>,
    ),
    Claim(
        Reply<Vec<ClaimedDelivery>>,
        Result<Vec<ClaimedDelivery>, StoreError>,
    ),
    Unit(Reply<()>, Result<(), StoreError>),
    Key(Reply<String>, Result<String, StoreError>),
}

impl Done {
    /// Answers the caller: its own result if the batch committed, else the
    /// commit's error (nothing of the batch was written).
    fn answer(self, commit: &Result<(), String>) {
        fn pick<T>(r: Result<T, StoreError>, commit: &Result<(), String>) -> Result<T, StoreError> {
            match commit {
                Ok(()) => r,
                Err(e) => Err(StoreError::Unavailable(e.clone())),
            }
        }
        // A caller that went away (request cancelled) no longer needs the answer.
        let _ = match self {
            Done::Create(tx, r) => tx.send(pick(r, commit)).is_ok(),
            Done::Claim(tx, r) => tx.send(pick(r, commit)).is_ok(),
            Done::Unit(tx, r) => tx.send(pick(r, commit)).is_ok(),
            Done::Key(tx, r) => tx.send(pick(r, commit)).is_ok(),
        };
    }
}

pub(super) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
) {
    let mut ops = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut ops, max_batch).await > 0 {
        let mut done = Vec::with_capacity(ops.len());
        let commit = apply_batch(&mut conn, std::mem::take(&mut ops), &mut done).await;
        if let Err(e) = &commit {
            tracing::error!(error = %e, ops = done.len(), "group commit failed");
        }
        for d in done {
            d.answer(&commit);
        }
    }
    tracing::debug!("store writer stopped");
}

async fn apply_batch(
    conn: &mut SqliteConnection,
    ops: Vec<WriteOp>,
    done: &mut Vec<Done>,
) -> Result<(), String> {
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    for op in ops {
        // Each operation in its own savepoint: one failing does not undo the
        // others that share the commit.
        sqlx::query("SAVEPOINT op")
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        let (d, ok) = match op {
            WriteOp::Create(batch, reply) => {
                let r = create(&mut tx, batch).await;
                let ok = r.is_ok();
                (Done::Create(reply, r), ok)
            }
            WriteOp::Claim(args, reply) => {
                let r = claim(&mut tx, args).await;
                let ok = r.is_ok();
                (Done::Claim(reply, r), ok)
            }
            WriteOp::Record(records, reply) => {
                let r = record(&mut tx, records).await;
                let ok = r.is_ok();
                (Done::Unit(reply, r), ok)
            }
            WriteOp::Release(leases, reply) => {
                let r = release(&mut tx, leases).await;
                let ok = r.is_ok();
                (Done::Unit(reply, r), ok)
            }
            WriteOp::AddKey(args, reply) => {
                let r = add_key(&mut tx, args).await;
                let ok = r.is_ok();
                (Done::Key(reply, r), ok)
            }
        };
        if !ok {
            sqlx::query("ROLLBACK TO op")
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        sqlx::query("RELEASE op")
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        done.push(d);
    }
    tx.commit().await.map_err(|e| e.to_string())
}

async fn create(
    tx: &mut SqliteConnection,
    batch: Vec<NewNotification>,
) -> Result<Vec<CreateResult>, StoreError> {
    let mut results = Vec::with_capacity(batch.len());
    for n in batch {
        if let Some((key, rec)) = &n.idempotency {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys \
                 (tenant_id, key, request_hash, response_status, response_body, created_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&n.tenant_id)
            .bind(key)
            .bind(&rec.request_hash)
            .bind(i64::from(rec.response.status))
            .bind(&rec.response.body)
            .bind(n.accepted_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if inserted == 0 {
                let row = sqlx::query(
                    "SELECT request_hash, response_status, response_body FROM idempotency_keys \
                     WHERE tenant_id = ? AND key = ?",
                )
                .bind(&n.tenant_id)
                .bind(key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
                results.push(CreateResult::KeyTaken(idempotency_from_row(&row)?));
                continue;
            }
        }
        let payload = serde_json::to_string(&n.request)
            .map_err(|e| StoreError::Corrupt(format!("request does not serialize: {e}")))?;
        let priority = n.request.priority.index() as i64;
        sqlx::query(
            "INSERT INTO notifications (id, tenant_id, priority, payload, accepted_at_ms, expires_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(n.id)
        .bind(&n.tenant_id)
        .bind(priority)
        .bind(payload)
        .bind(n.accepted_at_ms)
        .bind(n.expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries (id, notification_id, channel, target, priority, state, due_at_ms, updated_at_ms) ",
        );
        q.push_values(&n.deliveries, |mut b, d| {
            b.push_bind(d.id)
                .push_bind(n.id)
                .push_bind(d.channel.as_str())
                .push_bind(i64::from(d.target))
                .push_bind(priority)
                .push_bind("queued")
                .push_bind(n.due_at_ms)
                .push_bind(n.accepted_at_ms);
        });
        q.build().execute(&mut *tx).await.map_err(db_err)?;
        results.push(CreateResult::Created);
    }
    Ok(results)
}

pub(super) fn idempotency_from_row(
    row: &sqlx::sqlite::SqliteRow,
) -> Result<IdempotencyRecord, StoreError> {
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
    a: ClaimArgs,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let token: i64 = rand::random();
    let rows = sqlx::query(
        "UPDATE deliveries SET state = 'sending', due_at_ms = ?1 + ?2, lease_token = ?3, \
             attempts = attempts + 1, updated_at_ms = ?1 \
         WHERE rowid IN (SELECT rowid FROM deliveries \
             WHERE channel = ?4 AND priority = ?5 \
               AND state IN ('queued', 'retry_scheduled', 'sending') AND due_at_ms <= ?1 \
             ORDER BY due_at_ms LIMIT ?6) \
         RETURNING id, notification_id, target, attempts",
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

async fn record(tx: &mut SqliteConnection, records: Vec<AttemptRecord>) -> Result<(), StoreError> {
    for r in records {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, provider, started_at_ms, latency_ms, outcome, status_code, error) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.delivery_id)
        .bind(i64::from(r.attempt))
        .bind(&r.provider)
        .bind(r.started_at_ms)
        .bind(r.latency_ms)
        .bind(&r.outcome)
        .bind(r.status_code.map(i64::from))
        .bind(&r.error)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let ended_at = r.started_at_ms + r.latency_ms;
        let (due, sent_at) = match &r.next {
            Next::RetryAt(at) => (*at, None),
            Next::Sent { .. } => (ended_at, Some(ended_at)),
            _ => (ended_at, None),
        };
        // Compare-and-set on the lease: a worker whose lease expired and was
        // taken over does not overwrite the newer holder's state.
        sqlx::query(
            "UPDATE deliveries SET state = ?, due_at_ms = ?, lease_token = NULL, \
                 provider = COALESCE(?, provider), last_error = ?, sent_at_ms = COALESCE(?, sent_at_ms), \
                 updated_at_ms = ? \
             WHERE id = ? AND lease_token = ? AND state = 'sending'",
        )
        .bind(r.next.state().as_str())
        .bind(due)
        .bind(&r.provider)
        .bind(&r.error)
        .bind(sent_at)
        .bind(ended_at)
        .bind(r.delivery_id)
        .bind(r.lease_token)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

async fn release(
    tx: &mut SqliteConnection,
    leases: Vec<(uuid::Uuid, i64)>,
) -> Result<(), StoreError> {
    let now = herald_core::now_ms();
    for (id, token) in leases {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', due_at_ms = ?, lease_token = NULL, \
                 attempts = MAX(attempts - 1, 0), updated_at_ms = ? \
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

async fn add_key(tx: &mut SqliteConnection, a: AddKeyArgs) -> Result<String, StoreError> {
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
