//! The store's writes, one type each, with the type of its answer: what a
//! caller queues for a group-commit writer. Each backend applies each of
//! them in its own SQL (`sqlite/writer.rs`, `postgres/writer.rs`); a
//! writer answers an operation with exactly its `Output`, so a wrong answer
//! is a compile error, not a run-time surprise.
//!
//! Adding a write: a struct here with its `Op` impl, the role trait's
//! method (`herald_core::store`) and its line in `db.rs`, and its SQL in
//! each backend's writer.

use herald_core::store::{
    AttemptRecord, Claim, ClaimedDelivery, CreateResult, DeadLetterFilter, LeaseToken,
    NewNotification, ReplayOutcome,
};

/// A write the store's writers apply in a group commit.
pub trait Op: Send + Sync + 'static {
    type Output: Send + Sync + 'static;
    /// For metrics (`herald_store_write_seconds{op}`).
    const NAME: &'static str;
    /// A write of the delivery path (claims, records, releases): it queues
    /// ahead of intake's and the rest (`writes::Inbox`).
    const DELIVERY: bool = false;
}

macro_rules! op {
    ($ty:ty, $out:ty, $name:literal) => {
        impl Op for $ty {
            type Output = $out;
            const NAME: &'static str = $name;
        }
    };
    ($ty:ty, $out:ty, $name:literal, delivery) => {
        impl Op for $ty {
            type Output = $out;
            const NAME: &'static str = $name;
            const DELIVERY: bool = true;
        }
    };
}

/// Notifications with their deliveries (and idempotency keys, and outbox
/// events when the bus is Kafka).
pub struct Create(pub Vec<NewNotification>);
op!(Create, Vec<CreateResult>, "create");

/// Due deliveries of one channel and lane, leased.
pub struct ClaimDue(pub Claim);
op!(ClaimDue, Vec<ClaimedDelivery>, "claim", delivery);

/// Named deliveries, leased if waiting and due (a bus event's).
pub struct ClaimIds {
    pub ids: Vec<uuid::Uuid>,
    pub now_ms: i64,
    pub lease_ms: i64,
}
op!(ClaimIds, Vec<ClaimedDelivery>, "claim", delivery);

/// Attempts recorded, each moving its delivery on if its lease holds.
/// Writers apply a batch's records before its other writes, so a delivery
/// finishing and being claimed again in one batch ends up claimed again
/// only if it did not finish.
pub struct Record(pub Vec<AttemptRecord>);
op!(Record, (), "record", delivery);

/// Leases given back.
pub struct Release {
    pub leases: Vec<(uuid::Uuid, LeaseToken)>,
    pub started: bool,
}
op!(Release, (), "release", delivery);

/// A note that a leased delivery is about to go to a backup provider.
pub struct NoteCall {
    pub id: uuid::Uuid,
    pub lease_token: LeaseToken,
    pub provider: String,
}
op!(NoteCall, (), "note_call", delivery);

/// An API key for a tenant (made if new); answers the tenant's id.
pub struct AddKey {
    pub tenant_name: String,
    pub key_hash: Vec<u8>,
    pub label: String,
    pub scopes: herald_core::store::Scopes,
}
op!(AddKey, String, "add_key");

pub struct ReplayOne {
    pub tenant_id: Option<String>,
    pub id: uuid::Uuid,
}
op!(ReplayOne, ReplayOutcome, "replay");

pub struct ReplayMany {
    pub filter: DeadLetterFilter,
    pub limit: usize,
}
op!(ReplayMany, u64, "replay");

/// Waiting deliveries past their TTL, expired.
pub struct Expire {
    pub now_ms: i64,
}
op!(Expire, u64, "expire");

/// Finished notifications made before `before_ms`, deleted.
pub struct Purge {
    pub before_ms: i64,
    pub limit: usize,
}
op!(Purge, u64, "purge");

/// The outbox relay's lease, taken or renewed: whether `holder` has it.
pub struct RelayLease {
    pub holder: String,
    pub now_ms: i64,
    pub lease_ms: i64,
}
op!(RelayLease, bool, "relay_lease");

pub struct OutboxPublished(pub Vec<i64>);
op!(OutboxPublished, (), "outbox_published");

/// An address on its tenant's suppression list (added, or given a new
/// reason); answers whether it was not in force before.
pub struct Suppress(pub herald_core::suppression::Suppression);
op!(Suppress, bool, "suppress");

/// A suppression lifted; answers whether there was one in force.
pub struct Lift {
    pub tenant_id: String,
    pub channel: herald_core::model::Channel,
    pub address: String,
    pub now_ms: i64,
}
op!(Lift, bool, "lift_suppression");

/// Vendor receipts from one account, applied to their deliveries.
pub struct ApplyReceipts {
    pub provider: String,
    pub receipts: Vec<herald_core::receipt::VendorReceipt>,
    pub now_ms: i64,
}
op!(
    ApplyReceipts,
    Vec<herald_core::store::ReceiptApplied>,
    "receipts"
);

/// A tenant's callback set, or removed (`None`).
pub struct SetCallback {
    pub tenant_id: String,
    pub callback: Option<herald_core::store::Callback>,
}
op!(SetCallback, (), "set_callback");

/// What of a tenant's notification has not gone out, cancelled; answers
/// each delivery as the cancel left it (`None`: no such notification).
pub struct Cancel {
    pub tenant_id: String,
    pub id: uuid::Uuid,
    pub now_ms: i64,
}
op!(
    Cancel,
    Option<Vec<herald_core::store::CancelledDelivery>>,
    "cancel"
);

/// A tenant's recipient stored (`if_version`: only over that version; 0:
/// only when absent).
pub struct PutRecipient {
    pub tenant_id: String,
    pub id: String,
    pub profile: herald_core::recipient::Profile,
    pub if_version: Option<i64>,
    pub now_ms: i64,
}
op!(
    PutRecipient,
    herald_core::store::PutRecipient,
    "put_recipient"
);

/// Many of a tenant's recipients stored, each replacing its id's (no two
/// with one id: the caller keeps the last); answers how many.
pub struct PutRecipients {
    pub tenant_id: String,
    pub batch: Vec<(String, herald_core::recipient::Profile)>,
    pub now_ms: i64,
}
op!(PutRecipients, usize, "put_recipients");

/// A recipient's preferences set (`if_version`: only over that version);
/// answers the new version, if written.
pub struct SetPreferences {
    pub tenant_id: String,
    pub id: String,
    pub preferences: herald_core::recipient::Preferences,
    pub if_version: Option<i64>,
    pub now_ms: i64,
}
op!(SetPreferences, Option<i64>, "set_preferences");

/// A tenant's default preferences set.
pub struct SetTenantPreferences {
    pub tenant_id: String,
    pub preferences: herald_core::recipient::TenantPreferences,
}
op!(SetTenantPreferences, (), "set_tenant_preferences");

/// A provider's circuit held open by hand (`Some`), or released (`None`);
/// answers whether a hold was there before.
pub struct HoldCircuit {
    pub provider: String,
    pub hold: Option<herald_core::store::CircuitHold>,
}
op!(HoldCircuit, bool, "hold_circuit");

/// A tenant's recipient erased; answers what was stored.
pub struct DeleteRecipient {
    pub tenant_id: String,
    pub id: String,
}
op!(
    DeleteRecipient,
    Option<herald_core::recipient::StoredRecipient>,
    "delete_recipient"
);

/// A small real write (a padded row in `health_probe`), to learn whether
/// the store takes writes again after they failed.
pub struct Probe;
op!(Probe, (), "probe");
