//! SQLite: the embedded default. One file, WAL journal so readers never block the writer, and write
//! transactions that take the lock up front (see `Store::begin_write`).

use super::Result;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

pub(super) async fn connect(options: AnyPoolOptions, url: &str) -> Result<AnyPool> {
    create_private(url);
    // Create the file when it is missing: the demo and a first start need no set-up.
    let url = if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let pool = options
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL: readers (status, reports) never block the dispatcher's writes. NORMAL
                // synchronous is durable across process crashes in WAL mode (a power cut may lose the
                // last commits, never corrupt the file). The busy timeout covers a second process
                // (a CLI command) writing while the daemon runs.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                // Checkpoints run on a task of their own (see `spawn_checkpointer`), not in
                // whichever commit finds the WAL past its bound.
                conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok(pool)
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// SQLite on its own checkpoints in the commit that finds the WAL past 1,000 pages: that writer
/// (a revoke's completion as likely as an issue's) then copies and syncs the pages before its
/// commit returns, 5-10 ms on a busy store. Here a task of the store's own checkpoints every
/// quarter second instead, beside the writers and off their path (a passive checkpoint waits for
/// no reader or writer). It ends when the pool is closed; the last connection to close
/// checkpoints what is left, as SQLite always does. Started once the migrations have run: a
/// connection opened before them would keep the old schema for the statements it prepares next.
pub(super) fn spawn_checkpointer(pool: &AnyPool) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            if let Err(e) = pool.execute("PRAGMA wal_checkpoint(PASSIVE)").await
                && !pool.is_closed()
            {
                tracing::warn!(error = %e, "SQLite WAL checkpoint failed; tried again shortly");
            }
        }
    });
}

/// The database holds names and e-mail addresses: create its file readable by the owner only.
/// SQLite gives the `-wal` and `-shm` files it creates later the main file's permissions.
fn create_private(url: &str) {
    let Some(path) = file_of(url) else {
        return;
    };
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    // An existing file keeps its mode; a missing folder or a read-only location is left for
    // SQLite to report as it always has.
    let _ = open.open(&path);
}

/// The database file a `sqlite:` URL names, if it names one (not `:memory:`).
fn file_of(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

pub(super) async fn migrate(pool: &AnyPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Claims are serialised by SQLite's write lock, so the best of one candidate per state is exact.
pub(super) const CLAIM_SQL: &str = concat!(
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2,
           attempts = attempts + CASE WHEN dispatched_at IS NULL THEN 1 ELSE 0 END
         WHERE id = (SELECT id FROM (",
    claim_candidates!("1"),
    ") ORDER BY priority, id LIMIT 1)
         RETURNING *"
);

/// [`CLAIM_SQL`] for up to `$6` commands, the best one of each grant among the candidates (twice
/// as many, so that a grant with two open commands rarely leaves the claim short).
pub(super) const CLAIM_MANY_SQL: &str = concat!(
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2,
           attempts = attempts + CASE WHEN dispatched_at IS NULL THEN 1 ELSE 0 END
         WHERE id IN (SELECT id FROM (
           SELECT b.id, b.priority, ROW_NUMBER() OVER (
               PARTITION BY g.identity_key, g.target ORDER BY b.priority, b.id) AS nth
           FROM (",
    claim_candidates!("2 * $6"),
    ") b JOIN commands g ON g.id = b.id) WHERE nth = 1 ORDER BY priority, id LIMIT $6)
         RETURNING *"
);
