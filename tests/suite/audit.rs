//! The audit trail an auditor takes away: query by person, target, actor, action and time; export a
//! range with its hash chain and manifest and verify it with nothing but the files; retention that
//! prunes old rows while the rest still verifies. SIEM forwarding is in tests/suite/audit_forward.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::audit::{self, Verdict};
use latchkey_sim::NukiOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A store (SQLite, and PostgreSQL when reachable) after a feed went through: E1 and E2 in
/// Berlin sales, E3 in Berlin engineering, all delivered; then E1 left.
async fn stores(tmp: &Path) -> Vec<Harness> {
    let mut out = Vec::new();
    for (name, url) in backends(tmp).await {
        let dir = tmp.join(&name);
        let mut h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        h.feed(&[
            employee("E1", "sales", "berlin"),
            employee("E2", "sales", "berlin"),
            employee("E3", "engineering", "berlin"),
        ])
        .await;
        h.drain().await;
        h.clock.advance(chrono::Duration::hours(1));
        h.feed(&[
            employee("E2", "sales", "berlin"),
            employee("E3", "engineering", "berlin"),
            terminated("E1"),
        ])
        .await;
        h.drain().await;
        out.push(h);
    }
    out
}

fn terminated(key: &str) -> String {
    row(
        key,
        "sales",
        "analyst",
        "employee",
        "berlin",
        "Terminated",
        "2020-01-01",
        "2026-11-01",
        "",
    )
}

