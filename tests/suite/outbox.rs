//! The outbox under load and under crashes, against every store backend: revocations overtake a
//! queue of issues, the vendor never sees more than the configured rate, and a daemon killed at
//! random moments still ends with exactly the access policy wants, without duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::model::Action;
use latchkey::model::CommandStatus;
use latchkey::model::GrantState;
use latchkey::store::{self, Store};
use latchkey_sim::{self as sim, LoggedRequest, NukiOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Run `body` once per backend, each in its own directory and database, with this connector rate
/// limit (per second, burst).
macro_rules! each_backend {
    ($rate:expr, |$h:ident| $body:block) => {{
        let tmp = tempfile::tempdir().unwrap();
        for (name, url) in backends(tmp.path()).await {
            let dir = tmp.path().join(&name);
            #[allow(unused_mut)]
            let mut $h = Harness::with_rate(&name, &url, &dir, NukiOptions::default(), $rate).await;
            eprintln!("-- backend {name}");
            $body
        }
    }};
}

const SITES: [&str; 3] = ["berlin", "london", "new-york"];
const DEPTS: [&str; 5] = [
    "engineering",
    "sales",
    "facilities",
    "finance",
    "operations",
];

/// A person of the generated workforce, spread over every site and department so that no lock
/// comes near the vendor's 200 authorisations.
#[derive(Debug, Clone)]
struct Person {
    key: String,
    dept: &'static str,
    site: &'static str,
}

impl Person {
    /// Someone in Berlin's finance department: one door, `berlin-finance`.
    fn berlin_finance(key: impl Into<String>) -> Self {
        Person {
            key: key.into(),
            dept: "finance",
            site: "berlin",
        }
    }

    fn row(&self) -> String {
        employee(&self.key, self.dept, self.site)
    }

    fn terminated(&self) -> String {
        row(
            &self.key,
            self.dept,
            "analyst",
            "employee",
            self.site,
            "Terminated",
            "2020-01-01",
            "2025-06-30",
            "",
        )
    }

    /// The doors the Nuki-only test templates give an analyst employee.
    fn doors(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::from([format!("{}-{}", self.site, self.dept)]);
        if self.dept == "engineering" {
            out.insert(format!("{}-lab", self.site));
        }
        if self.dept == "facilities" {
            out.insert(format!("{}-plant-room", self.site));
        }
        out
    }

    fn email(&self) -> String {
        format!("{}@example.com", self.key.to_lowercase())
    }
}

fn staff(prefix: &str, n: usize) -> Vec<Person> {
    (0..n)
        .map(|i| Person {
            key: format!("{prefix}{i:05}"),
            site: SITES[i % SITES.len()],
            dept: DEPTS[(i / SITES.len()) % DEPTS.len()],
        })
        .collect()
}

/// The smartlock id the Nuki-only test configuration maps a target to.
fn lock_of(target: &str) -> i64 {
    let demo = std::fs::read_to_string(fixture_config()).unwrap();
    let line = demo
        .lines()
        .find(|l| l.starts_with(&format!("\"{target}\"")))
        .unwrap_or_else(|| panic!("no lock for {target}"));
    line.split('"').nth(3).unwrap().parse().unwrap()
}

fn is_issue_put(r: &LoggedRequest) -> bool {
    r.method == "PUT" && r.path.starts_with("/smartlock/") && r.path.ends_with("/auth")
}

fn is_delete_on(r: &LoggedRequest, lock: i64) -> bool {
    r.method == "DELETE" && r.path.starts_with(&format!("/smartlock/{lock}/auth/"))
}

/// Where in `log` the leaver's authorisation on `lock` was deleted.
fn leavers_delete(log: &[LoggedRequest], lock: i64) -> usize {
    log.iter()
        .position(|r| is_delete_on(r, lock))
        .expect("the leaver's authorisation was never deleted")
}

/// Commands of one action in one status, over the whole outbox.
async fn count(store: &Store, status: &str, action: Action) -> i64 {
    store::command_counts(store.pool())
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, s, a, _)| s.as_str() == status && a == action.as_str())
        .map(|(_, _, _, n)| n)
        .sum()
}

async fn observed(h: &Harness, key: &str, target: &str) -> Option<String> {
    let mut conn = h.app.store().pool().acquire().await.unwrap();
    store::grant(&mut conn, key, "nuki", target)
        .await
        .unwrap()
        .map(|g| g.observed.to_string())
}

