//! The operator surface: commands that only read need no vendor secret, operators with roles and
//! dual control, and the admin API under `/api/v1` with each role allowed exactly its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey_sim::{self as sim, NukiOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every vendor secret the test configuration references.
const SECRET_VARS: [&str; 4] = [
    "LATCHKEY_DEMO_NUKI_TOKEN",
    "T_BRIVO_ID",
    "T_BRIVO_SECRET",
    "T_BRIVO_KEY",
];

/// (exit code, stdout, stderr) of one run with no vendor secret in the environment but `env`.
fn latchkey(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("LATCHKEY_LOG", "warn");
    for var in SECRET_VARS {
        cmd.env_remove(var).env_remove(format!("{var}_FILE"));
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every vendor secret set.
fn all_secrets() -> Vec<(&'static str, &'static str)> {
    vec![
        ("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN),
        ("T_BRIVO_ID", "id"),
        ("T_BRIVO_SECRET", "secret"),
        ("T_BRIVO_KEY", "key"),
    ]
}

/// The Nuki test configuration plus a Brivo connector (three secrets) no template uses, so a
/// missing secret can be missing at two vendors at once; `extra` is appended.
fn write_config(dir: &Path, store: &str, sim_url: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("feeds")).unwrap();
    let brivo = format!(
        "\n[connectors.brivo]\nprofile = \"{}\"\nbase_url = \"http://127.0.0.1:9\"\n\
         secrets = {{ client_id = {{ env = \"T_BRIVO_ID\" }}, client_secret = {{ env = \"T_BRIVO_SECRET\" }}, api_key = {{ env = \"T_BRIVO_KEY\" }} }}\n",
        repo().join("connectors/brivo.toml").display()
    );
    let path = dir.join("latchkey.toml");
    std::fs::write(
        &path,
        config_text(store, sim_url, (1000, 50)) + &brivo + extra,
    )
    .unwrap();
    path
}

fn write_settled(path: &Path, rows: &[String]) {
    std::fs::write(path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let written = f.metadata().unwrap().modified().unwrap();
    f.set_modified(written - std::time::Duration::from_secs(6))
        .unwrap();
}

async fn nuki() -> sim::SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_needs_no_vendor_secret_and_reaching_vendors_names_every_missing_one() {
    let probe = tempfile::tempdir().unwrap();
    for (backend, url) in backends(probe.path()).await {
        let tmp = tempfile::tempdir().unwrap();
        let url = if backend == "sqlite" {
            format!("sqlite://{}", tmp.path().join("state.db").display())
        } else {
            url
        };
        let server = nuki().await;
        let config = write_config(tmp.path(), &url, &server.base_url(), "");
        write_settled(
            &tmp.path().join("feeds/hr-1.csv"),
            &[
                employee("E1", "engineering", "berlin"),
                employee("E2", "sales", "berlin"),
            ],
        );
        let (code, out, err) = latchkey(&config, &["apply"], &all_secrets());
        assert_eq!(code, 0, "{backend}: {out}{err}");

        // No vendor secret at all: every command that only reads answers from the store.
        let reads: [&[&str]; 9] = [
            &["status"],
            &["access", "E1"],
            &["who-has", "berlin-sales"],
            &["report", "latency"],
            &["report", "sla"],
            &["plan"],
            &["audit", "verify"],
            &["keys", "list"],
            &["redrive", "--list"],
        ];
        for args in reads {
            let (code, out, err) = latchkey(&config, args, &[]);
            assert_eq!(code, 0, "{backend}: {args:?} without secrets: {out}{err}");
            assert!(!err.contains("secret"), "{backend}: {args:?}: {err}");
        }
        let (_, out, _) = latchkey(&config, &["access", "E1"], &[]);
        assert!(out.contains("berlin-lab"), "{backend}: {out}");
        let (_, out, _) = latchkey(&config, &["who-has", "berlin-sales"], &[]);
        assert!(out.contains("E2"), "{backend}: {out}");

        // A command that reaches vendors names every missing secret of every connector at once.
        let (code, out, err) = latchkey(&config, &["apply"], &[("T_BRIVO_ID", "id")]);
        assert_eq!(code, 1, "{backend}: {out}{err}");
        for name in [
            "connectors.nuki.secrets.token",
            "LATCHKEY_DEMO_NUKI_TOKEN",
            "connectors.brivo.secrets.client_secret",
            "connectors.brivo.secrets.api_key",
        ] {
            assert!(err.contains(name), "{backend}: {name} not named: {err}");
        }
        assert!(
            !err.contains("client_id"),
            "{backend}: a secret that is set is not reported: {err}"
        );
        assert!(err.contains("3 connector secret(s) missing"), "{err}");
    }
}

/// `[operators]` for the tests: (name, role, token, os user), each token's hash in the section.
const OPERATORS: [(&str, &str, &str, Option<&str>); 5] = [
    ("vera", "viewer", "lkop_viewer-token", None),
    ("dana", "desk", "lkop_desk-token", None),
    ("alice", "approver", "lkop_alice-token", Some("alice")),
    ("bob", "approver", "lkop_bob-token", None),
    ("ada", "admin", "lkop_admin-token", None),
];

fn operators_section() -> String {
    OPERATORS
        .iter()
        .map(|(name, role, token, os)| {
            format!(
                "\n[operators.{name}]\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n{}",
                latchkey::operators::token_sha256(token),
                os.map(|u| format!("os_user = \"{u}\"\n"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_acts_as_the_os_user_and_dual_control_refuses_approving_what_you_caused() {
    let probe = tempfile::tempdir().unwrap();
    for (backend, url) in backends(probe.path()).await {
        let tmp = tempfile::tempdir().unwrap();
        let url = if backend == "sqlite" {
            format!("sqlite://{}", tmp.path().join("state.db").display())
        } else {
            url
        };
        let server = nuki().await;
        let config = write_config(tmp.path(), &url, &server.base_url(), &operators_section());
        let as_user = |user: &'static str| {
            let mut env = all_secrets();
            env.push(("USER", user));
            env
        };
        let people: Vec<String> = (1..=6)
            .map(|i| employee(&format!("E{i}"), "sales", "berlin"))
            .collect();
        write_settled(&tmp.path().join("feeds/hr-1.csv"), &people);
        let (code, out, err) = latchkey(&config, &["apply"], &as_user("alice"));
        assert_eq!(code, 0, "{backend}: {out}{err}");
        // Five of six vanish: held for approval, caused by alice's `apply`.
        write_settled(&tmp.path().join("feeds/hr-2.csv"), &people[..1]);
        let (code, out, err) = latchkey(&config, &["apply"], &as_user("alice"));
        assert_eq!(code, 0, "{backend}: {out}{err}");
        let (_, out, _) = latchkey(&config, &["status"], &[]);
        assert!(out.contains("held for approval: 5"), "{backend}: {out}");

        // No typing someone else's name any more.
        let (code, _, err) = latchkey(&config, &["approve", "--all", "--by", "bob"], &[]);
        assert_eq!(code, 2, "{backend}: {err}");
        // alice caused them: refused, nothing approved.
        let (code, out, err) = latchkey(&config, &["approve", "--all"], &as_user("alice"));
        assert_eq!(code, 1, "{backend}: {out}{err}");
        assert!(
            err.contains("dual control") && err.contains("os:alice"),
            "{backend}: {err}"
        );
        let (_, out, _) = latchkey(&config, &["status"], &[]);
        assert!(out.contains("held for approval: 5"), "{backend}: {out}");
        // bob approves, recorded as his OS user.
        let (code, out, err) = latchkey(&config, &["approve", "--all"], &as_user("bob"));
        assert_eq!(code, 0, "{backend}: {out}{err}");
        assert_eq!(out.matches("approved held change").count(), 5, "{out}");
        let (_, out, _) = latchkey(&config, &["audit", "list", "--limit", "0"], &[]);
        assert!(
            out.lines()
                .any(|l| l.contains("os:bob") && l.contains("held.approved")),
            "{backend}: {out}"
        );
    }
}

/// (exit code, stdout, stderr) of a command that takes no configuration.
fn latchkey_bare(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operators_token_prints_a_fresh_token_once_and_only_its_hash_for_the_config() {
    let (code, out, err) = latchkey_bare(&["operators", "token", "ci-bot", "--role", "viewer"]);
    assert_eq!(code, 0, "{out}{err}");
    let token = out
        .lines()
        .find(|l| l.starts_with(latchkey::operators::TOKEN_PREFIX))
        .expect("the token is printed");
    assert!(out.contains("[operators.ci-bot]") && out.contains("role = \"viewer\""));
    assert!(out.contains(&format!(
        "token_sha256 = \"{}\"",
        latchkey::operators::token_sha256(token)
    )));
    assert_eq!(
        out.matches(token).count(),
        1,
        "the token is shown once: {out}"
    );
    let (_, again, _) = latchkey_bare(&["operators", "token", "ci-bot", "--role", "viewer"]);
    assert!(!again.contains(token), "a new token every time");
    let (code, _, err) = latchkey_bare(&["operators", "token", "x", "--role", "root"]);
    assert_eq!(code, 2, "{err}");
}

// ---- the admin API ------------------------------------------------------------------------------

/// The daemon's HTTP server on a loopback port, over a store with five changes held (caused by
/// `os:alice`, whom `[operators.alice] os_user` makes operator alice) and six open key tasks.
async fn api_server(
    dir: &Path,
    url: &str,
) -> (
    String,
    latchkey::app::App,
    Vec<i64>,
    Vec<i64>,
    sim::SimServer,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock = latchkey::clock::system();
    api_server_on(dir, url, listener, &operators_section(), &[], clock).await
}

/// `api_server` on a listener the caller bound (the console's public URL and the identity
/// provider's redirect must know the port first), with `config` appended to the configuration and
/// `env` added to its environment.
async fn api_server_on(
    dir: &Path,
    url: &str,
    listener: tokio::net::TcpListener,
    config: &str,
    env: &[(&str, &str)],
    clock: latchkey::clock::SharedClock,
) -> (
    String,
    latchkey::app::App,
    Vec<i64>,
    Vec<i64>,
    sim::SimServer,
) {
    let server = nuki().await;
    let path = write_config(dir, url, &server.base_url(), config);
    let env = all_secrets()
        .into_iter()
        .chain(env.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = latchkey::config::Config::load(
        &latchkey::config::ConfigInput::from_file(&path, env).unwrap(),
    )
    .unwrap();
    let app = latchkey::app::App::open_reader(config, clock)
        .await
        .unwrap();
    let engine = app.engine.clone();
    let people: Vec<String> = (1..=6)
        .map(|i| employee(&format!("E{i}"), "sales", "berlin"))
        .collect();
    let feed = |name: &str, rows: &[String]| {
        let p = dir.join("feeds").join(name);
        std::fs::write(&p, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        p
    };
    engine
        .apply_hr_file("hr", &feed("hr-1.csv", &people))
        .await
        .unwrap();
    engine.act_as("os:alice".into());
    let r = engine
        .apply_hr_file("hr", &feed("hr-2.csv", &people[..1]))
        .await
        .unwrap();
    assert_eq!(r.held, 5);
    let held = latchkey::store::held_changes(app.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    let mut tasks = Vec::new();
    let mut tx = app.store().begin_write().await.unwrap();
    for (i, kind) in ["hand_over", "return"].iter().cycle().take(6).enumerate() {
        let id = latchkey::store::create_key_task(
            &mut tx,
            "keys",
            "E1",
            &format!("key-{i}"),
            kind,
            1,
            None,
        )
        .await
        .unwrap();
        tasks.push(id);
    }
    tx.commit().await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router();
    tokio::spawn(latchkey::api::serve(
        listener,
        router,
        std::future::pending(),
    ));
    (base, app, held, tasks, server)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    NoToken,
    WrongToken,
    As(&'static str, latchkey::operators::Role),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_allows_exactly_its_roles_and_dual_control_holds_over_http() {
    use latchkey::operators::Role;
    let probe = tempfile::tempdir().unwrap();
    for (backend, url) in backends(probe.path()).await {
        let tmp = tempfile::tempdir().unwrap();
        let url = if backend == "sqlite" {
            format!("sqlite://{}", tmp.path().join("state.db").display())
        } else {
            url
        };
        let (base, _app, held, tasks, _sim) = api_server(tmp.path(), &url).await;
        let http = reqwest::Client::new();
        let token = |name: &str| OPERATORS.iter().find(|o| o.0 == name).map(|o| o.2).unwrap();
        // Resources each successful mutation uses up: held changes (approve 2, reject 2) and key
        // tasks by kind.
        let mut held = held.into_iter();
        let mut hand_over = vec![tasks[0], tasks[2], tasks[4]].into_iter();
        let mut returns = vec![tasks[1], tasks[3], tasks[5]].into_iter();
        // Temporary access asked by alice: four to decide (approve 2, reject 2), two approved to
        // end early.
        let engine = _app.engine.clone();
        let mut asked = Vec::new();
        for _ in 0..6 {
            let ask = latchkey::access_requests::Ask {
                person: "E1".into(),
                connector: "nuki".into(),
                target: "berlin-lab".into(),
                starts_at: None,
                ends_at: engine.clock.now() + chrono::Duration::hours(4),
                reason: "lab move".into(),
            };
            let r = latchkey::access_requests::ask(&engine, &ask, "os:alice")
                .await
                .unwrap();
            asked.push(r.id);
        }
        for id in &asked[4..] {
            latchkey::access_requests::decide(&engine, *id, true, "os:bob")
                .await
                .unwrap();
        }
        // Emergencies alice opened, for the reviews (another approver's).
        let mut opened = Vec::new();
        for _ in 0..2 {
            let ask = latchkey::access_requests::Ask {
                person: "E1".into(),
                connector: "nuki".into(),
                target: "berlin-plant-room".into(),
                starts_at: None,
                ends_at: engine.clock.now(),
                reason: "flood".into(),
            };
            let (r, _) = latchkey::access_requests::open_emergency(&engine, &ask, None, "os:alice")
                .await
                .unwrap();
            opened.push(r.id);
        }
        let mut to_review = opened.iter().copied();
        // An access review of the sales door (six holders): two items to certify, one per
        // allowed caller.
        let (campaign, review_items) = latchkey::reviews::start(
            &engine,
            &latchkey::reviews::Start {
                name: None,
                scope: latchkey::reviews::Scope::Target("berlin-sales".into()),
                deadline: engine.clock.now() + chrono::Duration::days(7),
                on_deadline: latchkey::config::OnDeadline::Revoke,
            },
            "os:alice",
        )
        .await
        .unwrap();
        assert_eq!(review_items.len(), 6, "{backend}");
        let mut to_certify = review_items.iter().map(|i| i.id);
        let new_review = r#"{"scope": "target", "value": "berlin-sales", "deadline": "2099-01-01T00:00:00Z", "on_deadline": "escalate"}"#;
        // Recording the same visitor again updates them, so every allowed caller may post this.
        let visitor = format!(
            r#"{{"key": "V-1", "name": "Visitor One", "host": "E1", "until": "{}", "reason": "audit"}}"#,
            (engine.clock.now() + chrono::Duration::days(2)).date_naive()
        );
        let emergency = r#"{"person": "E1", "connector": "nuki", "target": "berlin-lab", "reason": "fire door jammed", "minutes": 15}"#;
        let mut to_decide = asked[..4].iter().copied();
        let mut to_end = asked[4..].iter().copied();
        let new_request = r#"{"person": "E1", "connector": "nuki", "target": "berlin-lab", "ends_at": "2099-01-01T00:00:00Z", "starts_at": "2098-12-31T00:00:00Z", "reason": "visit"}"#;
        // (method, path with {id}, body, least role)
        let table: [(&str, &str, Option<&str>, Role); 31] = [
            ("GET", "/api/v1/people?limit=2", None, Role::Viewer),
            ("GET", "/api/v1/people/E1", None, Role::Viewer),
            (
                "GET",
                "/api/v1/targets/berlin-sales/holders",
                None,
                Role::Viewer,
            ),
            (
                "GET",
                "/api/v1/held-changes?limit=2&offset=1",
                None,
                Role::Viewer,
            ),
            (
                "POST",
                "/api/v1/held-changes/{held}/approve",
                None,
                Role::Approver,
            ),
            (
                "POST",
                "/api/v1/held-changes/{held}/reject",
                None,
                Role::Approver,
            ),
            ("GET", "/api/v1/dead-letters", None, Role::Viewer),
            (
                "POST",
                "/api/v1/dead-letters/redrive",
                Some(r#"{"all": true}"#),
                Role::Admin,
            ),
            ("GET", "/api/v1/key-tasks?kind=return", None, Role::Viewer),
            (
                "POST",
                "/api/v1/key-tasks/{hand_over}/handed-over",
                None,
                Role::Desk,
            ),
            (
                "POST",
                "/api/v1/key-tasks/{return}/returned",
                None,
                Role::Desk,
            ),
            ("GET", "/api/v1/sources", None, Role::Viewer),
            ("GET", "/api/v1/reports/latency", None, Role::Viewer),
            ("GET", "/api/v1/reports/sla", None, Role::Viewer),
            ("GET", "/api/v1/audit?limit=5", None, Role::Viewer),
            ("GET", "/api/v1/audit/export?format=csv", None, Role::Viewer),
            (
                "GET",
                "/api/v1/requests?status=requested",
                None,
                Role::Viewer,
            ),
            ("POST", "/api/v1/requests", Some(new_request), Role::Desk),
            (
                "POST",
                "/api/v1/requests/{request}/approve",
                None,
                Role::Approver,
            ),
            (
                "POST",
                "/api/v1/requests/{request}/reject",
                None,
                Role::Approver,
            ),
            (
                "POST",
                "/api/v1/requests/{open_request}/end",
                None,
                Role::Approver,
            ),
            (
                "POST",
                "/api/v1/emergencies",
                Some(emergency),
                Role::Approver,
            ),
            ("GET", "/api/v1/migrations", None, Role::Viewer),
            (
                "POST",
                "/api/v1/visitors",
                Some(visitor.as_str()),
                Role::Desk,
            ),
            (
                "POST",
                "/api/v1/migrations",
                Some(
                    r#"{"target": "berlin-sales", "from": "nuki", "to": "nuki", "to_target": "berlin-lab"}"#,
                ),
                Role::Admin,
            ),
            (
                "POST",
                "/api/v1/emergencies/{emergency}/review",
                Some(r#"{"note": "checked with facilities"}"#),
                Role::Approver,
            ),
            ("GET", "/api/v1/reviews", None, Role::Viewer),
            ("POST", "/api/v1/reviews", Some(new_review), Role::Approver),
            ("GET", "/api/v1/reviews/{campaign}", None, Role::Viewer),
            (
                "GET",
                "/api/v1/reviews/{campaign}/evidence",
                None,
                Role::Viewer,
            ),
            (
                "POST",
                "/api/v1/reviews/items/{review_item}",
                Some(r#"{"decision": "certify", "note": "still in sales"}"#),
                Role::Approver,
            ),
        ];
        let callers = [
            Who::NoToken,
            Who::WrongToken,
            Who::As("vera", Role::Viewer),
            Who::As("dana", Role::Desk),
            Who::As("bob", Role::Approver),
            Who::As("ada", Role::Admin),
        ];
        for (method, path, body, least) in table {
            for who in callers {
                let allowed = matches!(who, Who::As(_, role) if role.allows(least));
                let id = |it: &mut dyn Iterator<Item = i64>| {
                    if allowed { it.next().unwrap() } else { 999_999 }
                };
                let path = if path.contains("{held}") {
                    path.replace("{held}", &id(&mut held).to_string())
                } else if path.contains("{hand_over}") {
                    path.replace("{hand_over}", &id(&mut hand_over).to_string())
                } else if path.contains("{return}") {
                    path.replace("{return}", &id(&mut returns).to_string())
                } else if path.contains("{request}") {
                    path.replace("{request}", &id(&mut to_decide).to_string())
                } else if path.contains("{open_request}") {
                    path.replace("{open_request}", &id(&mut to_end).to_string())
                } else if path.contains("{emergency}") {
                    path.replace("{emergency}", &id(&mut to_review).to_string())
                } else if path.contains("{campaign}") {
                    path.replace("{campaign}", &campaign.id.to_string())
                } else if path.contains("{review_item}") {
                    path.replace("{review_item}", &id(&mut to_certify).to_string())
                } else {
                    path.to_string()
                };
                let mut req = if method == "GET" {
                    http.get(format!("{base}{path}"))
                } else {
                    http.post(format!("{base}{path}"))
                };
                if let Some(b) = body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.to_string());
                }
                req = match who {
                    Who::NoToken => req,
                    Who::WrongToken => req.bearer_auth("lkop_not-a-token"),
                    Who::As(name, _) => req.bearer_auth(token(name)),
                };
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let ctype = resp
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let text = resp.text().await.unwrap();
                let what = format!("{backend}: {method} {path} as {who:?}: {status} {text}");
                if allowed {
                    assert!((200..300).contains(&status), "{what}");
                    let expected = if path.contains("/export") {
                        "application/x-tar"
                    } else {
                        "application/json"
                    };
                    assert!(ctype.starts_with(expected), "{what}");
                } else {
                    let expected = if matches!(who, Who::As(..)) { 403 } else { 401 };
                    assert_eq!(status, expected, "{what}");
                    assert_eq!(ctype, "application/problem+json", "{what}");
                    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(doc["status"], expected, "{what}");
                    assert!(
                        doc["type"].is_string() && doc["title"].is_string(),
                        "{what}"
                    );
                }
            }
        }
        assert!(held.next().is_some(), "a held change is left for alice");

        // Dual control: alice caused the holds (as os:alice, her OS account), so she cannot
        // approve what is left, over HTTP either; rejecting is hers to do.
        let left = latchkey::store::held_changes(_app.store().pool())
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "{backend}");
        let resp = http
            .post(format!("{base}/api/v1/held-changes/{}/approve", left[0].id))
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{backend}");
        let doc: serde_json::Value = resp.json().await.unwrap();
        assert!(
            doc["type"].as_str().unwrap().ends_with("/dual-control")
                && doc["detail"].as_str().unwrap().contains("os:alice"),
            "{backend}: {doc}"
        );
        let resp = http
            .post(format!("{base}/api/v1/held-changes/{}/reject", left[0].id))
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{backend}");

        // Who did what is in the audit log, as the operator; and the page shows who asked.
        let audit: serde_json::Value = http
            .get(format!("{base}/api/v1/audit?limit=100"))
            .bearer_auth(token("vera"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let actors: Vec<(&str, &str)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["actor"].as_str().unwrap(), r["action"].as_str().unwrap()))
            .collect();
        for expected in [
            ("operator:bob", "held.approved"),
            ("operator:ada", "held.rejected"),
            ("operator:alice", "held.rejected"),
            ("operator:dana", "key.handed_over"),
        ] {
            assert!(
                actors.contains(&expected),
                "{backend}: {expected:?} not in {actors:?}"
            );
        }

        // Pagination: a cursor walks people, offsets walk lists.
        let page: serde_json::Value = http
            .get(format!("{base}/api/v1/people?limit=4"))
            .bearer_auth(token("vera"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 4, "{page}");
        let next: serde_json::Value = http
            .get(format!(
                "{base}/api/v1/people?limit=4&cursor={}",
                page["next_cursor"].as_str().unwrap()
            ))
            .bearer_auth(token("vera"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // E5, E6 and the visitor V-1 the table recorded.
        assert_eq!(next["items"].as_array().unwrap().len(), 3, "{next}");
        assert!(next["next_cursor"].is_null(), "{next}");
        let person: serde_json::Value = http
            .get(format!("{base}/api/v1/people/E1"))
            .bearer_auth(token("vera"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let grant = &person["grants"][0];
        assert!(
            grant["template"].is_string() && grant["desired"] == "present",
            "{person}"
        );

        // The OpenAPI document lists every route the table covers.
        let doc: serde_json::Value = http
            .get(format!("{base}/api/v1/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path, _, _) in table {
            let path = path.split('?').next().unwrap();
            let templated = path
                .replace("{held}", "{id}")
                .replace("{hand_over}", "{id}")
                .replace("{return}", "{id}")
                .replace("{request}", "{id}")
                .replace("{open_request}", "{id}")
                .replace("{emergency}", "{id}")
                .replace("{campaign}", "{id}")
                .replace("{review_item}", "{id}")
                .replace("/E1", "/{person}")
                .replace("/berlin-sales/", "/{target}/");
            let op = &paths
                .get(&templated)
                .unwrap_or_else(|| panic!("{templated} not in {:?}", paths.keys()))
                [method.to_lowercase()];
            assert!(op.is_object(), "{method} {templated}");
        }
        let operations: usize = paths
            .values()
            .map(|p| {
                ["get", "post", "put", "patch", "delete"]
                    .iter()
                    .filter(|m| p.get(**m).is_some())
                    .count()
            })
            .sum();
        assert_eq!(
            operations,
            table.len(),
            "one operation per route: {:?}",
            paths.keys()
        );
    }
}

// ---- the web console ------------------------------------------------------------------------

/// The console's configuration: token sign-in on, single sign-on when `issuer` is given.
fn console_section(base: &str, issuer: Option<&str>) -> String {
    let mut out = format!("\n[console]\npublic_url = \"{base}\"\n");
    if let Some(issuer) = issuer {
        out.push_str(&format!(
            "\n[console.oidc]\nissuer = \"{issuer}\"\nclient_id = \"latchkey-console\"\n\
             client_secret = {{ env = \"T_OIDC_SECRET\" }}\nscopes = [\"profile\", \"email\", \"groups\"]\n\
             display_name = \"Test IdP\"\n\
             [console.oidc.roles]\nviewer = [\"staff\"]\ndesk = [\"facilities\"]\napprover = [\"security-approvers\"]\n"
        ));
    }
    // Operator alice signs in to the console as `alice` too: the same person for dual control.
    operators_section().replace(
        "os_user = \"alice\"\n",
        "os_user = \"alice\"\noidc_name = \"alice\"\n",
    ) + &out
}

/// A browser-like HTTP client of the console: keeps its session cookie, follows no redirect.
struct ConsoleClient {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl ConsoleClient {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_string(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("latchkey_session={c}"));
        }
        req.send().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("latchkey_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap()
    }

    /// Sign in with an operator token; the session cookie is kept.
    async fn sign_in(&mut self, token: &str) -> reqwest::Response {
        let resp = self
            .post(
                "/console/login/token",
                &[("token", token), ("next", "/console/approvals")],
                None,
            )
            .await;
        if let Some(set) = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("latchkey_session=") && !v.starts_with("latchkey_session=;"))
        {
            assert!(
                set.contains("HttpOnly")
                    && set.contains("SameSite=Lax")
                    && set.contains("Path=/console"),
                "{set}"
            );
            self.cookie = Some(
                set["latchkey_session=".len()..]
                    .split(';')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        resp
    }

    /// The CSRF token the signed-in pages carry in their forms.
    async fn csrf(&self) -> String {
        let page = self.get("/console/approvals").await.text().await.unwrap();
        let at = page
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        page[at..at + 64].to_string()
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_need_a_sign_in_and_each_role_acts_only_within_it() {
    let probe = tempfile::tempdir().unwrap();
    for (backend, url) in backends(probe.path()).await {
        let tmp = tempfile::tempdir().unwrap();
        let url = if backend == "sqlite" {
            format!("sqlite://{}", tmp.path().join("state.db").display())
        } else {
            url
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (_, app, held, tasks, _sim) = api_server_on(
            tmp.path(),
            &url,
            listener,
            &console_section(&base, None),
            &[],
            latchkey::clock::system(),
        )
        .await;
        let pool = app.store().pool().clone();

        // Nobody signed in: every page sends the browser to sign in, and comes back after.
        let mut anon = ConsoleClient::new(&base);
        for page in [
            "/console",
            "/console/people/E1",
            "/console/approvals",
            "/console/keys",
            "/console/audit",
        ] {
            let resp = anon.get(page).await;
            assert!(
                resp.status().is_redirection(),
                "{backend} {page}: {}",
                resp.status()
            );
            assert!(
                location(&resp).starts_with("/console/login?next="),
                "{backend} {page}: {}",
                location(&resp)
            );
        }
        let login = anon.get("/console/login").await;
        assert_eq!(login.status(), 200);
        assert_eq!(login.headers()["cache-control"], "no-store");
        assert!(
            login.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        let wrong = anon.sign_in("lkop_not-a-token").await;
        assert_eq!(wrong.status(), 401, "{backend}");
        assert!(anon.cookie.is_none());
        assert!(
            wrong
                .text()
                .await
                .unwrap()
                .contains("unknown or revoked token")
        );

        // A viewer sees everything and changes nothing.
        let mut vera = ConsoleClient::new(&base);
        let resp = vera.sign_in("lkop_viewer-token").await;
        assert_eq!(location(&resp), "/console/approvals", "{backend}");
        for page in [
            "/console",
            "/console/people?q=E1",
            "/console/people/E1",
            "/console/who-has?target=berlin-sales",
            "/console/approvals",
            "/console/keys",
            "/console/audit?subject=E1",
        ] {
            let resp = vera.get(page).await;
            assert_eq!(resp.status(), 200, "{backend} {page}");
            assert!(
                resp.headers().contains_key("server-timing"),
                "{backend} {page}"
            );
        }
        let person = vera.get("/console/people/E1").await.text().await.unwrap();
        assert!(
            person.contains("berlin-sales") && person.contains("issued"),
            "{backend}: {person}"
        );
        let approvals = vera.get("/console/approvals").await.text().await.unwrap();
        assert!(
            !approvals.contains("/approve\""),
            "{backend}: a viewer is offered no decision"
        );
        let csrf = vera.csrf().await;
        let refused = vera
            .post(
                &format!("/console/approvals/{}/approve", held[0]),
                &[("csrf", &csrf)],
                None,
            )
            .await;
        assert_eq!(refused.status(), 403, "{backend}");
        let refused = vera
            .post(
                &format!("/console/keys/{}/returned", tasks[1]),
                &[("csrf", &csrf)],
                None,
            )
            .await;
        assert_eq!(refused.status(), 403, "{backend}");

        // Alice caused the held changes (as os:alice): she sees them without buttons, and a
        // decision she posts anyway is refused.
        let mut alice = ConsoleClient::new(&base);
        alice.sign_in("lkop_alice-token").await;
        let page = alice.get("/console/approvals").await.text().await.unwrap();
        assert!(page.contains("You asked for this change"), "{backend}");
        let csrf = alice.csrf().await;
        let refused = alice
            .post(
                &format!("/console/approvals/{}/approve", held[0]),
                &[("csrf", &csrf)],
                None,
            )
            .await;
        assert_eq!(refused.status(), 403, "{backend}");
        let text = refused.text().await.unwrap();
        assert!(text.contains("dual control"), "{backend}: {text}");

        // Bob may decide, but only with his form's token and from the console's own origin.
        let mut bob = ConsoleClient::new(&base);
        bob.sign_in("lkop_bob-token").await;
        let path = format!("/console/approvals/{}/approve", held[0]);
        let forged = bob.post(&path, &[("csrf", &"0".repeat(64))], None).await;
        assert_eq!(
            forged.status(),
            403,
            "{backend}: a form token of another sign-in"
        );
        let csrf = bob.csrf().await;
        let cross = bob
            .post(&path, &[("csrf", &csrf)], Some("http://evil.example"))
            .await;
        assert_eq!(
            cross.status(),
            403,
            "{backend}: a form posted from another site"
        );
        let still: Vec<i64> = latchkey::store::held_changes(&pool)
            .await
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        assert!(
            still.contains(&held[0]),
            "{backend}: nothing was decided by refused posts"
        );
        let ok = bob.post(&path, &[("csrf", &csrf)], Some(&base)).await;
        assert!(ok.status().is_redirection(), "{backend}: {}", ok.status());
        assert!(
            location(&ok).starts_with("/console/approvals?notice="),
            "{backend}"
        );
        let notice = bob.get(&location(&ok)).await.text().await.unwrap();
        assert!(
            notice.contains("approved by operator:bob"),
            "{backend}: {notice}"
        );
        let still: Vec<i64> = latchkey::store::held_changes(&pool)
            .await
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        assert!(!still.contains(&held[0]), "{backend}: approved");

        // The admin API answers an unchanged GET with 304 to the ETag it gave.
        let api = reqwest::Client::new();
        let key_tasks = || {
            api.get(format!("{base}/api/v1/key-tasks"))
                .bearer_auth("lkop_viewer-token")
        };
        let first = key_tasks().send().await.unwrap();
        let tag = first.headers()["etag"].to_str().unwrap().to_string();
        let again = key_tasks()
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{backend}");
        assert!(again.bytes().await.unwrap().is_empty());

        // The desk records a key return; the return task is done, by dana.
        let mut dana = ConsoleClient::new(&base);
        dana.sign_in("lkop_desk-token").await;
        let csrf = dana.csrf().await;
        let wrong_kind = dana
            .post(
                &format!("/console/keys/{}/returned", tasks[0]),
                &[("csrf", &csrf)],
                None,
            )
            .await;
        assert_eq!(
            wrong_kind.status(),
            409,
            "{backend}: a hand-over is not a return"
        );
        let ok = dana
            .post(
                &format!("/console/keys/{}/returned", tasks[1]),
                &[("csrf", &csrf)],
                None,
            )
            .await;
        assert!(ok.status().is_redirection(), "{backend}: {}", ok.status());
        let notice = dana.get(&location(&ok)).await.text().await.unwrap();
        assert!(
            notice.contains("returned by E1, recorded by operator:dana"),
            "{backend}: {notice}"
        );

        // The key tasks changed: the old tag no longer matches.
        let changed = key_tasks()
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200, "{backend}");
        assert_ne!(changed.headers()["etag"].to_str().unwrap(), tag);

        // An audit export over the API verifies offline, and an edited line is named.
        let tar = api
            .get(format!("{base}/api/v1/audit/export"))
            .bearer_auth("lkop_viewer-token")
            .send()
            .await
            .unwrap();
        assert_eq!(tar.status(), 200, "{backend}");
        assert_eq!(tar.headers()["content-type"], "application/x-tar");
        let unpacked = tmp.path().join("export");
        tar::Archive::new(std::io::Cursor::new(tar.bytes().await.unwrap()))
            .unpack(&unpacked)
            .unwrap();
        let data = unpacked.join("audit.jsonl");
        let report = latchkey::audit::export::verify_file(&data).unwrap();
        assert!(report.broken.is_none(), "{backend}: {:?}", report.broken);
        assert!(report.records >= 5, "{backend}: {} records", report.records);
        let text = std::fs::read_to_string(&data).unwrap();
        let edited: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 2 {
                    l.replacen("\"actor\":\"", "\"actor\":\"x", 1)
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&data, edited.join("\n") + "\n").unwrap();
        let broken = latchkey::audit::export::verify_file(&data).unwrap().broken;
        assert_eq!(broken.and_then(|b| b.line), Some(3), "{backend}");
        let none = api
            .get(format!(
                "{base}/api/v1/audit/export?since=2001-01-01T00:00:00Z&until=2001-01-02T00:00:00Z"
            ))
            .bearer_auth("lkop_viewer-token")
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 404, "{backend}: an empty range");

        // A door migration shows on the overview, in its own section (and the page's title is
        // still just its title).
        let door = latchkey::door_migration::Door {
            from_connector: "nuki".into(),
            from_target: "berlin-sales".into(),
            to_connector: "nuki".into(),
            to_target: "berlin-lab".into(),
        };
        latchkey::door_migration::start(&app.engine, &door, "os:ada")
            .await
            .unwrap();
        let overview = vera.get("/console").await.text().await.unwrap();
        assert!(
            overview.contains("<title>Overview · latchkey</title>"),
            "{backend}: {overview}"
        );
        let section = &overview[overview
            .find("id=\"migrations\"")
            .expect("a migrations section")..];
        assert!(
            section.contains("berlin-sales") && section.contains("nuki → nuki (berlin-lab)"),
            "{backend}: {section}"
        );

        // Break-glass from the console: an approver opens it (in force at once), a viewer cannot,
        // and only another approver reviews it.
        let csrf = vera.csrf().await;
        let form = [
            ("csrf", csrf.as_str()),
            ("person", "E1"),
            ("connector", "nuki"),
            ("target", "berlin-lab"),
            ("minutes", "20"),
            ("reason", "fire door jammed"),
        ];
        let refused = vera.post("/console/emergencies", &form, None).await;
        assert_eq!(refused.status(), 403, "{backend}");
        let csrf = bob.csrf().await;
        let form: Vec<(&str, &str)> = form
            .iter()
            .map(|(k, v)| (*k, if *k == "csrf" { csrf.as_str() } else { *v }))
            .collect();
        let opened = bob.post("/console/emergencies", &form, None).await;
        assert!(
            opened.status().is_redirection(),
            "{backend}: {}",
            opened.status()
        );
        let notice = bob.get(&location(&opened)).await.text().await.unwrap();
        assert!(
            notice.contains("EMERGENCY") && notice.contains("is active"),
            "{backend}: {notice}"
        );
        let id = latchkey::store::access_requests::list(&pool, Some("active"), Some("E1"), 10)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.kind == "emergency")
            .unwrap()
            .id;
        let own = bob
            .post(
                &format!("/console/emergencies/{id}/review"),
                &[("csrf", &csrf), ("note", "mine")],
                None,
            )
            .await;
        assert_eq!(own.status(), 403, "{backend}: the opener reviews nothing");
        let mut ada = ConsoleClient::new(&base);
        ada.sign_in("lkop_admin-token").await;
        let page = ada.get("/console/requests").await.text().await.unwrap();
        assert!(
            page.contains(&format!("/console/emergencies/{id}/review")),
            "{backend}"
        );
        let csrf = ada.csrf().await;
        let reviewed = ada
            .post(
                &format!("/console/emergencies/{id}/review"),
                &[("csrf", &csrf), ("note", "door repaired")],
                None,
            )
            .await;
        assert!(
            reviewed.status().is_redirection(),
            "{backend}: {}",
            reviewed.status()
        );
        let notice = ada.get(&location(&reviewed)).await.text().await.unwrap();
        assert!(
            notice.contains("reviewed by operator:ada"),
            "{backend}: {notice}"
        );

        // An access review from the console: started by an approver over a door, its holders
        // listed with why they hold it, one revoked with a reason. A viewer sees it and
        // decides nothing.
        let csrf = ada.csrf().await;
        let started = ada
            .post(
                "/console/reviews",
                &[
                    ("csrf", csrf.as_str()),
                    ("scope", "connector"),
                    ("value", "nuki"),
                    ("deadline", "2099-01-01T00:00"),
                    ("on_deadline", "revoke"),
                    ("name", "sales door, winter"),
                ],
                None,
            )
            .await;
        assert!(
            started.status().is_redirection(),
            "{backend}: {}",
            started.status()
        );
        let review_url = location(&started);
        let page = ada.get(&review_url).await.text().await.unwrap();
        let campaign_id: i64 = review_url
            .trim_start_matches("/console/reviews/")
            .split('?')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let items = latchkey::store::reviews::items(&mut conn, campaign_id)
            .await
            .unwrap();
        let item = items.first().expect("someone holds a door at nuki").clone();
        assert!(
            page.contains("sales door, winter")
                && page.contains(&format!("id=\"item-{}\"", item.id))
                && page.contains(&item.template),
            "{backend}: {page}"
        );
        let form_url = format!("/console/reviews/{campaign_id}/items/{}", item.id);
        let vera_csrf = vera.csrf().await;
        let refused = vera
            .post(
                &form_url,
                &[
                    ("csrf", vera_csrf.as_str()),
                    ("decision", "certify"),
                    ("note", ""),
                ],
                None,
            )
            .await;
        assert_eq!(refused.status(), 403, "{backend}");
        let csrf = ada.csrf().await;
        let revoked = ada
            .post(
                &form_url,
                &[
                    ("csrf", csrf.as_str()),
                    ("decision", "revoke"),
                    ("note", "moved to finance"),
                ],
                None,
            )
            .await;
        assert!(revoked.status().is_redirection(), "{backend}");
        let page = ada.get(&location(&revoked)).await.text().await.unwrap();
        assert!(
            page.contains("revoked by operator:ada") && page.contains("moved to finance"),
            "{backend}: {page}"
        );
        let list = vera.get("/console/reviews").await.text().await.unwrap();
        assert!(list.contains("sales door, winter"), "{backend}");

        // Signing out ends the session on the server: the old cookie signs nobody in.
        let csrf = dana.csrf().await;
        let out = dana.post("/console/logout", &[("csrf", &csrf)], None).await;
        assert!(out.status().is_redirection());
        let after = dana.get("/console/keys").await;
        assert!(location(&after).starts_with("/console/login"), "{backend}");
        let actions: Vec<(String, String)> =
            latchkey::audit::query(app.store(), &Default::default(), 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.action, r.actor))
                .collect();
        for (action, actor) in [
            ("console.signed_in", "operator:vera"),
            ("held.approved", "operator:bob"),
            ("console.signed_out", "operator:dana"),
        ] {
            assert!(
                actions.iter().any(|(a, b)| a == action && b == actor),
                "{backend}: no {action} by {actor} in {actions:?}"
            );
        }
    }
}

// ---- the console in a real browser, signing in through a real OpenID provider ------------------

/// Whether the browser tests must run (tests/run.sh sets it) rather than be skipped here.
fn browser_required() -> bool {
    std::env::var("LATCHKEY_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The OpenID provider of tests/oidc, its standard input held open for as long as it should live.
struct IdentityProvider {
    issuer: String,
    child: std::process::Child,
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn identity_provider(redirect: &str, secret: &str) -> IdentityProvider {
    use std::io::BufRead;
    let mut child = Command::new("node")
        .arg(repo().join("tests/oidc/provider.mjs"))
        .args([redirect, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node runs tests/oidc/provider.mjs");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Whatever it prints later is read and dropped: a closed pipe would end it on its next line.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let started: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the provider did not start ({e}): {line:?}"));
    IdentityProvider {
        issuer: started["issuer"].as_str().unwrap().to_string(),
        child,
    }
}

/// chromedriver on a free loopback port.
struct Driver {
    url: String,
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    // Dropping the driver kills and waits for it, whether or not it came up.
    let driver = Driver {
        url: format!("http://127.0.0.1:{port}"),
        child,
    };
    for _ in 0..100 {
        if reqwest::get(format!("{}/status", driver.url)).await.is_ok() {
            return driver;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {}", driver.url);
}

/// A fresh headless browser (its own profile, so no sign-in carries over) of the given size. It
/// resolves no name and reaches nothing but loopback: the provider's development pages link a
/// web font, which must not leave the machine.
async fn browser(driver: &Driver, width: u32, height: u32) -> fantoccini::Client {
    let caps = serde_json::json!({
        "unhandledPromptBehavior": "accept",
        "goog:chromeOptions": {
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                format!("--window-size={width},{height}"),
            ]
        }
    });
    // Below 500 px a headless window does not shrink: a phone is emulated (its viewport, touch
    // and device pixel ratio), as the browser's device mode does.
    let mut caps = caps;
    if width < 500 {
        caps["goog:chromeOptions"]["mobileEmulation"] = serde_json::json!({
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 3.0, "touch": true}
        });
    }
    let caps = caps.as_object().unwrap().clone().into_iter().collect();
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Check the page's accessibility basics and save what it shows, for a person to look at after
/// the run.
async fn screenshot(client: &fantoccini::Client, name: &str) {
    let faults = accessibility_faults(client).await;
    assert!(faults.is_empty(), "{name}: {faults:?}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// What an accessibility check finds wrong on the page: a form field without a label, a button
/// or link without a name, an image without alternative text, a page without a main heading or
/// language. Empty when the page passes.
async fn accessibility_faults(client: &fantoccini::Client) -> Vec<String> {
    let found = client
        .execute(
            r#"const faults = [];
               for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
                 if (el.labels.length === 0 && !el.getAttribute("aria-label")) faults.push("unlabelled field " + (el.name || el.id));
               }
               for (const el of document.querySelectorAll("button, a[href]")) {
                 if (!(el.getAttribute("aria-label") || el.textContent).trim()) faults.push("nameless " + el.outerHTML);
               }
               for (const el of document.querySelectorAll("img:not([alt])")) faults.push("image without alt " + el.src);
               if (document.querySelectorAll("h1").length !== 1) faults.push("not exactly one h1");
               if (!document.documentElement.lang) faults.push("no lang");
               if (!document.querySelector("main")) faults.push("no main landmark");
               return faults;"#,
            vec![],
        )
        .await
        .unwrap();
    found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// Whether the page fits its viewport's width (nothing to scroll sideways on a phone).
async fn fits_width(client: &fantoccini::Client) -> (i64, i64) {
    let v = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())
}

async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    let found = client
        .wait()
        .at_most(std::time::Duration::from_secs(10))
        .for_element(fantoccini::Locator::Css(css))
        .await;
    match found {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => {
            let url = client.current_url().await.map(|u| u.to_string());
            let page = client.source().await.unwrap_or_default();
            panic!("no `{css}` on {url:?}: {e}\n{page}")
        }
    }
}

/// Open the console and sign in through the identity provider's own pages as `login`.
async fn sign_in_with_sso(client: &fantoccini::Client, base: &str, login: &str) {
    use fantoccini::Locator::Css;
    client.goto(&format!("{base}/console")).await.unwrap();
    client
        .wait()
        .for_element(Css("#sso"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let name = client
        .wait()
        .for_element(Css("input[name=login]"))
        .await
        .unwrap();
    name.send_keys(login).await.unwrap();
    client
        .find(Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any password")
        .await
        .unwrap();
    client
        .find(Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The provider asks for consent once per client; then the console shows who signed in, or
    // why not.
    for _ in 0..100 {
        if client
            .find(Css("#signed-in-as, #login-error"))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(b) = client
            .find(Css("input[name=prompt][value=consent] ~ button"))
            .await
        {
            let _ = b.click().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let url = client.current_url().await.map(|u| u.to_string());
    let page = client.source().await.unwrap_or_default();
    panic!("signing in as {login} did not come back to the console: {url:?}\n{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_people_sign_in_with_sso_see_doors_approve_and_record_a_key_on_a_phone() {
    use fantoccini::Locator::Css;
    let ready = on_path("node")
        && on_path("chromium")
        && on_path("chromedriver")
        && repo()
            .join("tests/oidc/node_modules/oidc-provider")
            .exists();
    if !ready {
        assert!(
            !browser_required(),
            "node, chromium, chromedriver and tests/oidc's npm packages are required (LATCHKEY_TEST_REQUIRE_BROWSER=1)"
        );
        eprintln!(
            "skipped: node, chromium, chromedriver or tests/oidc/node_modules missing (tests/run.sh installs them)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("state.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let secret = "test-client-secret";
    let idp = identity_provider(&format!("{base}/console/callback"), secret);
    // The daemon's clock is the test's, so a temporary grant's end comes when the test says.
    let clock = latchkey::clock::ManualClock::new(latchkey::clock::system().now());
    let (_, app, held, tasks, _sim) = api_server_on(
        tmp.path(),
        &url,
        listener,
        &console_section(&base, Some(&idp.issuer)),
        &[("T_OIDC_SECRET", secret)],
        std::sync::Arc::new(clock.clone()),
    )
    .await;
    let driver = chromedriver().await;

    // On a desk: sign in as a security approver, look at a person and who holds a door.
    let desk = browser(&driver, 1280, 900).await;
    desk.goto(&format!("{base}/console")).await.unwrap();
    text_of(&desk, "#sso").await;
    screenshot(&desk, "login").await;
    sign_in_with_sso(&desk, &base, "sam").await;
    let who = text_of(&desk, "#signed-in-as").await;
    assert!(who.contains("sam") && who.contains("approver"), "{who}");
    assert_eq!(text_of(&desk, "#held").await, "5");
    screenshot(&desk, "overview").await;
    desk.goto(&format!("{base}/console/people/E1"))
        .await
        .unwrap();
    let grants = text_of(&desk, "#grants").await;
    assert!(
        grants.contains("berlin-sales") && grants.contains("issued"),
        "{grants}"
    );
    screenshot(&desk, "person").await;
    desk.goto(&format!("{base}/console/who-has")).await.unwrap();
    let field = desk.wait().for_element(Css("#target")).await.unwrap();
    field.send_keys("berlin-sales").await.unwrap();
    desk.find(Css("form.search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(&desk, "main h2").await.contains("berlin-sales"));
    screenshot(&desk, "who-has").await;
    desk.goto(&format!("{base}/console/audit?action=console.signed_in"))
        .await
        .unwrap();
    assert!(text_of(&desk, "#audit").await.contains("oidc:sam"));
    screenshot(&desk, "audit").await;
    desk.close().await.unwrap();

    // On a phone: alice caused the held changes, so she is offered no decision.
    let phone = browser(&driver, 390, 844).await;
    sign_in_with_sso(&phone, &base, "alice").await;
    text_of(&phone, "#signed-in-as").await;
    phone
        .goto(&format!("{base}/console/approvals"))
        .await
        .unwrap();
    let card = text_of(&phone, &format!("#held-{}", held[0])).await;
    assert!(card.contains("You asked for this change"), "{card}");
    assert!(
        phone
            .find(Css(&format!("#held-{} button", held[0])))
            .await
            .is_err()
    );
    phone.close().await.unwrap();

    // On a phone: sam approves one of them.
    let phone = browser(&driver, 390, 844).await;
    sign_in_with_sso(&phone, &base, "sam").await;
    text_of(&phone, "#signed-in-as").await;
    phone
        .goto(&format!("{base}/console/approvals"))
        .await
        .unwrap();
    let (scroll, inner) = fits_width(&phone).await;
    assert!(
        inner <= 390 && scroll <= inner,
        "approvals on a phone: {scroll} px wide in {inner}"
    );
    screenshot(&phone, "approvals-phone").await;
    phone
        .find(Css(&format!(
            "#held-{} form[action$=approve] button",
            held[0]
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = text_of(&phone, "#notice").await;
    assert!(notice.contains("approved by oidc:sam"), "{notice}");
    screenshot(&phone, "approved-phone").await;
    phone.close().await.unwrap();
    let open: Vec<i64> = latchkey::store::held_changes(app.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert!(!open.contains(&held[0]) && open.len() == 4, "{open:?}");

    // On a phone at the key desk: dana (facilities) records a key returned.
    let phone = browser(&driver, 390, 844).await;
    sign_in_with_sso(&phone, &base, "dana").await;
    assert!(text_of(&phone, "#signed-in-as").await.contains("desk"));
    phone.goto(&format!("{base}/console/keys")).await.unwrap();
    let (scroll, inner) = fits_width(&phone).await;
    assert!(
        inner <= 390 && scroll <= inner,
        "key desk on a phone: {scroll} px wide in {inner}"
    );
    screenshot(&phone, "keys-phone").await;
    // From the keyboard: the button takes focus and Enter presses it.
    phone
        .find(Css(&format!("#task-{} button", tasks[1])))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let notice = text_of(&phone, "#notice").await;
    assert!(
        notice.contains("returned by E1, recorded by oidc:dana"),
        "{notice}"
    );
    assert!(
        phone
            .find(Css(&format!("#task-{}", tasks[1])))
            .await
            .is_err(),
        "the task is done"
    );
    screenshot(&phone, "returned-phone").await;
    phone.close().await.unwrap();

    // Temporary access from ask to approve to issued to expired: dana asks at the desk for the
    // lab for two hours, sam approves on his phone, the grant is issued, and at the window's end
    // the schedule revokes it.
    let phone = browser(&driver, 390, 844).await;
    sign_in_with_sso(&phone, &base, "dana").await;
    phone
        .goto(&format!("{base}/console/requests"))
        .await
        .unwrap();
    // The form folds away under its summary, as on the page.
    phone
        .find(Css("details summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let until = (clock.now_utc() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let form = phone.form(Css("#ask")).await.unwrap();
    form.set_by_name("person", "E1").await.unwrap();
    form.set_by_name("connector", "nuki").await.unwrap();
    form.set_by_name("target", "berlin-lab").await.unwrap();
    form.set_by_name("ends_at", &until).await.unwrap();
    form.set_by_name("reason", "lab inventory").await.unwrap();
    phone
        .find(Css("#ask button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = text_of(&phone, "#notice").await;
    assert!(notice.contains("waits for an approver"), "{notice}");
    let asked = latchkey::store::access_requests::list(app.store().pool(), None, None, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (asked.requested_by.as_str(), asked.status.as_str()),
        ("oidc:dana", "requested")
    );
    screenshot(&phone, "request-asked-phone").await;
    assert!(
        phone
            .find(Css(&format!("#request-{} form[action$=approve]", asked.id)))
            .await
            .is_err(),
        "a desk operator cannot approve"
    );
    phone.close().await.unwrap();

    let phone = browser(&driver, 390, 844).await;
    sign_in_with_sso(&phone, &base, "sam").await;
    phone
        .goto(&format!("{base}/console/requests"))
        .await
        .unwrap();
    let (scroll, inner) = fits_width(&phone).await;
    assert!(
        inner <= 390 && scroll <= inner,
        "requests on a phone: {scroll} px wide in {inner}"
    );
    phone
        .find(Css(&format!(
            "#request-{} form[action$=approve] button",
            asked.id
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let notice = text_of(&phone, "#notice").await;
    assert!(notice.contains("is active (oidc:sam)"), "{notice}");
    phone
        .goto(&format!("{base}/console/people/E1"))
        .await
        .unwrap();
    let grants = text_of(&phone, "#grants").await;
    assert!(
        grants.contains("berlin-lab")
            && grants.contains(&format!("request:{}", asked.id))
            && grants.contains("issued"),
        "{grants}"
    );
    screenshot(&phone, "request-issued-phone").await;

    clock.advance(chrono::Duration::hours(2) + chrono::Duration::minutes(1));
    // The schedule ends it. No dispatcher runs here, so the issue never reached the vendor: the
    // end withdraws it (the flow suite checks the revocation at a simulator).
    app.engine.tick().await.unwrap();
    phone
        .goto(&format!("{base}/console/people/E1"))
        .await
        .unwrap();
    let grants = text_of(&phone, "#grants").await;
    assert!(grants.contains("expired"), "{grants}");
    phone
        .goto(&format!("{base}/console/requests"))
        .await
        .unwrap();
    let card = text_of(&phone, &format!("#request-{}", asked.id)).await;
    assert!(
        card.contains("expired") && card.contains("closed by schedule"),
        "{card}"
    );
    screenshot(&phone, "request-expired-phone").await;
    phone.close().await.unwrap();

    // Someone the provider knows but in no group latchkey maps is refused, and told why.
    let other = browser(&driver, 390, 844).await;
    sign_in_with_sso(&other, &base, "mallory").await;
    let error = text_of(&other, "#login-error").await;
    assert!(error.contains("`groups` claim"), "{error}");
    screenshot(&other, "refused").await;
    other.close().await.unwrap();

    let audit: Vec<(String, String)> =
        latchkey::audit::query(app.store(), &Default::default(), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.action, r.actor))
            .collect();
    for (action, actor) in [
        ("console.signed_in", "oidc:sam"),
        ("held.approved", "oidc:sam"),
        ("console.signed_in", "oidc:dana"),
    ] {
        assert!(
            audit.iter().any(|(a, b)| a == action && b == actor),
            "no {action} by {actor}"
        );
    }
    drop(idp);
}

/// A provider that is down, or whose discovery document is garbage or names another issuer: the
/// sign-in page says which provider failed and why (502), sets no login cookie, and the token
/// sign-in still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_with_a_broken_provider_says_so_and_signs_nobody_in() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A provider that answers, wrongly: HTML where JSON belongs, or another issuer's document.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = format!("http://{}", listener.local_addr().unwrap());
    let other = bad.clone();
    let app = axum::Router::new()
        .route(
            "/html/.well-known/openid-configuration",
            axum::routing::get(|| async { "<html>maintenance</html>" }),
        )
        .route(
            "/other/.well-known/openid-configuration",
            axum::routing::get(move || {
                let doc = serde_json::json!({
                    "issuer": format!("{other}/somebody-else"),
                    "authorization_endpoint": format!("{other}/auth"),
                    "token_endpoint": format!("{other}/token"),
                    "jwks_uri": format!("{other}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                });
                async move { axum::Json(doc) }
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for issuer in [
        format!("http://127.0.0.1:{closed}"),
        format!("{bad}/html"),
        format!("{bad}/other"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("state.db").display());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (_, _app, _, _, _sim) = api_server_on(
            tmp.path(),
            &url,
            listener,
            &console_section(&base, Some(&issuer)),
            &[("T_OIDC_SECRET", "s3cret")],
            latchkey::clock::system(),
        )
        .await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = http
            .get(format!("{base}/console/login/oidc"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 502, "{issuer}");
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "{issuer}: a login cookie for a sign-in that cannot happen"
        );
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("could not be reached or described itself wrongly")
                && page.contains(&issuer),
            "{issuer}: {page}"
        );
        // The token sign-in is still on the page and works.
        assert!(page.contains("/console/login/token"), "{issuer}: {page}");
        let mut ada = ConsoleClient::new(&base);
        ada.sign_in("lkop_admin-token").await;
        let overview = ada.get("/console").await;
        assert_eq!(overview.status().as_u16(), 200, "{issuer}");
    }
    server.abort();
}
