//! Visitors: people who are in no HR feed or directory (a contractor's engineer for a day, an
//! auditor for a week), recorded at the desk as identities of their own source, `manual`, with a
//! mandatory last day. Templates give them nothing unless one names `employment_type ==
//! 'visitor'`; doors come from temporary access requests, approved like anyone's. After their last
//! day (in their site's time zone) they are leavers, so everything they hold is revoked by the
//! schedule like any termination, across restarts.

use crate::access_requests::RequestError;
use crate::audit;
use crate::clock::to_micros;
use crate::engine::Engine;
use crate::model::{PersonRecord, RecordStatus};
use crate::store;
use chrono::NaiveDate;
use std::collections::BTreeMap;

/// The source visitors' records belong to.
pub const SOURCE: &str = "manual";
/// The longest a visitor may be recorded for; longer is an employee or contractor in a feed.
pub const MAX_DAYS: i64 = 31;

#[derive(Debug, Clone)]
pub struct Visitor {
    /// A key of their own (`V-2026-0042`), not a person a feed already knows.
    pub key: String,
    pub name: String,
    pub email: Option<String>,
    pub site: Option<String>,
    /// The person they visit: an entitled identity.
    pub host: String,
    /// Their last day.
    pub until: NaiveDate,
    pub reason: String,
}

fn invalid(m: impl Into<String>) -> RequestError {
    RequestError::Invalid(m.into())
}

/// Record a visitor as `by` (the desk): an active identity until the end of `until`.
pub async fn add(engine: &Engine, v: &Visitor, by: &str) -> Result<(), RequestError> {
    let now = engine.clock.now();
    let tz = engine.config.timezone_of(v.site.as_deref());
    let today = now.with_timezone(&tz).date_naive();
    if v.key.trim().is_empty() || v.name.trim().is_empty() {
        return Err(invalid("a visitor needs a key and a name"));
    }
    if v.reason.trim().is_empty() {
        return Err(invalid("a visitor needs a reason for the visit"));
    }
    if v.until < today {
        return Err(invalid(format!("the last day {} has passed", v.until)));
    }
    if (v.until - today).num_days() > MAX_DAYS {
        return Err(invalid(format!(
            "a visitor may be recorded for at most {MAX_DAYS} days; someone here longer belongs in a feed"
        )));
    }
    let mut tx = engine.store.begin_write().await?;
    let records = store::source_records_of(&mut tx, &v.key).await?;
    if records.iter().any(|r| r.source != SOURCE) {
        return Err(invalid(format!(
            "`{}` is a person a source already knows: give the visitor a key of their own",
            v.key
        )));
    }
    let Some(host) = store::get_identity(&mut tx, &v.host).await? else {
        return Err(invalid(format!("no host with key `{}`", v.host)));
    };
    if !host.lifecycle.entitled() {
        return Err(invalid(format!(
            "the host `{}` is {}",
            v.host, host.lifecycle
        )));
    }
    let mut attrs = BTreeMap::from([
        ("name".to_string(), v.name.trim().to_string()),
        ("employment_type".to_string(), "visitor".to_string()),
        ("host".to_string(), v.host.clone()),
        ("visit".to_string(), v.reason.trim().to_string()),
    ]);
    if let Some(email) = &v.email {
        attrs.insert("email".into(), email.trim().to_string());
    }
    if let Some(site) = &v.site {
        attrs.insert("site".into(), site.clone());
    }
    let record = PersonRecord {
        source: SOURCE.into(),
        key: v.key.trim().into(),
        location: format!("visitor recorded by {by}"),
        status: Some(RecordStatus::Active),
        hire_date: Some(today),
        termination_date: Some(v.until),
        contract_end: None,
        site: v.site.clone(),
        attrs,
    };
    engine.apply_record_tx(&mut tx, &record, now).await?;
    audit::append(
        &mut tx,
        to_micros(now),
        by,
        "visitor.added",
        &record.key,
        &serde_json::json!({"name": v.name, "host": v.host, "until": v.until, "reason": v.reason}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
