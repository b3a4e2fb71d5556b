//! `Recipients`: the people a tenant notifies, under the tenant's own id
//! for each (`recipient::Profile`).

use async_trait::async_trait;

use super::StoreError;
use crate::recipient::{Preferences, Profile, StoredRecipient, TenantPreferences};

/// What a write of a profile did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutRecipient {
    /// Written; its new version, and whether the recipient is new.
    Written { version: i64, created: bool },
    /// Another write came first: the version asked for is not the stored one.
    Conflict,
}

#[async_trait]
pub trait Recipients: Send + Sync {
    /// Stores a tenant's recipient, replacing what was there. With
    /// `if_version`, only when the stored version is that one (0: only when
    /// there is none), for a read-modify-write that must not lose another.
    async fn put_recipient(
        &self,
        tenant_id: &str,
        id: &str,
        profile: Profile,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<PutRecipient, StoreError>;
    /// Stores many of a tenant's recipients at once, each replacing what
    /// was stored under its id (an import). A later entry with the same id
    /// wins. How many were written.
    async fn put_recipients(
        &self,
        tenant_id: &str,
        batch: Vec<(String, Profile)>,
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    /// The tenant's recipients among `ids` (any order; unknown ids are
    /// left out).
    async fn recipients(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<StoredRecipient>, StoreError>;
    /// Sets a recipient's preferences (the profile is untouched); whether
    /// the recipient is stored.
    async fn set_preferences(
        &self,
        tenant_id: &str,
        id: &str,
        preferences: Preferences,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The tenant's defaults and required categories (empty when unset).
    async fn tenant_preferences(&self, tenant_id: &str) -> Result<TenantPreferences, StoreError>;
    async fn set_tenant_preferences(
        &self,
        tenant_id: &str,
        preferences: TenantPreferences,
    ) -> Result<(), StoreError>;
    /// Erases a recipient (profile and preferences); what was stored, if
    /// anything.
    async fn delete_recipient(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<StoredRecipient>, StoreError>;
}
