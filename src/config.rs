//! Daemon configuration: strict, versioned TOML with a `LATCHKEY_` environment overlay.
//!
//! Unknown keys are errors, and every error names the file, the line and the key. Secrets never sit in
//! the file in clear: a secret is a reference to an environment variable (or `NAME_FILE`, a file that
//! holds it). Loading goes through [`ConfigInput`], a seam that tests feed directly instead of the
//! process environment.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("secret `{name}`: {message}")]
    Secret { name: String, message: String },
}

/// A reference to a secret: `{ env = "NAME" }` reads `$NAME`, or the file named by `$NAME_FILE`;
/// `{ file = "/run/secrets/x" }` reads a file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// What a configuration is read from: its text, where it came from, and the environment to overlay
/// and resolve secrets from.
#[derive(Debug, Clone)]
pub struct ConfigInput {
    pub text: String,
    pub path: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl ConfigInput {
    pub fn from_file(path: &Path, env: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            text,
            path: path.to_path_buf(),
            env,
        })
    }
}

/// The process environment, read once at start-up by the binary.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// Name of this replica: lease owner in the outbox.
    #[serde(default = "default_instance")]
    pub instance: String,
    pub store: StoreConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteConfig>,
    #[serde(default)]
    pub sources: SourcesConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// Where the file was read from: relative paths inside it are relative to its folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub origin: String,
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
}

fn default_instance() -> String {
    "latchkey-0".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///var/lib/latchkey/state.db` or `postgres://...`; a URL with a password belongs in
    /// `url_secret` instead.
    pub url: Option<String>,
    pub url_secret: Option<SecretRef>,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_pool() -> u32 {
    8
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Admin API, health and metrics; off when absent.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Time zone for people whose site has none configured.
    #[serde(default = "default_tz")]
    pub default_timezone: String,
    /// Share of active people whose disappearance from one feed is held for approval.
    #[serde(default = "default_mass_share")]
    pub mass_change_threshold: f64,
    /// How long a worker holds a claimed command before another may take it.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// How often scheduled work (effective-dated changes, expiries) is looked at.
    #[serde(default = "default_tick")]
    pub tick_millis: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_timezone: default_tz(),
            mass_change_threshold: default_mass_share(),
            lease_seconds: default_lease(),
            tick_millis: default_tick(),
        }
    }
}

fn default_tz() -> String {
    "UTC".to_string()
}
fn default_mass_share() -> f64 {
    0.2
}
fn default_lease() -> u64 {
    30
}
fn default_tick() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub timezone: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub hr: BTreeMap<String, HrSourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HrSourceConfig {
    /// Column mapping (see `mappings/hr.toml`).
    pub mapping: PathBuf,
    /// One file re-read whole on each run...
    pub path: Option<PathBuf>,
    /// ...or a drop directory whose new files are applied in name order.
    pub drop_dir: Option<PathBuf>,
    /// Standard 5-field crontab line; a new file in the drop directory is also picked up at once.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Overrides `engine.mass_change_threshold` for this feed.
    pub mass_change_threshold: Option<f64>,
}

fn default_schedule() -> String {
    "*/15 * * * *".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Entitlement templates (see `mappings/templates.toml`).
    pub templates: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Declarative vendor profile (see `connectors/`).
    pub profile: PathBuf,
    /// Overrides the profile's base URL (a simulator, a regional endpoint).
    pub base_url: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub max_attempts: Option<u32>,
    /// Commands in flight at once on this connector's lane.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Secrets the profile's auth needs, by the names the profile gives them.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Template target name -> vendor id (lock id, group id); a name absent here is sent as is.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
}

fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Parse TOML text into `T`, turning toml's error into one that names file, line and column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(text, origin, &e))
}

pub fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    ConfigError::Parse {
        file: origin.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

/// Environment variables that belong to the process, not to the configuration overlay.
/// Only `LATCHKEY_<TABLE>__<KEY>` (and the top-level `LATCHKEY_INSTANCE`) are overrides, so a
/// secret variable such as `LATCHKEY_DEMO_NUKI_TOKEN` is never mistaken for one.
fn overlay_ignores(var: &str) -> bool {
    let rest = var.strip_prefix("LATCHKEY_").unwrap_or(var);
    !(rest.contains("__") || rest == "INSTANCE")
        || [
            "LATCHKEY_LOG",
            "LATCHKEY_TEST_",
            "LATCHKEY_CONFIG",
            "LATCHKEY_BENCH_",
        ]
        .iter()
        .any(|p| var.starts_with(p))
}

/// `LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD=0.3` sets `engine.mass_change_threshold`.
fn apply_env_overlay(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("LATCHKEY_") else {
            continue;
        };
        if overlay_ignores(var) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty key segment (use `__` between keys)".into(),
            });
        }
        // A value that reads as a TOML scalar (number, boolean) keeps its type; anything else is a string.
        let parsed: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut node = &mut *table;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                node.insert(key.clone(), parsed.clone());
                break;
            }
            let entry = node
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!("`{key}` is not a table"),
                    });
                }
            };
        }
    }
    Ok(())
}