/// Poll `cond` every 20 ms until it holds; fail after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leaver whose termination lands behind 5,000 queued issues (at a 50/s limit) is revoked before
/// any of them reaches the vendor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_overtakes_a_full_queue_of_issues() {
    each_backend!((50, 1), |h| {
        let leaver = Person::berlin_finance("L0001");
        h.feed(&[leaver.row()]).await;
        h.drain().await;
        assert!(h.holds(&leaver.key, "berlin-finance"));

        // 5,000 joiners queue their issues; nothing is delivered yet.
        let joiners = staff("J", 5000);
        let mut rows: Vec<String> = joiners.iter().map(Person::row).collect();
        rows.push(leaver.row());
        let r = h.feed(&rows).await;
        let expected_issues: usize = joiners.iter().map(|p| p.doors().len()).sum();
        assert_eq!(
            (r.joiners, r.issues),
            (5000, expected_issues as u64),
            "{} {r:?}",
            h.backend
        );
        // Then the leaver's termination arrives, queued behind every one of those issues.
        rows.pop();
        rows.push(leaver.terminated());
        let r = h.feed(&rows).await;
        assert_eq!(
            (r.leavers, r.issues, r.revokes),
            (1, 0, 1),
            "{} {r:?}",
            h.backend
        );
        let store = h.app.store().clone();
        assert_eq!(
            count(&store, "pending", Action::Issue).await,
            expected_issues as i64
        );

        let mark = h.sim.requests().len();
        let d = h.dispatcher();
        let connector = h.app.connectors.get("nuki").unwrap().clone();
        for _ in 0..10 {
            if observed(&h, &leaver.key, "berlin-finance").await.as_deref() == Some("absent") {
                break;
            }
            assert!(d.step(&connector, "test-worker").await.unwrap());
        }
        assert_eq!(
            observed(&h, &leaver.key, "berlin-finance").await.as_deref(),
            Some("absent"),
            "the revoke was not carried out within 10 commands"
        );
        assert!(!h.holds(&leaver.key, "berlin-finance"));
        // Then the queue moves on to the issues.
        for _ in 0..3 {
            assert!(d.step(&connector, "test-worker").await.unwrap());
        }

        let log = h.sim.requests();
        let after = &log[mark..];
        let lock = h.lock("berlin-finance");
        let delete = leavers_delete(after, lock);
        let first_put = after
            .iter()
            .position(is_issue_put)
            .expect("no issue reached the vendor after the revoke");
        assert!(
            delete < first_put,
            "{}: an issue (request {}) reached the vendor before the revoke (request {})",
            h.backend,
            after[first_put].seq,
            after[delete].seq
        );
        assert_eq!(
            count(&store, "done", Action::Revoke).await,
            1,
            "{}",
            h.backend
        );
    });
}

/// A worker before a backlog claims several commands at once; a revoke in that claim is written,
/// read back and confirmed before the first issue of the claim is written, so a leaver claimed
/// with a run of joiners does not wait for their writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_claimed_with_issues_is_confirmed_before_they_are_written() {
    each_backend!((1000, 50), |h| {
        let leaver = Person::berlin_finance("L0001");
        h.feed(&[leaver.row()]).await;
        h.drain().await;
        let joiners: Vec<Person> = (0..20)
            .map(|i| Person::berlin_finance(format!("J{i:05}")))
            .collect();
        let mut rows: Vec<String> = joiners.iter().map(Person::row).collect();
        rows.push(leaver.terminated());
        let r = h.feed(&rows).await;
        assert_eq!((r.joiners, r.revokes), (20, 1), "{} {r:?}", h.backend);

        let mark = h.sim.requests().len();
        let connector = h.app.connectors.get("nuki").unwrap().clone();
        let claimed = h
            .dispatcher()
            .step_up_to(&connector, "test-worker", false, 32)
            .await
            .unwrap();
        assert!(claimed > 1, "{}: one claim took {claimed}", h.backend);
        let log = h.sim.requests();
        let after = &log[mark..];
        let lock = h.lock("berlin-finance");
        let delete = leavers_delete(after, lock);
        // An issue's write begins by looking its person up; the revoke's read-back is the
        // listing of the lock that comes before any of that.
        let first_issue = after
            .iter()
            .position(|r| r.path.starts_with("/account/user") || is_issue_put(r))
            .expect("no issue of the claim reached the vendor");
        let read_back = after[delete..first_issue]
            .iter()
            .any(|r| r.method == "GET" && r.path == format!("/smartlock/{lock}/auth"));
        assert!(
            delete < first_issue && read_back,
            "{}: an issue's write (request {}) went before the revoke was read back: {:?}",
            h.backend,
            after[first_issue].seq,
            after
                .iter()
                .map(|r| (&r.method, &r.path))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            observed(&h, &leaver.key, "berlin-finance").await.as_deref(),
            Some("absent"),
            "{}",
            h.backend
        );
    });
}

/// A worker whose claim outlasts the command lease (a slow vendor) keeps its commands: their
/// leases are renewed while it works, so a second worker finds nothing to take over and no
/// authorisation is created twice (the simulator here accepts a second one and counts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_outlasts_its_lease_is_not_taken_over_while_it_is_carried_out() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let dir = tmp.path().join(&name);
        let mut h = Harness::builder(backend_of(&url), &url, &dir)
            .nuki(NukiOptions {
                allow_duplicates: true,
                ..NukiOptions::default()
            })
            .secret("LATCHKEY_ENGINE__LEASE_SECONDS", "1")
            .build()
            .await;
        let joiner = Person::berlin_finance("J0001");
        let issues = h.feed(&[joiner.row()]).await.issues;
        assert!(issues >= 1, "{name}");
        // Every request takes 0.6 s: the issue's four requests take well over its 1 s lease.
        h.sim.set_faults(latchkey_sim::Faults {
            latency_ms: (600, 600),
            ..Default::default()
        });
        let connector = h.app.connectors.get("nuki").unwrap().clone();
        let first = tokio::spawn({
            let (d, connector) = (h.dispatcher(), connector.clone());
            async move {
                d.step_up_to(&connector, "worker-a", false, 32)
                    .await
                    .unwrap()
            }
        });
        // Past the lease the claim was made with, by the dispatcher's clock, while the first
        // worker is still at the vendor.
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.clock.advance(chrono::Duration::milliseconds(1500));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let second = h.dispatcher().step(&connector, "worker-b").await.unwrap();
        assert!(
            !second,
            "{name}: a second worker took over a command still being carried out"
        );
        assert_eq!(
            first.await.unwrap() as u64,
            issues,
            "{name}: the first worker's claim"
        );
        h.sim.set_faults(latchkey_sim::Faults::none());
        h.drain().await;
        assert_eq!(
            h.sim.stats().duplicates_created,
            0,
            "{name}: an authorisation was created twice"
        );
        assert!(h.holds(&joiner.key, "berlin-finance"), "{name}");
    }
}

