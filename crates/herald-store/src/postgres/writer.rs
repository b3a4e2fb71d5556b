//! PostgreSQL's group-commit writers. Each takes whatever has queued up (up
//! to `max_batch` operations) and applies it in one transaction; several
//! run at once, each on its own connection. Rows go in and out as arrays
//! (`UNNEST`), so a batch is a handful of statements however many rows it
//! holds. If an operation breaks the batch, it is rolled back and each
//! operation replayed in its own transaction, so only the failing one
//! fails; if the database fails (down, unreachable, too slow, read-only),
//! every operation fails at once, and until a write succeeds again one
//! batch is tried every so often and the others fail without waiting
//! (`WriteHealth`). A transaction is bounded by the store's timeout; a
//! connection that did not answer in time is closed, not returned to the
//! pool.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_core::model::DeliveryState;
use herald_core::store::ReceiptApplied;
use herald_core::store::{
    AttemptRecord, Cause, Claim, ClaimedDelivery, CreateResult, DeadLetterFilter,
    IdempotencyRecord, LeaseToken, NewNotification, ReplayOutcome, StoreError, StoredResponse,
};
use sqlx::{Acquire, PgConnection, PgPool, Row};
use tokio::sync::Mutex;

use crate::ops::{self, Op};
use crate::rows::{db_err, Columns};
use crate::writes::{
    committed, v7_floor, Backend, Inbox, OutboxRow, Pending, RowChange, Runs, Settled, WriteHealth,
};

/// What every operation may need besides its own data.
pub struct Ctx {
    /// Creates also write their notifications' events to the outbox.
    pub outbox: bool,
}

/// An operation PostgreSQL applies inside a writer's transaction.
pub trait PgOp: Op {
    fn apply(
        &self,
        tx: &mut PgConnection,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
    /// Attempt records: every record of a batch goes in one statement,
    /// before the batch's other writes (`ops::Record`).
    fn records(&self) -> &[AttemptRecord] {
        &[]
    }
    /// Notifications to create: every create of a batch goes in one set
    /// of statements, after the records and before the other writes
    /// (`ops::Create`).
    fn creates(&self) -> &[NewNotification] {
        &[]
    }
    /// A claim of due work: a batch's claims (of different channels and
    /// lanes) go in one statement, after its creates (`ops::ClaimDue`).
    fn claim(&self) -> Option<&Claim> {
        None
    }
    /// Its share of what the batch's merged statements gave, instead of
    /// `apply` (`job`: its place in the batch); `None` if it had none.
    fn share(&self, _: &mut Shares, _job: usize) -> Option<Self::Output> {
        None
    }
}

/// What a batch's merged statements gave, for each job to take its share.
pub struct Shares {
    /// The creates' results, in the batch's order.
    created: std::vec::IntoIter<CreateResult>,
    /// Each claim's deliveries, by its job's place in the batch (`None`
    /// for a job whose claim was not merged: it claims alone).
    claimed: Vec<Option<Vec<ClaimedDelivery>>>,
}

type Applying<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// A queued operation with its type erased, as a writer handles it.
pub trait Job: Send + Sync {
    fn records(&self) -> &[AttemptRecord];
    fn creates(&self) -> &[NewNotification];
    fn claim(&self) -> Option<&Claim>;
    /// Takes its share of `shares` (`job`: its place in the batch), or
    /// applies its own statements.
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        ctx: &'a Ctx,
        shares: &'a mut Shares,
        job: usize,
    ) -> Applying<'a>;
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

impl<O: PgOp> Job for Pending<O> {
    fn records(&self) -> &[AttemptRecord] {
        self.op.records()
    }

    fn creates(&self) -> &[NewNotification] {
        self.op.creates()
    }

    fn claim(&self) -> Option<&Claim> {
        self.op.claim()
    }

    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        ctx: &'a Ctx,
        shares: &'a mut Shares,
        job: usize,
    ) -> Applying<'a> {
        Box::pin(async move {
            let out = match self.op.share(shares, job) {
                Some(out) => out,
                None => self.op.apply(tx, ctx).await?,
            };
            self.applied(out);
            Ok(())
        })
    }

    fn answer(self: Box<Self>, committed: Result<(), StoreError>) {
        (*self).answer(committed)
    }
}

impl Backend for super::Postgres {
    type Job = Box<dyn Job>;
}

impl<O: PgOp> Runs<O> for super::Postgres {
    fn job(pending: Pending<O>) -> Box<dyn Job> {
        Box::new(pending)
    }
}

type Queue = Arc<Mutex<Inbox<Box<dyn Job>>>>;

/// How many of the writers' transactions are being applied now (a writer
/// that finished one says so), and how many operations the last batch
/// taken held.
#[derive(Default)]
pub(super) struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
    last_batch: std::sync::atomic::AtomicUsize,
}

/// A batch this big says the writers are under load: the next one
/// gathers.
const UNDER_LOAD: usize = 4;

/// How often a writer waiting to start its transaction looks for more work.
const TOP_UP_EVERY: Duration = Duration::from_millis(1);

/// How a writer works: its pool, what it takes and how long it may take.
pub(super) struct Writer {
    pub pool: PgPool,
    pub queue: Queue,
    pub max_batch: usize,
    pub ctx: Ctx,
    pub health: Arc<WriteHealth>,
    /// The longest one transaction may take.
    pub timeout: Duration,
    /// The longest a batch's first operation waits for company
    /// (`store.gather_ms`).
    pub gather: Duration,
    /// Shared by the writers: transactions in progress.
    pub in_flight: Arc<InFlight>,
}

impl InFlight {
    /// One more transaction in progress, until the guard is dropped.
    fn enter(&self) -> InProgress<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        InProgress(self)
    }
}

/// A transaction in progress; dropped, it says so to a writer gathering.
struct InProgress<'a>(&'a InFlight);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

