//! Take a range of the audit log away: the records with their seq, previous hash and hash, as JSON
//! lines or CSV, plus a manifest (the range, the anchor = the first record's previous hash, the
//! last hash, the count and the data file's SHA-256). [`verify_file`] checks an export with
//! nothing but the files: it recomputes the chain from the anchor and names the line and seq of
//! the first record that was edited, deleted, inserted or moved.

use crate::audit::record_hash;
use crate::store::audit::{self as sql, AuditRow};
use crate::store::{self, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST_SCHEMA: &str = "latchkey.audit.manifest/v1";
const MANIFEST_FILE: &str = "manifest.json";
const PAGE: i64 = 1000;

/// A time as exports write it: RFC 3339 UTC to the microsecond (the precision `at` is hashed at).
fn time(us: i64) -> String {
    crate::clock::from_micros(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no audit records in the range asked for")]
    Empty,
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One exported record; the same fields, in this order, in both formats. `at` (microseconds) is
/// what the hash covers; `time` is the same instant for people and is checked against it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub seq: i64,
    pub at: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// The details exactly as hashed (a JSON text).
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditRow> for Line {
    fn from(r: AuditRow) -> Self {
        Self {
            time: time(r.at),
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            details: r.details,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// What an export holds; written next to the data as `manifest.json` (or `FILE.manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub format: Format,
    /// The data file's name, next to the manifest.
    pub data_file: String,
    /// The range asked for (RFC 3339), when given.
    pub since: Option<String>,
    pub until: Option<String>,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: i64,
    /// The previous hash of the first record: the chain verifies from here.
    pub anchor: String,
    pub last_hash: String,
    /// SHA-256 of the data file, lowercase hex.
    pub sha256: String,
    pub exported_at: String,
}

/// Where an export went.
#[derive(Debug)]
pub struct Written {
    pub data: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

/// `out` is a folder (existing, or written with a trailing `/`): `audit.FORMAT` and
/// `manifest.json` inside; otherwise a file, with the manifest in `FILE.manifest.json`.
fn paths(out: &Path, format: Format) -> Result<(PathBuf, PathBuf), ExportError> {
    let as_dir = out.is_dir() || out.to_string_lossy().ends_with('/');
    if as_dir {
        std::fs::create_dir_all(out).map_err(io(out))?;
        Ok((
            out.join(format!("audit.{}", format.extension())),
            out.join(MANIFEST_FILE),
        ))
    } else {
        let mut m = out.as_os_str().to_owned();
        m.push(".manifest.json");
        Ok((out.to_path_buf(), PathBuf::from(m)))
    }
}

/// A new file, readable by its owner only (an export names people); an existing file is not
/// overwritten.
fn create(path: &Path) -> Result<std::fs::File, ExportError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io(path))
}

/// Feeds everything written through SHA-256 on its way to the file.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Export the contiguous run of records from the first written at or after `since` to the last
/// written before `until` (microseconds; open ends when absent). `now` stamps the manifest.
pub async fn export(
    store: &store::Store,
    since: Option<i64>,
    until: Option<i64>,
    format: Format,
    out: &Path,
    now: i64,
) -> Result<Written, ExportError> {
    let (first, last) = sql::seq_range(store.pool(), since, until)
        .await?
        .ok_or(ExportError::Empty)?;
    let (data, manifest_path) = paths(out, format)?;
    let file = create(&data)?;
    let mut w = Hashing {
        inner: std::io::BufWriter::new(file),
        hash: Sha256::new(),
    };
    let run = write_records(store, first, last, format, &mut w, &data).await?;
    w.flush().map_err(io(&data))?;
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA.to_string(),
        format,
        data_file: data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        since: since.map(time),
        until: until.map(time),
        first_seq: first,
        last_seq: first + run.count - 1,
        count: run.count,
        anchor: run.anchor.unwrap_or_default(),
        last_hash: run.last_hash,
        sha256: hex::encode(w.hash.finalize()),
        exported_at: time(now),
    };
    write_manifest(&manifest_path, &manifest)?;
    Ok(Written {
        data,
        manifest_path,
        manifest,
    })
}

/// What [`write_records`] wrote: the chain's anchor and last hash, and the number of records.
struct Run {
    anchor: Option<String>,
    last_hash: String,
    count: i64,
}

/// Where records go: through a CSV writer, or straight to the file as JSON lines.
enum Out<'a, W: Write> {
    Csv(Box<csv::Writer<&'a mut W>>),
    Jsonl(&'a mut W),
}

/// Write the records `first..=last` to `w` in `format`, a page at a time. `data`: the file `w`
/// writes, for errors.
async fn write_records<W: Write>(
    store: &store::Store,
    first: i64,
    last: i64,
    format: Format,
    w: &mut W,
    data: &Path,
) -> Result<Run, ExportError> {
    let mut run = Run {
        anchor: None,
        last_hash: String::new(),
        count: 0,
    };
    let mut after = first - 1;
    let mut out = match format {
        Format::Csv => Out::Csv(Box::new(csv::Writer::from_writer(w))),
        Format::Jsonl => Out::Jsonl(w),
    };
    let invalid = |e: String| ExportError::Invalid {
        path: data.display().to_string(),
        message: e,
    };
    loop {
        let page = sql::page(store.pool(), after, last, PAGE).await?;
        let Some(tail) = page.last() else { break };
        after = tail.seq;
        for r in page {
            run.anchor.get_or_insert_with(|| r.prev_hash.clone());
            run.last_hash.clone_from(&r.hash);
            run.count += 1;
            let line = Line::from(r);
            match &mut out {
                Out::Csv(c) => c.serialize(&line).map_err(|e| invalid(e.to_string()))?,
                Out::Jsonl(w) => {
                    let text = serde_json::to_string(&line).map_err(|e| invalid(e.to_string()))?;
                    writeln!(w, "{text}").map_err(io(data))?;
                }
            }
        }
    }
    if let Out::Csv(c) = &mut out {
        c.flush().map_err(io(data))?;
    }
    Ok(run)
}

/// Write the manifest, pretty-printed, to a new file.
fn write_manifest(manifest_path: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| ExportError::Invalid {
        path: manifest_path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut m = create(manifest_path)?;
    writeln!(m, "{text}").map_err(io(manifest_path))?;
    Ok(())
}

/// The first thing wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The data file's line (1-based; CSV counts its header).
    pub line: Option<u64>,
    pub seq: Option<i64>,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.seq) {
            (Some(l), Some(s)) => write!(f, "line {l} (seq {s}): {}", self.reason),
            (Some(l), None) => write!(f, "line {l}: {}", self.reason),
            (None, Some(s)) => write!(f, "seq {s}: {}", self.reason),
            (None, None) => write!(f, "{}", self.reason),
        }
    }
}

/// What [`verify_file`] found.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub data: PathBuf,
    pub records: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub broken: Option<Broken>,
}

/// Find the manifest and data file of an export from any of: its folder, its manifest, its data.
fn locate(path: &Path) -> Result<(PathBuf, Manifest), ExportError> {
    let manifest_path = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else if path.to_string_lossy().ends_with(".manifest.json")
        || path.file_name().is_some_and(|n| n == MANIFEST_FILE)
    {
        path.to_path_buf()
    } else {
        let mut m = path.as_os_str().to_owned();
        m.push(".manifest.json");
        let beside = PathBuf::from(m);
        if beside.exists() {
            beside
        } else {
            path.with_file_name(MANIFEST_FILE)
        }
    };
    let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ExportError::Invalid {
        path: manifest_path.display().to_string(),
        message: format!("not an audit export manifest: {e}"),
    })?;
    if manifest.schema != MANIFEST_SCHEMA {
        return Err(ExportError::Invalid {
            path: manifest_path.display().to_string(),
            message: format!("schema `{}` is not {MANIFEST_SCHEMA}", manifest.schema),
        });
    }
    let data = manifest_path.with_file_name(&manifest.data_file);
    Ok((data, manifest))
}

