//! The fleet's store: PostgreSQL, with the same meaning as the SQLite store
//! (one behavioural suite runs against both). Writes go through group-commit
//! writers (`writer.rs`): several, each on its own connection, each taking
//! whatever has queued up and applying it in one transaction, so concurrent
//! requests share commits (one WAL flush each) while the database works on
//! several batches at once. Claims lock with `FOR UPDATE SKIP LOCKED`, so any
//! number of nodes claim from the same table without waiting on each other.
//! Reads use the same pool.

mod writer;

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
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, Mutex};

use crate::rows::{self, db_err};
use crate::writes::{AddKeyArgs, ClaimArgs, Request, WriteHealth, WriteQueue};

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/database`
    pub url: String,
    /// Connections in the pool: the writers' plus those for reads.
    pub max_connections: u32,
    /// Group-commit writers, each a transaction at a time.
    pub writers: usize,
    /// The most operations one group commit takes.
    pub max_batch: usize,
    /// Write each notification's bus event to the outbox (the Kafka bus).
    pub outbox: bool,
    /// The longest a connection, a read, a transaction or a caller's
    /// write may take before it fails as unavailable.
    pub timeout: Duration,
}

/// PostgreSQL behind the `Store` trait. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    writes: WriteQueue,
    timeout: Duration,
}

/// A read on one connection, boxed so `read` can bound it.
type Read<'c, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'c>>;

impl PostgresStore {
    /// Connects and brings the schema up to date (sqlx's migrator takes an
    /// advisory lock, so nodes starting together migrate once).
    pub async fn open(opts: &PostgresOptions) -> Result<Self, StoreError> {
        let writers = opts.writers.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(writers as u32 + 1))
            .acquire_timeout(opts.timeout)
            .connect(&opts.url)
            .await
            .map_err(db_err)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let (tx, rx) = mpsc::channel(opts.max_batch.max(1) * 4);
        let queue = Arc::new(Mutex::new(rx));
        let health = Arc::new(WriteHealth::default());
        for _ in 0..writers {
            let w = writer::Writer {
                pool: pool.clone(),
                queue: queue.clone(),
                max_batch: opts.max_batch.max(1),
                outbox: opts.outbox,
                health: health.clone(),
                timeout: opts.timeout,
            };
            tokio::spawn(w.run());
        }
        Ok(Self {
            pool,
            writes: WriteQueue {
                tx,
                health,
                timeout: opts.timeout,
            },
            timeout: opts.timeout,
        })
    }

    /// Runs a read on one pooled connection within the store's timeout
    /// (the pool bounds the wait for the connection). A connection that
    /// did not answer in time is closed rather than returned to the pool,
    /// where it would hang the next caller.
    async fn read<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut PgConnection) -> Read<'c, T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            Ok(done) => done,
            Err(_) => Err(cut_off(&mut conn, self.timeout)),
        }
    }
}

/// The error for a call that did not answer within `timeout`, whose
/// connection is closed rather than returned to the pool: cut off
/// mid-call, it would hang (or confuse) the next caller.
fn cut_off(conn: &mut sqlx::pool::PoolConnection<Postgres>, timeout: Duration) -> StoreError {
    conn.close_on_drop();
    StoreError::Unavailable(format!(
        "no answer from PostgreSQL within {} ms",
        timeout.as_millis()
    ))
}

/// Whether the database at `url` holds Herald's tables (without creating
/// them): for commands that must not make a new, empty store.
pub async fn has_schema(url: &str, timeout: Duration) -> Result<bool, StoreError> {
    let check = async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(db_err)?;
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('notifications')::text")
            .fetch_one(&mut conn)
            .await
            .map_err(db_err)?;
        let _ = conn.close().await;
        Ok(found.is_some())
    };
    crate::writes::bounded(timeout, check).await
}

async fn deliveries_of(
    conn: &mut PgConnection,
    notification: uuid::Uuid,
) -> Result<Vec<DeliveryView>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, channel, target, state, provider, vendor_message_id, last_error, sent_at_ms, updated_at_ms \
         FROM deliveries WHERE notification_id = $1 ORDER BY channel, target",
    )
    .bind(notification)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let attempts = attempts_of(conn, rows::Columns::uuid(row, "id")?).await?;
        out.push(rows::delivery(row, attempts)?);
    }
    Ok(out)
}

async fn attempts_of(
    conn: &mut PgConnection,
    delivery: uuid::Uuid,
) -> Result<Vec<AttemptView>, StoreError> {
    let rows = sqlx::query(
        "SELECT attempt, provider, started_at_ms, latency_ms, outcome, status_code, error \
         FROM attempts WHERE delivery_id = $1 ORDER BY started_at_ms, attempt",
    )
    .bind(delivery)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.iter().map(rows::attempt).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError> {
        self.writes.create(batch).await
    }

    async fn notification(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
    ) -> Result<Option<NotificationView>, StoreError> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                let row = sqlx::query(
                    "SELECT tenant_id, payload, accepted_at_ms, expires_at_ms FROM notifications \
                     WHERE id = $1 AND tenant_id = $2",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&mut *c)
                .await
                .map_err(db_err)?;
                match row {
                    Some(row) => Ok(Some(rows::notification(
                        id,
                        &row,
                        deliveries_of(c, id).await?,
                    )?)),
                    None => Ok(None),
                }
            })
        })
        .await
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
        self.read(|c| {
            Box::pin(async move {
                sqlx::query(
                    "SELECT channel, priority, COUNT(*) AS n FROM deliveries \
                     WHERE state IN ('queued', 'retry_scheduled', 'sending') GROUP BY channel, priority",
                )
                .fetch_all(c)
                .await
                .map_err(db_err)?
                .iter()
                .map(rows::queue_depth)
                .collect()
            })
        })
        .await
    }

    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                sqlx::query(
                    "SELECT d.channel, d.priority, d.state, d.provider, n.accepted_at_ms, d.sent_at_ms \
                     FROM deliveries d JOIN notifications n ON n.id = d.notification_id",
                )
                .fetch_all(c)
                .await
                .map_err(db_err)?
                .iter()
                .map(rows::delivery_summary)
                .collect()
            })
        })
        .await
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let filter = filter.clone();
        self.read(move |c| {
            Box::pin(async move {
                let mut q = rows::dead_letters_query::<Postgres>(&filter, after, limit);
                q.build()
                    .fetch_all(c)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(rows::dead_letter)
                    .collect()
            })
        })
        .await
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
        self.read(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "SELECT seq, lane, key, tenant_id, correlation_id, traceparent, payload FROM outbox \
                     WHERE published_at_ms IS NULL ORDER BY lane, seq LIMIT $1",
                )
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(c)
                .await
                .map_err(db_err)?
                .iter()
                .map(rows::outbox_event)
                .collect()
            })
        })
        .await
    }

    async fn outbox_published(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        self.writes.done(Request::OutboxPublished(seqs)).await
    }

    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            Box::pin(async move {
                sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
                    .bind(name)
                    .fetch_optional(c)
                    .await
                    .map_err(db_err)
            })
        })
        .await
    }

    async fn tenant_for_key(&self, key_hash: &[u8]) -> Result<Option<String>, StoreError> {
        let key_hash = key_hash.to_vec();
        self.read(move |c| {
            Box::pin(async move {
                sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE key_hash = $1")
                    .bind(key_hash)
                    .fetch_optional(c)
                    .await
                    .map_err(db_err)
            })
        })
        .await
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

    /// The database answers and takes writes (after a failed write, a
    /// probe write must succeed), within the store's timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            Box::pin(async move {
                sqlx::query("SELECT 1")
                    .execute(c)
                    .await
                    .map(|_| ())
                    .map_err(db_err)
            })
        })
        .await?;
        self.writes.check().await
    }
}
