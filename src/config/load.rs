//! Loading: TOML with errors that name the file, line and key, the `LATCHKEY_` environment overlay, checks across sections, and secrets.

use super::*;

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Parse TOML text into `T`, turning toml's error into one that names file, line and column, and
/// the key with what it expects in words (`engine.lease_seconds`: expected a whole number).
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    deserialize_keyed(text).map_err(|e| e.into_config_error(text, origin))
}

/// An I/O error's text without the `(os error N)` that repeats it.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A deserialisation error with the dotted key it concerns.
#[derive(Debug)]
pub struct KeyedError {
    /// `engine.lease_seconds`; None at the top level.
    pub path: Option<String>,
    /// The key that is not allowed, for an unknown-field error (`path` is then its table).
    pub unknown: Option<String>,
    pub message: String,
    /// Byte range in the text the error points at.
    span: Option<std::ops::Range<usize>>,
}

impl KeyedError {
    /// The full key the error is about: the unknown key itself, or the key whose value is wrong.
    pub fn key(&self) -> Option<String> {
        match (&self.path, &self.unknown) {
            (Some(p), Some(u)) => Some(format!("{p}.{u}")),
            (None, Some(u)) => Some(u.clone()),
            (p, None) => p.clone(),
        }
    }

    /// `` `key`: message ``, or the message alone at the top level.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) if self.unknown.is_none() => format!("`{p}`: {}", self.message),
            Some(p) => format!("in `{p}`: {}", self.message),
            None => self.message.clone(),
        }
    }

    fn into_config_error(self, text: &str, origin: &str) -> ConfigError {
        let (line, column) = self
            .span
            .as_ref()
            .map(|s| line_col(text, s.start))
            .unwrap_or((0, 0));
        ConfigError::Parse {
            file: origin.to_string(),
            line,
            column,
            message: self.describe(),
        }
    }
}

/// Deserialise TOML text, keeping the path of the key an error is about.
pub fn deserialize_keyed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, KeyedError> {
    let keyed = |error: toml::de::Error, path: Option<String>| {
        let unknown = error
            .message()
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        // The path runs to the unknown key itself: keep its table.
        let path = match (&unknown, path) {
            (Some(u), Some(p)) if p == *u => None,
            (Some(u), Some(p)) => Some(p.strip_suffix(&format!(".{u}")).unwrap_or(&p).to_string()),
            (_, p) => p,
        };
        KeyedError {
            path,
            unknown,
            // A value of the wrong type may be a secret given in the wrong place: hide it first.
            message: in_words(&redact_secret_values(error.message().trim())),
            span: error.span(),
        }
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| keyed(e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        keyed(e.into_inner(), path)
    })
}

/// serde's "invalid type: string \"abc\", expected f64" as "expected a number, found string
/// \"abc\"": the expected value in words instead of a Rust type name.
fn in_words(message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    let Some((found, expected)) = rest.and_then(|r| r.rsplit_once(", expected ")) else {
        return message.to_string();
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string (in quotes)",
        "a sequence" => "a list ([...])",
        "a character" => "a single character",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    format!("expected {expected}, found {found}")
}

pub fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    ConfigError::Parse {
        file: origin.to_string(),
        line,
        column,
        message: redact_secret_values(e.message().trim()),
    }
}