/// Walks the chain line by line from the manifest's anchor.
struct Walk {
    prev: String,
    expected: i64,
    count: i64,
}

impl Walk {
    fn step(&mut self, line_no: u64, l: &Line) -> Option<Broken> {
        let broken = |reason: String| {
            Some(Broken {
                line: Some(line_no),
                seq: Some(l.seq),
                reason,
            })
        };
        if l.seq > self.expected {
            return broken(format!(
                "record {} should come here: record(s) {}..{} were deleted or moved",
                self.expected,
                self.expected,
                l.seq - 1
            ));
        }
        if l.seq < self.expected {
            return broken(format!(
                "out of order: record {} should come here (a record inserted, repeated or moved)",
                self.expected
            ));
        }
        if l.prev_hash != self.prev {
            return broken(
                "previous-hash link does not match the record before it (a record inserted or removed before it)"
                    .into(),
            );
        }
        let hash = record_hash(
            &l.prev_hash,
            l.seq,
            l.at,
            &l.actor,
            &l.action,
            &l.subject,
            &l.details,
        );
        if hash != l.hash {
            return broken("content does not match its hash (edited after it was written)".into());
        }
        if l.time != time(l.at) {
            return broken(format!("time `{}` does not match `at` (edited)", l.time));
        }
        self.prev.clone_from(&l.hash);
        self.expected += 1;
        self.count += 1;
        None
    }

