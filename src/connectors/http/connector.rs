//! The connector itself: issue, revoke, read-back and the drift listing, built from the other
//! parts of the profile engine.
//!
//! Issue = find person (or create) -> find grant -> create grant when absent -> read back.
//! Revoke = find the person's grants on the target -> delete each -> read back.
//! Both are idempotent at the vendor: a repeat finds what the first did.

use super::super::profile::{ConfirmMode, Profile};
use super::super::{Connector, ConnectorError, GrantRequest, Outcome, RetryPolicy};
use super::auth::{Credentials, Secrets, credentials};
use super::compile::{Paths, Rule, compile, op, rules};
use crate::config::ConnectorConfig;
use crate::model::{Action, PersonKey};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use minijinja::Environment;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct HttpConnector {
    pub(super) name: String,
    pub(super) profile: Profile,
    pub(super) base_url: String,
    pub(super) client: reqwest::Client,
    pub(super) creds: Credentials,
    pub(super) secrets: Secrets,
    pub(super) rules: Vec<Rule>,
    pub(super) env: Environment<'static>,
    pub(super) paths: BTreeMap<&'static str, Paths>,
    pub(super) limiter: DefaultDirectRateLimiter,
    /// Revokes take the limiter's tokens before issues (invariant 3).
    pub(super) gate: super::super::call::PriorityGate,
    rate: (u32, u32),
    /// A vendor cooldown (Retry-After): no request leaves before this instant.
    pub(super) cooldown_until: Mutex<Option<Instant>>,
    /// The longest wait a vendor's Retry-After or cooldown can impose.
    pub(super) retry_after_cap: Duration,
    /// The largest answer (and listing, across pages) read before giving up.
    pub(super) max_response_bytes: u64,
    targets: BTreeMap<String, String>,
    max_attempts: u32,
    /// Vendor person ids learnt in this process, so a retry after a failed later step does not
    /// look the person up again (the store keeps them too, once a command completes).
    person_refs: Mutex<HashMap<PersonKey, String>>,
    /// Waits for the rate budget (count, seconds), once the daemon's metrics are attached.
    pub(super) rate_waits: std::sync::OnceLock<super::super::RateWaitCounters>,
    /// The daemon's clock once attached (the wall clock until then): what a token's lifetime is
    /// measured on.
    clock: std::sync::OnceLock<crate::clock::SharedClock>,
}

impl HttpConnector {
    /// Compile every template and JSONPath of a profile; an error names the operation and field.
    pub fn compile(profile: &Profile) -> Result<super::compile::Compiled, String> {
        compile(profile)
    }

