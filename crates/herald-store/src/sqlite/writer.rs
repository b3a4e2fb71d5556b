//! The single SQLite writer with group commit.
//!
//! SQLite allows one writer at a time, so every write goes through one
//! thread that owns the only write connection. It takes whatever has queued
//! up while the previous commit was syncing (up to `max_batch` operations)
//! and applies it in ONE transaction: one fsync serves every request in the
//! batch, and no caller hears "done" before that fsync. No timer: under light
//! load a lone request commits at once; under heavy load batches grow by
//! themselves.
//!
//! The writer is a plain thread running rusqlite, not an async task running
//! sqlx: sqlx hands every statement and every returned row to a worker
//! thread and back, and at tens of thousands of rows a second those hand-offs
//! (context switches, wake-ups, allocations) cost more than SQLite itself.
//! Here each row is one step of a prepared, cached statement on this thread.
//! Reads stay on sqlx's pool. Both link the same libsqlite3.
//!
//! If an operation breaks the batch, it is rolled back and each operation
//! replayed in its own transaction, so only the failing one fails; if the
//! store itself fails (a full disk, an I/O error), every operation fails
//! at once, and until a write succeeds again the writer tries one batch
//! every so often and fails the others without touching the disk
//! (`WriteHealth`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::{self, Op};
use crate::writes::{
    committed, v7_floor, Backend, Inbox, OutboxRow, Pending, RowChange, Runs, Settled, WriteHealth,
};
use herald_core::model::{Channel, DeliveryState, Priority};
use herald_core::store::{
    AttemptRecord, Cause, Claim, ClaimedDelivery, CreateResult, DeadLetterFilter,
    IdempotencyRecord, LeaseToken, NewNotification, ReplayOutcome, StoreError, StoredResponse,
};
use herald_core::store::{PutRecipient, ReceiptApplied};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

/// As `rows::db_err`, for rusqlite: a full disk, an I/O error or a busy
/// database is the store's trouble; a broken constraint the operation's.
fn sql_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(Cause::of(e)),
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Rejected(Cause::of(e))
        }
        _ => StoreError::Unavailable(Cause::of(e)),
    }
}

/// Opens the write connection on its own thread and starts the writer there.
/// Returns once the connection is open (or could not be).
pub(super) async fn start(
    path: &Path,
    rx: Inbox<Box<dyn Job>>,
    max_batch: usize,
    outbox: bool,
    health: Arc<WriteHealth>,
) -> Result<(), StoreError> {
    let path = path.to_owned();
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("herald-store-writer".into())
        .spawn(move || match open(&path) {
            Ok(conn) => {
                let _ = ready_tx.send(Ok(()));
                run(conn, rx, max_batch, Ctx { outbox }, &health);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(sql_err(e)));
            }
        })
        .map_err(|e| StoreError::Unavailable(Cause::new("cannot start the store writer", e)))?;
    ready_rx.await.map_err(|_| StoreError::Closed)?
}

/// The read pool's settings (see `SqliteStore::open`) but the cache: WAL,
/// fsync on every commit, foreign keys enforced.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // SQLite's default page cache (2,000 pages), not the read pool's 64 MiB.
    // Measured at 12k notifications/s: with 64 MiB, commits averaged 11 ms
    // for 55 operations, 14% of this thread in pcache1TruncateUnsafe (each
    // commit ends by walking the page cache); with the default, 0.8 ms for
    // 16. docs/benchmarks.md has the runs.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// What every operation may need besides its own data.
pub struct Ctx {
    /// Creates also write their notifications' events to the outbox.
    pub outbox: bool,
}

/// An operation SQLite applies, inside the writer's transaction, on the
/// writer thread.
pub trait SqliteOp: Op {
    fn apply(&self, tx: &Transaction<'_>, ctx: &Ctx) -> Result<Self::Output, StoreError>;
    /// Attempt records, applied before the batch's other writes (`ops::Record`).
    fn records(&self) -> &[AttemptRecord] {
        &[]
    }
}

/// A queued operation with its type erased, as the writer handles it.
pub trait Job: Send + Sync {
    fn records(&self) -> &[AttemptRecord];
    fn apply(&mut self, tx: &Transaction<'_>, ctx: &Ctx) -> Result<(), StoreError>;
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

impl<O: SqliteOp> Job for Pending<O> {
    fn records(&self) -> &[AttemptRecord] {
        self.op.records()
    }

    fn apply(&mut self, tx: &Transaction<'_>, ctx: &Ctx) -> Result<(), StoreError> {
        let out = self.op.apply(tx, ctx)?;
        self.applied(out);
        Ok(())
    }

    fn answer(self: Box<Self>, committed: Result<(), StoreError>) {
        (*self).answer(committed)
    }
}

impl Backend for super::Sqlite {
    type Job = Box<dyn Job>;
}

impl<O: SqliteOp> Runs<O> for super::Sqlite {
    fn job(pending: Pending<O>) -> Box<dyn Job> {
        Box::new(pending)
    }
}

fn run(
    mut conn: Connection,
    mut rx: Inbox<Box<dyn Job>>,
    max_batch: usize,
    ctx: Ctx,
    health: &WriteHealth,
) {
    // Only to wait on the two queues at once; nothing is spawned on it.
    let waiter = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the store writer cannot wait for work; it stops");
            return;
        }
    };
    let mut batch = Vec::with_capacity(max_batch);
    while waiter.block_on(rx.recv_many(&mut batch, max_batch)) > 0 {
        let started = std::time::Instant::now();
        let mut jobs: Vec<Box<dyn Job>> = std::mem::take(&mut batch);
        let n = jobs.len();
        if let Some(e) = health.refuses() {
            jobs.into_iter().for_each(|j| j.answer(Err(e.clone())));
            committed(n, started);
            continue;
        }
        let applied = apply(&mut conn, &mut jobs, &ctx);
        match health.settle(applied, n) {
            Settled::Committed => jobs.into_iter().for_each(|j| j.answer(Ok(()))),
            Settled::Failed(e) => jobs.into_iter().for_each(|j| j.answer(Err(e.clone()))),
            Settled::ReplayEach(e) => {
                tracing::warn!(error = %e, ops = n, "group commit failed; replaying each operation alone");
                for mut job in jobs {
                    let alone = apply(&mut conn, std::slice::from_mut(&mut job), &ctx);
                    job.answer(alone);
                }
            }
        }
        committed(n, started);
    }
    tracing::debug!("store writer stopped");
}

/// Applies every job in one transaction, all or nothing: attempt records
/// first (`ops::Record`), then each job in order.
fn apply(conn: &mut Connection, jobs: &mut [Box<dyn Job>], ctx: &Ctx) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    record(&tx, jobs.iter().flat_map(|j| j.records()))?;
    for job in jobs.iter_mut() {
        job.apply(&tx, ctx)?;
    }
    tx.commit().map_err(sql_err)
}

