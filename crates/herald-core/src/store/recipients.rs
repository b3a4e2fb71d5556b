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

/// What `update_profile` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// No such recipient.
    Missing,
    /// The change left the profile as it was: nothing written.
    Unchanged,
    Written {
        profile: Box<Profile>,
        version: i64,
        at_ms: i64,
    },
    /// Other writes kept coming between the read and the write.
    Conflict,
}

/// Changes a stored recipient's profile as a compare-and-set on its
/// version: read, `change`, write over the version read; read again (up to
/// `rounds` times) when another write came between, so concurrent changes
/// never lose each other. `change` gives the new profile, `None` to leave
/// it, or an error that ends the update.
pub async fn update_profile<E: From<StoreError>>(
    store: &dyn Recipients,
    tenant_id: &str,
    id: &str,
    rounds: usize,
    mut change: impl FnMut(Profile) -> Result<Option<Profile>, E>,
) -> Result<Updated, E> {
    for _ in 0..rounds {
        let Some(current) = store
            .recipients(tenant_id, std::slice::from_ref(&id.to_owned()))
            .await?
            .into_iter()
            .next()
        else {
            return Ok(Updated::Missing);
        };
        let Some(profile) = change(current.profile)? else {
            return Ok(Updated::Unchanged);
        };
        let at_ms = crate::now_ms();
        let put = store
            .put_recipient(tenant_id, id, profile.clone(), Some(current.version), at_ms)
            .await?;
        if let PutRecipient::Written { version, .. } = put {
            return Ok(Updated::Written {
                profile: Box::new(profile),
                version,
                at_ms,
            });
        }
    }
    Ok(Updated::Conflict)
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
    /// Sets a recipient's preferences (the profile is untouched), bumping
    /// the recipient's version; with `if_version`, only over that version.
    /// The new version, or `None` when nothing was written (no such
    /// recipient, or another version).
    async fn set_preferences(
        &self,
        tenant_id: &str,
        id: &str,
        preferences: Preferences,
        if_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
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
