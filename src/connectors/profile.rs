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
    /// No authentication (a local test endpoint).
    None,
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
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self { timeout_ms: 10_000 }
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
}

impl Default for StatusSpec {
    fn default() -> Self {
        Self {
            retry: vec![408, 500, 502, 503, 504],
            rate_limited: vec![429],
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
}

impl Default for ConfirmSpec {
    fn default() -> Self {
        Self {
            mode: ConfirmMode::Response,
            deadline_secs: 300,
            recheck_ms: 1000,
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
            AuthSpec::None => vec![],
        }
    }
}
