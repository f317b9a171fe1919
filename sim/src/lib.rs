//! In-memory vendor API simulators served over real HTTP.
//!
//! Integration tests, benchmarks and `latchkey sim VENDOR --port N` run a
//! connector against these instead of a live tenant. This module holds the
//! pieces every vendor simulator shares: bearer-token auth, fault injection,
//! rate limiting, the request log with its statistics, the `/_sim` admin
//! endpoints and the [`SimServer`] handle. Vendor behaviour (routes, state,
//! quirks) lives beside it, one file per vendor.
//!
//! A crate of its own so that the daemon's library holds no simulator: the daemon links it only
//! for `latchkey sim`, `latchkey demo` and `latchkey bench` (its default `sim` feature).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod brivo;
pub mod cabinet;
pub mod clock;
pub mod generic;
pub mod kisi;
pub mod nuki;
pub mod openpath;
pub mod proxy;
pub mod salto;
pub mod verkada;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use nuki::{AuthSnapshot, NukiOptions, NukiSim, UserSnapshot, start_nuki};

/// Vendors `start` knows by name.
pub const KNOWN_VENDORS: &[&str] = &[
    "nuki", "kisi", "verkada", "brivo", "openpath", "salto", "cabinet",
];

/// How long `shutdown` waits for in-flight connections before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown simulator vendor {name:?}; known vendors: {known}")]
    UnknownVendor { name: String, known: String },
    #[error("simulator i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("simulator for profile {origin}: {message}")]
    Profile { origin: String, message: String },
}

/// Injected failures, applied after the bearer-token check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction of requests answered 500/502/503 before the handler runs.
    pub error_rate: f64,
    /// Fraction of mutating requests that are applied but whose response is
    /// then held for the server's `timeout_hold`: the change happened, the
    /// client never hears, and only a read-back reveals it.
    pub timeout_rate: f64,
    /// Uniform extra latency in milliseconds, inclusive range.
    pub latency_ms: (u64, u64),
    /// Every request answers 503 while true.
    pub outage: bool,
    /// While set, every request answers 429 with `Retry-After: <secs>`.
    pub storm_429: Option<u64>,
    /// A 429 storm placed by request count rather than by time, so a test knows it lands in
    /// the middle of its run.
    pub storm_429_at: Option<Storm>,
}

/// A 429 storm by count: once `after` requests have reached the fault stage (since these faults
/// were set), the next `answers` are refused with `429` and `Retry-After: <retry_after_secs>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storm {
    pub after: u64,
    pub answers: u64,
    pub retry_after_secs: u64,
}

