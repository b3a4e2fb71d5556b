//! Herald's fan-out bus. The `local` bus is the embedded default: the store's
//! delivery rows are the queue, claimed with leases. `kafka` is the fleet's:
//! the outbox relay publishes each notification's event to its lane's topic,
//! and each channel's consumer group takes its deliveries from it.

pub mod kafka;
mod local;

pub use local::LocalBus;