    /// Once the file is read: the first thing where its end disagrees with the manifest (count
    /// and last seq, last hash, then the file's SHA-256), if any.
    fn check_end(&self, manifest: &Manifest, sha256: &str) -> Option<Broken> {
        let last_seq = self.expected - 1;
        if self.count != manifest.count || last_seq != manifest.last_seq {
            Some(Broken {
                line: None,
                seq: Some(last_seq + 1),
                reason: format!(
                    "the file ends at record {last_seq} ({} records) but the manifest says {} ({} records): records at the end were deleted",
                    self.count, manifest.last_seq, manifest.count
                ),
            })
        } else if self.prev != manifest.last_hash {
            Some(Broken {
                line: None,
                seq: Some(last_seq),
                reason: "the last hash differs from the manifest's".into(),
            })
        } else if sha256 != manifest.sha256 {
            Some(Broken {
                line: None,
                seq: None,
                reason: "the data file's SHA-256 differs from the manifest's (the file changed after export)".into(),
            })
        } else {
            None
        }
    }
}

/// Verify an export offline: the chain from the anchor, then the manifest (count, last hash,
/// SHA-256 of the data file). Files that cannot be read or a manifest that is not one are errors;
/// anything that does not verify is reported in [`FileReport::broken`].
pub fn verify_file(path: &Path) -> Result<FileReport, ExportError> {
    let (data, manifest) = locate(path)?;
    let file = std::fs::File::open(&data).map_err(io(&data))?;
    let mut reader = Hashing {
        inner: std::io::BufReader::new(file),
        hash: Sha256::new(),
    };
    let mut walk = Walk {
        prev: manifest.anchor.clone(),
        expected: manifest.first_seq,
        count: 0,
    };
    let broken = match manifest.format {
        Format::Jsonl => walk_jsonl(&mut reader, &mut walk, &data)?,
        Format::Csv => walk_csv(&mut reader, &mut walk, &data)?,
    };
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map_err(io(&data))?;
    let sha256 = hex::encode(reader.hash.finalize());
    let broken = broken.or_else(|| walk.check_end(&manifest, &sha256));
    Ok(FileReport {
        data,
        records: walk.count,
        first_seq: manifest.first_seq,
        last_seq: manifest.last_seq,
        broken,
    })
}

/// Walk a JSON lines export to its first broken record. Reads on to the end either way, so the
/// file's hash covers all of it.
fn walk_jsonl<R: Read>(
    reader: &mut R,
    walk: &mut Walk,
    data: &Path,
) -> Result<Option<Broken>, ExportError> {
    let mut broken = None;
    let lines = std::io::BufReader::new(reader).lines();
    for (i, text) in lines.enumerate() {
        let line_no = i as u64 + 1;
        let text = text.map_err(io(data))?;
        if broken.is_some() {
            continue; // read on to the end for the file's hash
        }
        broken = match serde_json::from_str::<Line>(&text) {
            Ok(l) => walk.step(line_no, &l),
            Err(e) => Some(Broken {
                line: Some(line_no),
                seq: None,
                reason: format!("not an audit record: {e}"),
            }),
        };
    }
    Ok(broken)
}

/// Walk a CSV export to its first broken record, reading on past it; CSV that cannot be read
/// stops the walk there.
fn walk_csv<R: Read>(
    reader: &mut R,
    walk: &mut Walk,
    data: &Path,
) -> Result<Option<Broken>, ExportError> {
    let mut broken = None;
    let mut csv = csv::Reader::from_reader(reader);
    let mut record = csv::StringRecord::new();
    let headers = csv.headers().cloned().map_err(|e| ExportError::Invalid {
        path: data.display().to_string(),
        message: format!("no CSV header: {e}"),
    })?;
    loop {
        let read = csv.read_record(&mut record);
        let line_no = record.position().map_or(0, |p| p.line());
        match read {
            Ok(false) => break,
            Ok(true) if broken.is_some() => {}
            Ok(true) => {
                broken = match record.deserialize::<Line>(Some(&headers)) {
                    Ok(l) => walk.step(line_no, &l),
                    Err(e) => Some(Broken {
                        line: Some(line_no),
                        seq: None,
                        reason: format!("not an audit record: {e}"),
                    }),
                }
            }
            Err(e) => {
                broken.get_or_insert(Broken {
                    line: e.position().map(|p| p.line()),
                    seq: None,
                    reason: format!("unreadable CSV: {e}"),
                });
                break;
            }
        }
    }
    Ok(broken)
}
