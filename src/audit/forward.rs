//! Continuous forwarding of the audit log to a SIEM, at least once and in order.
//!
//! Each sink (`[audit.forward.NAME]`) has a durable cursor in the store: the last seq its receiver
//! accepted. The forwarder sends the records after the cursor in seq order, a batch at a time, and
//! moves the cursor only once the receiver has accepted the batch; a failed send is retried from
//! the cursor with backoff, so a receiver outage or a restart of the daemon loses nothing (a batch
//! in flight at a restart may arrive twice). Only the replica holding the `job:audit-forward`
//! lease forwards, so several replicas do not send everything several times.

mod http;
mod syslog;

use crate::config::{Config, ForwardSink, SinkKind};
use crate::engine::Engine;
use crate::leases::Leases;
use crate::store::audit::{self as sql, AuditRow};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The lease of SIEM forwarding: one replica forwards.
pub const LEASE: &str = "job:audit-forward";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("audit.forward.{sink}: {message}")]
    Config { sink: String, message: String },
    #[error("{0}")]
    Send(String),
}

/// Where a sink's records go.
enum Transport {
    Syslog(syslog::Syslog),
    Http(http::HttpSink),
}

impl Transport {
    async fn send(&mut self, rows: &[AuditRow]) -> Result<(), ForwardError> {
        match self {
            Transport::Syslog(s) => s.send(rows).await,
            Transport::Http(h) => h.send(rows).await,
        }
    }

    /// Forget the connection after a failure; the next send connects again.
    fn reset(&mut self) {
        if let Transport::Syslog(s) = self {
            s.reset();
        }
    }
}

fn build(config: &Config, name: &str, s: &ForwardSink) -> Result<Transport, ForwardError> {
    let err = |message: String| ForwardError::Config {
        sink: name.to_string(),
        message,
    };
    let timeout = Duration::from_secs(s.timeout_seconds.max(1));
    Ok(match s.kind {
        SinkKind::Syslog => Transport::Syslog(
            syslog::Syslog::new(
                s,
                s.hostname
                    .clone()
                    .unwrap_or_else(|| config.instance.clone()),
                s.ca_file.as_deref().map(|p| config.resolve(p)),
                timeout,
            )
            .map_err(err)?,
        ),
        SinkKind::Http => {
            let mut headers = Vec::new();
            for (h, secret) in &s.headers {
                let value = config
                    .secret(&format!("audit.forward.{name}.headers.{h}"), secret)
                    .map_err(|e| err(e.to_string()))?;
                headers.push((h.clone(), value));
            }
            Transport::Http(
                http::HttpSink::new(s.url.clone().unwrap_or_default(), headers, timeout)
                    .map_err(err)?,
            )
        }
    })
}

/// Check that every sink can be built (a CA file that does not load, a missing header secret):
/// a configuration error, reported at start.
pub fn check(config: &Config) -> Result<(), ForwardError> {
    for (name, s) in &config.audit.forward {
        build(config, name, s)?;
    }
    Ok(())
}

/// Forward while this replica holds the lease, until `shutdown`.
pub async fn run(
    engine: Arc<Engine>,
    leases: Arc<Leases>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ForwardError> {
    if engine.config.audit.forward.is_empty() {
        return Ok(());
    }
    check(&engine.config)?;
    while leases.wait_held(LEASE, &mut shutdown).await {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (name, s) in &engine.config.audit.forward {
            let transport = build(&engine.config, name, s)?;
            tasks.push(tokio::spawn(forward_sink(
                engine.clone(),
                name.clone(),
                s.clone(),
                transport,
                stopped.clone(),
            )));
        }
        let mut down = shutdown.clone();
        tokio::select! {
            _ = leases.lost(LEASE) => {}
            _ = down.wait_for(|s| *s) => {}
        }
        let _ = stop.send(true);
        for mut t in tasks {
            // A send in flight is cut off after a second: its cursor was not moved, so the next
            // holder sends that batch again (at least once).
            if tokio::time::timeout(Duration::from_secs(1), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
    Ok(())
}

/// One sink: from its cursor, in order, until `stop`.
async fn forward_sink(
    engine: Arc<Engine>,
    name: String,
    sink: ForwardSink,
    mut transport: Transport,
    mut stop: watch::Receiver<bool>,
) {
    let idle = Duration::from_millis(engine.config.engine.tick_millis.clamp(10, 1000));
    let retries = || {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(sink.max_backoff_seconds.max(1)))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = retries();
    let mut warned_gap = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match step(&engine, &name, &sink, &mut transport, &mut warned_gap).await {
            Ok(true) => {
                backoff = retries();
                continue;
            }
            Ok(false) => idle,
            Err(e) => {
                engine.metrics.audit_forward_failed(&name);
                transport.reset();
                let wait = backoff.next().unwrap_or(idle);
                tracing::warn!(sink = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "audit forwarding failed; retrying from the cursor");
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Send the next batch after the cursor; `true` when one was sent and accepted.
async fn step(
    engine: &Engine,
    name: &str,
    sink: &ForwardSink,
    transport: &mut Transport,
    warned_gap: &mut bool,
) -> Result<bool, ForwardError> {
    let pool = engine.store.pool();
    let db = |e: crate::store::StoreError| ForwardError::Send(format!("store: {e}"));
    let cursor = sql::forward_cursor(pool, name).await.map_err(db)?;
    let (head, _) = sql::head(pool).await.map_err(db)?;
    engine.metrics.set_audit_forward_lag(name, head - cursor);
    // Seqs become visible in order: PostgreSQL chains at commit under the `audit_head` row lock,
    // so record N+1 cannot commit before N; SQLite has one writer. Reading past the cursor never
    // skips a record that commits later.
    let rows = sql::page(pool, cursor, i64::MAX, i64::from(sink.batch))
        .await
        .map_err(db)?;
    let Some(last) = rows.last().map(|r| r.seq) else {
        return Ok(false);
    };
    if rows[0].seq != cursor + 1 && !*warned_gap {
        // Only retention removes records, and it keeps those a sink has not had; a sink added
        // after a prune starts at the oldest record kept.
        tracing::warn!(sink = %name, cursor, first = rows[0].seq, "records before the first kept one were pruned before this sink had them");
        *warned_gap = true;
    }
    // A sink for some actions only (a webhook for break-glass) skips the rest: the cursor moves
    // past them all the same.
    let wanted: Vec<AuditRow> = rows.into_iter().filter(|r| sink.takes(&r.action)).collect();
    if !wanted.is_empty() {
        transport.send(&wanted).await?;
    }
    let now = crate::clock::to_micros(engine.clock.now());
    sql::set_forward_cursor(pool, name, last, now)
        .await
        .map_err(db)?;
    engine
        .metrics
        .set_audit_forward_lag(name, head.max(last) - last);
    Ok(true)
}

/// The lowest cursor of the configured sinks: retention keeps every record after it.
pub async fn slowest_cursor(engine: &Engine) -> Result<Option<i64>, crate::store::StoreError> {
    let mut slowest: Option<i64> = None;
    for name in engine.config.audit.forward.keys() {
        let c = sql::forward_cursor(engine.store.pool(), name).await?;
        slowest = Some(slowest.map_or(c, |s| s.min(c)));
    }
    Ok(slowest)
}
