//! One reading of every vendor answer, for operations, read-backs, drift listings and token
//! fetches alike: the status class, the profile's rules, Retry-After, and whether a success
//! carries the JSON the profile expects. Anything unreadable is a failure, never a success.

use super::super::ConnectorError;
use super::super::profile::{Operation, RuleClass, StatusSpec};
use super::connector::HttpConnector;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::Duration;

/// What a status means before any body is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    RateLimited,
    /// Worth retrying: every 5xx (520, 596, 599 too), 408, 423, 425, an unfollowed redirect.
    Transient,
    /// The credential was refused: renew it once, then give up loudly.
    Auth,
    Permanent,
}

/// The class of a status under a profile's `[status]` lists; what the lists do not name falls
/// back to safe defaults (unknown 5xx transient, unknown 4xx permanent).
pub fn status_class(spec: &StatusSpec, status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        s if s == 429 || spec.rate_limited.contains(&s) => Class::RateLimited,
        s if s >= 500 || matches!(s, 408 | 423 | 425) || spec.retry.contains(&s) => {
            Class::Transient
        }
        401 | 403 => Class::Auth,
        // Redirects are not followed (they may lead to a login or maintenance page).
        300..=399 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date, never more than `cap`. A negative, garbage
/// or past value (or a date without the vendor's `Date` header) is ignored (the caller's backoff
/// applies); a huge one is capped.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "very long": capped below.
        Duration::from_secs(raw.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(raw).ok()?;
        // Against the vendor's own `Date`, so clock skew cannot stretch it; without one the
        // date cannot be read safely and the caller's backoff applies.
        let now = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())?;
        at.duration_since(now).ok()?
    };
    Some(wait.min(cap))
}

/// A short, printable excerpt of an answer for error messages.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 160;
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut last_space = true;
    for c in text.chars() {
        if out.chars().count() >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() || c.is_whitespace() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    let out = out.trim_end().to_string();
    if out.is_empty() {
        "(empty body)".into()
    } else {
        out
    }
}

/// Whether a content type announces JSON (`application/json`, `application/problem+json`, ...).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or_default().trim().to_string();
            mime.ends_with("/json") || mime.ends_with("+json")
        })
}

/// An answer as received: status, headers and the (bounded) body.
#[derive(Debug)]
pub struct Received {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Why an answer is not a success.
#[derive(Debug)]
pub enum Failure {
    /// 401/403 with no rule claiming it: the credential was refused.
    Refused(String),
    Error(ConnectorError),
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Self {
        Failure::Error(e)
    }
}

impl HttpConnector {
    /// Read one answer to operation `name`: Ok(parsed body) for a 2xx or a declared `exists` /
    /// `gone` status whose body is what the profile expects; every other answer is an error.
    pub(super) fn classify(
        &self,
        name: &str,
        o: &Operation,
        call: &str,
        r: &Received,
    ) -> Result<Value, Failure> {
        let retry_after = retry_after(&r.headers, self.retry_after_cap);
        let excerpt = excerpt(&r.body);
        let status = r.status;
        if let Some(e) = self.apply_rules(call, r, &excerpt, retry_after)? {
            return Err(Failure::Error(e));
        }
        let declared = o.exists.contains(&status) || o.gone.contains(&status);
        let class = if declared {
            Class::Success
        } else {
            status_class(&self.profile.status, status)
        };
        let message = format!("{name} ({call}) answered HTTP {status}: {excerpt}");
        match class {
            Class::Success => Ok(self.expect_json(name, call, r)?),
            Class::RateLimited => Err(Failure::Error(self.rate_limited(status, retry_after))),
            Class::Transient => Err(Failure::Error(self.transient(message, retry_after))),
            Class::Auth => Err(Failure::Refused(message)),
            Class::Permanent => Err(Failure::Error(self.permanent(message))),
        }
    }

    /// The body of a success: empty, or JSON announced as JSON. A maintenance page, garbage or a
    /// cut-off answer is a transient failure naming what came back.
    pub(super) fn expect_json(
        &self,
        name: &str,
        call: &str,
        r: &Received,
    ) -> Result<Value, ConnectorError> {
        if r.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        let status = r.status;
        if !is_json(&r.headers) {
            let ct = r
                .headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type");
            return Err(self.transient(
                format!(
                    "{name} ({call}) answered HTTP {status} with {ct} instead of JSON: {}",
                    excerpt(&r.body)
                ),
                None,
            ));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            self.transient(
                format!(
                    "{name} ({call}) answered HTTP {status} with unreadable JSON ({e}): {}",
                    excerpt(&r.body)
                ),
                None,
            )
        })
    }

