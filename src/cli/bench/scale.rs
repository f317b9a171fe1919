//! Scale sections of `latchkey bench` beside `ingest` and `backlog`:
//!
//! - `termination`: a store of `--population` people (100,000 by default) of whom 100 hold a door;
//!   the next HR file terminates those 100. Each revocation's file landing -> vendor confirmed,
//!   p50 and p99: the whole file is read and compared, so the figure grows with the population
//!   if anything on the way scans.
//! - `memory`: the process's resident memory after loading `--population` people, and after nine
//!   more full files (each changing 1 % of the people), with the vendor held back: it must stay
//!   under the target and flat, not grow with every file.

use super::{Bed, SETUP_RATE, ms, person_row, row, start_sim};
use crate::model::Action;
use crate::model::CommandStatus;
use crate::store;
use anyhow::bail;
use std::path::Path;
use std::time::{Duration, Instant};

const LEAVERS: usize = 100;
const TERMINATION_TARGET_SECS: f64 = 1.0;
const RSS_TARGET_MIB: f64 = 200.0;

/// A door only for the people whose key starts with `T` (the leavers to be); everyone else is in
/// the store and in every file, holding nothing.
fn leaver_templates() -> &'static str {
    r#"version = 1

[[templates]]
name = "bench-door"
when = "key[:1] == 'T'"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "nuki"
target = "{{ 5000 + (key[1:] | int) % 10 }}"
"#
}

/// Section `termination`. Returns whether it ran to the end.
pub(super) async fn termination(args: &super::BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let n = args.population.unwrap_or(100_000).max(LEAVERS * 2);
    println!("== HR termination file of {LEAVERS} leavers among {n} people ==");
    std::fs::create_dir_all(dir.join("feeds"))?;
    std::fs::write(dir.join("templates.toml"), leaver_templates())?;
    let server = start_sim().await?;
    let bed = Bed::open(dir, &server.base_url(), SETUP_RATE, args.concurrency).await?;
    let mut rows: Vec<String> = (0..n - LEAVERS)
        .map(|i| person_row(&format!("G{i:07}"), "Active"))
        .collect();
    let leavers: Vec<String> = (0..LEAVERS).map(|i| format!("T{i:07}")).collect();
    rows.extend(leavers.iter().map(|k| person_row(k, "Active")));
    let t = Instant::now();
    let joined = bed.feed(dir, "hr-0001.csv", &rows).await?;
    bed.drain(Duration::from_millis(20), None).await?;
    println!(
        "  set-up: {} people loaded, {} doors issued in {:.1} s",
        joined.joiners,
        joined.issues,
        t.elapsed().as_secs_f64()
    );
    let first = rows.len() - LEAVERS;
    for (i, k) in leavers.iter().enumerate() {
        rows[first + i] = person_row(k, "Terminated");
    }
    let t = Instant::now();
    let report = bed.feed(dir, "hr-0002.csv", &rows).await?;
    let applied = t.elapsed().as_secs_f64();
    if report.revokes != LEAVERS as u64 {
        bail!("{} revokes enqueued, expected {LEAVERS}", report.revokes);
    }
    bed.drain(Duration::from_millis(2), None).await?;
    let latencies: Vec<f64> = store::completed_commands(bed.app.store().pool())
        .await?
        .into_iter()
        .filter(|c| c.action == Action::Revoke)
        .filter_map(|c| c.confirmed_at.map(|at| (at - c.trigger_at) as f64 / 1e6))
        .collect();
    bed.close().await?;
    server.shutdown().await;
    let Some(s) = crate::telemetry::summarize(latencies) else {
        bail!("no revocation was confirmed");
    };
    println!(
        "  file of {n} rows applied in {applied:.2} s; file landed -> vendor confirmed p50 {} p99 {} max {} (n = {})",
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        s.count
    );
    row(
        &format!("HR termination file -> confirmed p99, {LEAVERS} leavers of {n}"),
        ms(s.p99),
        "< 1 s",
        TERMINATION_TARGET_SECS / s.p99.max(f64::EPSILON),
    );
    println!();
    Ok(s.count == LEAVERS)
}

