//! The delivery sections of `latchkey bench`: `drain` (a mass termination drained at the vendor's
//! rate limit, against the floor of N / R) and `leaver` (single leavers, trigger -> vendor
//! confirmed).

use super::{Bed, BenchArgs, PEOPLE_PER_LOCK, SETUP_RATE, bar, ms, person_row, prepare, start_sim};
use crate::engine::FeedReport;
use crate::model::Action;
use crate::store;
use crate::telemetry::{self, Summary};
use anyhow::{Context, bail};
use latchkey_sim::{LoggedRequest, SimServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most arrivals inside any rolling one-second window (the log is in arrival order).
pub(super) fn max_in_any_second(log: &[LoggedRequest]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for (hi, r) in log.iter().enumerate() {
        while r.at.saturating_sub(log[lo].at) >= Duration::from_secs(1) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Requests in each whole second from the first: where a drain falls behind its rate.
/// Requests in each second of the drain; with `method`, only those (the read-backs are GETs).
fn per_second(log: &[LoggedRequest], method: Option<&str>) -> String {
    let Some(first) = log.first() else {
        return String::new();
    };
    let mut counts: Vec<usize> = Vec::new();
    for r in log.iter().filter(|r| method.is_none_or(|m| r.method == m)) {
        let second = r.at.saturating_sub(first.at).as_secs() as usize;
        if counts.len() <= second {
            counts.resize(second + 1, 0);
        }
        counts[second] += 1;
    }
    counts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn by_method(log: &[LoggedRequest]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for r in log {
        *m.entry(r.method.as_str()).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn by_status(log: &[LoggedRequest]) -> String {
    let mut m: BTreeMap<u16, usize> = BTreeMap::new();
    for r in log {
        *m.entry(r.status).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) struct DrainFigures {
    pub(super) wall: f64,
    pub(super) command_ratio: f64,
    pub(super) request_ratio: f64,
    pub(super) ok: bool,
}

pub(super) async fn mass_termination(args: &BenchArgs, dir: &Path) -> anyhow::Result<DrainFigures> {
    let n = args.revocations;
    let rate = args.rate.max(1);
    let burst = args.burst.unwrap_or(rate / 10).max(1);
    println!("== 1. mass termination drain ==");
    println!(
        "  {n} people, one grant each, {} locks; connector concurrency {}",
        n.div_ceil(PEOPLE_PER_LOCK).max(1),
        args.concurrency
    );
    prepare(dir, n)?;
    let server = start_sim().await?;
    let keys: Vec<String> = (0..n).map(|i| format!("B{i:06}")).collect();
    issue_everyone(args, dir, &server, &keys).await?;

    // The measurement: the same store reopened with the rate limit under test.
    let bed = Bed::open(dir, &server.base_url(), (rate, burst), args.concurrency).await?;
    let drained = terminate_everyone(&bed, dir, &server, &keys).await?;
    let figures = drained.print_figures(n, rate, burst);
    print_stages(&bed, "  revocation stages in the drain").await?;
    bed.close().await?;
    server.shutdown().await;
    Ok(figures)
}

/// Set-up: issue everyone's grant under a limit that is not the subject of the measurement.
async fn issue_everyone(
    args: &BenchArgs,
    dir: &Path,
    server: &SimServer,
    keys: &[String],
) -> anyhow::Result<()> {
    let n = keys.len();
    let bed = Bed::open(dir, &server.base_url(), SETUP_RATE, args.concurrency).await?;
    let rows: Vec<String> = keys.iter().map(|k| person_row(k, "Active")).collect();
    let t = Instant::now();
    let report = bed.feed(dir, "hr-0001.csv", &rows).await?;
    let applied = t.elapsed();
    let b = bar(report.issues as usize, "issuing   ");
    bed.drain(Duration::from_millis(50), Some(&b)).await?;
    b.finish_and_clear();
    let setup = t.elapsed().as_secs_f64();
    let (issued, dead) = bed.outcome(Action::Issue).await?;
    let setup_requests = server.stats().requests;
    println!(
        "  set-up: {issued} grants issued ({dead} dead) in {setup:.2} s under {} req/s \
         (feed apply {:.2} s; {setup_requests} requests, {:.0} req/s, {:.0} issues/s)",
        SETUP_RATE.0,
        applied.as_secs_f64(),
        setup_requests as f64 / setup,
        issued as f64 / setup
    );
    if issued != n as i64 || dead != 0 {
        bail!("set-up did not issue every grant: {issued} of {n} issued, {dead} dead");
    }
    bed.close().await
}

/// What the measured drain left behind: the feed's report and timings, the requests the vendor
/// saw during it, and the revokes' outcome (done, dead).
struct Drained {
    report: FeedReport,
    applied: f64,
    wall: f64,
    log: Vec<LoggedRequest>,
    revoked: i64,
    dead: i64,
}

/// One feed terminates everyone; the outbox is drained under the limit being measured.
async fn terminate_everyone(
    bed: &Bed,
    dir: &Path,
    server: &SimServer,
    keys: &[String],
) -> anyhow::Result<Drained> {
    let seq0 = server.requests().len();
    let rows: Vec<String> = keys.iter().map(|k| person_row(k, "Terminated")).collect();
    let b = bar(keys.len(), "revoking  ");
    let t = Instant::now();
    let report = bed.feed(dir, "hr-0002.csv", &rows).await?;
    let applied = t.elapsed().as_secs_f64();
    b.set_length(report.revokes);
    bed.drain(Duration::from_millis(20), Some(&b)).await?;
    let wall = t.elapsed().as_secs_f64();
    b.finish_and_clear();
    let log: Vec<LoggedRequest> = server.requests().into_iter().skip(seq0).collect();
    let (revoked, dead) = bed.outcome(Action::Revoke).await?;
    Ok(Drained {
        report,
        applied,
        wall,
        log,
        revoked,
        dead,
    })
}

impl Drained {
    /// The drain set against its floors (N / R in commands, requests / R in HTTP requests), printed;
    /// the figures for the summary returned.
    fn print_figures(&self, n: usize, rate: u32, burst: u32) -> DrainFigures {
        let (log, wall) = (&self.log, self.wall);
        let requests = log.len();
        let floor = n as f64 / f64::from(rate);
        let request_floor = requests as f64 / f64::from(rate);
        let peak = max_in_any_second(log);
        let sent_for = log
            .last()
            .map_or(0.0, |l| l.at.saturating_sub(log[0].at).as_secs_f64());
        println!(
            "  feed: {} leavers -> {} revokes enqueued; feed apply took {:.2} s (the drain ran alongside)",
            self.report.leavers, self.report.revokes, self.applied
        );
        println!(
            "  revocations confirmed       {} ({} dead letters)",
            self.revoked, self.dead
        );
        println!("  rate limit R                {rate} req/s, burst {burst}");
        println!("  wall time                   {wall:.2} s (feed apply -> outbox empty)");
        println!("  floor in commands  N/R      {floor:.2} s");
        println!(
            "  ratio wall / (N/R)          {:.3}   (a revoke is more than one request: see below)",
            wall / floor
        );
        println!(
            "  HTTP requests in the drain  {requests} ({}), {:.2} per revocation",
            by_method(log),
            requests as f64 / n.max(1) as f64
        );
        println!("  responses                   {}", by_status(log));
        println!("  floor in requests  req/R    {request_floor:.2} s");
        println!(
            "  ratio wall / (req/R)        {:.3}   (the limiter's own floor; 1.0 is the best possible)",
            wall / request_floor
        );
        println!(
            "  first to last request       {sent_for:.2} s, {:.0} req/s on average",
            requests as f64 / sent_for.max(f64::EPSILON)
        );
        println!(
            "  most requests in any second {peak} (limit R + burst = {})",
            u64::from(rate) + u64::from(burst)
        );
        println!("  requests in each second     {}", per_second(log, None));
        println!(
            "  read-backs (GET) in each    {}",
            per_second(log, Some("GET"))
        );
        DrainFigures {
            wall,
            command_ratio: wall / floor,
            request_ratio: wall / request_floor,
            ok: self.revoked == n as i64
                && self.dead == 0
                && peak as u64 <= u64::from(rate) + u64::from(burst),
        }
    }
}

/// The revokes' latency by stage, as a table between blank lines.
async fn print_stages(bed: &Bed, title: &str) -> anyhow::Result<()> {
    let stages = telemetry::latency_report(bed.app.store(), Action::Revoke).await?;
    println!();
    print!("{}", telemetry::render_table(title, &stages));
    println!();
    Ok(())
}

pub(super) struct LeaverFigures {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) ok: bool,
}

pub(super) async fn single_leaver(args: &BenchArgs, dir: &Path) -> anyhow::Result<LeaverFigures> {
    let k = args.leavers.max(1);
    let people = args.population.unwrap_or(300).max(k);
    println!("== 2. single leaver, nothing queued ==");
    println!(
        "  {people} people in their own store, {} locks; {k} leavers one at a time, each its own feed",
        people.div_ceil(PEOPLE_PER_LOCK).max(1)
    );
    prepare(dir, people)?;
    let server = start_sim().await?;
    // The limit is set far above what one leaver needs, so it never delays a request.
    let bed = Bed::open(dir, &server.base_url(), SETUP_RATE, args.concurrency).await?;
    let keys: Vec<String> = (0..people).map(|i| format!("L{i:06}")).collect();
    let mut rows: Vec<String> = keys.iter().map(|k| person_row(k, "Active")).collect();
    issue_all(&bed, dir, &rows).await?;
    let client = time_leavers(&bed, dir, &keys[..k], &mut rows).await?;
    let (revoked, dead) = bed.outcome(Action::Revoke).await?;
    let s = print_latencies(&bed, (revoked, dead), people, client).await?;
    print_simulator(&server);
    print_stages(&bed, "  single-leaver revocation stages").await?;
    bed.close().await?;
    server.shutdown().await;
    Ok(LeaverFigures {
        p50: s.p50,
        p99: s.p99,
        ok: revoked == k as i64 && dead == 0,
    })
}

/// Everyone joins in one feed; their grants are issued before any leaver is timed.
async fn issue_all(bed: &Bed, dir: &Path, rows: &[String]) -> anyhow::Result<()> {
    let report = bed.feed(dir, "hr-00000.csv", rows).await?;
    bed.drain(Duration::from_millis(20), None).await?;
    let (issued, _) = bed.outcome(Action::Issue).await?;
    if issued != report.issues as i64 {
        bail!(
            "set-up did not issue every grant: {issued} of {}",
            report.issues
        );
    }
    Ok(())
}

/// Each leaver terminated in a feed of its own, one after another: the seconds each took, client
/// side.
async fn time_leavers(
    bed: &Bed,
    dir: &Path,
    leavers: &[String],
    rows: &mut [String],
) -> anyhow::Result<Vec<f64>> {
    let b = bar(leavers.len(), "leavers   ");
    // Client-side: from handing the feed to the engine until the outbox is empty again. This adds the
    // feed's parse and diff (and the poll interval) to what the commands' own timestamps show.
    let mut client = Vec::with_capacity(leavers.len());
    for (i, key) in leavers.iter().enumerate() {
        rows[i] = person_row(key, "Terminated");
        let t = Instant::now();
        let r = bed
            .feed(dir, &format!("hr-{:05}.csv", i + 1), rows)
            .await
            .with_context(|| format!("leaver {key}"))?;
        if r.revokes != 1 {
            bail!("leaver {key}: {} revokes enqueued, expected 1", r.revokes);
        }
        // A short poll: it bounds only this loop's pace, not the figures, which come from the store.
        bed.drain(Duration::from_millis(1), None).await?;
        client.push(t.elapsed().as_secs_f64());
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(client)
}

/// The leavers' latencies, printed: trigger -> vendor confirmed from the store (returned), and the
/// client-side times of `time_leavers`.
async fn print_latencies(
    bed: &Bed,
    (revoked, dead): (i64, i64),
    people: usize,
    client: Vec<f64>,
) -> anyhow::Result<Summary> {
    let e2e: Vec<f64> = store::completed_commands(bed.app.store().pool())
        .await?
        .iter()
        .filter(|c| c.action == Action::Revoke)
        .filter_map(|c| telemetry::stages(c).map(|s| s[4]))
        .collect();
    let Some(s) = telemetry::summarize(e2e) else {
        bail!("no revoke was confirmed");
    };
    let c = telemetry::summarize(client);
    println!("  revocations confirmed       {revoked} ({dead} dead letters)");
    println!(
        "  trigger -> vendor confirmed p50 {}  p90 {}  p99 {}  max {}  (n = {})",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max),
        s.count
    );
    if let Some(c) = &c {
        println!(
            "  feed handed in -> outbox empty (client side, incl. parse/diff of {people} rows): \
             p50 {}  p99 {}  max {}",
            ms(c.p50),
            ms(c.p99),
            ms(c.max)
        );
    }
    Ok(s)
}

/// What the simulator saw over the whole section.
fn print_simulator(server: &SimServer) {
    let stats = server.stats();
    println!(
        "  simulator: {} requests in all ({}), most in any second {}",
        stats.requests,
        stats
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        stats.max_requests_in_any_second
    );
}
