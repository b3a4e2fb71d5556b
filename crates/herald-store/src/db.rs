//! The store's roles (`herald_core::store`), implemented once for both
//! databases: writes go to the backend's group-commit writers as typed
//! operations (`ops`), reads run the shared SQL (`reads`). A backend
//! provides only how to apply each operation and how to run a read.

use async_trait::async_trait;
use herald_core::events::OutboxEvent;
use herald_core::model::Channel;
use herald_core::receipt::VendorReceipt;
use herald_core::recipient::{Preferences, Profile, StoredRecipient, TenantPreferences};
use herald_core::store::{
    AttemptRecord, Claim, ClaimedDelivery, CreateResult, DeadLetter, DeadLetterCursor,
    DeadLetterFilter, DeadLetters, DeliverySummary, Depths, Health, Intake, LaneAsk, LaneLag,
    LaneQueue, LeaseToken, NewNotification, NotificationView, Outbox, Queue, QueueDepth,
    ReplayOutcome, Reports, StoreError, Tenants, Upkeep,
};
use herald_core::store::{Callback, PutRecipient, ReceiptApplied, Receipts, Recipients};
use herald_core::store::{
    ChangeCursor, SuppressionChange, SuppressionCursor, SuppressionFilter, Suppressions,
};
use herald_core::store::{CircuitHold, Circuits, KeyGrant, Scopes};
use herald_core::suppression::Suppression;

use crate::ops;
use crate::reads::{self, Reader};
use crate::writes::{Runs, WriteQueue};

/// A database backend: it applies every write operation and runs reads.
/// (Public in name only: the module is private, so nothing outside the
/// crate can implement it.)
pub trait Database:
    Runs<ops::Create>
    + Runs<ops::ClaimDue>
    + Runs<ops::ClaimIds>
    + Runs<ops::Record>
    + Runs<ops::Release>
    + Runs<ops::NoteCall>
    + Runs<ops::AddKey>
    + Runs<ops::ReplayOne>
    + Runs<ops::ReplayMany>
    + Runs<ops::Expire>
    + Runs<ops::Purge>
    + Runs<ops::RelayLease>
    + Runs<ops::OutboxPublished>
    + Runs<ops::Probe>
    + Runs<ops::Suppress>
    + Runs<ops::Lift>
    + Runs<ops::ApplyReceipts>
    + Runs<ops::SetCallback>
    + Runs<ops::PutRecipient>
    + Runs<ops::Cancel>
    + Runs<ops::PutRecipients>
    + Runs<ops::SetPreferences>
    + Runs<ops::SetTenantPreferences>
    + Runs<ops::DeleteRecipient>
    + Runs<ops::HoldCircuit>
{
    type Reader: Reader;
}

/// A store on a database: its read side and its writers' queue.
pub struct Db<D: Database> {
    pub(crate) reads: D::Reader,
    pub(crate) writes: WriteQueue<D>,
}

#[async_trait]
impl<D: Database> Intake for Db<D> {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<CreateResult>, StoreError> {
        self.writes.run(ops::Create(batch)).await
    }

    async fn notification(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
    ) -> Result<Option<NotificationView>, StoreError> {
        reads::notification(&self.reads, tenant_id, id).await
    }

    async fn cancel(
        &self,
        tenant_id: &str,
        id: uuid::Uuid,
        now_ms: i64,
    ) -> Result<Option<Vec<herald_core::store::CancelledDelivery>>, StoreError> {
        let op = ops::Cancel {
            tenant_id: tenant_id.to_owned(),
            id,
            now_ms,
        };
        self.writes.run(op).await
    }

    async fn notification_for_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<uuid::Uuid>, StoreError> {
        reads::notification_for_key(&self.reads, tenant_id, key).await
    }

    async fn notifications_to(
        &self,
        tenant_id: &str,
        address: &str,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<uuid::Uuid>, StoreError> {
        reads::notifications_to(&self.reads, tenant_id, address, scan, limit).await
    }
}

#[async_trait]
impl<D: Database> Queue for Db<D> {
    async fn claim(&self, claim: Claim) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.writes.run(ops::ClaimDue(claim)).await
    }

