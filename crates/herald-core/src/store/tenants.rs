//! `Tenants`: API keys and the tenants they belong to (auth, the CLI), and
//! each tenant's callback: where Herald tells it what became of its
//! notifications.

use async_trait::async_trait;

use super::StoreError;
use crate::model::DeliveryState;

/// A tenant's callback: the URL Herald posts events to (a signed Standard
/// Webhooks request, delivered as any webhook), and which events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    /// The delivery states reported (`notification.<state>` events).
    pub events: Vec<DeliveryState>,
}

#[async_trait]
pub trait Tenants: Send + Sync {
    /// A tenant's id by its name.
    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// The tenant that owns an API key (by its SHA-256).
    async fn tenant_for_key(&self, key_hash: &[u8]) -> Result<Option<String>, StoreError>;
    /// Creates the tenant if needed and adds a key to it; returns the tenant id.
    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        label: &str,
    ) -> Result<String, StoreError>;
    /// Sets (or, with `None`, removes) the tenant's callback.
    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: Option<Callback>,
    ) -> Result<(), StoreError>;
    /// The tenant's callback, if it has one.
    async fn callback(&self, tenant_id: &str) -> Result<Option<Callback>, StoreError>;
}
