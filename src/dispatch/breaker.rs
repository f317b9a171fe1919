//! A circuit breaker per connector.
//!
//! A vendor that keeps failing (5xx, timeouts, connection errors) gets no more calls for a while:
//! its commands wait without using up attempts, so a long outage does not dead-letter them. After
//! the cool-down one probe command goes through (half-open); its success closes the breaker, its
//! failure opens it again. Rate limiting is not a failure here: the limiter and Retry-After handle
//! it, and a vendor that answers 429 is up. Time comes from the dispatcher's clock, so an outage can
//! be driven by a test clock.

use crate::config::BreakerConfig;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a worker may do with a command it wants to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Go,
    /// Send it as the half-open probe; `transition` is set when this call moved the state.
    Probe { transition: bool },
    /// Do not call the vendor before this time (microseconds).
    WaitUntil(i64),
}

#[derive(Debug)]
struct Inner {
    state: State,
    failures: u32,
    open_until: i64,
    /// A probe is out: other commands wait for its verdict.
    probing: bool,
    /// Some verdict or restored state has been recorded since start-up.
    touched: bool,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// How long others wait for the probe's verdict before looking again.
const PROBE_WAIT_MICROS: i64 = 1_000_000;

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                failures: 0,
                open_until: 0,
                probing: false,
                touched: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few integers, consistent after any panic elsewhere: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn admit(&self, now: i64) -> Admit {
        let mut s = self.lock();
        match s.state {
            State::Closed => Admit::Go,
            State::Open if now < s.open_until => Admit::WaitUntil(s.open_until),
            State::Open => {
                s.state = State::HalfOpen;
                s.probing = true;
                Admit::Probe { transition: true }
            }
            State::HalfOpen if s.probing => Admit::WaitUntil(now + PROBE_WAIT_MICROS),
            State::HalfOpen => {
                s.probing = true;
                Admit::Probe { transition: false }
            }
        }
    }

    /// The vendor answered. Returns the new state when this closed the breaker.
    pub fn success(&self) -> Option<State> {
        let mut s = self.lock();
        s.failures = 0;
        s.probing = false;
        s.touched = true;
        if s.state == State::Closed {
            return None;
        }
        s.state = State::Closed;
        Some(State::Closed)
    }

    /// A transient failure. Returns the new state when this opened the breaker.
    pub fn failure(&self, now: i64) -> Option<State> {
        let mut s = self.lock();
        s.probing = false;
        s.touched = true;
        s.failures = s.failures.saturating_add(1);
        let trips = match s.state {
            State::HalfOpen => true,
            State::Closed => {
                self.config.failure_threshold > 0 && s.failures >= self.config.failure_threshold
            }
            State::Open => false,
        };
        if !trips {
            return None;
        }
        s.state = State::Open;
        s.open_until = now.saturating_add(super::timing::secs_micros(self.config.cooldown_seconds));
        Some(State::Open)
    }

    /// At start-up: the breaker was open (recorded by a previous run) until `open_until`. Applies
    /// only to a breaker that has seen nothing yet in this process; returns whether it did.
    pub fn restore_open(&self, open_until: i64) -> bool {
        let mut s = self.lock();
        if s.touched {
            return false;
        }
        s.touched = true;
        s.state = State::Open;
        s.open_until = open_until;
        true
    }

    pub fn cooldown_micros(&self) -> i64 {
        super::timing::secs_micros(self.config.cooldown_seconds)
    }

    /// A probe ended without a verdict (the command was superseded): let another one try.
    pub fn release_probe(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown_seconds: 10,
        })
    }

    #[test]
    fn opens_after_threshold_half_opens_after_cooldown_and_closes_on_success() {
        let b = breaker();
        assert_eq!(b.failure(0), None);
        assert_eq!(b.failure(0), None);
        assert_eq!(b.failure(0), Some(State::Open));
        assert_eq!(b.admit(5_000_000), Admit::WaitUntil(10_000_000));
        assert_eq!(b.admit(10_000_000), Admit::Probe { transition: true });
        // Only one probe at a time.
        assert!(matches!(b.admit(10_000_000), Admit::WaitUntil(_)));
        assert_eq!(b.success(), Some(State::Closed));
        assert_eq!(b.admit(10_000_001), Admit::Go);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = breaker();
        for _ in 0..3 {
            b.failure(0);
        }
        assert_eq!(b.admit(10_000_000), Admit::Probe { transition: true });
        assert_eq!(b.failure(10_000_000), Some(State::Open));
        assert_eq!(b.admit(15_000_000), Admit::WaitUntil(20_000_000));
    }

    #[test]
    fn restored_only_before_any_verdict_and_a_huge_cooldown_saturates() {
        let b = breaker();
        assert!(b.restore_open(20_000_000));
        assert_eq!(b.admit(15_000_000), Admit::WaitUntil(20_000_000));
        assert!(!b.restore_open(99_000_000));
        let b = breaker();
        b.success();
        assert!(!b.restore_open(20_000_000));
        assert_eq!(b.state(), State::Closed);
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            cooldown_seconds: u64::MAX,
        });
        assert_eq!(b.failure(i64::MAX - 5), Some(State::Open));
        assert_eq!(b.admit(0), Admit::WaitUntil(i64::MAX));
    }

    #[test]
    fn success_resets_the_count() {
        let b = breaker();
        b.failure(0);
        b.failure(0);
        b.success();
        assert_eq!(b.failure(0), None);
        assert_eq!(b.state(), State::Closed);
    }
}
