//! Signing in to the console with OpenID Connect: the authorization code flow with PKCE
//! (RFC 7636), a nonce and a state, the ID token verified against the provider's published keys,
//! and the operator's role read from a configured claim.
//!
//! The provider's discovery document is fetched at the first sign-in, not at start-up, so the
//! daemon (and every revocation it carries) starts whether or not the identity provider answers;
//! a failed discovery is tried again at the next sign-in.

use crate::config::OidcConfig;
use crate::operators::Role;
use base64::Engine as _;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::Mutex;

type Discovered = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(
        "the identity provider at {issuer} could not be reached or described itself wrongly: {message}"
    )]
    Discovery { issuer: String, message: String },
    #[error("the identity provider refused the sign-in: {0}")]
    Exchange(String),
    #[error("the ID token is not valid: {0}")]
    IdToken(String),
    #[error("no value of the `{claim}` claim gives a latchkey role (configured: {configured})")]
    NoRole { claim: String, configured: String },
    #[error("configuration: {0}")]
    Config(String),
}

/// One sign-in under way: what the browser keeps in its login cookie until the provider sends it
/// back to the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl Pending {
    /// `state.nonce.verifier`: each part is URL-safe base64, so a dot cannot occur inside one.
    pub fn to_cookie(&self) -> String {
        format!("{}.{}.{}", self.state, self.nonce, self.pkce_verifier)
    }

    pub fn from_cookie(v: &str) -> Option<Self> {
        let mut parts = v.splitn(3, '.');
        let (state, nonce, pkce_verifier) = (parts.next()?, parts.next()?, parts.next()?);
        (!state.is_empty() && !nonce.is_empty() && !pkce_verifier.is_empty()).then(|| Self {
            state: state.into(),
            nonce: nonce.into(),
            pkce_verifier: pkce_verifier.into(),
        })
    }
}

/// Who signed in, as the provider vouched for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub subject: String,
    pub name: String,
    pub role: Role,
}

struct Provider {
    client: Discovered,
    userinfo: Option<String>,
}

