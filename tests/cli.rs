//! The `latchkey` binary as an operator uses it: apply a feed, then ask what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use latchkey::sim::{self, NukiOptions};
use std::process::Command;

fn latchkey(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
        .env("LATCHKEY_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_answer_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = sim::start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let store = format!("sqlite://{}", tmp.path().join("state.db").display());
    std::fs::create_dir_all(tmp.path().join("feeds")).unwrap();
    let config = tmp.path().join("latchkey.toml");
    std::fs::write(&config, config_text(&store, &server.base_url(), (1000, 50))).unwrap();
    let feed = |name: &str, rows: &[String]| {
        std::fs::write(
            tmp.path().join("feeds").join(name),
            format!("{HEADER}\n{}\n", rows.join("\n")),
        )
        .unwrap();
    };

    let (code, out) = latchkey(&config, &["check"]);
    assert_eq!(code, 0, "{out}");

    feed(
        "hr-1.csv",
        &[
            employee("E1", "engineering", "berlin"),
            employee("E2", "sales", "berlin"),
        ],
    );
    let (code, out) = latchkey(&config, &["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nothing to issue or revoke"),
        "plan before any feed: {out}"
    );
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 joiners") && out.contains("3 issues"),
        "{out}"
    );

    // Berlin's lab is lock 1006 in tests/fixtures/nuki-only.toml.
    let e1 = server
        .nuki()
        .unwrap()
        .users()
        .into_iter()
        .find(|u| u.email == "e1@example.com")
        .map(|u| u.account_user_id)
        .expect("E1 has an account at the vendor");
    assert!(
        server.nuki().unwrap().holds(1006, e1),
        "E1 holds the lab at the vendor"
    );
    let (code, out) = latchkey(&config, &["access", "E1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("berlin-engineering") && out.contains("berlin-lab"),
        "{out}"
    );
    assert!(
        out.contains("observed present") && out.contains("head-of-engineering@example.com"),
        "{out}"
    );

    feed(
        "hr-2.csv",
        &[
            row(
                "E1",
                "engineering",
                "engineer",
                "employee",
                "berlin",
                "Terminated",
                "2020-01-01",
                "2026-11-01",
                "",
            ),
            employee("E2", "sales", "berlin"),
            row(
                "E3",
                "sales",
                "analyst",
                "employee",
                "berlin",
                "Active",
                "2020-01-01",
                "bad-date",
                "",
            ),
        ],
    );
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 revokes"), "{out}");
    assert!(
        !server.nuki().unwrap().holds(1006, e1),
        "E1's lab access is gone at the vendor"
    );

    let (_, out) = latchkey(&config, &["who-has", "berlin-sales"]);
    assert!(
        out.contains("1 people hold it") && out.contains("E2"),
        "{out}"
    );
    let (_, out) = latchkey(&config, &["status"]);
    assert!(
        out.contains("hr-2.csv:4") && out.contains("termination_date"),
        "{out}"
    );
    assert!(out.contains("dead letters: 0"), "{out}");
    let (code, out) = latchkey(&config, &["report", "latency"]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("nuki") && l.contains("end_to_end"))
        .unwrap();
    assert!(
        line.split_whitespace().nth(2) == Some("2"),
        "two revocations measured: {out}"
    );
    let (code, out) = latchkey(&config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_edit_is_planned_with_exit_code_2_and_applied_and_a_typo_fails_check() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = sim::start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let store = format!("sqlite://{}", tmp.path().join("state.db").display());
    std::fs::create_dir_all(tmp.path().join("feeds")).unwrap();
    let templates = tmp.path().join("templates.toml");
    let original = std::fs::read_to_string(templates_path()).unwrap();
    std::fs::write(&templates, &original).unwrap();
    let config = tmp.path().join("latchkey.toml");
    let text = config_text(&store, &server.base_url(), (1000, 50)).replace(
        &format!("\"{}\"", templates_path().display()),
        &format!("\"{}\"", templates.display()),
    );
    std::fs::write(&config, text).unwrap();
    let mut rows = vec![employee("E1", "engineering", "berlin")];
    rows.extend((2..=6).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
    std::fs::write(
        tmp.path().join("feeds").join("hr-1.csv"),
        format!("{HEADER}\n{}\n", rows.join("\n")),
    )
    .unwrap();
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = latchkey(&config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in step with policy: {out}");
    assert!(
        out.contains("Plan: 0 to issue, 0 to revoke, 0 held"),
        "{out}"
    );
    let e1 = server
        .nuki()
        .unwrap()
        .users()
        .into_iter()
        .find(|u| u.email == "e1@example.com")
        .map(|u| u.account_user_id)
        .unwrap();
    assert!(server.nuki().unwrap().holds(1006, e1));

    // The lab door dropped from its template: planned (exit 2), then revoked by one `apply`.
    let dropped = original.replace("target = \"{{ site }}-lab\"", "target = \"\"");
    std::fs::write(&templates, &dropped).unwrap();
    let (code, out) = latchkey(&config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("revoke  E1"), "{out}");
    assert!(
        out.contains("Plan: 0 to issue, 1 to revoke, 0 held"),
        "{out}"
    );
    let (code, out) = latchkey(&config, &["plan"]);
    assert_eq!(code, 0, "without --detailed-exitcode: {out}");
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !server.nuki().unwrap().holds(1006, e1),
        "lab revoked at the vendor"
    );
    assert!(server.nuki().unwrap().holds(1001, e1), "{out}");
    let (code, out) = latchkey(&config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");

    // A misspelt attribute and a target no lock is mapped to: `check` names file, template, field.
    let typo = original
        .replace(
            "department == 'engineering' and",
            "departmnt == 'engineering' and",
        )
        .replace("{{ site }}-management", "{{ site }}-managment");
    std::fs::write(&templates, &typo).unwrap();
    let (code, out) = latchkey(&config, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("templates.toml: template `engineering-lab`, when: attribute `departmnt` is produced by no mapping"),
        "{out}"
    );
    assert!(
        out.contains("template `management-floor`, grants[0].target: target `{{ site }}-managment` matches no target of connector `nuki`"),
        "{out}"
    );

    // A condition that matches nobody any more: `apply` holds the revocations and shows the diff.
    let nobody = dropped.replace(
        "when = \"employment_type == 'employee'\"",
        "when = \"employment_type == 'employe'\"",
    );
    std::fs::write(&templates, &nobody).unwrap();
    let (code, out) = latchkey(&config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("Plan: 0 to issue, 0 to revoke, 6 held"),
        "{out}"
    );
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(server.nuki().unwrap().holds(1001, e1), "held, not revoked");
    let (_, out) = latchkey(&config, &["status"]);
    assert!(
        out.contains("held for approval: 6")
            && out.contains("would revoke nuki:berlin-engineering (template department-door)"),
        "{out}"
    );
    // Approved: carried out at once, delivered by the next `apply`.
    let (code, out) = latchkey(&config, &["approve", "--all", "--by", "alice@example.com"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reconcile: 6 revokes enqueued, 0 still held"),
        "{out}"
    );
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(!server.nuki().unwrap().holds(1001, e1), "{out}");
}