/// Run the binary; (exit code, stdout, stderr). `config` none: no `--config`, run in a folder with
/// no configuration at all.
fn latchkey(config: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(args)
        .env("LATCHKEY_LOG", "warn")
        .env_remove("LATCHKEY_CONFIG");
    match config {
        Some(c) => {
            cmd.arg("--config")
                .arg(c)
                .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN);
        }
        None => {
            cmd.current_dir(std::env::temp_dir())
                .env_remove("LATCHKEY_DEMO_NUKI_TOKEN");
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse `stdout` as JSON valid against docs/schemas/`file`.
fn valid_json(file: &str, stdout: &str) -> serde_json::Value {
    let path = repo().join("docs/schemas").join(file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file} is not a valid schema: {e}"));
    let doc: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{stdout}"));
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{file}: {errors:#?}\n{stdout}");
    doc
}

fn config_of(h: &Harness) -> PathBuf {
    h.dir.join("latchkey.toml")
}

fn list(h: &Harness, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "list", "--output", "json", "--limit", "0"];
    all.extend(args);
    let (code, out, err) = latchkey(Some(&config_of(h)), &all);
    assert_eq!(code, 0, "{}: {args:?}: {err}", h.backend);
    let doc = valid_json("audit.list.v1.json", &out);
    assert_eq!(doc["records"]["truncated"], false);
    doc["records"]["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_filters_by_person_target_actor_action_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    for h in stores(tmp.path()).await {
        let b = &h.backend;
        let all = list(&h, &[]);
        assert!(all.len() > 10, "{b}: {all:?}");

        let e1 = list(&h, &["--person", "E1"]);
        assert!(
            !e1.is_empty() && e1.iter().all(|r| r["subject"] == "E1"),
            "{b}: {e1:?}"
        );
        assert!(e1.len() < all.len());

        // Every record about the Berlin sales door, and only those: E1's and E2's grants.
        let door = list(&h, &["--target", "berlin-sales"]);
        assert!(
            door.iter()
                .all(|r| r["details"]["target"] == "berlin-sales"),
            "{b}: {door:?}"
        );
        let subjects: std::collections::BTreeSet<&str> = door
            .iter()
            .map(|r| r["subject"].as_str().unwrap())
            .collect();
        assert_eq!(subjects, ["E1", "E2"].into(), "{b}: {door:?}");

        // E1's revocation at the sales door: person, target and action together.
        let revoked = list(
            &h,
            &[
                "--person",
                "E1",
                "--target",
                "berlin-sales",
                "--action",
                "grant.undesired",
            ],
        );
        assert_eq!(revoked.len(), 1, "{b}: {revoked:?}");
        let actor = revoked[0]["actor"].as_str().unwrap().to_string();
        let by_actor = list(&h, &["--actor", &actor]);
        assert!(by_actor.iter().all(|r| r["actor"] == actor.as_str()), "{b}");
        assert!(
            by_actor.iter().any(|r| r["seq"] == revoked[0]["seq"]),
            "{b}"
        );

        // Time: the first feed was at 09:00, the second an hour later.
        let first_hour = list(
            &h,
            &[
                "--since",
                "2026-11-25T09:00:00Z",
                "--until",
                "2026-11-25T10:00:00Z",
            ],
        );
        let later = list(&h, &["--since", "2026-11-25T10:00:00Z"]);
        assert!(!first_hour.is_empty() && !later.is_empty(), "{b}");
        assert_eq!(first_hour.len() + later.len(), all.len(), "{b}");
        assert!(
            later
                .iter()
                .all(|r| r["at"].as_str().unwrap() >= "2026-11-25T10:00")
        );
        // An offset is honoured: 11:00+01:00 is 10:00Z.
        assert_eq!(
            list(&h, &["--since", "2026-11-25T11:00:00+01:00"]).len(),
            later.len(),
            "{b}"
        );
        assert!(
            list(&h, &["--since", "2026-11-25T11:30:00+01:00"]).is_empty(),
            "{b}"
        );

        // A time that is not RFC 3339 is a usage error naming the flag's value.
        let (code, out, err) = latchkey(
            Some(&config_of(&h)),
            &["audit", "list", "--since", "yesterday"],
        );
        assert_eq!((code, out.as_str()), (2, ""), "{b}");
        assert!(err.contains("`yesterday` is not an RFC 3339 time"), "{err}");
    }
}

/// Export, returning the manifest as printed (validated).
fn export(h: &Harness, out: &Path, format: &str, range: &[&str]) -> serde_json::Value {
    let out = out.to_str().unwrap();
    let mut args = vec![
        "audit", "export", "--format", format, "--out", out, "--output", "json",
    ];
    args.extend(range);
    let (code, stdout, err) = latchkey(Some(&config_of(h)), &args);
    assert_eq!(code, 0, "{}: {err}", h.backend);
    valid_json("audit.manifest.v1.json", &stdout)
}

/// `audit verify --file` with no configuration and no database.
fn verify_file(path: &Path) -> (i32, serde_json::Value, String) {
    let p = path.to_str().unwrap();
    let (code, out, err) = latchkey(None, &["audit", "verify", "--file", p, "--output", "json"]);
    assert!(
        !out.is_empty(),
        "verify --file printed nothing (exit {code}): {err}"
    );
    let doc = valid_json("audit.verify.v1.json", &out);
    let (_, text, _) = latchkey(None, &["audit", "verify", "--file", p]);
    (code, doc, text)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The line with its actor changed to `mallory`.
fn mallory(line: &str, format: &str) -> String {
    if format == "csv" {
        // seq, at, time, actor, ...: the first three never hold a comma.
        let mut parts = line.splitn(5, ',').map(str::to_string).collect::<Vec<_>>();
        assert!(parts[3] != "mallory");
        parts[3] = "mallory".into();
        parts.join(",")
    } else {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["actor"] = "mallory".into();
        v.to_string()
    }
}

/// A copy of the export in `dir` with its data lines changed by `edit`.
fn tampered(data: &Path, manifest: &Path, dir: &Path, edit: impl Fn(&mut Vec<String>)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut l = lines(data);
    edit(&mut l);
    let copy = dir.join(data.file_name().unwrap());
    std::fs::write(&copy, l.join("\n") + "\n").unwrap();
    std::fs::copy(manifest, dir.join(manifest.file_name().unwrap())).unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_an_edited_deleted_or_moved_line_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    for h in stores(tmp.path()).await {
        let b = h.backend.clone();
        let work = tmp.path().join(format!("{b}-exports"));
        let (total, _) = latchkey::store::audit::head(h.app.store().pool())
            .await
            .unwrap();
        for format in ["jsonl", "csv"] {
            // A folder export of everything.
            let dir = work.join(format!("all-{format}"));
            let m = export(&h, Path::new(&format!("{}/", dir.display())), format, &[]);
            assert_eq!(
                (
                    m["first_seq"].as_i64(),
                    m["last_seq"].as_i64(),
                    m["count"].as_i64()
                ),
                (Some(1), Some(total), Some(total)),
                "{b}: {m}"
            );
            assert_eq!(m["anchor"], "0".repeat(64));
            let data = dir.join(format!("audit.{format}"));
            let manifest = dir.join("manifest.json");
            let (code, doc, text) = verify_file(&dir);
            assert_eq!(
                (code, doc["intact"].as_bool()),
                (0, Some(true)),
                "{b} {format}: {doc}"
            );
            assert_eq!(doc["records"].as_i64(), Some(total));
            assert!(text.contains("export intact"), "{text}");
            // The data file and the manifest name the same export.
            assert_eq!(verify_file(&data).0, 0);
            assert_eq!(verify_file(&manifest).0, 0);

            // CSV has a header line: record k is on line k + 1.
            let header = usize::from(format == "csv");
            let line_of = |seq: usize| (seq + header) as i64;

            // One field of record 3 edited (its actor).
            let edited = tampered(
                &data,
                &manifest,
                &work.join(format!("edited-{format}")),
                |l| {
                    let i = 2 + header;
                    l[i] = mallory(&l[i], format);
                },
            );
            let (code, doc, text) = verify_file(&edited);
            assert_eq!(
                (
                    code,
                    doc["intact"].as_bool(),
                    doc["line"].as_i64(),
                    doc["broken_at"].as_i64()
                ),
                (2, Some(false), Some(line_of(3)), Some(3)),
                "{b} {format}: {doc}"
            );
            assert!(doc["reason"].as_str().unwrap().contains("edited"), "{doc}");
            assert!(
                text.contains(&format!("line {} (seq 3)", line_of(3))),
                "{b} {format}: {text}"
            );

            // Record 4 deleted: named where it is missing.
            let deleted = tampered(
                &data,
                &manifest,
                &work.join(format!("deleted-{format}")),
                |l| {
                    l.remove(3 + header);
                },
            );
            let (code, doc, text) = verify_file(&deleted);
            assert_eq!(
                (code, doc["line"].as_i64(), doc["broken_at"].as_i64()),
                (2, Some(line_of(4)), Some(5)),
                "{b} {format}: {doc}"
            );
            assert!(text.contains("record 4 should come here"), "{text}");

            // Records 5 and 6 swapped.
            let moved = tampered(
                &data,
                &manifest,
                &work.join(format!("moved-{format}")),
                |l| {
                    l.swap(4 + header, 5 + header);
                },
            );
            let (code, doc, _) = verify_file(&moved);
            assert_eq!((code, doc["line"].as_i64()), (2, Some(line_of(5))), "{doc}");

            // A copy of record 2 inserted after it.
            let inserted = tampered(
                &data,
                &manifest,
                &work.join(format!("inserted-{format}")),
                |l| {
                    let dup = l[1 + header].clone();
                    l.insert(2 + header, dup);
                },
            );
            let (code, doc, _) = verify_file(&inserted);
            assert_eq!((code, doc["line"].as_i64()), (2, Some(line_of(3))), "{doc}");
            assert!(
                doc["reason"].as_str().unwrap().contains("out of order"),
                "{doc}"
            );

            // The last record cut off: only the manifest can tell.
            let cut = tampered(&data, &manifest, &work.join(format!("cut-{format}")), |l| {
                l.pop();
            });
            let (code, doc, _) = verify_file(&cut);
            assert_eq!((code, doc["broken_at"].as_i64()), (2, Some(total)), "{doc}");
            assert!(doc["reason"].as_str().unwrap().contains("deleted"), "{doc}");
        }

        // A range: the second hour only, into a file; it verifies from its own anchor.
        let file = work.join("second-hour.csv");
        let m = export(&h, &file, "csv", &["--since", "2026-11-25T10:00:00Z"]);
        assert!(m["first_seq"].as_i64().unwrap() > 1, "{b}: {m}");
        assert_ne!(m["anchor"], "0".repeat(64));
        assert_eq!(m["last_seq"].as_i64(), Some(total));
        assert!(work.join("second-hour.csv.manifest.json").exists());
        assert_eq!(verify_file(&file).0, 0, "{b}");
        // The export is its owner's only (it names people).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{b}: {mode:o}");
        }
        // An existing export is not overwritten; an empty range is refused.
        let (code, _, err) = latchkey(
            Some(&config_of(&h)),
            &[
                "audit",
                "export",
                "--out",
                file.to_str().unwrap(),
                "--format",
                "csv",
            ],
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("second-hour.csv"), "{err}");
        let (code, _, err) = latchkey(
            Some(&config_of(&h)),
            &[
                "audit",
                "export",
                "--out",
                work.join("none.jsonl").to_str().unwrap(),
                "--since",
                "2030-01-01T00:00:00Z",
            ],
        );
        assert_eq!(code, 1);
        assert!(err.contains("no audit records"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_records_and_the_rest_verifies_from_the_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    for h in stores(tmp.path()).await {
        let b = h.backend.clone();
        let pool = h.app.store().pool().clone();
        let (before, _) = latchkey::store::audit::head(&pool).await.unwrap();
        // 40 days on, E4 joins; a 30-day retention prunes the first two feeds' records.
        h.clock.advance(chrono::Duration::days(40));
        let mut h = h;
        h.feed(&[
            employee("E2", "sales", "berlin"),
            employee("E3", "engineering", "berlin"),
            employee("E4", "sales", "berlin"),
        ])
        .await;
        h.drain().await;
        let pruned = latchkey::jobs::retention::run_once(&h.app.engine, 30)
            .await
            .unwrap();
        assert_eq!(pruned.anchor_seq, before, "{b}: {pruned:?}");
        assert_eq!(pruned.records, u64::try_from(before).unwrap());
        let kept = audit::query(h.app.store(), &Default::default(), i64::MAX)
            .await
            .unwrap();
        assert!(kept.iter().all(|r| r.seq > before), "{b}");
        assert!(kept.iter().any(|r| r.action == "audit.pruned"), "{b}");
        assert!(
            matches!(
                audit::verify(h.app.store()).await.unwrap(),
                Verdict::Intact { .. }
            ),
            "{b}"
        );
        // The CLI says the same, and an export of what is left verifies from the anchor.
        let (code, out, err) = latchkey(Some(&config_of(&h)), &["audit", "verify"]);
        assert_eq!(code, 0, "{b}: {out}{err}");
        let m = export(
            &h,
            &tmp.path().join(format!("{b}-kept.jsonl")),
            "jsonl",
            &[],
        );
        assert_eq!(m["first_seq"].as_i64(), Some(before + 1));
        assert_eq!(
            verify_file(&tmp.path().join(format!("{b}-kept.jsonl"))).0,
            0
        );
        // A second pass the same day prunes nothing.
        let again = latchkey::jobs::retention::run_once(&h.app.engine, 30)
            .await
            .unwrap();
        assert_eq!(again.records, 0, "{b}");

        // Tampering after the prune is found: the first kept record edited...
        let first = before + 1;
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = $1")
            .bind(first)
            .execute(&pool)
            .await
            .unwrap();
        match audit::verify(h.app.store()).await.unwrap() {
            Verdict::Broken { seq, .. } => assert_eq!(seq, first, "{b}"),
            v => panic!("{b}: tampering not found: {v:?}"),
        }
        // ...and a forged anchor (to hide a deleted record) no longer links.
        let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
        let hash: String = sqlx::Row::get(&row, "hash");
        sqlx::query("DELETE FROM audit_log WHERE seq = $1")
            .bind(first)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_anchor SET seq = $1, hash = $2")
            .bind(first)
            .bind(hash)
            .execute(&pool)
            .await
            .unwrap();
        match audit::verify(h.app.store()).await.unwrap() {
            Verdict::Broken { seq, reason } => {
                assert_eq!(seq, first, "{b}: {reason}");
                assert!(reason.contains("anchor"), "{b}: {reason}");
            }
            v => panic!("{b}: forged anchor not found: {v:?}"),
        }
        // A broken chain is not pruned (that would move the evidence out of sight).
        h.clock.advance(chrono::Duration::days(40));
        let refused = latchkey::jobs::retention::run_once(&h.app.engine, 30)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("not pruned"), "{b}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_prune_needs_retain_days_and_leaves_a_chain_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    for h in stores(tmp.path()).await {
        let b = &h.backend;
        let (code, _, err) = latchkey(Some(&config_of(&h)), &["audit", "prune"]);
        assert_eq!(code, 1, "{b}: {err}");
        assert!(err.contains("audit.retain_days is not set"), "{b}: {err}");
        // The command runs on the wall clock: records of the test's dates may or may not be old
        // enough; either way what is left verifies.
        let config = h.dir.join("retain.toml");
        let text = std::fs::read_to_string(config_of(&h)).unwrap();
        std::fs::write(&config, format!("{text}\n[audit]\nretain_days = 1\n")).unwrap();
        let (code, out, err) = latchkey(Some(&config), &["audit", "prune"]);
        assert_eq!(code, 0, "{b}: {out}{err}");
        assert!(out.starts_with("pruned "), "{b}: {out}");
        let (code, out, err) = latchkey(Some(&config), &["audit", "verify"]);
        assert_eq!(code, 0, "{b}: {out}{err}");
        assert!(out.contains("audit log intact"), "{b}: {out}");
    }
}
