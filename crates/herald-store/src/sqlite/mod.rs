//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit is on disk before anyone is told it happened. Writes go
//! through the group-commit writer (`writer.rs`, one thread with rusqlite);
//! reads use a small read-only sqlx pool.

mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::store::{Cause, StoreError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};

use crate::db::{Database, Db};
use crate::reads::{Arg, Reader};
use crate::rows::db_err;
use crate::writes::{bounded, write_queues, WriteHealth, WriteQueue};

/// The SQLite backend.
pub struct Sqlite;

/// SQLite behind the store's roles.
pub type SqliteStore = Db<Sqlite>;

impl Database for Sqlite {
    type Reader = SqliteReader;
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// The most operations one group commit takes.
    pub max_batch: usize,
    pub read_connections: u32,
    /// Write each notification's bus event to the outbox (the Kafka bus).
    pub outbox: bool,
    /// The longest a caller waits for a write, a read or a readiness check.
    pub timeout: Duration,
}

impl Db<Sqlite> {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(opts: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(Cause::new(&format!("cannot create {}", dir.display()), e))
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
            .map_err(|e| StoreError::Unavailable(Cause::new("migrations failed", e)))?;
        // The writer opens its own connection (rusqlite, on its own thread).
        migrate.close().await.map_err(db_err)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .acquire_timeout(opts.timeout)
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_err)?;
        let (tx, rx) = write_queues(opts.max_batch.max(1) * 4);
        let health = Arc::new(WriteHealth::default());
        writer::start(
            &opts.path,
            rx,
            opts.max_batch.max(1),
            opts.outbox,
            health.clone(),
        )
        .await?;
        Ok(Db {
            reads: SqliteReader {
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

/// Runs the shared reads on the read-only pool.
pub struct SqliteReader {
    pool: SqlitePool,
    timeout: Duration,
}

#[async_trait]
impl Reader for SqliteReader {
    type Row = SqliteRow;

    async fn rows(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<SqliteRow>, StoreError> {
        // `$n` to SQLite's numbered `?n`: the same parameter, by number.
        let sql = sql.replace('$', "?");
        let mut q = sqlx::query(&sql);
        for a in args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Uuid(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        bounded(self.timeout, async {
            q.fetch_all(&self.pool).await.map_err(db_err)
        })
        .await
    }
}
