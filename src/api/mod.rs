//! The daemon's HTTP server: health, and the routes later stages attach (SCIM, metrics, the admin
//! API and the web console).
//!
//! The entry point takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and the
//! daemon drains open requests on SIGTERM.

pub mod admin;
pub mod console;
pub mod metrics;
pub mod scim;

use crate::engine::Engine;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    /// Live dispatcher workers per lane; None where no dispatcher runs in this process.
    pub lanes: Option<Arc<crate::dispatch::lanes::Lanes>>,
    /// This replica's leases; None where the process takes part in none.
    pub leases: Option<Arc<crate::leases::Leases>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state.clone())
        .merge(admin::router(state.clone()))
        .merge(console::router(state.clone()))
        .merge(scim::router(state))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The store answers and its migrations are applied, and every dispatcher lane has a live worker.
/// The body then lists every lease and its holder (see [`crate::leases`]).
async fn readyz(State(state): State<ApiState>) -> (StatusCode, String) {
    if let Some(reason) = state.lanes.as_ref().and_then(|l| l.not_ready()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    match crate::store::audit::head(state.engine.store.pool()).await {
        Ok(_) => {
            // Which replica holds which source, job and lane: for an operator, not for the probe.
            let mut body = String::from("ready\n");
            if let Some(leases) = &state.leases {
                body.push_str(&format!("replica {}\n", leases.holder()));
                match crate::leases::describe(&state.engine.store, Some(leases.holder())).await {
                    Ok(lines) => lines
                        .iter()
                        .for_each(|l| body.push_str(&format!("lease {l}\n"))),
                    Err(e) => body.push_str(&format!("leases unavailable: {e}\n")),
                }
            }
            (StatusCode::OK, body)
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}
