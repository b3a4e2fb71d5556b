//! `Tenants`: API keys and the tenants they belong to (auth, the CLI).

use async_trait::async_trait;

use super::StoreError;

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
}
