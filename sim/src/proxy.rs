//! A fault proxy: sits in front of any simulator (or any HTTP server) and, per path pattern or
//! for the next N requests, answers the way a vendor's bad day does: a maintenance page with
//! status 200, garbage, cut-off JSON, the wrong content type, bursts of 401/403, a 404 from a
//! misrouted gateway, absurd Retry-After values, bodies that trickle, connections that break,
//! redirects and lists far too large. Requests no rule matches go through untouched.
//!
//! Rules are set from Rust ([`FaultProxy::set_rules`]) or over HTTP (`POST /_proxy/rules` with
//! a JSON list of [`FaultRule`]; `GET` shows those in force), so tests and a running
//! `latchkey sim --fault-proxy-port N` can both use it.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One way of answering badly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProxyFault {
    /// `200 text/html`: a maintenance page.
    Html200,
    /// `200 application/json` whose body is not JSON.
    Garbage200,
    /// The upstream answer, its body cut in half.
    TruncatedJson,
    /// The upstream answer, labelled `text/plain`.
    WrongContentType,
    /// This status with a small JSON body (401 and 403 bursts).
    Status { status: u16 },
    /// `404 text/html` from a gateway that lost its route.
    NotFoundHtml,
    /// `429` with this literal `Retry-After` value (huge, negative, garbage).
    RetryAfter { value: String },
    /// `429` with an HTTP-date `Retry-After` this many seconds ahead.
    RetryAfterDate { secs_ahead: u64 },
    /// `200 application/json` that sends one byte every `delay_ms` for a long time.
    SlowBody { delay_ms: u64 },
    /// Headers, then the connection breaks before the body.
    Reset,
    /// `302` to a login page.
    Redirect,
    /// `200 application/json`: a list of `items` numbers (8 bytes each), streamed.
    OversizedList { items: u64 },
}

/// When a fault applies: every field given must match; `remaining` counts down and the rule is
/// dropped at zero (None: until cleared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path_contains: Option<String>,
    #[serde(default)]
    pub remaining: Option<u64>,
    pub fault: ProxyFault,
}

impl FaultRule {
    /// Every request, until cleared.
    pub fn always(fault: ProxyFault) -> Self {
        Self {
            method: None,
            path_contains: None,
            remaining: None,
            fault,
        }
    }

    /// Every request with this method, until cleared.
    pub fn on(method: &str, fault: ProxyFault) -> Self {
        Self {
            method: Some(method.to_string()),
            ..Self::always(fault)
        }
    }

    /// The next `n` requests.
    pub fn next(n: u64, fault: ProxyFault) -> Self {
        Self {
            remaining: Some(n),
            ..Self::always(fault)
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<FaultRule>>,
    injected: AtomicU64,
    forwarded: AtomicU64,
}

impl ProxyState {
    /// The fault for this request, counting down a limited rule.
    fn take(&self, method: &str, path: &str) -> Option<ProxyFault> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let i = rules.iter().position(|r| r.matches(method, path))?;
        let fault = rules[i].fault.clone();
        if let Some(n) = rules[i].remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rules.remove(i);
            }
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }
}

/// A running fault proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    shutdown: watch::Sender<bool>,
}

impl FaultProxy {
    /// Serve on `listener`, forwarding to `upstream` (`http://host:port`, no trailing slash).
    pub async fn start(listener: TcpListener, upstream: &str) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            rules: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/_proxy/rules", get(admin_list).post(admin_rules))
            .fallback(handle)
            .with_state(state.clone());
        let (shutdown, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "fault proxy stopped with an error");
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        *self.state.rules.lock().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    pub fn clear(&self) {
        self.set_rules(Vec::new());
    }

    /// Rules still in force (limited rules disappear once used up).
    pub fn rules(&self) -> Vec<FaultRule> {
        self.state
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests answered with a fault so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }

