//! The front door's rate limit: a token bucket per tenant (governor), counted
//! in notifications, so one tenant's runaway job cannot take the whole
//! engine. A refusal says when to come back (`Retry-After`).

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::problem::ApiError;

pub struct TenantLimiter {
    /// `None`: no limit configured.
    buckets: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl TenantLimiter {
    /// `per_second` 0 turns the limit off; `burst` is the bucket's size.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let buckets = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Takes `n` notifications from the tenant's allowance.
    pub fn check(&self, tenant: &str, n: usize) -> Result<(), ApiError> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match buckets.check_key_n(&tenant.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::RateLimited(
                not_until.wait_time_from(self.clock.now()),
            )),
            // More at once than the bucket ever holds: no wait would help.
            Err(_) => Err(ApiError::field(
                "notifications",
                "more notifications in one request than this tenant's rate-limit burst allows",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_tenant_runs_out_and_others_do_not() {
        let l = TenantLimiter::new(1, 3);
        assert!(l.check("a", 3).is_ok());
        let Err(ApiError::RateLimited(wait)) = l.check("a", 1) else {
            panic!("tenant a is out of tokens");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check("b", 1).is_ok(), "buckets are per tenant");
        assert!(
            matches!(l.check("c", 4), Err(ApiError::Invalid(_))),
            "bigger than the bucket"
        );
    }

    #[test]
    fn zero_means_off() {
        let l = TenantLimiter::new(0, 0);
        assert!(l.check("a", 1_000_000).is_ok());
    }
}