/// This process's resident set size in MiB (Linux), or None.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Section `memory`. Returns whether it ran to the end.
pub(super) async fn memory(args: &super::BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let n = args.population.unwrap_or(100_000).max(100);
    println!("== resident memory across ten HR files of {n} people (vendor held back) ==");
    super::prepare(dir, n)?;
    let server = start_sim().await?;
    let bed = Bed::open_full(
        dir,
        &server.base_url(),
        SETUP_RATE,
        args.concurrency,
        "",
        false,
    )
    .await?;
    let Some(start) = rss_mib() else {
        println!("  resident memory is not readable here (/proc/self/status): skipped");
        return Ok(true);
    };
    let mut after = Vec::new();
    for file in 0..10 {
        // Each file moves a different 1 % of the people to another job title.
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let r = person_row(&format!("G{i:07}"), "Active");
                if file > 0 && i % 100 == file {
                    r.replace(",analyst,", ",senior analyst,")
                } else {
                    r
                }
            })
            .collect();
        bed.feed(dir, &format!("hr-{file:04}.csv"), &rows).await?;
        let rss = rss_mib().unwrap_or_default();
        println!("  after file {:>2}: {rss:.0} MiB resident", file + 1);
        after.push(rss);
    }
    bed.close().await?;
    server.shutdown().await;
    let loaded = after[0];
    let last = after[after.len() - 1];
    // Flat across feeds: the second file is the first that is compared with a full store (the
    // steady state); the first is a load into an empty one.
    let steady = after.get(1).copied().unwrap_or(loaded);
    let highest = after.iter().skip(1).copied().fold(steady, f64::max);
    println!("  (before the first file: {start:.0} MiB)");
    println!(
        "  files 2-10: {steady:.0} MiB after the second, {highest:.0} MiB at most, {last:.0} MiB after the tenth ({:+.0} MiB over eight more files)",
        last - steady
    );
    row(
        &format!("resident memory after loading {n} people"),
        format!("{loaded:.0} MiB"),
        "<= 200 MiB",
        RSS_TARGET_MIB / loaded.max(1.0),
    );
    row(
        "resident memory after nine more files",
        format!("{last:.0} MiB"),
        "<= 200, flat",
        (RSS_TARGET_MIB / highest.max(1.0)).min(steady / highest.max(1.0)),
    );
    println!();
    Ok(true)
}

