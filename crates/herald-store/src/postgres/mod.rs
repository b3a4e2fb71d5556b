//! The fleet's store: PostgreSQL, with the same meaning as the SQLite store
//! (one behavioural suite runs against both). Writes go through group-commit
//! writers (`writer.rs`): several, each on its own connection, each taking
//! whatever has queued up and applying it in one transaction, so concurrent
//! requests share commits (one WAL flush each) while the database works on
//! several batches at once. Claims lock with `FOR UPDATE SKIP LOCKED`, so any
//! number of nodes claim from the same table without waiting on each other.
//! Reads use the same pool; the recipients concurrent requests name are
//! read together (`recipient_reads.rs`).

mod recipient_reads;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::recipient::StoredRecipient;
use herald_core::store::{Cause, StoreError};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::db::{Database, Db};
use crate::reads::{Arg, Reader};
use crate::rows::db_err;
use crate::writes::{write_queues, WriteHealth, WriteQueue};

/// The PostgreSQL backend.
pub struct Postgres;

/// PostgreSQL behind the store's roles.
pub type PostgresStore = Db<Postgres>;

impl Database for Postgres {
    type Reader = PgReader;
}

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
    /// The longest a group commit holds its first operation while more
    /// keeps coming, to carry it in one transaction.
    pub gather: Duration,
}

impl Db<Postgres> {
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
            .map_err(|e| StoreError::Unavailable(Cause::new("migrations failed", e)))?;
        let (tx, rx) = write_queues(opts.max_batch.max(1) * 4);
        let queue = Arc::new(Mutex::new(rx));
        let health = Arc::new(WriteHealth::default());
        let in_flight = Arc::new(writer::InFlight::default());
        for _ in 0..writers {
            let w = writer::Writer {
                pool: pool.clone(),
                queue: queue.clone(),
                max_batch: opts.max_batch.max(1),
                ctx: writer::Ctx {
                    outbox: opts.outbox,
                },
                health: health.clone(),
                timeout: opts.timeout,
                gather: opts.gather,
                in_flight: in_flight.clone(),
            };
            tokio::spawn(w.run());
        }
        Ok(Db {
            reads: PgReader {
                recipients: recipient_reads::RecipientReads::start(
                    pool.clone(),
                    opts.timeout,
                    opts.gather,
                ),
                pool,
                timeout: opts.timeout,
            },
            writes: WriteQueue {
                tx,
                health,
                timeout: opts.timeout,
            },
        })
    }
}

/// Runs the shared reads, each on one pooled connection within the store's
/// timeout (the pool bounds the wait for the connection).
pub struct PgReader {
    pool: PgPool,
    timeout: Duration,
    recipients: recipient_reads::RecipientReads,
}

#[async_trait]
impl Reader for PgReader {
    type Row = PgRow;

    async fn rows(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<PgRow>, StoreError> {
        let mut q = sqlx::query(sql);
        for a in args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Uuid(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        match tokio::time::timeout(self.timeout, q.fetch_all(&mut *conn)).await {
            Ok(rows) => rows.map_err(db_err),
            Err(_) => Err(cut_off(&mut conn, self.timeout)),
        }
    }

    async fn recipients(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecipient>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.recipients.read(tenant_id, ids).await
    }
}

/// The error for a call that did not answer within `timeout`, whose
/// connection is closed rather than returned to the pool: cut off
/// mid-call, it would hang (or confuse) the next caller.
fn cut_off(conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>, timeout: Duration) -> StoreError {
    conn.close_on_drop();
    StoreError::Unavailable(
        format!(
            "no answer from PostgreSQL within {} ms",
            timeout.as_millis()
        )
        .into(),
    )
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
