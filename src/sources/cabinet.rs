//! A key cabinet's event feed (key out, key returned, overdue) as a source: one page of
//! `GET /events?after=<cursor>` read into typed events and the cursor to resume from. Applying a
//! page (holdings, audit, the cursor as checkpoint, in one transaction) is the cabinet job's
//! (`jobs::cabinet_events`).

use serde::Deserialize;

/// How to reach one cabinet's event feed.
#[derive(Debug, Clone)]
pub struct Feed {
    pub connector: String,
    pub base_url: String,
    /// A header and its value, when the profile's auth is a static header or bearer token.
    pub auth: Option<(String, String)>,
}

/// One event as the cabinet reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CabinetEvent {
    pub id: serde_json::Value,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_external_id: String,
    pub key_id: String,
    #[serde(default)]
    pub key_group: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

/// One page of events, and the cursor that follows it (text, whatever JSON type the cabinet
/// wrote it in).
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<CabinetEvent>,
    pub cursor: String,
}

#[derive(Debug, Deserialize)]
struct RawPage {
    events: Vec<CabinetEvent>,
    cursor: serde_json::Value,
}

/// What went wrong reading a cabinet's feed, and which cabinet.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cabinet `{connector}`: event feed: {message}")]
pub struct FeedError {
    pub connector: String,
    pub message: String,
}

/// The page of events after `cursor` (from the start without one). A page of events without a
/// cursor, or whose cursor does not move past `cursor`, is an error: applying it would read the
/// same events again forever.
pub async fn fetch(
    client: &reqwest::Client,
    feed: &Feed,
    cursor: Option<&str>,
) -> Result<EventPage, FeedError> {
    let err = |message: String| FeedError {
        connector: feed.connector.clone(),
        message,
    };
    let mut req = client.get(format!("{}/events", feed.base_url));
    if let Some(c) = cursor {
        req = req.query(&[("after", c)]);
    }
    if let Some((h, v)) = &feed.auth {
        req = req.header(h.as_str(), v.as_str());
    }
    let resp = req.send().await.map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(err(format!("HTTP {status}")));
    }
    let page = resp
        .json::<RawPage>()
        .await
        .map_err(|e| err(format!("unreadable answer: {e}")))?;
    if page.events.is_empty() {
        return Ok(EventPage {
            events: page.events,
            cursor: cursor.unwrap_or_default().to_string(),
        });
    }
    let next = match &page.cursor {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(err("events came without a cursor".into())),
    };
    if cursor == Some(next.as_str()) {
        return Err(err(format!(
            "cursor {next} did not advance past new events"
        )));
    }
    Ok(EventPage {
        events: page.events,
        cursor: next,
    })
}