impl Writer {
    /// Takes the next batch into `batch`; 0 once the queue is closed.
    ///
    /// One writer takes a batch while the others apply theirs. Under load
    /// (this batch or the last one holds a few operations already), a
    /// batch that is not full is held open, for `gather` at most, as long
    /// as more keeps coming (each millisecond brings some) or another
    /// transaction is in progress: a transaction's cost on the database is
    /// mostly per transaction and per statement, not per row
    /// (docs/benchmarks.md, issue 18), so one transaction carries what
    /// several would have. Under light load a write goes at once, and full
    /// batches always go, in parallel.
    async fn take(&self, batch: &mut Vec<Box<dyn Job>>) -> usize {
        let mut queue = self.queue.lock().await;
        let mut taken = queue.recv_many(batch, self.max_batch).await;
        let busy =
            taken >= UNDER_LOAD || self.in_flight.last_batch.load(Ordering::Acquire) >= UNDER_LOAD;
        let gather_until = tokio::time::Instant::now() + self.gather;
        while busy
            && taken > 0
            && taken < self.max_batch
            && tokio::time::Instant::now() < gather_until
        {
            let others = self.in_flight.count.load(Ordering::Acquire) > 0;
            tokio::select! {
                _ = self.in_flight.done.notified() => {}
                _ = tokio::time::sleep(TOP_UP_EVERY) => {}
            }
            let before = taken;
            taken = queue.top_up(batch, self.max_batch);
            if taken == before && !others {
                break;
            }
        }
        self.in_flight.last_batch.store(taken, Ordering::Release);
        taken
    }

    pub(super) async fn run(self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let taken = self.take(&mut batch).await;
            if taken == 0 {
                break;
            }
            let _applying = self.in_flight.enter();
            let started = std::time::Instant::now();
            let mut jobs: Vec<Box<dyn Job>> = std::mem::take(&mut batch);
            let n = jobs.len();
            if let Some(e) = self.health.refuses() {
                jobs.into_iter().for_each(|j| j.answer(Err(e.clone())));
                committed(n, started);
                continue;
            }
            let applied = self.apply(&mut jobs).await;
            match self.health.settle(applied, n) {
                Settled::Committed => jobs.into_iter().for_each(|j| j.answer(Ok(()))),
                Settled::Failed(e) => jobs.into_iter().for_each(|j| j.answer(Err(e.clone()))),
                Settled::ReplayEach(e) => {
                    tracing::warn!(error = %e, ops = n, "group commit failed; replaying each operation alone");
                    for mut job in jobs {
                        let alone = self.apply(std::slice::from_mut(&mut job)).await;
                        job.answer(alone);
                    }
                }
            }
            committed(n, started);
        }
        tracing::debug!("store writer stopped");
    }

    /// Applies every job in one transaction, all or nothing, within the
    /// timeout (the pool bounds the wait for a connection).
    async fn apply(&self, jobs: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        match tokio::time::timeout(self.timeout, apply(&mut conn, jobs, &self.ctx)).await {
            Ok(done) => done,
            Err(_) => Err(super::cut_off(&mut conn, self.timeout)),
        }
    }
}

/// Applies every job in one transaction, all or nothing: every attempt
/// record in one statement first (`ops::Record`), then every notification
/// created in one set of statements (`ops::Create`), then every claim in
/// one statement (`ops::ClaimDue`), then each other job in order. The
/// database's cost is per statement more than per row (docs/benchmarks.md,
/// issue 18): with one notification per request, creates applied one by
/// one cost three statements each.
async fn apply(
    conn: &mut PgConnection,
    jobs: &mut [Box<dyn Job>],
    ctx: &Ctx,
) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    record(&mut tx, jobs.iter().flat_map(|j| j.records())).await?;
    let batch: Vec<&NewNotification> = jobs.iter().flat_map(|j| j.creates()).collect();
    let created = create(&mut tx, &batch, ctx.outbox).await?.into_iter();
    let claimed = claim_each(&mut tx, jobs).await?;
    let mut shares = Shares { created, claimed };
    for (i, job) in jobs.iter_mut().enumerate() {
        job.apply(&mut tx, ctx, &mut shares, i).await?;
    }
    tx.commit().await.map_err(db_err)
}

impl PgOp for ops::Create {
    fn creates(&self) -> &[NewNotification] {
        &self.0
    }

    fn share(&self, shares: &mut Shares, _: usize) -> Option<Vec<CreateResult>> {
        Some(shares.created.by_ref().take(self.0.len()).collect())
    }

    /// Alone (the writer applies a batch's creates together instead).
    async fn apply(
        &self,
        tx: &mut PgConnection,
        ctx: &Ctx,
    ) -> Result<Vec<CreateResult>, StoreError> {
        let batch: Vec<&NewNotification> = self.0.iter().collect();
        create(tx, &batch, ctx.outbox).await
    }
}

impl PgOp for ops::ClaimDue {
    fn claim(&self) -> Option<&Claim> {
        Some(&self.0)
    }

    fn share(&self, shares: &mut Shares, job: usize) -> Option<Vec<ClaimedDelivery>> {
        shares.claimed.get_mut(job)?.take()
    }

    /// Alone (the writer merges a batch's claims of different lanes).
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        claim(tx, &self.0).await
    }
}

impl PgOp for ops::ClaimIds {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        claim_ids(tx, &self.ids, self.now_ms, self.lease_ms).await
    }
}

impl PgOp for ops::Record {
    fn records(&self) -> &[AttemptRecord] {
        &self.0
    }

    async fn apply(&self, _: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        Ok(()) // applied with the batch's other records, first
    }
}

impl PgOp for ops::Release {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        release(tx, &self.leases, self.started).await
    }
}

impl PgOp for ops::NoteCall {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deliveries SET calling = $1 \
             WHERE id = $2 AND lease_token = $3 AND state = 'sending'",
        )
        .bind(&self.provider)
        .bind(self.id)
        .bind(self.lease_token.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

impl PgOp for ops::Suppress {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<bool, StoreError> {
        let s = &self.0;
        let before = sqlx::query(
            "SELECT lifted_at_ms FROM suppressions \
             WHERE tenant_id = $1 AND channel = $2 AND address = $3 FOR UPDATE",
        )
        .bind(&s.tenant_id)
        .bind(s.channel.as_str())
        .bind(&s.address)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let was_in_force = match before {
            Some(row) => row.opt_int("lifted_at_ms")?.is_none(),
            None => false,
        };
        sqlx::query(
            "INSERT INTO suppressions \
                 (tenant_id, channel, address, reason, detail, source, created_at_ms, changed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, channel, address) DO UPDATE SET reason = excluded.reason, \
                 detail = excluded.detail, source = excluded.source, \
                 created_at_ms = excluded.created_at_ms, changed_at_ms = excluded.changed_at_ms, \
                 lifted_at_ms = NULL",
        )
        .bind(&s.tenant_id)
        .bind(s.channel.as_str())
        .bind(&s.address)
        .bind(s.reason.as_str())
        .bind(&s.detail)
        .bind(&s.source)
        .bind(s.created_at_ms)
        .bind(herald_core::now_ms().max(s.created_at_ms))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(!was_in_force)
    }
}

impl PgOp for ops::Lift {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE suppressions SET lifted_at_ms = $4, changed_at_ms = $5 \
             WHERE tenant_id = $1 AND channel = $2 AND address = $3 AND lifted_at_ms IS NULL",
        )
        .bind(&self.tenant_id)
        .bind(self.channel.as_str())
        .bind(&self.address)
        .bind(self.now_ms)
        .bind(herald_core::now_ms().max(self.now_ms))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }
}