impl SqliteOp for ops::Create {
    fn apply(&self, tx: &Transaction<'_>, ctx: &Ctx) -> Result<Vec<CreateResult>, StoreError> {
        create(tx, &self.0, ctx.outbox)
    }
}

impl SqliteOp for ops::ClaimDue {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<Vec<ClaimedDelivery>, StoreError> {
        claim(tx, &self.0)
    }
}

impl SqliteOp for ops::ClaimIds {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<Vec<ClaimedDelivery>, StoreError> {
        claim_ids(tx, &self.ids, self.now_ms, self.lease_ms)
    }
}

impl SqliteOp for ops::Record {
    fn records(&self) -> &[AttemptRecord] {
        &self.0
    }

    fn apply(&self, _: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        Ok(()) // applied with the batch's other records, first
    }
}

impl SqliteOp for ops::Release {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        release(tx, &self.leases, self.started)
    }
}

impl SqliteOp for ops::NoteCall {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        tx.prepare_cached(
            "UPDATE deliveries SET calling = ?1 \
             WHERE id = ?2 AND lease_token = ?3 AND state = 'sending'",
        )
        .and_then(|mut s| s.execute(params![self.provider, self.id, self.lease_token.0]))
        .map_err(sql_err)?;
        Ok(())
    }
}

impl SqliteOp for ops::AddKey {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<String, StoreError> {
        add_key(tx, self)
    }
}

impl SqliteOp for ops::ReplayOne {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<ReplayOutcome, StoreError> {
        replay_one(tx, self.tenant_id.as_deref(), self.id)
    }
}

impl SqliteOp for ops::ReplayMany {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<u64, StoreError> {
        replay_many(tx, &self.filter, self.limit)
    }
}

impl SqliteOp for ops::Expire {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<u64, StoreError> {
        expire(tx, self.now_ms)
    }
}

impl SqliteOp for ops::Purge {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<u64, StoreError> {
        purge(tx, self.before_ms, self.limit)
    }
}

impl SqliteOp for ops::RelayLease {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<bool, StoreError> {
        relay_lease(tx, &self.holder, self.now_ms, self.lease_ms)
    }
}

impl SqliteOp for ops::OutboxPublished {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        let now = herald_core::now_ms();
        let mut mark = tx
            .prepare_cached("UPDATE outbox SET published_at_ms = ?1 WHERE seq = ?2")
            .map_err(sql_err)?;
        for seq in &self.0 {
            mark.execute(params![now, seq]).map_err(sql_err)?;
        }
        Ok(())
    }
}

impl SqliteOp for ops::Suppress {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<bool, StoreError> {
        let s = &self.0;
        let channel = s.channel.as_str();
        let in_force: Option<Option<i64>> = tx
            .prepare_cached(
                "SELECT lifted_at_ms FROM suppressions \
                 WHERE tenant_id = ?1 AND channel = ?2 AND address = ?3",
            )
            .and_then(|mut q| {
                q.query_row(params![s.tenant_id, channel, s.address], |r| r.get(0))
                    .optional()
            })
            .map_err(sql_err)?;
        tx.prepare_cached(SUPPRESS)
            .and_then(|mut q| {
                q.execute(params![
                    s.tenant_id,
                    channel,
                    s.address,
                    s.reason.as_str(),
                    s.detail,
                    s.source,
                    s.created_at_ms,
                    herald_core::now_ms().max(s.created_at_ms)
                ])
            })
            .map_err(sql_err)?;
        Ok(!matches!(in_force, Some(None)))
    }
}

impl SqliteOp for ops::Lift {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<bool, StoreError> {
        let lifted = tx
            .prepare_cached(LIFT)
            .and_then(|mut q| {
                q.execute(params![
                    self.tenant_id,
                    self.channel.as_str(),
                    self.address,
                    self.now_ms,
                    herald_core::now_ms().max(self.now_ms)
                ])
            })
            .map_err(sql_err)?;
        Ok(lifted > 0)
    }
}

