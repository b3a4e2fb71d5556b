//! How one channel's worker pool is shared among the lanes: how many more
//! deliveries of a lane may start, given what is in flight. A plain value
//! with a decision function, so the policy is tested without any I/O.

use crate::lanes::Lanes;
use crate::model::Priority;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Deliveries in flight at once for the channel.
    pub concurrency: usize,
    /// Slots only critical work may use.
    pub reserved_critical: usize,
    /// The most of the pool the low lane may hold, as a fraction; so a
    /// newsletter flood cannot occupy every slot when a reset arrives.
    pub low_max_share: f64,
}

impl PoolPolicy {
    /// How many more deliveries of `lane` may start now.
    pub fn room(&self, lane: Priority, in_flight: &Lanes<usize>) -> usize {
        let total: usize = in_flight.values().sum();
        let free = self.concurrency.saturating_sub(total);
        if lane == Priority::Critical {
            return free;
        }
        let non_critical: usize = total - in_flight[Priority::Critical];
        let shared = self.concurrency.saturating_sub(self.reserved_critical);
        let room = free.min(shared.saturating_sub(non_critical));
        if lane == Priority::Low {
            room.min(self.low_cap().saturating_sub(in_flight[Priority::Low]))
        } else {
            room
        }
    }

    fn low_cap(&self) -> usize {
        // Float to count: the share is validated to be in (0, 1].
        let cap = (self.concurrency as f64 * self.low_max_share).floor() as usize;
        cap.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    fn policy() -> PoolPolicy {
        PoolPolicy {
            concurrency: 10,
            reserved_critical: 2,
            low_max_share: 0.5,
        }
    }

    #[test]
    fn empty_pool() {
        let p = policy();
        assert_eq!(p.room(Critical, &Lanes::default()), 10);
        assert_eq!(p.room(High, &Lanes::default()), 8);
        assert_eq!(p.room(Low, &Lanes::default()), 5);
    }

    #[test]
    fn critical_keeps_its_reserve_when_others_fill_the_pool() {
        let p = policy();
        let busy = Lanes::from([0, 4, 4, 0]);
        assert_eq!(p.room(High, &busy), 0);
        assert_eq!(p.room(Normal, &busy), 0);
        assert_eq!(p.room(Critical, &busy), 2);
    }

    #[test]
    fn low_is_throttled_to_its_share() {
        let p = policy();
        assert_eq!(p.room(Low, &Lanes::from([0, 0, 0, 5])), 0);
        assert_eq!(p.room(High, &Lanes::from([0, 0, 0, 5])), 3);
        assert_eq!(p.room(Low, &Lanes::from([0, 0, 2, 3])), 2);
    }

    #[test]
    fn a_full_pool_has_no_room() {
        let p = policy();
        assert_eq!(p.room(Critical, &Lanes::from([10, 0, 0, 0])), 0);
        assert_eq!(p.room(Critical, &Lanes::from([2, 3, 3, 2])), 0);
    }
}