/// With the dispatcher running and draining issues at the vendor's pace, a termination waits only
/// for the commands already in the workers' hands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_overtakes_issues_while_the_dispatcher_runs() {
    each_backend!((50, 1), |h| {
        let leaver = Person::berlin_finance("L0001");
        h.feed(&[leaver.row()]).await;
        h.drain().await;
        assert!(h.holds(&leaver.key, "berlin-finance"));
        let lock = h.lock("berlin-finance");

        let joiners = staff("J", 300);
        let mut rows: Vec<String> = joiners.iter().map(Person::row).collect();
        rows.push(leaver.row());
        let r = h.feed(&rows).await;
        assert_eq!(r.joiners, 300, "{r:?}");

        let (stop, rx) = watch::channel(false);
        let running = tokio::spawn(h.dispatcher().run(rx));
        // Issues are flowing at the rate limit.
        wait_until(
            "issues to reach the vendor",
            Duration::from_secs(60),
            || {
                let n = h.sim.requests().iter().filter(|r| is_issue_put(r)).count();
                async move { n >= 8 }
            },
        )
        .await;

        rows.pop();
        rows.push(leaver.terminated());
        let before_feed = h.sim.requests().len();
        let r = h.feed(&rows).await;
        assert_eq!((r.leavers, r.revokes), (1, 1), "{r:?}");
        let mark = h.sim.requests().len();

        // The leaver is applied in the feed's first transaction, so the revoke can reach the
        // vendor before the rest of the feed is applied and `feed` returns.
        wait_until("the leaver's revoke", Duration::from_secs(30), || {
            let seen = h.sim.requests()[before_feed..]
                .iter()
                .any(|r| is_delete_on(r, lock));
            async move { seen }
        })
        .await;
        let queued = count(h.app.store(), "pending", Action::Issue).await;
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the dispatcher did not stop")
            .unwrap();

        assert!(
            queued > 100,
            "the queue had drained ({queued} issues left): nothing to overtake"
        );
        let log = h.sim.requests();
        let delete = before_feed
            + log[before_feed..]
                .iter()
                .position(|r| is_delete_on(r, lock))
                .unwrap();
        // Issues sent after the feed was applied and before the revoke; none when the revoke
        // went out while the feed was still being applied.
        let puts_before = log[mark.min(delete)..delete]
            .iter()
            .filter(|r| is_issue_put(r))
            .count();
        let concurrency = h.app.engine.config.connectors["nuki"].concurrency;
        assert!(
            puts_before <= concurrency,
            "{}: {puts_before} issues reached the vendor after the termination was planned, \
             more than the {concurrency} workers can have had in hand",
            h.backend
        );
        // The dispatcher finished the revoke in hand before it stopped.
        assert_eq!(
            observed(&h, &leaver.key, "berlin-finance").await.as_deref(),
            Some("absent")
        );
        assert!(!h.holds(&leaver.key, "berlin-finance"));
    });
}

/// The vendor never sees more requests in any second than the configured rate and burst allow,
/// although four workers have plenty to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_within_the_rate_limit() {
    const RATE: (u32, u32) = (20, 5);
    each_backend!(RATE, |h| {
        let joiners = staff("J", 40);
        let rows: Vec<String> = joiners.iter().map(Person::row).collect();
        let r = h.feed(&rows).await;
        assert_eq!(r.joiners, 40);

        let (stop, rx) = watch::channel(false);
        let running = tokio::spawn(h.dispatcher().run(rx));
        let pool = h.app.store().pool().clone();
        wait_until("the outbox to drain", Duration::from_secs(120), || {
            let pool = pool.clone();
            async move { store::open_commands(&pool).await.unwrap() == 0 }
        })
        .await;
        let _ = stop.send(true);
        running.await.unwrap();

        for p in &joiners {
            for d in p.doors() {
                assert!(h.holds(&p.key, &d), "{} lacks {d}", p.key);
            }
        }
        let stats = h.sim.stats();
        let log = h.sim.requests();
        let (per_second, burst) = RATE;
        assert!(
            stats.max_requests_in_any_second <= u64::from(per_second + burst),
            "{}: {} requests in one second, above {per_second}/s with a burst of {burst}",
            h.backend,
            stats.max_requests_in_any_second
        );
        // The workers had more to send than the limit lets through: it was the limit that held
        // them back, not a lack of work.
        assert!(
            stats.max_requests_in_any_second >= u64::from(per_second),
            "{}: only {} requests in the busiest second; the limit was never reached",
            h.backend,
            stats.max_requests_in_any_second
        );
        // Sustained: after the burst, one request per 1/per_second at most.
        let n = log.len() as u64;
        let span = log.last().unwrap().at - log.first().unwrap().at;
        let floor =
            Duration::from_millis((n - u64::from(burst) - 1) * 1000 / u64::from(per_second));
        assert!(
            span + Duration::from_millis(100) >= floor,
            "{}: {n} requests in {span:?}, faster than {per_second}/s",
            h.backend
        );
        assert!(n > 150, "too few requests ({n}) to measure a rate");
    });
}