impl Faults {
    pub fn none() -> Self {
        Self {
            error_rate: 0.0,
            timeout_rate: 0.0,
            latency_ms: (0, 0),
            outage: false,
            storm_429: None,
            storm_429_at: None,
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::none()
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedRequest {
    /// Arrival order, from 0.
    pub seq: u64,
    /// Arrival time since the simulator started.
    pub at: Duration,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Status sent (for a held timeout response: the status it will carry).
    /// 0 while unanswered, and stays 0 when the client went away first.
    pub status: u16,
}

/// Counters over the request log plus vendor state sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Most arrivals inside any rolling one-second window.
    pub max_requests_in_any_second: u64,
    /// Most arrivals inside one whole second counted from simulator start.
    pub max_requests_in_calendar_second: u64,
    pub duplicates_created: u64,
    pub auths_live: usize,
    pub users: usize,
}

/// Settings every vendor simulator shares.
#[derive(Debug, Clone)]
pub(crate) struct CommonOptions {
    pub token: String,
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

/// A vendor's own front door: its auth scheme and, where it has one, its rate-limit answer.
/// Returns the rejection, or None to let the request through to faults and the handler.
pub(crate) type Gate = Arc<dyn Fn(&GateRequest<'_>) -> Option<Response> + Send + Sync>;

pub(crate) struct GateRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a header::HeaderMap,
    /// Over the shared per-second limit (`rate_limit_per_sec`).
    pub over_rate_limit: bool,
}

/// State the shared middleware and the handle both reach.
struct Shared {
    gate: Option<Gate>,
    started: Instant,
    token: String,
    rate_limit_per_sec: Option<u32>,
    timeout_hold: Duration,
    faults: Mutex<Faults>,
    /// Requests that reached the fault stage since the faults were last set (for [`Storm`]).
    fault_stage: std::sync::atomic::AtomicU64,
    log: Mutex<Vec<LoggedRequest>>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_faults(&self, faults: Faults) {
        let mut current = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        *current = faults;
        self.fault_stage
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Is this request, the next to reach the fault stage, inside the storm?
    fn in_storm(&self, storm: Option<Storm>) -> Option<u64> {
        let n = self
            .fault_stage
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s = storm?;
        (n >= s.after && n - s.after < s.answers).then_some(s.retry_after_secs)
    }

    /// Appends the arrival and reports whether it exceeds the rate limit.
    /// Rejected requests count too: abuse protection looks at what arrives.
    fn arrive(&self, method: &Method, path: &str, query: Option<&str>) -> (u64, bool) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let at = self.started.elapsed();
        let seq = log.len() as u64;
        log.push(LoggedRequest {
            seq,
            at,
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            status: 0,
        });
        let limited = self.rate_limit_per_sec.is_some_and(|limit| {
            let window_start = at.saturating_sub(Duration::from_secs(1));
            let in_window = log
                .iter()
                .rev()
                .take(limit as usize + 1)
                .take_while(|r| r.at > window_start)
                .count();
            in_window > limit as usize
        });
        (seq, limited)
    }

    fn answered(&self, seq: u64, status: StatusCode) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = usize::try_from(seq).ok().and_then(|i| log.get_mut(i)) {
            entry.status = status.as_u16();
        }
    }

    fn requests(&self) -> Vec<LoggedRequest> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sleeps, cut short when the server shuts down so held responses do not
    /// keep it alive.
    async fn hold(&self, dur: Duration) {
        if dur.is_zero() {
            return;
        }
        let mut rx = self.shutdown.subscribe();
        tokio::select! {
            () = tokio::time::sleep(dur) => {}
            _ = rx.wait_for(|stopped| *stopped) => {}
        }
    }
}

fn stats_from_log(log: &[LoggedRequest]) -> SimStats {
    let mut by_status = BTreeMap::new();
    let mut calendar: BTreeMap<u64, u64> = BTreeMap::new();
    for r in log {
        *by_status.entry(r.status).or_insert(0) += 1;
        *calendar.entry(r.at.as_secs()).or_insert(0) += 1;
    }
    // Arrivals are appended under the log lock, so `at` is non-decreasing and
    // a two-pointer sweep finds the densest one-second window.
    let mut max_rolling = 0u64;
    let mut lo = 0usize;
    for (hi, r) in log.iter().enumerate() {
        while r.at.saturating_sub(log[lo].at) >= Duration::from_secs(1) {
            lo += 1;
        }
        max_rolling = max_rolling.max((hi - lo + 1) as u64);
    }
    SimStats {
        requests: log.len() as u64,
        by_status,
        max_requests_in_any_second: max_rolling,
        max_requests_in_calendar_second: calendar.values().copied().max().unwrap_or(0),
        ..SimStats::default()
    }
}

/// `f64` probabilities from JSON can be anything; `random_bool` only accepts [0, 1].
fn roll(p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rand::rng().random_bool(p)
    }
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "detailMessage": message })),
    )
        .into_response()
}

/// What the fault dice decided for one request, drawn before any await
/// because the thread-local RNG is not `Send`.
struct Draw {
    error: Option<StatusCode>,
    latency: Duration,
    hold: bool,
}

fn draw(faults: &Faults, mutating: bool) -> Draw {
    let mut rng = rand::rng();
    let error = roll(faults.error_rate).then(|| match rng.random_range(0..3u8) {
        0 => StatusCode::INTERNAL_SERVER_ERROR,
        1 => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    });
    let (a, b) = faults.latency_ms;
    let latency = Duration::from_millis(rng.random_range(a.min(b)..=a.max(b)));
    Draw {
        error,
        latency,
        hold: mutating && roll(faults.timeout_rate),
    }
}

async fn sim_middleware(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    // The admin surface is for the operator of the run, not the client under
    // test: it is neither authenticated, faulted nor logged.
    if req.uri().path().starts_with("/_sim/") {
        return next.run(req).await;
    }
    let (seq, rate_limited) = shared.arrive(req.method(), req.uri().path(), req.uri().query());
    let response = guarded(&shared, seq, rate_limited, req, next).await;
    shared.answered(seq, response.status());
    response
}

