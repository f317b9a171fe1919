//! Sending one operation: render its templates, wait for the rate budget and any vendor
//! cooldown, attach the credential, read the answer with a size bound, and classify it.

use super::super::{ConnectorError, GrantRequest};
use super::classify::{Failure, Received};
use super::compile::op;
use super::connector::HttpConnector;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// A successful answer to one operation.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Value,
    /// Bytes received, for the bound on a whole listing.
    pub(super) bytes: u64,
}

impl HttpConnector {
    pub(super) fn context(
        &self,
        req: &GrantRequest,
        person_ref: Option<&str>,
        grant_ref: Option<&str>,
    ) -> Value {
        let window = req.window.as_ref().map(|w| {
            serde_json::json!({
                "weekdays": w.weekdays, "from_minute": w.from_minute, "until_minute": w.until_minute,
            })
        });
        let target = self.vendor_target(&req.target);
        // A compound target ("site/access group", "org/group") reaches templates in parts.
        let target_parts: Vec<&str> = target.split('/').collect();
        serde_json::json!({
            "person": {
                "key": req.person.key, "name": req.person.name, "email": req.person.email,
                "attrs": req.person.attrs,
            },
            "person_ref": person_ref,
            "target": target,
            "target_parts": target_parts,
            "grant_ref": grant_ref,
            "listed": [],
            "grant": {
                "credential": req.credential,
                "window": window,
                "valid_until": req.valid_until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                "timezone": req.timezone.name(),
            },
        })
    }

