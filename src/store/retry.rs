//! Lost lock races are retried inside, never answered as errors. Concurrent write transactions on
//! PostgreSQL can deadlock (SQLSTATE 40P01) or fail serialization (40001); on SQLite a writer from
//! another process can outlast the busy timeout (SQLITE_BUSY / SQLITE_LOCKED). The database has
//! rolled the loser back, so running the whole transaction body again is safe and, once the
//! winner commits, succeeds.

use super::{Backend, Store};
use std::future::Future;
use std::time::Duration;

/// Attempts before the error is given to the caller: enough to outlast a burst of contention,
/// bounded so a persistent fault still surfaces quickly.
pub const MAX_ATTEMPTS: u32 = 8;

/// Is this the database aborting a transaction that lost a lock race (worth running again)?
pub fn is_lost_race(backend: Backend, e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    match backend {
        Backend::Postgres => matches!(code.as_ref(), "40001" | "40P01"),
        // Extended result codes keep the primary code in the low byte: 5 BUSY, 6 LOCKED.
        Backend::Sqlite => code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
    }
}

/// The database error under an error, found through its `source` chain.
pub fn db_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a sqlx::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(db) = err.downcast_ref::<sqlx::Error>() {
            return Some(db);
        }
        cur = err.source();
    }
    None
}

/// The wait before attempt `attempt + 1`: exponential from 2 ms, capped at 64 ms, with full jitter
/// so the transactions that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = 2u64 << attempt.min(5);
    Duration::from_micros(rand::rng().random_range(500..=cap * 1000))
}

impl Store {
    /// Run a write transaction body (it begins, writes and commits) and run it again, from the
    /// start, when the database aborted it for a lost lock race; other errors return at once.
    /// `what` names the transaction in the log.
    pub async fn retry<T, E, F, Fut>(&self, what: &str, mut body: F) -> Result<T, E>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match body().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let lost = db_error(&e).is_some_and(|db| is_lost_race(self.backend, db));
                    if !lost || attempt >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(what, attempt, error = %e, "transaction lost a lock race; running it again");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}
