//! Credentials: static headers, and tokens fetched at run time (OAuth2 client credentials, a
//! login) that are cached, renewed ahead of expiry, and dropped when the vendor refuses them.

use super::super::ConnectorError;
use super::super::profile::AuthSpec;
use super::classify::{Class, Received, status_class};
use super::connector::HttpConnector;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use serde_json_path::JsonPath;
use std::collections::BTreeMap;

/// Secret values by name; Debug shows the names only.
pub(super) struct Secrets(pub(super) BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A token from a token endpoint or a login, and when to fetch the next one.
#[derive(Debug, Clone)]
pub(super) struct Token {
    /// Already `<prefix><token>`, marked sensitive.
    value: HeaderValue,
    /// On the connector's clock (the daemon's), so a test moves a token's life on without sleeping.
    renew_at: Option<DateTime<Utc>>,
}

/// Auth whose token is fetched at run time (OAuth2 client credentials, login).
#[derive(Debug)]
pub(super) struct TokenAuth {
    pub(super) header: HeaderName,
    current: tokio::sync::Mutex<Option<Token>>,
    /// JSONPath of the token in a login response.
    token_path: Option<JsonPath>,
}

/// How a connector authenticates, built from the profile and the resolved secrets.
#[derive(Debug, Default)]
pub(super) struct Credentials {
    pub(super) auth_header: Option<(HeaderName, HeaderValue)>,
    /// Static headers sent with every call besides the token (Brivo's `api-key`).
    pub(super) extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) token_auth: Option<TokenAuth>,
}

fn sensitive(h: &str, v: String) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|e| format!("auth header `{h}`: {e}"))?;
    let mut value = HeaderValue::from_str(&v)
        .map_err(|_| format!("auth header `{h}`: the secret is not a valid header value"))?;
    // Keeps the credential out of Debug output and HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok((name, value))
}

pub(super) fn credentials(
    auth: &AuthSpec,
    secrets: &BTreeMap<String, String>,
) -> Result<Credentials, String> {
    let secret = |n: &String| secrets.get(n).cloned().unwrap_or_default();
    let mut c = Credentials::default();
    match auth {
        AuthSpec::None => {}
        AuthSpec::Bearer { secret: s } => {
            c.auth_header = Some(sensitive("authorization", format!("Bearer {}", secret(s)))?)
        }
        AuthSpec::Header {
            header,
            prefix,
            secret: s,
        } => c.auth_header = Some(sensitive(header, format!("{prefix}{}", secret(s)))?),
        AuthSpec::Oauth2ClientCredentials {
            headers, header, ..
        } => {
            for (h, s) in headers {
                c.extra_headers.push(sensitive(h, secret(s))?);
            }
            c.token_auth = Some(TokenAuth {
                header: sensitive(header, String::new())?.0,
                current: tokio::sync::Mutex::new(None),
                token_path: None,
            });
        }
        AuthSpec::Login { header, token, .. } => {
            c.token_auth = Some(TokenAuth {
                header: sensitive(header, String::new())?.0,
                current: tokio::sync::Mutex::new(None),
                token_path: Some(JsonPath::parse(token).map_err(|e| format!("auth.token: {e}"))?),
            });
        }
    }
    Ok(c)
}

