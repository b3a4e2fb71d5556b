//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit is on disk before anyone is told it happened. Writes go
//! through the group-commit writer (`writer.rs`, one thread with rusqlite);
//! reads use a small sqlx pool.

mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::events::OutboxEvent;
use herald_core::model::{Channel, Priority};
use herald_core::store::{
    AttemptRecord, AttemptView, ClaimedDelivery, CreateResult, DeadLetter, DeadLetterCursor,
    DeadLetterFilter, DeliverySummary, DeliveryView, NewNotification, NotificationView, QueueDepth,
    ReplayOutcome, Store, StoreError,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqlitePool};
use tokio::sync::mpsc;

use crate::rows::{self, db_err};
use crate::writes::{AddKeyArgs, ClaimArgs, Request, WriteHealth, WriteQueue};

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// The most operations one group commit takes.
    pub max_batch: usize,
    pub read_connections: u32,
    /// Write each notification's bus event to the outbox (the Kafka bus).
    pub outbox: bool,
    /// The longest a caller waits for a write or a readiness check.
    pub timeout: Duration,
}

/// SQLite behind the `Store` trait. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    reads: SqlitePool,
    writes: WriteQueue,
    timeout: Duration,
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
        let mut migrate = connect.connect().await.map_err(db_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut migrate)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        // The writer opens its own connection (rusqlite, on its own thread).
        migrate.close().await.map_err(db_err)?;
        let reads = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_err)?;
        let (tx, rx) = mpsc::channel(opts.max_batch.max(1) * 4);
        let health = Arc::new(WriteHealth::default());
        writer::start(
            &opts.path,
            rx,
            opts.max_batch.max(1),
            opts.outbox,
            health.clone(),
        )
        .await?;
        Ok(Self {
            reads,
            writes: WriteQueue {
                tx,
                health,
                timeout: opts.timeout,
            },
            timeout: opts.timeout,
        })
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
        for row in &rows {
            let attempts = self.attempts_of(rows::Columns::uuid(row, "id")?).await?;
            out.push(rows::delivery(row, attempts)?);
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
        rows.iter().map(rows::attempt).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError> {
        self.writes.create(batch).await
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
        match row {
            Some(row) => Ok(Some(rows::notification(
                id,
                &row,
                self.deliveries_of(id).await?,
            )?)),
            None => Ok(None),
        }
    }

    async fn sweep(
        &self,
        channel: Channel,
        priority: Priority,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
        settled_before_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.writes
            .claim(ClaimArgs {
                channel,
                priority,
                limit,
                now_ms,
                lease_ms,
                settled_before_ms,
            })
            .await
    }

    async fn claim_ids(
        &self,
        ids: Vec<uuid::Uuid>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let request = Request::ClaimIds {
            ids,
            now_ms,
            lease_ms,
        };
        self.writes.claimed(request).await
    }

    async fn record(&self, attempts: Vec<AttemptRecord>) -> Result<(), StoreError> {
        self.writes.done(Request::Record(attempts)).await
    }

    async fn release(
        &self,
        leases: Vec<(uuid::Uuid, i64)>,
        started: bool,
    ) -> Result<(), StoreError> {
        self.writes.done(Request::Release { leases, started }).await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        sqlx::query(
            "SELECT channel, priority, COUNT(*) AS n FROM deliveries \
             WHERE state IN ('queued', 'retry_scheduled', 'sending') GROUP BY channel, priority",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?
        .iter()
        .map(rows::queue_depth)
        .collect()
    }

    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError> {
        sqlx::query(
            "SELECT d.channel, d.priority, d.state, d.provider, n.accepted_at_ms, d.sent_at_ms \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?
        .iter()
        .map(rows::delivery_summary)
        .collect()
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut q = rows::dead_letters_query::<Sqlite>(filter, after, limit);
        q.build()
            .fetch_all(&self.reads)
            .await
            .map_err(db_err)?
            .iter()
            .map(rows::dead_letter)
            .collect()
    }

    async fn replay_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: uuid::Uuid,
    ) -> Result<ReplayOutcome, StoreError> {
        self.writes.replay_one(tenant_id, id).await
    }

    async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let filter = filter.clone();
        self.writes
            .count(Request::ReplayMany { filter, limit })
            .await
    }

    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: i64,
        provider: &str,
    ) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        self.writes
            .done(Request::NoteCall {
                id,
                lease_token,
                provider,
            })
            .await
    }

    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.writes.count(Request::Expire { now_ms }).await
    }

    async fn purge_finished(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.writes.count(Request::Purge { before_ms, limit }).await
    }

    async fn relay_lease(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        self.writes.relay_lease(holder, now_ms, lease_ms).await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        sqlx::query(
            "SELECT seq, lane, key, tenant_id, correlation_id, traceparent, payload FROM outbox \
             WHERE published_at_ms IS NULL ORDER BY lane, seq LIMIT ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reads)
        .await
        .map_err(db_err)?
        .iter()
        .map(rows::outbox_event)
        .collect()
    }

    async fn outbox_published(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        self.writes.done(Request::OutboxPublished(seqs)).await
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
        self.writes
            .add_key(AddKeyArgs {
                tenant_name: tenant_name.to_owned(),
                key_hash: key_hash.to_vec(),
                label: label.to_owned(),
            })
            .await
    }

    /// Reads answer and writes are taken (after a failed write, a probe
    /// write must succeed), within the store's timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        let read = async {
            sqlx::query("SELECT 1")
                .execute(&self.reads)
                .await
                .map_err(db_err)
        };
        crate::writes::bounded(self.timeout, read).await?;
        self.writes.check().await
    }
}
