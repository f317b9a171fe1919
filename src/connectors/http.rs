//! The declarative HTTP connector: runs a vendor profile's operations with the vendor's auth, under
//! its rate limit, and reads the answers with JSONPath.
//!
//! Issue = find person (or create) -> find grant -> create grant when absent -> read back.
//! Revoke = find the person's grants on the target -> delete each -> read back.
//! Both are idempotent at the vendor: a repeat finds what the first did.

use super::profile::{AuthSpec, ConfirmMode, Operation, Profile, RuleClass};
use super::{Connector, ConnectorError, GrantRequest, Outcome, RetryPolicy};
use crate::config::ConnectorConfig;
use crate::model::Action;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use minijinja::Environment;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use serde_json_path::JsonPath;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Compiled JSONPaths of one operation.
#[derive(Debug)]
pub struct Paths {
    items: Option<JsonPath>,
    id: Option<JsonPath>,
    /// Pagination total (`pagination.total`).
    total: Option<JsonPath>,
}

/// Secret values by name; Debug shows the names only.
struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A token from a token endpoint or a login, and when to fetch the next one.
#[derive(Debug, Clone)]
struct Token {
    /// Already `<prefix><token>`, marked sensitive.
    value: HeaderValue,
    renew_at: Option<Instant>,
}

/// Auth whose token is fetched at run time (OAuth2 client credentials, login).
#[derive(Debug)]
struct TokenAuth {
    header: HeaderName,
    current: tokio::sync::Mutex<Option<Token>>,
    /// JSONPath of the token in a login response.
    token_path: Option<JsonPath>,
}

/// Per-rule compiled message path.
#[derive(Debug)]
struct Rule {
    class: RuleClass,
    cooldown: Option<Duration>,
    message: Option<JsonPath>,
}

#[derive(Debug)]
pub struct HttpConnector {
    name: String,
    profile: Profile,
    base_url: String,
    client: reqwest::Client,
    auth_header: Option<(HeaderName, HeaderValue)>,
    /// Static headers sent with every call besides the token (Brivo's `api-key`).
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    token_auth: Option<TokenAuth>,
    secrets: Secrets,
    rules: Vec<Rule>,
    env: Environment<'static>,
    paths: BTreeMap<&'static str, Paths>,
    limiter: DefaultDirectRateLimiter,
    rate: (u32, u32),
    /// A vendor cooldown (Retry-After): no request leaves before this instant.
    cooldown_until: Mutex<Option<Instant>>,
    targets: BTreeMap<String, String>,
    max_attempts: u32,
    /// Vendor person ids learnt in this process, so a retry after a failed later step does not
    /// look the person up again (the store keeps them too, once a command completes).
    person_refs: Mutex<HashMap<String, String>>,
    /// Waits for the rate budget (count, seconds), once the daemon's metrics are attached.
    rate_waits: std::sync::OnceLock<super::RateWaitCounters>,
}

const OPS: [&str; 5] = [
    "find_person",
    "create_person",
    "find_grant",
    "create_grant",
    "delete_grant",
];

fn op<'a>(p: &'a Profile, name: &str) -> Option<&'a Operation> {
    match name {
        "find_person" => p.operations.find_person.as_ref(),
        "create_person" => p.operations.create_person.as_ref(),
        "find_grant" => Some(&p.operations.find_grant),
        "create_grant" => Some(&p.operations.create_grant),
        "delete_grant" => Some(&p.operations.delete_grant),
        _ => None,
    }
}

/// Nuki's weekday bitmask: Monday = 64 .. Sunday = 1 (vendor-apis.md, Nuki grant body).
fn nuki_weekdays(days: Vec<u8>) -> u8 {
    days.iter()
        .filter(|d| (1..=7).contains(*d))
        .fold(0u8, |m, d| m | (1u8 << (7 - d)))
}

fn parse_instant(value: &str) -> Result<chrono::DateTime<chrono::Utc>, minijinja::Error> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{value}` is not an RFC 3339 time: {e}"),
            )
        })
}

fn parse_tz(tz: &str) -> Result<chrono_tz::Tz, minijinja::Error> {
    tz.parse::<chrono_tz::Tz>().map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{tz}` is not an IANA time zone: {e}"),
        )
    })
}

