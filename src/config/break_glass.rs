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
        let b = &self.break_glass;
        if b.max_minutes == 0 || b.max_minutes > 24 * 60 {
            return Err(self.invalid(
                "break_glass.max_minutes",
                "must be between 1 and 1440 (a day): an emergency is brief",
            ));
        }
        if b.default_minutes == 0 || b.default_minutes > b.max_minutes {
            return Err(self.invalid(
                "break_glass.default_minutes",
                format!("must be between 1 and max_minutes ({})", b.max_minutes),
            ));
        }
        if b.review_hours == 0 {
            return Err(self.invalid("break_glass.review_hours", "must be at least 1"));
        }
        Ok(())
    }
}
