//! `latchkey bench --sections scim`: users created over SCIM, then deactivated one at a time with
//! nothing queued; the time from the PATCH arriving to the first vendor revoke request is the figure.
//! Also the store with its SCIM API on loopback HTTP that this section and `scim-groups` share.

use super::{
    Bed, BenchArgs, SCIM_TOKEN, SCIM_TOKEN_VAR, SETUP_RATE, bar, ms, prepare, scim_user, start_sim,
};
use crate::model::Action;
use crate::store;
use crate::telemetry::{self, Summary};
use anyhow::{Context, bail};
use futures::StreamExt;
use latchkey_sim::SimServer;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(super) struct ScimFigures {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) writes_per_second: f64,
    pub(super) ok: bool,
}

/// A store with the SCIM tenant `bench`, its API served over loopback HTTP, and a client for it.
pub(super) struct ScimBed {
    pub(super) bed: Bed,
    /// The SCIM base URL (`http://127.0.0.1:port/scim/v2`).
    pub(super) base: String,
    pub(super) client: reqwest::Client,
    stop_http: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
}

impl ScimBed {
    pub(super) async fn open(
        dir: &Path,
        server: &SimServer,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        // The bench measures latchkey, not the tenant's default request budget.
        let extra = format!(
            "\n[scim.tenants.bench]\ntoken = {{ env = \"{SCIM_TOKEN_VAR}\" }}\n\
             rate_limit = {{ per_second = 1000000, burst = 1000000 }}\n"
        );
        let bed = Bed::open_with(dir, &server.base_url(), SETUP_RATE, concurrency, &extra).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}/scim/v2", listener.local_addr()?);
        let (stop_http, mut stopped) = watch::channel(false);
        let http = tokio::spawn(crate::api::serve(listener, bed.app.router(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let client = reqwest::Client::new();
        Ok(Self {
            bed,
            base,
            client,
            stop_http,
            http,
        })
    }

    /// Stop serving, then close the store.
    pub(super) async fn close(self) -> anyhow::Result<()> {
        let _ = self.stop_http.send(true);
        self.http.await??;
        self.bed.close().await
    }
}

pub(super) async fn scim_deactivations(
    args: &BenchArgs,
    dir: &Path,
) -> anyhow::Result<ScimFigures> {
    let k = args.scim_deactivations.max(1);
    println!("== 3. SCIM deactivations, nothing queued ==");
    println!(
        "  {k} users created over SCIM ({} clients at once), then deactivated one at a time with PATCH active=false",
        args.scim_clients.max(1)
    );
    prepare(dir, k)?;
    let server = start_sim().await?;
    let scim = ScimBed::open(dir, &server, args.concurrency).await?;
    let (ids, writes_per_second) = create_users(&scim, k, args.scim_clients.max(1)).await?;
    scim.bed.drain(Duration::from_millis(20), None).await?;
    let answered = deactivate_one_at_a_time(&scim, &ids).await?;
    let revokes = completed_revokes(&scim.bed).await?;
    let first = print_latencies(&revokes, &answered, k)?;
    println!();
    scim.close().await?;
    let ok = revokes.len() == k;
    server.shutdown().await;
    Ok(ScimFigures {
        p50: first.p50,
        p99: first.p99,
        writes_per_second,
        ok,
    })
}

/// `k` users created by `clients` clients at once: their SCIM ids, and durable writes per second.
async fn create_users(
    scim: &ScimBed,
    k: usize,
    clients: usize,
) -> anyhow::Result<(Vec<String>, f64)> {
    // Durable writes: every 201 is answered only after the user, the identity change, its commands
    // and their audit records have committed.
    let keys: Vec<String> = (0..k).map(|i| format!("S{i:06}")).collect();
    let shared_before = scim.bed.app.store().group_commits();
    let t = Instant::now();
    let created: Vec<anyhow::Result<String>> = futures::stream::iter(keys.iter())
        .map(|key| {
            let client = scim.client.clone();
            let url = format!("{}/Users", scim.base);
            async move {
                let resp = client
                    .post(url)
                    .bearer_auth(SCIM_TOKEN)
                    .json(&scim_user(key))
                    .send()
                    .await?;
                if resp.status() != reqwest::StatusCode::CREATED {
                    bail!("create {key}: HTTP {}", resp.status());
                }
                let body: serde_json::Value = resp.json().await?;
                body["id"]
                    .as_str()
                    .map(str::to_string)
                    .context("create answered without an id")
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let create_secs = t.elapsed().as_secs_f64();
    let ids: Vec<String> = created.into_iter().collect::<anyhow::Result<_>>()?;
    let writes_per_second = k as f64 / create_secs;
    println!(
        "  creates: {k} durable SCIM writes in {create_secs:.2} s = {writes_per_second:.0} writes/s (while the dispatcher issued their grants)"
    );
    let shared = scim.bed.app.store().group_commits();
    let (commits, members) = (
        shared.commits - shared_before.commits,
        shared.members - shared_before.members,
    );
    println!(
        "  group commit: {members} short write transactions (SCIM requests, claims, completions) in {commits} commits = {:.2} per commit",
        members as f64 / commits.max(1) as f64
    );
    Ok((ids, writes_per_second))
}

/// PATCH active=false for each user in turn, waiting for an empty outbox after each: the time each
/// PATCH took to be answered, client side.
async fn deactivate_one_at_a_time(scim: &ScimBed, ids: &[String]) -> anyhow::Result<Vec<f64>> {
    let b = bar(ids.len(), "deactivate");
    let patch = serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{ "op": "replace", "path": "active", "value": false }]
    });
    let mut answered = Vec::with_capacity(ids.len());
    for id in ids {
        let t = Instant::now();
        let resp = scim
            .client
            .patch(format!("{}/Users/{id}", scim.base))
            .bearer_auth(SCIM_TOKEN)
            .json(&patch)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("deactivate {id}: HTTP {}", resp.status());
        }
        answered.push(t.elapsed().as_secs_f64());
        scim.bed.drain(Duration::from_millis(1), None).await?;
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(answered)
}

async fn completed_revokes(bed: &Bed) -> anyhow::Result<Vec<store::CommandRow>> {
    Ok(store::completed_commands(bed.app.store().pool())
        .await?
        .into_iter()
        .filter(|c| c.action == Action::Revoke)
        .collect())
}

/// The deactivations' latencies, printed; the figure (received -> first vendor request) returned.
fn print_latencies(
    revokes: &[store::CommandRow],
    answered: &[f64],
    k: usize,
) -> anyhow::Result<Summary> {
    // Received (the change's trigger: SCIM changes take effect when they arrive) -> the worker takes
    // the command and sends the first vendor request (a DELETE with the stored authorisation id).
    let to_first_request: Vec<f64> = revokes
        .iter()
        .filter_map(|c| {
            c.first_attempt_at
                .map(|f| (f - c.trigger_at).max(0) as f64 / 1e6)
        })
        .collect();
    let e2e: Vec<f64> = revokes
        .iter()
        .filter_map(|c| telemetry::stages(c).map(|s| s[4]))
        .collect();
    let Some(first) = telemetry::summarize(to_first_request) else {
        bail!("no SCIM deactivation was revoked");
    };
    println!(
        "  PATCH active=false received -> first vendor revoke request sent: p50 {}  p90 {}  p99 {}  max {}  (n = {})",
        ms(first.p50),
        ms(first.p90),
        ms(first.p99),
        ms(first.max),
        first.count
    );
    if let Some(e) = telemetry::summarize(e2e) {
        println!(
            "  PATCH received -> vendor confirmed the revoke:          p50 {}  p90 {}  p99 {}  max {}",
            ms(e.p50),
            ms(e.p90),
            ms(e.p99),
            ms(e.max)
        );
    }
    if let Some(a) = telemetry::summarize(answered.to_vec()) {
        let total: f64 = answered.iter().sum();
        println!(
            "  PATCH answered (durable) client side: p50 {}  p99 {}; {:.0} sequential durable writes/s",
            ms(a.p50),
            ms(a.p99),
            k as f64 / total
        );
    }
    Ok(first)
}