/// The reference SCIM server (`scim2-server`, in memory) is run side by side when it
/// is installed: `k` creates by `clients` clients at once, writes per second. None when it is not.
pub(super) async fn reference_scim_writes(k: usize, clients: usize) -> anyhow::Result<Option<f64>> {
    use futures::StreamExt;
    let program = std::env::var("LATCHKEY_BENCH_SCIM_REFERENCE").unwrap_or("scim2-server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = "reference-bench-token";
    let spawned = tokio::process::Command::new(&program)
        .args(["--port", &port.to_string(), "--bearer-token", token])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = spawned else {
        println!(
            "  reference: `{program}` is not installed (pip install scim2-server): not compared"
        );
        return Ok(None);
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = client
            .get(format!("{base}/ServiceProviderConfig"))
            .bearer_auth(token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!("reference SCIM server `{program}` did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..k)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/Users");
            async move {
                let resp = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&super::scim_user(&format!("R{i:06}")))
                    .send()
                    .await?;
                if resp.status() != reqwest::StatusCode::CREATED {
                    bail!("reference create: HTTP {}", resp.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(clients.max(1))
        .collect()
        .await;
    let secs = t.elapsed().as_secs_f64();
    let _ = child.kill().await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let per_second = k as f64 / secs.max(f64::EPSILON);
    println!(
        "  reference scim2-server (in memory): {k} creates in {secs:.2} s = {per_second:.0} writes/s"
    );
    Ok(Some(per_second))
}

/// The connector limit the two replicas share: 20 requests/s with a burst of 5.
const REPLICA_RATE: (u32, u32) = (20, 5);
/// Joiners in the feed the replicas deliver.
const REPLICA_PEOPLE: usize = 150;

/// Section `replicas` (PostgreSQL only, `--store-url`): two `latchkey run` processes of this
/// binary on one database share a connector limited to 20 requests/s with a burst of 5, while a
/// feed of joiners goes out: the busiest second at the vendor must stay within the one limit.
pub(super) async fn replicas(args: &super::BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    println!("== two replicas on one PostgreSQL database, connector limit 20/s burst 5 ==");
    if args.store_url.is_none() {
        println!("  needs PostgreSQL (--store-url): skipped");
        println!();
        return Ok(true);
    }
    super::prepare(dir, REPLICA_PEOPLE)?;
    let server = start_sim().await?;
    // Migrated here, before the replicas start.
    let bed = Bed::open_full(
        dir,
        &server.base_url(),
        REPLICA_RATE,
        args.concurrency,
        "",
        false,
    )
    .await?;
    let children = start_replicas(&dir.join("latchkey.toml"))?;
    let seq0 = server.requests().len();
    let text = joiners_feed();
    let t = Instant::now();
    // Landed whole: written beside the drop folder, then moved in.
    let part = dir.join("hr-0001.csv.part");
    std::fs::write(&part, text)?;
    std::fs::rename(&part, dir.join("feeds").join("hr-0001.csv"))?;
    wait_until_delivered(bed.app.store().pool()).await?;
    let wall = t.elapsed().as_secs_f64();
    for mut c in children {
        let _ = c.kill().await;
    }
    let log: Vec<latchkey_sim::LoggedRequest> = server.requests().into_iter().skip(seq0).collect();
    let busiest = super::max_in_any_second(&log);
    bed.close().await?;
    server.shutdown().await;
    println!(
        "  {REPLICA_PEOPLE} grants delivered by two replicas in {wall:.1} s: {} requests, {:.1} req/s, busiest second {busiest}",
        log.len(),
        log.len() as f64 / wall.max(f64::EPSILON)
    );
    let limit = f64::from(REPLICA_RATE.0 + REPLICA_RATE.1);
    row(
        "two replicas, limit 20/s burst 5: busiest second at the vendor",
        format!("{busiest} req"),
        "<= 25",
        limit / (busiest as f64).max(1.0),
    );
    println!();
    Ok(busiest as f64 <= limit)
}

/// Two `latchkey run` processes of this binary on the configuration at `config`, each with its
/// own instance name and HTTP port; killed when dropped.
fn start_replicas(config: &Path) -> anyhow::Result<Vec<tokio::process::Child>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..2 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        children.push(
            tokio::process::Command::new(&exe)
                .args(["run", "--config"])
                .arg(config)
                .env(super::TOKEN_VAR, super::SIM_TOKEN)
                .env("LATCHKEY_LOG", "warn")
                .env("LATCHKEY_INSTANCE", format!("bench-replica{i}"))
                .env("LATCHKEY_STORE__REPLICAS", "2")
                .env("LATCHKEY_HTTP__LISTEN", format!("127.0.0.1:{port}"))
                .env("LATCHKEY_ENGINE__TICK_MILLIS", "50")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    Ok(children)
}

/// The HR file of `REPLICA_PEOPLE` joiners, header first.
fn joiners_feed() -> String {
    let rows: Vec<String> = (0..REPLICA_PEOPLE)
        .map(|i| person_row(&format!("P{i:06}"), "Active"))
        .collect();
    let mut text = String::from(super::HEADER);
    text.push('\n');
    for r in &rows {
        text.push_str(r);
        text.push('\n');
    }
    text
}

/// Poll until every joiner's grant is done and nothing is open; at most 600 s.
async fn wait_until_delivered(pool: &sqlx::AnyPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = store::command_counts(pool)
            .await?
            .into_iter()
            .filter(|(_, status, _, _)| *status == CommandStatus::Done)
            .map(|(_, _, _, n)| n)
            .sum();
        if done >= REPLICA_PEOPLE as i64 && store::open_commands(pool).await? == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the replicas did not deliver {REPLICA_PEOPLE} grants within 600 s ({done} done)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
