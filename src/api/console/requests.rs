//! The console's temporary access page: asking for a door for a window, deciding and ending
//! requests, breaking glass in an emergency and reviewing it afterwards (see
//! `crate::access_requests`).

use super::pages::{Nav, Notice, message, notice, problem};
use super::session::{CsrfForm, Session};
use super::{ConsoleState, render};
use crate::api::admin::views;
use crate::operators::Role;
use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Instant;

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    nav: Option<Nav>,
    requests: Vec<RequestCard>,
    can_ask: bool,
    can_decide: bool,
    connectors: Vec<String>,
    targets: Vec<String>,
    form: AskForm,
    notice: Option<String>,
    error: Option<String>,
}

struct RequestCard {
    request: views::AccessRequest,
    /// The signed-in operator asked for it (dual control: no buttons to decide it).
    mine: bool,
}

/// The ask form's fields, kept when the request is refused so nothing typed is lost.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    person: String,
    #[serde(default)]
    connector: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default)]
    reason: String,
}

async fn requests_page(
    st: &ConsoleState,
    s: &Session,
    form: AskForm,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let started = Instant::now();
    let found = match views::requests(&st.api, None, None, 200).await {
        Ok(r) => r,
        Err(p) => return problem(p, s),
    };
    let config = &st.api.engine.config;
    let me = s.operator.actor();
    let page = RequestsPage {
        nav: Some(Nav::of(s, "requests")),
        requests: found
            .into_iter()
            .map(|r| RequestCard {
                mine: crate::operators::same_person(config, &me, &r.requested_by),
                request: r,
            })
            .collect(),
        can_ask: s.operator.role.allows(Role::Desk),
        can_decide: s.operator.role.allows(Role::Approver),
        connectors: config.connectors.keys().cloned().collect(),
        targets: config
            .connectors
            .values()
            .flat_map(|c| c.targets.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        form,
        notice,
        error,
    };
    (status, render(&page, started)).into_response()
}

pub async fn requests(
    State(st): State<ConsoleState>,
    s: Session,
    Query(n): Query<Notice>,
) -> Response {
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    requests_page(&st, &s, AskForm::default(), n.notice, None, StatusCode::OK).await
}

/// A `datetime-local` field (`2026-12-06T14:30`, read as UTC) or an RFC 3339 time, as RFC 3339.
pub(super) fn form_time(v: &str) -> String {
    let v = v.trim();
    match chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
    {
        Ok(t) => t.and_utc().to_rfc3339(),
        Err(_) => v.to_string(),
    }
}

pub async fn ask(
    State(st): State<ConsoleState>,
    s: Session,
    Form(form): Form<AskForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Desk) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let body = views::NewRequest {
        person: form.person.clone(),
        connector: form.connector.clone(),
        target: form.target.clone(),
        starts_at: Some(form_time(&form.starts_at)).filter(|v| !v.is_empty()),
        ends_at: form_time(&form.ends_at),
        reason: form.reason.clone(),
    };
    match views::ask(&st.api, &op, &body).await {
        Ok(r) => {
            let text = format!(
                "Request {} for {} at {} asked by {}: it waits for an approver.",
                r.id, r.target, r.person, r.requested_by
            );
            notice("/console/requests", &text)
        }
        Err(p) if p.status == 400 => {
            requests_page(&st, &s, form, None, Some(p.detail), StatusCode::BAD_REQUEST).await
        }
        Err(p) => problem(p, &s),
    }
}

#[derive(Debug, Deserialize)]
pub struct EmergencyForm {
    csrf: String,
    person: String,
    connector: String,
    target: String,
    #[serde(default)]
    minutes: String,
    reason: String,
}

pub async fn break_glass(
    State(st): State<ConsoleState>,
    s: Session,
    Form(form): Form<EmergencyForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let minutes = match form.minutes.trim() {
        "" => None,
        m => match m.parse::<u32>() {
            Ok(m) => Some(m),
            Err(_) => {
                let error = format!("`{m}` is not a number of minutes");
                return requests_page(
                    &st,
                    &s,
                    AskForm::default(),
                    None,
                    Some(error),
                    StatusCode::BAD_REQUEST,
                )
                .await;
            }
        },
    };
    let body = views::NewEmergency {
        person: form.person,
        connector: form.connector,
        target: form.target,
        minutes,
        reason: form.reason,
    };
    match views::open_emergency(&st.api, &op, &body).await {
        Ok(r) => {
            let text = format!(
                "EMERGENCY {}: {} for {} is {} until {} ({}).",
                r.id,
                r.target,
                r.person,
                r.status,
                r.ends_at,
                op.actor()
            );
            notice("/console/requests", &text)
        }
        Err(p) if p.status == 400 => {
            requests_page(
                &st,
                &s,
                AskForm::default(),
                None,
                Some(p.detail),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(p) => problem(p, &s),
    }
}

#[derive(Debug, Deserialize)]
pub struct ReviewForm {
    csrf: String,
    note: String,
}

pub async fn review_emergency(
    State(st): State<ConsoleState>,
    s: Session,
    Path(id): Path<i64>,
    Form(form): Form<ReviewForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    match views::review_emergency(&st.api, &op, id, &form.note).await {
        Ok(r) => {
            let text = format!("Emergency {} reviewed by {}.", r.id, op.actor());
            notice("/console/requests", &text)
        }
        Err(p) => problem(p, &s),
    }
}

pub async fn act_on_request(
    State(st): State<ConsoleState>,
    s: Session,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let done = match action.as_str() {
        "approve" => views::decide_request(&st.api, &op, id, true).await,
        "reject" => views::decide_request(&st.api, &op, id, false).await,
        "end" => views::end_request(&st.api, &op, id).await,
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such action.",
                Some(&s),
            );
        }
    };
    match done {
        Ok(r) => {
            let text = format!(
                "Request {} for {} at {} is {} ({}).",
                r.id,
                r.target,
                r.person,
                r.status,
                op.actor()
            );
            notice("/console/requests", &text)
        }
        Err(p) => problem(p, &s),
    }
}