impl PgOp for ops::ApplyReceipts {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<Vec<ReceiptApplied>, StoreError> {
        let mut out = Vec::with_capacity(self.receipts.len());
        for r in &self.receipts {
            let found = sqlx::query(
                "SELECT n.tenant_id, d.channel, d.notification_id FROM deliveries d \
                 JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1",
            )
            .bind(r.delivery_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(row) = found else {
                out.push(ReceiptApplied::Unknown);
                continue;
            };
            let mut changed = false;
            if let Some(kind) = r.kind {
                sqlx::query(
                    "INSERT INTO receipts (delivery_id, provider, kind, at_ms, reason, received_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(r.delivery_id)
                .bind(&self.provider)
                .bind(kind.as_str())
                .bind(r.at_ms)
                .bind(&r.reason)
                .bind(self.now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                // Kept if it outranks what the delivery has heard; the
                // delivery's state too if it is past its send (before that,
                // recording `sent` takes it).
                let taken = sqlx::query(
                    "UPDATE deliveries SET receipt = $2, receipt_rank = $3, \
                         state = CASE WHEN state IN ('sent', 'delivered', 'undelivered', 'bounced') \
                                 THEN $2 ELSE state END, \
                         updated_at_ms = $4 \
                     WHERE id = $1 AND receipt_rank < $3",
                )
                .bind(r.delivery_id)
                .bind(kind.as_str())
                .bind(i64::from(kind.rank()))
                .bind(self.now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                changed = taken.rows_affected() > 0;
            }
            out.push(ReceiptApplied::Found {
                tenant_id: row.text("tenant_id")?,
                notification_id: row.uuid("notification_id")?,
                channel: row.parsed("channel")?,
                changed,
            });
        }
        Ok(out)
    }
}

impl PgOp for ops::SetCallback {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        let (url, events) = match &self.callback {
            Some(c) => (
                Some(c.url.clone()),
                Some(crate::writes::callback_events_text(&c.events)),
            ),
            None => (None, None),
        };
        sqlx::query("UPDATE tenants SET callback_url = $2, callback_events = $3 WHERE id = $1")
            .bind(&self.tenant_id)
            .bind(url)
            .bind(events)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl PgOp for ops::HoldCircuit {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<bool, StoreError> {
        let existed = sqlx::query("DELETE FROM circuit_holds WHERE provider = $1")
            .bind(&self.provider)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
            > 0;
        if let Some(h) = &self.hold {
            sqlx::query(
                "INSERT INTO circuit_holds (provider, held_by, reason, since_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&h.provider)
            .bind(&h.by)
            .bind(&h.reason)
            .bind(h.since_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        Ok(existed)
    }
}

impl PgOp for ops::PutRecipient {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<herald_core::store::PutRecipient, StoreError> {
        let profile = crate::writes::profile_json(&self.profile)?;
        let sql = match self.if_version {
            None => {
                "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
                 VALUES ($1, $2, $3, 1, $4) \
                 ON CONFLICT (tenant_id, id) DO UPDATE SET profile = excluded.profile, \
                     version = recipients.version + 1, updated_at_ms = excluded.updated_at_ms \
                 RETURNING version"
            }
            Some(0) => {
                "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
                 VALUES ($1, $2, $3, 1, $4) ON CONFLICT (tenant_id, id) DO NOTHING \
                 RETURNING version"
            }
            Some(_) => {
                "UPDATE recipients SET profile = $3, version = version + 1, updated_at_ms = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND version = $5 RETURNING version"
            }
        };
        let version: Option<i64> = sqlx::query_scalar(sql)
            .bind(&self.tenant_id)
            .bind(&self.id)
            .bind(profile)
            .bind(self.now_ms)
            .bind(self.if_version.unwrap_or(0))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(match version {
            Some(version) => herald_core::store::PutRecipient::Written {
                version,
                created: version == 1,
            },
            None => herald_core::store::PutRecipient::Conflict,
        })
    }
}

impl PgOp for ops::Cancel {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<Option<Vec<herald_core::store::CancelledDelivery>>, StoreError> {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM notifications WHERE id = $1")
                .bind(self.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if owner.as_deref() != Some(self.tenant_id.as_str()) {
            return Ok(None);
        }
        // Row locks order this against a claim (FOR UPDATE SKIP LOCKED):
        // whichever comes second sees the other's state.
        let cancelled: Vec<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE deliveries SET state = 'cancelled', \
                 last_error = 'cancelled before it was sent', lease_token = NULL, \
                 updated_at_ms = $2 \
             WHERE notification_id = $1 AND state IN ('queued', 'retry_scheduled') RETURNING id",
        )
        .bind(self.id)
        .bind(self.now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let rows: Vec<(uuid::Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT id, channel, target, state FROM deliveries \
             WHERE notification_id = $1 ORDER BY channel, target",
        )
        .bind(self.id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(id, channel, target, state)| {
                crate::writes::cancelled_delivery(id, &channel, target, &state, &cancelled)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl PgOp for ops::PutRecipients {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<usize, StoreError> {
        let ids: Vec<&str> = self.batch.iter().map(|(id, _)| id.as_str()).collect();
        let profiles = self
            .batch
            .iter()
            .map(|(_, p)| crate::writes::profile_json(p))
            .collect::<Result<Vec<String>, _>>()?;
        // One statement for the batch (ids are unique in it, as ON
        // CONFLICT DO UPDATE needs).
        sqlx::query(
            "INSERT INTO recipients (tenant_id, id, profile, version, updated_at_ms) \
             SELECT $1, r.id, r.profile, 1, $4 FROM UNNEST($2::text[], $3::text[]) AS r(id, profile) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET profile = excluded.profile, \
                 version = recipients.version + 1, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&self.tenant_id)
        .bind(&ids)
        .bind(&profiles)
        .bind(self.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(self.batch.len())
    }
}

impl PgOp for ops::SetPreferences {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<Option<i64>, StoreError> {
        let prefs = crate::writes::to_json(&self.preferences, "preferences")?;
        sqlx::query_scalar(
            "UPDATE recipients SET preferences = $3, version = version + 1, updated_at_ms = $4 \
             WHERE tenant_id = $1 AND id = $2 AND ($5::int8 IS NULL OR version = $5) \
             RETURNING version",
        )
        .bind(&self.tenant_id)
        .bind(&self.id)
        .bind(prefs)
        .bind(self.now_ms)
        .bind(self.if_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)
    }
}

impl PgOp for ops::SetTenantPreferences {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        let prefs = crate::writes::to_json(&self.preferences, "preferences")?;
        sqlx::query("UPDATE tenants SET preferences = $2 WHERE id = $1")
            .bind(&self.tenant_id)
            .bind(prefs)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl PgOp for ops::DeleteRecipient {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Ctx,
    ) -> Result<Option<herald_core::recipient::StoredRecipient>, StoreError> {
        // What the frequency caps counted of them goes with them.
        sqlx::query("DELETE FROM cap_events WHERE tenant_id = $1 AND recipient_id = $2")
            .bind(&self.tenant_id)
            .bind(&self.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let row: Option<(String, String, Option<String>, i64, i64)> = sqlx::query_as(
            "DELETE FROM recipients WHERE tenant_id = $1 AND id = $2 \
             RETURNING id, profile, preferences, version, updated_at_ms",
        )
        .bind(&self.tenant_id)
        .bind(&self.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        row.map(|(id, profile, prefs, version, updated_at_ms)| {
            crate::writes::stored_recipient(id, &profile, prefs.as_deref(), version, updated_at_ms)
        })
        .transpose()
    }
}

impl PgOp for ops::AddKey {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<String, StoreError> {
        add_key(tx, self).await
    }
}

impl PgOp for ops::ReplayOne {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<ReplayOutcome, StoreError> {
        replay_one(tx, self.tenant_id.as_deref(), self.id).await
    }
}

impl PgOp for ops::ReplayMany {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<u64, StoreError> {
        replay_many(tx, &self.filter, self.limit).await
    }
}

impl PgOp for ops::Expire {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<u64, StoreError> {
        expire(tx, self.now_ms).await
    }
}

impl PgOp for ops::Purge {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<u64, StoreError> {
        purge(tx, self.before_ms, self.limit).await
    }
}

impl PgOp for ops::RelayLease {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<bool, StoreError> {
        // RETURNING gives a row only if this holder has the lease now.
        let held = sqlx::query(
            "INSERT INTO relay_lease (id, holder, until_ms) VALUES (1, $1, $2 + $3) \
             ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms \
             WHERE relay_lease.holder = EXCLUDED.holder OR relay_lease.until_ms < $2 \
             RETURNING holder",
        )
        .bind(&self.holder)
        .bind(self.now_ms)
        .bind(self.lease_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(held.is_some())
    }
}

impl PgOp for ops::OutboxPublished {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET published_at_ms = $1 WHERE seq = ANY($2)")
            .bind(herald_core::now_ms())
            .bind(&self.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl PgOp for ops::Probe {
    async fn apply(&self, tx: &mut PgConnection, _: &Ctx) -> Result<(), StoreError> {
        // A few pages of random bytes (TOAST would squeeze zeros).
        let pad: Vec<u8> = (0..16 * 1024).map(|_| rand::random::<u8>()).collect();
        sqlx::query(
            "INSERT INTO health_probe (id, at_ms, pad) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET at_ms = EXCLUDED.at_ms, pad = EXCLUDED.pad",
        )
        .bind(herald_core::now_ms())
        .bind(pad)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

async fn create(
    tx: &mut PgConnection,
    batch: &[&NewNotification],
    outbox: bool,
) -> Result<Vec<CreateResult>, StoreError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let taken = take_keys(tx, batch).await?;
    lock_caps(tx, batch, &taken).await?;
    let mut results = Vec::with_capacity(batch.len());
    let mut n_cols = NotificationColumns::default();
    let mut d_cols = DeliveryColumns::default();
    let mut events = OutboxColumns::default();
    for (n, taken) in batch.iter().zip(taken) {
        if let Some(holder) = taken {
            results.push(CreateResult::KeyTaken(holder));
            continue;
        }
        if outbox {
            events.push(n)?;
        }
        n_cols.push(n)?;
        let capped = match &n.cap {
            Some(cap) => cap_reached(tx, &n.tenant_id, cap, n.accepted_at_ms)
                .await?
                .then(|| cap.reason()),
            None => None,
        };
        for d in &n.deliveries {
            d_cols.push(n, d, capped.as_deref());
        }
        results.push(CreateResult::Created);
    }
    if n_cols.id.is_empty() {
        return Ok(results);
    }
    // One statement for the notifications, their deliveries and their
    // events (arrays left empty insert nothing).
    sqlx::query(
        "WITH n AS ( \
             INSERT INTO notifications (id, tenant_id, priority, payload, accepted_at_ms, expires_at_ms, idempotency_key, traceparent) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::text[])), \
         o AS ( \
             INSERT INTO outbox (notification_id, lane, key, tenant_id, correlation_id, traceparent, payload, created_at_ms) \
             SELECT * FROM UNNEST($19::uuid[], $20::int8[], $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], $26::int8[])) \
         INSERT INTO deliveries (id, notification_id, channel, target, priority, state, due_at_ms, updated_at_ms, expires_at_ms, last_error, lease_token, attempts) \
         SELECT id, nid, ch, tg, pr, st, due, upd, exp, err, tok, att \
         FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::int8[], $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::text[], $27::int8[], $28::int8[]) \
             AS v(id, nid, ch, tg, pr, due, upd, exp, st, err, tok, att)",
    )
    .bind(&n_cols.id)
    .bind(&n_cols.tenant_id)
    .bind(&n_cols.priority)
    .bind(&n_cols.payload)
    .bind(&n_cols.accepted_at_ms)
    .bind(&n_cols.expires_at_ms)
    .bind(&n_cols.idempotency_key)
    .bind(&n_cols.traceparent)
    .bind(&d_cols.id)
    .bind(&d_cols.notification_id)
    .bind(&d_cols.channel)
    .bind(&d_cols.target)
    .bind(&d_cols.priority)
    .bind(&d_cols.due_at_ms)
    .bind(&d_cols.accepted_at_ms)
    .bind(&d_cols.expires_at_ms)
    .bind(&d_cols.state)
    .bind(&d_cols.last_error)
    .bind(&events.id)
    .bind(&events.lane)
    .bind(&events.key)
    .bind(&events.tenant_id)
    .bind(&events.correlation_id)
    .bind(&events.traceparent)
    .bind(&events.payload)
    .bind(&events.created_at_ms)
    .bind(&d_cols.lease_token)
    .bind(&d_cols.attempts)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(results)
}

/// Takes, in one order for every writer (so two cannot deadlock), the
/// transaction-scoped advisory lock of each frequency-cap key the batch
/// counts against: the count and the insert of one key are then one step
/// across every node.
async fn lock_caps(
    tx: &mut PgConnection,
    batch: &[&NewNotification],
    taken: &[Option<IdempotencyRecord>],
) -> Result<(), StoreError> {
    let mut keys: Vec<String> = batch
        .iter()
        .zip(taken)
        .filter(|(_, t)| t.is_none())
        .filter_map(|(n, _)| {
            let c = n.cap.as_ref()?;
            Some(format!(
                "{}\u{1f}{}\u{1f}{}",
                n.tenant_id, c.recipient_id, c.category
            ))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Counts a notification against its frequency cap (its key locked):
/// whether the key has `max` within the window already.
async fn cap_reached(
    tx: &mut PgConnection,
    tenant: &str,
    cap: &herald_core::store::CapCheck,
    at_ms: i64,
) -> Result<bool, StoreError> {
    sqlx::query(
        "DELETE FROM cap_events WHERE tenant_id = $1 AND recipient_id = $2 AND category = $3 \
         AND at_ms <= $4",
    )
    .bind(tenant)
    .bind(&cap.recipient_id)
    .bind(&cap.category)
    .bind(at_ms - cap.window_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let counted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cap_events WHERE tenant_id = $1 AND recipient_id = $2 \
         AND category = $3",
    )
    .bind(tenant)
    .bind(&cap.recipient_id)
    .bind(&cap.category)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    if counted >= i64::from(cap.max) {
        return Ok(true);
    }
    sqlx::query(
        "INSERT INTO cap_events (tenant_id, recipient_id, category, at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(&cap.recipient_id)
    .bind(&cap.category)
    .bind(at_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(false)
}

/// A batch's outbox rows as column arrays.
#[derive(Default)]
struct OutboxColumns {
    id: Vec<uuid::Uuid>,
    lane: Vec<i64>,
    key: Vec<String>,
    tenant_id: Vec<String>,
    correlation_id: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
    payload: Vec<String>,
    created_at_ms: Vec<i64>,
}

impl OutboxColumns {
    fn push(&mut self, n: &NewNotification) -> Result<(), StoreError> {
        let row = OutboxRow::of(n)?;
        self.id.push(n.id);
        self.lane.push(row.lane);
        self.key.push(row.key);
        self.tenant_id.push(n.tenant_id.clone());
        self.correlation_id.push(n.correlation_id.clone());
        self.traceparent.push(n.traceparent.clone());
        self.payload.push(row.payload);
        self.created_at_ms.push(n.accepted_at_ms);
        Ok(())
    }
}

/// A batch of notifications as column arrays, for one `UNNEST` insert.
#[derive(Default)]
struct NotificationColumns {
    id: Vec<uuid::Uuid>,
    tenant_id: Vec<String>,
    priority: Vec<i64>,
    payload: Vec<String>,
    accepted_at_ms: Vec<i64>,
    expires_at_ms: Vec<Option<i64>>,
    idempotency_key: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
}

impl NotificationColumns {
    fn push(&mut self, n: &NewNotification) -> Result<(), StoreError> {
        self.id.push(n.id);
        self.tenant_id.push(n.tenant_id.clone());
        self.priority.push(n.request.priority.index() as i64);
        self.payload.push(
            serde_json::to_string(&n.request)
                .map_err(|e| StoreError::Corrupt(Cause::new("request does not serialize", e)))?,
        );
        self.accepted_at_ms.push(n.accepted_at_ms);
        self.expires_at_ms.push(n.expires_at_ms);
        self.idempotency_key
            .push(n.idempotency.as_ref().map(|(key, _)| key.clone()));
        self.traceparent.push(n.traceparent.clone());
        Ok(())
    }
}

#[derive(Default)]
struct DeliveryColumns {
    id: Vec<uuid::Uuid>,
    notification_id: Vec<uuid::Uuid>,
    channel: Vec<&'static str>,
    target: Vec<i64>,
    priority: Vec<i64>,
    due_at_ms: Vec<i64>,
    accepted_at_ms: Vec<i64>,
    expires_at_ms: Vec<Option<i64>>,
    state: Vec<&'static str>,
    last_error: Vec<Option<String>>,
    lease_token: Vec<Option<i64>>,
    attempts: Vec<i64>,
}

impl DeliveryColumns {
    /// `capped`: the frequency cap's reason, when it suppresses the
    /// deliveries not already ended.
    fn push(
        &mut self,
        n: &NewNotification,
        d: &herald_core::store::NewDelivery,
        capped: Option<&str>,
    ) {
        self.id.push(d.id);
        self.notification_id.push(n.id);
        self.channel.push(d.channel.as_str());
        self.target.push(i64::from(d.target));
        self.priority.push(n.request.priority.index() as i64);
        self.accepted_at_ms.push(n.accepted_at_ms);
        self.expires_at_ms.push(n.expires_at_ms);
        let row = d.made(n.due_at_ms, capped);
        self.state.push(row.state.as_str());
        self.last_error.push(row.reason.map(str::to_owned));
        self.due_at_ms.push(row.due_at_ms);
        self.lease_token.push(row.lease.map(|l| l.token.0));
        self.attempts.push(i64::from(row.attempts()));
    }
}

/// Takes the idempotency keys of `batch` with one insert. For each
/// notification: `None` if it took its key (or has none), or the record of
/// the request that holds it (stored earlier, by another node now, or
/// earlier in this batch). A key another transaction is inserting at this
/// moment makes this insert wait for that one's outcome.
async fn take_keys(
    tx: &mut PgConnection,
    batch: &[&NewNotification],
) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
    let mut out: Vec<Option<IdempotencyRecord>> = vec![None; batch.len()];
    let mut seen = HashSet::new();
    let mut fresh = Vec::new();
    let mut held = Vec::new();
    for (i, n) in batch.iter().enumerate() {
        if let Some((key, _)) = &n.idempotency {
            if seen.insert((n.tenant_id.as_str(), key.as_str())) {
                fresh.push(i);
            } else {
                held.push(i);
            }
        }
    }
    if !fresh.is_empty() {
        let (mut tenant, mut key, mut hash, mut status, mut body, mut at) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for &i in &fresh {
            let n = &batch[i];
            if let Some((k, rec)) = &n.idempotency {
                tenant.push(n.tenant_id.as_str());
                key.push(k.as_str());
                hash.push(rec.request_hash.as_slice());
                status.push(i64::from(rec.response.status));
                body.push(rec.response.body.as_str());
                at.push(n.accepted_at_ms);
            }
        }
        let inserted: HashSet<(String, String)> = sqlx::query(
            "INSERT INTO idempotency_keys \
             (tenant_id, key, request_hash, response_status, response_body, created_at_ms) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::int8[], $5::text[], $6::int8[]) \
             ON CONFLICT DO NOTHING RETURNING tenant_id, key",
        )
        .bind(&tenant)
        .bind(&key)
        .bind(&hash)
        .bind(&status)
        .bind(&body)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| Ok((r.text("tenant_id")?, r.text("key")?)))
        .collect::<Result<_, StoreError>>()?;
        for i in fresh {
            let n = &batch[i];
            if let Some((k, _)) = &n.idempotency {
                if !inserted.contains(&(n.tenant_id.clone(), k.clone())) {
                    held.push(i);
                }
            }
        }
    }
    // Rare: replays and conflicts. One lookup each.
    for i in held {
        let n = &batch[i];
        let Some((key, _)) = &n.idempotency else {
            continue;
        };
        let row = sqlx::query(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE tenant_id = $1 AND key = $2",
        )
        .bind(&n.tenant_id)
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let status = row.int("response_status")?;
        out[i] = Some(IdempotencyRecord {
            request_hash: row.try_get("request_hash").map_err(db_err)?,
            response: StoredResponse {
                status: u16::try_from(status)
                    .map_err(|_| StoreError::Corrupt(format!("status {status}").into()))?,
                body: row.text("response_body")?,
            },
        });
    }
    Ok(out)
}

/// What every claim's UPDATE returns of each leased delivery (`d`) and its
/// notification (`n`), for `leased_row`.
macro_rules! leased_columns {
    () => {
        "d.id, d.notification_id, d.target, d.attempts, d.pinned_provider, d.calling, \
         d.in_doubt, d.channel, d.priority, \
         n.tenant_id, n.payload, n.accepted_at_ms, n.expires_at_ms, n.traceparent"
    };
}

/// One claim of due work, alone.
async fn claim(tx: &mut PgConnection, a: &Claim) -> Result<Vec<ClaimedDelivery>, StoreError> {
    Ok(claim_lanes(tx, &[a]).await?.pop().unwrap_or_default())
}

/// The claims among `jobs`, by the job's place in the batch. A batch holds
/// claims of several channels and lanes (each node's worker pools claim
/// one lane at a time), all made in one statement; a second claim of the
/// same channel and lane is left to claim alone, after, so the merged
/// claims never reach for the same rows.
async fn claim_each(
    tx: &mut PgConnection,
    jobs: &[Box<dyn Job>],
) -> Result<Vec<Option<Vec<ClaimedDelivery>>>, StoreError> {
    let mut out: Vec<Option<Vec<ClaimedDelivery>>> = jobs.iter().map(|_| None).collect();
    let mut lanes = HashSet::new();
    let (places, claims): (Vec<usize>, Vec<&Claim>) = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| Some((i, j.claim()?)))
        .filter(|(_, c)| lanes.insert((c.channel, c.lane)))
        .unzip();
    if claims.is_empty() {
        return Ok(out);
    }
    for (i, claimed) in places.into_iter().zip(claim_lanes(tx, &claims).await?) {
        out[i] = Some(claimed);
    }
    Ok(out)
}

/// Due deliveries for each claim (of distinct channels and lanes), leased,
/// in one statement: each claim's rows found by a lateral subquery of its
/// own, `LIMIT` its own. What each claim got, in the claims' order.
///
/// SKIP LOCKED: rows another node is claiming right now are left to it.
/// The SET's `d.state` is the row before the update: taking over a
/// `sending` row (its lease expired) marks it in doubt.
async fn claim_lanes(
    tx: &mut PgConnection,
    claims: &[&Claim],
) -> Result<Vec<Vec<ClaimedDelivery>>, StoreError> {
    let tokens: Vec<i64> = claims.iter().map(|_| rand::random()).collect();
    let (mut at, mut channel, mut lane, mut limit, mut now, mut lease, mut settled) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, c) in claims.iter().enumerate() {
        at.push(i as i64);
        channel.push(c.channel.as_str());
        lane.push(c.lane.index() as i64);
        limit.push(i64::try_from(c.limit).unwrap_or(i64::MAX));
        now.push(c.now_ms);
        lease.push(c.lease_ms);
        settled.push(c.settled_before_ms);
    }
    let rows = sqlx::query(concat!(
        "WITH due AS ( \
             SELECT q.at, q.token, q.now, q.lease, x.id \
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]) \
                 AS q(at, ch, pr, lim, now, lease, settled, token) \
             CROSS JOIN LATERAL ( \
                 SELECT id FROM deliveries \
                 WHERE channel = q.ch AND priority = q.pr \
                   AND state IN ('queued', 'retry_scheduled', 'sending') AND due_at_ms <= q.now \
                   AND (state <> 'queued' OR updated_at_ms <= q.settled) \
                 ORDER BY due_at_ms LIMIT q.lim FOR UPDATE SKIP LOCKED) x) \
         UPDATE deliveries d SET state = 'sending', due_at_ms = due.now + due.lease, \
             lease_token = due.token, attempts = d.attempts + 1, updated_at_ms = due.now, \
             in_doubt = (d.state = 'sending') OR d.in_doubt \
         FROM due, notifications n WHERE d.id = due.id AND n.id = d.notification_id \
         RETURNING due.at, ",
        leased_columns!()
    ))
    .bind(&at)
    .bind(&channel)
    .bind(&lane)
    .bind(&limit)
    .bind(&now)
    .bind(&lease)
    .bind(&settled)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut out: Vec<Vec<ClaimedDelivery>> = claims.iter().map(|_| Vec::new()).collect();
    for row in &rows {
        let i = usize::try_from(row.int("at")?)
            .ok()
            .filter(|&i| i < claims.len())
            .ok_or_else(|| StoreError::Corrupt("a claim's place".into()))?;
        let c = claims[i];
        out[i].push(leased_row(row, tokens[i], c.now_ms + c.lease_ms)?);
    }
    Ok(out)
}

/// Moves these deliveries to `sending` under a new lease, each only if it
/// is waiting and due (queued, a retry come due, or a lease run out): the
/// idempotent consumer's step, so an event seen twice sends once. Rows
/// another node is claiming right now are left to it.
async fn claim_ids(
    tx: &mut PgConnection,
    ids: &[uuid::Uuid],
    now_ms: i64,
    lease_ms: i64,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let token: i64 = rand::random();
    let rows = sqlx::query(concat!(
        "WITH due AS ( \
             SELECT id FROM deliveries \
             WHERE id = ANY($4) AND state IN ('queued', 'retry_scheduled', 'sending') \
               AND due_at_ms <= $1 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE deliveries d SET state = 'sending', due_at_ms = $1 + $2, lease_token = $3, \
             attempts = d.attempts + 1, updated_at_ms = $1, \
             in_doubt = (d.state = 'sending') OR d.in_doubt \
         FROM due, notifications n WHERE d.id = due.id AND n.id = d.notification_id \
         RETURNING ",
        leased_columns!()
    ))
    .bind(now_ms)
    .bind(lease_ms)
    .bind(token)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    leased(&rows, token, now_ms + lease_ms)
}

/// A claim's returned rows as leased deliveries (with `token`, until
/// `until_ms`), with their notifications' fields: the claim's UPDATE
/// returns them joined, so a claim is one statement, not two.
fn leased(
    rows: &[sqlx::postgres::PgRow],
    token: i64,
    until_ms: i64,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    rows.iter()
        .map(|row| leased_row(row, token, until_ms))
        .collect()
}

/// One row of a claim's, leased with `token` until `until_ms`.
fn leased_row(
    row: &sqlx::postgres::PgRow,
    token: i64,
    until_ms: i64,
) -> Result<ClaimedDelivery, StoreError> {
    Ok(ClaimedDelivery {
        id: row.uuid("id")?,
        notification_id: row.uuid("notification_id")?,
        tenant_id: row.text("tenant_id")?,
        channel: row.parsed("channel")?,
        target: row.small("target")?,
        priority: row.priority()?,
        attempt: row.small("attempts")?,
        lease_token: LeaseToken(token),
        lease_until_ms: until_ms,
        accepted_at_ms: row.int("accepted_at_ms")?,
        expires_at_ms: row.opt_int("expires_at_ms")?,
        payload: row.text("payload")?,
        pinned_provider: row.opt_text("pinned_provider")?,
        calling: row.opt_text("calling")?,
        in_doubt: row.try_get("in_doubt").map_err(db_err)?,
        traceparent: row.opt_text("traceparent")?,
    })
}

/// Records attempts and moves their deliveries on: one statement (an
/// INSERT of every vendor call and an UPDATE), however many workers
/// reported.
async fn record(
    tx: &mut PgConnection,
    records: impl Iterator<Item = &AttemptRecord>,
) -> Result<(), StoreError> {
    #[derive(Default)]
    struct Calls<'a> {
        delivery: Vec<uuid::Uuid>,
        attempt: Vec<i64>,
        provider: Vec<&'a str>,
        started: Vec<i64>,
        latency: Vec<i64>,
        outcome: Vec<&'a str>,
        status: Vec<Option<i64>>,
        error: Vec<Option<&'a str>>,
    }
    #[derive(Default)]
    struct Moves<'a> {
        id: Vec<uuid::Uuid>,
        token: Vec<i64>,
        state: Vec<&'a str>,
        due: Vec<i64>,
        uncount: Vec<i64>,
        provider: Vec<Option<&'a str>>,
        vendor_id: Vec<Option<&'a str>>,
        error: Vec<Option<&'a str>>,
        sent_at: Vec<Option<i64>>,
        updated: Vec<i64>,
        pin: Vec<Option<&'a str>>,
    }
    let (mut c, mut m) = (Calls::default(), Moves::default());
    for r in records {
        let o = RowChange::of(r)?;
        for call in &r.calls {
            c.delivery.push(r.delivery_id);
            c.attempt.push(i64::from(r.attempt));
            c.provider.push(&call.provider);
            c.started.push(call.started_at_ms);
            c.latency.push(call.latency_ms);
            c.outcome.push(&call.outcome);
            c.status.push(call.status_code.map(i64::from));
            c.error.push(call.error.as_deref());
        }
        m.id.push(r.delivery_id);
        m.token.push(r.lease_token.0);
        m.state.push(o.state);
        m.due.push(o.due_at_ms);
        m.uncount.push(o.uncount);
        m.provider.push(r.provider());
        m.vendor_id.push(o.vendor_id);
        m.error.push(r.error.as_deref());
        m.sent_at.push(o.sent_at_ms);
        m.updated.push(r.ended_at_ms);
        m.pin.push(r.pin.as_deref());
    }
    if m.id.is_empty() {
        return Ok(());
    }
    // One statement: the calls' log and the deliveries' moves.
    // Compare-and-set on the lease: a worker whose lease expired and was
    // taken over does not overwrite the newer holder's state. A deferred
    // attempt made no call, so it gives its attempt back. A receipt heard
    // before the send was recorded gives a sent delivery its state.
    sqlx::query(
        "WITH calls AS ( \
             INSERT INTO attempts (delivery_id, attempt, provider, started_at_ms, latency_ms, outcome, status_code, error) \
             SELECT * FROM UNNEST($12::uuid[], $13::int8[], $14::text[], $15::int8[], $16::int8[], $17::text[], $18::int8[], $19::text[])) \
         UPDATE deliveries d SET \
             state = CASE WHEN v.state = 'sent' AND d.receipt IS NOT NULL THEN d.receipt ELSE v.state END, \
             due_at_ms = v.due, lease_token = NULL, \
             attempts = GREATEST(d.attempts - v.uncount, 0), \
             provider = COALESCE(v.provider, d.provider), \
             vendor_message_id = COALESCE(v.vendor_id, d.vendor_message_id), last_error = v.error, \
             sent_at_ms = COALESCE(v.sent_at, d.sent_at_ms), updated_at_ms = v.updated, \
             pinned_provider = COALESCE(d.pinned_provider, v.pin), \
             calling = NULL, in_doubt = FALSE \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[], \
                     $7::text[], $8::text[], $9::int8[], $10::int8[], $11::text[]) \
             AS v(id, token, state, due, uncount, provider, vendor_id, error, sent_at, updated, pin) \
         WHERE d.id = v.id AND d.lease_token = v.token AND d.state = 'sending'",
    )
    .bind(&m.id)
    .bind(&m.token)
    .bind(&m.state)
    .bind(&m.due)
    .bind(&m.uncount)
    .bind(&m.provider)
    .bind(&m.vendor_id)
    .bind(&m.error)
    .bind(&m.sent_at)
    .bind(&m.updated)
    .bind(&m.pin)
    .bind(&c.delivery)
    .bind(&c.attempt)
    .bind(&c.provider)
    .bind(&c.started)
    .bind(&c.latency)
    .bind(&c.outcome)
    .bind(&c.status)
    .bind(&c.error)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Waiting deliveries past their notification's expiry become `expired`
/// (a claim would find the same; this does not wait for one).
async fn expire(tx: &mut PgConnection, now_ms: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'expired', last_error = 'expired before it could be sent', \
             updated_at_ms = $1 \
         WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL \
           AND expires_at_ms <= $1",
    )
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}

/// Deletes finished notifications made before `before_ms`, oldest first,
/// with everything that hangs off them, in one statement (see
/// `Store::purge_finished`). SKIP LOCKED: nodes purging at once split the
/// work instead of queueing on each other's rows.
async fn purge(tx: &mut PgConnection, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    // Frequency-cap counts older than the longest window count for nothing.
    sqlx::query("DELETE FROM cap_events WHERE at_ms < $1")
        .bind(crate::writes::cap_horizon_ms())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let done = sqlx::query(
        "WITH gone AS ( \
             SELECT n.id, n.tenant_id, n.idempotency_key FROM notifications n \
             WHERE n.id < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d \
                 WHERE d.notification_id = n.id AND d.state IN ('queued', 'retry_scheduled', 'sending')) \
             ORDER BY n.id LIMIT $2 FOR UPDATE SKIP LOCKED), \
         dels AS (DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM gone) RETURNING id), \
         atts AS (DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM dels)), \
         rcpts AS (DELETE FROM receipts WHERE delivery_id IN (SELECT id FROM dels)), \
         keys AS (DELETE FROM idempotency_keys k USING gone g \
             WHERE k.tenant_id = g.tenant_id AND k.key = g.idempotency_key) \
         DELETE FROM notifications WHERE id IN (SELECT id FROM gone)",
    )
    .bind(v7_floor(before_ms))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    // Published events of the same age go too.
    sqlx::query(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE published_at_ms IS NOT NULL AND created_at_ms < $1 ORDER BY seq LIMIT $2)",
    )
    .bind(before_ms)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    // And suppressions lifted that long ago (every node's copy has long
    // since followed the lift).
    sqlx::query(
        "DELETE FROM suppressions WHERE ctid IN (SELECT ctid FROM suppressions \
             WHERE lifted_at_ms < $1 LIMIT $2)",
    )
    .bind(before_ms)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}

/// What puts dead deliveries back in the queue: due now, attempts reset, the
/// same id (so the same vendor key). `$1` is now; the caller adds which rows.
const REPLAY: &str = "UPDATE deliveries SET state = 'queued', due_at_ms = $1, attempts = 0, \
                      lease_token = NULL, updated_at_ms = $1 WHERE state = 'dead' AND ";

async fn replay_one(
    tx: &mut PgConnection,
    tenant_id: Option<&str>,
    id: uuid::Uuid,
) -> Result<ReplayOutcome, StoreError> {
    let row = sqlx::query(
        "SELECT d.state FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
         WHERE d.id = $1 AND ($2::text IS NULL OR n.tenant_id = $2)",
    )
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(ReplayOutcome::NotFound);
    };
    let state: DeliveryState = row.parsed("state")?;
    if state != DeliveryState::Dead {
        return Ok(ReplayOutcome::NotDead(state));
    }
    sqlx::query(&format!("{REPLAY} id = $2"))
        .bind(herald_core::now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(ReplayOutcome::Replayed)
}

async fn replay_many(
    tx: &mut PgConnection,
    f: &DeadLetterFilter,
    limit: usize,
) -> Result<u64, StoreError> {
    // An absent filter field is NULL and matches everything.
    let done = sqlx::query(&format!(
        "{REPLAY} id IN (SELECT d.id FROM deliveries d \
             JOIN notifications n ON n.id = d.notification_id WHERE d.state = 'dead' \
             AND ($2::text IS NULL OR n.tenant_id = $2) AND ($3::text IS NULL OR d.channel = $3) \
             AND ($4::text IS NULL OR d.provider = $4) AND ($5::int8 IS NULL OR d.updated_at_ms >= $5) \
             AND ($6::int8 IS NULL OR d.updated_at_ms < $6) \
             ORDER BY d.updated_at_ms, d.id LIMIT $7)"
    ))
    .bind(herald_core::now_ms())
    .bind(f.tenant_id.as_deref())
    .bind(f.channel.map(|c| c.as_str()))
    .bind(f.provider.as_deref())
    .bind(f.since_ms)
    .bind(f.until_ms)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(done.rows_affected())
}

async fn release(
    tx: &mut PgConnection,
    leases: &[(uuid::Uuid, LeaseToken)],
    started: bool,
) -> Result<(), StoreError> {
    let (ids, tokens): (Vec<uuid::Uuid>, Vec<i64>) =
        leases.iter().map(|&(id, t)| (id, t.0)).unzip();
    sqlx::query(
        "UPDATE deliveries d SET state = 'queued', due_at_ms = $1, lease_token = NULL, \
             attempts = GREATEST(d.attempts - 1, 0), updated_at_ms = $1, in_doubt = (d.in_doubt OR $4) \
         FROM UNNEST($2::uuid[], $3::int8[]) AS v(id, token) \
         WHERE d.id = v.id AND d.lease_token = v.token AND d.state = 'sending'",
    )
    .bind(herald_core::now_ms())
    .bind(&ids)
    .bind(&tokens)
    .bind(started)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn add_key(tx: &mut PgConnection, a: &ops::AddKey) -> Result<String, StoreError> {
    let now = herald_core::now_ms();
    sqlx::query(
        "INSERT INTO tenants (id, name, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&a.tenant_name)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let tenant_id: String = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(&a.tenant_name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO api_keys (key_hash, tenant_id, label, created_at_ms, scopes) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (key_hash) DO NOTHING",
    )
    .bind(&a.key_hash)
    .bind(&tenant_id)
    .bind(&a.label)
    .bind(now)
    .bind(a.scopes.to_string())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(tenant_id)
}
