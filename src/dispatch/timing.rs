//! Overflow-safe time for the dispatcher. A vendor chooses its Retry-After (`u64::MAX` seconds has
//! been seen), and a configuration chooses cool-downs: every delay is capped before it is added,
//! and every addition saturates, so no input can panic a worker or park a command for a day.

use std::time::Duration;

/// A delay in microseconds, at most `cap`, never overflowing an `i64`.
pub fn capped_micros(delay: Duration, cap: Duration) -> i64 {
    i64::try_from(delay.min(cap).as_micros()).unwrap_or(i64::MAX)
}

/// `now` (microseconds) plus `delay`, capped at `cap` and saturating.
pub fn after(now: i64, delay: Duration, cap: Duration) -> i64 {
    now.saturating_add(capped_micros(delay, cap))
}

/// Seconds (from configuration) as microseconds, saturating.
pub fn secs_micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

/// Jittered exponential backoff for the `attempt`-th try (from 1), between `initial` and `max`.
pub fn backoff(initial: Duration, max: Duration, attempt: i64) -> Duration {
    use backon::BackoffBuilder;
    let max = max.max(initial);
    let nth = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
    backon::ExponentialBuilder::default()
        .with_min_delay(initial)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        // The sequence is bounded by `max`; a very high attempt number need not walk it all.
        .nth(nth.min(64))
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn huge_retry_after_is_capped_without_overflow() {
        let now = 1_800_000_000_000_000;
        assert_eq!(
            after(now, Duration::from_secs(u64::MAX), CAP),
            now + 300_000_000
        );
        assert_eq!(
            after(now, Duration::from_secs(86_400), CAP),
            now + 300_000_000
        );
        assert_eq!(after(now, Duration::ZERO, CAP), now);
        // Even an uncapped maximum saturates instead of wrapping.
        assert_eq!(after(i64::MAX - 1, Duration::MAX, Duration::MAX), i64::MAX);
        assert_eq!(capped_micros(Duration::MAX, Duration::MAX), i64::MAX);
    }

    #[test]
    fn configured_seconds_saturate() {
        assert_eq!(secs_micros(u64::MAX), i64::MAX);
        assert_eq!(secs_micros(30), 30_000_000);
    }

    #[test]
    fn backoff_stays_within_its_bounds_for_any_attempt() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(60));
        for attempt in [i64::MIN, 0, 1, 2, 10, 1000, i64::MAX] {
            let d = backoff(initial, max, attempt);
            // The jitter adds at most one more delay.
            assert!(d <= max * 2, "attempt {attempt}: {d:?}");
        }
        assert!(
            backoff(Duration::from_secs(10), Duration::from_secs(1), 5) <= Duration::from_secs(20)
        );
    }
}
