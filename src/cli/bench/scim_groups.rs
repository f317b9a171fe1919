//! `latchkey bench --sections scim-groups`: a large SCIM group as identity providers push it.
//!
//! A group of `--group-members` users (20,000 by default) is built with PATCH adds of 100 members at
//! a time, as Okta and Entra ID send them; then single members are added and removed one at a time,
//! and the group is read with and without its members. Membership of the group grants a door, so
//! every change goes all the way through: the member's `groups` attribute, the template, the grant.
//! The target: a one-member change on a 20,000-member group answered (durably) in under 20 ms.

use super::{
    Bed, BenchArgs, SCIM_TOKEN, SCIM_TOKEN_VAR, SETUP_RATE, bar, ms, prepare, scim_user, start_sim,
};
use crate::telemetry;
use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A one-member add or remove on a 20,000-member group, answered, in seconds.
pub const TARGET_SECONDS: f64 = 0.020;
/// Members per PATCH while the group is built (what identity providers batch).
const BATCH: usize = 100;
/// Timed one-member adds, then as many removes.
const OPS: usize = 50;
/// Timed reads of the group, each way.
const READS: usize = 10;
const GROUP: &str = "Bench Doors";

pub struct GroupFigures {
    pub members: usize,
    pub add_p50: f64,
    pub add_p99: f64,
    pub remove_p50: f64,
    pub remove_p99: f64,
    pub get_with: f64,
    pub get_without: f64,
    pub ok: bool,
}

/// Whoever is in the group gets a door: a membership change is a grant change. Nuki allows 200
/// authorisations per lock, so members are spread over a hundred per lock.
fn templates(members: usize) -> String {
    let locks = members.div_ceil(100).max(1);
    format!(
        r#"version = 1

[[templates]]
name = "bench-group-door"
when = "'{}' in (groups or '')"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "nuki"
target = "{{{{ 5000 + (key[1:] | int) % {locks} }}}}"
"#,
        GROUP
    )
}

fn patch(op: &str, path: &str, value: Option<Value>) -> Value {
    let mut o = json!({ "op": op, "path": path });
    if let Some(v) = value {
        o["value"] = v;
    }
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [o]
    })
}

