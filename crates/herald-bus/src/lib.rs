//! Herald's fan-out bus. The `local` bus is the embedded default: the store's
//! delivery rows are the queue, claimed with leases. Kafka joins it as a
//! second variant of the same `Bus` trait.

mod local;

pub use local::LocalBus;
