//! The declarative vendor profile: one TOML file per vendor in `connectors/`. Adding a vendor whose
//! API fits this model is a new file, not new Rust.

use crate::config::{ConfigError, RateLimitConfig, parse_toml};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub version: u32,
    pub vendor: String,
    #[serde(default)]
    pub description: String,
    pub base_url: String,
    pub auth: AuthSpec,
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub http: HttpSpec,
    #[serde(default)]
    pub status: StatusSpec,
    #[serde(default)]
    pub confirm: ConfirmSpec,
    pub operations: Operations,
    /// How a profile-driven simulator serves this vendor (`sim::generic`); the connector
    /// ignores it.
    #[serde(default)]
    pub simulator: Option<toml::Value>,
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "scheme", rename_all = "snake_case")]
pub enum AuthSpec {
    /// `Authorization: Bearer <secret>`.
    Bearer { secret: String },
    /// A custom header: `<header>: <prefix><secret>` (e.g. Kisi's `Authorization: KISI-LOGIN <key>`).
    Header {
        header: String,
        #[serde(default)]
        prefix: String,
        secret: String,
    },
    /// OAuth2 client credentials: the token endpoint is called with HTTP Basic `client:secret`,
    /// the token is cached and fetched again before the `expires_in` the vendor returned runs out
    /// (and once on a 401). Static extra headers carry e.g. Brivo's `api-key`.
    Oauth2ClientCredentials {
        /// Absolute URL, or a path resolved against the origin of the base URL.
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        /// Header name -> secret name, sent with every API call.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Header the token goes in, with its prefix.
        #[serde(default = "default_auth_header")]
        header: String,
        #[serde(default = "default_bearer_prefix")]
        prefix: String,
        /// Fetch a new token this long before the old one expires.
        #[serde(default = "default_refresh_margin")]
        refresh_margin_secs: u64,
    },
    /// Log in for a session token: `POST path` with a body and headers rendered from the secrets
    /// (`{{ secrets.NAME }}`), token read with a JSONPath, sent as `<header>: <prefix><token>`.
    /// A 401 drops the token and logs in again once (tokens that cannot be refreshed).
    Login {
        path: String,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// JSONPath of the token in the login response.
        token: String,
        header: String,
        #[serde(default)]
        prefix: String,
        /// Secret names the body and headers use.
        secrets: Vec<String>,
    },
    /// No authentication (a local test endpoint).
    None,
}

fn default_auth_header() -> String {
    "Authorization".into()
}

fn default_bearer_prefix() -> String {
    "Bearer ".into()
}

fn default_refresh_margin() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_ms: 200,
            max_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub timeout_ms: u64,
    /// The largest answer read (and listing, summed over its pages); a larger one is a transient
    /// error, never memory. Default 4 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// The longest a vendor's Retry-After or cooldown may hold the connector. Default 300 s.
    #[serde(default = "default_retry_after_cap")]
    pub retry_after_cap_secs: u64,
}

fn default_max_response_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_retry_after_cap() -> u64 {
    300
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_response_bytes: default_max_response_bytes(),
            retry_after_cap_secs: default_retry_after_cap(),
        }
    }
}

/// How HTTP statuses are read, beyond 2xx = success.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSpec {
    /// Worth retrying with backoff.
    pub retry: Vec<u16>,
    /// Over the vendor's limit: Retry-After is obeyed when present.
    pub rate_limited: Vec<u16>,
    /// Rules over the whole response, tried first, in order: they classify answers a status
    /// alone cannot (an error inside a 2xx body, a rate limit announced by a 403 body).
    #[serde(default)]
    pub rules: Vec<StatusRule>,
}

/// `when` is a minijinja expression over `status` (number), `body` (parsed JSON, or null) and
/// `text` (the raw body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    pub when: String,
    pub class: RuleClass,
    /// JSONPath of the vendor's message, for the error text.
    #[serde(default)]
    pub message: Option<String>,
    /// For `rate_limited`: how long to hold every call when the vendor sends no Retry-After
    /// (Verkada's documented 5 s cooldown).
    #[serde(default)]
    pub cooldown_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleClass {
    RateLimited,
    Retry,
    Permanent,
}

