//! Herald's domain: types, the delivery state machine, validation, policies
//! (lanes and their routing, the pool's shares, retries, the circuit
//! breaker, leases) and the store's roles, the `Bus` and `Provider`
//! extension points, and the narrow interfaces through which a node reports
//! on its parts (`status`).
//! No I/O lives here.

pub mod admission;
pub mod attempt;
pub mod breaker;
pub mod bus;
pub mod events;
pub mod lanes;
pub mod lease;
pub mod model;
pub mod pool;
pub mod provider;
pub mod receipt;
pub mod recipient;
pub mod retry;
pub mod secret;
pub mod sms;
pub mod status;
pub mod store;
pub mod suppression;
pub mod validate;

pub use model::{Channel, DeliveryState, NotificationRequest, Priority};

/// Milliseconds since the Unix epoch: Herald's one clock for stored times
/// and every decision made by the time (leases, retries, circuits).
pub fn now_ms() -> i64 {
    clock::now_ms()
}

pub mod clock {
    //! The clock behind `now_ms`: the system's, unless a test on this
    //! thread has put its own in (a paused tokio clock, say, so an engine on
    //! a current-thread runtime lives through a 60 s circuit in
    //! milliseconds). Production code never sets one.

    use std::cell::RefCell;

    type Source = Box<dyn Fn() -> i64>;

    thread_local! {
        static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
    }

    pub(crate) fn now_ms() -> i64 {
        SOURCE
            .with(|s| s.borrow().as_ref().map(|f| f()))
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }

    /// Makes `now_ms` on this thread read `source` until the guard drops.
    pub fn set_for_this_thread(source: impl Fn() -> i64 + 'static) -> Guard {
        SOURCE.with(|s| *s.borrow_mut() = Some(Box::new(source)));
        Guard(())
    }

    /// Puts the system clock back when dropped.
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = None);
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_thread_may_run_on_a_clock_of_its_own_and_gets_the_system_one_back() {
            let system = super::now_ms();
            {
                let _g = super::set_for_this_thread(|| 42);
                assert_eq!(crate::now_ms(), 42);
                let other = std::thread::spawn(crate::now_ms).join().expect("thread");
                assert!(other >= system, "other threads keep the system clock");
            }
            assert!(crate::now_ms() >= system);
        }
    }
}

/// A duration in whole milliseconds, as stored times count them (saturating
/// at `i64::MAX`, which no real duration reaches).
pub fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