/// Revocation first all the way down (invariant 3): with thousands of issues queued on a
/// rate-limited connector and every worker busy with them, a leaver's revoke reaches the vendor
/// within a token or two of being planned: one worker of the lane is reserved for revokes, and a
/// revoke takes the next rate-limit token before any issue does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_is_sent_within_two_tokens_behind_thousands_of_queued_issues() {
    // One token every 100 ms: every request an issue sends before the revoke is plain to see.
    const RATE: (u32, u32) = (10, 1);
    each_backend!(RATE, |h| {
        let leaver = Person::berlin_finance("L0001");
        h.feed(&[leaver.row()]).await;
        h.drain().await;
        assert!(h.holds(&leaver.key, "berlin-finance"));
        let lock = h.lock("berlin-finance");

        let joiners = staff("J", 2000);
        let mut rows: Vec<String> = joiners.iter().map(Person::row).collect();
        rows.push(leaver.row());
        let r = h.feed(&rows).await;
        assert!(r.issues >= 2000, "{r:?}");

        let (stop, rx) = watch::channel(false);
        let running = tokio::spawn(h.dispatcher().run(rx));
        // Every worker that may take an issue has one in hand, sending at the limit.
        wait_until(
            "issues to reach the vendor",
            Duration::from_secs(60),
            || {
                let n = h.sim.requests().iter().filter(|r| is_issue_put(r)).count();
                async move { n >= 6 }
            },
        )
        .await;

        rows.pop();
        rows.push(leaver.terminated());
        let r = h.feed(&rows).await;
        assert_eq!((r.leavers, r.revokes), (1, 1), "{r:?}");
        // A request of our own marks, in the simulator's log, the moment the revoke was queued.
        let probe = reqwest::get(format!("{}/planned-here", h.sim.base_url()))
            .await
            .unwrap();
        drop(probe);
        wait_until("the leaver's revoke", Duration::from_secs(30), || {
            let seen = h.sim.requests().iter().any(|r| is_delete_on(r, lock));
            async move { seen }
        })
        .await;
        let queued = count(h.app.store(), "pending", Action::Issue).await;
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the dispatcher did not stop")
            .unwrap();
        assert!(
            queued > 1000,
            "only {queued} issues were queued: nothing to overtake"
        );

        let log = h.sim.requests();
        let probe = log.iter().position(|r| r.path == "/planned-here").unwrap();
        let delete = log.iter().position(|r| is_delete_on(r, lock)).unwrap();
        if delete > probe {
            // Requests the issues sent between the revoke being queued and its DELETE: at most
            // the tokens taken at that instant by issues already past the gate.
            let between = log[probe + 1..delete].len();
            let late = log[delete].at.saturating_sub(log[probe].at);
            assert!(
                between <= 2,
                "{}: the revoke waited {late:?} and {between} vendor requests behind the issues",
                h.backend
            );
        }
    });
}

/// Confirming by target (issue 12, item 3): a vendor that shows a change only in its lock's list
/// is asked once for many changes. Sixty leavers on one lock, drained at a limit that queues their
/// DELETEs: every one is confirmed gone, and the lock's list is read far fewer times than there
/// are revocations (one read-back each before). A read-back never precedes a DELETE it confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_termination_on_one_lock_is_confirmed_by_a_few_listings() {
    const RATE: (u32, u32) = (100, 5);
    each_backend!(RATE, |h| {
        let people: Vec<Person> = (0..60)
            .map(|i| Person {
                key: format!("M{i:04}"),
                dept: "sales",
                site: "berlin",
            })
            .collect();
        let rows: Vec<String> = people.iter().map(Person::row).collect();
        h.feed(&rows).await;
        h.drain().await;
        let lock = h.lock("berlin-sales");
        for p in &people {
            assert!(h.holds(&p.key, "berlin-sales"), "{} was not issued", p.key);
        }
        let before = h.sim.requests().len();

        let rows: Vec<String> = people.iter().map(Person::terminated).collect();
        let r = h.feed(&rows).await;
        assert_eq!(r.revokes, 60, "{r:?}");
        h.drain().await;

        assert_eq!(count(h.app.store(), "done", Action::Revoke).await, 60);
        for p in &people {
            assert!(
                !h.holds(&p.key, "berlin-sales"),
                "{} still holds the door",
                p.key
            );
        }
        let log: Vec<LoggedRequest> = h.sim.requests().into_iter().skip(before).collect();
        let list = format!("/smartlock/{lock}/auth");
        let deletes: Vec<u64> = log
            .iter()
            .filter(|r| is_delete_on(r, lock))
            .map(|r| r.seq)
            .collect();
        let listings: Vec<u64> = log
            .iter()
            .filter(|r| r.method == "GET" && r.path == list)
            .map(|r| r.seq)
            .collect();
        assert_eq!(deletes.len(), 60, "{}: one DELETE per leaver", h.backend);
        assert!(
            listings.len() <= 12,
            "{}: {} listings of the lock confirmed 60 revocations",
            h.backend,
            listings.len()
        );
        // Each revocation was confirmed by a listing sent after its DELETE was answered.
        let last_listing = *listings.last().expect("no read-back at all");
        assert!(
            deletes.iter().all(|d| *d < last_listing),
            "{}: a DELETE came after the last read-back",
            h.backend
        );
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        for p in &people {
            let g = store::grant(&mut conn, &p.key, "nuki", "berlin-sales")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(g.observed, GrantState::Absent, "{}", p.key);
        }
    });
}

