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

pub(super) struct Failure(pub(super) ScimError);

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
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                error(500, None, "internal error; the change was not applied")
            }
        }
    }
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
        && l.check().is_err()
    {
        let mut r = error(429, None, "rate limit exceeded for this tenant");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    req.extensions_mut().insert(Caller(s.tenants.clone(), i));
    // A request cut off here rolls its transaction back: nothing is half-written.
    match tokio::time::timeout(s.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(503, None, "request timed out; the change was not applied"),
    }
}
