//! The admin API under `/api/v1`: JSON for operators and their automation, authenticated by
//! bearer tokens (`[operators]`), each route allowed from one role up (see `crate::operators`).
//! Errors are RFC 9457 problem documents (`application/problem+json`); lists are paged with
//! `limit` and `offset` (people, which may be many, with `limit` and `cursor`). The OpenAPI
//! document is generated from the handlers and served at `/api/v1/openapi.json`.

mod routes;
pub mod views;

use super::ApiState;
use crate::operators::{Operator, Operators, Role};
use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

/// What the admin handlers reach: the daemon's state and the operators who may call.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub api: ApiState,
    pub operators: Arc<Operators>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "latchkey admin API",
        description = "People and what they hold, who-has, held changes, dead letters, key tasks, \
                       source health, reports and the audit log. Bearer token per operator; each \
                       route names the least role it needs (viewer < desk < approver < admin)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Every `/api/v1` route, and the OpenAPI document describing them.
pub fn api(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let operators = Arc::new(Operators::from_config(&state.engine.config));
    let (router, doc) = routes::all(OpenApiRouter::with_openapi(ApiDoc::openapi()))
        .with_state(AdminState {
            api: state,
            operators,
        })
        .split_for_parts();
    let served = doc.clone();
    let router = router.route(
        "/api/v1/openapi.json",
        axum::routing::get(move || {
            let doc = served.clone();
            async move { Json(doc) }
        }),
    );
    (router.layer(axum::middleware::from_fn(etag)), doc)
}

/// Entity tags on every successful `GET`: the SHA-256 of the body (first 128 bits). A client that
/// sends it back in `If-None-Match` gets `304 Not Modified` without the body, so a dashboard or
/// script polling a person, a report or a page of the audit log moves bytes only when it changed.
async fn etag(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{Method, header};
    use axum::response::IntoResponse;
    let get = req.method() == Method::GET;
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    // JSON answers only: an audit export streams and is never buffered here.
    if !get || resp.status() != StatusCode::OK || !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Answers are bounded by paging (at most 1,000 items); the cap only guards the buffer.
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    let Ok(value) = axum::http::HeaderValue::from_str(&tag) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let matches = if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == tag)
        });
    parts.headers.insert(header::ETAG, value);
    if matches {
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.status = StatusCode::NOT_MODIFIED;
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The `/api/v1` routes for the daemon's server.
pub fn router(state: ApiState) -> axum::Router {
    api(state).0
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://latchkey.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// Something failed inside; the detail says what, never a secret (none reaches these paths).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(&self),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"latchkey\""),
            );
        }
        resp
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e)
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

/// The operator a request comes from, authenticated by its bearer token.
#[derive(Debug, Clone)]
pub struct Caller(pub Operator);

impl Caller {
    /// 403 unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<&Operator, Problem> {
        if self.0.role.allows(needed) {
            Ok(&self.0)
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "operator `{}` has role {}; this needs {needed} or above",
                    self.0.name, self.0.role
                ),
            ))
        }
    }
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized =
            |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("send `Authorization: Bearer TOKEN`"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        state
            .operators
            .authenticate(token)
            .cloned()
            .map(Caller)
            .ok_or_else(|| unauthorized("unknown or revoked token"))
    }
}

/// `limit` and `offset` of a list.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

pub const MAX_LIMIT: usize = 1000;

impl Paging {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_LIMIT)
    }

    /// One page of `all`, with the total and the next offset (None on the last page).
    pub fn page<T>(&self, all: Vec<T>) -> Page<T> {
        let (limit, offset) = (self.limit(), self.offset.unwrap_or(0));
        let total = all.len();
        let items: Vec<T> = all.into_iter().skip(offset).take(limit).collect();
        let next_offset = (offset + items.len() < total).then_some(offset + items.len());
        Page {
            items,
            total,
            offset,
            next_offset,
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items in the whole (filtered) list.
    pub total: usize,
    pub offset: usize,
    /// Where the next page starts; absent on the last page.
    pub next_offset: Option<usize>,
}

impl<T> Page<T> {
    /// A page of nothing.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            total: 0,
            offset: 0,
            next_offset: None,
        }
    }
}
