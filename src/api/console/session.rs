//! Signing in and out of the console, and the session a browser holds in between.
//!
//! A session is a random 256-bit token in an `HttpOnly`, `SameSite=Lax` cookie scoped to
//! `/console`; the store keeps only its SHA-256 (`store::console`). Forms carry a CSRF token
//! derived from the session token, so it needs no storage and no other page can know it; a form
//! posted from another origin is refused as well. Signing in and out is audited.

use super::{ConsoleState, Pending, render};
use crate::audit;
use crate::clock::to_micros;
use crate::operators::{Operator, Role, Via};
use crate::store;
use askama::Template;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "latchkey_session";
const LOGIN_COOKIE: &str = "latchkey_login";
const NEXT_COOKIE: &str = "latchkey_next";
/// How long a started single sign-on may take before its login cookie is gone.
const LOGIN_SECONDS: u32 = 600;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    pub display_name: String,
    /// The token for this session's forms.
    pub csrf: String,
    token_sha256: String,
}

impl Session {
    /// The operator, if their role includes `needed`; else the page that says so (403).
    pub fn require(&self, needed: Role) -> Result<&Operator, Box<Response>> {
        if self.operator.role.allows(needed) {
            return Ok(&self.operator);
        }
        Err(Box::new(super::pages::message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "You are signed in as {} with role {}; this needs {needed} or above.",
                self.display_name, self.operator.role
            ),
            Some(self),
        )))
    }

    /// A form's action: its CSRF token must be this session's and the operator's role include
    /// `needed`; the operator who acts, or the page that refuses.
    pub fn act(&self, csrf: &str, needed: Role) -> Result<Operator, Box<Response>> {
        self.check_csrf(csrf)?;
        self.require(needed).cloned()
    }

    /// Whether a form's CSRF token is this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), Box<Response>> {
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            return Ok(());
        }
        Err(Box::new(super::pages::message(
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form was not issued for your current sign-in. Reload the page and try again.",
            Some(self),
        )))
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn csrf_of(token: &str) -> String {
    sha256_hex(&format!("latchkey-console-csrf\0{token}"))
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn set_cookie(state: &ConsoleState, name: &str, value: &str, path: &str, max_age: u32) -> String {
    let secure = if state.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

/// Where to go after signing in: only a console page (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console") && !n.contains("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/console".to_string(),
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|_| parts.method == axum::http::Method::GET);
        let to_login = || {
            let q = next
                .as_deref()
                .map(|n| format!("?next={}", urlencode(n)))
                .unwrap_or_default();
            Redirect::to(&format!("/console/login{q}")).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let hash = sha256_hex(token);
        let now = to_micros(state.api.engine.clock.now());
        let row = store::console::live(state.api.engine.store.pool(), &hash, now)
            .await
            .map_err(|e| super::pages::failure(&e))?;
        let Some(row) = row else {
            return Err(to_login());
        };
        let Ok(role) = row.role.parse::<Role>() else {
            return Err(to_login());
        };
        let (via, name) = match row.actor.split_once(':') {
            Some(("oidc", n)) => (Via::Oidc, n.to_string()),
            Some((_, n)) => (Via::Token, n.to_string()),
            None => (Via::Token, row.actor.clone()),
        };
        if parts.method != axum::http::Method::GET && !same_origin(&parts.headers, state) {
            return Err(super::pages::message(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was posted from another site.",
                None,
            ));
        }
        Ok(Session {
            operator: Operator { name, role, via },
            display_name: row.display_name,
            csrf: csrf_of(token),
            token_sha256: hash,
        })
    }
}

