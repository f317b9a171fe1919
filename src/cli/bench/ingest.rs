//! Scale sections of `latchkey bench` (the scale targets):
//!
//! - `ingest`: the initial load of an HR feed of `--population` people (100,000 by default) with
//!   the vendor held back (no dispatcher): store writes only. Measured at a tenth of the size too,
//!   so a rate that falls with size (a query that scans) shows.
//! - `backlog`: one leaver at a time with `--backlog` issues (20,000) queued on the same rate-limited
//!   connector, against the same leavers with nothing queued: revocation first (invariant 3) means
//!   the ratio stays near 1.

use super::{Bed, SETUP_RATE, bar, ms, person_row, prepare, row, start_sim};
use crate::model::Action;
use crate::model::GrantState;
use crate::store;
use crate::telemetry;
use anyhow::bail;
use std::path::Path;
use std::time::{Duration, Instant};

/// Issue 12's targets.
const INGEST_TARGET: f64 = 10_000.0;
const BACKLOG_RATIO_TARGET: f64 = 1.5;

/// Load `n` people into a fresh store with the vendor held back; identities per second.
async fn load(args: &super::BenchArgs, dir: &Path, n: usize) -> anyhow::Result<f64> {
    prepare(dir, n)?;
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
    let rows: Vec<String> = (0..n)
        .map(|i| person_row(&format!("G{i:07}"), "Active"))
        .collect();
    let t = Instant::now();
    let report = bed.feed(dir, "hr-0001.csv", &rows).await?;
    let secs = t.elapsed().as_secs_f64();
    if report.joiners != n {
        bail!("{} joiners of {n}: the load feed is wrong", report.joiners);
    }
    let per_second = n as f64 / secs.max(f64::EPSILON);
    println!(
        "  {n:>7} people: {} joiners, {} issues enqueued in {secs:.2} s = {per_second:.0} identities/s",
        report.joiners, report.issues
    );
    bed.close().await?;
    server.shutdown().await;
    Ok(per_second)
}

/// Section `ingest`. Returns whether it ran to the end.
pub(super) async fn initial_load(args: &super::BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let n = args.population.unwrap_or(100_000).max(10);
    println!("== initial HR load (store writes, vendor held back) ==");
    let small = load(args, &dir.join("tenth"), n / 10).await?;
    let full = load(args, &dir.join("full"), n).await?;
    row(
        &format!("initial load of a {n}-person HR feed"),
        format!("{full:.0} ids/s"),
        ">= 10,000/s",
        full / INGEST_TARGET,
    );
    row(
        &format!("linearity: rate at {n} / rate at {}", n / 10),
        format!("{:.2}", full / small),
        "~1 (linear)",
        full / small,
    );
    println!();
    Ok(true)
}

