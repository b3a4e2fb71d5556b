//! One delivery attempt's decisions, as plain values: which providers of
//! its route the attempt may use and whether it starts a pin (`plan`), and,
//! fed what each try came to, whether to go on to the next provider and
//! where the delivery goes next (`Walk`). The engine performs the effects
//! (the store note before a failover, the guarded vendor call) and asks
//! these at each step; they are tested here, table by table, without I/O.

use crate::lanes::LaneRules;
use crate::provider::Outcome;
use crate::store::Next;

/// The longest a deferred delivery (every usable circuit open) waits past
/// the time its first provider is usable again, spread so the probes are
/// not met by a stampede.
pub const DEFER_SPREAD_MS: f64 = 1_000.0;

/// Where an attempt may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Positions in the channel's route, in the order to try them.
    pub providers: Vec<usize>,
    /// The provider this attempt pins the delivery to, if it starts a pin.
    pub pin: Option<String>,
    /// Why the plan departs from the route, for the log.
    pub note: Option<String>,
}

/// The providers an attempt may use, of the channel's `route` (names, the
/// primary first): the whole route; or only the provider the delivery is
/// pinned to (an earlier ambiguous outcome it may not fail over from); or,
/// when it is taken over in doubt (its last holder may have been mid-call)
/// and the lane may not fail over from an ambiguous outcome, only the
/// provider that was being called — the one noted (`calling`), else the
/// primary — which the attempt then pins.
pub fn plan(
    route: &[&str],
    lane: &LaneRules,
    pinned: Option<&str>,
    in_doubt: bool,
    calling: Option<&str>,
) -> Plan {
    let position = |name: &str| route.iter().position(|r| *r == name);
    let whole = |note| Plan {
        providers: (0..route.len()).collect(),
        pin: None,
        note,
    };
    if let Some(pin) = pinned {
        return match position(pin) {
            Some(i) => Plan {
                providers: vec![i],
                pin: None,
                note: None,
            },
            None => whole(Some(format!(
                "the pinned provider {pin} is no longer on the route; using the whole route"
            ))),
        };
    }
    if in_doubt && !lane.failover_ambiguous {
        let held = calling.or(route.first().copied());
        if let Some(i) = held.and_then(position) {
            return Plan {
                providers: vec![i],
                pin: Some(route[i].to_owned()),
                note: None,
            };
        }
    }
    whole(None)
}

/// How an attempt came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    pub next: Next,
    /// Why the delivery is not sent yet or ended as it did.
    pub error: Option<String>,
    /// The provider later attempts must stay with, if this attempt pins it.
    pub pin: Option<String>,
}

/// An attempt's walk along its planned providers.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    lane: &'a LaneRules,
    last: Option<Outcome>,
    usable_again_at_ms: Option<i64>,
    skipped: Vec<String>,
    pin: Option<String>,
    lease_run_out: bool,
}

impl<'a> Walk<'a> {
    /// A walk starting with the plan's pin.
    pub fn new(lane: &'a LaneRules, pin: Option<String>) -> Self {
        Self {
            lane,
            last: None,
            usable_again_at_ms: None,
            skipped: Vec::new(),
            pin,
            lease_run_out: false,
        }
    }

    /// An attempt that ended before any provider: the destination could
    /// not be reached (a webhook host that does not resolve now), which
    /// counts as a transient failure.
    pub fn unreachable(&mut self, why: String) {
        self.last = Some(Outcome::Transient {
            reason: why,
            ambiguous: false,
        });
    }

    /// A provider was not called (open circuit, send rate used up) and is
    /// usable again at `retry_at_ms`. Whether to go on to the next: only a
    /// lane that may skip open circuits does.
    pub fn skipped(&mut self, retry_at_ms: i64, why: String) -> bool {
        self.usable_again_at_ms = Some(
            self.usable_again_at_ms
                .map_or(retry_at_ms, |t| t.min(retry_at_ms)),
        );
        self.skipped.push(why);
        self.lane.skips_open_circuits()
    }

    /// No call may be made under this claim any more (its lease is too
    /// short for one, or the note a failover needs could not be written):
    /// the walk stops.
    pub fn must_stop(&mut self, why: String, lease_run_out: bool) {
        self.skipped.push(why);
        self.lease_run_out |= lease_run_out;
    }

    /// `provider` was called and answered `outcome`. Whether to go on to
    /// the next provider (`more`: there is one).
    pub fn called(&mut self, provider: &str, outcome: Outcome, more: bool) -> bool {
        if self.lane.pins_after(&outcome) {
            self.pin = Some(provider.to_owned());
        }
        let go_on = more && self.lane.fails_over_after(&outcome);
        self.last = Some(outcome);
        go_on
    }