impl Default for StatusSpec {
    fn default() -> Self {
        Self {
            retry: vec![408, 500, 502, 503, 504],
            rate_limited: vec![429],
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmSpec {
    /// `read_back`: a change counts only once the list endpoint shows it (asynchronous vendors);
    /// `response`: a 2xx answer is confirmation.
    pub mode: ConfirmMode,
    /// How long the vendor may take to show a change before the command is issued again.
    pub deadline_secs: u64,
    /// First read-back interval while a change is not visible yet.
    pub recheck_ms: u64,
    /// Longest a change written while more writes to its target are queued waits for its
    /// read-back, so that one listing of the target confirms them all (a mass drain then costs
    /// about one request per change). A change with nothing queued behind it is read back at once.
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
}

fn default_gather_ms() -> u64 {
    10_000
}

impl Default for ConfirmSpec {
    fn default() -> Self {
        Self {
            mode: ConfirmMode::Response,
            deadline_secs: 300,
            recheck_ms: 1000,
            gather_ms: default_gather_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmMode {
    ReadBack,
    Response,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    /// Look a person up (by e-mail or external id). Optional: without it, create is called and
    /// "already exists" answered by `exists` statuses.
    pub find_person: Option<Operation>,
    pub create_person: Option<Operation>,
    /// List the grants on a target; `matches` picks the person's.
    pub find_grant: Operation,
    pub create_grant: Operation,
    pub delete_grant: Operation,
}

/// One HTTP call. `path`, `query` values and `body` are minijinja templates over `person`,
/// `person_ref`, `target`, `grant_ref` and `grant`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON body template.
    pub body: Option<String>,
    /// JSONPath (RFC 9535) to the list of items in the response.
    pub items: Option<String>,
    /// Expression over `item` (and the context) that selects the person's item.
    pub matches: Option<String>,
    /// JSONPath, relative to the item (or the response), of the id.
    pub id: Option<String>,
    /// Statuses meaning "already exists" (success for creates).
    #[serde(default)]
    pub exists: Vec<u16>,
    /// Statuses meaning "already gone" (success for deletes).
    #[serde(default)]
    pub gone: Vec<u16>,
    /// List operations: fetch every page.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Grant writes whose body replaces a whole list (Openpath's group ids): the engine lists the
    /// person's grants first and hands every listed item to the template as `listed`, so the
    /// body can keep entries latchkey does not manage.
    #[serde(default)]
    pub replace_all: bool,
}

/// Offset-based paging. The query carries `offset_param` and `limit_param`; the engine stops at a
/// short page, at the total (read with `total` from the body, or from a `start-end/count` header
/// such as Kisi's `X-Collection-Range`), or after `max_pages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    #[serde(default = "default_offset_param")]
    pub offset_param: String,
    #[serde(default = "default_limit_param")]
    pub limit_param: String,
    pub page_size: u32,
    #[serde(default)]
    pub total: Option<String>,
    #[serde(default)]
    pub range_header: Option<String>,
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
}

fn default_offset_param() -> String {
    "offset".into()
}

fn default_limit_param() -> String {
    "limit".into()
}

fn default_max_pages() -> u32 {
    100
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut p: Profile = parse_toml(text, origin)?;
        p.origin = origin.to_string();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: origin.to_string(),
            key: key.to_string(),
            message,
        };
        if p.version != 1 {
            return Err(invalid(
                "version",
                format!("version {} is not supported (expected 1)", p.version),
            ));
        }
        if p.rate_limit.per_second == 0 || p.rate_limit.burst == 0 {
            return Err(invalid(
                "rate_limit",
                "per_second and burst must be at least 1".into(),
            ));
        }
        if p.operations.find_grant.items.is_none() {
            return Err(invalid(
                "operations.find_grant.items",
                "a list operation needs `items`".into(),
            ));
        }
        Ok(p)
    }

    pub fn secret_names(&self) -> Vec<String> {
        match &self.auth {
            AuthSpec::Bearer { secret } | AuthSpec::Header { secret, .. } => vec![secret.clone()],
            AuthSpec::Oauth2ClientCredentials {
                client_id,
                client_secret,
                headers,
                ..
            } => {
                let mut v = vec![client_id.clone(), client_secret.clone()];
                v.extend(headers.values().cloned());
                v.dedup();
                v
            }
            AuthSpec::Login { secrets, .. } => secrets.clone(),
            AuthSpec::None => vec![],
        }
    }
}
