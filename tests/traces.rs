//! Traces over OTLP: one identity change is one trace, from the source through policy, plan and the
//! outbox to the dispatcher and each vendor call, even though the change is planned in one task and
//! delivered later by another. A test collector on loopback receives OTLP/HTTP JSON.
//!
//! Its own test binary: the tracing subscriber is process-wide and can be installed once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "suite/common.rs"]
mod common;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::*;
use latchkey::config::{Config, ConfigInput};
use latchkey::telemetry::tracing::{self as lk_tracing, OtlpExport, Settings};
use latchkey_sim::NukiOptions;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// What the collector received: each request's headers and JSON body.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Received {
    fn take(&self) -> Vec<(HeaderMap, Value)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

async fn collector() -> (String, Received) {
    let received = Received::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                store.0.lock().unwrap().push((headers, json));
                // An empty ExportTraceServiceResponse: everything accepted.
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attrs: BTreeMap<String, String>,
}

fn spans(requests: &[(HeaderMap, Value)]) -> Vec<Span> {
    let mut out = Vec::new();
    for (_, body) in requests {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                    let attrs = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let v = &a["value"];
                            let v = v["stringValue"]
                                .as_str()
                                .map(str::to_string)
                                .or_else(|| v["intValue"].as_str().map(str::to_string))
                                .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
                                .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
                                .unwrap_or_default();
                            (a["key"].as_str().unwrap_or_default().to_string(), v)
                        })
                        .collect();
                    out.push(Span {
                        trace: text("traceId").to_ascii_lowercase(),
                        id: text("spanId").to_ascii_lowercase(),
                        parent: text("parentSpanId").to_ascii_lowercase(),
                        name: text("name"),
                        attrs,
                    });
                }
            }
        }
    }
    out
}

/// Send the finished spans and collect them. The exporter's blocking client talks to the collector
/// served by this runtime, so the flush must not hold the runtime's only thread.
fn flush(guard: &lk_tracing::TracingGuard, received: &Received) -> Vec<(HeaderMap, Value)> {
    tokio::task::block_in_place(|| guard.flush());
    received.take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leaver_is_one_trace_from_source_to_vendor_call() {
    let (endpoint, received) = collector().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sqlite");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    let mut h = Harness::new("sqlite", &url, &dir, NukiOptions::default()).await;

    // The harness's configuration with trace export to the test collector, the way an operator
    // writes it: the header value is a secret from the environment.
    let path = dir.join("latchkey.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!(
            "\n[telemetry.otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"http/json\"\n\
             headers = {{ \"x-collector-key\" = {{ env = \"COLLECTOR_KEY\" }} }}\n"
        );
    std::fs::write(&path, text).unwrap();
    let mut env = env();
    env.insert("COLLECTOR_KEY".into(), "collector-secret".into());
    let config = Config::load(&ConfigInput::from_file(&path, env).unwrap()).unwrap();
    let otlp = OtlpExport::from_config(&config).unwrap().unwrap();
    assert_eq!(otlp.url, format!("{endpoint}/v1/traces"));
    assert!(
        !format!("{otlp:?}").contains("collector-secret"),
        "header values stay out of Debug"
    );
    let guard = lk_tracing::init(&Settings {
        log_filter: "warn".into(),
        json: false,
        otlp: Some(otlp),
        ..Default::default()
    })
    .unwrap();

    // A joiner, delivered: its own trace.
    h.feed(&[employee("E1", "engineering", "berlin")]).await;
    h.drain().await;
    let joined = spans(&flush(&guard, &received));
    let joiner_traces: BTreeSet<String> = joined.iter().map(|s| s.trace.clone()).collect();
    assert_eq!(
        joiner_traces.len(),
        1,
        "the joiner is one trace: {joined:#?}"
    );
    assert!(joined.iter().any(|s| s.name == "vendor.call"));

    // The same person leaves: the change under test.
    h.feed(&[row(
        "E1",
        "engineering",
        "analyst",
        "employee",
        "berlin",
        "Terminated",
        "2020-01-01",
        "2026-11-24",
        "",
    )])
    .await;
    h.drain().await;
    assert!(!h.holds("E1", "berlin-engineering"));
    let requests = flush(&guard, &received);
    assert!(!requests.is_empty(), "nothing exported");
    for (headers, body) in &requests {
        assert_eq!(headers["x-collector-key"], "collector-secret");
        let raw = body.to_string();
        // Neither the vendor credential nor person attributes beyond the key travel in traces.
        for secret in [TOKEN, "Person E1", "e1@example.com"] {
            assert!(!raw.contains(secret), "`{secret}` exported in a span");
        }
    }
    let spans = spans(&requests);
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(traces.len(), 1, "one change, one trace: {spans:#?}");
    let trace = spans[0].trace.clone();
    assert_eq!(trace.len(), 32);
    assert!(!joiner_traces.contains(&trace), "a new change, a new trace");

    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let one = |name: &str| -> &Span {
        let found = named(name);
        assert_eq!(found.len(), 1, "one `{name}` span: {spans:#?}");
        found[0]
    };
    let source = one("source.change");
    assert_eq!(source.parent, "", "the source span is the root");
    assert_eq!(source.attrs["source"], "hr");
    assert_eq!(source.attrs["identity"], "E1");
    let identity = one("identity.reevaluate");
    assert_eq!(identity.parent, source.id);
    assert_eq!(identity.attrs["change"], "leaver");
    assert_eq!(one("policy.evaluate").parent, identity.id);
    let plan = one("plan.apply");
    assert_eq!(plan.parent, identity.id);
    // Delivered by the dispatcher later, still under the plan that enqueued it (via the outbox row).
    let dispatches = named("dispatch.command");
    assert!(!dispatches.is_empty(), "no dispatch span: {spans:#?}");
    for d in &dispatches {
        assert_eq!(d.parent, plan.id);
        assert_eq!(d.attrs["action"], "revoke");
        assert_eq!(d.attrs["source"], "hr");
    }
    let calls = named("vendor.call");
    assert!(!calls.is_empty(), "no vendor call span: {spans:#?}");
    for c in &calls {
        assert!(
            dispatches.iter().any(|d| d.id == c.parent),
            "vendor call outside a dispatch: {c:#?}"
        );
        assert_eq!(c.attrs["connector"], "nuki");
        assert!(c.attrs.contains_key("http.request.method"), "{c:#?}");
        assert!(c.attrs.contains_key("http.response.status_code"), "{c:#?}");
    }

    // The outbox row carries the source and the trace; the latency exemplar links to the trace.
    let revoke = latchkey::store::completed_commands(h.app.store().pool())
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.action == latchkey::model::Action::Revoke)
        .unwrap();
    assert_eq!(revoke.source, "hr");
    assert_eq!(
        revoke
            .traceparent
            .as_deref()
            .and_then(lk_tracing::trace_id_of),
        Some(trace.clone())
    );
    let om = h.app.engine.metrics.encode_openmetrics();
    assert!(
        om.lines().any(
            |l| l.starts_with("latchkey_revocation_latency_seconds_bucket{")
                && l.contains(r#"source="hr""#)
                && l.contains(&format!(r#"# {{trace_id="{trace}"}}"#))
        ),
        "the revocation exemplar carries the real trace id {trace}\n{om}"
    );
    guard.shutdown();
}
