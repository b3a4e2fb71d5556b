//! The store's ports: Herald's durable state, seen by role. Each caller
//! names only the role it uses — the API takes notifications in
//! (`Intake`), workers lease and record deliveries (`Queue`), the relay
//! drains the outbox (`Outbox`), housekeeping expires and purges (`Upkeep`),
//! operators handle dead letters (`DeadLetters`) and keys (`Tenants`) —
//! and `Store` is their sum, so wiring passes one value. SQLite,
//! PostgreSQL and the in-memory store implement them all, with the same
//! meaning (one behavioural suite runs against each).
//!
//! Tooling-only reads (`Reports`: every delivery, for the demo and the
//! benchmark) are not part of `Store`.

mod dead_letters;
mod intake;
mod outbox;
mod queue;
mod reports;
mod tenants;
mod upkeep;

pub use dead_letters::*;
pub use intake::*;
pub use outbox::*;
pub use queue::*;
pub use reports::*;
pub use tenants::*;
pub use upkeep::*;

/// Every role trait, for code that calls a store in several roles (wiring,
/// tests): `use herald_core::store::roles::*`.
pub mod roles {
    pub use super::{
        DeadLetters, Depths, Health, Intake, Outbox, Queue, Reports, Store, Tenants, Upkeep,
    };
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Down, unreachable, out of disk, too slow: nothing is wrong with the
    /// operation, and it may succeed once the store is back.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    /// The store refused this operation itself (a constraint it breaks):
    /// trying it again will not help.
    #[error("the store refused the operation: {0}")]
    Rejected(String),
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    /// Whether the store, not the operation, is at fault: the same
    /// operation may succeed later.
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}

/// Whether the store answers and takes writes now.
#[async_trait::async_trait]
pub trait Health: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Every role: what a backend implements and what wiring passes around.
/// Each caller narrows it to the role it uses (`Arc<dyn Store>` coerces to
/// `Arc<dyn Queue>`, and so on).
pub trait Store:
    Intake + Queue + Outbox + Upkeep + DeadLetters + Tenants + Health + 'static
{
}

impl<T> Store for T where
    T: Intake + Queue + Outbox + Upkeep + DeadLetters + Tenants + Health + 'static
{
}
