//! The house rules of the code (ARCHITECTURE.md), read from the sources themselves: which rooms
//! may use which, SQL only in the store, and files and functions small enough to read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A file's lines up to its inline test module (`#[cfg(test)] mod tests {`), which the rules
/// do not cover; files that are test modules of their own (`tests.rs`) have none.
fn code_lines(path: &Path) -> Vec<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return vec![];
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let start = lines.windows(2).position(|w| {
        w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests {")
    });
    if let Some(start) = start {
        // The module ends at the closing brace with its own indentation; code after it counts.
        let indent =
            &lines[start + 1][..lines[start + 1].len() - lines[start + 1].trim_start().len()];
        let close = format!("{indent}}}");
        let end = (start + 2..lines.len())
            .find(|&i| lines[i] == close)
            .unwrap_or(lines.len() - 1);
        // Kept as blank lines, so the line numbers reported stay the file's.
        for l in &mut lines[start..=end] {
            l.clear();
        }
    }
    lines
}

/// The line without its comment (a `//` outside a string is taken as the start of one; good
/// enough for the paths and keywords looked for here).
fn without_comment(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match line.find(" // ") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level room of a file under `src/`: `src/store/mod.rs` -> `store`, `src/plan.rs` -> `plan`.
fn room(path: &Path) -> String {
    let rel = path.strip_prefix(root().join("src")).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Lines of code under `src/` outside the files `allowed` accepts that contain any of `needles`,
/// as `path:line: text`.
fn lines_containing(needles: &[&str], allowed: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut found = vec![];
    for f in rust_files(&root().join("src")) {
        if allowed(&f) {
            continue;
        }
        for (i, line) in code_lines(&f).iter().enumerate() {
            if needles.iter().any(|n| without_comment(line).contains(n)) {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

fn in_store(f: &Path) -> bool {
    f.starts_with(root().join("src/store"))
}

#[test]
fn no_sql_outside_the_store() {
    let keywords = [
        "\"SELECT ",
        "\"INSERT INTO",
        "\"UPDATE ",
        "\"DELETE FROM",
        "\"CREATE TABLE",
        "\"CREATE INDEX",
        "\"ALTER TABLE",
        "\"WITH ",
        "sqlx::query",
    ];
    let found = lines_containing(&keywords, in_store);
    assert!(
        found.is_empty(),
        "SQL outside src/store/:\n{}",
        found.join("\n")
    );
}

/// Library code returns typed errors; `anyhow` is for the command layer (`src/cli`, `src/main.rs`),
/// which only reports them.
#[test]
fn anyhow_only_in_the_command_layer() {
    let command_layer = |f: &Path| {
        f.starts_with(root().join("src/cli"))
            || f.ends_with("src/cli.rs")
            || f.ends_with("src/main.rs")
    };
    let found = lines_containing(&["anyhow"], command_layer);
    assert!(
        found.is_empty(),
        "anyhow outside the command layer:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_file_over_800_lines() {
    let mut long = vec![];
    for dir in ["src", "sim/src"] {
        for f in rust_files(&root().join(dir)) {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_FILE_LINES {
                long.push(format!("{}: {n} lines", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Functions with their first line and length: from the `fn` line to the closing brace at the
/// same indentation.
fn functions(lines: &[String]) -> Vec<(usize, String, usize)> {
    let mut out = vec![];
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let sig = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ]
        .iter()
        .fold(t, |s, p| s.strip_prefix(p).unwrap_or(s));
        let sig = ["async ", "unsafe "]
            .iter()
            .fold(sig, |s, p| s.strip_prefix(p).unwrap_or(s));
        let Some(rest) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature ends with the body's `{`, or with `;` for a declaration without one.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j] == close) {
            out.push((i + 1, name, end - i + 1));
        }
    }
    out
}

#[test]
fn no_function_over_80_lines() {
    let mut long = vec![];
    for f in rust_files(&root().join("src")) {
        for (at, name, n) in functions(&code_lines(&f)) {
            if n > MAX_FN_LINES {
                long.push(format!("{}:{at}: {name} is {n} lines", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Which rooms each room must not use. The flow runs sources -> engine (ingest: identity,
/// policy, plan) -> store (outbox) -> dispatch -> connectors; audit and telemetry sit beside it;
/// jobs, the API, the CLI and the assembly (`app`) are on top and nothing below uses them.
fn forbidden() -> BTreeMap<&'static str, Vec<&'static str>> {
    let surfaces = ["api", "cli", "app", "jobs"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        surfaces.iter().chain(extra.iter()).copied().collect()
    };
    BTreeMap::from([
        // Adapters: input in, typed records out; applying them is the engine's.
        (
            "sources",
            with(&[
                "engine",
                "store",
                "dispatch",
                "connectors",
                "telemetry",
                "audit",
                "plan",
                "policy",
                "reconcile",
            ]),
        ),
        (
            "identity",
            with(&["engine", "store", "dispatch", "connectors", "sources"]),
        ),
        (
            "policy",
            with(&["engine", "store", "dispatch", "connectors", "sources"]),
        ),
        (
            "plan",
            with(&["engine", "dispatch", "connectors", "sources"]),
        ),
        // Below the engine and beside the plan: reads and stages rows, writes them through the
        // store and the audit log.
        (
            "batch",
            with(&["engine", "dispatch", "connectors", "sources", "policy"]),
        ),
        (
            "store",
            with(&[
                "engine",
                "dispatch",
                "connectors",
                "sources",
                "telemetry",
                "plan",
                "policy",
                "batch",
            ]),
        ),
        ("dispatch", with(&["engine", "sources", "plan", "policy"])),
        (
            "connectors",
            with(&["dispatch", "engine", "sources", "plan"]),
        ),
        ("telemetry", with(&["engine", "sources", "dispatch"])),
        ("audit", with(&["sources", "dispatch", "batch"])),
        ("engine", with(&["dispatch"])),
        ("api", vec!["cli", "app", "jobs"]),
        ("jobs", vec!["api", "cli", "app"]),
    ])
}

#[test]
fn imports_follow_the_flow() {
    let rules = forbidden();
    let mut wrong: BTreeSet<String> = BTreeSet::new();
    for f in rust_files(&root().join("src")) {
        let from = room(&f);
        let Some(banned) = rules.get(from.as_str()) else {
            continue;
        };
        for (i, line) in code_lines(&f).iter().enumerate() {
            let code = without_comment(line);
            for (at, _) in code.match_indices("crate::") {
                let to: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if banned.contains(&to.as_str()) {
                    wrong.insert(format!("{from} uses {to}: {}:{}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}
/// Command status, grant state and change kind are enums; their spellings live in the store's
/// mapping only.
#[test]
fn states_are_spelled_only_in_the_store() {
    let spellings = [
        "\"pending\"",
        "\"inflight\"",
        "\"confirming\"",
        "\"dead\"",
        "\"superseded\"",
        "'pending'",
        "'inflight'",
        "'confirming'",
        "'dead'",
        "'superseded'",
        "\"present\"",
        "\"absent\"",
        "'present'",
        "'absent'",
        "\"joiner\"",
        "\"mover\"",
        "\"rehire\"",
        "\"already_gone\"",
        "\"request_ended\"",
        "\"temporary_access\"",
    ];
    let found = lines_containing(&spellings, in_store);
    assert!(
        found.is_empty(),
        "state spellings outside src/store/:\n{}",
        found.join("\n")
    );
}