impl SqliteOp for ops::ApplyReceipts {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<Vec<ReceiptApplied>, StoreError> {
        let mut find = tx
            .prepare_cached(
                "SELECT n.tenant_id, d.channel, d.notification_id FROM deliveries d \
                 JOIN notifications n ON n.id = d.notification_id WHERE d.id = ?1",
            )
            .map_err(sql_err)?;
        let mut log = tx
            .prepare_cached(
                "INSERT INTO receipts (delivery_id, provider, kind, at_ms, reason, received_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )
            .map_err(sql_err)?;
        let mut take = tx.prepare_cached(TAKE_RECEIPT).map_err(sql_err)?;
        let mut out = Vec::with_capacity(self.receipts.len());
        for r in &self.receipts {
            let found: Option<(String, String, uuid::Uuid)> = find
                .query_row([r.delivery_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
                .map_err(sql_err)?;
            let Some((tenant_id, channel, notification_id)) = found else {
                out.push(ReceiptApplied::Unknown);
                continue;
            };
            let mut changed = false;
            if let Some(kind) = r.kind {
                log.execute(params![
                    r.delivery_id,
                    self.provider,
                    kind.as_str(),
                    r.at_ms,
                    r.reason,
                    self.now_ms
                ])
                .map_err(sql_err)?;
                changed = take
                    .execute(params![
                        r.delivery_id,
                        kind.as_str(),
                        i64::from(kind.rank()),
                        self.now_ms
                    ])
                    .map_err(sql_err)?
                    > 0;
            }
            out.push(ReceiptApplied::Found {
                tenant_id,
                notification_id,
                channel: channel
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("channel {channel:?}").into()))?,
                changed,
            });
        }
        Ok(out)
    }
}

impl SqliteOp for ops::SetCallback {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        let (url, events) = match &self.callback {
            Some(c) => (
                Some(c.url.as_str()),
                Some(crate::writes::callback_events_text(&c.events)),
            ),
            None => (None, None),
        };
        tx.prepare_cached(
            "UPDATE tenants SET callback_url = ?2, callback_events = ?3 WHERE id = ?1",
        )
        .and_then(|mut q| q.execute(params![self.tenant_id, url, events]))
        .map_err(sql_err)?;
        Ok(())
    }
}

