//! The web console under `/console`: server-rendered pages for the people who run the estate day
//! to day (the key desk, security approvers, auditors, SREs), usable on a phone.
//!
//! Pages are askama templates (`templates/`, checked when the crate compiles) over the same
//! `views` the admin API answers from, so the console never shows something the API would not.
//! People sign in with OpenID Connect (`oidc.rs`) or, where allowed, an operator token; the
//! browser then holds a session cookie (`session.rs`). Every form carries a token derived from
//! the session (CSRF), and every action is audited with the signed-in operator, like the API's.

mod oidc;
mod pages;
mod requests;
mod reviews;
mod session;

pub use oidc::{Oidc, OidcError, Pending, SignedIn};
pub use session::Session;

use super::ApiState;
use crate::config::{ConfigError, ConsoleConfig};
use crate::operators::Operators;
use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// What the console's handlers reach.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    pub api: ApiState,
    pub config: Arc<ConsoleConfig>,
    pub operators: Arc<Operators>,
    pub oidc: Option<Arc<Oidc>>,
}

impl ConsoleState {
    /// Cookies carry `Secure` when people reach the console over https.
    pub fn secure_cookies(&self) -> bool {
        self.config.public_url.starts_with("https://")
    }

    /// The console's own origin (`https://host:port`), which a form's `Origin` must be.
    pub fn origin(&self) -> Option<String> {
        let u = url::Url::parse(&self.config.public_url).ok()?;
        Some(u.origin().ascii_serialization())
    }
}

/// The console's relying party, with its client secret resolved as every other secret is.
fn relying_party(config: &crate::config::Config) -> Result<Option<Oidc>, ConfigError> {
    let Some(console) = &config.console else {
        return Ok(None);
    };
    let Some(o) = &console.oidc else {
        return Ok(None);
    };
    let secret = o
        .client_secret
        .as_ref()
        .map(|s| config.secret("console.oidc.client_secret", s))
        .transpose()?;
    Oidc::new(o.clone(), secret, &console.public_url)
        .map(Some)
        .map_err(|e| ConfigError::Secret {
            name: "console.oidc".into(),
            message: e.to_string(),
        })
}

/// A console that cannot sign anyone in (its client secret is missing) is a configuration error,
/// reported by `run` before anything starts.
pub fn check(config: &crate::config::Config) -> Result<(), ConfigError> {
    relying_party(config).map(|_| ())
}

/// The console's routes, or none where `[console]` is not configured. Should the relying party
/// not build (`check` refuses that at start-up), the console serves its pages with token sign-in
/// only and says why single sign-on is missing in the log.
pub fn router(state: ApiState) -> Router {
    let Some(config) = state.engine.config.console.clone() else {
        return Router::new();
    };
    let oidc = match relying_party(&state.engine.config) {
        Ok(rp) => rp.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %e, "the console's single sign-on is not available");
            None
        }
    };
    let console = ConsoleState {
        operators: Arc::new(Operators::from_config(&state.engine.config)),
        config: Arc::new(config),
        oidc,
        api: state,
    };
    routes().with_state(console)
}

fn routes() -> Router<ConsoleState> {
    use pages::*;
    use requests::*;
    use reviews::*;
    use session::*;
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(overview))
        .route("/console/login", get(login_page))
        .route("/console/login/oidc", get(oidc_begin))
        .route("/console/login/token", post(token_login))
        .route("/console/callback", get(oidc_callback))
        .route("/console/logout", post(logout))
        .route("/console/people", get(people))
        .route("/console/people/{key}", get(person))
        .route("/console/who-has", get(who_has))
        .route("/console/approvals", get(approvals))
        .route("/console/approvals/{id}/{decision}", post(decide))
        .route("/console/requests", get(requests).post(ask))
        .route("/console/requests/{id}/{action}", post(act_on_request))
        .route("/console/emergencies", post(break_glass))
        .route("/console/emergencies/{id}/review", post(review_emergency))
        .route("/console/reviews", get(reviews).post(start_review))
        .route("/console/reviews/{id}", get(review))
        .route("/console/reviews/{id}/items/{item}", post(decide_item))
        .route("/console/keys", get(key_desk))
        .route("/console/keys/{id}/{done}", post(record_key))
        .route("/console/audit", get(audit))
        .route("/console/static/console.css", get(stylesheet))
        .route("/console/static/console.js", get(script))
        .layer(axum::middleware::map_response(harden))
}

/// Headers every console answer carries: no framing, no sniffing, scripts and styles only from
/// the console itself, nothing cached (pages show who holds which door).
async fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    resp
}

/// A rendered page, with the server time it took (`Server-Timing`, for the 100 ms budget).
pub(crate) fn render(page: &impl Template, started: std::time::Instant) -> Response {
    match page.render() {
        Ok(html) => {
            let mut resp = Html(html).into_response();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.1}")) {
                resp.headers_mut().insert("server-timing", v);
            }
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "console page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("static/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("static/console.js"),
    )
}
