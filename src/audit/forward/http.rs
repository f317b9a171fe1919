//! JSON lines POSTed to an HTTP endpoint (a SIEM's HTTP collector): one record per line, the same
//! lines `audit export` writes. A 2xx answer accepts the whole batch; anything else is retried.

use super::ForwardError;
use crate::audit::export::Line;
use crate::store::audit::AuditRow;
use std::time::Duration;

pub(super) struct HttpSink {
    url: String,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl HttpSink {
    pub(super) fn new(
        url: String,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header `{name}`: {e}"))?;
            // The value is a secret: never echoed in an error.
            let mut v = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| format!("header `{name}`: the value is not a valid header value"))?;
            v.set_sensitive(true);
            map.insert(n, v);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            client,
            headers: map,
        })
    }

    pub(super) async fn send(&mut self, rows: &[AuditRow]) -> Result<(), ForwardError> {
        let mut body = String::new();
        for r in rows {
            body.push_str(&serde_json::to_string(&Line::from(r.clone())).unwrap_or_default());
            body.push('\n');
        }
        let resp = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| ForwardError::Send(format!("POST {}: {}", self.url, e.without_url())))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(ForwardError::Send(format!(
            "POST {}: {status}: {text}",
            self.url
        )))
    }
}