    async fn claim_ids(
        &self,
        ids: Vec<uuid::Uuid>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let op = ops::ClaimIds {
            ids,
            now_ms,
            lease_ms,
        };
        self.writes.run(op).await
    }

    async fn record(&self, attempts: Vec<AttemptRecord>) -> Result<(), StoreError> {
        self.writes.run(ops::Record(attempts)).await
    }

    async fn release(
        &self,
        leases: Vec<(uuid::Uuid, LeaseToken)>,
        started: bool,
    ) -> Result<(), StoreError> {
        self.writes.run(ops::Release { leases, started }).await
    }

    async fn note_call(
        &self,
        id: uuid::Uuid,
        lease_token: LeaseToken,
        provider: &str,
    ) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        let op = ops::NoteCall {
            id,
            lease_token,
            provider,
        };
        self.writes.run(op).await
    }
}

#[async_trait]
impl<D: Database> Depths for Db<D> {
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        reads::queue_depths(&self.reads).await
    }

    async fn oldest_due(&self, now_ms: i64) -> Result<Vec<LaneLag>, StoreError> {
        reads::oldest_due(&self.reads, now_ms).await
    }

    async fn lane_queues(
        &self,
        now_ms: i64,
        lanes: &[LaneAsk],
    ) -> Result<Vec<LaneQueue>, StoreError> {
        reads::lane_queues(&self.reads, now_ms, lanes).await
    }
}

#[async_trait]
impl<D: Database> Upkeep for Db<D> {
    async fn expire_overdue(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.writes.run(ops::Expire { now_ms }).await
    }

    async fn purge_finished(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.writes.run(ops::Purge { before_ms, limit }).await
    }
}

#[async_trait]
impl<D: Database> Outbox for Db<D> {
    async fn relay_lease(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let holder = holder.to_owned();
        let op = ops::RelayLease {
            holder,
            now_ms,
            lease_ms,
        };
        self.writes.run(op).await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        reads::outbox_pending(&self.reads, limit).await
    }

    async fn outbox_published(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        self.writes.run(ops::OutboxPublished(seqs)).await
    }
}

#[async_trait]
impl<D: Database> DeadLetters for Db<D> {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        reads::dead_letters(&self.reads, filter, after, limit).await
    }

    async fn replay_dead_letter(
        &self,
        tenant_id: Option<&str>,
        id: uuid::Uuid,
    ) -> Result<ReplayOutcome, StoreError> {
        let tenant_id = tenant_id.map(str::to_owned);
        self.writes.run(ops::ReplayOne { tenant_id, id }).await
    }

    async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let filter = filter.clone();
        self.writes.run(ops::ReplayMany { filter, limit }).await
    }
}

#[async_trait]
impl<D: Database> Tenants for Db<D> {
    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError> {
        reads::tenant_id(&self.reads, name).await
    }

    async fn key_grant(&self, key_hash: &[u8]) -> Result<Option<KeyGrant>, StoreError> {
        reads::key_grant(&self.reads, key_hash).await
    }

    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        label: &str,
        scopes: Scopes,
    ) -> Result<String, StoreError> {
        let op = ops::AddKey {
            tenant_name: tenant_name.to_owned(),
            key_hash: key_hash.to_vec(),
            label: label.to_owned(),
            scopes,
        };
        self.writes.run(op).await
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: Option<Callback>,
    ) -> Result<(), StoreError> {
        let op = ops::SetCallback {
            tenant_id: tenant_id.to_owned(),
            callback,
        };
        self.writes.run(op).await
    }

    async fn callback(&self, tenant_id: &str) -> Result<Option<Callback>, StoreError> {
        reads::callback(&self.reads, tenant_id).await
    }
}

#[async_trait]
impl<D: Database> Receipts for Db<D> {
    async fn record_receipts(
        &self,
        provider: &str,
        receipts: Vec<VendorReceipt>,
        now_ms: i64,
    ) -> Result<Vec<ReceiptApplied>, StoreError> {
        let op = ops::ApplyReceipts {
            provider: provider.to_owned(),
            receipts,
            now_ms,
        };
        self.writes.run(op).await
    }
}