/// A backlog through the lane's own workers (issue 12): each claim takes several commands, their
/// requests are read together and the writes to a lock are read back together. Three hundred
/// leavers over fifteen locks: each authorisation is deleted exactly once, every grant is observed
/// absent, the locks are listed far fewer times than there are revocations, and the audit trail
/// records every revocation's end, its chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_many_locks_is_revoked_once_each_by_the_lanes_workers() {
    each_backend!((1000, 50), |h| {
        let people = staff("B", 300);
        let rows: Vec<String> = people.iter().map(Person::row).collect();
        let r = h.feed(&rows).await;
        let issues = r.issues as i64;
        run_until_done(&h, Action::Issue, issues).await;
        // The vendor's id for each person, learnt on the way, is kept (drift and later revokes
        // find the person's authorisations by it).
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        for p in &people {
            let known = store::vendor_person(&mut conn, "nuki", &p.key)
                .await
                .unwrap();
            assert!(known.is_some(), "{}: no vendor id for {}", h.backend, p.key);
        }
        drop(conn);
        let before = h.sim.requests().len();
        let rows: Vec<String> = people.iter().map(Person::terminated).collect();
        let r = h.feed(&rows).await;
        // Some departments open more than one door.
        assert_eq!(r.leavers, 300, "{r:?}");
        let revokes = r.revokes as i64;
        assert!(revokes >= 300, "{r:?}");

        run_until_done(&h, Action::Revoke, revokes).await;

        let log: Vec<LoggedRequest> = h.sim.requests().into_iter().skip(before).collect();
        let mut deleted: BTreeMap<&str, usize> = BTreeMap::new();
        for r in log
            .iter()
            .filter(|r| r.method == "DELETE" && r.status == 204)
        {
            *deleted.entry(r.path.as_str()).or_default() += 1;
        }
        assert_eq!(
            deleted.len() as i64,
            revokes,
            "{}: one authorisation per revocation",
            h.backend
        );
        assert!(
            deleted.values().all(|n| *n == 1),
            "{}: an authorisation deleted twice: {deleted:?}",
            h.backend
        );
        let listings = log
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/auth"))
            .count();
        assert!(
            listings as i64 <= revokes / 3,
            "{}: {listings} listings for {revokes} revocations on 15 locks",
            h.backend
        );
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        for p in &people {
            for g in store::grants_of(&mut conn, &p.key).await.unwrap() {
                assert_eq!(g.observed, GrantState::Absent, "{}: {g:?}", h.backend);
            }
        }
        drop(conn);
        let filter = store::audit::AuditFilter {
            action: Some("command.done".into()),
            ..Default::default()
        };
        let ends = latchkey::audit::query(h.app.store(), &filter, 10_000)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.details.contains("\"action\":\"revoke\""))
            .count();
        assert_eq!(
            ends as i64, revokes,
            "{}: audited revocation ends",
            h.backend
        );
        let verdict = latchkey::audit::verify(h.app.store()).await.unwrap();
        assert!(
            matches!(verdict, latchkey::audit::Verdict::Intact { .. }),
            "{}: {verdict:?}",
            h.backend
        );
    });
}

/// The gather bound is a bound, not a wait (issue 12, item 3): a change written while more writes
/// to its lock were queued waits for them, and the worker that writes the lock's last change
/// lists the lock for all of them. The lane's workers race over the same locks here while the
/// test's clock stands still, so a change left to wait out the bound (10 s) would never be read
/// back: every revocation is confirmed anyway, by far fewer listings than revocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reads_every_lock_back_without_waiting_out_the_gather_bound() {
    each_backend!((2000, 200), |h| {
        let people = staff("G", 240);
        let rows: Vec<String> = people.iter().map(Person::row).collect();
        h.feed(&rows).await;
        h.drain().await;
        let before = h.sim.requests().len();
        let rows: Vec<String> = people.iter().map(Person::terminated).collect();
        let r = h.feed(&rows).await;
        let revokes = r.revokes as i64;
        assert!(revokes >= 240, "{r:?}");

        // The clock stands still while the workers run.
        run_until_done_stepping(&h, Action::Revoke, revokes, chrono::Duration::zero()).await;

        let log: Vec<LoggedRequest> = h.sim.requests().into_iter().skip(before).collect();
        let deletes = log.iter().filter(|r| r.method == "DELETE").count() as i64;
        let listings = log.iter().filter(|r| r.method == "GET").count() as i64;
        assert_eq!(deletes, revokes, "{}: one DELETE per revocation", h.backend);
        assert!(
            listings * 2 <= revokes,
            "{}: {listings} listings for {revokes} revocations",
            h.backend
        );
    });
}

/// Run the lane's workers until `n` commands of `action` are done; read-backs that wait for more
/// writes to their lock come due as the clock moves.
async fn run_until_done(h: &Harness, action: Action, n: i64) {
    run_until_done_stepping(h, action, n, chrono::Duration::milliseconds(500)).await
}

