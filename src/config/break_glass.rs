//! `[break_glass]`: emergency access (see `crate::access_requests`): how long it lasts, and whether
//! one operator may open it (then another must review it) or it needs a second approver first.

use super::{Config, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BreakGlassRule {
    /// One approver opens it at once; another must review it within `review_hours`.
    #[default]
    Review,
    /// It waits for a second approver (dual control), like a temporary request.
    TwoApprovers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    #[serde(default)]
    pub rule: BreakGlassRule,
    /// How long an emergency grant lasts unless asked for less (default 60 minutes).
    #[serde(default = "default_minutes")]
    pub default_minutes: u32,
    /// The longest one may last (default 240 minutes).
    #[serde(default = "max_minutes")]
    pub max_minutes: u32,
    /// Under `rule = "review"`: hours after opening by which another approver must review it
    /// (default 24); past it, `LatchkeyBreakGlassReviewOverdue` fires.
    #[serde(default = "review_hours")]
    pub review_hours: u32,
}

fn default_minutes() -> u32 {
    60
}

fn max_minutes() -> u32 {
    240
}

fn review_hours() -> u32 {
    24
}

impl Default for BreakGlassConfig {
    fn default() -> Self {
        Self {
            rule: BreakGlassRule::default(),
            default_minutes: default_minutes(),
            max_minutes: max_minutes(),
            review_hours: review_hours(),
        }
    }
}

impl Config {
    pub(super) fn validate_break_glass(&self) -> Result<(), ConfigError> {
        validate_rules(self, &self.break_glass, "break_glass")?;
        self.validate_tiers()
    }
}

/// `[tiers.NAME]`: a risk tier for sensitive doors (a server room, a plant room, a pharmacy store):
/// stricter limits than the defaults for temporary access and break-glass at its targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The doors in this tier, by target name (at whichever connector).
    pub targets: Vec<String>,
    /// The longest temporary request for these doors, in days (default: the general 31).
    pub max_window_days: Option<u32>,
    /// Break-glass rules for these doors instead of `[break_glass]`.
    pub break_glass: Option<BreakGlassConfig>,
    /// How many people other than the requester must approve temporary access to these doors
    /// (1 or 2; default 1).
    #[serde(default = "one")]
    pub approvals: u32,
    /// Who may approve requests and emergencies at these doors, by `[operators.NAME]`; empty:
    /// any approver.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Every how many days an access review of these doors starts by itself (e.g. 90 for
    /// quarterly); none when absent.
    pub review_every_days: Option<u32>,
    /// How many days reviewers have to decide a scheduled review (default 14).
    #[serde(default = "review_days")]
    pub review_days: u32,
    /// What happens to a scheduled review's undecided items at its deadline (default `revoke`).
    #[serde(default)]
    pub review_on_deadline: OnDeadline,
    /// A revocation SLA for these doors at any connector, overriding parts of `[sla]`; reported
    /// by `latchkey report sla` as `tier:NAME`.
    pub sla: Option<super::SlaOverride>,
}

/// What an access review does with the items nobody decided by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadline {
    /// Revoke them: access nobody vouched for ends (fail closed).
    #[default]
    Revoke,
    /// Keep them and mark the campaign escalated: an alert fires until someone decides them.
    Escalate,
}

impl OnDeadline {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDeadline::Revoke => "revoke",
            OnDeadline::Escalate => "escalate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke" => Some(OnDeadline::Revoke),
            "escalate" => Some(OnDeadline::Escalate),
            _ => None,
        }
    }
}

fn one() -> u32 {
    1
}

fn review_days() -> u32 {
    14
}

impl Config {
    /// The tier a target belongs to, if any.
    pub fn tier_of(&self, target: &str) -> Option<(&str, &TierConfig)> {
        self.tiers
            .iter()
            .find(|(_, t)| t.targets.iter().any(|x| x == target))
            .map(|(name, t)| (name.as_str(), t))
    }

    /// The break-glass rules for a target: its tier's, else `[break_glass]`.
    pub fn break_glass_for(&self, target: &str) -> &BreakGlassConfig {
        self.tier_of(target)
            .and_then(|(_, t)| t.break_glass.as_ref())
            .unwrap_or(&self.break_glass)
    }