    /// Where the delivery goes next, at `now_ms`, for attempt number
    /// `attempt` (from 1); `jitter` in [0, 1) spreads retries and
    /// deferrals.
    pub fn finish(
        self,
        attempt: u32,
        now_ms: i64,
        expires_at_ms: Option<i64>,
        jitter: f64,
    ) -> Conclusion {
        let skipped = || Some(self.skipped.join("; "));
        let (next, error) = match &self.last {
            Some(outcome) => (
                self.lane
                    .retry
                    .next(outcome, attempt, now_ms, expires_at_ms, jitter),
                outcome.reason().map(str::to_owned),
            ),
            // Nothing was sent, and this claim may no longer send: back in
            // the queue at once, for a claim with a fresh lease. Not an
            // attempt.
            None if self.lease_run_out => (Next::Deferred(now_ms), skipped()),
            // No provider was called: wait for the first to be usable
            // again. Not an attempt, so it does not use up the tries.
            None => {
                let at =
                    self.usable_again_at_ms.unwrap_or(now_ms) + (jitter * DEFER_SPREAD_MS) as i64;
                let next = match expires_at_ms {
                    Some(exp) if at >= exp => Next::Expired,
                    _ => Next::Deferred(at),
                };
                (next, skipped())
            }
        };
        Conclusion {
            next,
            error,
            pin: self.pin,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lanes::Failover;
    use crate::retry::RetryPolicy;

    fn lane(failover: Failover, failover_ambiguous: bool) -> LaneRules {
        LaneRules {
            failover,
            failover_ambiguous,
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_secs(1),
                cap: Duration::from_secs(10),
            },
        }
    }

    fn critical() -> LaneRules {
        lane(Failover::OnFailure, true)
    }
    fn high() -> LaneRules {
        lane(Failover::OnFailure, false)
    }
    fn normal() -> LaneRules {
        lane(Failover::WhenOpen, false)
    }
    fn low() -> LaneRules {
        lane(Failover::Never, false)
    }

    fn transient(ambiguous: bool) -> Outcome {
        Outcome::Transient {
            reason: "twilio 503".into(),
            ambiguous,
        }
    }

    fn accepted() -> Outcome {
        Outcome::Accepted { vendor_id: None }
    }

    const ROUTE: &[&str] = &["twilio", "sns"];

    #[test]
    fn the_plan_is_the_route_unless_pinned_or_in_doubt() {
        // (lane, pinned, in_doubt, calling) → (providers, pin)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            LaneRules,
            Option<&str>,
            bool,
            Option<&str>,
            Vec<usize>,
            Option<&str>,
        )> = vec![
            (critical(), None, false, None, vec![0, 1], None),
            (high(), None, false, None, vec![0, 1], None),
            // Pinned: only that one, and no new pin.
            (critical(), Some("sns"), false, None, vec![1], None),
            (low(), Some("twilio"), true, Some("sns"), vec![0], None),
            // Pinned to one no longer on the route: the whole route.
            (high(), Some("gone"), false, None, vec![0, 1], None),
            // In doubt, no ambiguous failover: the provider being called,
            // pinned from now on.
            (high(), None, true, None, vec![0], Some("twilio")),
            (high(), None, true, Some("sns"), vec![1], Some("sns")),
            (normal(), None, true, Some("sns"), vec![1], Some("sns")),
            // In doubt, but the lane may fail over anyway: the route.
            (critical(), None, true, Some("sns"), vec![0, 1], None),
        ];
        for (lane, pinned, in_doubt, calling, providers, pin) in cases {
            let p = plan(ROUTE, &lane, pinned, in_doubt, calling);
            assert_eq!(
                p.providers, providers,
                "{lane:?} {pinned:?} {in_doubt} {calling:?}"
            );
            assert_eq!(
                p.pin.as_deref(),
                pin,
                "{lane:?} {pinned:?} {in_doubt} {calling:?}"
            );
        }
        assert!(plan(ROUTE, &high(), Some("gone"), false, None)
            .note
            .is_some());
        assert!(plan(&[], &high(), None, true, None).providers.is_empty());
    }

    #[test]
    fn critical_fails_over_at_once_and_normal_only_past_an_open_circuit() {
        // Critical: a 503 from the primary moves on in the same attempt.
        let l = critical();
        let mut w = Walk::new(&l, None);
        assert!(w.called("twilio", transient(false), true));
        assert!(!w.called("sns", accepted(), false));
        let c = w.finish(1, 1_000, None, 0.0);
        assert_eq!(c.next, Next::Sent { vendor_id: None });

        // Normal: a 503 stays with the primary (retried later)…
        let l = normal();
        let mut w = Walk::new(&l, None);
        assert!(!w.called("twilio", transient(false), true));
        assert!(matches!(
            w.finish(1, 1_000, None, 0.0).next,
            Next::RetryAt(_)
        ));
        // …but an open circuit is skipped.
        let mut w = Walk::new(&l, None);
        assert!(w.skipped(61_000, "twilio: circuit open".into()));
        assert!(!w.called("sns", accepted(), false));
        assert_eq!(
            w.finish(1, 1_000, None, 0.0).next,
            Next::Sent { vendor_id: None }
        );
    }

