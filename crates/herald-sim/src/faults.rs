//! Fault injection, per vendor: latency, errors, throttling, outages and
//! timeouts after the message was accepted.

use serde::{Deserialize, Serialize};

/// What a vendor does wrong. All rates are probabilities in [0, 1].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Uniform extra latency per request, in milliseconds.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// A long tail: this share of requests waits `latency_tail_ms` more
    /// (e.g. 0.01 and 2000 for a vendor whose p99 is seconds).
    pub latency_tail_rate: f64,
    pub latency_tail_ms: u64,
    /// Share of requests answered with `error_status` (before accepting).
    pub error_rate: f64,
    pub error_status: Option<u16>,
    /// Share of requests answered 429 with `Retry-After: retry_after_s`.
    pub rate_limit_rate: f64,
    pub retry_after_s: Option<u64>,
    /// Every request fails with 503.
    pub outage: bool,
    /// The account's credential is refused (revoked, expired or wrong):
    /// every request gets the vendor's own answer to that (Twilio 401 code
    /// 20003, SNS `InvalidClientTokenId`, FCM `UNAUTHENTICATED`, ...).
    pub credential_revoked: bool,
    /// Share of requests accepted (recorded as delivered) whose answer is then
    /// held for `hang_ms`, so the caller times out not knowing it succeeded.
    pub timeout_after_accept_rate: f64,
    pub hang_ms: Option<u64>,
}

/// A fault the simulator cannot play, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("unknown vendor {0:?}; one of {VENDORS:?}", VENDORS = crate::VENDORS)]
    UnknownVendor(String),
    #[error("{0}")]
    Invalid(String),
}

impl Fault {
    pub fn validate(&self) -> Result<(), FaultError> {
        for (name, r) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("timeout_after_accept_rate", self.timeout_after_accept_rate),
            ("latency_tail_rate", self.latency_tail_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(FaultError::Invalid(format!(
                    "{name} must be between 0 and 1"
                )));
            }
        }
        if self.latency_min_ms > self.latency_max_ms {
            return Err(FaultError::Invalid(
                "latency_min_ms must not exceed latency_max_ms".into(),
            ));
        }
        if let Some(s) = self.error_status {
            if !(400..=599).contains(&s) {
                return Err(FaultError::Invalid(
                    "error_status must be a 4xx or 5xx status".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The simulator's decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Outage,
    CredentialRevoked,
    Error(u16),
    RateLimited {
        retry_after_s: u64,
    },
    /// Accept; if `hang_ms`, hold the answer that long first.
    Accept {
        hang_ms: Option<u64>,
    },
}

impl Fault {
    /// The latency for one request, from two uniform samples in [0, 1).
    pub fn latency_ms(&self, spread: f64, tail: f64) -> u64 {
        let span = self.latency_max_ms.saturating_sub(self.latency_min_ms);
        // Float to whole milliseconds: the sample is in [0, 1).
        let base = self.latency_min_ms + (span as f64 * spread).round() as u64;
        if tail < self.latency_tail_rate {
            base + self.latency_tail_ms
        } else {
            base
        }
    }

    /// Decides with three uniform samples in [0, 1).
    pub fn decide(&self, a: f64, b: f64, c: f64) -> Verdict {
        if self.credential_revoked {
            return Verdict::CredentialRevoked;
        }
        if self.outage {
            return Verdict::Outage;
        }
        if a < self.error_rate {
            return Verdict::Error(self.error_status.unwrap_or(503));
        }
        if b < self.rate_limit_rate {
            return Verdict::RateLimited {
                retry_after_s: self.retry_after_s.unwrap_or(1),
            };
        }
        let hang = (c < self.timeout_after_accept_rate).then(|| self.hang_ms.unwrap_or(30_000));
        Verdict::Accept { hang_ms: hang }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let f = Fault {
            error_rate: 0.1,
            rate_limit_rate: 0.2,
            timeout_after_accept_rate: 0.3,
            ..Fault::default()
        };
        assert_eq!(f.decide(0.05, 0.9, 0.9), Verdict::Error(503));
        assert_eq!(
            f.decide(0.5, 0.1, 0.9),
            Verdict::RateLimited { retry_after_s: 1 }
        );
        assert_eq!(
            f.decide(0.5, 0.5, 0.1),
            Verdict::Accept {
                hang_ms: Some(30_000)
            }
        );
        assert_eq!(f.decide(0.5, 0.5, 0.5), Verdict::Accept { hang_ms: None });
        let down = Fault {
            outage: true,
            ..Fault::default()
        };
        assert_eq!(down.decide(0.9, 0.9, 0.9), Verdict::Outage);
        assert!(Fault {
            error_rate: 2.0,
            ..Fault::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn latency_has_a_range_and_a_tail() {
        let f = Fault {
            latency_min_ms: 20,
            latency_max_ms: 80,
            latency_tail_rate: 0.01,
            latency_tail_ms: 2000,
            ..Fault::default()
        };
        assert_eq!(f.latency_ms(0.0, 0.5), 20);
        assert_eq!(f.latency_ms(0.5, 0.5), 50);
        assert_eq!(f.latency_ms(0.5, 0.005), 2050, "in the tail");
        assert_eq!(Fault::default().latency_ms(0.7, 0.0), 0);
    }
}
