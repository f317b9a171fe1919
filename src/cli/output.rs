//! How read commands print: a table for people (the default) or one JSON document for tools
//! (`--output json`), and one convention for long lists (`--limit N`, 0 = all).
//!
//! Every JSON document names its schema and version in `"schema"` (`latchkey.status/v1`); the
//! schemas are in docs/schemas/ and docs/cli.md says what a version promises.

use serde::Serialize;
use std::fmt::Write;

/// Rows a list shows unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal.
    #[default]
    Table,
    /// One JSON document on stdout, with a versioned `"schema"` name.
    Json,
}

/// `--output`, for commands that print one answer.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArg {
    /// Output format: `table` for people, `json` for tools (schemas in docs/schemas/).
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl OutputArg {
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }
}

/// `--output` and `--limit`, for commands that print lists.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArg {
    #[command(flatten)]
    pub output: OutputArg,
    /// Show at most N rows of each list (0 = all); a capped list says how many more there are.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
}

impl ListArg {
    /// A table with every row, for callers inside the program.
    pub fn all() -> Self {
        Self {
            output: OutputArg {
                output: Format::Table,
            },
            limit: 0,
        }
    }

    pub fn json(&self) -> bool {
        self.output.json()
    }

    /// Cap `items` at the limit, keeping the total.
    pub fn cap<T>(&self, items: Vec<T>) -> Capped<T> {
        Capped::new(items, self.limit)
    }

    /// The limit as a SQL `LIMIT` (0 = all).
    pub fn sql_limit(&self) -> i64 {
        sql_limit(self.limit)
    }
}

/// `--limit`'s 0 (all) as a SQL `LIMIT`.
pub fn sql_limit(limit: usize) -> i64 {
    if limit == 0 {
        i64::MAX
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// A list as every JSON document carries it: the rows shown, how many there are in all, and
/// whether rows were left out.
#[derive(Debug, Clone, Serialize)]
pub struct Capped<T> {
    pub total: usize,
    pub truncated: bool,
    pub items: Vec<T>,
}

impl<T> Capped<T> {
    /// The first `limit` of `items` (0 = all).
    pub fn new(mut items: Vec<T>, limit: usize) -> Self {
        let total = items.len();
        if limit > 0 && total > limit {
            items.truncate(limit);
        }
        Self::of_total(items, total)
    }

    /// Rows already fetched with a limit, out of `total`.
    pub fn of_total(items: Vec<T>, total: usize) -> Self {
        let total = total.max(items.len());
        Self {
            truncated: total > items.len(),
            total,
            items,
        }
    }

    /// Rows left out.
    pub fn more(&self) -> usize {
        self.total - self.items.len()
    }

    /// The line a capped table ends with (indented like its rows); nothing when all is shown.
    pub fn more_line(&self, out: &mut String, indent: &str) {
        if self.truncated {
            let _ = writeln!(
                out,
                "{indent}... and {} more (--limit 0 to show all)",
                self.more()
            );
        }
    }
}

/// A JSON document: its schema name first, then the command's fields.
#[derive(Debug, Serialize)]
pub struct Document<'a, T: Serialize> {
    pub schema: &'a str,
    #[serde(flatten)]
    pub body: &'a T,
}

/// Print `body` on stdout as the JSON document of `schema` (`latchkey.status/v1`).
pub fn print_json<T: Serialize>(schema: &str, body: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&Document { schema, body })?;
    println!("{text}");
    Ok(())
}

/// A timestamp in microseconds as RFC 3339 UTC, as every JSON document writes times.
pub use crate::clock::rfc3339 as time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_keeps_the_total_and_says_how_many_more() {
        let c = Capped::new((1..=7).collect::<Vec<_>>(), 3);
        assert_eq!(
            (c.total, c.truncated, c.items.len(), c.more()),
            (7, true, 3, 4)
        );
        let mut out = String::new();
        c.more_line(&mut out, "  ");
        assert_eq!(out, "  ... and 4 more (--limit 0 to show all)\n");
        let all = Capped::new((1..=7).collect::<Vec<_>>(), 0);
        assert_eq!((all.total, all.truncated, all.items.len()), (7, false, 7));
        let mut out = String::new();
        all.more_line(&mut out, "");
        assert!(out.is_empty());
    }
}
