//! The SCIM 2.0 endpoint (RFC 7643, RFC 7644) Okta and Entra ID push users and groups to, under
//! `/scim/v2`.
//!
//! Every write runs in one transaction: the SCIM resource, the person's identity, the issue and
//! revoke commands it causes and their audit records; the 2xx answer is sent only after the commit
//! (invariant 1), so a deactivation the provider saw accepted can no longer be lost.
//!
//! A tenant is an identity provider with its own bearer token. The token is compared as a SHA-256
//! in constant time and never logged; each tenant sees only its own resources (another tenant's id
//! is a 404, not a 403, so ids do not leak).

mod discovery;
mod projection;
mod reads;
mod response;
mod stored;
mod writes;

use discovery::*;
use projection::*;
use reads::*;
use response::*;
use writes::*;

use super::ApiState;
use crate::audit;
use crate::clock::to_micros;
use crate::config::ScimConfig;
use crate::engine::Engine;
use src::{Kind, Mapping, Query, Resource, ScimError};

/// Under one name for the handlers: the SCIM source (parsing, canonical form, PATCH, users as
/// person records), the engine's application of a person, and the server's stored resources.
mod src {
    pub use super::stored::*;
    pub use crate::engine::scim::*;
    pub use crate::sources::scim::*;
}
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use scim_v2::schema_urns;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

const CONTENT_TYPE: &str = "application/scim+json";
/// Page size when the client does not ask for one, and the most one page holds.
const MAX_PAGE: i64 = 1000;

#[derive(Debug)]
struct Tenant {
    name: String,
    token_sha256: [u8; 32],
    mapping: Mapping,
    limiter: Option<DefaultDirectRateLimiter>,
}

#[derive(Debug, Clone)]
struct Scim {
    engine: Arc<Engine>,
    tenants: Arc<Vec<Tenant>>,
    base_url: Option<String>,
    timeout: Duration,
}

/// The tenant a request authenticated as.
#[derive(Debug, Clone)]
struct Caller(Arc<Vec<Tenant>>, usize);

impl Caller {
    fn tenant(&self) -> &Tenant {
        &self.0[self.1]
    }
}

/// Requests per second and burst of a tenant without its own `rate_limit`.
pub const DEFAULT_RATE_PER_SECOND: u32 = 250;
pub const DEFAULT_RATE_BURST: u32 = 1000;

/// A tenant's extensions (global ones, then its own), unknown-attribute rule and provider quirks.
fn profile(cfg: &ScimConfig, t: &crate::config::ScimTenantConfig) -> src::Profile {
    let mut extensions: Vec<(String, crate::config::ScimExtensionConfig)> = cfg
        .extensions
        .iter()
        .filter(|(u, _)| !t.extensions.keys().any(|k| k.eq_ignore_ascii_case(u)))
        .map(|(u, e)| (u.clone(), e.clone()))
        .collect();
    extensions.extend(t.extensions.iter().map(|(u, e)| (u.clone(), e.clone())));
    src::Profile {
        extensions,
        unknown: t.unknown_attributes.unwrap_or(cfg.unknown_attributes),
        unquoted_filters: t
            .unquoted_filter_values
            .unwrap_or(t.provider == crate::config::ScimProvider::Entra),
    }
}

fn tenants(cfg: &ScimConfig, config: &crate::config::Config) -> Vec<Tenant> {
    let mut out = Vec::new();
    for (name, t) in &cfg.tenants {
        let token_sha256 = match config.scim_token_sha256(name) {
            Ok(h) => h,
            Err(e) => {
                // Never the token itself: the error names the variable it should come from.
                tracing::warn!(tenant = %name, error = %e, "SCIM tenant disabled: no usable token");
                continue;
            }
        };
        // Sized for an identity provider's initial import: Entra ID's provisioning service
        // expects an endpoint to take at least 25 requests per second per tenant, and Okta's
        // import runs several requests in parallel; a burst of 1,000 absorbs the start of a
        // full import without a 429.
        let rl = t.rate_limit.unwrap_or(crate::config::RateLimitConfig {
            per_second: DEFAULT_RATE_PER_SECOND,
            burst: DEFAULT_RATE_BURST,
        });
        let limiter = Some(rl).and_then(|rl| {
            let per = NonZeroU32::new(rl.per_second)?;
            let burst = NonZeroU32::new(rl.burst)?;
            Some(RateLimiter::direct(
                Quota::per_second(per).allow_burst(burst),
            ))
        });
        out.push(Tenant {
            name: name.clone(),
            token_sha256,
            mapping: Mapping {
                tenant: name.clone(),
                correlate_by: t.correlate_by.unwrap_or(cfg.correlate_by),
                scope_groups: t.scope_groups.clone(),
                profile: profile(cfg, t),
                authoritative_keys: t.authoritative_keys.clone(),
                may_terminate: t.may_terminate,
            },
            limiter,
        });
    }
    out
}

/// `/scim/v2/...`, with its own authentication, limits and state.
pub fn router(state: ApiState) -> Router {
    let config = state.engine.config.clone();
    let cfg = &config.scim;
    let scim = Scim {
        engine: state.engine.clone(),
        tenants: Arc::new(tenants(cfg, &config)),
        base_url: cfg
            .base_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        timeout: Duration::from_secs(cfg.request_timeout_seconds),
    };
    let routes = Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route("/.search", post(search_root))
        .route("/{endpoint}", get(list).post(create))
        .route("/{endpoint}/.search", post(search_post))
        .route(
            "/{endpoint}/{id}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(scim.clone(), authenticate))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        // Outermost: whatever answered with an error (a body limit, a method the route does not
        // have, an extractor), the client gets a SCIM Error.
        .layer(middleware::map_response(scim_errors))
        .with_state(scim);
    Router::new().nest("/scim/v2", routes)
}
