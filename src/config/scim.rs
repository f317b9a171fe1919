//! The SCIM server's settings: tenants, providers, declared extensions and attributes.

use super::*;

/// Which SCIM attribute carries the correlation key shared with HR and LDAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CorrelateBy {
    #[default]
    #[serde(rename = "externalId")]
    ExternalId,
    /// The Enterprise User extension's `employeeNumber`.
    #[serde(rename = "employeeNumber")]
    EmployeeNumber,
    #[serde(rename = "userName")]
    UserName,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    /// Default for every tenant that does not set its own.
    #[serde(default)]
    pub correlate_by: CorrelateBy,
    /// Largest request body accepted; larger ones get 413 before they are read.
    #[serde(default = "default_scim_body")]
    pub max_body_bytes: usize,
    /// A request still running after this long is answered 503 and its transaction rolled back.
    #[serde(default = "default_scim_timeout")]
    pub request_timeout_seconds: u64,
    /// The externally visible base of the endpoint (`https://latchkey.example.com/scim/v2`) for
    /// `meta.location`; when absent it is built from the request's Host header.
    pub base_url: Option<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, ScimTenantConfig>,
    /// Extension schemas every tenant accepts, by URN (RFC 7643 section 3.3).
    #[serde(default)]
    pub extensions: BTreeMap<String, ScimExtensionConfig>,
    /// What happens to an attribute no schema declares: `refuse` (default), `keep` or `drop`.
    #[serde(default)]
    pub unknown_attributes: UnknownAttributes,
}

/// Which identity provider a SCIM tenant is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScimProvider {
    #[default]
    Generic,
    Okta,
    Entra,
}

/// What happens to an attribute that neither the core schemas nor a declared extension has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownAttributes {
    /// 400 with a message that says how to declare it: a mistyped attribute never passes silently.
    #[default]
    Refuse,
    /// Stored and returned as sent, not filterable.
    Keep,
    /// Removed before storing.
    Drop,
}

/// A declared SCIM schema extension (custom attributes an identity provider sends).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScimExtensionConfig {
    /// `User` (default) or `Group`.
    #[serde(default = "default_ext_resource")]
    pub resource: String,
    pub description: Option<String>,
    pub attributes: Vec<ScimAttributeConfig>,
}

fn default_ext_resource() -> String {
    "User".to_string()
}

/// One attribute of a declared extension.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScimAttributeConfig {
    pub name: String,
    /// `string` (default), `boolean`, `integer`, `decimal`, `dateTime`, `reference`, `complex`.
    #[serde(default = "default_attr_type", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub multi_valued: bool,
    #[serde(default)]
    pub sub_attributes: Vec<ScimAttributeConfig>,
    /// The identity attribute this value feeds, for templates (multiple values joined by `,`).
    pub maps_to: Option<String>,
}

fn default_attr_type() -> String {
    "string".to_string()
}

const SCIM_ATTR_TYPES: &[&str] = &[
    "string",
    "boolean",
    "integer",
    "decimal",
    "dateTime",
    "reference",
    "complex",
];

impl ScimConfig {
    /// A declared extension that cannot work: the key and the reason.
    pub(crate) fn check_extensions(
        exts: &BTreeMap<String, ScimExtensionConfig>,
        prefix: &str,
    ) -> Result<(), (String, String)> {
        for (urn, e) in exts {
            let key = format!("{prefix}.\"{urn}\"");
            let core = urn
                .to_ascii_lowercase()
                .starts_with("urn:ietf:params:scim:schemas:core:")
                || urn.eq_ignore_ascii_case(
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                );
            if !urn.starts_with("urn:") || urn.split(':').count() < 3 || core {
                return Err((
                    key,
                    "must be a URN other than the core and enterprise schemas".into(),
                ));
            }
            if e.resource != "User" && e.resource != "Group" {
                return Err((
                    format!("{key}.resource"),
                    "must be `User` or `Group`".into(),
                ));
            }
            let mut attrs: Vec<&ScimAttributeConfig> = e.attributes.iter().collect();
            while let Some(a) = attrs.pop() {
                let ok_name = !a.name.is_empty()
                    && a.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok_name || !SCIM_ATTR_TYPES.contains(&a.kind.as_str()) {
                    return Err((
                        format!("{key}.attributes"),
                        format!(
                            "attribute `{}`: a plain name and one of {SCIM_ATTR_TYPES:?}",
                            a.name
                        ),
                    ));
                }
                if (a.kind == "complex") == a.sub_attributes.is_empty() {
                    return Err((
                        format!("{key}.attributes"),
                        format!(
                            "attribute `{}`: sub_attributes exactly when type is complex",
                            a.name
                        ),
                    ));
                }
                attrs.extend(a.sub_attributes.iter());
            }
        }
        Ok(())
    }
}

impl Default for ScimConfig {
    fn default() -> Self {
        Self {
            correlate_by: CorrelateBy::default(),
            max_body_bytes: default_scim_body(),
            request_timeout_seconds: default_scim_timeout(),
            base_url: None,
            tenants: BTreeMap::new(),
            extensions: BTreeMap::new(),
            unknown_attributes: UnknownAttributes::default(),
        }
    }
}

fn default_scim_body() -> usize {
    1024 * 1024
}
fn default_scim_timeout() -> u64 {
    30
}

/// One identity provider pushing to latchkey. Its bearer token is given either as its SHA-256
/// (hex), or as a secret reference resolved and hashed at start; never in clear in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimTenantConfig {
    pub token_sha256: Option<String>,
    pub token: Option<SecretRef>,
    pub correlate_by: Option<CorrelateBy>,
    /// Requests per second this tenant may make (over the burst); excess gets 429.
    pub rate_limit: Option<RateLimitConfig>,
    /// When set, a user is in scope only while a member of one of these groups (by displayName):
    /// removal from the last of them is a leaver.
    #[serde(default)]
    pub scope_groups: Vec<String>,
    /// Which identity provider this is: selects compatibility behaviour (`entra` turns on
    /// `unquoted_filter_values`). Default `generic`.
    #[serde(default)]
    pub provider: ScimProvider,
    /// Accept filter values without quotes (`externalId eq jyoung`), as Entra ID sends them.
    /// Default: on for `provider = "entra"`, off otherwise.
    pub unquoted_filter_values: Option<bool>,
    /// Extension schemas this tenant accepts besides those under `[scim.extensions]`.
    #[serde(default)]
    pub extensions: BTreeMap<String, ScimExtensionConfig>,
    /// Overrides `scim.unknown_attributes` for this tenant.
    pub unknown_attributes: Option<UnknownAttributes>,
    /// Correlation keys this tenant is authoritative for (`*` matches any run of characters),
    /// besides the people it created (first to know them). Default none.
    #[serde(default)]
    pub authoritative_keys: Vec<String>,
    /// Whether a deactivation or deletion of a person this tenant is not authoritative for
    /// revokes (default false: it is recorded and alerted, not executed).
    #[serde(default)]
    pub may_terminate: bool,
}
