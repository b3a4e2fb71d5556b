//! The store's ports: Herald's durable state, seen by role. Each caller
//! names only the role it uses — the API takes notifications in
//! (`Intake`), workers lease and record deliveries (`Queue`), the relay
//! drains the outbox (`Outbox`), housekeeping expires and purges (`Upkeep`),
//! operators handle dead letters (`DeadLetters`) and keys (`Tenants`),
//! the API, CLI and engine keep suppression lists (`Suppressions`), the
//! API keeps the tenants' recipients (`Recipients`), operators hold
//! circuits open by hand (`Circuits`) —
//! and `Store` is their sum, so wiring passes one value. SQLite,
//! PostgreSQL and the in-memory store implement them all, with the same
//! meaning (one behavioural suite runs against each).
//!
//! Tooling-only reads (`Reports`: every delivery, for the demo and the
//! benchmark) are not part of `Store`.

use std::sync::Arc;

mod circuits;
mod dead_letters;
mod intake;
mod outbox;
mod queue;
mod receipts;
mod recipients;
mod reports;
mod suppressions;
mod tenants;
mod upkeep;

pub use circuits::*;
pub use dead_letters::*;
pub use intake::*;
pub use outbox::*;
pub use queue::*;
pub use receipts::*;
pub use recipients::*;
pub use reports::*;
pub use suppressions::*;
pub use tenants::*;
pub use upkeep::*;

/// Every role trait, for code that calls a store in several roles (wiring,
/// tests): `use herald_core::store::roles::*`.
pub mod roles {
    pub use super::{
        Circuits, DeadLetters, Depths, Health, Intake, Outbox, Queue, Receipts, Recipients,
        Reports, Store, Suppressions, Tenants, Upkeep,
    };
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Down, unreachable, out of disk, too slow: nothing is wrong with the
    /// operation, and it may succeed once the store is back.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] Cause),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(#[source] Cause),
    /// The store refused this operation itself (a constraint it breaks):
    /// trying it again will not help.
    #[error("the store refused the operation: {0}")]
    Rejected(#[source] Cause),
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

/// What went wrong, in words, and the driver's own error where there is
/// one (kept as the source, so a caller or a log can walk down to it).
/// Shared, so a `StoreError` stays cheap to clone: a writer hands one
/// failure to every caller of a batch.
#[derive(Debug, Clone)]
pub struct Cause {
    what: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// `what` happened because of `source` (said as `what: source`).
    pub fn new(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause {
            what: format!("{what}: {source}"),
            source: Some(Arc::new(source)),
        }
    }

    /// The driver's error itself, in its own words.
    pub fn of(source: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause {
            what: source.to_string(),
            source: Some(Arc::new(source)),
        }
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Cause {
        Cause { what, source: None }
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Cause {
        Cause::from(what.to_owned())
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
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
    Intake
    + Queue
    + Outbox
    + Upkeep
    + DeadLetters
    + Tenants
    + Suppressions
    + Receipts
    + Recipients
    + Circuits
    + Health
    + 'static
{
}

impl<T> Store for T where
    T: Intake
        + Queue
        + Outbox
        + Upkeep
        + DeadLetters
        + Tenants
        + Suppressions
        + Receipts
        + Recipients
        + Circuits
        + Health
        + 'static
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_store_error_keeps_the_drivers_error_as_its_source() {
        let disk = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        let e = StoreError::Unavailable(Cause::new("migrations failed", disk));
        assert_eq!(
            e.to_string(),
            "the store is unavailable: migrations failed: disk full"
        );
        let cause = e.source().expect("the cause");
        let io = cause.source().expect("the driver's error");
        assert_eq!(
            io.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::StorageFull)
        );
        assert!(e.clone().is_outage(), "clones keep their meaning");
        let plain = StoreError::Corrupt("priority 9".into());
        assert!(plain.source().is_some_and(|c| c.source().is_none()));
    }
}