async fn guarded(
    shared: &Shared,
    seq: u64,
    rate_limited: bool,
    req: Request,
    next: Next,
) -> Response {
    if let Some(gate) = &shared.gate {
        let g = GateRequest {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            over_rate_limit: rate_limited,
        };
        if let Some(rejected) = gate(&g) {
            return rejected;
        }
        return faulted(shared, seq, req, next).await;
    }
    let expected = format!("Bearer {}", shared.token);
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    if rate_limited {
        // vendor-apis.md Nuki: no rate limit is documented, only abuse
        // protection, and no Retry-After comes with its 429.
        return json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    }
    faulted(shared, seq, req, next).await
}

async fn faulted(shared: &Shared, seq: u64, req: Request, next: Next) -> Response {
    let faults = shared.faults();
    if faults.outage {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    if let Some(secs) = faults.storm_429.or(shared.in_storm(faults.storm_429_at)) {
        let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    let d = draw(&faults, mutating);
    if let Some(status) = d.error {
        return json_error(status, "injected failure");
    }
    shared.hold(d.latency).await;
    let response = next.run(req).await;
    if d.hold {
        // Record the outcome now: the change is applied even though the
        // client will most likely give up before the response arrives.
        shared.answered(seq, response.status());
        shared.hold(shared.timeout_hold).await;
    }
    response
}

/// Vendor state behind a running simulator.
#[derive(Clone)]
enum Vendor {
    Nuki(Arc<NukiSim>),
    Kisi(Arc<kisi::KisiSim>),
    Verkada(Arc<verkada::VerkadaSim>),
    Brivo(Arc<brivo::BrivoSim>),
    Openpath(Arc<openpath::OpenpathSim>),
    Salto(Arc<salto::SaltoSim>),
    Cabinet(Arc<cabinet::CabinetSim>),
    Generic(Arc<generic::GenericSim>),
}

/// Counters every group-based simulator reports.
pub(crate) trait GroupSim {
    fn duplicates_created(&self) -> u64;
    fn memberships(&self) -> usize;
    fn user_count(&self) -> usize;
}

impl Vendor {
    fn fill_stats(&self, stats: &mut SimStats) {
        match self {
            Vendor::Nuki(n) => {
                stats.duplicates_created = n.duplicates_created();
                stats.auths_live = n.auths_live();
                stats.users = n.user_count();
            }
            Vendor::Kisi(v) => group_stats(v.as_ref(), stats),
            Vendor::Verkada(v) => group_stats(v.as_ref(), stats),
            Vendor::Brivo(v) => group_stats(v.as_ref(), stats),
            Vendor::Openpath(v) => group_stats(v.as_ref(), stats),
            Vendor::Salto(v) => group_stats(v.as_ref(), stats),
            Vendor::Cabinet(v) => group_stats(v.as_ref(), stats),
            Vendor::Generic(v) => group_stats(v.as_ref(), stats),
        }
    }
}

fn group_stats(v: &dyn GroupSim, stats: &mut SimStats) {
    stats.duplicates_created = v.duplicates_created();
    stats.auths_live = v.memberships();
    stats.users = v.user_count();
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    vendor: Vendor,
}

fn stats_of(shared: &Shared, vendor: &Vendor) -> SimStats {
    let mut stats = {
        let log = shared.log.lock().unwrap_or_else(|e| e.into_inner());
        stats_from_log(&log)
    };
    vendor.fill_stats(&mut stats);
    stats
}

async fn admin_stats(State(st): State<AdminState>) -> Json<SimStats> {
    Json(stats_of(&st.shared, &st.vendor))
}

async fn admin_requests(State(st): State<AdminState>) -> Json<Vec<LoggedRequest>> {
    Json(st.shared.requests())
}

async fn admin_faults(State(st): State<AdminState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            st.shared.set_faults(f.clone());
            Json(f).into_response()
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
    }
}

/// A running simulator. Dropping it or calling [`SimServer::shutdown`] stops it.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    vendor: Vendor,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        stats_of(&self.shared, &self.vendor)
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.requests()
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn nuki(&self) -> Option<&NukiSim> {
        match &self.vendor {
            Vendor::Nuki(n) => Some(n),
            _ => None,
        }
    }

    pub fn kisi(&self) -> Option<&kisi::KisiSim> {
        match &self.vendor {
            Vendor::Kisi(n) => Some(n),
            _ => None,
        }
    }

    pub fn verkada(&self) -> Option<&verkada::VerkadaSim> {
        match &self.vendor {
            Vendor::Verkada(n) => Some(n),
            _ => None,
        }
    }

    pub fn brivo(&self) -> Option<&brivo::BrivoSim> {
        match &self.vendor {
            Vendor::Brivo(n) => Some(n),
            _ => None,
        }
    }

    pub fn openpath(&self) -> Option<&openpath::OpenpathSim> {
        match &self.vendor {
            Vendor::Openpath(n) => Some(n),
            _ => None,
        }
    }

    pub fn salto(&self) -> Option<&salto::SaltoSim> {
        match &self.vendor {
            Vendor::Salto(n) => Some(n),
            _ => None,
        }
    }

    pub fn cabinet(&self) -> Option<&cabinet::CabinetSim> {
        match &self.vendor {
            Vendor::Cabinet(n) => Some(n),
            _ => None,
        }
    }

    /// The simulator built from a profile's `[simulator]` section.
    pub fn generic(&self) -> Option<&generic::GenericSim> {
        match &self.vendor {
            Vendor::Generic(n) => Some(n),
            _ => None,
        }
    }

    /// Stops accepting, releases held responses, and waits briefly for open
    /// connections to finish.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Wraps a vendor router with the shared middleware and admin routes and
/// serves it on `listener`.
async fn serve(
    listener: TcpListener,
    common: CommonOptions,
    vendor: Vendor,
    vendor_routes: Router,
) -> std::io::Result<SimServer> {
    serve_gated(listener, common, vendor, vendor_routes, None).await
}

/// [`serve`] with the vendor's own auth and rate-limit answer in place of the bearer check.
async fn serve_gated(
    listener: TcpListener,
    common: CommonOptions,
    vendor: Vendor,
    vendor_routes: Router,
    gate: Option<Gate>,
) -> std::io::Result<SimServer> {
    let addr = listener.local_addr()?;
    let (shutdown, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        gate,
        started: Instant::now(),
        token: common.token,
        rate_limit_per_sec: common.rate_limit_per_sec,
        timeout_hold: common.timeout_hold,
        faults: Mutex::new(common.faults),
        fault_stage: Default::default(),
        log: Mutex::new(Vec::new()),
        shutdown,
    });
    let admin = Router::new()
        .route("/_sim/stats", get(admin_stats))
        .route("/_sim/requests", get(admin_requests))
        .route("/_sim/faults", post(admin_faults))
        .with_state(AdminState {
            shared: shared.clone(),
            vendor: vendor.clone(),
        });
    let app = vendor_routes
        .merge(admin)
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            sim_middleware,
        ));
    let mut stop = shared.shutdown.subscribe();
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "simulator server stopped with an error");
        }
    });
    Ok(SimServer {
        addr,
        shared,
        vendor,
        task: Some(task),
    })
}