/// [`run_until_done`], the test's clock moved by `step` at each look.
async fn run_until_done_stepping(h: &Harness, action: Action, n: i64, step: chrono::Duration) {
    let (stop, rx) = watch::channel(false);
    let running = tokio::spawn(h.dispatcher().run(rx));
    wait_until("every command confirmed", Duration::from_secs(120), || {
        h.clock.advance(step);
        let store = h.app.store().clone();
        async move { count(&store, "done", action).await == n }
    })
    .await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the dispatcher did not stop")
        .unwrap();
}

/// The first attempt is stamped when the request leaves (invariant 13), not when a worker claims
/// the command: time spent waiting for the rate budget is queueing, and shows as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempt_is_stamped_when_the_request_leaves() {
    // One token a second with no burst; the test's clock stands still, so any distance between
    // a command's claim and its first-attempt stamp is the real time its request waited.
    each_backend!((1, 1), |h| {
        // One door each.
        let people = ["J00001", "J00002"].map(Person::berlin_finance);
        let rows: Vec<String> = people.iter().map(Person::row).collect();
        h.feed(&rows).await;
        let started = std::time::Instant::now();
        h.drain().await;
        let elapsed = started.elapsed().as_micros() as i64;
        let done = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        // Whichever command's request left second waited for a token the other's requests had
        // taken: at least one whole interval after the bucket emptied. A stamp taken at the claim
        // would put both at 0; half the interval leaves room for a slow machine's scheduling.
        let waits: Vec<i64> = done
            .iter()
            .map(|c| {
                c.first_attempt_at
                    .unwrap_or_else(|| panic!("{}: {} never stamped", h.backend, c.identity_key))
                    - c.enqueued_at
            })
            .collect();
        let longest = *waits.iter().max().unwrap();
        assert!(
            longest >= 500_000,
            "{}: first attempts stamped {waits:?} us after the claim, before their tokens came",
            h.backend
        );
        // A stamp is never later than the request itself, which left within the drain.
        assert!(
            waits.iter().all(|w| (0..=elapsed).contains(w)),
            "{}: first attempts stamped {waits:?} us after the claim, outside the {elapsed} us drain",
            h.backend
        );
    });
}

