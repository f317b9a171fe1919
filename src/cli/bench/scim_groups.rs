//! `latchkey bench --sections scim-groups`: a large SCIM group as identity providers push it.
//!
//! A group of `--group-members` users (20,000 by default) is built with PATCH adds of 100 members at
//! a time, as Okta and Entra ID send them; then single members are added and removed one at a time,
//! and the group is read with and without its members. Membership of the group grants a door, so
//! every change goes all the way through: the member's `groups` attribute, the template, the grant.
//! The target: a one-member change on a 20,000-member group answered (durably) in under 20 ms.

use super::scim::ScimBed;
use super::{BenchArgs, SCIM_TOKEN, bar, ms, prepare, scim_user, start_sim};
use crate::telemetry::{self, Summary};
use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

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
    let scim = ScimBed::open(dir, &server, args.concurrency).await?;
    // The members, and OPS more users to add and remove one at a time.
    let ids = create_users(&scim, n + OPS, args.scim_clients.max(1)).await?;
    let (members, extra_ids) = ids.split_at(n);
    let url = create_group(&scim).await?;
    build_group(&scim.client, &url, members).await?;
    // The grants the build caused, so the timed changes below run with nothing queued.
    scim.bed.drain(Duration::from_millis(20), None).await?;
    let measured = measure(&scim, &url, extra_ids).await?;
    measured.print(n);
    // What a user would check: the members hold the door, the ones added and removed again do not.
    let held = server.nuki().map_or(0, |s| s.auths_live());
    println!("  door holders at the vendor: {held} (expected {n})");
    println!();
    let ok = measured.with_count == n && measured.without_count == 0 && held == n;
    scim.close().await?;
    server.shutdown().await;
    Ok(GroupFigures {
        members: n,
        add_p50: measured.add.p50,
        add_p99: measured.add.p99,
        remove_p50: measured.remove.p50,
        remove_p99: measured.remove.p99,
        get_with: measured.with.p50,
        get_without: measured.without.p50,
        ok,
    })
}

/// `count` users created by `clients` clients at once; their SCIM ids in the order of their keys.
async fn create_users(scim: &ScimBed, count: usize, clients: usize) -> anyhow::Result<Vec<String>> {
    let b = bar(count, "users");
    let keys: Vec<String> = (0..count).map(|i| format!("G{i:06}")).collect();
    let t = Instant::now();
    let created: Vec<anyhow::Result<String>> = futures::stream::iter(keys.iter())
        .map(|key| {
            let (client, url, b) = (
                scim.client.clone(),
                format!("{}/Users", scim.base),
                b.clone(),
            );
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
        .buffered(clients)
        .collect()
        .await;
    b.finish_and_clear();
    let ids: Vec<String> = created.into_iter().collect::<anyhow::Result<_>>()?;
    println!(
        "  users: {} created in {:.1} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(ids)
}

/// The empty group, created; its URL.
async fn create_group(scim: &ScimBed) -> anyhow::Result<String> {
    let resp = scim
        .client
        .post(format!("{}/Groups", scim.base))
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
    Ok(format!("{}/Groups/{gid}", scim.base))
}

/// Send one PATCH to the group; the seconds it took to be answered.
async fn send_patch(client: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<f64> {
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
    Ok(t.elapsed().as_secs_f64())
}

/// Add the members in PATCHes of `BATCH`, as identity providers do.
async fn build_group(
    client: &reqwest::Client,
    url: &str,
    members: &[String],
) -> anyhow::Result<()> {
    let n = members.len();
    let b = bar(n, "members");
    let t = Instant::now();
    let mut batch_times = Vec::new();
    for chunk in members.chunks(BATCH) {
        let value: Vec<Value> = chunk.iter().map(|id| json!({ "value": id })).collect();
        batch_times.push(
            send_patch(
                client,
                url,
                patch("add", "members", Some(Value::Array(value))),
            )
            .await?,
        );
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
    Ok(())
}

/// What the timed part measured: the one-member changes and the two reads of the group.
struct Measured {
    add: Summary,
    remove: Summary,
    with: Summary,
    with_size: usize,
    with_count: usize,
    without: Summary,
    without_size: usize,
    without_count: usize,
}

impl Measured {
    fn print(&self, n: usize) {
        let (add, remove) = (&self.add, &self.remove);
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
            "  GET the group with its members:             p50 {}  ({} members, {} KiB)",
            ms(self.with.p50),
            self.with_count,
            self.with_size / 1024
        );
        println!(
            "  GET the group, excludedAttributes=members:  p50 {}  ({} members, {} bytes)",
            ms(self.without.p50),
            self.without_count,
            self.without_size
        );
    }
}

/// Each extra user added on its own, then each removed on its own; then the group read with and
/// without its members.
async fn measure(scim: &ScimBed, url: &str, extra_ids: &[String]) -> anyhow::Result<Measured> {
    let (adds, removes) = one_member_changes(scim, url, extra_ids).await?;
    let (with, with_size, with_count) = read_group(&scim.client, url, "").await?;
    let (without, without_size, without_count) =
        read_group(&scim.client, url, "?excludedAttributes=members").await?;
    let (Some(add), Some(remove), Some(with), Some(without)) = (
        telemetry::summarize(adds),
        telemetry::summarize(removes),
        with,
        without,
    ) else {
        bail!("no figures");
    };
    Ok(Measured {
        add,
        remove,
        with,
        with_size,
        with_count,
        without,
        without_size,
        without_count,
    })
}

/// The seconds each one-member add, then each one-member remove, took to be answered; the outbox
/// is drained after each.
async fn one_member_changes(
    scim: &ScimBed,
    url: &str,
    extra_ids: &[String],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut adds = Vec::with_capacity(OPS);
    for id in extra_ids {
        adds.push(
            send_patch(
                &scim.client,
                url,
                patch("add", "members", Some(json!([{ "value": id }]))),
            )
            .await?,
        );
        scim.bed.drain(Duration::from_millis(1), None).await?;
    }
    let mut removes = Vec::with_capacity(OPS);
    for id in extra_ids {
        // Entra ID's shape for a removal; Okta sends the same with a value list.
        let path = format!("members[value eq \"{id}\"]");
        removes.push(send_patch(&scim.client, url, patch("remove", &path, None)).await?);
        scim.bed.drain(Duration::from_millis(1), None).await?;
    }
    Ok((adds, removes))
}

/// `READS` GETs of the group with `query`: their times, and the size and member count of the last.
async fn read_group(
    client: &reqwest::Client,
    url: &str,
    query: &str,
) -> anyhow::Result<(Option<Summary>, usize, usize)> {
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
    Ok((telemetry::summarize(times), size, count))
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