/// Terminate `keys` (rows `first..` of the feed) one at a time, each its own feed of `rows`,
/// waiting for each revoke to be confirmed. Returns each revoke's detection -> vendor confirmed
/// time, in seconds: from detection, not the trigger, so the larger feed's parse time does not
/// count against the backlog.
async fn leavers_one_by_one(
    bed: &Bed,
    dir: &Path,
    rows: &mut [String],
    first: usize,
    keys: &[String],
    feed_no: &mut usize,
) -> anyhow::Result<Vec<f64>> {
    let pool = bed.app.store().pool().clone();
    // Polled every 2 ms: the leaver's own rows by key, not a count over the whole outbox (which,
    // with 20,000 commands in it, would cost the machine more than the leaver does).
    let gone = |key: String, pool: sqlx::AnyPool| async move {
        let mut conn = pool.acquire().await?;
        let grants = store::grants_of(&mut conn, &key).await?;
        anyhow::Ok(grants.iter().all(|g| g.observed == GrantState::Absent))
    };
    for (i, key) in keys.iter().enumerate() {
        rows[first + i] = person_row(key, "Terminated");
        *feed_no += 1;
        let r = bed
            .feed(dir, &format!("hr-{:05}.csv", *feed_no), rows)
            .await?;
        if r.revokes != 1 {
            bail!("leaver {key}: {} revokes enqueued, expected 1", r.revokes);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !gone(key.clone(), pool.clone()).await? {
            if Instant::now() > deadline {
                bail!("leaver {key}: revoke not confirmed within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut done: Vec<store::CommandRow> = store::completed_commands(&pool)
        .await?
        .into_iter()
        .filter(|c| c.action == Action::Revoke && keys.iter().any(|k| c.identity_key == *k))
        .filter(|c| c.confirmed_at.is_some())
        .collect();
    done.sort_by_key(|c| std::cmp::Reverse(c.confirmed_at.unwrap_or(0) - c.detected_at));
    print_slowest(&done[..done.len().min(3)]);
    Ok(done
        .iter()
        .map(|c| (c.confirmed_at.unwrap_or(0) - c.detected_at).max(0) as f64 / 1e6)
        .collect())
}

/// Where the slowest revokes spent their time: in the outbox (detected -> first request sent),
/// or between the vendor request and its confirmation.
fn print_slowest(slowest: &[store::CommandRow]) {
    let at = |t: Option<i64>, from: i64| t.map_or("-".to_string(), |t| ms((t - from) as f64 / 1e6));
    for c in slowest {
        println!(
            "    slowest {} (detected {}): first request sent after {}, vendor write answered after {}, confirmed after {} ({} attempts)",
            c.identity_key,
            crate::clock::from_micros(c.detected_at).format("%H:%M:%S%.3f"),
            at(c.first_attempt_at, c.detected_at),
            at(c.dispatched_at, c.detected_at),
            at(c.confirmed_at, c.detected_at),
            c.attempts
        );
    }
}

/// Section `backlog`. Returns whether it ran to the end.
pub(super) async fn leaver_behind_backlog(
    args: &super::BenchArgs,
    dir: &Path,
) -> anyhow::Result<bool> {
    let queued = args.backlog;
    let k = args.leavers.clamp(1, 50);
    let rate = args.rate.max(1);
    let burst = args.burst.unwrap_or(rate / 10).max(1);
    let people = 2 * k + 100;
    println!("== one leaver with {queued} issues queued / with nothing queued ==");
    println!(
        "  {people} people holding grants; {k} leavers unloaded, then {k} with {queued} joiners' issues \
         queued; {rate} req/s, burst {burst}, concurrency {} (+1 reserved for revokes)",
        args.concurrency
    );
    prepare(dir, people + queued)?;
    let server = start_sim().await?;
    let bed = Bed::open(dir, &server.base_url(), SETUP_RATE, args.concurrency).await?;
    let keys: Vec<String> = (0..people).map(|i| format!("K{i:06}")).collect();
    let mut rows: Vec<String> = keys.iter().map(|k| person_row(k, "Active")).collect();
    bed.feed(dir, "hr-00000.csv", &rows).await?;
    bed.drain(Duration::from_millis(20), None).await?;
    bed.close().await?;

    // The same store under the rate limit being measured.
    let bed = Bed::open(dir, &server.base_url(), (rate, burst), args.concurrency).await?;
    let mut feed_no = 0;
    let unloaded = leavers_one_by_one(&bed, dir, &mut rows, 0, &keys[..k], &mut feed_no).await?;

    // Joiners queue their issues; the lane works on them at the rate limit meanwhile.
    let b = bar(queued, "queueing  ");
    rows.extend((0..queued).map(|i| person_row(&format!("Q{i:06}"), "Active")));
    feed_no += 1;
    let r = bed
        .feed(dir, &format!("hr-{feed_no:05}.csv"), &rows)
        .await?;
    b.finish_and_clear();
    let loaded = leavers_one_by_one(&bed, dir, &mut rows, k, &keys[k..2 * k], &mut feed_no).await?;
    let left = store::open_commands(bed.app.store().pool()).await?;
    println!(
        "  {} issues enqueued by the joiners; {left} commands still open after the last leaver",
        r.issues
    );
    let (Some(u), Some(l)) = (telemetry::summarize(unloaded), telemetry::summarize(loaded)) else {
        bail!("no revoke was confirmed");
    };
    println!(
        "  detected -> vendor confirmed, unloaded: p50 {}  p99 {}; with the backlog: p50 {}  p99 {}",
        ms(u.p50),
        ms(u.p99),
        ms(l.p50),
        ms(l.p99)
    );
    row(
        &format!("one leaver's p99 with {queued} issues queued / unloaded"),
        format!("{:.2}", l.p99 / u.p99.max(f64::EPSILON)),
        "<= 1.5",
        BACKLOG_RATIO_TARGET / (l.p99 / u.p99.max(f64::EPSILON)),
    );
    println!();
    bed.close().await?;
    server.shutdown().await;
    // The backlog must still have been there when the last leaver went.
    Ok(left > 0)
}
