//! The `latchkey` binary as an operator uses it: apply a feed, then ask what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::model::{CommandId, CommandStatus};
use latchkey_sim::{self as sim, NukiOptions};
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
        write_settled(&tmp.path().join("feeds").join(name), rows);
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
    // The vendor's own lock id finds the same door; a name that is nothing is an error.
    let (code, out) = latchkey(&config, &["who-has", "1002"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("vendor id of berlin-sales") && out.contains("E2"),
        "{out}"
    );
    let (code, out) = latchkey(&config, &["who-has", "no-such-door"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no-such-door") && !out.contains("people hold it"),
        "{out}"
    );
    // A person by e-mail or by name, as a desk knows them; an unknown person is an error.
    for who in ["e2@example.com", "E2@Example.com", "Person E2"] {
        let (code, out) = latchkey(&config, &["access", who]);
        assert_eq!(code, 0, "{who}: {out}");
        assert!(out.starts_with("E2 (Person E2)"), "{who}: {out}");
    }
    // Approving without saying what is a usage error, not "nothing to approve".
    let (code, out) = latchkey(&config, &["approve"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = latchkey(&config, &["access", "nobody@example.com"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no person with key, e-mail or name"), "{out}");
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

/// Runs the binary with extra environment, its stderr into a file (as a log collector or
/// `2> file` gets it): (exit code, stdout, the file's bytes).
fn latchkey_to_file(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> (i32, String, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
        .env_remove("NO_COLOR")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(log).unwrap())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read(log).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_output_suit_files_pipes_and_collectors() {
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
    let log = tmp.path().join("stderr.log");
    let feed = |name: &str, rows: &[String]| {
        write_settled(&tmp.path().join("feeds").join(name), rows);
    };
    let leaver = |key: &str, dept: &str| {
        row(
            key,
            dept,
            "engineer",
            "employee",
            "berlin",
            "Terminated",
            "2020-01-01",
            "2026-11-01",
            "",
        )
    };

    // Two joiners with --quiet: errors only, whatever LATCHKEY_LOG says.
    feed(
        "hr-1.csv",
        &[
            employee("E1", "engineering", "berlin"),
            employee("E2", "engineering", "berlin"),
        ],
    );
    let (code, out, err) = latchkey_to_file(
        &config,
        &["apply", "--quiet"],
        &[("LATCHKEY_LOG", "debug")],
        &log,
    );
    assert_eq!(code, 0, "{out}");
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));

    // E1 leaves; text logs at debug into a file, with the console trace exporter on: no escape
    // sequence anywhere, and the line logged inside the revocation's trace names that trace.
    feed(
        "hr-2.csv",
        &[
            leaver("E1", "engineering"),
            employee("E2", "engineering", "berlin"),
        ],
    );
    let (code, out, err) = latchkey_to_file(
        &config,
        &["apply", "-v"],
        &[("OTEL_TRACES_EXPORTER", "console")],
        &log,
    );
    assert_eq!(code, 0, "{out}");
    let text = String::from_utf8(err).unwrap();
    assert!(
        !text.contains('\x1b'),
        "escape sequences in a log file:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("revocation confirmed"))
        .unwrap_or_else(|| panic!("no revocation logged:\n{text}"));
    let trace = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("trace_id="))
        .unwrap_or_else(|| panic!("no trace id on a line inside the change: {line}"));
    let spans: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        spans
            .iter()
            .any(|s| s["trace_id"] == trace && s["name"] == "vendor.call"),
        "the logged trace {trace} is the exported trace with the vendor call:\n{out}"
    );

    // E2 leaves; JSON logs: every line inside a recorded span carries trace and span ids.
    feed(
        "hr-3.csv",
        &[leaver("E1", "engineering"), leaver("E2", "engineering")],
    );
    let (code, out, err) = latchkey_to_file(
        &config,
        &["apply", "-v"],
        &[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("LATCHKEY_LOG_FORMAT", "json"),
        ],
        &log,
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<serde_json::Value> = String::from_utf8(err)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let confirmed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "revocation confirmed")
        .unwrap_or_else(|| panic!("no revocation logged: {lines:?}"));
    let (trace, span) = (
        confirmed["trace_id"].as_str().unwrap(),
        confirmed["span_id"].as_str().unwrap(),
    );
    assert!(
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|s| s["trace_id"] == trace && s["span_id"] == span),
        "the log line's span {trace}/{span} is an exported span:\n{out}"
    );
    for l in lines.iter().filter(|l| l.get("span").is_some()) {
        assert!(
            l.get("trace_id").is_some(),
            "a line inside a span without a trace id: {l}"
        );
    }
    assert!(!server.nuki().unwrap().users().iter().any(|u| {
        u.email == "e2@example.com" && server.nuki().unwrap().holds(1001, u.account_user_id)
    }));

    // A reader that went away (`latchkey status | head -1`): the command ends quietly, killed by
    // SIGPIPE as `cat` would be, not with a panic.
    for args in [&["status"][..], &["who-has", "berlin-engineering"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?} on a closed pipe: {stderr}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// `latchkey redrive`: no selection is a usage error, an id that is not a dead letter fails with
/// exit 1 and moves nothing, and a dead-lettered revoke re-queued by id is audited with the OS
/// user and then carried out at the vendor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_requeues_dead_letters_audited_and_refuses_unknown_ids() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let mut h =
            Harness::new(&name, &url, &tmp.path().join(&name), NukiOptions::default()).await;
        h.feed(&[employee("L1", "finance", "berlin")]).await;
        h.drain().await;
        assert!(h.holds("L1", "berlin-finance"));
        let gone = row(
            "L1",
            "finance",
            "analyst",
            "employee",
            "berlin",
            "Terminated",
            "2020-01-01",
            "2025-06-30",
            "",
        );
        h.feed(&[gone]).await;
        let pool = h.app.store().pool().clone();
        let id: i64 = sqlx::query_scalar("SELECT MAX(id) FROM commands WHERE action = 'revoke'")
            .fetch_one(&pool)
            .await
            .unwrap();
        // As an older version left it: dead after a 401 at its first attempt.
        sqlx::query("UPDATE commands SET status = 'dead', attempts = 1 WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        let config = h.dir.join("latchkey.toml");
        let redrive = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .arg("redrive")
                .args(args)
                .arg("--config")
                .arg(&config)
                .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
                .env("LATCHKEY_LOG", "warn")
                .env("USER", "ops-alice")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.code().unwrap_or(-1), text)
        };
        let status = || async {
            let mut conn = pool.acquire().await.unwrap();
            latchkey::store::command(&mut conn, CommandId(id))
                .await
                .unwrap()
                .unwrap()
        };
        let (code, out) = redrive(&[]);
        assert_eq!(code, 2, "{out}");
        let (code, out) = redrive(&[&id.to_string(), "999999"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("#999999"), "{out}");
        assert_eq!(
            status().await.status,
            CommandStatus::Dead,
            "{name}: nothing moves on an error"
        );
        // Listed first, moving nothing: the same dead letter, in a table and in JSON.
        let (code, out) = redrive(&["--list"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("dead letters: 1") && out.contains(&format!("#{id} revoke L1")),
            "{out}"
        );
        let listed = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(["redrive", "--list", "--output", "json", "--config"])
            .arg(&config)
            .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
            .env("LATCHKEY_LOG", "warn")
            .output()
            .unwrap();
        assert!(listed.status.success());
        let doc = valid_json(
            "dead-letters.v1.json",
            &String::from_utf8_lossy(&listed.stdout),
        );
        assert_eq!(doc["dead_letters"]["items"][0]["id"], id, "{doc}");
        assert_eq!(
            status().await.status,
            CommandStatus::Dead,
            "{name}: --list moves nothing"
        );
        let (code, out) = redrive(&["--list", "--all"]);
        assert_eq!(code, 2, "--list with a selection is a usage error: {out}");
        let (code, out) = redrive(&["--connector", "nuki", &id.to_string()]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("1 dead letters re-queued by os:ops-alice"),
            "{out}"
        );
        let row = status().await;
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("pending", 0),
            "{name}"
        );
        let actor: String = sqlx::query_scalar(
            "SELECT actor FROM audit_log WHERE action = 'command.redriven' ORDER BY seq DESC LIMIT 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(actor, "os:ops-alice");
        h.drain().await;
        assert!(!h.holds("L1", "berlin-finance"), "{name}");
    }
}

/// `latchkey sim VENDOR --fault-proxy-port P`: a fault proxy in front of the simulator that starts
/// with the rules of `--fault-rules`, shows them, takes new ones over HTTP and, once cleared,
/// passes requests through to the simulator. A rules file that is not a list of rules is refused,
/// naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_serves_a_fault_proxy_an_operator_can_drive() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad-rules.json");
    std::fs::write(&bad, r#"[{"fault": {"kind": "maintenance"}}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["sim", "nuki", "--port", "0", "--fault-proxy-port", "0"])
        .arg("--fault-rules")
        .arg(&bad)
        .env("LATCHKEY_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("bad-rules.json"), "{text}");

    // Both on ports the system picks (a port chosen here could be taken before the sim binds it),
    // read back from what the command prints.
    let rules = tmp.path().join("rules.json");
    std::fs::write(&rules, r#"[{"fault": {"kind": "html200"}}]"#).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["sim", "nuki", "--port", "0", "--fault-proxy-port", "0"])
        .arg("--fault-rules")
        .arg(&rules)
        .env("LATCHKEY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed =
        std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let proxy = loop {
        let line = printed.next().expect("latchkey sim exited").unwrap();
        if let Some(rest) = line.strip_prefix("fault proxy on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let http = reqwest::Client::new();
    let shown = http
        .get(format!("{proxy}/_proxy/rules"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains("html200"), "{shown}");
    // The bad day: a maintenance page with status 200 in place of the simulator's JSON.
    let r = http
        .get(format!("{proxy}/_sim/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        r.headers()
    );
    // A burst of two 401s, set over HTTP, then straight through to the simulator.
    let set = http
        .post(format!("{proxy}/_proxy/rules"))
        .body(r#"[{"fault": {"kind": "status", "status": 401}, "remaining": 2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200, "{}", set.text().await.unwrap());
    for _ in 0..2 {
        let r = http
            .get(format!("{proxy}/_sim/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = http
        .get(format!("{proxy}/_sim/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats: serde_json::Value = r.json().await.unwrap();
    assert!(stats["requests"].is_u64(), "{stats}");
    assert_eq!(
        http.get(format!("{proxy}/_proxy/rules"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "[]"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn configuration_errors_never_show_a_secret_and_a_store_password_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", tmp.path().join("state.db").display());
    let base = config_text(&store, "http://127.0.0.1:9", (1000, 50));
    let check = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        latchkey(&path, &["check"])
    };
    let secret = "nuki_live_7Hq2xSECRETvalue";
    // A literal where a secret reference belongs, in the file and through the environment overlay.
    let literal = base.patch(
        "secrets = { token = { env = \"LATCHKEY_DEMO_NUKI_TOKEN\" } }",
        &format!("secrets = {{ token = \"{secret}\" }}"),
    );
    assert_ne!(literal, base);
    let (code, out) = check("literal.toml", &literal);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains(secret) && !out.contains("7Hq2"), "{out}");
    assert!(
        out.contains("literal.toml:") && out.contains("secret reference"),
        "{out}"
    );
    let whole = base.patch(
        "secrets = { token = { env = \"LATCHKEY_DEMO_NUKI_TOKEN\" } }",
        &format!("secrets = \"{secret}\""),
    );
    let (code, out) = check("whole.toml", &whole);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains(secret), "{out}");

    // A database URL with a password is refused, without repeating the password.
    let password = "hunter2-db-pass";
    let pg = base.patch(
        &format!("url = \"{store}\""),
        &format!("url = \"postgres://latchkey:{password}@127.0.0.1:5432/latchkey\""),
    );
    let (code, out) = check("pg.toml", &pg);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("url_secret") && !out.contains(password),
        "{out}"
    );
    let query = base.patch(
        &format!("url = \"{store}\""),
        &format!("url = \"postgres://latchkey@127.0.0.1/latchkey?password={password}\""),
    );
    let (code, out) = check("pgq.toml", &query);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains(password), "{out}");
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.db");
    let store = latchkey::store::Store::connect(&format!("sqlite://{}", db.display()), 2)
        .await
        .unwrap();
    // A write, so the WAL and its index exist while the pool is open.
    let mut tx = store.begin_write().await.unwrap();
    latchkey::store::set_checkpoint(&mut tx, "hr", "x@y", 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut seen = 0;
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = tmp.path().join(name);
        if name == "state.db" {
            assert!(path.exists());
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            seen += 1;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    assert_eq!(seen, 3, "the database, its WAL and its shared-memory index");
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
    let text = config_text(&store, &server.base_url(), (1000, 50)).patch(
        &format!("\"{}\"", templates_path().display()),
        &format!("\"{}\"", templates.display()),
    );
    std::fs::write(&config, text).unwrap();
    let mut rows = vec![employee("E1", "engineering", "berlin")];
    rows.extend((2..=6).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
    write_settled(&tmp.path().join("feeds").join("hr-1.csv"), &rows);
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
    let dropped = original.patch("target = \"{{ site }}-lab\"", "target = \"\"");
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
        .patch(
            "department == 'engineering' and",
            "departmnt == 'engineering' and",
        )
        .patch("{{ site }}-management", "{{ site }}-managment");
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
    let nobody = dropped.patch(
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
    // Approved by someone other than who ran `apply` (dual control): carried out at once,
    // delivered by the next `apply`.
    let (code, out, err) =
        latchkey_split(&config, &["approve", "--all"], &[("USER", "approver-bob")]);
    let out = out + &err;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reconcile: 6 revokes enqueued, 0 still held"),
        "{out}"
    );
    let (code, out) = latchkey(&config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(!server.nuki().unwrap().holds(1001, e1), "{out}");
}

/// A feed file written a minute ago, so it has settled (the drop directory reads only complete
/// files, by default those unchanged for `settle_seconds`).
/// A feed file that landed just long enough ago to count as complete (`settle_seconds`, 5 s by
/// default). Its landing time is the trigger of its changes, so it is not backdated further.
fn write_settled(path: &std::path::Path, rows: &[String]) {
    std::fs::write(path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let written = f.metadata().unwrap().modified().unwrap();
    f.set_modified(written - std::time::Duration::from_secs(6))
        .unwrap();
}

// ---- `--output json`, `--limit`, exit codes and completions -------------------------------------

/// (exit code, stdout, stderr) of one run, kept apart: a JSON document is stdout alone.
fn latchkey_split(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
        .env("LATCHKEY_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse `stdout` as JSON and validate it against docs/schemas/`file`, formats included; the
/// document, for the test's own checks.
fn valid_json(file: &str, stdout: &str) -> serde_json::Value {
    let path = common::repo().join("docs/schemas").join(file);
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
    assert!(
        !stdout.contains('\u{1b}'),
        "no escape sequences in JSON: {stdout}"
    );
    doc
}

/// A store (SQLite or PostgreSQL) after two feeds went through `apply` against the Nuki simulator:
/// E1 (engineering, Berlin) joined and then left, E2 (sales, Berlin) stays, E3's row is
/// quarantined for a bad date, and E4..E7 (sales) are in the second feed too.
struct Applied {
    _tmp: tempfile::TempDir,
    server: sim::SimServer,
    config: std::path::PathBuf,
    backend: String,
    url: String,
}

async fn applied_stores() -> Vec<Applied> {
    let mut stores = Vec::new();
    let probe = tempfile::tempdir().unwrap();
    for (backend, url) in backends(probe.path()).await {
        let tmp = tempfile::tempdir().unwrap();
        let url = if backend == "sqlite" {
            format!("sqlite://{}", tmp.path().join("state.db").display())
        } else {
            url
        };
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
        std::fs::create_dir_all(tmp.path().join("feeds")).unwrap();
        let config = tmp.path().join("latchkey.toml");
        // A drill canary, so `drill` has something to take through the vendor.
        let text = config_text(&url, &server.base_url(), (1000, 50)).replacen(
            "[connectors.nuki]\n",
            "[connectors.nuki]\ndrill_target = \"berlin-lab\"\n",
            1,
        ) + "\n[telemetry.drill]\nperson = \"canary-drill\"\nname = \"Drill Canary\"\nemail = \"canary@example.invalid\"\n";
        std::fs::write(&config, text).unwrap();
        let feeds = tmp.path().join("feeds");
        write_settled(
            &feeds.join("hr-1.csv"),
            &[
                employee("E1", "engineering", "berlin"),
                employee("E2", "sales", "berlin"),
            ],
        );
        let (code, out) = latchkey(&config, &["apply"]);
        assert_eq!(code, 0, "{backend}: {out}");
        let mut rows = vec![
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
        ];
        rows.extend((4..=7).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
        write_settled(&feeds.join("hr-2.csv"), &rows);
        let (code, stdout, stderr) = latchkey_split(&config, &["apply", "--output", "json"], &[]);
        assert_eq!(code, 0, "{backend}: {stdout}{stderr}");
        let doc = valid_json("apply.v1.json", &stdout);
        let feed = &doc["feeds"][0];
        assert_eq!(
            (
                feed["outcome"].as_str(),
                feed["joiners"].as_u64(),
                feed["leavers"].as_u64(),
                feed["quarantined"].as_u64(),
                feed["revokes"].as_u64()
            ),
            (Some("applied"), Some(4), Some(1), Some(1), Some(2)),
            "{backend}: {doc}"
        );
        stores.push(Applied {
            _tmp: tmp,
            server,
            config,
            backend,
            url,
        });
    }
    stores
}

impl Applied {
    fn json(&self, file: &str, args: &[&str]) -> (i32, serde_json::Value) {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let (code, stdout, stderr) = latchkey_split(&self.config, &args, &[]);
        assert!(
            !stdout.is_empty(),
            "{}: {args:?} printed nothing (exit {code}): {stderr}",
            self.backend
        );
        (code, valid_json(file, &stdout))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_status_matches_its_schema_and_counts_what_the_store_holds() {
    for s in applied_stores().await {
        let (code, doc) = s.json("status.v1.json", &["status"]);
        assert_eq!(code, 0, "{}", s.backend);
        assert_eq!(doc["schema"], "latchkey.status/v1");
        assert_eq!(doc["dead_letters"]["total"], 0, "{}: {doc}", s.backend);
        assert_eq!(doc["quarantined"]["total"], 1, "{}: {doc}", s.backend);
        let q = &doc["quarantined"]["items"][0];
        assert_eq!(
            (q["record"].as_str(), q["field"].as_str()),
            (Some("E3"), Some("termination_date"))
        );
        let done: i64 = doc["outbox"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "done")
            .map(|c| c["count"].as_i64().unwrap())
            .sum();
        assert!(done >= 5, "{}: {doc}", s.backend);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_and_who_has_match_their_schemas_and_what_the_vendor_holds() {
    for s in applied_stores().await {
        let (code, doc) = s.json("access.v1.json", &["access", "e2@example.com"]);
        assert_eq!(code, 0, "{}", s.backend);
        assert_eq!(doc["person"]["key"], "E2");
        let grants = doc["grants"]["items"].as_array().unwrap();
        assert!(
            grants
                .iter()
                .any(|g| g["target"] == "berlin-sales" && g["observed"] == "present"),
            "{doc}"
        );
        // What the ledger says E2 holds is what the vendor holds: lock 1002 is berlin-sales.
        let e2 = s
            .server
            .nuki()
            .unwrap()
            .users()
            .into_iter()
            .find(|u| u.email == "e2@example.com")
            .unwrap()
            .account_user_id;
        assert!(s.server.nuki().unwrap().holds(1002, e2));

        let (code, doc) = s.json("who-has.v1.json", &["who-has", "1002"]);
        assert_eq!(code, 0, "{}", s.backend);
        let t = &doc["targets"][0];
        assert_eq!(
            (t["target"].as_str(), t["matched_by"].as_str()),
            (Some("berlin-sales"), Some("vendor_id"))
        );
        // E2 and E4..E7 hold the sales door; E1 left.
        assert_eq!(t["holders"]["total"], 5, "{doc}");
        assert!(
            !t["holders"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["identity"] == "E1"),
            "{doc}"
        );
        // Not found stays an error with nothing on stdout, also in JSON.
        let (code, stdout, stderr) =
            latchkey_split(&s.config, &["access", "nobody", "--output", "json"], &[]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        assert!(
            stderr.contains("no person with key, e-mail or name"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_plan_and_check_match_their_schemas() {
    for s in applied_stores().await {
        let (code, doc) = s.json("check.v1.json", &["check"]);
        assert_eq!(code, 0, "{}", s.backend);
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["connectors"], serde_json::json!(["nuki"]));
        let (code, doc) = s.json("plan.v1.json", &["plan", "--detailed-exitcode"]);
        assert_eq!(code, 0, "{}: everything applied: {doc}", s.backend);
        assert_eq!(doc["changes"]["total"], 0);
        assert_eq!(
            doc["summary"],
            serde_json::json!({"issue": 0, "revoke": 0, "held": 0, "kept": 0})
        );
        // The department door dropped from the employees' template: five sales doors to revoke
        // (held for approval or not, as the safeguard decides), capped at two rows.
        let dir = s.config.parent().unwrap();
        let templates = dir.join("templates.toml");
        std::fs::write(
            &templates,
            std::fs::read_to_string(templates_path()).unwrap().replacen(
                "target = \"{{ site }}-{{ department }}\"",
                "target = \"\"",
                1,
            ),
        )
        .unwrap();
        let edited = dir.join("edited.toml");
        std::fs::write(
            &edited,
            std::fs::read_to_string(&s.config).unwrap().patch(
                &format!("\"{}\"", templates_path().display()),
                &format!("\"{}\"", templates.display()),
            ),
        )
        .unwrap();
        let (code, stdout, stderr) = latchkey_split(
            &edited,
            &["plan", "--detailed-exitcode", "--limit", "2", "-o", "json"],
            &[],
        );
        assert_eq!(code, 2, "{}: changes exit 2: {stdout}{stderr}", s.backend);
        let doc = valid_json("plan.v1.json", &stdout);
        let changes = &doc["changes"];
        assert_eq!(
            (
                changes["total"].as_u64(),
                changes["truncated"].as_bool(),
                changes["items"].as_array().map(Vec::len)
            ),
            (Some(5), Some(true), Some(2)),
            "{doc}"
        );
        assert!(
            changes["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["target"] == "berlin-sales"
                    && (c["action"] == "revoke" || c["action"] == "held")),
            "{doc}"
        );
        let summary = &doc["summary"];
        assert_eq!(
            summary["revoke"].as_u64().unwrap() + summary["held"].as_u64().unwrap(),
            5,
            "{doc}"
        );
        let (code, out) = latchkey(&edited, &["plan", "--limit", "2"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("... and 3 more (--limit 0 to show all)\n"),
            "{out}"
        );
        assert!(
            out.lines()
                .last()
                .unwrap()
                .starts_with("Plan: 0 to issue, "),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_reports_match_their_schemas_and_a_breached_sla_exits_1() {
    for s in applied_stores().await {
        let (code, doc) = s.json("report.latency.v1.json", &["report", "latency"]);
        assert_eq!(code, 0, "{}", s.backend);
        let e2e = doc["revoke"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connector"] == "nuki" && r["stage"] == "end_to_end")
            .cloned()
            .unwrap_or_else(|| panic!("{doc}"));
        assert_eq!(e2e["count"], 2, "E1's two revocations were measured: {doc}");
        let (code, doc) = s.json("report.sla.v1.json", &["report", "sla"]);
        assert_eq!(code, 0, "{}: {doc}", s.backend);
        assert_eq!(doc["connectors"][0]["status"], "ok", "{doc}");
        // An objective nobody can meet: the same revocations breach it, and the exit code says so.
        let (code, stdout, stderr) = latchkey_split(
            &s.config,
            &["report", "sla", "--output", "json"],
            &[("LATCHKEY_SLA__REVOKE_WITHIN_SECONDS", "0.000001")],
        );
        assert_eq!(code, 1, "{stdout}{stderr}");
        let doc = valid_json("report.sla.v1.json", &stdout);
        assert_eq!(
            (
                doc["breached"].as_bool(),
                doc["connectors"][0]["status"].as_str()
            ),
            (Some(true), Some("breached"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_audit_list_and_verify_match_their_schemas_and_a_broken_chain_exits_2() {
    for s in applied_stores().await {
        let (code, doc) = s.json("audit.list.v1.json", &["audit", "list", "--limit", "3"]);
        assert_eq!(code, 0, "{}", s.backend);
        let total = doc["records"]["total"].as_u64().unwrap();
        assert!(total > 3, "{doc}");
        assert_eq!(doc["records"]["truncated"], true);
        let seqs: Vec<u64> = doc["records"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            vec![total, total - 1, total - 2],
            "newest first: {doc}"
        );
        let (code, doc) = s.json(
            "audit.list.v1.json",
            &["audit", "list", "--subject", "E1", "--limit", "0"],
        );
        assert_eq!(code, 0);
        assert!(
            doc["records"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["subject"] == "E1"),
            "{doc}"
        );
        let (code, doc) = s.json("audit.verify.v1.json", &["audit", "verify"]);
        assert_eq!((code, doc["intact"].as_bool()), (0, Some(true)), "{doc}");
        // An edited record: an integrity failure, exit 2, in either format.
        {
            let store = latchkey::store::Store::connect(&s.url, 1).await.unwrap();
            sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
                .execute(store.pool())
                .await
                .unwrap();
            store.pool().close().await;
            let (code, doc) = s.json("audit.verify.v1.json", &["audit", "verify"]);
            assert_eq!(
                (code, doc["intact"].as_bool(), doc["broken_at"].as_i64()),
                (2, Some(false), Some(2)),
                "{doc}"
            );
            let (code, out) = latchkey(&s.config, &["audit", "verify"]);
            assert_eq!(code, 2, "{out}");
            assert!(out.contains("BROKEN at record 2"), "{out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_drift_keys_drill_and_redrive_match_their_schemas() {
    for s in applied_stores().await {
        // E2's sales door removed at the vendor behind latchkey's back: a missing grant.
        let nuki = s.server.nuki().unwrap();
        let e2 = nuki
            .users()
            .into_iter()
            .find(|u| u.email == "e2@example.com")
            .unwrap()
            .account_user_id;
        let auth = nuki
            .auths()
            .into_iter()
            .find(|a| a.smartlock_id == 1002 && a.account_user_id == Some(e2))
            .unwrap();
        let resp = reqwest::Client::new()
            .delete(format!(
                "{}/smartlock/1002/auth/{}",
                s.server.base_url(),
                auth.id
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let (code, doc) = s.json("drift.v1.json", &["drift"]);
        assert_eq!(code, 1, "{}: findings exit 1: {doc}", s.backend);
        let f = &doc["findings"]["items"][0];
        assert_eq!(
            (
                f["kind"].as_str(),
                f["subject"].as_str(),
                f["target"].as_str()
            ),
            (Some("missing"), Some("E2"), Some("berlin-sales")),
            "{doc}"
        );

        let (code, doc) = s.json("keys.v1.json", &["keys", "list"]);
        assert_eq!(
            (code, doc["tasks"]["total"].as_u64()),
            (0, Some(0)),
            "{doc}"
        );

        let (code, doc) = s.json("drill.v1.json", &["drill", "--connector", "nuki"]);
        assert_eq!((code, doc["ok"].as_bool()), (0, Some(true)), "{doc}");
        assert!(doc["stages"].as_array().unwrap().len() >= 4, "{doc}");

        // No dead letters: nothing re-queued is an error, with nothing on stdout.
        let (code, stdout, stderr) =
            latchkey_split(&s.config, &["redrive", "--all", "--output", "json"], &[]);
        if code == 0 {
            let doc = valid_json("redrive.v1.json", &stdout);
            assert_eq!(doc["requeued"], serde_json::json!([]));
        } else {
            assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_are_capped_with_a_count_the_same_way_in_table_and_json() {
    let stores = applied_stores().await;
    let s = &stores[0];
    // who-has berlin-sales: E2 and E4..E7.
    let (code, out) = latchkey(&s.config, &["who-has", "berlin-sales", "--limit", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("berlin-sales: 5 people hold it"), "{out}");
    let rows = out.lines().filter(|l| l.contains(" via nuki")).count();
    assert_eq!(rows, 2, "{out}");
    assert!(
        out.trim_end()
            .ends_with("... and 3 more (--limit 0 to show all)"),
        "{out}"
    );
    let (_, doc) = s.json(
        "who-has.v1.json",
        &["who-has", "berlin-sales", "--limit", "2"],
    );
    let h = &doc["targets"][0]["holders"];
    assert_eq!(
        (
            h["total"].as_u64(),
            h["truncated"].as_bool(),
            h["items"].as_array().map(Vec::len)
        ),
        (Some(5), Some(true), Some(2))
    );
    let (_, out) = latchkey(&s.config, &["who-has", "berlin-sales", "--limit", "0"]);
    assert_eq!(
        out.lines().filter(|l| l.contains(" via nuki")).count(),
        5,
        "{out}"
    );
    assert!(!out.contains("more (--limit"), "{out}");
    let (_, doc) = s.json(
        "who-has.v1.json",
        &["who-has", "berlin-sales", "--limit", "0"],
    );
    assert_eq!(doc["targets"][0]["holders"]["truncated"], false);
    // The default is 50: five rows are all shown, uncapped.
    let (_, doc) = s.json("who-has.v1.json", &["who-has", "berlin-sales"]);
    assert_eq!(
        doc["targets"][0]["holders"]["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // status caps each section the same way: the audit log has more than two records.
    let (_, out) = latchkey(&s.config, &["audit", "list", "--limit", "2"]);
    assert!(out.contains("more (--limit 0 to show all)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_with_nothing_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("latchkey.toml");
    std::fs::write(
        &config,
        config_text("sqlite://unused.db", "http://127.0.0.1:9", (1000, 50)),
    )
    .unwrap();
    for args in [
        &["status", "--output", "yaml"][..],
        &["status", "--limit", "many"],
        &["completions", "tcsh"],
        &["no-such-command"],
    ] {
        let (code, stdout, stderr) = latchkey_split(&config, args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn completions_are_valid_shell_and_know_every_command() {
    let run = |shell: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run("bash");
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("latchkey.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for sub in [
        "status",
        "access",
        "who-has",
        "plan",
        "check",
        "report",
        "audit",
        "drift",
        "keys",
        "redrive",
        "approve",
        "completions",
        "--output",
        "--limit",
        "--quiet",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    // Sourced in a real bash, it completes `latchkey st` to `status`.
    let probe = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(latchkey st) COMP_CWORD=1 COMP_LINE='latchkey st' COMP_POINT=11 \
             && _latchkey latchkey st latchkey && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let replies = String::from_utf8_lossy(&probe.stdout);
    assert!(
        replies.lines().any(|l| l == "status"),
        "{replies}{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    for shell in ["zsh", "fish", "powershell"] {
        let text = run(shell);
        assert!(
            text.contains("who-has") && text.contains("completions"),
            "{shell}"
        );
    }
}

/// `suspend` and `resume` from the shell: the operator is the OS user, `access` shows the
/// suspension (JSON per its schema), and mistakes exit with the documented codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_from_the_shell_show_in_access_and_refuse_mistakes() {
    for s in applied_stores().await {
        let env = [("USER", "alice")];
        let (code, out, err) = latchkey_split(
            &s.config,
            &["suspend", "e2@example.com", "--reason", "lost phone"],
            &env,
        );
        assert_eq!(code, 0, "{}: {err}", s.backend);
        assert!(
            out.contains("suspended E2 at every connector by os:alice"),
            "{out}"
        );
        let (code, doc) = s.json("access.v1.json", &["access", "E2"]);
        assert_eq!(code, 0);
        let sus = &doc["person"]["suspension"];
        assert_eq!(
            (sus["by"].as_str(), sus["reason"].as_str()),
            (Some("os:alice"), Some("lost phone")),
            "{doc}"
        );
        assert!(sus["connectors"].is_null(), "{doc}");
        // The revocations wait in the outbox for the daemon (here: none runs).
        let grants = doc["grants"]["items"].as_array().unwrap();
        assert!(
            grants
                .iter()
                .all(|g| g["desired"] == "absent" || g["connector"] != "nuki"),
            "{doc}"
        );
        let (code, _, err) = latchkey_split(
            &s.config,
            &["suspend", "E4", "--reason", "x", "--connectors", "nope"],
            &env,
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("`nope`"), "{err}");
        let (code, out, err) = latchkey_split(&s.config, &["resume", "E2"], &env);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("resumed E2 by os:alice"), "{out}");
        let (code, doc) = s.json("access.v1.json", &["access", "E2"]);
        assert_eq!(code, 0);
        assert!(doc["person"]["suspension"].is_null(), "{doc}");
        let (code, _, err) = latchkey_split(&s.config, &["resume", "E2"], &env);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("not suspended"), "{err}");
    }
}

/// An access review from the shell: started over a connector, decided item by item (mistakes
/// exit with the documented codes), its evidence exported as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_review_from_the_shell_starts_decides_and_exports_its_evidence() {
    for s in applied_stores().await {
        let rita = [("USER", "rita")];
        let (code, out, err) = latchkey_split(
            &s.config,
            &[
                "review",
                "start",
                "--connector",
                "nuki",
                "--days",
                "14",
                "--name",
                "winter",
            ],
            &rita,
        );
        assert_eq!(code, 0, "{}: {err}", s.backend);
        assert!(
            out.contains("(winter) started by os:rita") && out.contains("items to decide"),
            "{out}"
        );
        let (code, out, _) = latchkey_split(&s.config, &["review", "show", "1"], &rita);
        assert_eq!(code, 0);
        let items: Vec<i64> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("item "))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert!(items.len() >= 2, "{out}");
        // Revoking needs a note; an unknown item or a second decision is refused by name.
        let (code, _, err) = latchkey_split(
            &s.config,
            &["review", "revoke", &items[0].to_string()],
            &rita,
        );
        assert_eq!(code, 2, "{err}");
        let (code, out, err) = latchkey_split(
            &s.config,
            &[
                "review",
                "revoke",
                &items[0].to_string(),
                "--note",
                "left the team",
            ],
            &rita,
        );
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("revoked by os:rita") && out.contains("revocation enqueued"),
            "{out}"
        );
        let (code, _, err) = latchkey_split(
            &s.config,
            &["review", "certify", &items[0].to_string()],
            &rita,
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("already revoked"), "{err}");
        let (code, _, err) = latchkey_split(&s.config, &["review", "certify", "99999"], &rita);
        assert_eq!((code, err.contains("99999")), (1, true), "{err}");
        let (code, _, err) = latchkey_split(
            &s.config,
            &["review", "start", "--tier", "nope", "--days", "3"],
            &rita,
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("unknown tier `nope`"), "{err}");
        let (code, out, err) = latchkey_split(&s.config, &["review", "export", "1"], &rita);
        assert_eq!(code, 0, "{err}");
        let ev: serde_json::Value = serde_json::from_str(&out).unwrap();
        let actions: Vec<&str> = ev["audit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["review.started", "review.revoked"], "{out}");
        assert_eq!(ev["items"].as_array().unwrap().len(), items.len());
        assert_eq!(ev["chain_head"]["hash"].as_str().map(str::len), Some(64));
        let (code, out, _) = latchkey_split(&s.config, &["review", "list"], &rita);
        assert_eq!(code, 0);
        assert!(out.contains("winter") && out.contains("open"), "{out}");
    }
}

/// The README's first command, as a newcomer runs it: the demo ends with one of each governance
/// flow in its summary, every one finished (resumed, expired, reviewed, closed).
#[test]
fn the_demo_shows_a_suspension_temporary_access_break_glass_a_migration_and_a_review() {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("demo")
        .env("LATCHKEY_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = &text[text.find("what happened").expect("a summary")..];
    for (flow, done) in [
        ("lost phone:", "then resumed"),
        ("temporary access:", "revoked at its end by the schedule"),
        ("break-glass:", "reviewed by another approver"),
        ("door migration:", "closed"),
        ("access review:", "closed"),
    ] {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(flow))
            .unwrap_or_else(|| panic!("no `{flow}` line in:\n{summary}"));
        assert!(line.contains(done), "{line}");
    }
    assert!(summary.contains(" 0 duplicate grants"), "{summary}");
}