    /// Requests passed to the upstream so far (corrupting faults included).
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

async fn admin_list(State(state): State<Arc<ProxyState>>) -> Response {
    let rules = state
        .rules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    axum::Json(rules).into_response()
}

async fn admin_rules(State(state): State<Arc<ProxyState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<FaultRule>>(&body) {
        Ok(rules) => {
            *state.rules.lock().unwrap_or_else(|e| e.into_inner()) = rules.clone();
            axum::Json(rules).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid rules: {e}")).into_response(),
    }
}

async fn handle(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    match state.take(&method, &path) {
        None => forward(&state, req).await.unwrap_or_else(bad_gateway),
        Some(ProxyFault::TruncatedJson) => match forward_raw(&state, req).await {
            Ok((status, headers, mut body)) => {
                body.truncate(body.len() / 2);
                rebuild(status, headers, body)
            }
            Err(e) => bad_gateway(e),
        },
        Some(ProxyFault::WrongContentType) => match forward_raw(&state, req).await {
            Ok((status, mut headers, body)) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                rebuild(status, headers, body)
            }
            Err(e) => bad_gateway(e),
        },
        Some(fault) => synthesize(&fault),
    }
}

fn bad_gateway(e: String) -> Response {
    (StatusCode::BAD_GATEWAY, format!("fault proxy: {e}")).into_response()
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn synthesize(fault: &ProxyFault) -> Response {
    const PAGE: &str = "<!DOCTYPE html><html><head><title>Scheduled maintenance</title></head>\
        <body><h1>We'll be back soon</h1></body></html>";
    match fault {
        ProxyFault::Html200 => with_type(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        ProxyFault::Garbage200 => with_type(
            StatusCode::OK,
            "application/json",
            Body::from(&b"\x00\x9f\x92garbage}{\x01"[..]),
        ),
        ProxyFault::Status { status } => with_type(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            r#"{"message":"injected by the fault proxy"}"#.into(),
        ),
        ProxyFault::NotFoundHtml => with_type(
            StatusCode::NOT_FOUND,
            "text/html",
            "<html><body><h1>404 Not Found</h1><hr>nginx</body></html>".into(),
        ),
        ProxyFault::RetryAfter { value } => {
            retry_after(HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("garbage")))
        }
        ProxyFault::RetryAfterDate { secs_ahead } => {
            // A fixed `Date` beside it: the client reads the date against the server's clock.
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let at = now
                .checked_add(Duration::from_secs(*secs_ahead))
                .unwrap_or(now);
            let mut r = retry_after(
                HeaderValue::from_str(&httpdate::fmt_http_date(at))
                    .unwrap_or(HeaderValue::from_static("garbage")),
            );
            if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                r.headers_mut().insert(header::DATE, date);
            }
            r
        }
        ProxyFault::SlowBody { delay_ms } => {
            let delay = Duration::from_millis(*delay_ms);
            let stream = futures::stream::unfold(0u32, move |n| async move {
                if n >= 10_000 {
                    return None;
                }
                tokio::time::sleep(delay).await;
                let byte = if n == 0 { "[" } else { " " };
                Some((Ok::<_, std::io::Error>(Bytes::from(byte)), n + 1))
            });
            with_type(
                StatusCode::OK,
                "application/json",
                Body::from_stream(stream),
            )
        }
        ProxyFault::Reset => {
            let stream = futures::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                ))
            });
            with_type(
                StatusCode::OK,
                "application/json",
                Body::from_stream(stream),
            )
        }
        ProxyFault::Redirect => {
            let mut r = with_type(StatusCode::FOUND, "text/html", PAGE.into());
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_static("/login?next=%2F"),
            );
            r
        }
        ProxyFault::OversizedList { items } => oversized(*items),
        // Both need the upstream answer: `handle` forwards them.
        ProxyFault::TruncatedJson | ProxyFault::WrongContentType => {
            bad_gateway("a corrupting fault without an upstream answer".into())
        }
    }
}

fn retry_after(value: HeaderValue) -> Response {
    let mut r = with_type(
        StatusCode::TOO_MANY_REQUESTS,
        "application/json",
        r#"{"message":"slow down"}"#.into(),
    );
    r.headers_mut().insert(header::RETRY_AFTER, value);
    r
}

/// `[10000000,10000001,...]`, generated chunk by chunk so the proxy holds no more than one.
fn oversized(items: u64) -> Response {
    const PER_CHUNK: u64 = 8192;
    let stream = futures::stream::unfold(0u64, move |from| async move {
        if from > items {
            return None;
        }
        let to = from.saturating_add(PER_CHUNK).min(items);
        let mut s = String::with_capacity(((to - from) * 8 + 2) as usize);
        if from == 0 {
            s.push('[');
        }
        for i in from..to {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&(10_000_000 + i % 89_999_999).to_string());
        }
        if to == items {
            s.push(']');
        }
        let next = if to == items { items + 1 } else { to };
        Some((Ok::<_, std::io::Error>(Bytes::from(s)), next))
    });
    with_type(
        StatusCode::OK,
        "application/json",
        Body::from_stream(stream),
    )
}

async fn forward(state: &ProxyState, req: Request) -> Result<Response, String> {
    let (status, headers, body) = forward_raw(state, req).await?;
    Ok(rebuild(status, headers, body))
}

fn rebuild(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    for (k, v) in &headers {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING && k != header::CONNECTION
        {
            r.headers_mut().append(k.clone(), v.clone());
        }
    }
    r
}

async fn forward_raw(
    state: &ProxyState,
    req: Request,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    state.forwarded.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .map_err(|e| format!("request body: {e}"))?;
    let method =
        reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = state
        .client
        .request(method, format!("{}{path_and_query}", state.upstream))
        .body(body.to_vec());
    for (k, v) in &parts.headers {
        if k != header::HOST && k != header::CONTENT_LENGTH && k != header::CONNECTION {
            rb = rb.header(k.as_str(), v.as_bytes());
        }
    }
    let resp = rb.send().await.map_err(|e| format!("upstream: {e}"))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_str().as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("upstream body: {e}"))?;
    Ok((status, headers, body.to_vec()))
}