pub async fn scim_groups(args: &BenchArgs, dir: &Path) -> anyhow::Result<GroupFigures> {
    let n = args.group_members.max(1);
    println!("== SCIM groups at scale ==");
    println!(
        "  {n} users created over SCIM, one group built by PATCH adds of {BATCH}, then {OPS} one-member adds and {OPS} removes"
    );
    prepare(dir, n)?;
    std::fs::write(dir.join("templates.toml"), templates(n + OPS))?;
    let server = start_sim().await?;
    let extra = format!(
        "\n[scim.tenants.bench]\ntoken = {{ env = \"{SCIM_TOKEN_VAR}\" }}\n\
         rate_limit = {{ per_second = 1000000, burst = 1000000 }}\n"
    );
    let bed = Bed::open_with(
        dir,
        &server.base_url(),
        SETUP_RATE,
        args.concurrency,
        &extra,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/scim/v2", listener.local_addr()?);
    let (stop_http, mut stopped) = watch::channel(false);
    let http = tokio::spawn(crate::api::serve(listener, bed.app.router(), async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let client = reqwest::Client::new();

    // The members, and OPS more users to add and remove one at a time.
    let b = bar(n + OPS, "users");
    let keys: Vec<String> = (0..n + OPS).map(|i| format!("G{i:06}")).collect();
    let t = Instant::now();
    let created: Vec<anyhow::Result<String>> = futures::stream::iter(keys.iter())
        .map(|key| {
            let (client, url, b) = (client.clone(), format!("{base}/Users"), b.clone());
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
                let body: Value = resp.json().await?;
                b.inc(1);
                body["id"]
                    .as_str()
                    .map(str::to_string)
                    .context("create answered without an id")
            }
        })
        .buffered(args.scim_clients.max(1))
        .collect()
        .await;
    b.finish_and_clear();
    let ids: Vec<String> = created.into_iter().collect::<anyhow::Result<_>>()?;
    println!(
        "  users: {} created in {:.1} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let (members, extra_ids) = ids.split_at(n);

    let resp = client
        .post(format!("{base}/Groups"))
        .bearer_auth(SCIM_TOKEN)
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": GROUP
        }))
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::CREATED {
        bail!("create group: HTTP {}", resp.status());
    }
    let group: Value = resp.json().await?;
    let gid = group["id"]
        .as_str()
        .context("group without an id")?
        .to_string();
    let url = format!("{base}/Groups/{gid}");

    let send = |body: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t = Instant::now();
            let resp = client
                .patch(url)
                .bearer_auth(SCIM_TOKEN)
                .json(&body)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!(
                    "group PATCH: HTTP {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64())
        }
    };

    let b = bar(n, "members");
    let t = Instant::now();
    let mut batch_times = Vec::new();
    for chunk in members.chunks(BATCH) {
        let value: Vec<Value> = chunk.iter().map(|id| json!({ "value": id })).collect();
        batch_times.push(send(patch("add", "members", Some(Value::Array(value)))).await?);
        b.inc(chunk.len() as u64);
    }
    b.finish_and_clear();
    let build = t.elapsed().as_secs_f64();
    let first = batch_times.first().copied().unwrap_or_default();
    let last = batch_times.last().copied().unwrap_or_default();
    println!(
        "  build: {n} members in {} PATCHes of {BATCH} in {build:.1} s (first batch {}, last batch {})",
        batch_times.len(),
        ms(first),
        ms(last)
    );
    // The grants the build caused, so the timed changes below run with nothing queued.
    bed.drain(Duration::from_millis(20), None).await?;

    let mut adds = Vec::with_capacity(OPS);
    for id in extra_ids {
        adds.push(send(patch("add", "members", Some(json!([{ "value": id }])))).await?);
        bed.drain(Duration::from_millis(1), None).await?;
    }
    let mut removes = Vec::with_capacity(OPS);
    for id in extra_ids {
        // Entra ID's shape for a removal; Okta sends the same with a value list.
        let path = format!("members[value eq \"{id}\"]");
        removes.push(send(patch("remove", &path, None)).await?);
        bed.drain(Duration::from_millis(1), None).await?;
    }

    let get = |query: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut times = Vec::with_capacity(READS);
            let mut size = 0;
            let mut count = 0;
            for _ in 0..READS {
                let t = Instant::now();
                let resp = client
                    .get(format!("{url}{query}"))
                    .bearer_auth(SCIM_TOKEN)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("group GET: HTTP {}", resp.status());
                }
                let body = resp.bytes().await?;
                times.push(t.elapsed().as_secs_f64());
                size = body.len();
                let v: Value = serde_json::from_slice(&body)?;
                count = v["members"].as_array().map_or(0, Vec::len);
            }
            Ok::<_, anyhow::Error>((telemetry::summarize(times), size, count))
        }
    };
    let (with, with_size, with_count) = get("").await?;
    let (without, without_size, without_count) = get("?excludedAttributes=members").await?;

    let (Some(add), Some(remove), Some(with), Some(without)) = (
        telemetry::summarize(adds),
        telemetry::summarize(removes),
        with,
        without,
    ) else {
        bail!("no figures");
    };
    println!(
        "  one-member add    on a {n}-member group: p50 {}  p99 {}  max {}  (n = {})",
        ms(add.p50),
        ms(add.p99),
        ms(add.max),
        add.count
    );
    println!(
        "  one-member remove on a {n}-member group: p50 {}  p99 {}  max {}  (n = {})",
        ms(remove.p50),
        ms(remove.p99),
        ms(remove.max),
        remove.count
    );
    println!(
        "  GET the group with its members:             p50 {}  ({with_count} members, {} KiB)",
        ms(with.p50),
        with_size / 1024
    );
    println!(
        "  GET the group, excludedAttributes=members:  p50 {}  ({without_count} members, {} bytes)",
        ms(without.p50),
        without_size
    );
    // What a user would check: the members hold the door, the ones added and removed again do not.
    let held = server.nuki().map_or(0, |s| s.auths_live());
    println!("  door holders at the vendor: {held} (expected {n})");
    println!();
    let ok = with_count == n && without_count == 0 && held == n;
    let _ = stop_http.send(true);
    http.await??;
    bed.close().await?;
    server.shutdown().await;
    Ok(GroupFigures {
        members: n,
        add_p50: add.p50,
        add_p99: add.p99,
        remove_p50: remove.p50,
        remove_p99: remove.p99,
        get_with: with.p50,
        get_without: without.p50,
        ok,
    })
}

/// The summary line: the slower of add and remove at p50 and p99, against the target.
pub fn summary(g: &GroupFigures) -> String {
    let p50 = g.add_p50.max(g.remove_p50);
    let p99 = g.add_p99.max(g.remove_p99);
    format!(
        "summary: one-member change on a {}-member group p50 {} p99 {} (target {}: {:.2} x target at p50, {:.2} x at p99); GET with members {}, without {}",
        g.members,
        ms(p50),
        ms(p99),
        ms(TARGET_SECONDS),
        p50 / TARGET_SECONDS,
        p99 / TARGET_SECONDS,
        ms(g.get_with),
        ms(g.get_without)
    )
}
