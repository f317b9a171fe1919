//! `[console]`: the web console the daemon serves under `/console`, and how operators sign in to
//! it: OpenID Connect (`[console.oidc]`, roles from a claim) and, where enabled, an operator's
//! bearer token pasted into the sign-in page.

use super::{Config, ConfigError, SecretRef};
use crate::operators::Role;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The address people open the console at (`https://latchkey.example.com`): the OpenID
    /// redirect URI is this plus `/console/callback`, and cookies are `Secure` when it is https.
    pub public_url: String,
    /// How long a sign-in lasts, in hours (default 8: a working day).
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
    /// Whether an operator may sign in with their `[operators]` bearer token (default true). A
    /// token is already a full credential for the API; this lets a site without an identity
    /// provider use the console. Turn it off to require single sign-on.
    #[serde(default = "default_true")]
    pub token_login: bool,
    pub oidc: Option<OidcConfig>,
}

fn default_session_hours() -> u32 {
    8
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; its discovery document is at
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, as a secret reference (a public client with PKCE only: leave it out).
    pub client_secret: Option<SecretRef>,
    /// Scopes beyond `openid` (default `profile` and `email`; add `groups` where the provider
    /// releases groups for it).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that carries the person's groups or roles (default `groups`), read from the ID
    /// token, or else from the user-info endpoint.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim that names the operator in the audit log (`oidc:NAME`; default
    /// `preferred_username`, then `email`, then `sub`).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Which values of the roles claim give which role: `approver = ["security-approvers"]`. A
    /// person with several gets the highest; one with none is refused.
    pub roles: BTreeMap<Role, Vec<String>>,
    /// A short label for the sign-in button (default "single sign-on").
    pub display_name: Option<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".into(), "email".into()]
}

fn default_roles_claim() -> String {
    "groups".into()
}

fn default_name_claim() -> String {
    "preferred_username".into()
}

impl OidcConfig {
    /// The highest role any of `values` (the roles claim) maps to.
    pub fn role_of(&self, values: &[String]) -> Option<Role> {
        self.roles
            .iter()
            .filter(|(_, groups)| groups.iter().any(|g| values.contains(g)))
            .map(|(role, _)| *role)
            .max()
    }
}

impl Config {
    pub(super) fn validate_console(&self) -> Result<(), ConfigError> {
        let Some(console) = &self.console else {
            return Ok(());
        };
        let url = url::Url::parse(&console.public_url).map_err(|e| {
            self.invalid(
                "console.public_url",
                format!("`{}` is not a URL: {e}", console.public_url),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid("console.public_url", "must be an http or https URL"));
        }
        if console.session_hours == 0 || console.session_hours > 24 * 7 {
            return Err(self.invalid("console.session_hours", "must be between 1 and 168"));
        }
        if console.oidc.is_none() && !console.token_login {
            return Err(self.invalid(
                "console",
                "no way to sign in: configure `[console.oidc]` or keep `token_login = true`",
            ));
        }
        let Some(oidc) = &console.oidc else {
            return Ok(());
        };
        if let Err(e) = url::Url::parse(&oidc.issuer) {
            return Err(self.invalid(
                "console.oidc.issuer",
                format!("`{}` is not a URL: {e}", oidc.issuer),
            ));
        }
        if oidc.client_id.trim().is_empty() {
            return Err(self.invalid("console.oidc.client_id", "must not be empty"));
        }
        if oidc.roles.values().all(|g| g.is_empty()) {
            return Err(self.invalid(
                "console.oidc.roles",
                "map at least one value of the roles claim to a role, e.g. viewer = [\"latchkey-viewers\"]",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigInput};
    use crate::operators::Role;

    fn load(extra: &str) -> Result<Config, String> {
        let text = format!(
            "version = 1\n[store]\nurl = \"sqlite://x.db\"\n[policy]\ntemplates = \"t.toml\"\n{extra}"
        );
        Config::load(&ConfigInput {
            text,
            path: "conf/test.toml".into(),
            env: Default::default(),
        })
        .map_err(|e| e.to_string())
    }

    const OIDC: &str = "[console.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"lk\"\n\
                        [console.oidc.roles]\ndesk = [\"facilities\"]\napprover = [\"security\"]\n";

    #[test]
    fn a_console_is_checked_and_errors_name_the_key() {
        let ok = load(&format!(
            "[console]\npublic_url = \"https://lk.example.com\"\n{OIDC}"
        ))
        .unwrap();
        let console = ok.console.unwrap();
        assert_eq!((console.session_hours, console.token_login), (8, true));
        let oidc = console.oidc.unwrap();
        assert_eq!(oidc.roles_claim, "groups");
        assert_eq!(
            oidc.role_of(&["facilities".into(), "security".into()]),
            Some(Role::Approver)
        );
        assert_eq!(oidc.role_of(&["sales".into()]), None);
        for (extra, key) in [
            (
                "[console]\npublic_url = \"not a url\"\n",
                "console.public_url",
            ),
            (
                "[console]\npublic_url = \"ftp://lk\"\n",
                "console.public_url",
            ),
            (
                "[console]\npublic_url = \"https://lk\"\nsession_hours = 0\n",
                "console.session_hours",
            ),
            (
                "[console]\npublic_url = \"https://lk\"\ntoken_login = false\n",
                "console",
            ),
            (
                "[console]\npublic_url = \"https://lk\"\n[console.oidc]\nissuer = \"https://i\"\nclient_id = \"lk\"\n[console.oidc.roles]\n",
                "console.oidc.roles",
            ),
            (
                "[console]\npublic_url = \"https://lk\"\n[console.oidc]\nissuer = \"https://i\"\nclient_id = \" \"\n[console.oidc.roles]\nviewer = [\"a\"]\n",
                "console.oidc.client_id",
            ),
        ] {
            let err = load(extra).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let unknown_role = load(&format!(
            "[console]\npublic_url = \"https://lk\"\n{}",
            OIDC.replace("desk =", "janitor =")
        ))
        .unwrap_err();
        assert!(unknown_role.contains("janitor"), "{unknown_role}");
    }
}
