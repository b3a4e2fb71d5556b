//! Herald's domain: types, the delivery state machine, validation, policies
//! (lanes and their routing, the pool's shares, retries, the circuit
//! breaker, leases) and the store's roles, the `Bus` and `Provider`
//! extension points.
//! No I/O lives here.

pub mod attempt;
pub mod breaker;
pub mod bus;
pub mod events;
pub mod lanes;
pub mod lease;
pub mod model;
pub mod pool;
pub mod provider;
pub mod retry;
pub mod secret;
pub mod store;
pub mod validate;

pub use model::{Channel, DeliveryState, NotificationRequest, Priority};

/// Milliseconds since the Unix epoch: Herald's one clock for stored times.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A duration in whole milliseconds, as stored times count them (saturating
/// at `i64::MAX`, which no real duration reaches).
pub fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