/// An HR change's trigger is when its file landed (its modification time), not when latchkey
/// picked it up: the `detect` stage shows the pickup and parse time (invariant 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hr_termination_is_triggered_when_its_file_landed() {
    each_backend!((1000, 50), |h| {
        let leaver = Person::berlin_finance("L0001");
        h.feed(&[leaver.row()]).await;
        h.drain().await;
        // The termination file landed 90 s before it is applied.
        let now = h.clock.now_utc();
        let landed = now - chrono::Duration::seconds(90);
        let path = h.dir.join("feeds").join("hr-9999.csv");
        std::fs::write(&path, format!("{HEADER}\n{}\n", leaver.terminated())).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(landed.into())
            .unwrap();
        let r = h.app.engine.apply_hr_file("hr", &path).await.unwrap();
        assert_eq!((r.leavers, r.revokes), (1, 1), "{r:?}");
        let revoke = store::commands_where_status(h.app.store().pool(), CommandStatus::Pending, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.action == Action::Revoke)
            .unwrap();
        assert_eq!(
            (revoke.trigger_at, revoke.detected_at),
            (
                latchkey::clock::to_micros(landed),
                latchkey::clock::to_micros(now)
            ),
            "{}",
            h.backend
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Crash safety: the real daemon, killed at random moments.

struct Daemon {
    config: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Daemon {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("LATCHKEY_DEMO_NUKI_TOKEN", TOKEN)
            .env("LATCHKEY_LOG", "warn")
            .env("LATCHKEY_ENGINE__TICK_MILLIS", "50")
            // A killed worker's command is taken over once its lease runs out.
            .env("LATCHKEY_ENGINE__LEASE_SECONDS", "5")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no clean shutdown.
    async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon exited on its own ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        child.kill().await.unwrap();
    }
}

/// Write a feed into the drop directory in one step (a reader never sees half a file).
fn drop_feed(dir: &Path, name: &str, rows: &[String]) {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    std::fs::rename(&tmp, dir.join("feeds").join(name)).unwrap();
}

async fn finished(store: &Store, file: &str) -> bool {
    let applied = store::checkpoint(store.pool(), "hr")
        .await
        .unwrap()
        .is_some_and(|c| c.starts_with(&format!("{file}@")));
    applied && store::open_commands(store.pool()).await.unwrap() == 0
}

/// Kill the daemon `rounds` times at random moments, then let it finish `file`. Returns how many
/// kills interrupted unfinished work.
async fn crash_rounds(daemon: &mut Daemon, store: &Store, file: &str, rounds: usize) -> usize {
    use rand::Rng;
    let mut interrupted = 0;
    for _ in 0..rounds {
        let delay = rand::rng().random_range(50..=400u64);
        daemon.start();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        daemon.kill().await;
        if !finished(store, file).await {
            interrupted += 1;
        }
    }
    daemon.start();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !finished(store, file).await {
        assert!(
            Instant::now() < deadline,
            "the daemon did not finish {file}: {:?}\n{}",
            store::command_counts(store.pool()).await.unwrap(),
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill().await;
    interrupted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_at_random_ends_with_exact_access_and_no_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        std::fs::create_dir_all(dir.join("feeds")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Duplicates allowed: only the connector's find-before-create can keep them out.
        let sim = sim::start_nuki(
            listener,
            NukiOptions {
                token: TOKEN.into(),
                allow_duplicates: true,
                ..NukiOptions::default()
            },
        )
        .await
        .unwrap();
        let config = dir.join("latchkey.toml");
        std::fs::write(&config, config_text(&url, &sim.base_url(), (1000, 50))).unwrap();
        // Migrated before the first daemon starts, so no kill lands in a migration.
        let store = Store::connect(&url, 2).await.unwrap();
        let mut daemon = Daemon {
            config,
            log: dir.join("daemon.log"),
            child: None,
        };

        // Phase 1: everyone joins. Over 2,000 commands in all on SQLite; PostgreSQL commits far
        // slower here, so it gets a smaller workforce to keep the run short.
        let people = staff("P", if name == "sqlite" { 1100 } else { 300 });
        drop_feed(
            &dir,
            "hr-0001.csv",
            &people.iter().map(Person::row).collect::<Vec<_>>(),
        );
        let mut interrupted = crash_rounds(&mut daemon, &store, "hr-0001.csv", 12).await;
        let mut want_issues: usize = people.iter().map(|p| p.doors().len()).sum();
        assert_eq!(
            count(&store, "done", Action::Issue).await,
            want_issues as i64,
            "{name}"
        );

        // Phase 2: every second person leaves, every tenth moves to the next department.
        let mut now = BTreeMap::new();
        let mut want_revokes = 0;
        let mut rows = Vec::new();
        for (i, p) in people.iter().enumerate() {
            if i % 2 == 1 {
                rows.push(p.terminated());
                want_revokes += p.doors().len();
                now.insert(p.key.clone(), None);
            } else if i % 10 == 0 {
                let at = DEPTS.iter().position(|d| *d == p.dept).unwrap();
                let moved = Person {
                    dept: DEPTS[(at + 1) % DEPTS.len()],
                    ..p.clone()
                };
                want_revokes += p.doors().difference(&moved.doors()).count();
                want_issues += moved.doors().difference(&p.doors()).count();
                rows.push(moved.row());
                now.insert(p.key.clone(), Some(moved));
            } else {
                rows.push(p.row());
                now.insert(p.key.clone(), Some(p.clone()));
            }
        }
        drop_feed(&dir, "hr-0002.csv", &rows);
        interrupted += crash_rounds(&mut daemon, &store, "hr-0002.csv", 12).await;
        eprintln!("{name}: {interrupted} of 24 kills interrupted unfinished work");
        assert!(
            interrupted >= 20,
            "{name}: only {interrupted} kills hit unfinished work; the crash test did not test much"
        );

        // No vendor-side duplicates, no lost or doubled commands, nothing given up on.
        let nuki = sim.nuki().unwrap();
        assert_eq!(nuki.duplicate_pairs(), 0, "{name}");
        assert_eq!(nuki.duplicates_created(), 0, "{name}");
        let counts = store::command_counts(store.pool()).await.unwrap();
        assert!(
            counts.iter().all(|(_, s, _, _)| *s == CommandStatus::Done),
            "{name}: {counts:?}"
        );
        assert_eq!(
            count(&store, "done", Action::Revoke).await,
            want_revokes as i64,
            "{name}"
        );
        assert_eq!(
            count(&store, "done", Action::Issue).await,
            want_issues as i64,
            "{name}"
        );

        // Exactly the access policy wants, in the ledger and at the vendor.
        let users: BTreeMap<String, i64> = nuki
            .users()
            .into_iter()
            .map(|u| (u.email, u.account_user_id))
            .collect();
        assert_eq!(users.len(), people.len(), "{name}: one account per person");
        let mut want: BTreeSet<(String, String)> = BTreeSet::new();
        for p in now.values().flatten() {
            for d in p.doors() {
                want.insert((p.key.clone(), d));
            }
        }
        let grants = store::all_grants(store.pool()).await.unwrap();
        let mut present = BTreeSet::new();
        for g in &grants {
            let email = format!("{}@example.com", g.identity_key.to_lowercase());
            let holds = nuki.holds(lock_of(&g.target), users[&email]);
            match g.desired.as_str() {
                "present" => {
                    assert!(
                        holds,
                        "{name}: {} lacks {} at the vendor",
                        g.identity_key, g.target
                    );
                    assert_eq!(g.observed, GrantState::Present, "{name}: {g:?}");
                    present.insert((g.identity_key.to_string(), g.target.clone()));
                }
                _ => {
                    assert!(
                        !holds,
                        "{name}: {} still holds {} at the vendor",
                        g.identity_key, g.target
                    );
                    assert_eq!(g.observed, GrantState::Absent, "{name}: {g:?}");
                }
            }
        }
        assert_eq!(present, want, "{name}: the ledger differs from policy");
        let holding: BTreeSet<i64> = nuki
            .auths()
            .into_iter()
            .filter(|a| !a.pending_delete)
            .filter_map(|a| a.account_user_id)
            .collect();
        for p in people.iter().skip(1).step_by(2) {
            assert!(
                !holding.contains(&users[&p.email()]),
                "{name}: leaver {} still holds a door",
                p.key
            );
        }
        // Nothing at the vendor that the ledger does not know of.
        assert_eq!(nuki.auths_live(), want.len(), "{name}");
        sim.shutdown().await;
    }
}

/// An Okta-shaped SCIM user in Berlin engineering (two doors).
fn scim_user(key: &str) -> serde_json::Value {
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ent],
        "userName": format!("{}@example.com", key.to_lowercase()),
        "externalId": key,
        "name": { "givenName": "Person", "familyName": key },
        "emails": [{ "primary": true, "value": format!("{}@example.com", key.to_lowercase()) }],
        "displayName": format!("Person {key}"),
        "userType": "Employee",
        "title": "Analyst",
        "addresses": [{ "type": "work", "locality": "Berlin", "primary": true }],
        "active": true,
        ent: { "department": "Engineering", "employeeNumber": key }
    })
}

/// Eight identity-provider clients deactivate eight people holding grants at once, on PostgreSQL,
/// while the dispatcher completes commands and the next eight joiners arrive: round after round,
/// every request is answered 2xx (a lost lock race is retried inside, never a 500) and every
/// revocation reaches the vendor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scim_deactivations_on_postgres_never_fail() {
    use sha2::Digest;
    const SCIM_TOKEN: &str = "race-token";
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 120;
    let Some(url) = postgres_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::builder("postgres", &url, tmp.path())
        .rate((100_000, 1000))
        .config(&format!(
            "[scim.tenants.okta]\ntoken_sha256 = \"{}\"",
            hex::encode(sha2::Sha256::digest(SCIM_TOKEN.as_bytes())),
        ))
        .build()
        .await;
    let (app, clock, sim) = (&h.app, h.clock.clone(), &h.sim);
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/scim/v2", http_listener.local_addr().unwrap());
    let (stop_http, http_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(latchkey::api::serve(
        http_listener,
        app.router(),
        async move {
            let _ = http_rx.await;
        },
    ));
    let (stop, rx) = watch::channel(false);
    let running = tokio::spawn(app.dispatcher().run(rx));
    // Time moves on, so confirmations and backoffs come due (the clock is the test's).
    let ticking = clock.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticking.advance(chrono::Duration::milliseconds(500));
        }
    });
    let http = reqwest::Client::new();
    let holds_any = |key: &str| {
        let nuki = sim.nuki().unwrap();
        let email = format!("{}@example.com", key.to_lowercase());
        let Some(u) = nuki.users().into_iter().find(|u| u.email == email) else {
            return false;
        };
        ["berlin-engineering", "berlin-lab"]
            .iter()
            .any(|d| nuki.holds(lock_of(d), u.account_user_id))
    };

    let mut failures = Vec::new();
    let mut previous: Vec<(String, String)> = Vec::new();
    for round in 0..=ROUNDS {
        // This round's joiners and last round's leavers, all at once.
        let mut calls = tokio::task::JoinSet::new();
        let joiners = if round < ROUNDS { CLIENTS } else { 0 };
        for i in 0..joiners {
            let key = format!("R{round:02}{i}");
            let req = http
                .post(format!("{base}/Users"))
                .bearer_auth(SCIM_TOKEN)
                .header("content-type", "application/scim+json")
                .body(scim_user(&key).to_string());
            calls.spawn(async move { (key, "create", req.send().await.unwrap()) });
        }
        for (key, id) in previous.drain(..) {
            let ops = serde_json::json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{ "op": "replace", "value": { "active": false } }],
            });
            let req = http
                .patch(format!("{base}/Users/{id}"))
                .bearer_auth(SCIM_TOKEN)
                .header("content-type", "application/scim+json")
                .body(ops.to_string());
            calls.spawn(async move { (key, "deactivate", req.send().await.unwrap()) });
        }
        let mut created = Vec::new();
        while let Some(done) = calls.join_next().await {
            let (key, what, resp) = done.unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                failures.push(format!("round {round} {what} {key}: {status} {body}"));
            } else if what == "create" {
                created.push((key, body["id"].as_str().unwrap().to_string()));
            }
        }
        // The joiners hold their doors before they leave in the next round.
        for (key, _) in &created {
            wait_until("a joiner's doors", Duration::from_secs(60), || {
                let held = holds_any(key);
                async move { held }
            })
            .await;
        }
        previous = created;
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    let leavers: Vec<String> = (0..ROUNDS)
        .flat_map(|r| (0..CLIENTS).map(move |i| format!("R{r:02}{i}")))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<&String> = leavers.iter().filter(|k| holds_any(k)).collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            // Name what is left and what the outbox says of it, so a failure can be read.
            let mut conn = app.store().pool().acquire().await.unwrap();
            let mut told = Vec::new();
            for key in left.iter().take(5) {
                told.push(format!(
                    "{key} ledger: {:?}",
                    store::grants_of(&mut conn, key).await.unwrap()
                ));
                for target in ["berlin-engineering", "berlin-lab"] {
                    for action in [Action::Issue, Action::Revoke] {
                        let open = store::open_command_for(&mut conn, "nuki", key, target, action)
                            .await
                            .unwrap();
                        told.push(format!("{key} {target} {action:?}: {open:?}"));
                    }
                }
            }
            panic!(
                "{} leavers still hold a door: {left:?}\n{}",
                left.len(),
                told.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the dispatcher did not stop")
        .unwrap();
    ticker.abort();
    let _ = stop_http.send(());
    let _ = server.await;
    let verdict = latchkey::audit::verify(app.store()).await.unwrap();
    assert!(
        matches!(verdict, latchkey::audit::Verdict::Intact { .. }),
        "{verdict:?}"
    );
}