impl SqliteOp for ops::HoldCircuit {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<bool, StoreError> {
        let existed = tx
            .prepare_cached("DELETE FROM circuit_holds WHERE provider = ?1")
            .and_then(|mut q| q.execute([&self.provider]))
            .map_err(sql_err)?
            > 0;
        if let Some(h) = &self.hold {
            tx.prepare_cached(
                "INSERT INTO circuit_holds (provider, held_by, reason, since_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut q| q.execute(params![h.provider, h.by, h.reason, h.since_ms]))
            .map_err(sql_err)?;
        }
        Ok(existed)
    }
}

impl SqliteOp for ops::PutRecipient {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<PutRecipient, StoreError> {
        let profile = crate::writes::profile_json(&self.profile)?;
        let args = params![self.tenant_id, self.id, profile, self.now_ms];
        let version: Option<i64> = match self.if_version {
            None => tx
                .prepare_cached(
                    "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
                     VALUES (?1, ?2, ?3, 1, ?4) \
                     ON CONFLICT (tenant_id, id) DO UPDATE SET profile = excluded.profile, \
                         version = recipients.version + 1, updated_at_ms = excluded.updated_at_ms \
                     RETURNING version",
                )
                .and_then(|mut q| q.query_row(args, |r| r.get(0)).optional()),
            Some(0) => tx
                .prepare_cached(
                    "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
                     VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (tenant_id, id) DO NOTHING \
                     RETURNING version",
                )
                .and_then(|mut q| q.query_row(args, |r| r.get(0)).optional()),
            Some(v) => tx
                .prepare_cached(
                    "UPDATE recipients SET profile = ?3, version = version + 1, \
                         updated_at_ms = ?4 \
                     WHERE tenant_id = ?1 AND id = ?2 AND version = ?5 RETURNING version",
                )
                .and_then(|mut q| {
                    q.query_row(
                        params![self.tenant_id, self.id, profile, self.now_ms, v],
                        |r| r.get(0),
                    )
                    .optional()
                }),
        }
        .map_err(sql_err)?;
        Ok(match version {
            Some(version) => PutRecipient::Written {
                version,
                created: version == 1,
            },
            None => PutRecipient::Conflict,
        })
    }
}

impl SqliteOp for ops::Cancel {
    fn apply(
        &self,
        tx: &Transaction<'_>,
        _: &Ctx,
    ) -> Result<Option<Vec<herald_core::store::CancelledDelivery>>, StoreError> {
        let owner: Option<String> = tx
            .prepare_cached("SELECT tenant_id FROM notifications WHERE id = ?1")
            .and_then(|mut q| q.query_row([self.id], |r| r.get(0)).optional())
            .map_err(sql_err)?;
        if owner.as_deref() != Some(self.tenant_id.as_str()) {
            return Ok(None);
        }
        let cancelled: Vec<uuid::Uuid> = tx
            .prepare_cached(CANCEL_SQLITE)
            .and_then(|mut q| {
                q.query_map(params![self.id, self.now_ms], |r| r.get(0))?
                    .collect()
            })
            .map_err(sql_err)?;
        let rows: Vec<(uuid::Uuid, String, i64, String)> = tx
            .prepare_cached(
                "SELECT id, channel, target, state FROM deliveries \
                 WHERE notification_id = ?1 ORDER BY channel, target",
            )
            .and_then(|mut q| {
                q.query_map([self.id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(sql_err)?;
        rows.into_iter()
            .map(|(id, channel, target, state)| {
                crate::writes::cancelled_delivery(id, &channel, target, &state, &cancelled)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

const CANCEL_SQLITE: &str = "UPDATE deliveries SET state = 'cancelled', \
         last_error = 'cancelled before it was sent', lease_token = NULL, updated_at_ms = ?2 \
     WHERE notification_id = ?1 AND state IN ('queued', 'retry_scheduled') RETURNING id";

impl SqliteOp for ops::PutRecipients {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<usize, StoreError> {
        let mut q = tx
            .prepare_cached(
                "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
                 VALUES (?1, ?2, ?3, 1, ?4) \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET profile = excluded.profile, \
                     version = recipients.version + 1, updated_at_ms = excluded.updated_at_ms",
            )
            .map_err(sql_err)?;
        for (id, profile) in &self.batch {
            let profile = crate::writes::profile_json(profile)?;
            q.execute(params![self.tenant_id, id, profile, self.now_ms])
                .map_err(sql_err)?;
        }
        Ok(self.batch.len())
    }
}

impl SqliteOp for ops::SetPreferences {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<Option<i64>, StoreError> {
        let prefs = crate::writes::to_json(&self.preferences, "preferences")?;
        tx.prepare_cached(
            "UPDATE recipients SET preferences = ?3, version = version + 1, updated_at_ms = ?4 \
             WHERE tenant_id = ?1 AND id = ?2 AND (?5 IS NULL OR version = ?5) RETURNING version",
        )
        .and_then(|mut q| {
            q.query_row(
                params![self.tenant_id, self.id, prefs, self.now_ms, self.if_version],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(sql_err)
    }
}

impl SqliteOp for ops::SetTenantPreferences {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        let prefs = crate::writes::to_json(&self.preferences, "preferences")?;
        tx.prepare_cached("UPDATE tenants SET preferences = ?2 WHERE id = ?1")
            .and_then(|mut q| q.execute(params![self.tenant_id, prefs]))
            .map_err(sql_err)?;
        Ok(())
    }
}

impl SqliteOp for ops::DeleteRecipient {
    fn apply(
        &self,
        tx: &Transaction<'_>,
        _: &Ctx,
    ) -> Result<Option<herald_core::recipient::StoredRecipient>, StoreError> {
        // What the frequency caps counted of them goes with them.
        tx.prepare_cached("DELETE FROM cap_events WHERE tenant_id = ?1 AND recipient_id = ?2")
            .and_then(|mut q| q.execute(params![self.tenant_id, self.id]))
            .map_err(sql_err)?;
        let row: Option<(String, String, Option<String>, i64, i64)> = tx
            .prepare_cached(
                "DELETE FROM recipients WHERE tenant_id = ?1 AND id = ?2 \
                 RETURNING id, profile, preferences, version, updated_at_ms",
            )
            .and_then(|mut q| {
                q.query_row(params![self.tenant_id, self.id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
            })
            .map_err(sql_err)?;
        row.map(|(id, profile, prefs, version, updated_at_ms)| {
            crate::writes::stored_recipient(id, &profile, prefs.as_deref(), version, updated_at_ms)
        })
        .transpose()
    }
}

impl SqliteOp for ops::Probe {
    fn apply(&self, tx: &Transaction<'_>, _: &Ctx) -> Result<(), StoreError> {
        probe(tx)
    }
}

/// A write that needs new pages: a row padded to a few pages, replaced.
fn probe(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let pad: Vec<u8> = (0..PROBE_BYTES).map(|_| rand::random::<u8>()).collect();
    tx.prepare_cached(
        "INSERT INTO health_probe (id, at_ms, pad) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms, pad = excluded.pad",
    )
    .and_then(|mut s| s.execute(params![herald_core::now_ms(), pad]))
    .map_err(sql_err)?;
    Ok(())
}

/// The probe's padding: a few pages.
const PROBE_BYTES: usize = 16 * 1024;

fn create(
    tx: &Transaction<'_>,
    batch: &[NewNotification],
    outbox: bool,
) -> Result<Vec<CreateResult>, StoreError> {
    let mut take_key = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys \
             (tenant_id, key, request_hash, response_status, response_body, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .map_err(sql_err)?;
    let mut insert_notification = tx
        .prepare_cached(
            "INSERT INTO notifications \
             (id, tenant_id, priority, payload, accepted_at_ms, expires_at_ms, idempotency_key, \
              traceparent) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(sql_err)?;
    let mut insert_delivery = tx
        .prepare_cached(
            "INSERT INTO deliveries \
             (id, notification_id, channel, target, priority, state, due_at_ms, updated_at_ms, \
              expires_at_ms, last_error, lease_token, attempts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?9, ?6, ?7, ?8, ?10, ?11, ?12)",
        )
        .map_err(sql_err)?;
    let mut results = Vec::with_capacity(batch.len());
    for n in batch {
        if let Some((key, rec)) = &n.idempotency {
            // A key held already (stored earlier, or earlier in this batch):
            // the request that holds it answers instead.
            let took = take_key
                .execute(params![
                    n.tenant_id,
                    key,
                    rec.request_hash,
                    rec.response.status,
                    rec.response.body,
                    n.accepted_at_ms
                ])
                .map_err(sql_err)?;
            if took == 0 {
                results.push(CreateResult::KeyTaken(key_holder(tx, &n.tenant_id, key)?));
                continue;
            }
        }
        let payload = serde_json::to_string(&n.request)
            .map_err(|e| StoreError::Corrupt(Cause::new("request does not serialize", e)))?;
        let priority = n.request.priority.index() as i64;
        insert_notification
            .execute(params![
                n.id,
                n.tenant_id,
                priority,
                payload,
                n.accepted_at_ms,
                n.expires_at_ms,
                n.idempotency.as_ref().map(|(key, _)| key),
                n.traceparent
            ])
            .map_err(sql_err)?;
        let capped = match &n.cap {
            Some(cap) => {
                cap_reached(tx, &n.tenant_id, cap, n.accepted_at_ms)?.then(|| cap.reason())
            }
            None => None,
        };
        for d in &n.deliveries {
            let row = d.made(n.due_at_ms, capped.as_deref());
            insert_delivery
                .execute(params![
                    d.id,
                    n.id,
                    d.channel.as_str(),
                    d.target,
                    priority,
                    row.due_at_ms,
                    n.accepted_at_ms,
                    n.expires_at_ms,
                    row.state.as_str(),
                    row.reason,
                    row.lease.map(|l| l.token.0),
                    row.attempts()
                ])
                .map_err(sql_err)?;
        }
        if outbox {
            let row = OutboxRow::of(n)?;
            tx.prepare_cached(
                "INSERT INTO outbox (notification_id, lane, key, tenant_id, correlation_id, \
                     traceparent, payload, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    n.id,
                    row.lane,
                    row.key,
                    n.tenant_id,
                    n.correlation_id,
                    n.traceparent,
                    row.payload,
                    n.accepted_at_ms
                ])
            })
            .map_err(sql_err)?;
        }
        results.push(CreateResult::Created);
    }
    Ok(results)
}

/// Counts a notification against its frequency cap: whether the key has
/// `max` within the window already (then it is not counted).
fn cap_reached(
    tx: &Transaction<'_>,
    tenant: &str,
    cap: &herald_core::store::CapCheck,
    at_ms: i64,
) -> Result<bool, StoreError> {
    let key = params![tenant, cap.recipient_id, cap.category];
    let since = at_ms - cap.window_ms;
    tx.prepare_cached(
        "DELETE FROM cap_events WHERE tenant_id = ?1 AND recipient_id = ?2 AND category = ?3 \
         AND at_ms <= ?4",
    )
    .and_then(|mut q| q.execute(params![tenant, cap.recipient_id, cap.category, since]))
    .map_err(sql_err)?;
    let counted: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM cap_events WHERE tenant_id = ?1 AND recipient_id = ?2 \
             AND category = ?3",
        )
        .and_then(|mut q| q.query_row(key, |r| r.get(0)))
        .map_err(sql_err)?;
    if counted >= i64::from(cap.max) {
        return Ok(true);
    }
    tx.prepare_cached(
        "INSERT INTO cap_events (tenant_id, recipient_id, category, at_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut q| q.execute(params![tenant, cap.recipient_id, cap.category, at_ms]))
    .map_err(sql_err)?;
    Ok(false)
}

/// Takes or renews the relay lease (see `Outbox::relay_lease`): whether
/// `holder` has it now.
fn relay_lease(
    tx: &Transaction<'_>,
    holder: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    let changed = tx
        .prepare_cached(
            "INSERT INTO relay_lease (id, holder, until_ms) VALUES (1, ?1, ?2 + ?3) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE relay_lease.holder = excluded.holder OR relay_lease.until_ms < ?2",
        )
        .and_then(|mut s| s.execute(params![holder, now_ms, lease_ms]))
        .map_err(sql_err)?;
    Ok(changed == 1)
}

fn key_holder(
    tx: &Transaction<'_>,
    tenant_id: &str,
    key: &str,
) -> Result<IdempotencyRecord, StoreError> {
    let (request_hash, status, body): (Vec<u8>, i64, String) = tx
        .prepare_cached(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE tenant_id = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![tenant_id, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
        .map_err(sql_err)?;
    Ok(IdempotencyRecord {
        request_hash,
        response: StoredResponse {
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("status {status}").into()))?,
            body,
        },
    })
}

fn claim(tx: &Transaction<'_>, a: &Claim) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let token: i64 = rand::random();
    let mut take = tx
        .prepare_cached(
            "UPDATE deliveries SET state = 'sending', due_at_ms = ?1 + ?2, lease_token = ?3, \
                 attempts = attempts + 1, updated_at_ms = ?1, \
                 in_doubt = CASE WHEN state = 'sending' THEN 1 ELSE in_doubt END \
             WHERE rowid IN (SELECT rowid FROM deliveries \
                 WHERE channel = ?4 AND priority = ?5 \
                   AND state IN ('queued', 'retry_scheduled', 'sending') AND due_at_ms <= ?1 \
                   AND (state <> 'queued' OR updated_at_ms <= ?7) \
                 ORDER BY due_at_ms LIMIT ?6) \
             RETURNING id, notification_id, target, attempts, pinned_provider, calling, in_doubt",
        )
        .map_err(sql_err)?;
    let limit = i64::try_from(a.limit).unwrap_or(i64::MAX);
    let mut rows = take
        .query(params![
            a.now_ms,
            a.lease_ms,
            token,
            a.channel.as_str(),
            a.lane.index() as i64,
            limit,
            a.settled_before_ms
        ])
        .map_err(sql_err)?;
    let mut claimed = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        claimed.push(leased(
            row,
            token,
            a.now_ms + a.lease_ms,
            a.channel,
            a.lane,
        )?);
    }
    drop(rows);
    with_notifications(tx, claimed)
}

/// A row of a claim's `RETURNING id, notification_id, target, attempts,
/// pinned_provider, calling, in_doubt`, leased with `token` until
/// `until_ms`; its notification's fields are filled in by
/// `with_notifications`.
fn leased(
    row: &rusqlite::Row<'_>,
    token: i64,
    until_ms: i64,
    channel: Channel,
    priority: Priority,
) -> Result<ClaimedDelivery, StoreError> {
    let target: i64 = row.get(2).map_err(sql_err)?;
    let attempts: i64 = row.get(3).map_err(sql_err)?;
    Ok(ClaimedDelivery {
        id: row.get(0).map_err(sql_err)?,
        notification_id: row.get(1).map_err(sql_err)?,
        tenant_id: String::new(),
        channel,
        target: u32::try_from(target).unwrap_or(0),
        priority,
        attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
        lease_token: LeaseToken(token),
        lease_until_ms: until_ms,
        accepted_at_ms: 0,
        expires_at_ms: None,
        payload: String::new(),
        pinned_provider: row.get(4).map_err(sql_err)?,
        calling: row.get(5).map_err(sql_err)?,
        in_doubt: row.get::<_, i64>(6).map_err(sql_err)? != 0,
        traceparent: None,
    })
}

/// Moves these deliveries to `sending` under a new lease, each only if it
/// is waiting and due (queued, a retry come due, or a lease run out): the
/// idempotent consumer's step, so an event seen twice sends once.
fn claim_ids(
    tx: &Transaction<'_>,
    ids: &[uuid::Uuid],
    now_ms: i64,
    lease_ms: i64,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let token: i64 = rand::random();
    let mut take = tx
        .prepare_cached(
            "UPDATE deliveries SET state = 'sending', due_at_ms = ?1 + ?2, lease_token = ?3, \
                 attempts = attempts + 1, updated_at_ms = ?1, \
                 in_doubt = CASE WHEN state = 'sending' THEN 1 ELSE in_doubt END \
             WHERE id = ?4 AND state IN ('queued', 'retry_scheduled', 'sending') AND due_at_ms <= ?1 \
             RETURNING id, notification_id, target, attempts, pinned_provider, calling, in_doubt, \
                 channel, priority",
        )
        .map_err(sql_err)?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let mut rows = take
            .query(params![now_ms, lease_ms, token, id])
            .map_err(sql_err)?;
        if let Some(row) = rows.next().map_err(sql_err)? {
            let channel: String = row.get(7).map_err(sql_err)?;
            let channel = channel.parse().map_err(|_| {
                StoreError::Corrupt(format!("delivery {id}: channel {channel:?}").into())
            })?;
            let priority: i64 = row.get(8).map_err(sql_err)?;
            let priority = Priority::from_index(priority).ok_or_else(|| {
                StoreError::Corrupt(format!("delivery {id}: priority {priority}").into())
            })?;
            claimed.push(leased(row, token, now_ms + lease_ms, channel, priority)?);
        }
    }
    with_notifications(tx, claimed)
}

/// Fills in each claimed delivery's notification (tenant, payload, times).
fn with_notifications(
    tx: &Transaction<'_>,
    mut claimed: Vec<ClaimedDelivery>,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    // Each notification once, however many of its deliveries (push devices)
    // were claimed together.
    let mut notification = tx
        .prepare_cached(
            "SELECT tenant_id, payload, accepted_at_ms, expires_at_ms, traceparent \
             FROM notifications WHERE id = ?1",
        )
        .map_err(sql_err)?;
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::with_capacity(claimed.len());
    for i in 0..claimed.len() {
        let id = claimed[i].notification_id;
        if let Some(&first) = seen.get(&id) {
            let (tenant_id, payload) = (
                claimed[first].tenant_id.clone(),
                claimed[first].payload.clone(),
            );
            let (accepted, expires) = (claimed[first].accepted_at_ms, claimed[first].expires_at_ms);
            let traceparent = claimed[first].traceparent.clone();
            let c = &mut claimed[i];
            (
                c.tenant_id,
                c.payload,
                c.accepted_at_ms,
                c.expires_at_ms,
                c.traceparent,
            ) = (tenant_id, payload, accepted, expires, traceparent);
            continue;
        }
        let c = &mut claimed[i];
        (
            c.tenant_id,
            c.payload,
            c.accepted_at_ms,
            c.expires_at_ms,
            c.traceparent,
        ) = notification
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
            .map_err(sql_err)?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("delivery {} has no notification", c.id).into())
            })?;
        seen.insert(id, i);
    }
    Ok(claimed)
}

/// Records attempts and moves their deliveries on: a row in the attempt log
/// for every vendor call, and the delivery's next state.
fn record<'a>(
    tx: &Transaction<'_>,
    records: impl Iterator<Item = &'a AttemptRecord>,
) -> Result<(), StoreError> {
    let mut log = tx
        .prepare_cached(
            "INSERT INTO attempts \
             (delivery_id, attempt, provider, started_at_ms, latency_ms, outcome, status_code, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(sql_err)?;
    // Compare-and-set on the lease: a worker whose lease expired and was
    // taken over does not overwrite the newer holder's state. A deferred
    // attempt made no call, so it gives its attempt back. A receipt heard
    // before the send was recorded gives a sent delivery its state.
    let mut update = tx
        .prepare_cached(
            "UPDATE deliveries SET \
                 state = CASE WHEN ?3 = 'sent' AND receipt IS NOT NULL THEN receipt ELSE ?3 END, \
                 due_at_ms = ?4, lease_token = NULL, \
                 attempts = MAX(attempts - ?5, 0), \
                 provider = COALESCE(?6, provider), \
                 vendor_message_id = COALESCE(?7, vendor_message_id), last_error = ?8, \
                 sent_at_ms = COALESCE(?9, sent_at_ms), updated_at_ms = ?10, \
                 pinned_provider = COALESCE(pinned_provider, ?11), \
                 calling = NULL, in_doubt = 0 \
             WHERE id = ?1 AND lease_token = ?2 AND state = 'sending'",
        )
        .map_err(sql_err)?;
    for r in records {
        let o = RowChange::of(r)?;
        for c in &r.calls {
            log.execute(params![
                r.delivery_id,
                r.attempt,
                c.provider,
                c.started_at_ms,
                c.latency_ms,
                c.outcome,
                c.status_code,
                c.error
            ])
            .map_err(sql_err)?;
        }
        update
            .execute(params![
                r.delivery_id,
                r.lease_token.0,
                o.state,
                o.due_at_ms,
                o.uncount,
                r.provider(),
                o.vendor_id,
                r.error,
                o.sent_at_ms,
                r.ended_at_ms,
                r.pin
            ])
            .map_err(sql_err)?;
    }
    Ok(())
}

/// Waiting deliveries past their notification's expiry become `expired`
/// (a claim would find the same; this does not wait for one).
fn expire(tx: &Transaction<'_>, now_ms: i64) -> Result<u64, StoreError> {
    let done = tx
        .prepare_cached(
            "UPDATE deliveries SET state = 'expired', last_error = 'expired before it could be sent', \
                 updated_at_ms = ?1 \
             WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL \
               AND expires_at_ms <= ?1",
        )
        .and_then(|mut s| s.execute([now_ms]))
        .map_err(sql_err)?;
    Ok(done as u64)
}

/// Deletes finished notifications made before `before_ms`, oldest first,
/// with everything that hangs off them (see `Store::purge_finished`).
fn purge(tx: &Transaction<'_>, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    // Frequency-cap counts older than the longest window count for nothing.
    tx.prepare_cached("DELETE FROM cap_events WHERE at_ms < ?1")
        .and_then(|mut q| q.execute([crate::writes::cap_horizon_ms()]))
        .map_err(sql_err)?;
    let mut finished = tx
        .prepare_cached(
            "SELECT id, tenant_id, idempotency_key FROM notifications n \
             WHERE id < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d \
                 WHERE d.notification_id = n.id AND d.state IN ('queued', 'retry_scheduled', 'sending')) \
             ORDER BY id LIMIT ?2",
        )
        .map_err(sql_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let gone: Vec<(uuid::Uuid, String, Option<String>)> = finished
        .query_map(params![v7_floor(before_ms), limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .and_then(Iterator::collect)
        .map_err(sql_err)?;
    for (id, tenant_id, key) in &gone {
        for sql in [
            "DELETE FROM attempts WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE notification_id = ?1)",
            "DELETE FROM receipts WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE notification_id = ?1)",
            "DELETE FROM deliveries WHERE notification_id = ?1",
            "DELETE FROM notifications WHERE id = ?1",
        ] {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.execute([id]))
                .map_err(sql_err)?;
        }
        if let Some(key) = key {
            tx.prepare_cached("DELETE FROM idempotency_keys WHERE tenant_id = ?1 AND key = ?2")
                .and_then(|mut s| s.execute([tenant_id, key]))
                .map_err(sql_err)?;
        }
    }
    // Published events of the same age go too, and suppressions lifted
    // that long ago (every node's copy has long since followed the lift).
    for sql in [
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE published_at_ms IS NOT NULL AND created_at_ms < ?1 ORDER BY seq LIMIT ?2)",
        "DELETE FROM suppressions WHERE rowid IN (SELECT rowid FROM suppressions \
             WHERE lifted_at_ms < ?1 LIMIT ?2)",
    ] {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![before_ms, limit]))
            .map_err(sql_err)?;
    }
    Ok(gone.len() as u64)
}

/// Adds a suppression or gives the one there a new reason; `?8` is when
/// the change is made.
const SUPPRESS: &str = "INSERT INTO suppressions \
     (tenant_id, channel, address, reason, detail, source, created_at_ms, changed_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (tenant_id, channel, address) DO UPDATE SET reason = excluded.reason, \
         detail = excluded.detail, source = excluded.source, \
         created_at_ms = excluded.created_at_ms, changed_at_ms = excluded.changed_at_ms, \
         lifted_at_ms = NULL";

/// A receipt that outranks what the delivery has heard: kept, and the
/// delivery's state if it is past its send (before that, recording `sent`
/// takes it). `?1` the delivery, `?2` the kind, `?3` its rank, `?4` now.
const TAKE_RECEIPT: &str = "UPDATE deliveries SET receipt = ?2, receipt_rank = ?3, \
     state = CASE WHEN state IN ('sent', 'delivered', 'undelivered', 'bounced') THEN ?2 ELSE state END, \
     updated_at_ms = ?4 \
     WHERE id = ?1 AND receipt_rank < ?3";

/// Lifts a suppression in force at `?4`, a change made at `?5`.
const LIFT: &str = "UPDATE suppressions SET lifted_at_ms = ?4, changed_at_ms = ?5 \
     WHERE tenant_id = ?1 AND channel = ?2 AND address = ?3 AND lifted_at_ms IS NULL";

/// What puts dead deliveries back in the queue: due now, attempts reset, the
/// same id (so the same vendor key). `?1` is now; the caller adds which rows.
const REPLAY: &str = "UPDATE deliveries SET state = 'queued', due_at_ms = ?1, attempts = 0, \
                      lease_token = NULL, updated_at_ms = ?1 WHERE state = 'dead' AND ";

fn replay_one(
    tx: &Transaction<'_>,
    tenant_id: Option<&str>,
    id: uuid::Uuid,
) -> Result<ReplayOutcome, StoreError> {
    let state: Option<String> = tx
        .prepare_cached(
            "SELECT d.state FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             WHERE d.id = ?1 AND (?2 IS NULL OR n.tenant_id = ?2)",
        )
        .and_then(|mut s| s.query_row(params![id, tenant_id], |r| r.get(0)).optional())
        .map_err(sql_err)?;
    let Some(state) = state else {
        return Ok(ReplayOutcome::NotFound);
    };
    let state: DeliveryState = state
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("delivery {id} has state {state:?}").into()))?;
    if state != DeliveryState::Dead {
        return Ok(ReplayOutcome::NotDead(state));
    }
    tx.prepare_cached(&format!("{REPLAY} id = ?2"))
        .and_then(|mut s| s.execute(params![herald_core::now_ms(), id]))
        .map_err(sql_err)?;
    Ok(ReplayOutcome::Replayed)
}

fn replay_many(
    tx: &Transaction<'_>,
    f: &DeadLetterFilter,
    limit: usize,
) -> Result<u64, StoreError> {
    // An absent filter field is NULL and matches everything.
    let done = tx
        .prepare_cached(&format!(
            "{REPLAY} rowid IN (SELECT d.rowid FROM deliveries d \
                 JOIN notifications n ON n.id = d.notification_id WHERE d.state = 'dead' \
                 AND (?2 IS NULL OR n.tenant_id = ?2) AND (?3 IS NULL OR d.channel = ?3) \
                 AND (?4 IS NULL OR d.provider = ?4) AND (?5 IS NULL OR d.updated_at_ms >= ?5) \
                 AND (?6 IS NULL OR d.updated_at_ms < ?6) \
                 ORDER BY d.updated_at_ms, d.id LIMIT ?7)"
        ))
        .and_then(|mut s| {
            s.execute(params![
                herald_core::now_ms(),
                f.tenant_id,
                f.channel.map(|c| c.as_str()),
                f.provider,
                f.since_ms,
                f.until_ms,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])
        })
        .map_err(sql_err)?;
    Ok(done as u64)
}

fn release(
    tx: &Transaction<'_>,
    leases: &[(uuid::Uuid, LeaseToken)],
    started: bool,
) -> Result<(), StoreError> {
    let now = herald_core::now_ms();
    let mut give_back = tx
        .prepare_cached(
            "UPDATE deliveries SET state = 'queued', due_at_ms = ?1, lease_token = NULL, \
                 attempts = MAX(attempts - 1, 0), updated_at_ms = ?1, in_doubt = (in_doubt OR ?4) \
             WHERE id = ?2 AND lease_token = ?3 AND state = 'sending'",
        )
        .map_err(sql_err)?;
    for (id, token) in leases {
        give_back
            .execute(params![now, id, token.0, started])
            .map_err(sql_err)?;
    }
    Ok(())
}

fn add_key(tx: &Transaction<'_>, a: &ops::AddKey) -> Result<String, StoreError> {
    let now = herald_core::now_ms();
    tx.execute(
        "INSERT INTO tenants (id, name, created_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![uuid::Uuid::now_v7().to_string(), a.tenant_name, now],
    )
    .map_err(sql_err)?;
    let tenant_id: String = tx
        .query_row(
            "SELECT id FROM tenants WHERE name = ?1",
            [&a.tenant_name],
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    tx.execute(
        "INSERT INTO api_keys (key_hash, tenant_id, label, created_at_ms, scopes) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (key_hash) DO NOTHING",
        params![a.key_hash, tenant_id, a.label, now, a.scopes.to_string()],
    )
    .map_err(sql_err)?;
    Ok(tenant_id)
}
