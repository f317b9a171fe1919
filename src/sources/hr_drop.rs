//! The HR drop directory on a bad day: a file is read only once it is completely written, a file
//! that cannot be read at all is set aside with its reason (so the files after it still flow), and
//! a file whose last row was cut is never applied in part.

use crate::config::{AbsentGrace, FileCompletion, HrSourceConfig};
use crate::sources::hr::HrError;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// The suffix of the marker an uploader writes after the file in `complete = "done-marker"` mode.
pub const DONE_SUFFIX: &str = ".done";
/// The suffix of the note written beside a file that was set aside.
pub const REASON_SUFFIX: &str = ".reason.txt";

/// `hr-2026-11-25.csv` -> `hr-2026-11-25.csv.done`.
pub fn done_marker(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(DONE_SUFFIX);
    path.with_file_name(name)
}

/// Is the file completely written, by the source's convention? `settle`: not modified for
/// `settle_seconds` by the injected clock (an upload in progress keeps moving the modification
/// time); `done-marker`: the uploader's `<name>.done` exists.
pub fn is_complete(path: &Path, cfg: &HrSourceConfig, now: DateTime<Utc>) -> std::io::Result<bool> {
    match cfg.complete {
        FileCompletion::DoneMarker => Ok(done_marker(path).is_file()),
        FileCompletion::Settle => {
            let modified: DateTime<Utc> = std::fs::metadata(path)?.modified()?.into();
            let settle = i64::try_from(cfg.settle_seconds).unwrap_or(i64::MAX);
            let quiet = now.signed_duration_since(modified);
            Ok(quiet >= chrono::Duration::try_seconds(settle).unwrap_or(chrono::Duration::MAX))
        }
    }
}

/// Errors that make a whole file unusable whatever is retried: such a file is set aside instead of
/// being read again on every tick (an I/O error, by contrast, may heal and is retried).
pub fn is_unreadable(e: &HrError) -> bool {
    matches!(
        e,
        HrError::NotUtf8 { .. }
            | HrError::Empty { .. }
            | HrError::MissingColumns { .. }
            | HrError::DuplicateColumn { .. }
            | HrError::Csv { .. }
            | HrError::Truncated { .. }
    )
}