/// serde names the value it could not use (`invalid type: string "nuki_live_...", expected struct
/// SecretRef`): where a secret reference was expected, that value is the secret itself, so the
/// message keeps only its type (the line and column still point at it).
fn redact_secret_values(message: &str) -> String {
    // Any value of the wrong type may be a secret given in the wrong place (`secrets = "..."`).
    let echoes_value = message.starts_with("invalid type") || message.starts_with("invalid value");
    if !(echoes_value || message.contains("SecretRef")) {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        out.push_str("(value hidden)");
        rest = match rest[start + 1..].rfind('"') {
            // The value may itself hold quotes: hide up to the last one.
            Some(end) => &rest[start + 1 + end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out.replace(
        "expected struct SecretRef",
        "expected a secret reference such as { env = \"NAME\" } or { file = \"/path\" }, never the secret itself",
    )
}

/// A database URL with a password in it (`postgres://user:pw@host/db`, or `?password=`).
pub fn url_has_password(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            u.password().is_some_and(|p| !p.is_empty())
                || u.query_pairs()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
        }
        // Not a URL the parser understands: look for the `user:pw@` shape by hand.
        Err(_) => url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(creds, _)| creds.contains(':')),
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

/// An error in the configuration with the environment merged in: named by the variable that set the
/// key when one did; else the file's own error, at its own line.
fn overlay_error(input: &ConfigInput, origin: &str, merged: &str, e: KeyedError) -> ConfigError {
    let key = e.key();
    let var = input.env.keys().find(|var| {
        !overlay_ignores(var)
            && var.strip_prefix("LATCHKEY_").is_some_and(|rest| {
                key.as_deref()
                    == Some(
                        rest.split("__")
                            .collect::<Vec<_>>()
                            .join(".")
                            .to_ascii_lowercase(),
                    )
                    .as_deref()
            })
    });
    if let Some(var) = var {
        return ConfigError::Env {
            var: var.clone(),
            message: e.describe(),
        };
    }
    match parse_toml::<Config>(&input.text, origin) {
        Err(own) => own,
        Ok(_) => e.into_config_error(
            merged,
            &format!("{origin} (with LATCHKEY_ environment overrides)"),
        ),
    }
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
            let merged = toml::to_string(&table).map_err(|e| ConfigError::Invalid {
                file: origin.clone(),
                key: String::new(),
                message: e.to_string(),
            })?;
            match deserialize_keyed(&merged) {
                Ok(config) => config,
                Err(e) => return Err(overlay_error(input, &origin, &merged, e)),
            }
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

    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Checks within and across sections, in a fixed order: the first that fails is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_audit()?;
        self.validate_console()?;
        self.validate_break_glass()?;
        self.check_drill_schedule()?;
        self.check_version()?;
        self.check_store()?;
        self.check_engine()?;
        self.check_slas()?;
        self.check_connector_kinds()?;
        self.check_schedules()?;
        self.check_sites()?;
        self.check_hr_sources()?;
        self.check_authority()?;
        self.check_operators()?;
        self.check_scim()?;
        self.check_ldap_sources()?;
        self.check_connector_limits()
    }

    /// The revocation drill's schedule, when it has one, is a crontab line.
    fn check_drill_schedule(&self) -> Result<(), ConfigError> {
        if let Some(schedule) = self
            .telemetry
            .drill
            .as_ref()
            .and_then(|d| d.schedule.as_ref())
            && let Err(e) = schedule.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "telemetry.drill.schedule",
                format!("`{schedule}` is not a crontab line: {e}"),
            ));
        }
        Ok(())
    }

    /// The file is written for the configuration version this build reads.
    fn check_version(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(self.invalid(
                "version",
                format!(
                    "version {} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        Ok(())
    }

    /// The database, given once and not in clear; the replicas it can serve, and the lease that
    /// coordinates them.
    fn check_store(&self) -> Result<(), ConfigError> {
        if self.store.url.is_none() == self.store.url_secret.is_none() {
            return Err(self.invalid("store", "set exactly one of `url` and `url_secret`"));
        }
        if self.store.replicas > 1
            && self
                .store
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("sqlite:"))
        {
            return Err(self.invalid(
                "store.replicas",
                format!(
                    "{} replicas on SQLite: several replicas need PostgreSQL (SQLite is one \
                     process's store, and replicas coordinate through leases in a shared database)",
                    self.store.replicas
                ),
            ));
        }
        if self.store.replicas == 0 {
            return Err(self.invalid("store.replicas", "must be at least 1"));
        }
        if self.engine.replica_lease_seconds < 2 {
            return Err(self.invalid(
                "engine.replica_lease_seconds",
                "must be at least 2 (a lease is renewed every third of it)",
            ));
        }
        if self.store.url.as_deref().is_some_and(url_has_password) {
            return Err(self.invalid(
                "store.url",
                "the URL contains a password; move the URL to `url_secret = { env = \"...\" }` \
                 (or `{ file = \"...\" }`) so it is not kept in clear",
            ));
        }
        Ok(())
    }

    /// The engine's default time zone and mass-change threshold.
    fn check_engine(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The default SLA and each connector's override.
    fn check_slas(&self) -> Result<(), ConfigError> {
        // An objective of 1 leaves no error budget, so burn rates would divide by zero.
        let slas = std::iter::once((
            "sla".to_string(),
            self.sla.revoke_within_seconds,
            self.sla.objective,
        ))
        .chain(self.connectors.iter().map(|(n, c)| {
            (
                format!("connectors.{n}.sla"),
                c.sla.revoke_within_seconds.unwrap_or(1.0),
                c.sla.objective.unwrap_or(0.5),
            )
        }));
        for (key, within, objective) in slas {
            if !(within > 0.0 && objective > 0.0 && objective < 1.0) {
                return Err(self.invalid(
                    &key,
                    "revoke_within_seconds must be positive and objective between 0 and 1 (exclusive)",
                ));
            }
        }
        Ok(())
    }

    /// What each kind of connector needs: a profile for HTTP, a return window for keys.
    fn check_connector_kinds(&self) -> Result<(), ConfigError> {
        for (name, c) in &self.connectors {
            if c.kind == ConnectorKind::Http && c.profile.as_os_str().is_empty() {
                return Err(self.invalid(
                    &format!("connectors.{name}.profile"),
                    "an HTTP connector needs a profile (or set `kind = \"manual\"`)",
                ));
            }
            let due = c.manual.return_due_hours;
            if !due.is_finite() || due <= 0.0 {
                return Err(self.invalid(
                    &format!("connectors.{name}.manual.return_due_hours"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }

    /// The reconcile and drift schedules, when set, are crontab lines.
    fn check_schedules(&self) -> Result<(), ConfigError> {
        if !self.reconcile.schedule.trim().is_empty()
            && let Err(e) = self.reconcile.schedule.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "reconcile.schedule",
                format!("`{}` is not a crontab line: {e}", self.reconcile.schedule),
            ));
        }
        if let Some(s) = &self.drift.schedule
            && !s.trim().is_empty()
            && let Err(e) = s.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "drift.schedule",
                format!("`{s}` is not a crontab line: {e}"),
            ));
        }
        Ok(())
    }

    /// Each site's time zone.
    fn check_sites(&self) -> Result<(), ConfigError> {
        for (name, site) in &self.sites {
            if site.timezone.parse::<chrono_tz::Tz>().is_err() {
                return Err(self.invalid(
                    &format!("sites.{name}.timezone"),
                    format!("unknown time zone `{}`", site.timezone),
                ));
            }
        }
        Ok(())
    }

    /// Each HR source: one input, a schedule, and a grace for people missing from a feed.
    fn check_hr_sources(&self) -> Result<(), ConfigError> {
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
            let grace = hr.absent_grace;
            if grace.feeds == 0 || !grace.hours.is_finite() || grace.hours < 0.0 {
                return Err(self.invalid(
                    &format!("sources.hr.{name}.absent_grace"),
                    "feeds must be at least 1 and hours zero or more",
                ));
            }
        }
        Ok(())
    }

    /// Each attribute's authority lists sources that exist.
    fn check_authority(&self) -> Result<(), ConfigError> {
        let known_sources: Vec<String> = (self.sources.hr.keys().cloned())
            .chain(self.sources.ldap.keys().cloned())
            .chain(self.scim.tenants.keys().map(|t| format!("scim:{t}")))
            .collect();
        for (attr, sources) in &self.authority.attributes {
            let key = format!("authority.attributes.{attr}");
            if sources.is_empty() {
                return Err(self.invalid(&key, "list at least one source that may set it"));
            }
            if let Some(unknown) = sources.iter().find(|s| !known_sources.contains(s)) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "`{unknown}` is not a configured source (known: {})",
                        known_sources.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each operator's token hash is well formed and the operator's own.
    fn check_operators(&self) -> Result<(), ConfigError> {
        let mut hashes = BTreeMap::new();
        for (name, o) in &self.operators {
            let key = format!("operators.{name}.token_sha256");
            let h = o.token_sha256.to_ascii_lowercase();
            if h.len() != 64 || hex::decode(&h).is_err() {
                return Err(self.invalid(
                    &key,
                    "must be 64 hex digits (the SHA-256 of the token; `latchkey operators token` prints it)",
                ));
            }
            if let Some(other) = hashes.insert(h, name) {
                return Err(self.invalid(
                    &key,
                    format!("the same token as operators.{other}: give each operator its own"),
                ));
            }
        }
        Ok(())
    }

    /// SCIM tenants' tokens and rate limits, the schema extensions, and request limits.
    fn check_scim(&self) -> Result<(), ConfigError> {
        for (name, t) in &self.scim.tenants {
            let key = format!("scim.tenants.{name}");
            match (&t.token_sha256, &t.token) {
                (Some(h), None) => {
                    if h.len() != 64 || hex::decode(h).is_err() {
                        return Err(self.invalid(
                            &format!("{key}.token_sha256"),
                            "must be 64 hex digits (the SHA-256 of the token)",
                        ));
                    }
                }
                // Resolved when the server starts (like every other secret), so a configuration
                // can be checked where the secret is not present.
                (None, Some(_)) => {}
                _ => {
                    return Err(self.invalid(&key, "set exactly one of `token_sha256` and `token`"));
                }
            }
            if let Some(rl) = t.rate_limit
                && (rl.per_second == 0 || rl.burst == 0)
            {
                return Err(self.invalid(
                    &format!("{key}.rate_limit"),
                    "per_second and burst must be at least 1",
                ));
            }
        }
        ScimConfig::check_extensions(&self.scim.extensions, "scim.extensions")
            .map_err(|(k, m)| self.invalid(&k, m))?;
        for (name, t) in &self.scim.tenants {
            ScimConfig::check_extensions(&t.extensions, &format!("scim.tenants.{name}.extensions"))
                .map_err(|(k, m)| self.invalid(&k, m))?;
        }
        if self.scim.max_body_bytes == 0 || self.scim.request_timeout_seconds == 0 {
            return Err(self.invalid(
                "scim",
                "max_body_bytes and request_timeout_seconds must be at least 1",
            ));
        }
        Ok(())
    }

    /// Each LDAP source: its URL, TLS, bind and paging.
    fn check_ldap_sources(&self) -> Result<(), ConfigError> {
        for (name, l) in &self.sources.ldap {
            let key = format!("sources.ldap.{name}");
            if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                return Err(self.invalid(&key, "url must start with ldap:// or ldaps://"));
            }
            if l.starttls && l.url.starts_with("ldaps://") {
                return Err(self.invalid(&key, "starttls needs an ldap:// url, not ldaps://"));
            }
            if l.bind_dn.is_some() != l.bind_password.is_some() {
                return Err(self.invalid(
                    &key,
                    "set both `bind_dn` and `bind_password`, or neither (anonymous)",
                ));
            }
            if l.page_size < 1 || l.poll_seconds == 0 || l.timeout_seconds == 0 {
                return Err(self.invalid(
                    &key,
                    "page_size, poll_seconds and timeout_seconds must be at least 1",
                ));
            }
            if l.mass_change_threshold
                .is_some_and(|t| !(0.0..=1.0).contains(&t))
            {
                return Err(self.invalid(&key, "mass_change_threshold must be between 0 and 1"));
            }
        }
        Ok(())
    }

    /// Each connector's rate limit and concurrency.
    fn check_connector_limits(&self) -> Result<(), ConfigError> {
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

    /// Each SCIM tenant's token as a SHA-256: the configured hash, or the referenced secret hashed.
    /// The token itself is not kept.
    pub fn scim_token_sha256(&self, tenant: &str) -> Result<[u8; 32], ConfigError> {
        use sha2::Digest;
        let key = format!("scim.tenants.{tenant}");
        let t = self
            .scim
            .tenants
            .get(tenant)
            .ok_or_else(|| self.invalid(&key, "no such SCIM tenant"))?;
        let hash: Vec<u8> = match (&t.token_sha256, &t.token) {
            (Some(h), None) => hex::decode(h).unwrap_or_default(),
            (None, Some(secret)) => {
                sha2::Sha256::digest(self.secret(&format!("{key}.token"), secret)?.as_bytes())
                    .to_vec()
            }
            _ => vec![],
        };
        <[u8; 32]>::try_from(hash)
            .map_err(|_| self.invalid(&key, "set exactly one of `token_sha256` and `token`"))
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