impl Config {
    pub fn load(input: &ConfigInput) -> Result<Self, ConfigError> {
        let origin = input.path.display().to_string();
        let mut table: toml::Table = input
            .text
            .parse()
            .map_err(|e: toml::de::Error| toml_error(&input.text, &origin, &e))?;
        let had_overlay = input
            .env
            .keys()
            .any(|k| k.starts_with("LATCHKEY_") && !overlay_ignores(k));
        apply_env_overlay(&mut table, &input.env)?;
        let mut config: Config = if had_overlay {
            // Spans are lost once the environment is merged in: re-serialise so the error still has a line.
            let merged = toml::to_string(&table).map_err(|e| ConfigError::Invalid {
                file: origin.clone(),
                key: String::new(),
                message: e.to_string(),
            })?;
            parse_toml(
                &merged,
                &format!("{origin} (with LATCHKEY_ environment overrides)"),
            )?
        } else {
            parse_toml(&input.text, &origin)?
        };
        config.origin = origin;
        config.base_dir = input
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        config.env = input.env.clone();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(self.invalid(
                "version",
                format!(
                    "version {} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        if self.store.url.is_none() == self.store.url_secret.is_none() {
            return Err(self.invalid("store", "set exactly one of `url` and `url_secret`"));
        }
        if self
            .engine
            .default_timezone
            .parse::<chrono_tz::Tz>()
            .is_err()
        {
            return Err(self.invalid(
                "engine.default_timezone",
                format!("unknown time zone `{}`", self.engine.default_timezone),
            ));
        }
        if !(0.0..=1.0).contains(&self.engine.mass_change_threshold) {
            return Err(self.invalid("engine.mass_change_threshold", "must be between 0 and 1"));
        }
        for (name, site) in &self.sites {
            if site.timezone.parse::<chrono_tz::Tz>().is_err() {
                return Err(self.invalid(
                    &format!("sites.{name}.timezone"),
                    format!("unknown time zone `{}`", site.timezone),
                ));
            }
        }
        for (name, hr) in &self.sources.hr {
            if hr.path.is_none() == hr.drop_dir.is_none() {
                return Err(self.invalid(
                    &format!("sources.hr.{name}"),
                    "set exactly one of `path` and `drop_dir`",
                ));
            }
            if let Err(e) = hr.schedule.parse::<croner::Cron>() {
                return Err(self.invalid(
                    &format!("sources.hr.{name}.schedule"),
                    format!("`{}` is not a crontab line: {e}", hr.schedule),
                ));
            }
        }
        for (name, c) in &self.connectors {
            if let Some(rl) = c.rate_limit
                && (rl.per_second == 0 || rl.burst == 0)
            {
                return Err(self.invalid(
                    &format!("connectors.{name}.rate_limit"),
                    "per_second and burst must be at least 1",
                ));
            }
            if c.concurrency == 0 {
                return Err(self.invalid(
                    &format!("connectors.{name}.concurrency"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// A path from the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn store_url(&self) -> Result<String, ConfigError> {
        match (&self.store.url, &self.store.url_secret) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(secret)) => self.secret("store.url_secret", secret),
            (None, None) => Err(self.invalid("store", "no database url")),
        }
    }

    pub fn timezone_of(&self, site: Option<&str>) -> chrono_tz::Tz {
        site.and_then(|s| self.sites.get(s))
            .and_then(|s| s.timezone.parse().ok())
            .or_else(|| self.engine.default_timezone.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }

    pub fn secret(&self, name: &str, secret: &SecretRef) -> Result<String, ConfigError> {
        resolve_secret(name, secret, &self.env)
    }
}

/// Read a secret's value. `{ env = "X" }` takes `$X`, or else the file named by `$X_FILE`.
pub fn resolve_secret(
    name: &str,
    secret: &SecretRef,
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Secret {
        name: name.to_string(),
        message,
    };
    let read_file = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))
    };
    match (&secret.env, &secret.file) {
        (Some(var), None) => {
            if let Some(v) = env.get(var) {
                return Ok(v.clone());
            }
            if let Some(path) = env.get(&format!("{var}_FILE")) {
                return read_file(Path::new(path));
            }
            Err(err(format!("set ${var} or ${var}_FILE")))
        }
        (None, Some(path)) => read_file(path),
        _ => Err(err("give exactly one of `env` and `file`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str, env: &[(&str, &str)]) -> ConfigInput {
        ConfigInput {
            text: text.to_string(),
            path: PathBuf::from("conf/test.toml"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const MINIMAL: &str = r#"
version = 1
[store]
url = "sqlite://x.db"
[policy]
templates = "t.toml"
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = Config::load(&input(MINIMAL, &[])).unwrap();
        assert_eq!(c.engine.mass_change_threshold, 0.2);
        assert_eq!(c.resolve(Path::new("t.toml")), PathBuf::from("conf/t.toml"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MINIMAL}\n[engine]\nmass_change_treshold = 0.5\n");
        let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
        assert!(err.starts_with("conf/test.toml:9:"), "{err}");
        assert!(err.contains("mass_change_treshold"), "{err}");
    }

    #[test]
    fn environment_overlays_typed_values() {
        let c = Config::load(&input(
            MINIMAL,
            &[
                ("LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD", "0.35"),
                ("LATCHKEY_LOG", "debug"),
            ],
        ))
        .unwrap();
        assert_eq!(c.engine.mass_change_threshold, 0.35);
    }

    #[test]
    fn environment_cannot_add_unknown_keys() {
        let err = Config::load(&input(MINIMAL, &[("LATCHKEY_ENGINE__NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_or_file_never_the_file_text() {
        let text = MINIMAL.replace(
            "[policy]",
            "[connectors.nuki]\nprofile = \"n.toml\"\ntoken = \"abc\"\n[policy]",
        );
        assert!(
            Config::load(&input(&text, &[])).is_err(),
            "a clear-text secret key must be refused"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        let env: BTreeMap<String, String> =
            [("NUKI_TOKEN_FILE".to_string(), f.display().to_string())].into();
        let r = SecretRef {
            env: Some("NUKI_TOKEN".into()),
            file: None,
        };
        assert_eq!(resolve_secret("t", &r, &env).unwrap(), "s3cret");
        let missing = resolve_secret("t", &r, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("NUKI_TOKEN_FILE"), "{missing}");
    }
}
