//! `/metrics`: Prometheus scrape endpoint. OpenMetrics (with the trace id exemplars on latency
//! buckets) for clients that ask for it, as Prometheus does; the classic text format otherwise.

use super::ApiState;
use crate::clock::to_micros;
use crate::telemetry::metrics::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;

pub async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> impl IntoResponse {
    let engine = &state.engine;
    let now = to_micros(engine.clock.now());
    if let Err(e) = engine.metrics.collect(&engine.store, now).await {
        // What the process counted itself is still right; the store's gauges keep their last
        // values and `/readyz` reports the store.
        tracing::warn!(error = %e, "metrics: store gauges not refreshed");
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            engine.metrics.encode_openmetrics(),
        )
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            engine.metrics.encode_prometheus(),
        )
    }
}
