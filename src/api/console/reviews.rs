//! The console's access review pages: campaigns and their progress, starting one, and certifying
//! or revoking each holder (see `crate::reviews`).

use super::pages::{Nav, Notice, problem};
use super::session::Session;
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
#[template(path = "reviews.html")]
struct ReviewsPage {
    nav: Option<Nav>,
    campaigns: Vec<views::ReviewCampaign>,
    can_start: bool,
    tiers: Vec<String>,
    form: StartForm,
    notice: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage {
    nav: Option<Nav>,
    campaign: views::ReviewCampaign,
    can_decide: bool,
    notice: Option<String>,
}

/// The start form's fields, kept when the campaign is refused so nothing typed is lost.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    deadline: String,
    #[serde(default)]
    on_deadline: String,
    #[serde(default)]
    name: String,
}

async fn reviews_page(
    st: &ConsoleState,
    s: &Session,
    form: StartForm,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let started = Instant::now();
    let campaigns = match views::review_campaigns(&st.api, 200).await {
        Ok(c) => c,
        Err(p) => return problem(p, s),
    };
    let page = ReviewsPage {
        nav: Some(Nav::of(s, "reviews")),
        campaigns,
        can_start: s.operator.role.allows(Role::Approver),
        tiers: st.api.engine.config.tiers.keys().cloned().collect(),
        form,
        notice,
        error,
    };
    (status, render(&page, started)).into_response()
}

pub async fn reviews(
    State(st): State<ConsoleState>,
    s: Session,
    Query(n): Query<Notice>,
) -> Response {
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    reviews_page(
        &st,
        &s,
        StartForm::default(),
        n.notice,
        None,
        StatusCode::OK,
    )
    .await
}

pub async fn start_review(
    State(st): State<ConsoleState>,
    s: Session,
    Form(form): Form<StartForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let body = views::NewReview {
        scope: form.scope.clone(),
        value: form.value.clone(),
        deadline: super::requests::form_time(&form.deadline),
        on_deadline: Some(form.on_deadline.clone()),
        name: Some(form.name.clone()),
    };
    match views::start_review(&st.api, &op, &body).await {
        Ok(c) => {
            let text = format!(
                "Review {} ({}) started by {}: {} holders to decide by {}.",
                c.id,
                c.name,
                op.actor(),
                c.pending,
                c.deadline
            );
            super::pages::notice(&format!("/console/reviews/{}", c.id), &text)
        }
        Err(p) if p.status == 400 => {
            reviews_page(&st, &s, form, None, Some(p.detail), StatusCode::BAD_REQUEST).await
        }
        Err(p) => problem(p, &s),
    }
}

pub async fn review(
    State(st): State<ConsoleState>,
    s: Session,
    Path(id): Path<i64>,
    Query(n): Query<Notice>,
) -> Response {
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let started = Instant::now();
    let campaign = match views::review_campaign(&st.api, id).await {
        Ok(c) => c,
        Err(p) => return problem(p, &s),
    };
    let page = ReviewPage {
        nav: Some(Nav::of(&s, "reviews")),
        can_decide: s.operator.role.allows(Role::Approver) && campaign.status != "closed",
        campaign,
        notice: n.notice,
    };
    render(&page, started).into_response()
}

#[derive(Debug, Deserialize)]
pub struct DecideForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    note: String,
}

pub async fn decide_item(
    State(st): State<ConsoleState>,
    s: Session,
    Path((id, item)): Path<(i64, i64)>,
    Form(form): Form<DecideForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let body = views::ReviewDecision {
        decision: form.decision,
        note: Some(form.note),
    };
    match views::decide_review_item(&st.api, &op, item, &body).await {
        Ok(i) => {
            let text = format!(
                "{} at {} for {}: {} by {}.",
                i.target,
                i.connector,
                i.person,
                i.decision.as_deref().unwrap_or("decided"),
                op.actor()
            );
            super::pages::notice(&format!("/console/reviews/{id}"), &text)
        }
        Err(p) => problem(p, &s),
    }
}
