//! The circuit breaker policy, one per provider account: a plain value with
//! decision functions and the clock passed in, so every transition is tested
//! without I/O or sleeping.
//!
//! closed ─(N consecutive transient failures)→ open ─(open time passes)→
//! half-open ─(a probe succeeds)→ closed, or ─(a probe fails)→ open again.
//!
//! Written here rather than taken from a crate: the crates on offer (failsafe,
//! recloser) hide the state behind a call wrapper, while Herald must show the
//! state, the failure count and the reopening time (`GET /v1/providers`,
//! metrics), let the engine ask "is it open?" *before* it picks a route, and
//! judge outcomes by Herald's own taxonomy (a 429 or a bad number says the
//! vendor is up; only transient failures count).

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before probes are let through.
    pub open_ms: i64,
    /// Probe requests allowed at once while half-open.
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of the `herald_provider_circuit_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt's outcome bears on the vendor's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The vendor answered sensibly (accepted, or refused the message itself).
    Up,
    /// 5xx, timeout, connection trouble: counts towards opening.
    Failing,
    /// Throttled: the vendor is up but busy; neither counts nor resets.
    Throttled,
}

/// Whether a call may go to the vendor now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; report the result with this ticket.
    Allowed(Ticket),
    /// Do not call; try again at `retry_at_ms` (the reopening time, or
    /// shortly after when every probe slot is taken).
    Rejected { retry_at_ms: i64 },
}

/// Ties a result to the circuit period it was admitted in, so a slow call
/// from before the circuit opened cannot close it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

/// A transition, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
}

/// What `GET /v1/providers` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerView {
    pub state: CircuitState,
    pub consecutive_failures: u32,
    pub opened_at_ms: Option<i64>,
    /// When an open circuit lets its next probe through.
    pub reopens_at_ms: Option<i64>,
}

/// While half-open with every probe slot busy, callers come back after this.
pub const PROBE_WAIT_MS: i64 = 250;

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: CircuitState,
    failures: u32,
    opened_at_ms: i64,
    probes_in_flight: u32,
    /// Bumped on every transition; tickets from an older period are stale.
    generation: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: CircuitState::Closed,
            failures: 0,
            opened_at_ms: 0,
            probes_in_flight: 0,
            generation: 0,
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The state at `now_ms` (an open circuit whose time is up reads half-open).
    pub fn state(&self, now_ms: i64) -> CircuitState {
        match self.state {
            CircuitState::Open if now_ms >= self.reopens_at() => CircuitState::HalfOpen,
            s => s,
        }
    }

    pub fn view(&self, now_ms: i64) -> BreakerView {
        let state = self.state(now_ms);
        BreakerView {
            state,
            consecutive_failures: self.failures,
            opened_at_ms: (state != CircuitState::Closed).then_some(self.opened_at_ms),
            reopens_at_ms: (state == CircuitState::Open).then(|| self.reopens_at()),
        }
    }

    /// While open: when it lets probes through. Changes nothing, so a caller
    /// can skip an open provider before spending anything on it.
    pub fn open_until(&self, now_ms: i64) -> Option<i64> {
        (self.state == CircuitState::Open && now_ms < self.reopens_at()).then(|| self.reopens_at())
    }

    fn reopens_at(&self) -> i64 {
        self.opened_at_ms.saturating_add(self.settings.open_ms)
    }

    /// Asks to make one call. An open circuit whose time is up turns
    /// half-open here and admits up to `half_open_probes` calls at once.
    pub fn admit(&mut self, now_ms: i64) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == CircuitState::Open {
            if now_ms < self.reopens_at() {
                let retry_at_ms = self.reopens_at();
                return (Admission::Rejected { retry_at_ms }, None);
            }
            transition = Some(self.move_to(CircuitState::HalfOpen, now_ms));
        }
        let admission = match self.state {
            CircuitState::HalfOpen if self.probes_in_flight >= self.settings.half_open_probes => {
                Admission::Rejected {
                    retry_at_ms: now_ms + PROBE_WAIT_MS,
                }
            }
            CircuitState::HalfOpen => {
                self.probes_in_flight += 1;
                Admission::Allowed(Ticket {
                    generation: self.generation,
                    probe: true,
                })
            }
            _ => Admission::Allowed(Ticket {
                generation: self.generation,
                probe: false,
            }),
        };
        (admission, transition)
    }

    /// Reports how an admitted call went.
    pub fn report(&mut self, ticket: Ticket, health: Health, now_ms: i64) -> Option<Transition> {
        if ticket.generation != self.generation {
            // Admitted before the last transition: it says nothing about now.
            return None;
        }
        if ticket.probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        match (self.state, health) {
            (CircuitState::Closed, Health::Up) => {
                self.failures = 0;
                None
            }
            (CircuitState::Closed, Health::Failing) => {
                self.failures += 1;
                (self.failures >= self.settings.failure_threshold)
                    .then(|| self.move_to(CircuitState::Open, now_ms))
            }
            (CircuitState::HalfOpen, Health::Up) => {
                Some(self.move_to(CircuitState::Closed, now_ms))
            }
            (CircuitState::HalfOpen, Health::Failing) => {
                self.failures += 1;
                Some(self.move_to(CircuitState::Open, now_ms))
            }
            _ => None,
        }
    }

    /// Another node opened this provider's circuit at `opened_at_ms` (the
    /// fleet shares open circuits through Redis): open here too, until the
    /// same time. An open period already ending as late or later stands, and
    /// one that is over by `now_ms` changes nothing.
    pub fn opened_elsewhere(&mut self, opened_at_ms: i64, now_ms: i64) -> Option<Transition> {
        if opened_at_ms.saturating_add(self.settings.open_ms) <= now_ms {
            return None;
        }
        if self.state == CircuitState::Open {
            self.opened_at_ms = self.opened_at_ms.max(opened_at_ms);
            return None;
        }
        let t = self.move_to(CircuitState::Open, now_ms);
        self.opened_at_ms = opened_at_ms;
        Some(t)
    }

    /// An operator closes the circuit by hand: calls go through again and
    /// the failures so far are forgotten.
    pub fn close_by_hand(&mut self, now_ms: i64) -> Option<Transition> {
        self.failures = 0;
        self.probes_in_flight = 0;
        (self.state != CircuitState::Closed).then(|| self.move_to(CircuitState::Closed, now_ms))
    }

    /// When the current open period began (to share it with the fleet).
    pub fn opened_at(&self) -> Option<i64> {
        (self.state == CircuitState::Open).then_some(self.opened_at_ms)
    }

    /// Gives back a probe slot for a call that was admitted but never made.
    pub fn cancel(&mut self, ticket: Ticket) {
        if ticket.probe && ticket.generation == self.generation {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn move_to(&mut self, to: CircuitState, now_ms: i64) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.probes_in_flight = 0;
        match to {
            CircuitState::Open => self.opened_at_ms = now_ms,
            CircuitState::Closed => self.failures = 0,
            CircuitState::HalfOpen => {}
        }
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opened_elsewhere_opens_here_until_the_same_time() {
        let mut b = breaker();
        // Opened on another node 10 s ago: open here for the 50 s left.
        let t = b.opened_elsewhere(90_000, 100_000).expect("opens");
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        assert_eq!(b.open_until(100_000), Some(150_000));
        // An older period elsewhere does not shorten it; a newer one extends it.
        assert_eq!(b.opened_elsewhere(80_000, 100_000), None);
        assert_eq!(b.open_until(100_000), Some(150_000));
        b.opened_elsewhere(95_000, 100_000);
        assert_eq!(b.open_until(100_000), Some(155_000));
        // A period that is over changes nothing.
        let mut fresh = breaker();
        assert_eq!(fresh.opened_elsewhere(10_000, 100_000), None);
        assert_eq!(fresh.state(100_000), CircuitState::Closed);
        // A stale ticket from before does not close it.
        let mut c = breaker();
        let (Admission::Allowed(ticket), _) = c.admit(99_000) else {
            panic!("closed admits");
        };
        c.opened_elsewhere(99_500, 100_000);
        assert_eq!(c.report(ticket, Health::Up, 100_100), None);
        assert_eq!(c.state(100_100), CircuitState::Open);
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 5,
            open_ms: 60_000,
            half_open_probes: 1,
        })
    }

    fn allowed(b: &mut Breaker, now: i64) -> Ticket {
        match b.admit(now).0 {
            Admission::Allowed(t) => t,
            Admission::Rejected { .. } => panic!("expected the call to be admitted at {now}"),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = breaker();
        for _ in 0..4 {
            let t = allowed(&mut b, 0);
            assert_eq!(b.report(t, Health::Failing, 0), None);
        }
        // A success in between resets the count.
        let t = allowed(&mut b, 0);
        b.report(t, Health::Up, 0);
        for i in 0..5 {
            let t = allowed(&mut b, 10);
            let tr = b.report(t, Health::Failing, 10);
            if i < 4 {
                assert_eq!(tr, None);
            } else {
                assert_eq!(
                    tr,
                    Some(Transition {
                        from: CircuitState::Closed,
                        to: CircuitState::Open
                    })
                );
            }
        }
        assert_eq!(
            b.admit(59_000).0,
            Admission::Rejected {
                retry_at_ms: 60_010
            }
        );
        assert_eq!(b.open_until(59_000), Some(60_010));
        assert_eq!(b.open_until(60_010), None, "time is up: probes may go");
        let v = b.view(20);
        assert_eq!(v.state, CircuitState::Open);
        assert_eq!(v.reopens_at_ms, Some(60_010));
        assert_eq!(v.consecutive_failures, 5);
    }

    #[test]
    fn throttling_and_permanent_errors_do_not_trip_it() {
        let mut b = breaker();
        for _ in 0..20 {
            let t = allowed(&mut b, 0);
            b.report(t, Health::Throttled, 0);
        }
        assert_eq!(b.state(0), CircuitState::Closed);
        assert_eq!(b.view(0).consecutive_failures, 0);
    }

    #[test]
    fn half_open_admits_probes_then_closes_or_reopens() {
        let mut b = breaker();
        for _ in 0..5 {
            let t = allowed(&mut b, 0);
            b.report(t, Health::Failing, 0);
        }
        assert_eq!(b.state(60_000), CircuitState::HalfOpen);
        let (adm, tr) = b.admit(60_000);
        assert!(matches!(adm, Admission::Allowed(_)));
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::HalfOpen));
        // One probe at a time.
        assert_eq!(
            b.admit(60_001).0,
            Admission::Rejected {
                retry_at_ms: 60_001 + PROBE_WAIT_MS
            }
        );
        let Admission::Allowed(probe) = adm else {
            unreachable!()
        };
        // The probe fails: open again for a full period.
        let tr = b.report(probe, Health::Failing, 60_100);
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::Open));
        assert!(matches!(b.admit(100_000).0, Admission::Rejected { .. }));
        // Next probe succeeds: closed.
        let probe = allowed(&mut b, 120_100);
        let tr = b.report(probe, Health::Up, 120_200);
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::Closed));
        assert_eq!(b.view(120_200).consecutive_failures, 0);
        allowed(&mut b, 120_201);
    }

    #[test]
    fn a_stale_result_cannot_close_an_open_circuit() {
        let mut b = breaker();
        let slow = allowed(&mut b, 0);
        for _ in 0..5 {
            let t = allowed(&mut b, 0);
            b.report(t, Health::Failing, 0);
        }
        assert_eq!(b.report(slow, Health::Up, 10), None);
        assert_eq!(b.state(10), CircuitState::Open);
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let mut b = breaker();
        for _ in 0..5 {
            let t = allowed(&mut b, 0);
            b.report(t, Health::Failing, 0);
        }
        let probe = allowed(&mut b, 60_000);
        b.cancel(probe);
        allowed(&mut b, 60_001);
    }

    #[test]
    fn a_throttled_probe_frees_its_slot_and_stays_half_open() {
        let mut b = breaker();
        for _ in 0..5 {
            let t = allowed(&mut b, 0);
            b.report(t, Health::Failing, 0);
        }
        let probe = allowed(&mut b, 60_000);
        assert_eq!(b.report(probe, Health::Throttled, 60_010), None);
        assert_eq!(b.state(60_010), CircuitState::HalfOpen);
        allowed(&mut b, 60_011);
    }
}
