//! The operator surface: commands that only read need no vendor secret, operators with roles and
//! dual control, and the admin API under `/api/v1` with each role allowed exactly its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use latchkey::sim::{self, NukiOptions};
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
    let server = nuki().await;
    let path = write_config(dir, url, &server.base_url(), &operators_section());
    let env = all_secrets()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = latchkey::config::Config::load(
        &latchkey::config::ConfigInput::from_file(&path, env).unwrap(),
    )
    .unwrap();
    let app = latchkey::app::App::open_reader(config, latchkey::clock::system())
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
        // (method, path with {id}, body, least role)
        let table: [(&str, &str, Option<&str>, Role); 15] = [
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
                    assert!(ctype.starts_with("application/json"), "{what}");
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
        assert_eq!(next["items"].as_array().unwrap().len(), 2, "{next}");
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
                .replace("/E1", "/{person}")
                .replace("/berlin-sales/", "/{target}/");
            let op = &paths
                .get(&templated)
                .unwrap_or_else(|| panic!("{templated} not in {:?}", paths.keys()))
                [method.to_lowercase()];
            assert!(op.is_object(), "{method} {templated}");
        }
        assert_eq!(
            paths.len(),
            table.len(),
            "one path per route: {:?}",
            paths.keys()
        );
    }
}
