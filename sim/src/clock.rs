//! The simulators' sense of time for what a vendor decides by the clock (a token's lifetime, a
//! cabinet event's time). The wall clock by default; a test passes its controlled clock, so a
//! token lapses when the test moves time on, not after a sleep.

use std::sync::Arc;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug)]
pub struct WallClock;

impl Clock for WallClock {
    #[allow(clippy::disallowed_methods)] // a simulator stands for a vendor, which has its own clock
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

pub fn wall() -> SharedClock {
    Arc::new(WallClock)
}

/// A point in a simulator's time.
pub type Moment = chrono::DateTime<chrono::Utc>;

/// `by` after `at`.
pub fn after(at: Moment, by: std::time::Duration) -> Moment {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// A clock that moves only when told: for a test that ages tokens or lets a lock sync without
/// sleeping.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<std::sync::Mutex<Moment>>);

impl ManualClock {
    pub fn new(start: Moment) -> Self {
        Self(Arc::new(std::sync::Mutex::new(start)))
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now = after(*now, by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Moment {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When a token issued now lapses, `lifetime` later on `clock`.
pub fn lapses_at(clock: &SharedClock, lifetime: std::time::Duration) -> Moment {
    after(clock.now(), lifetime)
}