/// A file whose end was cut: it ends inside a quoted cell, or its last line has no line break and
/// fewer cells than the header. Its rows after the cut are missing, and applying the rest would
/// make everyone after the cut a leaver, so the whole file is refused.
pub fn truncation(file: &str, bytes: &[u8], delimiter: u8) -> Result<(), HrError> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let line = |upto: usize| body[..upto].iter().filter(|b| **b == b'\n').count() + 1;
    if let Some(quote_at) = open_quote(body, delimiter) {
        return Err(HrError::Truncated {
            file: file.to_string(),
            line: line(quote_at),
            reason: "the file ends inside a quoted cell".to_string(),
        });
    }
    if body.is_empty() || body.ends_with(b"\n") || body.ends_with(b"\r") {
        return Ok(());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(body);
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.iter().any(|c| !c.trim().is_empty()))
        .collect();
    match (rows.first(), rows.last()) {
        (Some(header), Some(last)) if rows.len() > 1 && last.len() < header.len() => {
            Err(HrError::Truncated {
                file: file.to_string(),
                line: line(body.len()),
                reason: format!(
                    "the last row has {} of the header's {} cells and no line break",
                    last.len(),
                    header.len()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Where a quoted cell opens that never closes. As in the csv reader, a quote opens a quoted cell
/// only at the start of a cell; elsewhere it is a literal character (`5" screen`).
fn open_quote(body: &[u8], delimiter: u8) -> Option<usize> {
    let mut open: Option<usize> = None;
    let mut at_cell_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match open {
            Some(_) if b == b'"' => {
                // `""` inside a quoted cell is an escaped quote.
                if body.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    open = None;
                }
            }
            Some(_) => {}
            None if b == b'"' && at_cell_start => open = Some(i),
            None => {}
        }
        at_cell_start = open.is_none() && (matches!(b, b'\n' | b'\r') || b == delimiter);
        i += 1;
    }
    open
}

/// Where a source's unreadable files go: the configured folder, or `rejected/` beside the drop
/// directory (not inside it, so nothing there is ever taken for a feed).
pub fn rejected_dir(drop_dir: &Path, configured: Option<PathBuf>) -> PathBuf {
    configured.unwrap_or_else(|| {
        drop_dir
            .parent()
            .map(|p| p.join("rejected"))
            .unwrap_or_else(|| PathBuf::from("rejected"))
    })
}

/// Move an unreadable file (and its done marker) into `into`, with `<name>.reason.txt` beside it.
/// A name already there gets the content hash added, so an earlier rejected file is never lost.
pub fn set_aside(path: &Path, into: &Path, digest: &str, reason: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "feed.csv".to_string());
    let mut target = into.join(&name);
    if target.exists() {
        target = into.join(format!("{name}.{}", &digest[..digest.len().min(12)]));
    }
    if std::fs::rename(path, &target).is_err() {
        // Another file system: copy, then remove the original.
        std::fs::copy(path, &target)?;
        std::fs::remove_file(path)?;
    }
    let mut note = target.file_name().unwrap_or_default().to_os_string();
    note.push(REASON_SUFFIX);
    std::fs::write(
        target.with_file_name(note),
        format!("{reason}\nsha256 {digest}\n"),
    )?;
    let marker = done_marker(path);
    if marker.is_file() {
        std::fs::remove_file(marker)?;
    }
    Ok(target)
}

/// Has a person missing from the feed been missing long enough to be a leaver: from `feeds`
/// feeds in a row, since `since` (microseconds)?
pub fn grace_over(feeds: i64, since: i64, grace: AbsentGrace, now_us: i64) -> bool {
    let hours_us = (grace.hours * 3_600_000_000.0) as i64;
    feeds >= i64::from(grace.feeds) && now_us.saturating_sub(since) >= hours_us
}

/// Does this grace make every disappearance a leaver at once (the behaviour of sources without one)?
pub fn grace_is_none(grace: AbsentGrace) -> bool {
    grace.feeds <= 1 && grace.hours <= 0.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const HEADER: &str = "id,name,email";

    fn cut(text: &str) -> Option<String> {
        truncation("f.csv", text.as_bytes(), b',')
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn whole_files_pass() {
        assert_eq!(cut(&format!("{HEADER}\nE1,Ada,a@x\n")), None);
        // No final line break, but a complete last row: many exporters write that.
        assert_eq!(cut(&format!("{HEADER}\nE1,Ada,a@x")), None);
        assert_eq!(
            cut(&format!("{HEADER}\r\nE1,\"Ada \"\"A\"\"\",a@x\r\n")),
            None
        );
        assert_eq!(cut(""), None);
        assert_eq!(cut(HEADER), None);
    }

    #[test]
    fn a_cut_last_row_or_open_quote_is_truncation() {
        let e = cut(&format!("{HEADER}\nE1,Ada,a@x\nE2,Bo")).unwrap();
        assert_eq!(
            e,
            "f.csv:3: truncated: the last row has 2 of the header's 3 cells and no line break"
        );
        let e = cut(&format!("{HEADER}\nE1,\"Ada\nLove")).unwrap();
        assert!(
            e.starts_with("f.csv:2: truncated: the file ends inside"),
            "{e}"
        );
    }

    #[test]
    fn a_quote_inside_an_unquoted_cell_is_a_character() {
        assert_eq!(cut(&format!("{HEADER}\nE1,27\" screen,a@x\n")), None);
        assert_eq!(cut(&format!("{HEADER}\nE1,\"a,b\",a@x")), None);
    }

    fn source(complete: FileCompletion) -> HrSourceConfig {
        HrSourceConfig {
            mapping: PathBuf::from("hr.toml"),
            path: None,
            drop_dir: Some(PathBuf::from("feeds")),
            schedule: "* * * * *".into(),
            mass_change_threshold: None,
            complete,
            settle_seconds: 5,
            rejected_dir: None,
            absent_grace: AbsentGrace::default(),
        }
    }

    #[test]
    fn completion_by_settling_or_by_marker() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hr-1.csv");
        std::fs::write(&f, "x").unwrap();
        let written: DateTime<Utc> = std::fs::metadata(&f).unwrap().modified().unwrap().into();
        let settle = source(FileCompletion::Settle);
        let at = |s| written + chrono::Duration::seconds(s);
        assert!(!is_complete(&f, &settle, at(4)).unwrap());
        assert!(is_complete(&f, &settle, at(5)).unwrap());
        // A clock behind the file system's never reads a file early.
        assert!(!is_complete(&f, &settle, at(-60)).unwrap());
        let marker = source(FileCompletion::DoneMarker);
        assert!(!is_complete(&f, &marker, at(3600)).unwrap());
        std::fs::write(done_marker(&f), "").unwrap();
        assert!(is_complete(&f, &marker, at(0)).unwrap());
    }

    #[test]
    fn grace_needs_feeds_and_time() {
        let g = AbsentGrace {
            feeds: 2,
            hours: 1.0,
        };
        let hour = 3_600_000_000;
        assert!(!grace_over(1, 0, g, 2 * hour));
        assert!(!grace_over(2, 0, g, hour - 1));
        assert!(grace_over(2, 0, g, hour));
        assert!(grace_is_none(AbsentGrace {
            feeds: 1,
            hours: 0.0
        }));
        assert!(!grace_is_none(AbsentGrace::default()));
    }

    #[test]
    fn set_aside_moves_the_file_and_writes_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        let f = drop.join("hr-1.csv");
        std::fs::write(&f, "junk").unwrap();
        std::fs::write(done_marker(&f), "").unwrap();
        let into = rejected_dir(&drop, None);
        assert_eq!(into, dir.path().join("rejected"));
        let moved = set_aside(&f, &into, "abcdef0123456789", "empty").unwrap();
        assert_eq!(moved, into.join("hr-1.csv"));
        assert!(!f.exists() && !done_marker(&f).exists());
        let note = std::fs::read_to_string(into.join("hr-1.csv.reason.txt")).unwrap();
        assert!(note.starts_with("empty\n"), "{note}");
        std::fs::write(&f, "junk again").unwrap();
        let second = set_aside(&f, &into, "abcdef0123456789", "empty").unwrap();
        assert_eq!(second, into.join("hr-1.csv.abcdef012345"));
    }
}
