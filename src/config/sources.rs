//! The sources' settings: HR files and drop folders, LDAP / AD directories, attribute authority.

use super::*;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub hr: BTreeMap<String, HrSourceConfig>,
    /// LDAP and Active Directory sources (see `crate::sources::ldap`).
    #[serde(default)]
    pub ldap: BTreeMap<String, LdapSourceConfig>,
}

/// How an LDAP source follows changes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LdapDialect {
    /// RFC 4533 content synchronisation (OpenLDAP syncprov, 389-ds).
    #[default]
    Rfc4533,
    /// `uSNChanged` polling against one domain controller, deletions by full comparison.
    ActiveDirectory,
    /// `modifyTimestamp` polling plus periodic full comparison, for servers with neither.
    Poll,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LdapScope {
    Base,
    One,
    #[default]
    Subtree,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceConfig {
    /// `ldap://host:389` or `ldaps://host:636`. For Active Directory, one pinned domain controller:
    /// USNs are per DC.
    pub url: String,
    /// Simple bind; anonymous when absent.
    pub bind_dn: Option<String>,
    pub bind_password: Option<SecretRef>,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    pub base: String,
    #[serde(default)]
    pub scope: LdapScope,
    #[serde(default = "default_ldap_filter")]
    pub filter: String,
    #[serde(default)]
    pub dialect: LdapDialect,
    /// Attribute mapping (see `mappings/ldap.toml`).
    pub mapping: PathBuf,
    /// RFC 4533: keep the search open (refreshAndPersist). `false` polls with refreshOnly.
    #[serde(default = "default_true")]
    pub persist: bool,
    /// Seconds between polls (refreshOnly, USN and timestamp polling).
    #[serde(default = "default_ldap_poll")]
    pub poll_seconds: u64,
    /// Seconds between full comparisons (polling dialects): how deletions are found.
    #[serde(default = "default_ldap_full")]
    pub full_compare_seconds: u64,
    #[serde(default = "default_page_size")]
    pub page_size: i32,
    /// Seconds to wait for the server on connect and on each request.
    #[serde(default = "default_ldap_timeout")]
    pub timeout_seconds: u64,
    /// Overrides `engine.mass_change_threshold` for full comparisons of this directory.
    pub mass_change_threshold: Option<f64>,
    /// Explicit deletions within this many seconds count together against the mass-change
    /// threshold; beyond it they are held for approval.
    #[serde(default = "default_ldap_delete_window")]
    pub mass_delete_window_seconds: u64,
    /// Explicit deletions and disables are never held while there are at most this many in the
    /// window: one leaver in a small directory is not a mass change.
    #[serde(default = "default_ldap_delete_min")]
    pub mass_delete_min: usize,
}

fn default_ldap_delete_min() -> usize {
    5
}

fn default_ldap_delete_window() -> u64 {
    300
}

fn default_ldap_filter() -> String {
    "(objectClass=person)".to_string()
}
fn default_true() -> bool {
    true
}
fn default_ldap_poll() -> u64 {
    30
}
fn default_ldap_full() -> u64 {
    3600
}
fn default_page_size() -> i32 {
    500
}
fn default_ldap_timeout() -> u64 {
    30
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
    /// How a file is known to be completely written: `settle` (default) or `done-marker`.
    #[serde(default)]
    pub complete: FileCompletion,
    /// For `complete = "settle"`: seconds a file must have gone unmodified before it is read.
    #[serde(default = "default_settle_seconds")]
    pub settle_seconds: u64,
    /// Where files that cannot be read at all are moved; default `rejected/` beside the drop directory.
    pub rejected_dir: Option<PathBuf>,
    /// How long a person missing from the feed (without a termination) waits before being a leaver.
    #[serde(default)]
    pub absent_grace: AbsentGrace,
}

fn default_schedule() -> String {
    "*/15 * * * *".to_string()
}

fn default_settle_seconds() -> u64 {
    5
}

/// How latchkey knows an HR file has been written completely.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileCompletion {
    /// The file has not been modified for `settle_seconds`.
    #[default]
    Settle,
    /// A marker `<name>.done` exists beside the file (written by the uploader after the file).
    DoneMarker,
}

/// A person missing from a full feed becomes a leaver once missing from `feeds` consecutive feeds
/// and for at least `hours` since the first feed that missed them. Explicit terminations never wait.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AbsentGrace {
    #[serde(default = "default_absent_feeds")]
    pub feeds: u32,
    #[serde(default)]
    pub hours: f64,
}

impl Default for AbsentGrace {
    fn default() -> Self {
        Self {
            feeds: default_absent_feeds(),
            hours: 0.0,
        }
    }
}

fn default_absent_feeds() -> u32 {
    2
}

/// Attribute authority (DESIGN.md invariant 12): for each attribute named here, only the listed
/// sources may set it, the first that has a value winning; other sources' values for it are
/// ignored, so an identity provider with a stale `department` cannot move a person between door
/// groups the HR feed decides. Attributes not named keep the default rule: the first source by
/// name wins and the others fill gaps. `site` may be named too. Sources are the configured names
/// (`hr`, an LDAP source's name) and `scim:<tenant>` for a SCIM tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}
