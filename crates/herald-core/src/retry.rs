//! What happens after an attempt: sent, retried (exponential backoff with full
//! jitter, honouring Retry-After), failed, dead or expired. A plain value
//! with a decision function.

use std::time::Duration;

use crate::provider::Outcome;
use crate::store::Next;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// `attempt` is the number of the attempt just made (from 1); `jitter`
    /// is a uniform sample in [0, 1) (injected so tests are exact).
    pub fn next(
        &self,
        outcome: &Outcome,
        attempt: u32,
        now_ms: i64,
        expires_at_ms: Option<i64>,
        jitter: f64,
    ) -> Next {
        let wait = match outcome {
            Outcome::Accepted { vendor_id } => {
                return Next::Sent {
                    vendor_id: vendor_id.clone(),
                }
            }
            Outcome::Permanent { .. } => return Next::Failed,
            // The account's trouble, not the message's: tried again like a
            // transient failure, but not counted as an attempt, so it
            // waits for the credential to be fixed (its circuit soon spaces
            // the tries) or for its TTL.
            Outcome::Account { .. } => {
                let at = now_ms.saturating_add(crate::ms(self.backoff(attempt, jitter)));
                return match expires_at_ms {
                    Some(exp) if at >= exp => Next::Expired,
                    _ => Next::Deferred(at),
                };
            }
            Outcome::RateLimited {
                retry_after: Some(after),
                ..
            } => *after,
            Outcome::RateLimited { .. } | Outcome::Transient { .. } => {
                self.backoff(attempt, jitter)
            }
        };
        if attempt >= self.max_attempts {
            return Next::Dead;
        }
        let at = now_ms.saturating_add(crate::ms(wait));
        match expires_at_ms {
            Some(exp) if at >= exp => Next::Expired,
            _ => Next::RetryAt(at),
        }
    }

    /// Full jitter: uniform in [0, min(cap, base · 2^(attempt-1))).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
        exp.min(self.cap).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        }
    }

    fn transient() -> Outcome {
        Outcome::Transient {
            reason: "503".into(),
            ambiguous: false,
        }
    }

    #[test]
    fn accepted_and_permanent_end_at_once() {
        let p = policy();
        let sent = p.next(&Outcome::Accepted { vendor_id: None }, 1, 0, None, 0.5);
        assert_eq!(sent, Next::Sent { vendor_id: None });
        let bad = Outcome::permanent("invalid number");
        assert_eq!(p.next(&bad, 1, 0, None, 0.5), Next::Failed);
    }

    #[test]
    fn transient_backs_off_then_dies() {
        let p = policy();
        assert_eq!(
            p.next(&transient(), 1, 1000, None, 0.5),
            Next::RetryAt(1050)
        );
        assert_eq!(
            p.next(&transient(), 2, 1000, None, 0.5),
            Next::RetryAt(1100)
        );
        assert_eq!(p.next(&transient(), 3, 1000, None, 0.5), Next::Dead);
        assert_eq!(p.backoff(20, 0.999), Duration::from_millis(999), "capped");
    }

    #[test]
    fn an_account_refusal_waits_without_using_up_the_attempts() {
        let p = policy();
        let revoked = Outcome::Account {
            reason: "twilio 401 (code 20003): Authenticate".into(),
        };
        // On the last attempt a transient failure dies; this does not.
        assert_eq!(p.next(&transient(), 3, 1000, None, 0.5), Next::Dead);
        assert_eq!(p.next(&revoked, 3, 1000, None, 0.5), Next::Deferred(1200));
        assert_eq!(p.next(&revoked, 50, 1000, None, 0.5), Next::Deferred(1500));
        // Only the TTL ends it.
        assert_eq!(p.next(&revoked, 1, 1000, Some(1010), 0.5), Next::Expired);
    }

    #[test]
    fn retry_after_is_honoured_and_ttl_respected() {
        let p = policy();
        let limited = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            reason: "429".into(),
        };
        assert_eq!(p.next(&limited, 1, 0, None, 0.0), Next::RetryAt(7000));
        assert_eq!(p.next(&limited, 1, 0, Some(5000), 0.0), Next::Expired);
    }
}
