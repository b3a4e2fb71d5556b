//! A worker's lease on a claimed delivery, as a plain value: whether a
//! vendor call may still start under it.
//!
//! A claim holds a delivery until `until_ms`; after that another worker may
//! take it over and call a vendor itself. So a call may start only if it
//! will be over, and its outcome written, before the lease runs out: not
//! merely "the lease still holds now", because a call started in the last
//! second of a lease runs on into the next holder's. The engine asks this
//! right before every vendor call, after every wait (send rate, concurrency
//! slot, breaker, the DNS check, the store note before a failover).

use std::time::Duration;

use crate::ms;

/// Kept free at the end of every lease: for the request to leave after the
/// check, for the outcome to be written, and for the nodes' clocks to
/// disagree a little (a lease is judged by the claimer's clock, a takeover
/// by the taker's).
pub const MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When the lease runs out, in Unix milliseconds.
    pub until_ms: i64,
}

impl Lease {
    /// Whether a call that may last `longest` can start at `now_ms` and be
    /// over, with `MARGIN` to spare, before the lease runs out.
    pub fn covers(&self, now_ms: i64, longest: Duration) -> bool {
        now_ms
            .saturating_add(ms(longest))
            .saturating_add(ms(MARGIN))
            <= self.until_ms
    }

    /// How much longer, from `now_ms`, one may wait (for a slot, a token)
    /// and still start such a call; zero once it could no longer start.
    pub fn slack(&self, now_ms: i64, longest: Duration) -> Duration {
        let left = self
            .until_ms
            .saturating_sub(now_ms)
            .saturating_sub(ms(longest))
            .saturating_sub(ms(MARGIN));
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: Duration = Duration::from_secs(10);

    #[test]
    fn a_call_starts_only_if_it_ends_before_the_lease_does() {
        let lease = Lease { until_ms: 60_000 };
        assert!(lease.covers(0, CALL));
        // 10 s of call and 0.5 s of margin must fit: the last start is 49.5 s.
        assert!(lease.covers(49_500, CALL));
        assert!(!lease.covers(49_501, CALL));
        assert!(!lease.covers(60_000, CALL), "the lease has run out");
        assert!(!lease.covers(90_000, CALL), "long gone");
    }

    #[test]
    fn slack_is_the_wait_left_before_a_call_could_not_start() {
        let lease = Lease { until_ms: 60_000 };
        assert_eq!(lease.slack(0, CALL), Duration::from_millis(49_500));
        assert_eq!(lease.slack(49_000, CALL), Duration::from_millis(500));
        assert_eq!(lease.slack(49_500, CALL), Duration::ZERO);
        assert_eq!(lease.slack(70_000, CALL), Duration::ZERO);
        // Waiting out the slack leaves a lease that still covers the call.
        let now = 12_345;
        let after = now + ms(lease.slack(now, CALL));
        assert!(lease.covers(after, CALL));
        assert!(!lease.covers(after + 1, CALL));
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        assert!(Lease { until_ms: i64::MAX }.covers(0, CALL));
        assert!(!Lease { until_ms: 0 }.covers(i64::MAX, Duration::MAX));
        assert_eq!(
            Lease { until_ms: i64::MIN }.slack(i64::MAX, Duration::MAX),
            Duration::ZERO
        );
    }
}
