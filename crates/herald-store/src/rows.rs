//! Rows to domain types, shared by both stores' reads: each store reads
//! with its own SQL, and these turn what comes back into views.

use std::str::FromStr;

use herald_core::events::OutboxEvent;
use herald_core::model::{NotificationRequest, Priority};
use herald_core::receipt::ReceiptKind;
use herald_core::store::ReceiptView;
use herald_core::store::{
    AttemptView, Cause, DeadLetter, DeliverySummary, DeliveryView, LaneLag, LaneQueue,
    NotificationView, QueueDepth, StoreError, SuppressionChange,
};
use herald_core::suppression::Suppression;
use sqlx::Row;

/// An error from sqlx as the store's: a row it cannot read is corrupt, a
/// constraint the operation breaks is the operation's fault (rejected),
/// anything else — connections, timeouts, a full disk, a read-only
/// server — is the store's (unavailable).
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    match &e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(Cause::of(e)),
        sqlx::Error::Database(d)
            if matches!(
                d.kind(),
                ErrorKind::UniqueViolation
                    | ErrorKind::ForeignKeyViolation
                    | ErrorKind::NotNullViolation
                    | ErrorKind::CheckViolation
            ) =>
        {
            StoreError::Rejected(Cause::of(e))
        }
        _ => StoreError::Unavailable(Cause::of(e)),
    }
}

/// The column types Herald's tables use, read the same way from either
/// database's rows.
pub trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn uuid(&self, col: &str) -> Result<uuid::Uuid, StoreError>;

    /// A text column holding one of our enums' names.
    fn parsed<T: FromStr>(&self, col: &str) -> Result<T, StoreError> {
        let s = self.text(col)?;
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("column {col} holds {s:?}").into()))
    }

    fn priority(&self) -> Result<Priority, StoreError> {
        let p = self.int("priority")?;
        Priority::from_index(p).ok_or_else(|| StoreError::Corrupt(format!("priority {p}").into()))
    }

    /// A non-negative count or number that fits a u32.
    fn small(&self, col: &str) -> Result<u32, StoreError> {
        let n = self.int(col)?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("column {col} holds {n}").into()))
    }
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> Result<String, StoreError> {
                self.try_get(col).map_err(db_err)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                self.try_get(col).map_err(db_err)
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                self.try_get(col).map_err(db_err)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                self.try_get(col).map_err(db_err)
            }
            fn uuid(&self, col: &str) -> Result<uuid::Uuid, StoreError> {
                self.try_get(col).map_err(db_err)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);

/// `SELECT tenant_id, payload, accepted_at_ms, expires_at_ms FROM notifications`
pub(crate) fn notification(
    id: uuid::Uuid,
    row: &impl Columns,
    deliveries: Vec<DeliveryView>,
) -> Result<NotificationView, StoreError> {
    let request: NotificationRequest = serde_json::from_str(&row.text("payload")?)
        .map_err(|e| StoreError::Corrupt(format!("notification {id}: {e}").into()))?;
    Ok(NotificationView {
        id,
        tenant_id: row.text("tenant_id")?,
        request,
        accepted_at_ms: row.int("accepted_at_ms")?,
        expires_at_ms: row.opt_int("expires_at_ms")?,
        deliveries,
    })
}

/// `SELECT id, channel, target, state, provider, vendor_message_id,
/// last_error, sent_at_ms, updated_at_ms FROM deliveries`
pub(crate) fn delivery(
    row: &impl Columns,
    attempts: Vec<AttemptView>,
    receipts: Vec<ReceiptView>,
) -> Result<DeliveryView, StoreError> {
    Ok(DeliveryView {
        id: row.uuid("id")?,
        channel: row.parsed("channel")?,
        target: row.small("target")?,
        state: row.parsed("state")?,
        provider: row.opt_text("provider")?,
        vendor_message_id: row.opt_text("vendor_message_id")?,
        last_error: row.opt_text("last_error")?,
        sent_at_ms: row.opt_int("sent_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        attempts,
        receipts,
    })
}

/// `SELECT kind, provider, at_ms, received_at_ms, reason FROM receipts`
pub(crate) fn receipt(row: &impl Columns) -> Result<ReceiptView, StoreError> {
    let kind = row.text("kind")?;
    Ok(ReceiptView {
        kind: ReceiptKind::from_name(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("receipt kind {kind:?}").into()))?,
        provider: row.text("provider")?,
        at_ms: row.int("at_ms")?,
        received_at_ms: row.int("received_at_ms")?,
        reason: row.opt_text("reason")?,
    })
}