/// Starts a simulator by vendor name with default options, for
/// `latchkey sim VENDOR --port N`.
pub async fn start(
    vendor: &str,
    listener: TcpListener,
    token: String,
) -> Result<SimServer, SimError> {
    match vendor.to_ascii_lowercase().as_str() {
        "nuki" => Ok(start_nuki(
            listener,
            NukiOptions {
                token,
                ..NukiOptions::default()
            },
        )
        .await?),
        "kisi" => Ok(kisi::start_kisi(
            listener,
            kisi::KisiOptions {
                api_key: token,
                ..Default::default()
            },
        )
        .await?),
        "verkada" => Ok(verkada::start_verkada(
            listener,
            verkada::VerkadaOptions {
                api_key: token,
                ..Default::default()
            },
        )
        .await?),
        "brivo" => Ok(brivo::start_brivo(
            listener,
            brivo::BrivoOptions {
                api_key: token,
                ..Default::default()
            },
        )
        .await?),
        "openpath" => Ok(openpath::start_openpath(
            listener,
            openpath::OpenpathOptions {
                password: token,
                ..Default::default()
            },
        )
        .await?),
        "salto" => Ok(salto::start_salto(
            listener,
            salto::SaltoOptions {
                client_secret: token,
                ..Default::default()
            },
        )
        .await?),
        "cabinet" => Ok(cabinet::start_cabinet(
            listener,
            cabinet::CabinetOptions {
                token,
                ..Default::default()
            },
        )
        .await?),
        _ => Err(SimError::UnknownVendor {
            name: vendor.to_owned(),
            known: KNOWN_VENDORS.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests;
