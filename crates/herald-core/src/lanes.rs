//! The priority lanes: a map with one value per lane (`Lanes<T>`, instead
//! of arrays indexed by hand), and how each lane routes and retries
//! (`LaneRules`: a plain value with decision functions).

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

use crate::model::Priority;
use crate::provider::Outcome;
use crate::retry::RetryPolicy;

/// One value per lane, indexed by `Priority`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lanes<T>([T; 4]);

impl<T> Lanes<T> {
    /// A value for each lane, highest first.
    pub fn from_fn(mut f: impl FnMut(Priority) -> T) -> Self {
        Lanes(Priority::ALL.map(&mut f))
    }

    /// A value for each lane, highest first, or the first lane's error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Priority) -> Result<T, E>) -> Result<Self, E> {
        let [critical, high, normal, low] = Priority::ALL;
        Ok(Lanes([f(critical)?, f(high)?, f(normal)?, f(low)?]))
    }

    /// The values, highest lane first.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// Each lane with its value, highest first.
    pub fn iter(&self) -> impl Iterator<Item = (Priority, &T)> {
        Priority::ALL.into_iter().zip(self.0.iter())
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Lanes<U> {
        Lanes(self.0.map(f))
    }
}

/// Values in lane order: critical, high, normal, low.
impl<T> From<[T; 4]> for Lanes<T> {
    fn from(values: [T; 4]) -> Self {
        Lanes(values)
    }
}

/// The values, highest lane first.
impl<'a, T> IntoIterator for &'a Lanes<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> Index<Priority> for Lanes<T> {
    type Output = T;
    fn index(&self, lane: Priority) -> &T {
        &self.0[lane.index()]
    }
}

impl<T> IndexMut<Priority> for Lanes<T> {
    fn index_mut(&mut self, lane: Priority) -> &mut T {
        &mut self.0[lane.index()]
    }
}

/// When a lane moves on to the next provider in the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    /// At once, when the circuit is open or an attempt fails (transient
    /// error or throttling): a 2FA code must arrive.
    OnFailure,
    /// Only past a provider whose circuit is open.
    WhenOpen,
    /// Never: wait for the primary.
    Never,
}

/// How one lane routes and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneRules {
    pub failover: Failover,
    /// Whether an ambiguous outcome (the vendor may have accepted: a timeout
    /// after sending) may fail over. Yes risks a second copy through another
    /// vendor; no keeps the delivery on that provider, where the same key
    /// lets a vendor that honours it drop the repeat.
    pub failover_ambiguous: bool,
    pub retry: RetryPolicy,
}

impl LaneRules {
    /// May a delivery skip a provider whose circuit is open?
    pub fn skips_open_circuits(&self) -> bool {
        self.failover != Failover::Never
    }

    /// After `outcome` from one provider, should the same attempt go on to
    /// the next provider?
    pub fn fails_over_after(&self, outcome: &Outcome) -> bool {
        if self.failover != Failover::OnFailure {
            return false;
        }
        match outcome {
            Outcome::Transient { ambiguous, .. } => !ambiguous || self.failover_ambiguous,
            // The vendor refused the credential before taking anything.
            Outcome::RateLimited { .. } | Outcome::Account { .. } => true,
            Outcome::Accepted { .. } | Outcome::Permanent { .. } => false,
        }
    }

    /// Whether later attempts must stay with the provider that gave this
    /// outcome (it may hold the message already; only the same provider can
    /// drop a repeat of the key).
    pub fn pins_after(&self, outcome: &Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Transient {
                ambiguous: true,
                ..
            }
        ) && !self.failover_ambiguous
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lanes_are_indexed_by_priority_highest_first() {
        let mut l = Lanes::from_fn(|p| p.as_str().len());
        assert_eq!(l[Priority::Critical], "critical".len());
        l[Priority::Low] += 10;
        assert_eq!(l[Priority::Low], 13);
        let order: Vec<Priority> = l.iter().map(|(p, _)| p).collect();
        assert_eq!(order, Priority::ALL.to_vec());
        assert_eq!(Lanes::from([1, 2, 3, 4]).values().sum::<i32>(), 10);
    }

    fn rules(failover: Failover, failover_ambiguous: bool) -> LaneRules {
        LaneRules {
            failover,
            failover_ambiguous,
            retry: RetryPolicy {
                max_attempts: 5,
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
        }
    }

    fn transient(ambiguous: bool) -> Outcome {
        Outcome::Transient {
            reason: "x".into(),
            ambiguous,
        }
    }

    #[test]
    fn on_failure_moves_on_after_transient_and_throttling() {
        let critical = rules(Failover::OnFailure, true);
        assert!(critical.skips_open_circuits());
        assert!(critical.fails_over_after(&transient(false)));
        assert!(critical.fails_over_after(&transient(true)));
        assert!(critical.fails_over_after(&Outcome::RateLimited {
            retry_after: None,
            reason: "429".into()
        }));
        assert!(!critical.fails_over_after(&Outcome::permanent("bad number")));
        let revoked = Outcome::Account {
            reason: "401".into(),
        };
        assert!(critical.fails_over_after(&revoked), "nothing was sent");
        assert!(!critical.pins_after(&revoked));
        assert!(!critical.pins_after(&transient(true)));
    }

    #[test]
    fn ambiguous_outcomes_stay_put_unless_allowed() {
        let high = rules(Failover::OnFailure, false);
        assert!(high.fails_over_after(&transient(false)));
        assert!(!high.fails_over_after(&transient(true)));
        assert!(high.pins_after(&transient(true)));
        assert!(!high.pins_after(&transient(false)));
    }

    #[test]
    fn normal_skips_only_open_circuits_and_low_never_moves() {
        let normal = rules(Failover::WhenOpen, false);
        assert!(normal.skips_open_circuits());
        assert!(!normal.fails_over_after(&transient(false)));
        let low = rules(Failover::Never, false);
        assert!(!low.skips_open_circuits());
        assert!(!low.fails_over_after(&transient(false)));
    }
}
