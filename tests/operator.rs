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