/// Unix seconds (vendor-apis.md quirk 10: Verkada).
fn unix_seconds(value: String) -> Result<i64, minijinja::Error> {
    Ok(parse_instant(&value)?.timestamp())
}

/// Naive wall-clock time in a zone, no offset (vendor-apis.md Salto: schedule times are naive
/// local time in the site's zone).
fn local_naive(value: String, tz: String) -> Result<String, minijinja::Error> {
    Ok(parse_instant(&value)?
        .with_timezone(&parse_tz(&tz)?)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string())
}

/// ISO 8601 local time with its UTC offset (vendor-apis.md quirk 10: Brivo).
fn iso_offset(value: String, tz: String) -> Result<String, minijinja::Error> {
    Ok(parse_instant(&value)?
        .with_timezone(&parse_tz(&tz)?)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string())
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

type Compiled = (Environment<'static>, BTreeMap<&'static str, Paths>);

impl HttpConnector {
    /// Compile every template and JSONPath of a profile; an error names the operation and field.
    pub fn compile(profile: &Profile) -> Result<Compiled, String> {
        let mut env = crate::policy::sandboxed_env();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("nuki_weekdays", nuki_weekdays);
        env.add_filter("unix_seconds", unix_seconds);
        env.add_filter("local_naive", local_naive);
        env.add_filter("iso_offset", iso_offset);
        let perr = |field: &str, e: String| format!("{}: {field}: {e}", profile.origin);
        for (i, r) in profile.status.rules.iter().enumerate() {
            env.add_template_owned(
                format!("status.rules.{i}"),
                format!("{{% if {} %}}1{{% endif %}}", r.when),
            )
            .map_err(|e| perr(&format!("status.rules[{i}].when"), e.to_string()))?;
            if let Some(m) = &r.message {
                JsonPath::parse(m)
                    .map_err(|e| perr(&format!("status.rules[{i}].message"), e.to_string()))?;
            }
        }
        if let AuthSpec::Login {
            body,
            headers,
            token,
            ..
        } = &profile.auth
        {
            if let Some(b) = body {
                env.add_template_owned("auth.body", b.clone())
                    .map_err(|e| perr("auth.body", e.to_string()))?;
            }
            for (k, v) in headers {
                env.add_template_owned(format!("auth.headers.{k}"), v.clone())
                    .map_err(|e| perr(&format!("auth.headers.{k}"), e.to_string()))?;
            }
            JsonPath::parse(token).map_err(|e| perr("auth.token", e.to_string()))?;
        }
        let mut paths = BTreeMap::new();
        for name in OPS {
            let Some(o) = op(profile, name) else { continue };
            let err = |field: &str, e: String| {
                format!("{}: operations.{name}.{field}: {e}", profile.origin)
            };
            env.add_template_owned(format!("{name}.path"), o.path.clone())
                .map_err(|e| err("path", e.to_string()))?;
            for (k, v) in &o.query {
                env.add_template_owned(format!("{name}.query.{k}"), v.clone())
                    .map_err(|e| err(&format!("query.{k}"), e.to_string()))?;
            }
            if let Some(b) = &o.body {
                env.add_template_owned(format!("{name}.body"), b.clone())
                    .map_err(|e| err("body", e.to_string()))?;
            }
            if let Some(m) = &o.matches {
                env.add_template_owned(
                    format!("{name}.matches"),
                    format!("{{% if {m} %}}1{{% endif %}}"),
                )
                .map_err(|e| err("matches", e.to_string()))?;
            }
            let parse = |field: &str, p: &Option<String>| {
                p.as_deref()
                    .map(JsonPath::parse)
                    .transpose()
                    .map_err(|e| err(field, e.to_string()))
            };
            let total = o.pagination.as_ref().and_then(|p| p.total.clone());
            paths.insert(
                name,
                Paths {
                    items: parse("items", &o.items)?,
                    id: parse("id", &o.id)?,
                    total: parse("pagination.total", &total)?,
                },
            );
            if !matches!(
                o.method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
            ) {
                return Err(err(
                    "method",
                    format!("`{}` is not an HTTP method latchkey sends", o.method),
                ));
            }
        }
        Ok((env, paths))
    }

    pub fn new(
        name: &str,
        profile: Profile,
        cc: &ConnectorConfig,
        secrets: BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let (env, paths) = Self::compile(&profile)?;
        let secret = |n: &String| secrets.get(n).cloned().unwrap_or_default();
        let sensitive = |h: &str, v: String| -> Result<(HeaderName, HeaderValue), String> {
            let name = HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("auth header `{h}`: {e}"))?;
            let mut value = HeaderValue::from_str(&v).map_err(|_| {
                format!("auth header `{h}`: the secret is not a valid header value")
            })?;
            // Keeps the credential out of Debug output and HTTP/2 header compression tables.
            value.set_sensitive(true);
            Ok((name, value))
        };
        let mut auth_header = None;
        let mut extra_headers = Vec::new();
        let mut token_auth = None;
        match &profile.auth {
            AuthSpec::None => {}
            AuthSpec::Bearer { secret: s } => {
                auth_header = Some(sensitive("authorization", format!("Bearer {}", secret(s)))?)
            }
            AuthSpec::Header {
                header,
                prefix,
                secret: s,
            } => auth_header = Some(sensitive(header, format!("{prefix}{}", secret(s)))?),
            AuthSpec::Oauth2ClientCredentials {
                headers, header, ..
            } => {
                for (h, s) in headers {
                    extra_headers.push(sensitive(h, secret(s))?);
                }
                token_auth = Some(TokenAuth {
                    header: sensitive(header, String::new())?.0,
                    current: tokio::sync::Mutex::new(None),
                    token_path: None,
                });
            }
            AuthSpec::Login { header, token, .. } => {
                token_auth = Some(TokenAuth {
                    header: sensitive(header, String::new())?.0,
                    current: tokio::sync::Mutex::new(None),
                    token_path: Some(
                        JsonPath::parse(token).map_err(|e| format!("auth.token: {e}"))?,
                    ),
                });
            }
        }
        let mut rules = Vec::new();
        for (i, r) in profile.status.rules.iter().enumerate() {
            rules.push(Rule {
                class: r.class,
                cooldown: r.cooldown_secs.map(Duration::from_secs),
                message: r
                    .message
                    .as_deref()
                    .map(JsonPath::parse)
                    .transpose()
                    .map_err(|e| format!("status.rules[{i}].message: {e}"))?,
            });
        }
        let rl = cc.rate_limit.unwrap_or(profile.rate_limit);
        let per_second =
            NonZeroU32::new(rl.per_second).ok_or("rate_limit.per_second must be at least 1")?;
        let burst = NonZeroU32::new(rl.burst).ok_or("rate_limit.burst must be at least 1")?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(profile.http.timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(cc.concurrency.max(1) * 2)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            base_url: cc
                .base_url
                .clone()
                .unwrap_or_else(|| profile.base_url.clone())
                .trim_end_matches('/')
                .to_string(),
            max_attempts: cc.max_attempts.unwrap_or(profile.retry.max_attempts),
            profile,
            client,
            auth_header,
            extra_headers,
            token_auth,
            secrets: Secrets(secrets),
            rules,
            env,
            paths,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            rate: (rl.per_second, rl.burst),
            cooldown_until: Mutex::new(None),
            targets: cc.targets.clone(),
            person_refs: Mutex::new(HashMap::new()),
            rate_waits: std::sync::OnceLock::new(),
        })
    }

    fn vendor_target(&self, target: &str) -> String {
        self.targets
            .get(target)
            .cloned()
            .unwrap_or_else(|| target.to_string())
    }

    fn context(
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

    fn render(&self, name: &str, ctx: &Value) -> Result<String, ConnectorError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
            .map_err(|e| self.permanent(format!("profile template {name}: {e}")))
    }

    fn permanent(&self, message: String) -> ConnectorError {
        ConnectorError::Permanent {
            vendor: self.name.clone(),
            message,
        }
    }

    async fn wait_for_budget(&self) {
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
        // `check` takes a cell when one is free, exactly as `until_ready` would without waiting.
        if self.limiter.check().is_err() {
            waited = true;
            self.limiter.until_ready().await;
        }
        if waited && let Some((count, seconds)) = self.rate_waits.get() {
            count.inc();
            seconds.inc_by(started.elapsed().as_secs_f64());
        }
    }

    fn set_cooldown(&self, d: Duration) {
        let mut c = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + d;
        if c.is_none_or(|t| t < until) {
            *c = Some(until);
        }
    }

    /// The token header for this call, fetching a token first when there is none or it is due.
    async fn token(&self, ta: &TokenAuth) -> Result<HeaderValue, ConnectorError> {
        let mut current = ta.current.lock().await;
        if let Some(t) = current.as_ref()
            && t.renew_at.is_none_or(|r| Instant::now() < r)
        {
            return Ok(t.value.clone());
        }
        let t = self.fetch_token(ta).await?;
        let value = t.value.clone();
        *current = Some(t);
        Ok(value)
    }

    /// Forget a token the vendor refused, unless another call has replaced it meanwhile.
    async fn drop_token(&self, ta: &TokenAuth, refused: &HeaderValue) {
        let mut current = ta.current.lock().await;
        if current.as_ref().is_some_and(|t| t.value == *refused) {
            *current = None;
        }
    }

    fn transient(&self, message: String, retry_after: Option<Duration>) -> ConnectorError {
        ConnectorError::Transient {
            vendor: self.name.clone(),
            message,
            retry_after,
        }
    }

    /// Ask the token endpoint or log in. Error messages name the endpoint and status only: the
    /// response may carry a token and the request carries the credentials.
    async fn fetch_token(&self, ta: &TokenAuth) -> Result<Token, ConnectorError> {
        let secret = |n: &str| self.secrets.0.get(n).cloned().unwrap_or_default();
        let (what, rb, prefix, margin) = match &self.profile.auth {
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
                (
                    "token endpoint",
                    rb,
                    prefix.clone(),
                    Some(*refresh_margin_secs),
                )
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
                    let (h, v) = (
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|e| self.permanent(format!("auth.headers.{k}: {e}")))?,
                        HeaderValue::from_str(&v).map_err(|_| {
                            self.permanent(format!("auth.headers.{k}: not a valid header value"))
                        })?,
                    );
                    rb = rb.header(h, v);
                }
                if body.is_some() {
                    let b = self.render("auth.body", &ctx)?;
                    let json: Value = serde_json::from_str(&b).map_err(|e| {
                        self.permanent(format!("auth.body did not render to JSON: {e}"))
                    })?;
                    rb = rb.json(&json);
                }
                ("login", rb, prefix.clone(), None)
            }
            _ => return Err(self.permanent("profile auth has no token".into())),
        };
        self.wait_for_budget().await;
        let resp = rb.send().await.map_err(|e| {
            self.transient(
                format!(
                    "{what}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "request failed"
                    }
                ),
                None,
            )
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let message = format!("{what} answered HTTP {status}");
            if self.profile.status.rate_limited.contains(&status) {
                if let Some(d) = retry_after {
                    self.set_cooldown(d);
                }
                return Err(ConnectorError::RateLimited {
                    vendor: self.name.clone(),
                    status,
                    retry_after,
                });
            }
            if status >= 500 || self.profile.status.retry.contains(&status) {
                return Err(self.transient(message, retry_after));
            }
            return Err(self.permanent(message));
        }
        let body: Value = serde_json::from_str(&text)
            .map_err(|_| self.transient(format!("{what}: the answer is not JSON"), None))?;
        let token = match &ta.token_path {
            Some(p) => p.query(&body).first().cloned(),
            None => body.get("access_token").cloned(),
        };
        let Some(Value::String(token)) = token else {
            return Err(self.permanent(format!("{what}: no token in the answer")));
        };
        let mut value = HeaderValue::from_str(&format!("{prefix}{token}"))
            .map_err(|_| self.permanent(format!("{what}: the token is not a header value")))?;
        value.set_sensitive(true);
        // Renew ahead of `expires_in`, by the margin or half the lifetime, whichever is shorter,
        // so a short-lived token (Brivo's 300 s) is never sent stale.
        let renew_at = margin.and_then(|m| {
            let life = body.get("expires_in").and_then(Value::as_u64)?;
            let early = m.min(life / 2);
            Some(Instant::now() + Duration::from_secs(life.saturating_sub(early)))
        });
        Ok(Token { value, renew_at })
    }

    /// Send one operation. Ok((status, headers, body)) for 2xx and for the operation's `exists` /
    /// `gone` statuses; everything else is classified into a [`ConnectorError`].
    async fn call(&self, name: &'static str, ctx: &Value) -> Result<(u16, Value), ConnectorError> {
        self.call_page(name, ctx, &[]).await.map(|(s, _, b)| (s, b))
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
    async fn call_page(
        &self,
        name: &'static str,
        ctx: &Value,
        extra_query: &[(String, String)],
    ) -> Result<(u16, HeaderMap, Value), ConnectorError> {
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
            Some(_) => {
                let body = self.render(&format!("{name}.body"), ctx)?;
                Some(serde_json::from_str::<Value>(&body).map_err(|e| {
                    self.permanent(format!(
                        "operations.{name}.body did not render to JSON: {e}"
                    ))
                })?)
            }
            None => None,
        };
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
            if let Some((h, v)) = &self.auth_header {
                rb = rb.header(h.clone(), v.clone());
            }
            for (h, v) in &self.extra_headers {
                rb = rb.header(h.clone(), v.clone());
            }
            let mut used = None;
            if let Some(ta) = &self.token_auth {
                let v = self.token(ta).await?;
                rb = rb.header(ta.header.clone(), v.clone());
                used = Some(v);
            }
            self.wait_for_budget().await;
            let resp = rb.send().await.map_err(|e| {
                self.transient(
                    format!(
                        "{} {path}: {}",
                        o.method,
                        if e.is_timeout() {
                            "timed out".to_string()
                        } else {
                            e.to_string()
                        }
                    ),
                    None,
                )
            })?;
            let status = resp.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
            if status == 401
                && !renewed
                && let (Some(ta), Some(v)) = (&self.token_auth, &used)
            {
                self.drop_token(ta, v).await;
                renewed = true;
                continue;
            }
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            return self.classify(o, &path, status, headers, text);
        }
    }

    fn classify(
        &self,
        o: &Operation,
        path: &str,
        status: u16,
        headers: HeaderMap,
        text: String,
    ) -> Result<(u16, HeaderMap, Value), ConnectorError> {
        let retry_after = retry_after(&headers);
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
        };
        let mut excerpt: String = text.chars().take(300).collect();
        if excerpt.is_empty() {
            excerpt = "(empty body)".into();
        }
        if !self.rules.is_empty() {
            let rctx = serde_json::json!({ "status": status, "body": body, "text": text });
            for (i, rule) in self.rules.iter().enumerate() {
                let hit = self.render(&format!("status.rules.{i}"), &rctx)?;
                if hit != "1" {
                    continue;
                }
                let vendor_message = rule
                    .message
                    .as_ref()
                    .and_then(|p| p.query(&body).first().cloned())
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| excerpt.clone());
                let message = format!("{} {path} -> HTTP {status}: {vendor_message}", o.method);
                return Err(match rule.class {
                    RuleClass::RateLimited => {
                        let retry_after = retry_after.or(rule.cooldown);
                        if let Some(d) = retry_after {
                            self.set_cooldown(d);
                        }
                        ConnectorError::RateLimited {
                            vendor: self.name.clone(),
                            status,
                            retry_after,
                        }
                    }
                    RuleClass::Retry => self.transient(message, retry_after),
                    RuleClass::Permanent => self.permanent(message),
                });
            }
        }
        if (200..300).contains(&status) || o.exists.contains(&status) || o.gone.contains(&status) {
            return Ok((status, headers, body));
        }
        if self.profile.status.rate_limited.contains(&status) {
            if let Some(d) = retry_after {
                self.set_cooldown(d);
            }
            return Err(ConnectorError::RateLimited {
                vendor: self.name.clone(),
                status,
                retry_after,
            });
        }
        let message = format!("{} {path} -> HTTP {status}: {excerpt}", o.method);
        if self.profile.status.retry.contains(&status) {
            return Err(self.transient(message, retry_after));
        }
        Err(self.permanent(message))
    }

    /// Every item of a list operation, across pages when the operation paginates.
    async fn list(&self, name: &'static str, ctx: &Value) -> Result<Vec<Value>, ConnectorError> {
        let Some(items_path) = self.paths.get(name).and_then(|p| p.items.as_ref()) else {
            return Ok(vec![]);
        };
        let pagination = op(&self.profile, name).and_then(|o| o.pagination.as_ref());
        let Some(pg) = pagination else {
            let (_, body) = self.call(name, ctx).await?;
            return Ok(items_path.query(&body).all().into_iter().cloned().collect());
        };
        let mut out = Vec::new();
        let mut offset: u64 = 0;
        for _ in 0..pg.max_pages.max(1) {
            let extra = [
                (pg.offset_param.clone(), offset.to_string()),
                (pg.limit_param.clone(), pg.page_size.to_string()),
            ];
            let (_, headers, body) = self.call_page(name, ctx, &extra).await?;
            let page: Vec<Value> = items_path.query(&body).all().into_iter().cloned().collect();
            let got = page.len() as u64;
            out.extend(page);
            offset += got;
            let total = match (
                &pg.range_header,
                self.paths.get(name).and_then(|p| p.total.as_ref()),
            ) {
                // `start-end/count` (Kisi's X-Collection-Range, vendor-apis.md Kisi).
                (Some(h), _) => headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit_once('/'))
                    .and_then(|(_, n)| n.trim().parse::<u64>().ok()),
                (None, Some(p)) => p.query(&body).first().and_then(Value::as_u64),
                (None, None) => None,
            };
            if got < u64::from(pg.page_size) || got == 0 || total.is_some_and(|t| offset >= t) {
                return Ok(out);
            }
        }
        Ok(out)
    }

    fn extract_id(&self, name: &'static str, v: &Value) -> Option<String> {
        let p = self.paths.get(name)?.id.as_ref()?;
        p.query(v).first().and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }

    /// The items of a listing that belong to this person (per the operation's `matches`).
    fn matching_items(
        &self,
        name: &'static str,
        items: &[Value],
        ctx: &Value,
    ) -> Result<Vec<Value>, ConnectorError> {
        let has_match = op(&self.profile, name).is_some_and(|o| o.matches.is_some());
        let mut out = Vec::new();
        for item in items {
            if has_match {
                let mut c = ctx.clone();
                if let Value::Object(m) = &mut c {
                    m.insert("item".into(), item.clone());
                }
                let hit = self
                    .env
                    .get_template(&format!("{name}.matches"))
                    .and_then(|t| t.render(minijinja::value::Serde(&c)))
                    .map_err(|e| self.permanent(format!("operations.{name}.matches: {e}")))?;
                if hit != "1" {
                    continue;
                }
            }
            out.push(item.clone());
        }
        Ok(out)
    }

    async fn person_ref(
        &self,
        req: &GrantRequest,
        create: bool,
    ) -> Result<Option<String>, ConnectorError> {
        if let Some(r) = &req.person_ref {
            return Ok(Some(r.clone()));
        }
        let cached = self
            .person_refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.person.key)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self.lookup_or_create_person(req, create).await?;
        if let Some(r) = &found {
            self.person_refs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(req.person.key.clone(), r.clone());
        }
        Ok(found)
    }

    async fn lookup_or_create_person(
        &self,
        req: &GrantRequest,
        create: bool,
    ) -> Result<Option<String>, ConnectorError> {
        let ctx = self.context(req, None, None);
        if let Some(id) = self.find_person(&ctx).await? {
            return Ok(Some(id));
        }
        if !create || self.profile.operations.create_person.is_none() {
            return Ok(None);
        }
        let (status, body) = self.call("create_person", &ctx).await?;
        let created =
            op(&self.profile, "create_person").is_some_and(|o| !o.exists.contains(&status));
        if created && let Some(id) = self.extract_id("create_person", &body) {
            return Ok(Some(id));
        }
        // Already existed (or the vendor returned no id): look it up.
        self.find_person(&ctx)
            .await?
            .map(Some)
            .ok_or_else(|| ConnectorError::Transient {
                vendor: self.name.clone(),
                message: "person created but not found by find_person yet".into(),
                retry_after: None,
            })
    }

    async fn find_person(&self, ctx: &Value) -> Result<Option<String>, ConnectorError> {
        if self.profile.operations.find_person.is_none() {
            return Ok(None);
        }
        let all = self.list("find_person", ctx).await?;
        let items = self.matching_items("find_person", &all, ctx)?;
        Ok(items
            .first()
            .and_then(|i| self.extract_id("find_person", i)))
    }

    /// The person's grant ids on the target, and every item the listing showed (for
    /// replace-all writes).
    async fn grants(
        &self,
        req: &GrantRequest,
        person_ref: &str,
    ) -> Result<(Vec<String>, Vec<Value>), ConnectorError> {
        let ctx = self.context(req, Some(person_ref), None);
        let all = self.list("find_grant", &ctx).await?;
        let ids = self
            .matching_items("find_grant", &all, &ctx)?
            .iter()
            .filter_map(|i| self.extract_id("find_grant", i))
            .collect();
        Ok((ids, all))
    }

    fn with_listed(&self, mut ctx: Value, listed: Vec<Value>) -> Value {
        if let Value::Object(m) = &mut ctx {
            m.insert("listed".into(), Value::Array(listed));
        }
        ctx
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[async_trait::async_trait]
impl Connector for HttpConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn attach_rate_wait_counters(&self, counters: super::RateWaitCounters) {
        let _ = self.rate_waits.set(counters);
    }

    /// The drift check's listing: `find_grant` on the target, each item attributed by the
    /// operation's `matches` to one of `people` (a listing per person lists nothing here).
    async fn list_grants(
        &self,
        target: &str,
        people: &[String],
    ) -> Result<Option<Vec<super::VendorGrant>>, ConnectorError> {
        // Without `matches` the listing is per person already: nothing to attribute, not usable.
        if op(&self.profile, "find_grant").is_none_or(|o| o.matches.is_none()) {
            return Ok(None);
        }
        let req = GrantRequest::for_target(target, None);
        let all = self
            .list("find_grant", &self.context(&req, Some(""), None))
            .await?;
        let mut out = Vec::new();
        for item in &all {
            let mut person_ref = None;
            for p in people {
                let ctx = self.context(&req, Some(p), None);
                if !self
                    .matching_items("find_grant", std::slice::from_ref(item), &ctx)?
                    .is_empty()
                {
                    person_ref = Some(p.clone());
                    break;
                }
            }
            let grant_ref = self.extract_id("find_grant", item);
            out.push(super::VendorGrant {
                grant_ref,
                person_ref,
            });
        }
        Ok(Some(out))
    }

    async fn delete_listed(&self, target: &str, grant_ref: &str) -> Result<bool, ConnectorError> {
        let req = GrantRequest::for_target(target, Some(grant_ref));
        self.call("delete_grant", &self.context(&req, None, Some(grant_ref)))
            .await?;
        Ok(true)
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial: Duration::from_millis(self.profile.retry.initial_ms),
            max: Duration::from_millis(self.profile.retry.max_ms),
            confirm_deadline: Duration::from_secs(self.profile.confirm.deadline_secs),
            confirm_recheck: Duration::from_millis(self.profile.confirm.recheck_ms),
        }
    }

    fn rate_limit(&self) -> (u32, u32) {
        self.rate
    }

    async fn issue(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        let person_ref = self.person_ref(req, true).await?.ok_or_else(|| {
            self.permanent("vendor has no person and the profile cannot create one".into())
        })?;
        // Find before create: a repeat after a lost response must not make a second grant.
        let (ids, listed) = self.grants(req, &person_ref).await?;
        if let Some(g) = ids.into_iter().next() {
            return Ok(Outcome::Confirmed {
                person_ref: Some(person_ref),
                grant_ref: Some(g),
            });
        }
        let ctx = self.with_listed(self.context(req, Some(&person_ref), None), listed);
        let (_, body) = self.call("create_grant", &ctx).await?;
        let grant_ref = self.extract_id("create_grant", &body);
        if self.profile.confirm.mode == ConfirmMode::Response {
            return Ok(Outcome::Confirmed {
                person_ref: Some(person_ref),
                grant_ref,
            });
        }
        // Asynchronous vendors (Nuki answers 204 with no id): the grant counts once it is listed.
        self.confirm(
            &GrantRequest {
                person_ref: Some(person_ref),
                grant_ref,
                ..req.clone()
            },
            Action::Issue,
        )
        .await
    }

    async fn revoke(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        let Some(person_ref) = self.person_ref(req, false).await? else {
            // The vendor does not know the person: nothing to revoke.
            return Ok(Outcome::Confirmed {
                person_ref: None,
                grant_ref: None,
            });
        };
        let replace_all = self.profile.operations.delete_grant.replace_all;
        let (grants, listed) = match &req.grant_ref {
            // A known id saves the list call; the read-back below still catches any other grant.
            // A replace-all write needs the current list whatever is known.
            Some(g) if !replace_all => (vec![g.clone()], vec![]),
            _ => self.grants(req, &person_ref).await?,
        };
        if replace_all {
            // One write of the whole list minus ours: writing once per match from the same
            // stale listing would put back what the previous write removed.
            if let Some(g) = grants.first() {
                let ctx = self.with_listed(self.context(req, Some(&person_ref), Some(g)), listed);
                self.call("delete_grant", &ctx).await?;
            }
        } else {
            for g in &grants {
                let ctx = self.context(req, Some(&person_ref), Some(g));
                self.call("delete_grant", &ctx).await?;
            }
        }
        let req = GrantRequest {
            person_ref: Some(person_ref.clone()),
            ..req.clone()
        };
        if self.profile.confirm.mode == ConfirmMode::Response && req.grant_ref.is_none() {
            return Ok(Outcome::Confirmed {
                person_ref: Some(person_ref),
                grant_ref: None,
            });
        }
        self.confirm(&req, Action::Revoke).await
    }

    async fn confirm(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError> {
        let Some(person_ref) = self.person_ref(req, false).await? else {
            return Ok(match action {
                Action::Revoke => Outcome::Confirmed {
                    person_ref: None,
                    grant_ref: None,
                },
                Action::Issue => Outcome::Pending {
                    person_ref: None,
                    grant_ref: None,
                },
            });
        };
        let (listed, _) = self.grants(req, &person_ref).await?;
        let person_ref = Some(person_ref);
        Ok(match (action, listed.first()) {
            (Action::Issue, Some(g)) => Outcome::Confirmed {
                person_ref,
                grant_ref: Some(g.clone()),
            },
            (Action::Issue, None) => Outcome::Pending {
                person_ref,
                grant_ref: req.grant_ref.clone(),
            },
            (Action::Revoke, None) => Outcome::Confirmed {
                person_ref,
                grant_ref: None,
            },
            (Action::Revoke, Some(_)) => Outcome::Pending {
                person_ref,
                grant_ref: req.grant_ref.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::nuki_weekdays;

    #[test]
    fn nuki_weekday_mask_is_monday_64_to_sunday_1() {
        assert_eq!(nuki_weekdays(vec![1]), 64);
        assert_eq!(nuki_weekdays(vec![7]), 1);
        assert_eq!(nuki_weekdays(vec![1, 2, 3, 4, 5]), 124);
    }
}
