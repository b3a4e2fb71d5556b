//! The stored recipients that concurrent requests name, read together.
//!
//! Every request that names `recipient.id` reads its recipients before it
//! is stored: on PostgreSQL one round trip each, half of all the round
//! trips of a busy node (docs/benchmarks.md, issue 18). Readers here take
//! whatever asks have queued up (any tenants') and answer them all from
//! one query. Under load a reader holds its batch open for the store's
//! `gather` (or until it is full): a read costs the database and Herald a
//! round trip however many ids it carries, and the writer the caller goes
//! to next holds its write as long. A lone ask is read at once. The
//! readers are tasks of their own, so a caller that goes away (its request
//! cancelled) takes nothing with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::recipient::StoredRecipient;
use herald_core::store::StoreError;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::rows::{db_err, Columns};

/// One caller's read: a tenant's recipients by id.
struct Ask {
    tenant_id: String,
    ids: Vec<String>,
    reply: oneshot::Sender<Result<Vec<StoredRecipient>, StoreError>>,
}

/// The asks one query answers at most.
const MAX_ASKS: usize = 256;
/// Readers running at once (each a query at a time).
const READERS: usize = 2;

/// Where callers queue their reads.
pub(super) struct RecipientReads {
    asks: mpsc::Sender<Ask>,
    timeout: Duration,
}

impl RecipientReads {
    /// Starts the readers on `pool`. `timeout` bounds each query and each
    /// caller's wait; `gather`, how long a batch is held open under load.
    pub(super) fn start(pool: PgPool, timeout: Duration, gather: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAX_ASKS * 4);
        let shared = Arc::new(Shared {
            pool,
            timeout,
            gather,
            asks: Mutex::new(rx),
            last_batch: AtomicUsize::new(0),
        });
        for _ in 0..READERS {
            tokio::spawn(shared.clone().run());
        }
        Self { asks: tx, timeout }
    }

    /// `tenant_id`'s stored recipients among `ids` (those not stored are
    /// left out), within the store's timeout.
    pub(super) async fn read(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecipient>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            tenant_id: tenant_id.to_owned(),
            ids: ids.to_vec(),
            reply,
        };
        let asked = async {
            self.asks.send(ask).await.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        };
        // Queueing, gathering and the query, all within the store's
        // timeout, as any other read.
        crate::writes::bounded(self.timeout, asked).await
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the recipient readers stopped".into())
}

struct Shared {
    pool: PgPool,
    timeout: Duration,
    gather: Duration,
    asks: Mutex<mpsc::Receiver<Ask>>,
    /// How many asks the last batch taken held: a few or more says load.
    last_batch: AtomicUsize,
}

/// A batch this big says the readers are under load: the next one gathers.
const UNDER_LOAD: usize = 2;

impl Shared {
    async fn run(self: Arc<Self>) {
        let mut batch = Vec::with_capacity(MAX_ASKS);
        while self.take(&mut batch).await > 0 {
            let asks = std::mem::take(&mut batch);
            match self.query(&asks).await {
                Ok(found) => {
                    for ask in asks {
                        let mine = ask
                            .ids
                            .iter()
                            .filter_map(|id| found.get(&(ask.tenant_id.clone(), id.clone())))
                            .cloned()
                            .collect();
                        let _ = ask.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    for ask in asks {
                        let _ = ask.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The next batch of asks (0 once every caller's sender is gone).
    ///
    /// Under load (this batch or the last held a few asks) the batch is
    /// held open for `gather`, or until it is full, not only while more
    /// keeps coming: at 2,000 requests a second a quiet millisecond came
    /// often enough that reads went with seven asks each, half of the
    /// database's round trips; held for the whole gather, a third as many
    /// reads, Herald + PostgreSQL −6 to −13% per delivery and the same p99
    /// (docs/benchmarks.md, issue 18).
    async fn take(&self, batch: &mut Vec<Ask>) -> usize {
        let mut asks = self.asks.lock().await;
        let mut taken = asks.recv_many(batch, MAX_ASKS).await;
        let busy = taken >= UNDER_LOAD || self.last_batch.load(Ordering::Acquire) >= UNDER_LOAD;
        if busy && taken > 0 && taken < MAX_ASKS {
            let held = async {
                while taken < MAX_ASKS {
                    match asks.recv().await {
                        Some(ask) => {
                            batch.push(ask);
                            taken += 1;
                        }
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(self.gather, held).await;
        }
        self.last_batch.store(taken, Ordering::Release);
        taken
    }

    /// Every asked recipient that is stored, by (tenant, id): one query.
    async fn query(
        &self,
        asks: &[Ask],
    ) -> Result<HashMap<(String, String), StoredRecipient>, StoreError> {
        let (mut tenants, mut ids) = (Vec::new(), Vec::new());
        for ask in asks {
            for id in &ask.ids {
                tenants.push(ask.tenant_id.as_str());
                ids.push(id.as_str());
            }
        }
        // As every read (`PgReader::rows`): a connection that did not
        // answer in time is closed, not given back.
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let read = sqlx::query(
            "SELECT r.tenant_id, r.id, r.profile, r.preferences, r.version, r.updated_at_ms \
             FROM recipients r \
             JOIN (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[])) AS a(tenant_id, id) \
               ON r.tenant_id = a.tenant_id AND r.id = a.id",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *conn);
        let rows = match tokio::time::timeout(self.timeout, read).await {
            Ok(rows) => rows.map_err(db_err)?,
            Err(_) => return Err(super::cut_off(&mut conn, self.timeout)),
        };
        rows.iter()
            .map(|row| {
                Ok((
                    (row.text("tenant_id")?, row.text("id")?),
                    crate::rows::recipient(row)?,
                ))
            })
            .collect()
    }
}