    #[test]
    fn low_waits_for_its_primary_without_using_an_attempt() {
        let l = low();
        let mut w = Walk::new(&l, None);
        assert!(!w.skipped(61_000, "twilio: circuit open".into()));
        let c = w.finish(1, 1_000, None, 0.5);
        // Deferred to when the circuit reopens, plus up to a second.
        assert_eq!(c.next, Next::Deferred(61_500));
        assert_eq!(c.error.as_deref(), Some("twilio: circuit open"));
        // The earliest of several skipped providers decides.
        let l = critical();
        let mut w = Walk::new(&l, None);
        assert!(w.skipped(90_000, "twilio: circuit open".into()));
        assert!(w.skipped(70_000, "sns: circuit open".into()));
        assert_eq!(w.finish(1, 1_000, None, 0.0).next, Next::Deferred(70_000));
    }

    #[test]
    fn a_deferral_past_the_ttl_expires() {
        let l = low();
        let mut w = Walk::new(&l, None);
        w.skipped(61_000, "twilio: circuit open".into());
        assert_eq!(w.finish(1, 1_000, Some(30_000), 0.0).next, Next::Expired);
    }

    #[test]
    fn ambiguous_outcomes_pin_where_the_lane_may_not_fail_over() {
        let l = high();
        let mut w = Walk::new(&l, None);
        assert!(
            !w.called("twilio", transient(true), true),
            "no failover after an ambiguous timeout"
        );
        let c = w.finish(1, 1_000, None, 0.0);
        assert_eq!(c.pin.as_deref(), Some("twilio"));
        assert!(matches!(c.next, Next::RetryAt(_)));
        // Critical may fail over, and pins nothing.
        let l = critical();
        let mut w = Walk::new(&l, None);
        assert!(w.called("twilio", transient(true), true));
        assert!(w.finish(1, 1_000, None, 0.0).pin.is_none());
        // A pin the plan started stays.
        let l = high();
        let w = Walk::new(&l, Some("sns".into()));
        assert_eq!(w.finish(1, 1_000, None, 0.0).pin.as_deref(), Some("sns"));
    }

    #[test]
    fn permanent_errors_never_fail_over_and_throttling_does_on_failure() {
        let l = critical();
        let mut w = Walk::new(&l, None);
        let bad = Outcome::permanent("invalid number");
        assert!(!w.called("twilio", bad, true));
        assert_eq!(w.finish(1, 1_000, None, 0.0).next, Next::Failed);
        let mut w = Walk::new(&l, None);
        let throttled = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(5)),
            reason: "429".into(),
        };
        assert!(w.called("twilio", throttled, true));
    }

    #[test]
    fn attempts_run_out_into_dead_letters() {
        let l = normal();
        let mut w = Walk::new(&l, None);
        w.called("twilio", transient(false), false);
        assert_eq!(w.finish(3, 1_000, None, 0.0).next, Next::Dead);
    }

    #[test]
    fn a_lease_run_out_gives_the_delivery_back_at_once() {
        let l = critical();
        let mut w = Walk::new(&l, None);
        w.must_stop(
            "twilio: the lease ran out before the call could start".into(),
            true,
        );
        let c = w.finish(2, 5_000, Some(6_000), 0.9);
        assert_eq!(c.next, Next::Deferred(5_000));
        assert!(c.error.is_some_and(|e| e.contains("lease")));
        // After a call, the call's outcome decides, not the stop.
        let mut w = Walk::new(&l, None);
        assert!(w.called("twilio", transient(false), true));
        w.must_stop("sns: the failover could not be noted".into(), false);
        assert!(matches!(
            w.finish(1, 5_000, None, 0.0).next,
            Next::RetryAt(_)
        ));
    }

    #[test]
    fn an_unreachable_destination_is_a_transient_failure() {
        let l = normal();
        let mut w = Walk::new(&l, None);
        w.unreachable("cannot resolve hooks.example.com".into());
        let c = w.finish(1, 1_000, None, 0.0);
        assert!(matches!(c.next, Next::RetryAt(_)));
        assert_eq!(c.error.as_deref(), Some("cannot resolve hooks.example.com"));
    }
}
