//! When to try again: exponential back-off with full jitter, never earlier than an agency's
//! Retry-After, never later than a cap, and never past a deadline.

use crate::clock::Timestamp;
use std::time::Duration;

/// How a kind of work is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the second attempt, before jitter.
    pub base: Duration,
    /// No single wait is longer than this.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time.
    At(Timestamp),
    /// The deadline would be passed: stop.
    GiveUp,
}

impl RetryPolicy {
    /// The time of the next attempt after `attempt` attempts (1 = the first one failed).
    ///
    /// `jitter` is a uniform sample from `[0, 1)` supplied by the caller (so this stays pure and
    /// testable); `retry_after` is the agency's own hint, which is always honoured even when the cap
    /// is lower, because asking earlier only earns another refusal.
    pub fn next(
        &self,
        attempt: u32,
        started: Timestamp,
        now: Timestamp,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> RetryDecision {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1).min(31))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.max_delay);
        // Full jitter: anywhere in [capped/2, capped], so waits spread out but never collapse to zero.
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = capped.mul_f64(0.5 + 0.5 * j);
        let wait = match retry_after {
            Some(hint) => jittered.max(hint),
            None => jittered,
        };
        let at = now.plus(wait);
        if at > started.plus(self.deadline) {
            RetryDecision::GiveUp
        } else {
            RetryDecision::At(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        deadline: Duration::from_secs(3600),
    };
    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn wait(d: RetryDecision, now: Timestamp) -> Duration {
        match d {
            RetryDecision::At(t) => now.until(t),
            RetryDecision::GiveUp => panic!("gave up"),
        }
    }

    #[test]
    fn waits_grow_exponentially_until_the_cap() {
        let w: Vec<Duration> = (1..=9)
            .map(|a| wait(P.next(a, T0, T0, None, 1.0), T0))
            .collect();
        assert_eq!(w[0], Duration::from_secs(1));
        assert_eq!(w[1], Duration::from_secs(2));
        assert_eq!(w[5], Duration::from_secs(32));
        assert_eq!(w[6], Duration::from_secs(60));
        assert_eq!(w[8], Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_even_above_the_cap() {
        let d = P.next(1, T0, T0, Some(Duration::from_secs(300)), 0.0);
        assert_eq!(wait(d, T0), Duration::from_secs(300));
    }

    #[test]
    fn gives_up_past_the_deadline() {
        let late = T0.plus(Duration::from_secs(3598));
        assert_eq!(P.next(3, T0, late, None, 1.0), RetryDecision::GiveUp);
        assert_eq!(
            P.next(1, T0, T0, Some(Duration::from_secs(4000)), 0.0),
            RetryDecision::GiveUp
        );
    }

    proptest! {
        #[test]
        fn waits_stay_within_half_and_full_of_the_capped_exponential(attempt in 1u32..100, jitter in 0.0f64..1.0, hint in proptest::option::of(0u64..600)) {
            let retry_after = hint.map(Duration::from_secs);
            let policy = RetryPolicy { deadline: Duration::from_secs(u64::from(u32::MAX)), ..P };
            let w = wait(policy.next(attempt, T0, T0, retry_after, jitter), T0);
            let exp = Duration::from_secs(1u64 << (attempt - 1).min(40)).min(P.max_delay);
            let floor = retry_after.unwrap_or(Duration::ZERO).max(exp / 2);
            prop_assert!(w >= floor, "{w:?} < {floor:?}");
            prop_assert!(w <= exp.max(retry_after.unwrap_or(Duration::ZERO)));
        }
    }
}