/// A form's `Origin`, when the browser sends one, must be the console's own.
fn same_origin(headers: &HeaderMap, state: &ConsoleState) -> bool {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => state.origin().is_some_and(|mine| mine == origin),
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    /// Nobody is signed in: the layout shows no navigation.
    nav: Option<super::pages::Nav>,
    sso: Option<&'a str>,
    token_login: bool,
    next: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

fn login_form(
    state: &ConsoleState,
    next: String,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let page = LoginPage {
        nav: None,
        sso: state.oidc.as_ref().map(|o| o.display_name()),
        token_login: state.config.token_login,
        next,
        error,
    };
    (status, render(&page, std::time::Instant::now())).into_response()
}

pub async fn login_page(
    State(state): State<ConsoleState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_form(
        &state,
        safe_next(q.next.as_deref()),
        q.error,
        StatusCode::OK,
    )
}

/// Start a single sign-on: the browser keeps state, nonce and PKCE verifier in a short-lived
/// cookie and goes to the provider.
pub async fn oidc_begin(
    State(state): State<ConsoleState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let Some(oidc) = &state.oidc else {
        return super::pages::message(
            StatusCode::NOT_FOUND,
            "No single sign-on",
            "This console has no `[console.oidc]`.",
            None,
        );
    };
    match oidc.begin().await {
        Ok((url, pending)) => {
            let mut resp = Redirect::to(&url).into_response();
            let h = resp.headers_mut();
            let login = set_cookie(
                &state,
                LOGIN_COOKIE,
                &pending.to_cookie(),
                "/console",
                LOGIN_SECONDS,
            );
            let next = set_cookie(
                &state,
                NEXT_COOKIE,
                &urlencode(&safe_next(q.next.as_deref())),
                "/console",
                LOGIN_SECONDS,
            );
            for c in [login, next] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "console single sign-on could not start");
            login_form(
                &state,
                "/console".into(),
                Some(e.to_string()),
                StatusCode::BAD_GATEWAY,
            )
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider sends the browser back here with a code (or an error).
pub async fn oidc_callback(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Response {
    let refuse = |msg: String| {
        tracing::warn!(reason = %msg, "console sign-in refused");
        login_form(
            &state,
            "/console".into(),
            Some(msg),
            StatusCode::UNAUTHORIZED,
        )
    };
    let Some(oidc) = &state.oidc else {
        return refuse("this console has no single sign-on".into());
    };
    if let Some(e) = cb.error {
        let detail = cb.error_description.unwrap_or_default();
        return refuse(format!("the identity provider answered `{e}` {detail}"));
    }
    let pending = cookie(&headers, LOGIN_COOKIE).and_then(Pending::from_cookie);
    let (Some(pending), Some(code), Some(returned)) = (pending, cb.code, cb.state) else {
        return refuse("the sign-in expired or was started in another browser: start again".into());
    };
    if !bool::from(pending.state.as_bytes().ct_eq(returned.as_bytes())) {
        return refuse("the sign-in's state does not match this browser's: start again".into());
    }
    let who = match oidc.finish(&code, &pending).await {
        Ok(w) => w,
        Err(e) => return refuse(e.to_string()),
    };
    let next = cookie(&headers, NEXT_COOKIE).and_then(|n| {
        url::form_urlencoded::parse(format!("n={n}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    });
    let operator = Operator {
        name: who.name.clone(),
        role: who.role,
        via: Via::Oidc,
    };
    let details = serde_json::json!({"via": "oidc", "role": who.role, "subject": who.subject});
    let mut resp = open_session(
        &state,
        operator,
        &who.name,
        details,
        &safe_next(next.as_deref()),
    )
    .await;
    for gone in [LOGIN_COOKIE, NEXT_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&set_cookie(&state, gone, "", "/console", 0)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct TokenLogin {
    token: String,
    next: Option<String>,
}

/// Sign in with an operator's bearer token (where `token_login` allows it).
pub async fn token_login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<TokenLogin>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    if !state.config.token_login {
        return login_form(
            &state,
            next,
            Some("token sign-in is turned off here".into()),
            StatusCode::FORBIDDEN,
        );
    }
    if !same_origin(&headers, &state) {
        return login_form(
            &state,
            next,
            Some("this form was posted from another site".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let Some(op) = state.operators.authenticate(form.token.trim()).cloned() else {
        return login_form(
            &state,
            next,
            Some("unknown or revoked token".into()),
            StatusCode::UNAUTHORIZED,
        );
    };
    let name = op.name.clone();
    let details = serde_json::json!({"via": "token", "role": op.role});
    open_session(&state, op, &name, details, &next).await
}

/// Record the sign-in (audited in the same transaction) and hand the browser its cookie.
async fn open_session(
    state: &ConsoleState,
    operator: Operator,
    display_name: &str,
    details: serde_json::Value,
    next: &str,
) -> Response {
    let token = crate::operators::new_token();
    let now = to_micros(state.api.engine.clock.now());
    let hours = state.config.session_hours;
    let row = store::console::SessionRow {
        token_sha256: sha256_hex(&token),
        actor: operator.actor(),
        display_name: display_name.to_string(),
        role: operator.role.to_string(),
        via: match operator.via {
            Via::Oidc => "oidc".into(),
            Via::Token => "token".into(),
        },
        created_at: now,
        expires_at: now + i64::from(hours) * 3_600_000_000,
    };
    let written = async {
        let mut tx = state.api.engine.store.begin_write().await?;
        store::console::open(&mut tx, &row).await?;
        audit::append(
            &mut tx,
            now,
            &row.actor,
            "console.signed_in",
            &row.actor,
            &details,
        )
        .await?;
        tx.commit().await?;
        Ok::<(), crate::store::StoreError>(())
    };
    if let Err(e) = written.await {
        return super::pages::failure(&e);
    }
    let mut resp = Redirect::to(next).into_response();
    let cookie = set_cookie(state, SESSION_COOKIE, &token, "/console", hours * 3600);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(
    State(state): State<ConsoleState>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.check_csrf(&form.csrf) {
        return *r;
    }
    let now = to_micros(state.api.engine.clock.now());
    let actor = session.operator.actor();
    let written = async {
        let mut tx = state.api.engine.store.begin_write().await?;
        if store::console::close(&mut tx, &session.token_sha256)
            .await?
            .is_some()
        {
            audit::append(
                &mut tx,
                now,
                &actor,
                "console.signed_out",
                &actor,
                &serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<(), crate::store::StoreError>(())
    };
    if let Err(e) = written.await {
        return super::pages::failure(&e);
    }
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&state, SESSION_COOKIE, "", "/console", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_pages_are_places_to_return_to() {
        assert_eq!(safe_next(Some("/console/keys?x=1")), "/console/keys?x=1");
        assert_eq!(safe_next(Some("https://evil.example/console")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(Some("/api/v1/people")), "/console");
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn cookies_are_read_by_name_among_several() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; latchkey_session=tok; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn the_form_token_depends_on_the_session() {
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a"), csrf_of("a"));
    }
}
