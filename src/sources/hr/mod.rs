//! The HR source: a CSV feed dropped into a directory, read through a column mapping.
//!
//! The feed is the authority on who works here, so a bad row must never take the whole file
//! down with it: row problems are quarantined with their file and line, and only problems that
//! make every row meaningless (not text, no header, a mapped column missing) fail the file.

mod feed;
mod mapping;

pub use feed::*;
pub use mapping::*;

use crate::identity::{self, When};
use crate::model::{PersonRecord, Quarantined, RecordStatus};
use chrono::NaiveDate;
use chrono::format::StrftimeItems;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Attributes that land in typed fields of [`PersonRecord`] instead of (or besides) `attrs`.
const STATUS: &str = "status";
const SITE: &str = "site";
const EMPLOYMENT_TYPE: &str = "employment_type";
const DATE_ATTRS: [&str; 3] = ["hire_date", "termination_date", "contract_end"];
/// The attribute name the correlation key is published under, and the quarantine field for it.
const KEY_ATTR: &str = "employee_id";
/// The quarantine field for problems with the shape of a row rather than one cell.
const ROW_FIELD: &str = "row";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, thiserror::Error)]
pub enum HrError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The mapping file is malformed or inconsistent; `line` and `key` point at the culprit.
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Mapping {
        origin: String,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    #[error("{file}:{line}: not valid UTF-8 text")]
    NotUtf8 { file: String, line: usize },
    #[error("{file}: empty feed, no header row")]
    Empty { file: String },
    #[error("{file}: header lacks {}", describe_missing(missing))]
    MissingColumns {
        file: String,
        missing: Vec<MissingColumn>,
    },
    #[error("{file}:1: header has column '{column}' more than once")]
    DuplicateColumn { file: String, column: String },
    #[error("{file}:{line}: {message}")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },
    /// The file ends inside a row: it was cut (a partial upload, a full disk), so none of it is used.
    #[error("{file}:{line}: truncated: {reason}")]
    Truncated {
        file: String,
        line: usize,
        reason: String,
    },
}

/// A column the mapping needs that the feed's header does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingColumn {
    pub column: String,
    /// The identity attribute it feeds, or `employee_id` for the key column.
    pub attribute: String,
}

fn describe_missing(missing: &[MissingColumn]) -> String {
    let parts: Vec<String> = missing.iter().map(MissingColumn::to_string).collect();
    let noun = if missing.len() == 1 {
        "column"
    } else {
        "columns"
    };
    format!("{noun} {}", parts.join(", "))
}

/// The feed files in a drop directory, oldest name first: `*.csv`, skipping dotfiles (editor
/// and sync-tool droppings) and names that mark an upload still in progress.
pub fn feed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // A name that is not UTF-8 cannot be one our uploaders produce.
        let Some(name) = name.to_str() else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if name.starts_with('.') || !lower.ends_with(".csv") {
            continue;
        }
        // Follows symlinks, so a linked-in feed counts and a dangling link does not.
        if !entry.path().is_file() {
            continue;
        }
        files.push((name.to_string(), entry.path()));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

impl fmt::Display for MissingColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' (mapped to attribute '{}')",
            self.column, self.attribute
        )
    }
}

#[cfg(test)]
mod tests;
