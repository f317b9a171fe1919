//! Electronic key cabinets: the key-out / key-return / overdue event feed, read on the daemon's
//! schedule, so latchkey knows who holds which cabinet key right now (`latchkey who-has`) and can
//! raise an alert when a leaver still holds one.
//!
//! A cabinet connector is any HTTP connector whose profile says `vendor = "cabinet"`
//! (`connectors/cabinet.toml`); its grants (key-group permissions) go through the profile engine
//! like any vendor's. Its `GET /events?after=<cursor>` is read with the profile's auth by the
//! source adapter (`sources::cabinet`), a page at a time. Here each page is recorded in one
//! transaction (holdings, an audit record per event, and the cursor as the checkpoint of source
//! `cabinet:<connector>`), so an event is applied exactly once.

use crate::config::{Config, ConnectorKind};
use crate::connectors::profile::{AuthSpec, Profile};
use crate::engine::Engine;
use crate::model::Lifecycle;
pub use crate::sources::cabinet::{CabinetEvent, EventPage, Feed, FeedError};
use crate::store;

/// The profile `vendor` that marks a connector as a key cabinet.
pub const CABINET_VENDOR: &str = "cabinet";

/// Pages read per connector and poll; the rest waits for the next tick.
const MAX_PAGES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum CabinetError {
    #[error("cabinet `{connector}`: {message}")]
    Setup { connector: String, message: String },
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What one poll of one cabinet did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub connector: String,
    pub events: usize,
    /// Keys of this cabinet held by people whose identity is terminated.
    pub leaver_keys_held: usize,
}

/// Cabinet connectors of the configuration, with their feed's URL and auth resolved.
fn feeds(config: &Config) -> Vec<Result<Feed, CabinetError>> {
    let mut out = Vec::new();
    for (name, cc) in &config.connectors {
        if cc.kind != ConnectorKind::Http {
            continue;
        }
        let setup = |message: String| CabinetError::Setup {
            connector: name.clone(),
            message,
        };
        let profile = match Profile::load(&config.resolve(&cc.profile)) {
            Ok(p) => p,
            Err(e) => {
                out.push(Err(setup(e.to_string())));
                continue;
            }
        };
        if profile.vendor != CABINET_VENDOR {
            continue;
        }
        let secret = |needed: &str| {
            let r = cc
                .secrets
                .get(needed)
                .ok_or_else(|| setup(format!("secret `{needed}` is not configured")))?;
            config
                .secret(&format!("connectors.{name}.secrets.{needed}"), r)
                .map_err(|e| setup(e.to_string()))
        };
        let auth = match &profile.auth {
            AuthSpec::None => Ok(None),
            AuthSpec::Bearer { secret: s } => {
                secret(s).map(|v| Some(("authorization".to_string(), format!("Bearer {v}"))))
            }
            AuthSpec::Header {
                header,
                prefix,
                secret: s,
            } => secret(s).map(|v| Some((header.clone(), format!("{prefix}{v}")))),
            _ => Err(setup(
                "the event feed supports bearer or header auth only".into(),
            )),
        };
        out.push(auth.map(|auth| {
            Feed {
                connector: name.clone(),
                base_url: cc
                    .base_url
                    .clone()
                    .unwrap_or_else(|| profile.base_url.clone())
                    .trim_end_matches('/')
                    .to_string(),
                auth,
            }
        }));
    }
    out
}

/// The checkpoint source name of a cabinet connector's event cursor.
pub fn source_name(connector: &str) -> String {
    format!("cabinet:{connector}")
}

/// Read every cabinet's new events, record them, and alert on leavers still holding keys. A cabinet
/// that fails is logged and skipped; the others are still read.
pub async fn poll_all(engine: &Engine, client: &reqwest::Client) -> Vec<PollReport> {
    let mut reports = Vec::new();
    for feed in feeds(&engine.config) {
        let result = match feed {
            Ok(feed) => poll(engine, client, &feed).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => reports.push(r),
            Err(e) => tracing::warn!(error = %e, "cabinet events not read"),
        }
    }
    reports
}

