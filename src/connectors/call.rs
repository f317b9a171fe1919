//! What the dispatcher tells a connector about the call in progress, and what the connector tells
//! back, without widening the [`super::Connector`] trait: whether the call serves a revoke (its
//! requests take rate-limit tokens before any issue's, invariant 3), and when its first request
//! left (the command's `first_attempt_at`, invariant 13: stamped where the request is sent, not at
//! claim, so time spent waiting for the rate budget shows as queueing).
//!
//! The [`PriorityGate`] sits in front of a connector's governor limiter.

use governor::DefaultDirectRateLimiter;
use governor::clock::{Clock, DefaultClock};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct Call {
    revoke: bool,
    first_sent: OnceLock<Instant>,
}

tokio::task_local! {
    static CALL: Arc<Call>;
}

/// Run one connector call (`issue`, `revoke`, `confirm`) for a command; returns its result and
/// the instant its first request left, if one did.
pub async fn scope<F: Future>(revoke: bool, call: F) -> (F::Output, Option<Instant>) {
    let ctx = Arc::new(Call {
        revoke,
        first_sent: OnceLock::new(),
    });
    let out = CALL.scope(ctx.clone(), call).await;
    (out, ctx.first_sent.get().copied())
}

/// Does the call in progress serve a revoke? Outside a dispatcher call (the drift check, a
/// token fetched ahead), no.
pub fn is_revoke() -> bool {
    CALL.try_with(|c| c.revoke).unwrap_or(false)
}

/// A request of the call in progress leaves now (the first one stamps the attempt).
pub fn sent() {
    let _ = CALL.try_with(|c| {
        let _ = c.first_sent.set(Instant::now());
    });
}

/// Revokes first at the rate limiter: while a revoke waits for a token, no issue takes one. A
/// revoke then waits at most for the next token (plus those issues already past the gate at that
/// instant), however many issues are queued, instead of racing them for every token.
#[derive(Debug, Default)]
pub struct PriorityGate {
    revokes_waiting: AtomicUsize,
    revoke_took: Notify,
}

/// Counts a waiting revoke; dropped when it got its token or its call was abandoned.
struct Waiting<'a>(&'a PriorityGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.revokes_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.revoke_took.notify_waiters();
        }
    }
}

impl PriorityGate {
    /// Take one token from `limiter` for a request of a revoke (`revoke`) or of anything else.
    /// Returns whether the request had to wait.
    pub async fn take(&self, limiter: &DefaultDirectRateLimiter, revoke: bool) -> bool {
        if revoke {
            if limiter.check().is_ok() {
                return false;
            }
            self.revokes_waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(self);
            limiter.until_ready().await;
            return true;
        }
        let mut waited = false;
        loop {
            // Yield to every revoke waiting for a token.
            loop {
                let took = self.revoke_took.notified();
                tokio::pin!(took);
                took.as_mut().enable();
                if self.revokes_waiting.load(Ordering::SeqCst) == 0 {
                    break;
                }
                waited = true;
                took.await;
            }
            match limiter.check() {
                Ok(()) => return waited,
                Err(not_until) => {
                    waited = true;
                    // Sleep to the next token, then look again for revokes that came meanwhile.
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[tokio::test]
    async fn a_revoke_takes_the_next_token_before_issues_queued_earlier() {
        let per_second = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::direct(
            Quota::per_second(per_second).allow_burst(NonZeroU32::MIN),
        ));
        let gate = Arc::new(PriorityGate::default());
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (l, g, o) = (limiter.clone(), gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                g.take(&l, false).await;
                o.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("issue{i}"));
            }));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (l, g, o) = (limiter.clone(), gate.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            g.take(&l, true).await;
            o.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push("revoke".into());
        }));
        for t in tasks {
            let _ = t.await;
        }
        let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let at = order
            .iter()
            .position(|s| s == "revoke")
            .unwrap_or(usize::MAX);
        // Issues took a token or two before the revoke came (1 per 50 ms); it took the very
        // next one, not the eleventh.
        assert!(at <= 3, "{order:?}");
    }
}
