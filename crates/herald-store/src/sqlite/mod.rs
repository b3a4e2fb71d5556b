//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit is on disk before anyone is told it happened. Writes go
//! through the group-commit writer (`writer.rs`, one thread with rusqlite);
//! reads use a small sqlx pool.

mod writer;

/// Seconds each group commit took (its statements and the fsync).
pub const COMMIT_SECONDS: &str = "herald_store_commit_seconds";
/// Operations each group commit carried.
pub const COMMIT_OPERATIONS: &str = "herald_store_commit_operations";
/// Seconds a write took as its caller saw it (queueing for the writer, then
/// the commit); label `op`.
pub const WRITE_SECONDS: &str = "herald_store_write_seconds";

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::model::{Channel, DeliveryState, NotificationRequest, Priority};
use herald_core::store::{
    AttemptRecord, AttemptView, ClaimedDelivery, CreateResult, DeadLetter, DeadLetterCursor,
    DeadLetterFilter, DeliverySummary, DeliveryView, NewNotification, NotificationView, QueueDepth,
    ReplayOutcome, Store, StoreError,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use writer::{AddKeyArgs, ClaimArgs, Request, Response};

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// The most operations one group commit takes.
    pub max_batch: usize,
    pub read_connections: u32,
}

/// SQLite behind the `Store` trait. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    reads: SqlitePool,
    writer: mpsc::Sender<(Request, writer::Reply)>,
}

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(opts: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(&opts.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let mut write_conn = connect.connect().await.map_err(db_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut write_conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let reads = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_err)?;
        // The writer opens its own connection (rusqlite, on its own thread).
        write_conn.close().await.map_err(db_err)?;
        let (tx, rx) = mpsc::channel(opts.max_batch.max(1) * 4);
        writer::start(&opts.path, rx, opts.max_batch.max(1)).await?;
        Ok(Self { reads, writer: tx })
    }

    async fn write(&self, request: Request) -> Result<Response, StoreError> {
        let started = std::time::Instant::now();
        let op = request.name();
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((request, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let done = rx.await.map_err(|_| StoreError::Closed)?;
        metrics::histogram!(WRITE_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        done
    }

    async fn deliveries_of(
        &self,
        notification: uuid::Uuid,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, channel, target, state, provider, vendor_message_id, last_error, sent_at_ms, updated_at_ms \
             FROM deliveries WHERE notification_id = ? ORDER BY channel, target",
        )
        .bind(notification)
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: uuid::Uuid = row.try_get("id").map_err(db_err)?;
            let target: i64 = row.try_get("target").map_err(db_err)?;
            out.push(DeliveryView {
                id,
                channel: parse(&row, "channel")?,
                target: u32::try_from(target).unwrap_or(0),
                state: parse(&row, "state")?,
                provider: row.try_get("provider").map_err(db_err)?,
                vendor_message_id: row.try_get("vendor_message_id").map_err(db_err)?,
                last_error: row.try_get("last_error").map_err(db_err)?,
                sent_at_ms: row.try_get("sent_at_ms").map_err(db_err)?,
                updated_at_ms: row.try_get("updated_at_ms").map_err(db_err)?,
                attempts: self.attempts_of(id).await?,
            });
        }
        Ok(out)
    }

    async fn attempts_of(&self, delivery: uuid::Uuid) -> Result<Vec<AttemptView>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, provider, started_at_ms, latency_ms, outcome, status_code, error \
             FROM attempts WHERE delivery_id = ? ORDER BY started_at_ms, attempt",
        )
        .bind(delivery)
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let attempt: i64 = row.try_get("attempt").map_err(db_err)?;
                let status: Option<i64> = row.try_get("status_code").map_err(db_err)?;
                Ok(AttemptView {
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    at_ms: row.try_get("started_at_ms").map_err(db_err)?,
                    provider: row.try_get("provider").map_err(db_err)?,
                    outcome: row.try_get("outcome").map_err(db_err)?,
                    status_code: status.and_then(|s| u16::try_from(s).ok()),
                    latency_ms: row.try_get("latency_ms").map_err(db_err)?,
                    error: row.try_get("error").map_err(db_err)?,
                })
            })
            .collect()
    }
}

/// Reads a text column holding one of our enums' names.
fn parse<T: FromStr>(row: &sqlx::sqlite::SqliteRow, col: &str) -> Result<T, StoreError> {
    let s: String = row.try_get(col).map_err(db_err)?;
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("column {col} holds {s:?}")))
}

/// Adds `filter`'s conditions to a query over `deliveries d JOIN
/// notifications n` that already has a WHERE clause.
fn push_dead_letter_filter(q: &mut QueryBuilder<'_, Sqlite>, f: &DeadLetterFilter) {
    if let Some(t) = &f.tenant_id {
        q.push(" AND n.tenant_id = ").push_bind(t.clone());
    }
    if let Some(c) = f.channel {
        q.push(" AND d.channel = ").push_bind(c.as_str());
    }
    if let Some(p) = &f.provider {
        q.push(" AND d.provider = ").push_bind(p.clone());
    }
    if let Some(since) = f.since_ms {
        q.push(" AND d.updated_at_ms >= ").push_bind(since);
    }
    if let Some(until) = f.until_ms {
        q.push(" AND d.updated_at_ms < ").push_bind(until);
    }
}