/// The origin (`scheme://host[:port]`) of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// `application/x-www-form-urlencoded` value escaping.
fn form_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl HttpConnector {
    /// The token header for this call, fetching a token first when there is none or it is due.
    pub(super) async fn token(&self, ta: &TokenAuth) -> Result<HeaderValue, ConnectorError> {
        let mut current = ta.current.lock().await;
        if let Some(t) = current.as_ref()
            && t.renew_at.is_none_or(|r| self.now() < r)
        {
            return Ok(t.value.clone());
        }
        let t = self.fetch_token(ta).await?;
        let value = t.value.clone();
        *current = Some(t);
        Ok(value)
    }

    /// Forget a token the vendor refused, unless another call has replaced it meanwhile.
    pub(super) async fn drop_token(&self, ta: &TokenAuth, refused: &HeaderValue) {
        let mut current = ta.current.lock().await;
        if current.as_ref().is_some_and(|t| t.value == *refused) {
            *current = None;
        }
    }

    /// The token request: (what it is called in errors, request, header prefix, renew margin).
    fn token_request(
        &self,
    ) -> Result<(&'static str, reqwest::RequestBuilder, String, Option<u64>), ConnectorError> {
        let secret = |n: &str| self.secrets.0.get(n).cloned().unwrap_or_default();
        match &self.profile.auth {
            AuthSpec::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                prefix,
                refresh_margin_secs,
                ..
            } => {
                let url = if token_url.starts_with('/') {
                    format!("{}{token_url}", origin(&self.base_url))
                } else {
                    token_url.clone()
                };
                let mut form = "grant_type=client_credentials".to_string();
                if let Some(sc) = scope {
                    form.push_str(&format!("&scope={}", form_escape(sc)));
                }
                let rb = self
                    .client
                    .post(url)
                    .basic_auth(secret(client_id), Some(secret(client_secret)))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form);
                Ok((
                    "token endpoint",
                    rb,
                    prefix.clone(),
                    Some(*refresh_margin_secs),
                ))
            }
            AuthSpec::Login {
                path,
                body,
                headers,
                prefix,
                secrets,
                ..
            } => {
                let ctx = serde_json::json!({
                    "secrets": secrets.iter().map(|n| (n.clone(), Value::String(secret(n)))).collect::<serde_json::Map<_, _>>(),
                });
                let mut rb = self.client.post(format!("{}{path}", self.base_url));
                for k in headers.keys() {
                    let v = self.render(&format!("auth.headers.{k}"), &ctx)?;
                    let h = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| self.permanent(format!("auth.headers.{k}: {e}")))?;
                    let v = HeaderValue::from_str(&v).map_err(|_| {
                        self.permanent(format!("auth.headers.{k}: not a valid header value"))
                    })?;
                    rb = rb.header(h, v);
                }
                if body.is_some() {
                    let b = self.render("auth.body", &ctx)?;
                    let json: Value = serde_json::from_str(&b).map_err(|e| {
                        self.permanent(format!("auth.body did not render to JSON: {e}"))
                    })?;
                    rb = rb.json(&json);
                }
                Ok(("login", rb, prefix.clone(), None))
            }
            _ => Err(self.permanent("profile auth has no token".into())),
        }
    }

    /// Ask the token endpoint or log in, through the same classifier as every call. Error
    /// messages name the endpoint and status only: the answer may carry a token and the request
    /// carries the credentials.
    async fn fetch_token(&self, ta: &TokenAuth) -> Result<Token, ConnectorError> {
        let (what, rb, prefix, margin) = self.token_request()?;
        self.wait_for_budget().await;
        let resp = rb.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            self.transient(format!("{what}: {why}"), None)
        })?;
        let r = self.receive(resp, what).await?;
        let retry_after = super::classify::retry_after(&r.headers, self.retry_after_cap);
        let message = format!("{what} answered HTTP {}", r.status);
        match status_class(&self.profile.status, r.status) {
            Class::Success => {}
            Class::RateLimited => return Err(self.rate_limited(r.status, retry_after)),
            Class::Transient => return Err(self.transient(message, retry_after)),
            Class::Auth => {
                return Err(self.permanent(format!("{message}: the credentials were refused")));
            }
            Class::Permanent => return Err(self.permanent(message)),
        }
        let body = self.parse_token_answer(what, &r)?;
        let token = match &ta.token_path {
            Some(p) => p.query(&body).first().cloned(),
            None => body.get("access_token").cloned(),
        };
        let Some(Value::String(token)) = token else {
            return Err(self.transient(format!("{what}: no token in the answer"), None));
        };
        let mut value = HeaderValue::from_str(&format!("{prefix}{token}"))
            .map_err(|_| self.permanent(format!("{what}: the token is not a header value")))?;
        value.set_sensitive(true);
        // Renew ahead of `expires_in`, by the margin or half the lifetime, whichever is shorter,
        // so a short-lived token (Brivo's 300 s) is never sent stale. An absurd lifetime is
        // renewed only when refused.
        let renew_at = margin.and_then(|m| {
            let life = body.get("expires_in").and_then(Value::as_u64)?;
            let early = m.min(life / 2);
            let life = i64::try_from(life.saturating_sub(early)).ok()?;
            self.now()
                .checked_add_signed(chrono::Duration::try_seconds(life)?)
        });
        Ok(Token { value, renew_at })
    }

    /// The token answer as JSON, without echoing it (it may hold a token).
    fn parse_token_answer(&self, what: &str, r: &Received) -> Result<Value, ConnectorError> {
        if !super::classify::is_json(&r.headers) {
            return Err(self.transient(
                format!(
                    "{what} answered HTTP {} without a JSON content type",
                    r.status
                ),
                None,
            ));
        }
        serde_json::from_slice(&r.body).map_err(|_| {
            self.transient(
                format!("{what} answered HTTP {} with unreadable JSON", r.status),
                None,
            )
        })
    }
}