    pub(super) fn validate_tiers(&self) -> Result<(), ConfigError> {
        let mut seen: std::collections::BTreeMap<&str, &str> = Default::default();
        for (name, tier) in &self.tiers {
            if tier.targets.is_empty() {
                return Err(
                    self.invalid(&format!("tiers.{name}.targets"), "name at least one target")
                );
            }
            for t in &tier.targets {
                if let Some(other) = seen.insert(t, name) {
                    return Err(self.invalid(
                        &format!("tiers.{name}.targets"),
                        format!("`{t}` is already in tier `{other}`: a door has one tier"),
                    ));
                }
            }
            if let Some(days) = tier.max_window_days
                && !(1..=31).contains(&days)
            {
                return Err(self.invalid(
                    &format!("tiers.{name}.max_window_days"),
                    "must be between 1 and 31",
                ));
            }
            if let Some(every) = tier.review_every_days
                && !(1..=366).contains(&every)
            {
                return Err(self.invalid(
                    &format!("tiers.{name}.review_every_days"),
                    "must be between 1 and 366",
                ));
            }
            if tier.review_days == 0
                || tier
                    .review_every_days
                    .is_some_and(|every| tier.review_days > every)
            {
                return Err(self.invalid(
                    &format!("tiers.{name}.review_days"),
                    "must be at least 1 and no longer than review_every_days",
                ));
            }
            if !(1..=2).contains(&tier.approvals) {
                return Err(self.invalid(&format!("tiers.{name}.approvals"), "must be 1 or 2"));
            }
            if let Some(unknown) = tier
                .approvers
                .iter()
                .find(|a| !self.operators.contains_key(*a))
            {
                return Err(self.invalid(
                    &format!("tiers.{name}.approvers"),
                    format!("`{unknown}` is not an operator (`[operators.{unknown}]`)"),
                ));
            }
            if (tier.approvals as usize) > tier.approvers.len() && !tier.approvers.is_empty() {
                return Err(self.invalid(
                    &format!("tiers.{name}.approvers"),
                    format!(
                        "name at least {} approvers for `approvals = {}`",
                        tier.approvals, tier.approvals
                    ),
                ));
            }
            if let Some(o) = tier.sla {
                let within = o.revoke_within_seconds.unwrap_or(1.0);
                let objective = o.objective.unwrap_or(0.5);
                if !(within > 0.0 && objective > 0.0 && objective < 1.0) {
                    return Err(self.invalid(
                        &format!("tiers.{name}.sla"),
                        "revoke_within_seconds must be positive and objective between 0 and 1 (exclusive)",
                    ));
                }
            }
            if let Some(b) = &tier.break_glass {
                validate_rules(self, b, &format!("tiers.{name}.break_glass"))?;
            }
        }
        Ok(())
    }
}

fn validate_rules(config: &Config, b: &BreakGlassConfig, at: &str) -> Result<(), ConfigError> {
    if b.max_minutes == 0 || b.max_minutes > 24 * 60 {
        return Err(config.invalid(
            &format!("{at}.max_minutes"),
            "must be between 1 and 1440 (a day): an emergency is brief",
        ));
    }
    if b.default_minutes == 0 || b.default_minutes > b.max_minutes {
        return Err(config.invalid(
            &format!("{at}.default_minutes"),
            format!("must be between 1 and max_minutes ({})", b.max_minutes),
        ));
    }
    if b.review_hours == 0 {
        return Err(config.invalid(&format!("{at}.review_hours"), "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{BreakGlassRule, Config, ConfigInput};

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
    fn a_tier_overrides_break_glass_for_its_doors_only_and_mistakes_name_the_key() {
        let c = load(
            "[tiers.high]\ntargets = [\"server-room\"]\nmax_window_days = 2\n\
             [tiers.high.break_glass]\nrule = \"two_approvers\"\nmax_minutes = 30\ndefault_minutes = 15\n",
        )
        .unwrap();
        assert_eq!(c.tier_of("server-room").map(|(n, _)| n), Some("high"));
        assert_eq!(
            c.break_glass_for("server-room").rule,
            BreakGlassRule::TwoApprovers
        );
        assert_eq!(c.break_glass_for("lobby").rule, BreakGlassRule::Review);
        assert_eq!(c.break_glass_for("lobby").max_minutes, 240);
        for (extra, key) in [
            (
                "[break_glass]\nmax_minutes = 0\n",
                "break_glass.max_minutes",
            ),
            (
                "[break_glass]\ndefault_minutes = 300\n",
                "break_glass.default_minutes",
            ),
            ("[tiers.high]\ntargets = []\n", "tiers.high.targets"),
            (
                "[tiers.a]\ntargets = [\"x\"]\n[tiers.b]\ntargets = [\"x\"]\n",
                "tiers.b.targets",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\nmax_window_days = 40\n",
                "tiers.high.max_window_days",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\nreview_every_days = 7\nreview_days = 8\n",
                "tiers.high.review_days",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\nreview_on_deadline = \"forget\"\n",
                "review_on_deadline",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\napprovals = 3\n",
                "tiers.high.approvals",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\napprovers = [\"ghost\"]\n",
                "`ghost` is not an operator",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\n[tiers.high.sla]\nobjective = 1.0\n",
                "tiers.high.sla",
            ),
            (
                "[tiers.high]\ntargets = [\"x\"]\n[tiers.high.break_glass]\nreview_hours = 0\n",
                "tiers.high.break_glass.review_hours",
            ),
        ] {
            let err = load(extra).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }
}
