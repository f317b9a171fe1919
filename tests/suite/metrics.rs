//! Telemetry against the real daemon parts: a demo-sized run through the Nuki simulator, then
//! `/metrics` scraped over HTTP and checked against the store (and by `promtool` when installed);
//! the SLA report; revocation drills; the chart's Grafana dashboard and alert rules checked against
//! the metric names latchkey exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::app::App;
use latchkey::clock::to_micros;
use latchkey::jobs::drill;
use latchkey::model::CommandStatus;
use latchkey::store;
use latchkey::telemetry::metrics::METRIC_NAMES;
use latchkey::telemetry::sla;
use latchkey_sim::{Faults, NukiOptions};
use std::collections::BTreeMap;

/// Serve the app's router on a loopback port; returns its base URL.
async fn serve(app: &App) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router();
    tokio::spawn(latchkey::api::serve(
        listener,
        router,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn scrape(base: &str, openmetrics: bool) -> (String, String) {
    let mut rb = reqwest::Client::new().get(format!("{base}/metrics"));
    if openmetrics {
        rb = rb.header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ct, resp.text().await.unwrap())
}

/// Value of the sample with exactly this name and these labels (in the order the encoder writes).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?.split(' ').next()?;
        v.parse().ok()
    })
}

/// Sum of every sample of a metric name whose label set contains all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want))
        })
        .filter_map(|l| {
            let end = l.find("} ")?;
            l[end + 2..].split(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

fn promtool() -> Option<std::path::PathBuf> {
    let required = std::env::var("LATCHKEY_TEST_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        assert!(!required, "promtool required but not on PATH");
        eprintln!("promtool not installed; skipping its checks");
    }
    found
}

fn done_count(rows: &[(String, CommandStatus, String, i64)], status: &str, action: &str) -> f64 {
    rows.iter()
        .filter(|(c, s, a, _)| c == "nuki" && s.as_str() == status && a == action)
        .map(|r| r.3 as f64)
        .sum()
}

#[tokio::test]
async fn scrape_after_a_run_matches_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let dir = tmp.path().join(&name);
        // A tight rate limit, so the run waits for the budget and the wait counters move.
        let mut h = Harness::with_rate(&name, &url, &dir, NukiOptions::default(), (20, 2)).await;
        let people: Vec<String> = (1..=12)
            .map(|i| {
                employee(
                    &format!("E{i}"),
                    ["engineering", "sales", "finance"][i % 3],
                    ["berlin", "london"][i % 2],
                )
            })
            .collect();
        h.feed(&people).await;
        h.drain().await;
        // Four leavers, reported after their last day: the trigger is when latchkey saw them.
        let mut next = people.clone();
        for (i, p) in next.iter_mut().enumerate().take(4) {
            *p = row(
                &format!("E{}", i + 1),
                ["engineering", "sales", "finance"][(i + 1) % 3],
                "analyst",
                "employee",
                ["berlin", "london"][(i + 1) % 2],
                "Terminated",
                "2020-01-01",
                "2026-11-24",
                "",
            );
        }
        h.feed(&next).await;
        // The vendor path is slow today: 90 s pass before the dispatcher gets to the revocations,
        // so each one misses the 60 s SLA and counts as a breach.
        h.clock
            .set(h.clock.now_utc() + chrono::Duration::seconds(90));
        h.drain().await;

        let counts = store::command_counts(h.app.store().pool()).await.unwrap();
        let revokes_done = done_count(&counts, "done", "revoke");
        let issues_done = done_count(&counts, "done", "issue");
        assert!(revokes_done >= 4.0 && issues_done >= 12.0, "{counts:?}");

        let base = serve(&h.app).await;
        let (ct, om) = scrape(&base, true).await;
        assert_eq!(
            ct, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{name}"
        );
        assert!(om.ends_with("# EOF\n"));
        // Counters agree with the outbox.
        assert_eq!(
            sample(
                &om,
                r#"latchkey_commands_total{connector="nuki",action="revoke",outcome="done"}"#
            ),
            Some(revokes_done),
            "{name}\n{om}"
        );
        assert_eq!(
            sample(
                &om,
                r#"latchkey_commands_total{connector="nuki",action="issue",outcome="done"}"#
            ),
            Some(issues_done)
        );
        // One observation per stage per confirmed revocation.
        assert_eq!(
            sum(
                &om,
                "latchkey_revocation_latency_seconds_count",
                &[r#"stage="end_to_end""#]
            ),
            revokes_done
        );
        assert_eq!(
            sum(
                &om,
                "latchkey_issue_latency_seconds_count",
                &[r#"stage="queue""#]
            ),
            issues_done
        );
        assert!(
            om.lines().any(
                |l| l.starts_with("latchkey_revocation_latency_seconds_bucket{")
                    && l.contains(r#"stage="end_to_end""#)
                    && l.contains(r#"cause="leaver""#)
                    && l.contains(r#"source="hr""#)
            ),
            "no revocation latency buckets\n{om}"
        );
        // The standard process metrics, unprefixed, as stock dashboards expect them.
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                om.lines().any(|l| l.starts_with(&format!("{name} "))),
                "no {name}\n{om}"
            );
        }
        // Nothing was traced here: an exemplar would name a trace no backend holds
        // (tests/traces.rs checks the exemplar of a traced change).
        assert!(!om.contains("trace_id="), "exemplar without a trace\n{om}");
        // The outbox drained: every lane at 0, nothing dead.
        assert_eq!(sum(&om, "latchkey_outbox_depth", &[]), 0.0);
        assert_eq!(sum(&om, "latchkey_dead_letters", &[]), 0.0);
        assert_eq!(
            sample(
                &om,
                r#"latchkey_outbox_depth{connector="nuki",lane="revoke"}"#
            ),
            Some(0.0)
        );
        assert!(
            sample(&om, r#"latchkey_rate_limit_waits_total{connector="nuki"}"#).unwrap() > 0.0,
            "a 20/s budget with 30 calls must wait"
        );
        assert_eq!(
            sample(&om, r#"latchkey_circuit_breaker_open{connector="nuki"}"#),
            Some(0.0)
        );
        // The SLA counters agree with the SLA report from the store.
        let now = to_micros(h.clock.now_utc());
        let report = sla::report(h.app.store(), &h.app.engine.config, now)
            .await
            .unwrap();
        let nuki = report.iter().find(|r| r.connector == "nuki").unwrap();
        assert_eq!(nuki.total as f64, revokes_done);
        assert_eq!(nuki.missed as f64, revokes_done, "{nuki:?}");
        assert_eq!(
            sample(&om, r#"latchkey_sla_revocations_total{connector="nuki"}"#),
            Some(nuki.total as f64)
        );
        assert_eq!(
            sample(&om, r#"latchkey_sla_breaches_total{connector="nuki"}"#),
            Some(nuki.missed as f64)
        );
        assert_eq!(
            sample(&om, r#"latchkey_sla_target_seconds{connector="nuki"}"#),
            Some(60.0)
        );
        // No person key or target as a label value anywhere.
        for l in om.lines().filter(|l| !l.starts_with('#')) {
            let labels = l.split(" # ").next().unwrap();
            assert!(
                !labels.contains("\"E1\"") && !labels.contains("berlin-"),
                "{l}"
            );
        }

        // The classic format for everything else, and promtool accepts it.
        let (ct, text) = scrape(&base, false).await;
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        assert!(!text.contains("# EOF") && !text.contains("trace_id"));
        assert!(text.contains("# TYPE latchkey_commands_total counter"));
        if let Some(promtool) = promtool() {
            use std::io::Write;
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An app on the harness's store and simulator, with a drill canary configured.
async fn drill_app(h: &Harness) -> App {
    h.open_patched(
        &[(
            "[connectors.nuki]\n",
            "[connectors.nuki]\ndrill_target = \"berlin-lab\"\n",
        )],
        "[telemetry.drill]\nperson = \"canary-drill\"\nname = \"Drill Canary\"\n\
         email = \"canary@example.invalid\"\nschedule = \"*/5 * * * *\"",
        &[],
    )
    .await
}

#[tokio::test]
async fn drill_reports_every_stage_and_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sqlite");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    // The simulator syncs asynchronously, so the drill has to read back until the lock shows it.
    let opts = NukiOptions {
        sync_delay: std::time::Duration::from_millis(150),
        ..NukiOptions::default()
    };
    let h = Harness::new("sqlite", &url, &dir, opts).await;
    let app = drill_app(&h).await;
    let nuki = app.connectors.get("nuki").unwrap();

    let report = drill::run(&app.engine, nuki, None).await.unwrap();
    assert!(report.ok(), "{}", report.render());
    let stages: Vec<&str> = report.stages.iter().map(|s| s.0).collect();
    assert_eq!(stages, drill::DRILL_STAGES);
    assert!(
        report.stages[1].1 >= 0.1,
        "the issue is confirmed only once the lock synced: {}",
        report.render()
    );
    assert!(!h.holds_email("canary@example.invalid", "berlin-lab"));

    h.sim.set_faults(Faults {
        outage: true,
        ..Faults::none()
    });
    let broken = drill::run(&app.engine, nuki, None).await.unwrap();
    let (stage, why) = broken.failure.clone().unwrap();
    assert_eq!(stage, "issue_dispatch");
    assert!(why.contains("503"), "{why}");
    assert!(broken.render().contains("FAILED at issue_dispatch"));

    let base = serve(&app).await;
    let (_, om) = scrape(&base, true).await;
    assert_eq!(
        sample(
            &om,
            r#"latchkey_drill_runs_total{connector="nuki",result="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &om,
            r#"latchkey_drill_runs_total{connector="nuki",result="failed"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &om,
            r#"latchkey_drill_stage_seconds{connector="nuki",stage="revoke_end_to_end"}"#
        )
        .is_some()
    );
    // The canary never entered the ledger or the outbox.
    assert!(
        store::all_grants(app.store().pool())
            .await
            .unwrap()
            .is_empty()
    );
}

trait HoldsEmail {
    fn holds_email(&self, email: &str, target: &str) -> bool;
}

impl HoldsEmail for Harness {
    fn holds_email(&self, email: &str, target: &str) -> bool {
        let nuki = self.sim.nuki().unwrap();
        nuki.users()
            .into_iter()
            .find(|u| u.email == email)
            .is_some_and(|u| nuki.holds(self.lock(target), u.account_user_id))
    }
}

/// Metric names a PromQL expression refers to: identifiers starting with `latchkey_` (exported)
/// or `latchkey:` (recording rules).
fn referenced_metrics(expr: &str) -> Vec<String> {
    let mut out = prefixed_metrics(expr, "latchkey");
    out.extend(prefixed_metrics(expr, "process_"));
    out
}

fn prefixed_metrics(expr: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find(prefix) {
        let start = i + pos;
        let prev_ok = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        let name = &expr[start..end];
        if prev_ok
            && (name.starts_with("latchkey_")
                || name.starts_with("latchkey:")
                || name.starts_with("process_"))
        {
            out.push(name.to_string());
        }
        i = end;
    }
    out
}

/// Names the chart's recording rules define.
fn recorded() -> Vec<String> {
    std::fs::read_to_string(repo().join("charts/latchkey/files/latchkey-rules.yaml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_string))
        .collect()
}

fn known_metric(name: &str) -> bool {
    if name.starts_with("latchkey:") {
        return recorded().iter().any(|r| r == name);
    }
    let base = ["_bucket", "_count", "_sum", "_total"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    METRIC_NAMES.contains(&base)
        || METRIC_NAMES.contains(&name)
        || latchkey::telemetry::process::METRIC_NAMES.contains(&base)
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if (k == "expr" || k == "query")
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                }
                collect_exprs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_is_grafana_json_using_only_exported_metrics() {
    let path = repo().join("charts/latchkey/dashboards/latchkey.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut ids = std::collections::BTreeSet::new();
    let mut kinds = BTreeMap::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let kind = p["type"].as_str().unwrap();
        *kinds.entry(kind.to_string()).or_insert(0) += 1;
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "panel {} gridPos.{k}", p["title"]);
        }
        if kind == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["type"], "prometheus", "{}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            let names = referenced_metrics(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    known_metric(&n),
                    "panel {}: `{n}` is not exported",
                    p["title"]
                );
            }
        }
    }
    assert!(kinds.contains_key("heatmap"), "{kinds:?}");
    assert!(kinds.contains_key("timeseries"), "{kinds:?}");
    // The latency panel shows the SLA target next to the percentiles.
    let mut exprs = Vec::new();
    collect_exprs(&d, &mut exprs);
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("latchkey_sla_target_seconds"))
    );
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.99")));
    // It works on a Prometheus without latchkey's recording rules.
    for e in &exprs {
        assert!(!e.contains("latchkey:"), "needs a recording rule: {e}");
    }
    // Every alert has a panel showing what it watches: each raw metric of its expression is queried.
    let rules =
        std::fs::read_to_string(repo().join("charts/latchkey/files/latchkey-rules.yaml")).unwrap();
    for (alert, expr) in alert_exprs(&rules) {
        let raw: Vec<String> = referenced_metrics(&expr)
            .into_iter()
            .filter(|n| !n.starts_with("latchkey:"))
            .collect();
        for n in raw {
            assert!(
                exprs.iter().any(|e| e.contains(&n)),
                "alert {alert} watches `{n}`, which no dashboard panel shows"
            );
        }
    }
}

/// (alert name, expression) of every alerting rule.
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            out.push((name.to_string(), String::new()));
            in_expr = false;
        } else if t.starts_with("- record: ") {
            in_expr = false;
        } else if let Some(rest) = t.strip_prefix("expr:") {
            in_expr = true;
            if let Some(last) = out.last_mut() {
                last.1.push_str(rest);
            }
        } else if t.ends_with(':') || t.starts_with("for:") || t.starts_with("labels:") {
            in_expr = false;
        } else if in_expr && let Some(last) = out.last_mut() {
            last.1.push_str(t);
        }
    }
    out
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let text =
        std::fs::read_to_string(repo().join("charts/latchkey/files/latchkey-rules.yaml")).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        for n in referenced_metrics(line) {
            assert!(
                known_metric(&n),
                "rules refer to `{n}`, which latchkey does not export or record"
            );
            seen += 1;
        }
    }
    assert!(seen > 10);
}

#[tokio::test]
async fn drills_run_on_their_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sqlite");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    let h = Harness::new("sqlite", &url, &dir, NukiOptions::default()).await;
    let app = drill_app(&h).await;
    // First look: never run, so due now (a daemon started after a missed run catches it up).
    let first = app.run_due_drills(h.clock.now_utc()).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "nuki");
    assert!(first[0].1.ok(), "{}", first[0].1.render());
    // Not again until the schedule's next slot.
    h.clock.advance(chrono::Duration::seconds(30));
    assert!(
        app.run_due_drills(h.clock.now_utc())
            .await
            .unwrap()
            .is_empty()
    );
    h.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(
        app.run_due_drills(h.clock.now_utc()).await.unwrap().len(),
        1
    );
    assert!(!h.holds_email("canary@example.invalid", "berlin-lab"));
}
