//! `[audit]`: retention of the audit log and forwarding to a SIEM.

use super::{Config, ConfigError, SecretRef};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Prune records older than this many days (daily, by the daemon); the chain stays verifiable
    /// from an anchor. Absent: keep everything.
    pub retain_days: Option<u32>,
    /// SIEM sinks, by name: `[audit.forward.NAME]`. Each has its own durable cursor.
    #[serde(default)]
    pub forward: BTreeMap<String, ForwardSink>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Syslog (RFC 5424) over TCP with octet-counting framing (RFC 6587), TLS optional.
    Syslog,
    /// JSON lines POSTed to an HTTP endpoint; a 2xx answer accepts the batch.
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSink {
    pub kind: SinkKind,
    /// syslog: the receiver, `host:port`.
    pub address: Option<String>,
    /// syslog: TLS to the receiver (RFC 5425 style, over the same octet-counted frames).
    #[serde(default)]
    pub tls: bool,
    /// syslog with TLS: PEM file of the CA(s) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// syslog with TLS: the name the certificate must carry (default: the address's host).
    pub server_name: Option<String>,
    /// syslog: the HOSTNAME field (default: the `instance` name).
    pub hostname: Option<String>,
    /// http: the endpoint JSON lines are POSTed to.
    pub url: Option<String>,
    /// http: request headers; values are secret references (an API token), never clear text.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Only records whose action matches one of these are sent: an exact action
    /// (`emergency.opened`) or a prefix ending in `*` (`emergency.*`). Empty: every record. A
    /// sink with `actions = ["emergency.opened"]` is the break-glass webhook: at least once, in
    /// order, retried while the receiver is down.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Records per send.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// A send that takes longer counts as failed (and is retried).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Longest wait between retries while the receiver is down.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
}

impl ForwardSink {
    /// Whether a record with this action goes to this sink.
    pub fn takes(&self, action: &str) -> bool {
        self.actions.is_empty()
            || self.actions.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => action.starts_with(prefix),
                None => a == action,
            })
    }
}

fn default_batch() -> u32 {
    100
}

fn default_timeout() -> u64 {
    10
}

fn default_max_backoff() -> u64 {
    30
}

impl Config {
    pub(super) fn validate_audit(&self) -> Result<(), ConfigError> {
        if self.audit.retain_days == Some(0) {
            return Err(self.invalid("audit.retain_days", "must be at least 1"));
        }
        for (name, s) in &self.audit.forward {
            let key = |k: &str| format!("audit.forward.{name}.{k}");
            if s.batch == 0 {
                return Err(self.invalid(&key("batch"), "must be at least 1"));
            }
            if let Some(bad) = s
                .actions
                .iter()
                .find(|a| a.trim().is_empty() || a.trim_end_matches('*').contains('*'))
            {
                return Err(self.invalid(
                    &key("actions"),
                    format!("`{bad}`: an action (`emergency.opened`) or a prefix ending in `*` (`emergency.*`)"),
                ));
            }
            match s.kind {
                SinkKind::Syslog => {
                    let Some(addr) = &s.address else {
                        return Err(self.invalid(
                            &key("address"),
                            "a syslog sink needs `address = \"host:port\"`",
                        ));
                    };
                    if addr
                        .rsplit_once(':')
                        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                    {
                        return Err(
                            self.invalid(&key("address"), format!("`{addr}` is not host:port"))
                        );
                    }
                    for (set, k) in [(s.url.is_some(), "url"), (!s.headers.is_empty(), "headers")] {
                        if set {
                            return Err(self.invalid(&key(k), "only http sinks take it"));
                        }
                    }
                    if !s.tls && (s.ca_file.is_some() || s.server_name.is_some()) {
                        return Err(self.invalid(
                            &key("ca_file"),
                            "`ca_file` and `server_name` need `tls = true`",
                        ));
                    }
                }
                SinkKind::Http => {
                    let Some(url) = &s.url else {
                        return Err(self.invalid(&key("url"), "an http sink needs `url`"));
                    };
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(
                            self.invalid(&key("url"), format!("`{url}` is not an http(s) URL"))
                        );
                    }
                    for (set, k) in [
                        (s.address.is_some(), "address"),
                        (s.tls, "tls"),
                        (s.ca_file.is_some(), "ca_file"),
                        (s.server_name.is_some(), "server_name"),
                        (s.hostname.is_some(), "hostname"),
                    ] {
                        if set {
                            return Err(self.invalid(&key(k), "only syslog sinks take it"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigInput};

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

    #[test]
    fn sinks_are_checked_and_errors_name_the_key() {
        let ok = load(
            "[audit]\nretain_days = 400\n[audit.forward.siem]\nkind = \"syslog\"\naddress = \"siem:6514\"\ntls = true\n\
             [audit.forward.c]\nkind = \"http\"\nurl = \"https://c/ingest\"\nheaders = { authorization = { env = \"T\" } }\n",
        )
        .unwrap();
        assert_eq!(ok.audit.forward.len(), 2);
        assert_eq!(ok.audit.forward["siem"].batch, 100);
        for (extra, key) in [
            ("[audit]\nretain_days = 0\n", "audit.retain_days"),
            (
                "[audit.forward.s]\nkind = \"syslog\"\n",
                "audit.forward.s.address",
            ),
            (
                "[audit.forward.s]\nkind = \"syslog\"\naddress = \"siem\"\n",
                "audit.forward.s.address",
            ),
            (
                "[audit.forward.s]\nkind = \"syslog\"\naddress = \"s:1\"\nca_file = \"ca.pem\"\n",
                "audit.forward.s.ca_file",
            ),
            (
                "[audit.forward.h]\nkind = \"http\"\n",
                "audit.forward.h.url",
            ),
            (
                "[audit.forward.h]\nkind = \"http\"\nurl = \"ftp://x\"\n",
                "audit.forward.h.url",
            ),
            (
                "[audit.forward.h]\nkind = \"http\"\nurl = \"http://x\"\ntls = true\n",
                "audit.forward.h.tls",
            ),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        // A clear-text header value is refused: values are secret references.
        let e = load("[audit.forward.h]\nkind = \"http\"\nurl = \"http://x\"\nheaders = { authorization = \"Bearer s3cret\" }\n").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_sink_takes_the_actions_it_names_exactly_or_by_prefix() {
        let c = load(
            "[audit.forward.pager]\nkind = \"http\"\nurl = \"https://pager.example/hook\"\n\
             actions = [\"emergency.*\", \"review.escalated\"]\n",
        )
        .unwrap();
        let sink = &c.audit.forward["pager"];
        for (action, taken) in [
            ("emergency.opened", true),
            ("emergency.reviewed", true),
            ("review.escalated", true),
            ("review.started", false),
            ("request.created", false),
        ] {
            assert_eq!(sink.takes(action), taken, "{action}");
        }
        let err = load(
            "[audit.forward.pager]\nkind = \"http\"\nurl = \"https://pager.example/hook\"\n\
             actions = [\"emer*gency\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("audit.forward.pager.actions"), "{err}");
    }
}
