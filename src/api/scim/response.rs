//! Errors as SCIM Error messages; authentication, rate limit and timeout.

use super::*;

// Errors and responses

pub(super) fn error(status: u16, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({
        "schemas": [schema_urns::ERROR],
        "status": status.to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    scim_json(code, &body)
}

pub(super) fn scim_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body.to_string(),
    )
        .into_response()
}

#[derive(Debug)]
pub(super) struct Failure(pub(super) ScimError);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An error, so that the store's retry finds a lost lock race underneath it.
impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<ScimError> for Failure {
    fn from(e: ScimError) -> Self {
        Self(e)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Self(e.into())
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self.0 {
            ScimError::Client {
                status,
                scim_type,
                detail,
            } => error(status, scim_type, &detail),
            other if store_unavailable(&other) => {
                tracing::warn!(error = %other, "SCIM request refused: store unavailable");
                let mut r = error(
                    503,
                    None,
                    "the store is unavailable; the change was not applied, retry later",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                error(500, None, "internal error; the change was not applied")
            }
        }
    }
}

/// The database cannot be reached (no connection within the pool's timeout, the pool closed, a
/// broken connection): the provider should retry, as after a timeout, so 503 rather than 500.
fn store_unavailable(e: &ScimError) -> bool {
    let Some(db) = crate::store::db_error(e) else {
        return false;
    };
    matches!(
        db,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

pub(super) type Reply = Result<Response, Failure>;

pub(super) async fn not_found() -> Response {
    error(404, None, "no such SCIM endpoint")
}

// ---------------------------------------------------------------------------------------------
// Authentication, rate limit, timeout

pub(super) async fn authenticate(State(s): State<Scim>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let found = presented.and_then(|token| {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every tenant, so the time taken does not tell which one came close.
        let mut found = None;
        for (i, t) in s.tenants.iter().enumerate() {
            if bool::from(t.token_sha256.ct_eq(&hash)) {
                found = Some(i);
            }
        }
        found
    });
    let Some(i) = found else {
        let mut r = error(401, None, "a valid bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"latchkey-scim\""),
        );
        return r;
    };
    let tenant = &s.tenants[i];
    if let Some(l) = &tenant.limiter
        && let Err(not_until) = l.check()
    {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        // Whole seconds, rounded up: a client that waits as told is let through.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = error(
            429,
            None,
            &format!(
                "rate limit exceeded for this tenant; retry in {} s",
                secs.max(1)
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE)
        && !json_content_type(ct)
    {
        return error(
            415,
            None,
            "the body must be application/scim+json (or application/json)",
        );
    }
    req.extensions_mut().insert(Caller(s.tenants.clone(), i));
    // A request cut off here rolls its transaction back: nothing is half-written.
    match tokio::time::timeout(s.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(503, None, "request timed out; the change was not applied"),
    }
}

/// `application/scim+json`, `application/json` or any other `+json` type, with parameters.
fn json_content_type(ct: &HeaderValue) -> bool {
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Any error answer that is not already a SCIM Error (axum's 413 for a body over the limit, 405,
/// a rejected extractor) becomes one, with its status and its text as the detail.
pub(super) async fn scim_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_scim = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes() == CONTENT_TYPE.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_scim {
        return resp;
    }
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    // RFC 7644 section 3.12 defines no scimType for these statuses.
    let mut r = error(status.as_u16(), None, &detail);
    if let Some(v) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}
