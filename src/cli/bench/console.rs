//! `latchkey bench --sections console`: the web console's pages over a store of `--population`
//! people (100,000 by default) with their grants and an audit trail, each page fetched over
//! loopback HTTP by a signed-in operator, against the target of 100 ms server time a page.

use super::reconcile::{TEMPLATES, populate};
use crate::clock::{self, to_micros};
use crate::config::{Config, ConfigInput};
use crate::engine::Engine;
use crate::policy::Policy;
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Server time a console page may take at 100,000 people.
pub const TARGET: Duration = Duration::from_millis(100);
/// Audit records written for each person (joined, granted, ...), so timelines and the audit page
/// search a log of realistic size.
const AUDIT_PER_PERSON: usize = 3;
const FETCHES: usize = 30;
const TOKEN: &str = "lkop_bench-console";

pub async fn console_pages(n: usize, dir: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("templates.toml"), TEMPLATES)?;
    let url = format!("sqlite://{}", dir.join("console.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let engine = open_engine(dir, &url, &base).await?;
    println!(
        "console: {n} people with their grants, {AUDIT_PER_PERSON} audit records each; {FETCHES} fetches a page"
    );
    fill_store(&engine, n).await?;

    let router = crate::api::router(crate::api::ApiState {
        engine: engine.clone(),
        lanes: None,
        leases: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::api::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &base).await?;
    let mut ok = true;
    for (what, path) in pages(n) {
        ok &= time_page(&http, &base, &cookie, what, &path).await?;
    }
    let _ = stop.send(());
    server.await??;
    Ok(ok)
}

/// The configuration (an admin operator signing in with `TOKEN`, the console at `base`) written
/// and loaded, and an engine on the store at `url`.
async fn open_engine(dir: &Path, url: &str, base: &str) -> anyhow::Result<Arc<Engine>> {
    std::fs::write(
        dir.join("latchkey.toml"),
        format!(
            "version = 1\n[store]\nurl = \"{url}\"\n[policy]\ntemplates = \"templates.toml\"\n\
             [operators.bench]\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n\
             [console]\npublic_url = \"{base}\"\n",
            crate::operators::token_sha256(TOKEN)
        ),
    )?;
    let config = Config::load(&ConfigInput::from_file(
        &dir.join("latchkey.toml"),
        BTreeMap::new(),
    )?)?;
    let policy = Arc::new(Policy::load(
        &config.resolve(&config.policy.templates),
        &[],
    )?);
    let store = Store::connect(&config.store_url()?, 4).await?;
    Ok(Arc::new(Engine::new(
        store,
        clock::system(),
        Arc::new(config),
        policy,
    )?))
}

/// `n` people with their grants, and `AUDIT_PER_PERSON` audit records for each, written in
/// transactions of 5,000 people.
async fn fill_store(engine: &Engine, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    populate(engine, n).await?;
    let now = to_micros(engine.clock.now());
    for start in (0..n).step_by(5_000) {
        let mut tx = engine.store.begin_write().await?;
        for i in start..(start + 5_000).min(n) {
            let key = format!("E{i:07}");
            for (j, action) in ["identity.joined", "grant.issued", "grant.confirmed"]
                .iter()
                .take(AUDIT_PER_PERSON)
                .enumerate()
            {
                crate::audit::append(
                    &mut tx,
                    now + j as i64,
                    "source:hr",
                    action,
                    &key,
                    &serde_json::json!({"target": "berlin-sales"}),
                )
                .await?;
            }
        }
        tx.commit().await?;
    }
    println!("  store filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Sign in with the operator token; the session cookie's value.
async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let signed_in = http
        .post(format!("{base}/console/login/token"))
        .form(&[("token", TOKEN)])
        .send()
        .await?;
    Ok(signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("latchkey_session="))
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the console did not sign the bench in"))?
        .to_string())
}

/// The pages timed, by what an operator would call them; the person pages are of the middle one.
fn pages(n: usize) -> [(&'static str, String); 9] {
    let middle = format!("E{:07}", n / 2);
    [
        ("overview", "/console".to_string()),
        ("people, first page", "/console/people".to_string()),
        (
            "people, search by key",
            format!("/console/people?q={middle}"),
        ),
        ("a person", format!("/console/people/{middle}")),
        (
            "who has a door",
            "/console/who-has?target=berlin-management".to_string(),
        ),
        ("approvals", "/console/approvals".to_string()),
        ("key desk", "/console/keys".to_string()),
        ("audit, newest", "/console/audit".to_string()),
        (
            "audit, one person",
            format!("/console/audit?subject={middle}"),
        ),
    ]
}

/// One page fetched `FETCHES` times, its server time (the `server-timing` header) printed as a
/// figure against `TARGET`. Returns whether its p99 met the target.
async fn time_page(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    what: &str,
    path: &str,
) -> anyhow::Result<bool> {
    let mut server_ms = Vec::with_capacity(FETCHES);
    let mut bytes = 0;
    for _ in 0..FETCHES {
        let resp = http
            .get(format!("{base}{path}"))
            .header("cookie", format!("latchkey_session={cookie}"))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "{path}: {}", resp.status());
        let timing = resp
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("dur=").nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        bytes = resp.bytes().await?.len();
        server_ms.push(timing);
    }
    server_ms.sort_by(f64::total_cmp);
    let p50 = server_ms[FETCHES / 2];
    let p99 = server_ms[FETCHES - 1];
    let target = TARGET.as_secs_f64() * 1000.0;
    super::row(
        &format!("{what} ({} KiB)", bytes / 1024),
        format!("p50 {p50:.1} ms p99 {p99:.1} ms"),
        "<= 100 ms",
        target / p99.max(1e-9),
    );
    Ok(p99 <= target)
}
