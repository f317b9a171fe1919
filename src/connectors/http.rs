//! The declarative HTTP connector: runs a vendor profile's operations with the vendor's auth, under
//! its rate limit, and reads the answers with JSONPath.
//!
//! Issue = find person (or create) -> find grant -> create grant when absent -> read back.
//! Revoke = find the person's grants on the target -> delete each -> read back.
//! Both are idempotent at the vendor: a repeat finds what the first did.

use super::profile::{AuthSpec, ConfirmMode, Operation, Profile};
use super::{Connector, ConnectorError, GrantRequest, Outcome, RetryPolicy};
use crate::config::ConnectorConfig;
use crate::model::Action;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use minijinja::Environment;
use reqwest::header::{HeaderName, HeaderValue};
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
}

#[derive(Debug)]
pub struct HttpConnector {
    name: String,
    profile: Profile,
    base_url: String,
    client: reqwest::Client,
    auth_header: Option<(HeaderName, HeaderValue)>,
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

type Compiled = (Environment<'static>, BTreeMap<&'static str, Paths>);

impl HttpConnector {
    /// Compile every template and JSONPath of a profile; an error names the operation and field.
    pub fn compile(profile: &Profile) -> Result<Compiled, String> {
        let mut env = crate::policy::sandboxed_env();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("nuki_weekdays", nuki_weekdays);
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
            paths.insert(
                name,
                Paths {
                    items: parse("items", &o.items)?,
                    id: parse("id", &o.id)?,
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
        let auth_header = match &profile.auth {
            AuthSpec::None => None,
            AuthSpec::Bearer { secret } => Some((
                "authorization".to_string(),
                format!(
                    "Bearer {}",
                    secrets.get(secret).cloned().unwrap_or_default()
                ),
            )),
            AuthSpec::Header {
                header,
                prefix,
                secret,
            } => Some((
                header.to_ascii_lowercase(),
                format!(
                    "{prefix}{}",
                    secrets.get(secret).cloned().unwrap_or_default()
                ),
            )),
        };
        let auth_header = match auth_header {
            None => None,
            Some((h, v)) => {
                let name = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| format!("auth header `{h}`: {e}"))?;
                let mut value = HeaderValue::from_str(&v)
                    .map_err(|_| "auth secret is not a valid header value".to_string())?;
                // Keeps the credential out of Debug output and HTTP/2 header compression tables.
                value.set_sensitive(true);
                Some((name, value))
            }
        };
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
        serde_json::json!({
            "person": {
                "key": req.person.key, "name": req.person.name, "email": req.person.email,
                "attrs": req.person.attrs,
            },
            "person_ref": person_ref,
            "target": self.vendor_target(&req.target),
            "grant_ref": grant_ref,
            "grant": {
                "credential": req.credential,
                "window": window,
                "valid_until": req.valid_until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
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

    /// Send one operation. Ok((status, body)) for 2xx and for the operation's `exists` / `gone`
    /// statuses; everything else is classified into a [`ConnectorError`].
    async fn call(&self, name: &'static str, ctx: &Value) -> Result<(u16, Value), ConnectorError> {
        let o = op(&self.profile, name)
            .ok_or_else(|| self.permanent(format!("profile has no operation {name}")))?;
        let path = self.render(&format!("{name}.path"), ctx)?;
        let mut query = Vec::new();
        for k in o.query.keys() {
            query.push((k.clone(), self.render(&format!("{name}.query.{k}"), ctx)?));
        }
        let method = reqwest::Method::from_bytes(o.method.as_bytes())
            .map_err(|e| self.permanent(e.to_string()))?;
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base_url, path));
        if !query.is_empty() {
            rb = rb.query(&query);
        }
        if o.body.is_some() {
            let body = self.render(&format!("{name}.body"), ctx)?;
            let json: Value = serde_json::from_str(&body).map_err(|e| {
                self.permanent(format!(
                    "operations.{name}.body did not render to JSON: {e}"
                ))
            })?;
            rb = rb.json(&json);
        }
        if let Some((h, v)) = &self.auth_header {
            rb = rb.header(h.clone(), v.clone());
        }
        self.wait_for_budget().await;
        let resp = rb.send().await.map_err(|e| ConnectorError::Transient {
            vendor: self.name.clone(),
            message: format!(
                "{} {path}: {}",
                o.method,
                if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    e.to_string()
                }
            ),
            retry_after: None,
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) || o.exists.contains(&status) || o.gone.contains(&status) {
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            return Ok((status, body));
        }
        let mut excerpt: String = text.chars().take(300).collect();
        if excerpt.is_empty() {
            excerpt = "(empty body)".into();
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
            return Err(ConnectorError::Transient {
                vendor: self.name.clone(),
                message,
                retry_after,
            });
        }
        Err(self.permanent(message))
    }

    fn extract_id(&self, name: &'static str, v: &Value) -> Option<String> {
        let p = self.paths.get(name)?.id.as_ref()?;
        p.query(v).first().and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }

    /// The items of a list response that belong to this person (per the operation's `matches`).
    fn matching_items(
        &self,
        name: &'static str,
        body: &Value,
        ctx: &Value,
    ) -> Result<Vec<Value>, ConnectorError> {
        let Some(items) = self.paths.get(name).and_then(|p| p.items.as_ref()) else {
            return Ok(vec![]);
        };
        let has_match = op(&self.profile, name).is_some_and(|o| o.matches.is_some());
        let mut out = Vec::new();
        for item in items.query(body).all() {
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
        let (_, body) = self.call("find_person", ctx).await?;
        let items = self.matching_items("find_person", &body, ctx)?;
        Ok(items
            .first()
            .and_then(|i| self.extract_id("find_person", i)))
    }

    async fn grants(
        &self,
        req: &GrantRequest,
        person_ref: &str,
    ) -> Result<Vec<String>, ConnectorError> {
        let ctx = self.context(req, Some(person_ref), None);
        let (_, body) = self.call("find_grant", &ctx).await?;
        Ok(self
            .matching_items("find_grant", &body, &ctx)?
            .iter()
            .filter_map(|i| self.extract_id("find_grant", i))
            .collect())
    }
}

#[async_trait::async_trait]
impl Connector for HttpConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn attach_rate_wait_counters(&self, counters: super::RateWaitCounters) {
        let _ = self.rate_waits.set(counters);
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
        if let Some(g) = self.grants(req, &person_ref).await?.into_iter().next() {
            return Ok(Outcome::Confirmed {
                person_ref: Some(person_ref),
                grant_ref: Some(g),
            });
        }
        let ctx = self.context(req, Some(&person_ref), None);
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
        let grants = match &req.grant_ref {
            // A known id saves the list call; the read-back below still catches any other grant.
            Some(g) => vec![g.clone()],
            None => self.grants(req, &person_ref).await?,
        };
        for g in &grants {
            let ctx = self.context(req, Some(&person_ref), Some(g));
            self.call("delete_grant", &ctx).await?;
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
        let listed = self.grants(req, &person_ref).await?;
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