    /// The profile's rules over the whole answer, in order; the first that matches decides.
    fn apply_rules(
        &self,
        call: &str,
        r: &Received,
        excerpt: &str,
        retry_after: Option<Duration>,
    ) -> Result<Option<ConnectorError>, ConnectorError> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&r.body);
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string()))
        };
        let status = r.status;
        let rctx = serde_json::json!({ "status": status, "body": body, "text": text });
        for (i, rule) in self.rules.iter().enumerate() {
            if self.render(&format!("status.rules.{i}"), &rctx)? != "1" {
                continue;
            }
            let vendor_message = rule
                .message
                .as_ref()
                .and_then(|p| p.query(&body).first().cloned())
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .unwrap_or_else(|| excerpt.to_string());
            let message = format!("{call} -> HTTP {status}: {vendor_message}");
            return Ok(Some(match rule.class {
                RuleClass::RateLimited => {
                    let wait = retry_after.or(rule.cooldown.map(|c| c.min(self.retry_after_cap)));
                    self.rate_limited(status, wait)
                }
                RuleClass::Retry => self.transient(message, retry_after),
                RuleClass::Permanent => self.permanent(message),
            }));
        }
        Ok(None)
    }

    /// A rate-limit answer: every call of this connector waits the vendor's time (capped).
    pub(super) fn rate_limited(
        &self,
        status: u16,
        retry_after: Option<Duration>,
    ) -> ConnectorError {
        if let Some(d) = retry_after {
            self.set_cooldown(d);
        }
        ConnectorError::RateLimited {
            vendor: self.name.clone(),
            status,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{DATE, HeaderValue, RETRY_AFTER};

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("x")),
        );
        h
    }

    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn retry_after_seconds_are_capped_and_garbage_ignored() {
        assert_eq!(retry_after(&with("7"), CAP), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&with("18446744073709551615"), CAP), Some(CAP));
        assert_eq!(
            retry_after(&with("99999999999999999999999"), CAP),
            Some(CAP)
        );
        assert_eq!(retry_after(&with("86400"), CAP), Some(CAP));
        assert_eq!(retry_after(&with("-5"), CAP), None);
        assert_eq!(retry_after(&with("soon"), CAP), None);
        assert_eq!(retry_after(&with("1.5"), CAP), None);
        assert_eq!(retry_after(&with(""), CAP), None);
        assert_eq!(retry_after(&HeaderMap::new(), CAP), None);
    }

    #[test]
    fn retry_after_http_date_is_read_against_the_vendor_date() {
        let mut h = with("Wed, 21 Oct 2015 07:28:30 GMT");
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, CAP), Some(Duration::from_secs(30)));
        // A date in the past, or far ahead.
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2015 08:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, CAP), None);
        h.insert(
            DATE,
            HeaderValue::from_static("Wed, 21 Oct 2009 08:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, CAP), Some(CAP));
    }

    #[test]
    fn status_classes_default_safely() {
        let spec = StatusSpec {
            retry: vec![],
            rate_limited: vec![],
            rules: vec![],
        };
        for s in [500, 502, 503, 520, 596, 599, 408, 423, 425, 302] {
            assert_eq!(status_class(&spec, s), Class::Transient, "{s}");
        }
        assert_eq!(status_class(&spec, 429), Class::RateLimited);
        assert_eq!(status_class(&spec, 401), Class::Auth);
        assert_eq!(status_class(&spec, 403), Class::Auth);
        for s in [400, 404, 409, 410, 422] {
            assert_eq!(status_class(&spec, s), Class::Permanent, "{s}");
        }
        assert_eq!(status_class(&spec, 204), Class::Success);
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(
            excerpt(b"<html>\n\t<b>down</b>\x07</html>"),
            "<html> <b>down</b> </html>"
        );
        assert!(excerpt(&[b'x'; 5000]).chars().count() <= 161);
    }
}