    pub(super) fn render(&self, name: &str, ctx: &Value) -> Result<String, ConnectorError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
            .map_err(|e| self.permanent(format!("profile template {name}: {e}")))
    }

    pub(super) fn permanent(&self, message: String) -> ConnectorError {
        ConnectorError::Permanent {
            vendor: self.name.clone(),
            message,
        }
    }

    pub(super) fn transient(
        &self,
        message: String,
        retry_after: Option<Duration>,
    ) -> ConnectorError {
        ConnectorError::Transient {
            vendor: self.name.clone(),
            message,
            retry_after,
        }
    }

    pub(super) async fn wait_for_budget(&self) {
        let started = Instant::now();
        let mut waited = false;
        loop {
            let until = *self
                .cooldown_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => {
                    waited = true;
                    tokio::time::sleep_until(t).await
                }
                _ => break,
            }
        }
        let revoke = super::super::call::is_revoke();
        waited |= self.gate.take(&self.limiter, revoke).await;
        // The request leaves now: this is the command's attempt, whatever the wait before it.
        super::super::call::sent();
        if waited && let Some((count, seconds)) = self.rate_waits.get() {
            count.inc();
            seconds.inc_by(started.elapsed().as_secs_f64());
        }
    }

    /// Hold every call until `d` from now (never longer than the connector's cap).
    pub(super) fn set_cooldown(&self, d: Duration) {
        let Some(until) = Instant::now().checked_add(d.min(self.retry_after_cap)) else {
            return;
        };
        let mut c = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if c.is_none_or(|t| t < until) {
            *c = Some(until);
        }
    }

    /// Read an answer's body as a stream, stopping with an error once it passes the
    /// connector's size limit: an oversized answer never becomes memory.
    pub(super) async fn receive(
        &self,
        mut resp: reqwest::Response,
        call: &str,
    ) -> Result<Received, ConnectorError> {
        let status = resp.status().as_u16();
        let limit = self.max_response_bytes;
        let too_big = |what: String| {
            self.transient(
                format!("{call} answered HTTP {status} with {what}, over the limit of {limit} bytes (max_response_bytes)"),
                None,
            )
        };
        if let Some(len) = resp.content_length()
            && len > limit
        {
            return Err(too_big(format!("{len} bytes")));
        }
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                let why = if e.is_timeout() {
                    "timed out while reading the answer".to_string()
                } else {
                    format!("the answer broke off after {} bytes", body.len())
                };
                self.transient(format!("{call} (HTTP {status}): {why}"), None)
            })?;
            let Some(chunk) = chunk else { break };
            if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
                return Err(too_big(format!("more than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Received {
            status,
            headers,
            body,
        })
    }

    /// Send one operation. Ok((status, body)) for 2xx and for the operation's `exists` /
    /// `gone` statuses; everything else is classified into a [`ConnectorError`].
    pub(super) async fn call(
        &self,
        name: &'static str,
        ctx: &Value,
    ) -> Result<(u16, Value), ConnectorError> {
        self.call_page(name, ctx, &[])
            .await
            .map(|a| (a.status, a.body))
    }

    // One span per vendor request: the operation name stands for the path template, because the
    // rendered path carries vendor ids; headers (the credential) and bodies are never recorded.
    #[tracing::instrument(
        name = "vendor.call",
        skip_all,
        fields(
            otel.kind = "client",
            connector = %self.name,
            operation = name,
            http.request.method = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        )
    )]
    pub(super) async fn call_page(
        &self,
        name: &'static str,
        ctx: &Value,
        extra_query: &[(String, String)],
    ) -> Result<Answer, ConnectorError> {
        let o = op(&self.profile, name)
            .ok_or_else(|| self.permanent(format!("profile has no operation {name}")))?;
        let path = self.render(&format!("{name}.path"), ctx)?;
        let mut query = Vec::new();
        for k in o.query.keys() {
            query.push((k.clone(), self.render(&format!("{name}.query.{k}"), ctx)?));
        }
        query.extend_from_slice(extra_query);
        let method = reqwest::Method::from_bytes(o.method.as_bytes())
            .map_err(|e| self.permanent(e.to_string()))?;
        tracing::Span::current().record("http.request.method", method.as_str());
        let body = match &o.body {
            Some(_) => Some(self.render_body(name, ctx)?),
            None => None,
        };
        let call = format!("{} {path}", o.method);
        // A token the vendor refuses (expired, revoked) is replaced once per call: Verkada's
        // cannot be refreshed and answers 401 "Token expired" (vendor-apis.md Verkada).
        let mut renewed = false;
        loop {
            let mut rb = self
                .client
                .request(method.clone(), format!("{}{}", self.base_url, path));
            if !query.is_empty() {
                rb = rb.query(&query);
            }
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let (rb, used) = self.authenticate(rb).await?;
            self.wait_for_budget().await;
            let resp = rb.send().await.map_err(|e| {
                let why = if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    e.to_string()
                };
                self.transient(format!("{name} ({call}): {why}"), None)
            })?;
            tracing::Span::current().record("http.response.status_code", resp.status().as_u16());
            let r = self.receive(resp, &format!("{name} ({call})")).await?;
            match self.classify(name, o, &call, &r) {
                Ok(body) => {
                    return Ok(Answer {
                        status: r.status,
                        bytes: r.body.len() as u64,
                        headers: r.headers,
                        body,
                    });
                }
                Err(Failure::Error(e)) => return Err(e),
                Err(Failure::Refused(message)) => match (&self.creds.token_auth, used) {
                    (Some(ta), Some(v)) if !renewed => {
                        self.drop_token(ta, &v).await;
                        renewed = true;
                    }
                    (_, used) => {
                        let after = if used.is_some() {
                            " even with a freshly fetched token"
                        } else {
                            ""
                        };
                        return Err(self.permanent(format!("credential refused{after}: {message}")));
                    }
                },
            }
        }
    }

    fn render_body(&self, name: &str, ctx: &Value) -> Result<Value, ConnectorError> {
        let body = self.render(&format!("{name}.body"), ctx)?;
        serde_json::from_str::<Value>(&body).map_err(|e| {
            self.permanent(format!(
                "operations.{name}.body did not render to JSON: {e}"
            ))
        })
    }

    /// Attach the static headers and the current token; returns the token used.
    async fn authenticate(
        &self,
        mut rb: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, Option<HeaderValue>), ConnectorError> {
        if let Some((h, v)) = &self.creds.auth_header {
            rb = rb.header(h.clone(), v.clone());
        }
        for (h, v) in &self.creds.extra_headers {
            rb = rb.header(h.clone(), v.clone());
        }
        let mut used = None;
        if let Some(ta) = &self.creds.token_auth {
            let v = self.token(ta).await?;
            rb = rb.header(ta.header.clone(), v.clone());
            used = Some(v);
        }
        Ok((rb, used))
    }
}