#[async_trait]
impl<D: Database> Suppressions for Db<D> {
    async fn suppress(&self, s: Suppression) -> Result<bool, StoreError> {
        self.writes.run(ops::Suppress(s)).await
    }

    async fn lift_suppression(
        &self,
        tenant_id: &str,
        channel: Channel,
        address: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let op = ops::Lift {
            tenant_id: tenant_id.to_owned(),
            channel,
            address: address.to_owned(),
            now_ms,
        };
        self.writes.run(op).await
    }

    async fn suppressions(
        &self,
        filter: &SuppressionFilter,
        after: Option<SuppressionCursor>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        reads::suppressions(&self.reads, filter, after, limit).await
    }

    async fn suppression_changes(
        &self,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<SuppressionChange>, StoreError> {
        reads::suppression_changes(&self.reads, after, limit).await
    }
}

#[async_trait]
impl<D: Database> Recipients for Db<D> {
    async fn put_recipient(
        &self,
        tenant_id: &str,
        id: &str,
        profile: Profile,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<PutRecipient, StoreError> {
        let op = ops::PutRecipient {
            tenant_id: tenant_id.to_owned(),
            id: id.to_owned(),
            profile,
            if_version,
            now_ms,
        };
        self.writes.run(op).await
    }

    async fn put_recipients(
        &self,
        tenant_id: &str,
        batch: Vec<(String, Profile)>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let op = ops::PutRecipients {
            tenant_id: tenant_id.to_owned(),
            batch: crate::writes::last_of_each(batch),
            now_ms,
        };
        self.writes.run(op).await
    }

    async fn recipients(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecipient>, StoreError> {
        self.reads.recipients(tenant_id, ids).await
    }

    async fn set_preferences(
        &self,
        tenant_id: &str,
        id: &str,
        preferences: Preferences,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let op = ops::SetPreferences {
            tenant_id: tenant_id.to_owned(),
            id: id.to_owned(),
            preferences,
            if_version,
            now_ms,
        };
        self.writes.run(op).await
    }

    async fn tenant_preferences(&self, tenant_id: &str) -> Result<TenantPreferences, StoreError> {
        reads::tenant_preferences(&self.reads, tenant_id).await
    }

    async fn set_tenant_preferences(
        &self,
        tenant_id: &str,
        preferences: TenantPreferences,
    ) -> Result<(), StoreError> {
        let op = ops::SetTenantPreferences {
            tenant_id: tenant_id.to_owned(),
            preferences,
        };
        self.writes.run(op).await
    }

    async fn delete_recipient(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<StoredRecipient>, StoreError> {
        let op = ops::DeleteRecipient {
            tenant_id: tenant_id.to_owned(),
            id: id.to_owned(),
        };
        self.writes.run(op).await
    }
}

#[async_trait]
impl<D: Database> Circuits for Db<D> {
    async fn hold_circuit(&self, hold: CircuitHold) -> Result<(), StoreError> {
        let op = ops::HoldCircuit {
            provider: hold.provider.clone(),
            hold: Some(hold),
        };
        self.writes.run(op).await.map(|_| ())
    }

    async fn release_circuit(&self, provider: &str) -> Result<bool, StoreError> {
        let op = ops::HoldCircuit {
            provider: provider.to_owned(),
            hold: None,
        };
        self.writes.run(op).await
    }

    async fn circuit_holds(&self) -> Result<Vec<CircuitHold>, StoreError> {
        reads::circuit_holds(&self.reads).await
    }
}

#[async_trait]
impl<D: Database> Health for Db<D> {
    /// Reads answer and writes are taken (after a failed write, a probe
    /// write must succeed), each within the store's timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        reads::ping(&self.reads).await?;
        self.writes.check().await
    }
}

#[async_trait]
impl<D: Database> Reports for Db<D> {
    async fn delivery_summaries(&self) -> Result<Vec<DeliverySummary>, StoreError> {
        reads::delivery_summaries(&self.reads).await
    }
}