    pub fn new(
        name: &str,
        profile: Profile,
        cc: &ConnectorConfig,
        secrets: BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let (env, paths) = compile(&profile)?;
        let creds = credentials(&profile.auth, &secrets)?;
        let rules = rules(&profile)?;
        let rl = cc.rate_limit.unwrap_or(profile.rate_limit);
        let per_second =
            NonZeroU32::new(rl.per_second).ok_or("rate_limit.per_second must be at least 1")?;
        let burst = NonZeroU32::new(rl.burst).ok_or("rate_limit.burst must be at least 1")?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(profile.http.timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(cc.concurrency.max(1) * 2)
            // A redirect from a vendor API leads to a login or maintenance page, not an answer.
            .redirect(reqwest::redirect::Policy::none())
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
            retry_after_cap: Duration::from_secs(
                cc.retry_after_cap_secs
                    .unwrap_or(profile.http.retry_after_cap_secs),
            ),
            max_response_bytes: cc
                .max_response_bytes
                .unwrap_or(profile.http.max_response_bytes),
            profile,
            client,
            creds,
            secrets: Secrets(secrets),
            rules,
            env,
            paths,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            gate: Default::default(),
            rate: (rl.per_second, rl.burst),
            cooldown_until: Mutex::new(None),
            targets: cc.targets.clone(),
            person_refs: Mutex::new(HashMap::new()),
            rate_waits: std::sync::OnceLock::new(),
            clock: std::sync::OnceLock::new(),
        })
    }

    pub(super) fn vendor_target(&self, target: &str) -> String {
        self.targets
            .get(target)
            .cloned()
            .unwrap_or_else(|| target.to_string())
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
        self.matching_in(name, &Listing::of(items), ctx)
    }

    /// The items of a listing that the operation's `matches` template accepts for `ctx` (every
    /// item when it has none). The template, the context and each item are prepared once; each
    /// (item, context) pair only renders, so judging many changes against one listing of many
    /// items stays cheap.
    fn matching_in(
        &self,
        name: &'static str,
        listing: &Listing<'_>,
        ctx: &Value,
    ) -> Result<Vec<Value>, ConnectorError> {
        let has_match = op(&self.profile, name).is_some_and(|o| o.matches.is_some());
        if !has_match {
            return Ok(listing.items.to_vec());
        }
        let bad = |e: minijinja::Error| self.permanent(format!("operations.{name}.matches: {e}"));
        let template = self
            .env
            .get_template(&format!("{name}.matches"))
            .map_err(bad)?;
        let base = minijinja::Value::from(minijinja::value::Serde(ctx));
        let mut out = Vec::new();
        for (item, value) in listing.items.iter().zip(listing.values()) {
            let hit = template
                .render(minijinja::context! { item => value, ..base.clone() })
                .map_err(bad)?;
            if hit == "1" {
                out.push(item.clone());
            }
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

    /// Issue's vendor write: find before create (a repeat after a lost response must not make a
    /// second grant), then create. `Confirmed` when the grant exists already, `Pending` once
    /// written.
    async fn write_issue(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        let person_ref = self.person_ref(req, true).await?.ok_or_else(|| {
            self.permanent("vendor has no person and the profile cannot create one".into())
        })?;
        let (ids, listed) = self.grants(req, &person_ref).await?;
        if let Some(g) = ids.into_iter().next() {
            return Ok(Outcome::Confirmed {
                person_ref: Some(person_ref),
                grant_ref: Some(g),
            });
        }
        let ctx = self.with_listed(self.context(req, Some(&person_ref), None), listed);
        let (_, body) = self.call("create_grant", &ctx).await?;
        Ok(Outcome::Pending {
            grant_ref: self.extract_id("create_grant", &body),
            person_ref: Some(person_ref),
        })
    }

    /// Revoke's vendor write: delete the person's grants on the target. `Confirmed` when the
    /// vendor does not know the person (nothing to revoke), `Pending` once written.
    async fn write_revoke(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        let Some(person_ref) = self.person_ref(req, false).await? else {
            return Ok(unknown_person_verdict(Action::Revoke));
        };
        let replace_all = self.profile.operations.delete_grant.replace_all;
        let (grants, listed) = match &req.grant_ref {
            // A known id saves the list call; the read-back still catches any other grant.
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
        Ok(Outcome::Pending {
            person_ref: Some(person_ref),
            grant_ref: req.grant_ref.clone(),
        })
    }

    fn with_listed(&self, mut ctx: Value, listed: Vec<Value>) -> Value {
        if let Value::Object(m) = &mut ctx {
            m.insert("listed".into(), Value::Array(listed));
        }
        ctx
    }

    /// Measure token lifetimes on this clock: the daemon attaches its own, a test its controlled
    /// one. The first clock attached stays.
    pub fn use_clock(&self, clock: crate::clock::SharedClock) {
        let _ = self.clock.set(clock);
    }

    pub(super) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        use crate::clock::Clock;
        match self.clock.get() {
            Some(c) => c.now(),
            None => crate::clock::SystemClock.now(),
        }
    }
}

#[async_trait::async_trait]
impl Connector for HttpConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn attach_rate_wait_counters(&self, counters: super::super::RateWaitCounters) {
        let _ = self.rate_waits.set(counters);
    }

    fn attach_store(&self, _store: crate::store::Store, clock: crate::clock::SharedClock) {
        self.use_clock(clock);
    }

    /// The drift check's listing: `find_grant` on the target, each item attributed by the
    /// operation's `matches` to one of `people` (a listing per person lists nothing here).
    async fn list_grants(
        &self,
        target: &str,
        people: &[String],
    ) -> Result<Option<Vec<super::super::VendorGrant>>, ConnectorError> {
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
            out.push(super::super::VendorGrant {
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
        let (person_ref, grant_ref) = match self.write_issue(req).await? {
            confirmed @ Outcome::Confirmed { .. } => return Ok(confirmed),
            Outcome::Pending {
                person_ref,
                grant_ref,
            } => (person_ref, grant_ref),
        };
        if self.profile.confirm.mode == ConfirmMode::Response {
            return Ok(Outcome::Confirmed {
                person_ref,
                grant_ref,
            });
        }
        // Asynchronous vendors (Nuki answers 204 with no id): the grant counts once it is listed.
        let req = GrantRequest {
            person_ref,
            grant_ref,
            ..req.clone()
        };
        self.confirm(&req, Action::Issue).await
    }

    async fn revoke(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        let person_ref = match self.write_revoke(req).await? {
            confirmed @ Outcome::Confirmed { .. } => return Ok(confirmed),
            Outcome::Pending { person_ref, .. } => person_ref,
        };
        if self.profile.confirm.mode == ConfirmMode::Response && req.grant_ref.is_none() {
            return Ok(Outcome::Confirmed {
                person_ref,
                grant_ref: None,
            });
        }
        let req = GrantRequest {
            person_ref,
            ..req.clone()
        };
        self.confirm(&req, Action::Revoke).await
    }

    fn confirms_by_target_listing(&self) -> bool {
        // With `matches`, `find_grant` lists the target (every person's grants), not one person.
        self.profile.confirm.mode == ConfirmMode::ReadBack
            && op(&self.profile, "find_grant").is_some_and(|o| o.matches.is_some())
    }

    fn confirm_gather(&self) -> Duration {
        Duration::from_millis(self.profile.confirm.gather_ms)
    }

    async fn write(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError> {
        match action {
            Action::Issue => self.write_issue(req).await,
            Action::Revoke => self.write_revoke(req).await,
        }
    }

    async fn confirm(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError> {
        let Some(person_ref) = self.person_ref(req, false).await? else {
            return Ok(unknown_person_verdict(action));
        };
        let (listed, _) = self.grants(req, &person_ref).await?;
        Ok(verdict(action, person_ref, listed.first(), req))
    }

    async fn confirm_on_target(
        &self,
        changes: &[(GrantRequest, Action)],
    ) -> Result<Vec<Outcome>, ConnectorError> {
        let Some((first, _)) = changes.first() else {
            return Ok(Vec::new());
        };
        if changes.len() == 1 || !self.confirms_by_target_listing() {
            let mut out = Vec::with_capacity(changes.len());
            for (req, action) in changes {
                out.push(self.confirm(req, *action).await?);
            }
            return Ok(out);
        }
        // One listing of the target, then each change judged against it as `confirm` would.
        let all = self
            .list("find_grant", &self.context(first, Some(""), None))
            .await?;
        let listing = Listing::of(&all);
        let mut out = Vec::with_capacity(changes.len());
        for (req, action) in changes {
            let Some(person_ref) = self.person_ref(req, false).await? else {
                out.push(unknown_person_verdict(*action));
                continue;
            };
            let ctx = self.context(req, Some(&person_ref), None);
            let listed: Vec<String> = self
                .matching_in("find_grant", &listing, &ctx)?
                .iter()
                .filter_map(|i| self.extract_id("find_grant", i))
                .collect();
            out.push(verdict(*action, person_ref, listed.first(), req));
        }
        Ok(out)
    }
}

/// A vendor listing's items, with each item as a template sees it made once, on first use.
struct Listing<'a> {
    items: &'a [Value],
    values: std::sync::OnceLock<Vec<minijinja::Value>>,
}

impl<'a> Listing<'a> {
    fn of(items: &'a [Value]) -> Self {
        Self {
            items,
            values: std::sync::OnceLock::new(),
        }
    }

    fn values(&self) -> &[minijinja::Value] {
        self.values.get_or_init(|| {
            self.items
                .iter()
                .map(|i| minijinja::Value::from(minijinja::value::Serde(i)))
                .collect()
        })
    }
}

/// What a read-back says when the vendor does not know the person: nothing of theirs to revoke;
/// an issue not visible yet.
fn unknown_person_verdict(action: Action) -> Outcome {
    match action {
        Action::Revoke => Outcome::Confirmed {
            person_ref: None,
            grant_ref: None,
        },
        Action::Issue => Outcome::Pending {
            person_ref: None,
            grant_ref: None,
        },
    }
}

/// What a read-back says, from the person's first grant on the listed target (if any).
fn verdict(
    action: Action,
    person_ref: String,
    listed: Option<&String>,
    req: &GrantRequest,
) -> Outcome {
    let person_ref = Some(person_ref);
    match (action, listed) {
        (Action::Issue, Some(g)) => Outcome::Confirmed {
            person_ref,
            grant_ref: Some(g.clone()),
        },
        (Action::Revoke, None) => Outcome::Confirmed {
            person_ref,
            grant_ref: None,
        },
        (Action::Issue, None) | (Action::Revoke, Some(_)) => Outcome::Pending {
            person_ref,
            grant_ref: req.grant_ref.clone(),
        },
    }
}