/// The console's OpenID relying party.
pub struct Oidc {
    config: OidcConfig,
    secret: Option<String>,
    redirect: RedirectUrl,
    http: reqwest::Client,
    provider: Mutex<Option<std::sync::Arc<Provider>>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// The daemon's reqwest client for the provider's endpoints; redirects are never followed (a
/// token endpoint that redirects is misconfigured, and following would be a request forgery).
struct Http<'a>(&'a reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let resp = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(e.to_string()))?;
            let mut out = HttpResponse::new(Vec::new());
            *out.status_mut() = resp.status();
            *out.headers_mut() = resp.headers().clone();
            *out.body_mut() = resp
                .bytes()
                .await
                .map_err(|e| HttpError(e.to_string()))?
                .to_vec();
            Ok(out)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl Oidc {
    /// `public_url` is the console's public address; the callback is under it.
    pub fn new(
        config: OidcConfig,
        secret: Option<String>,
        public_url: &str,
    ) -> Result<Self, OidcError> {
        let redirect = RedirectUrl::new(format!(
            "{}/console/callback",
            public_url.trim_end_matches('/')
        ))
        .map_err(|e| OidcError::Config(format!("console.public_url: {e}")))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::Config(e.to_string()))?;
        Ok(Self {
            config,
            secret,
            redirect,
            http,
            provider: Mutex::new(None),
        })
    }

    pub fn display_name(&self) -> &str {
        self.config
            .display_name
            .as_deref()
            .unwrap_or("single sign-on")
    }

    async fn provider(&self) -> Result<std::sync::Arc<Provider>, OidcError> {
        let mut slot = self.provider.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let discovery = |message: String| OidcError::Discovery {
            issuer: self.config.issuer.clone(),
            message,
        };
        let issuer =
            IssuerUrl::new(self.config.issuer.clone()).map_err(|e| discovery(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &Http(&self.http))
            .await
            .map_err(|e| discovery(error_chain(&e)))?;
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().to_string());
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone());
        let p = std::sync::Arc::new(Provider { client, userinfo });
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Where to send the browser, and what its login cookie must keep.
    pub async fn begin(&self) -> Result<(String, Pending), OidcError> {
        let p = self.provider().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = p.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.config.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Exchange the callback's code, verify the ID token (signature, issuer, audience, expiry,
    /// nonce, access-token hash) and read who signed in and their role.
    pub async fn finish(&self, code: &str, pending: &Pending) -> Result<SignedIn, OidcError> {
        let p = self.provider().await?;
        let exchange = |e: &dyn std::error::Error| OidcError::Exchange(error_chain(e));
        let response = p
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| exchange(&e))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&Http(&self.http))
            .await
            .map_err(|e| exchange(&e))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response has no ID token".into()))?;
        let verifier = p.client.id_token_verifier();
        let nonce = Nonce::new(pending.nonce.clone());
        let bad = |e: &dyn std::error::Error| OidcError::IdToken(error_chain(e));
        let claims = id_token.claims(&verifier, &nonce).map_err(|e| bad(&e))?;
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| bad(&e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| bad(&e))?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| bad(&e))?;
            if actual != *expected {
                return Err(OidcError::IdToken(
                    "its at_hash does not match the access token".into(),
                ));
            }
        }
        // The signature above covers the whole payload, so the claims latchkey reads beyond
        // OpenID's standard set are read from the same, now verified, bytes.
        let mut extra = payload(&id_token.to_string())?;
        let subject = claims.subject().as_str().to_string();
        if !extra.contains_key(&self.config.roles_claim)
            && let Some(url) = &p.userinfo
        {
            let info = self
                .userinfo(url, response.access_token().secret(), &subject)
                .await?;
            extra.extend(info);
        }
        self.signed_in(subject, &extra)
    }

    /// The user-info endpoint's claims, for providers that leave groups out of the ID token; its
    /// `sub` must be the ID token's (OpenID Connect Core 5.3.2).
    async fn userinfo(
        &self,
        url: &str,
        access_token: &str,
        subject: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        let fail = |m: String| OidcError::Exchange(format!("user-info endpoint: {m}"));
        let resp = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        let info: serde_json::Map<String, serde_json::Value> =
            resp.json().await.map_err(|e| fail(e.to_string()))?;
        if info.get("sub").and_then(|s| s.as_str()) != Some(subject) {
            return Err(fail("its `sub` is not the ID token's subject".into()));
        }
        Ok(info)
    }

    fn signed_in(
        &self,
        subject: String,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<SignedIn, OidcError> {
        let values = claim_values(claims.get(&self.config.roles_claim));
        let role = self
            .config
            .role_of(&values)
            .ok_or_else(|| OidcError::NoRole {
                claim: self.config.roles_claim.clone(),
                configured: self
                    .config
                    .roles
                    .iter()
                    .map(|(r, g)| format!("{r}: {}", g.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        let text = |k: &str| {
            claims
                .get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        let name = text(&self.config.name_claim)
            .or_else(|| text("email"))
            .unwrap_or_else(|| subject.clone());
        Ok(SignedIn {
            subject,
            name,
            role,
        })
    }
}

/// A claim's values: a list of strings, or one string (some providers send a single group as a
/// string, others space-separated roles).
fn claim_values(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// The JSON payload of a compact JWS (already verified by the caller).
fn payload(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| OidcError::IdToken("not a compact JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::IdToken(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OidcError::IdToken(format!("payload is not a JSON object: {e}")))
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        toml::from_str(
            r#"
            issuer = "https://idp.example.com"
            client_id = "latchkey"
            [roles]
            viewer = ["staff"]
            approver = ["security"]
            desk = ["facilities"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_highest_role_any_group_gives_wins_and_none_is_refused() {
        let o = Oidc::new(config(), None, "https://latchkey.example.com/").unwrap();
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let who = o
            .signed_in(
                "s1".into(),
                &claims(serde_json::json!({"groups": ["staff", "security"], "preferred_username": "alice"})),
            )
            .unwrap();
        assert_eq!((who.role, who.name.as_str()), (Role::Approver, "alice"));
        let single = o
            .signed_in(
                "s2".into(),
                &claims(serde_json::json!({"groups": "facilities", "email": "d@x"})),
            )
            .unwrap();
        assert_eq!((single.role, single.name.as_str()), (Role::Desk, "d@x"));
        let none = o.signed_in(
            "s3".into(),
            &claims(serde_json::json!({"groups": ["sales"]})),
        );
        assert!(matches!(none, Err(OidcError::NoRole { .. })), "{none:?}");
        assert_eq!(
            o.redirect.as_str(),
            "https://latchkey.example.com/console/callback"
        );
    }

    #[test]
    fn a_login_cookie_round_trips_and_a_torn_one_is_refused() {
        let p = Pending {
            state: "s-1".into(),
            nonce: "n_2".into(),
            pkce_verifier: "v3".into(),
        };
        assert_eq!(Pending::from_cookie(&p.to_cookie()), Some(p));
        assert_eq!(Pending::from_cookie("a.b"), None);
        assert_eq!(Pending::from_cookie("a..c"), None);
    }
}