/// The writer answers each request with its own kind of response; anything
/// else is a bug in the writer, reported rather than panicking.
fn mismatch() -> StoreError {
    StoreError::Corrupt("the store writer answered with the wrong kind of response".into())
}

fn priority(row: &sqlx::sqlite::SqliteRow) -> Result<Priority, StoreError> {
    let p: i64 = row.try_get("priority").map_err(db_err)?;
    Priority::from_index(p).ok_or_else(|| StoreError::Corrupt(format!("priority {p}")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError> {
        match self.write(Request::Create(batch)).await? {
            Response::Created(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn notification(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
    ) -> Result<Option<NotificationView>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant_id, payload, accepted_at_ms, expires_at_ms FROM notifications \
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.reads)
        .await
        .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let payload: String = row.try_get("payload").map_err(db_err)?;
        let request: NotificationRequest = serde_json::from_str(&payload)
            .map_err(|e| StoreError::Corrupt(format!("notification {id}: {e}")))?;
        Ok(Some(NotificationView {
            id,
            tenant_id: row.try_get("tenant_id").map_err(db_err)?,
            request,
            accepted_at_ms: row.try_get("accepted_at_ms").map_err(db_err)?,
            expires_at_ms: row.try_get("expires_at_ms").map_err(db_err)?,
            deliveries: self.deliveries_of(id).await?,
        }))
    }

    async fn claim(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let args = ClaimArgs {
            channel,
            priority,
            limit,
            now_ms,
            lease_ms,
        };
        match self.write(Request::Claim(args)).await? {
            Response::Claimed(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn record(&self, attempts: Vec<AttemptRecord>) -> Result<(), StoreError> {
        self.write(Request::Record(attempts)).await.map(drop)
    }

    async fn release(&self, leases: Vec<(uuid::Uuid, i64)>) -> Result<(), StoreError> {
        self.write(Request::Release(leases)).await.map(drop)
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, priority, COUNT(*) AS n FROM deliveries \
             WHERE state IN ('queued', 'retry_scheduled', 'sending') GROUP BY channel, priority",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n").map_err(db_err)?;
                Ok(QueueDepth {
                    channel: parse(row, "channel")?,
                    priority: priority(row)?,
                    pending: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.channel, d.priority, d.state, d.provider, n.accepted_at_ms, d.sent_at_ms \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(DeliverySummary {
                    channel: parse(row, "channel")?,
                    priority: priority(row)?,
                    state: parse::<DeliveryState>(row, "state")?,
                    provider: row.try_get("provider").map_err(db_err)?,
                    accepted_at_ms: row.try_get("accepted_at_ms").map_err(db_err)?,
                    sent_at_ms: row.try_get("sent_at_ms").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT d.id, d.notification_id, n.tenant_id, d.channel, d.target, d.priority, d.provider, \
                 d.attempts, d.last_error, d.updated_at_ms, n.accepted_at_ms \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             WHERE d.state = 'dead'",
        );
        push_dead_letter_filter(&mut q, filter);
        if let Some(c) = after {
            q.push(" AND (d.updated_at_ms, d.id) > (")
                .push_bind(c.dead_at_ms)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        q.push(" ORDER BY d.updated_at_ms, d.id LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.reads).await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let target: i64 = row.try_get("target").map_err(db_err)?;
                let attempts: i64 = row.try_get("attempts").map_err(db_err)?;
                Ok(DeadLetter {
                    id: row.try_get("id").map_err(db_err)?,
                    notification_id: row.try_get("notification_id").map_err(db_err)?,
                    tenant_id: row.try_get("tenant_id").map_err(db_err)?,
                    channel: parse(row, "channel")?,
                    target: u32::try_from(target).unwrap_or(0),
                    priority: priority(row)?,
                    provider: row.try_get("provider").map_err(db_err)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: row.try_get("last_error").map_err(db_err)?,
                    dead_at_ms: row.try_get("updated_at_ms").map_err(db_err)?,
                    accepted_at_ms: row.try_get("accepted_at_ms").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn replay_dead_letter(
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

    async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let req = Request::ReplayMany {
            filter: filter.clone(),
            limit,
        };
        match self.write(req).await? {
            Response::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: i64,
        provider: &str,
    ) -> Result<(), StoreError> {
        let req = Request::NoteCall {
            id,
            lease_token,
            provider: provider.to_owned(),
        };
        self.write(req).await.map(drop)
    }

    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self.write(Request::Expire { now_ms }).await? {
            Response::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reads)
            .await
            .map_err(db_err)
    }

    async fn tenant_for_key(&self, key_hash: &[u8]) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.reads)
            .await
            .map_err(db_err)
    }

    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        label: &str,
    ) -> Result<String, StoreError> {
        let args = AddKeyArgs {
            tenant_name: tenant_name.to_owned(),
            key_hash: key_hash.to_vec(),
            label: label.to_owned(),
        };
        match self.write(Request::AddKey(args)).await? {
            Response::Tenant(t) => Ok(t),
            _ => Err(mismatch()),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map_err(db_err)?;
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
}
