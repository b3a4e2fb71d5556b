//! `Circuits`: provider circuits held open by hand (the console, the API),
//! kept in the store so that every node of a fleet holds them: each
//! delivering node reads the holds every few seconds.

use async_trait::async_trait;

use super::StoreError;

/// A provider account's circuit held open by an operator: no call goes to
/// it until the hold is released, whatever its automatic circuit says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitHold {
    /// The provider account's name (`[providers.<name>]`).
    pub provider: String,
    /// Who held it (the name given at the console's sign-in, or the key's
    /// tenant).
    pub by: String,
    pub reason: String,
    pub since_ms: i64,
}

#[async_trait]
pub trait Circuits: Send + Sync {
    /// Holds a provider's circuit open (replacing an earlier hold on it).
    async fn hold_circuit(&self, hold: CircuitHold) -> Result<(), StoreError>;
    /// Releases a hold; `false` when there was none.
    async fn release_circuit(&self, provider: &str) -> Result<bool, StoreError>;
    /// Every hold, by provider name.
    async fn circuit_holds(&self) -> Result<Vec<CircuitHold>, StoreError>;
}