/// `SELECT attempt, provider, started_at_ms, latency_ms, outcome,
/// status_code, error FROM attempts`
pub(crate) fn attempt(row: &impl Columns) -> Result<AttemptView, StoreError> {
    Ok(AttemptView {
        attempt: row.small("attempt")?,
        at_ms: row.int("started_at_ms")?,
        provider: row.opt_text("provider")?,
        outcome: row.text("outcome")?,
        status_code: row
            .opt_int("status_code")?
            .and_then(|s| u16::try_from(s).ok()),
        latency_ms: row.int("latency_ms")?,
        error: row.opt_text("error")?,
    })
}

/// `SELECT channel, priority, COUNT(*) AS n`
pub(crate) fn queue_depth(row: &impl Columns) -> Result<QueueDepth, StoreError> {
    Ok(QueueDepth {
        channel: row.parsed("channel")?,
        priority: row.priority()?,
        pending: u64::try_from(row.int("n")?).unwrap_or(0),
    })
}

/// `SELECT channel, priority, MIN(due_at_ms) AS oldest, COUNT(*) AS n`
pub(crate) fn lane_lag(row: &impl Columns) -> Result<LaneLag, StoreError> {
    Ok(LaneLag {
        channel: row.parsed("channel")?,
        priority: row.priority()?,
        oldest_due_at_ms: row.int("oldest")?,
        due: u64::try_from(row.int("n")?).unwrap_or(0),
    })
}

/// `SELECT oldest, due, waiting` (`reads::lane_queues`)
pub(crate) fn lane_queue(row: &impl Columns) -> Result<LaneQueue, StoreError> {
    Ok(LaneQueue {
        oldest_due_at_ms: row.opt_int("oldest")?,
        due: u64::try_from(row.int("due")?).unwrap_or(0),
        waiting: u64::try_from(row.int("waiting")?).unwrap_or(0),
    })
}

/// `SELECT d.channel, d.priority, d.state, d.provider, n.accepted_at_ms,
/// d.sent_at_ms`
pub(crate) fn delivery_summary(row: &impl Columns) -> Result<DeliverySummary, StoreError> {
    Ok(DeliverySummary {
        channel: row.parsed("channel")?,
        priority: row.priority()?,
        state: row.parsed("state")?,
        provider: row.opt_text("provider")?,
        accepted_at_ms: row.int("accepted_at_ms")?,
        sent_at_ms: row.opt_int("sent_at_ms")?,
    })
}

/// `SELECT d.id, d.notification_id, n.tenant_id, d.channel, d.target,
/// d.priority, d.provider, d.attempts, d.last_error, d.updated_at_ms,
/// n.accepted_at_ms`
pub(crate) fn dead_letter(row: &impl Columns) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.uuid("id")?,
        notification_id: row.uuid("notification_id")?,
        tenant_id: row.text("tenant_id")?,
        channel: row.parsed("channel")?,
        target: row.small("target")?,
        priority: row.priority()?,
        provider: row.opt_text("provider")?,
        attempts: row.small("attempts")?,
        last_error: row.opt_text("last_error")?,
        dead_at_ms: row.int("updated_at_ms")?,
        accepted_at_ms: row.int("accepted_at_ms")?,
    })
}

/// `SELECT tenant_id, channel, address, reason, detail, source,
/// created_at_ms, changed_at_ms, lifted_at_ms FROM suppressions`
pub(crate) fn suppression_change(row: &impl Columns) -> Result<SuppressionChange, StoreError> {
    let lifted_at = row.opt_int("lifted_at_ms")?;
    Ok(SuppressionChange {
        suppression: Suppression {
            tenant_id: row.text("tenant_id")?,
            channel: row.parsed("channel")?,
            address: row.text("address")?,
            reason: row.parsed("reason")?,
            detail: row.opt_text("detail")?,
            source: row.text("source")?,
            created_at_ms: row.int("created_at_ms")?,
        },
        lifted: lifted_at.is_some(),
        changed_at_ms: row.int("changed_at_ms")?,
    })
}

/// `SELECT seq, lane, key, tenant_id, correlation_id, traceparent, payload,
/// created_at_ms FROM outbox`
pub(crate) fn recipient(
    row: &impl Columns,
) -> Result<herald_core::recipient::StoredRecipient, StoreError> {
    crate::writes::stored_recipient(
        row.text("id")?,
        &row.text("profile")?,
        row.opt_text("preferences")?.as_deref(),
        row.int("version")?,
        row.int("updated_at_ms")?,
    )
}

pub(crate) fn outbox_event(row: &impl Columns) -> Result<OutboxEvent, StoreError> {
    let lane = row.int("lane")?;
    Ok(OutboxEvent {
        seq: row.int("seq")?,
        lane: Priority::from_index(lane)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox lane {lane}").into()))?,
        key: row.text("key")?,
        tenant_id: row.text("tenant_id")?,
        correlation_id: row.opt_text("correlation_id")?,
        traceparent: row.opt_text("traceparent")?,
        payload: row.text("payload")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}