async fn poll(
    engine: &Engine,
    client: &reqwest::Client,
    feed: &Feed,
) -> Result<PollReport, CabinetError> {
    let source = source_name(&feed.connector);
    let mut report = PollReport {
        connector: feed.connector.clone(),
        ..PollReport::default()
    };
    for _ in 0..MAX_PAGES {
        let cursor = store::checkpoint(engine.store.pool(), &source).await?;
        let page = crate::sources::cabinet::fetch(client, feed, cursor.as_deref()).await?;
        if page.events.is_empty() {
            break;
        }
        let now = crate::clock::to_micros(engine.clock.now());
        let mut tx = engine.store.begin_write().await?;
        for event in &page.events {
            record(&mut tx, &feed.connector, event, now).await?;
        }
        store::set_checkpoint(&mut tx, &source, &page.cursor, now).await?;
        tx.commit().await?;
        report.events += page.events.len();
    }
    report.leaver_keys_held = check_leavers(engine, &feed.connector).await?;
    Ok(report)
}

/// Apply one event to the holdings and audit it.
async fn record(
    tx: &mut store::Tx,
    connector: &str,
    e: &CabinetEvent,
    now: i64,
) -> Result<(), CabinetError> {
    let at =
        e.at.as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map_or(now, |t| crate::clock::to_micros(t.to_utc()));
    let known = match e.kind.as_str() {
        "key_out" => {
            store::cabinet_key_out(
                tx,
                connector,
                &e.key_id,
                e.key_group.as_deref(),
                &e.user_external_id,
                at,
            )
            .await?;
            true
        }
        "key_return" => store::cabinet_key_return(tx, connector, &e.key_id).await?,
        "overdue" => store::cabinet_key_overdue(tx, connector, &e.key_id, at).await?,
        other => {
            tracing::warn!(connector, event = %e.id, kind = other, "unknown cabinet event type; recorded in the audit log only");
            false
        }
    };
    crate::audit::append(
        tx,
        now,
        &source_name(connector),
        &format!("cabinet.{}", e.kind),
        &e.user_external_id,
        &serde_json::json!({
            "connector": connector,
            "event_id": e.id,
            "key_id": e.key_id,
            "key_group": e.key_group,
            "at": at,
            "matched_holding": known,
        }),
    )
    .await?;
    Ok(())
}

/// Leavers still holding keys: the gauge, and an error log plus an audit record the first time
/// each holding is seen.
async fn check_leavers(engine: &Engine, connector: &str) -> Result<usize, CabinetError> {
    let held = store::cabinet_leaver_holdings(engine.store.pool(), connector).await?;
    engine
        .metrics
        .set_leaver_keys_held(connector, i64::try_from(held.len()).unwrap_or(i64::MAX));
    let fresh: Vec<_> = held
        .iter()
        .filter(|h| h.leaver_alerted_at.is_none())
        .collect();
    if fresh.is_empty() {
        return Ok(held.len());
    }
    let now = crate::clock::to_micros(engine.clock.now());
    let mut tx = engine.store.begin_write().await?;
    for h in fresh {
        tracing::error!(
            connector,
            person = %h.identity_key,
            key = %h.key_id,
            key_group = h.key_group.as_deref().unwrap_or("-"),
            lifecycle = Lifecycle::Terminated.as_str(),
            "a leaver still holds a cabinet key"
        );
        store::mark_cabinet_leaver_alerted(&mut tx, h.id, now).await?;
        crate::audit::append(
            &mut tx,
            now,
            &source_name(connector),
            "cabinet.leaver_holds_key",
            &h.identity_key,
            &serde_json::json!({
                "connector": connector,
                "key_id": h.key_id,
                "key_group": h.key_group,
                "taken_at": h.taken_at,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(held.len())
}
