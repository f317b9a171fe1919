//! The console's pages: each requires its role, asks `views` (the admin API's functions) and
//! renders a template. Actions are forms that post back and land on the page they came from
//! with a notice, so a reload never repeats one.

use super::session::{CsrfForm, Session, urlencode};
use super::{ConsoleState, render};
use crate::api::admin::views::{self, AuditQuery, KeyTaskQuery};
use crate::api::admin::{Paging, Problem};
use crate::operators::Role;
use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::time::Instant;

/// The navigation every signed-in page shows.
pub struct Nav {
    pub who: String,
    pub role: String,
    pub csrf: String,
    pub page: &'static str,
}

impl Nav {
    pub(super) fn of(s: &Session, page: &'static str) -> Self {
        Self {
            who: s.display_name.clone(),
            role: s.operator.role.to_string(),
            csrf: s.csrf.clone(),
            page,
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    nav: Option<Nav>,
    title: String,
    message: String,
}

/// A page that says what went wrong (or was refused), with the status it deserves.
pub fn message(status: StatusCode, title: &str, text: &str, session: Option<&Session>) -> Response {
    let page = MessagePage {
        nav: session.map(|s| Nav::of(s, "")),
        title: title.into(),
        message: text.into(),
    };
    (status, render(&page, Instant::now())).into_response()
}

/// The store failed: say so (the detail names no secret: none reaches these paths).
pub fn failure(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console page failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Not available",
        &format!("The store did not answer: {e}"),
        None,
    )
}

pub(super) fn problem(p: Problem, s: &Session) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    message(status, &p.title, &p.detail, Some(s))
}

/// Back to `page` with a notice of what was done: a reload shows it again but repeats nothing.
pub(super) fn notice(page: &str, text: &str) -> Response {
    Redirect::to(&format!("{page}?notice={}", urlencode(text))).into_response()
}

/// Percent with one decimal, for SLA attainment.
fn percent(share: Option<f64>) -> String {
    share.map_or("—".into(), |a| format!("{:.1} %", a * 100.0))
}

// ---- overview ----------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    sla: Vec<(views::SlaConnector, String)>,
    outbox: crate::store::outbox::OutboxSummary,
    held: usize,
    keys_open: usize,
    keys_overdue: usize,
    sources: Vec<views::SourceHealth>,
    migrations: Vec<views::DoorMigration>,
}

pub async fn overview(State(st): State<ConsoleState>, s: Session) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let load = async {
        let sla = views::sla(&st.api).await?;
        let outbox = crate::store::outbox::open_and_dead(st.api.engine.store.pool()).await?;
        let held = views::held(&st.api, None).await?.len();
        let keys = views::key_tasks(&st.api, &KeyTaskQuery::default()).await?;
        let sources = views::sources(&st.api).await?;
        let migrations = views::migrations(&st.api).await?;
        Ok::<_, Problem>((sla, outbox, held, keys, sources, migrations))
    };
    let (sla, outbox, held, keys, sources, migrations) = match load.await {
        Ok(v) => v,
        Err(p) => return problem(p, &s),
    };
    let page = OverviewPage {
        nav: Some(Nav::of(&s, "overview")),
        sla: sla
            .into_iter()
            .map(|r| {
                let a = percent(r.attainment);
                (r, a)
            })
            .collect(),
        outbox,
        held,
        keys_overdue: keys.iter().filter(|k| k.overdue).count(),
        keys_open: keys.len(),
        sources,
        migrations,
    };
    render(&page, started)
}

// ---- people ------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "people.html")]
struct PeoplePage {
    nav: Option<Nav>,
    q: String,
    people: Vec<views::PersonSummary>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PeopleQuery {
    q: Option<String>,
    cursor: Option<String>,
}

pub async fn people(
    State(st): State<ConsoleState>,
    s: Session,
    Query(q): Query<PeopleQuery>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let needle = q.q.clone().unwrap_or_default();
    match views::people(&st.api, Some(needle.trim()), q.cursor.as_deref(), 50).await {
        Ok(found) => render(
            &PeoplePage {
                nav: Some(Nav::of(&s, "people")),
                q: needle,
                people: found.items,
                next: found.next_cursor.map(|c| urlencode(&c)),
            },
            started,
        ),
        Err(p) => problem(p, &s),
    }
}

#[derive(Template)]
#[template(path = "person.html")]
struct PersonPage {
    nav: Option<Nav>,
    access: views::PersonAccess,
    timeline: Vec<views::AuditEntry>,
}

pub async fn person(
    State(st): State<ConsoleState>,
    s: Session,
    Path(key): Path<String>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let load = async {
        let access = views::person_access(&st.api, &key).await?;
        let q = AuditQuery {
            subject: Some(access.person.key.clone()),
            ..Default::default()
        };
        let paging = Paging {
            limit: Some(50),
            offset: None,
        };
        let timeline = views::audit(&st.api, &q, paging).await?.items;
        Ok::<_, Problem>((access, timeline))
    };
    match load.await {
        Ok((access, timeline)) => render(
            &PersonPage {
                nav: Some(Nav::of(&s, "people")),
                access,
                timeline,
            },
            started,
        ),
        Err(p) => problem(p, &s),
    }
}

#[derive(Template)]
#[template(path = "who_has.html")]
struct WhoHasPage {
    nav: Option<Nav>,
    target: String,
    found: Vec<HoldersShown>,
    error: Option<String>,
}

/// One target's holders, a page of them at a time: a door of a large site has thousands.
struct HoldersShown {
    holders: views::TargetHolders,
    total: usize,
    /// The first shown, 1-based.
    from: usize,
    next: Option<String>,
    previous: Option<String>,
}

/// Holders shown on one who-has page.
const HOLDERS_PER_PAGE: usize = 200;

#[derive(Debug, Deserialize)]
pub struct TargetQuery {
    target: Option<String>,
    // A string, so a hand-edited address is read as the first page rather than refused.
    offset: Option<String>,
}

pub async fn who_has(
    State(st): State<ConsoleState>,
    s: Session,
    Query(q): Query<TargetQuery>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let target = q.target.unwrap_or_default().trim().to_string();
    let offset: usize = q
        .offset
        .as_deref()
        .and_then(|o| o.trim().parse().ok())
        .unwrap_or(0);
    let (found, error) = if target.is_empty() {
        (Vec::new(), None)
    } else {
        let page = HOLDERS_PER_PAGE as i64;
        match views::who_has_page(&st.api, &target, offset as i64, page).await {
            Ok(f) => (f, None),
            Err(p) if p.status == 404 => (Vec::new(), Some(p.detail)),
            Err(p) => return problem(p, &s),
        }
    };
    let link = |o: usize| format!("?target={}&offset={o}", urlencode(&target));
    let found = found
        .into_iter()
        .map(|(total, h)| {
            let total = usize::try_from(total).unwrap_or(0);
            let from = offset.min(total);
            let shown_to = from + h.holders.len();
            HoldersShown {
                total,
                from: from + 1,
                next: (shown_to < total).then(|| link(shown_to)),
                previous: (from > 0).then(|| link(from.saturating_sub(HOLDERS_PER_PAGE))),
                holders: h,
            }
        })
        .collect();
    render(
        &WhoHasPage {
            nav: Some(Nav::of(&s, "who-has")),
            target,
            found,
            error,
        },
        started,
    )
}

// ---- approvals ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    nav: Option<Nav>,
    held: Vec<HeldCard>,
    can_decide: bool,
    notice: Option<String>,
}

/// A held change, and whether the signed-in operator caused it (dual control: they may not
/// decide it, so the page offers them no buttons).
struct HeldCard {
    held: views::Held,
    mine: bool,
}

#[derive(Debug, Deserialize)]
pub struct Notice {
    pub(super) notice: Option<String>,
}

pub async fn approvals(
    State(st): State<ConsoleState>,
    s: Session,
    Query(n): Query<Notice>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    match views::held(&st.api, None).await {
        Ok(held) => render(
            &ApprovalsPage {
                nav: Some(Nav::of(&s, "approvals")),
                held: held
                    .into_iter()
                    .map(|h| HeldCard {
                        mine: h.requested_by.as_deref().is_some_and(|r| {
                            crate::operators::same_person(
                                &st.api.engine.config,
                                &s.operator.actor(),
                                r,
                            )
                        }),
                        held: h,
                    })
                    .collect(),
                can_decide: s.operator.role.allows(Role::Approver),
                notice: n.notice,
            },
            started,
        ),
        Err(p) => problem(p, &s),
    }
}

pub async fn decide(
    State(st): State<ConsoleState>,
    s: Session,
    Path((id, decision)): Path<(i64, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Approver) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such decision.",
                Some(&s),
            );
        }
    };
    match views::decide(&st.api, &op, id, approve).await {
        Ok(d) => {
            let text = format!(
                "Change {} {} by {} ({} revocations queued).",
                d.id, d.status, d.by, d.revokes_enqueued
            );
            notice("/console/approvals", &text)
        }
        Err(p) => problem(p, &s),
    }
}

// ---- the key desk ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    nav: Option<Nav>,
    tasks: Vec<views::KeyTask>,
    can_record: bool,
    notice: Option<String>,
}

pub async fn key_desk(
    State(st): State<ConsoleState>,
    s: Session,
    Query(n): Query<Notice>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    match views::key_tasks(&st.api, &KeyTaskQuery::default()).await {
        Ok(tasks) => render(
            &KeysPage {
                nav: Some(Nav::of(&s, "keys")),
                tasks,
                can_record: s.operator.role.allows(Role::Desk),
                notice: n.notice,
            },
            started,
        ),
        Err(p) => problem(p, &s),
    }
}

pub async fn record_key(
    State(st): State<ConsoleState>,
    s: Session,
    Path((id, done)): Path<(i64, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let op = match s.act(&form.csrf, Role::Desk) {
        Ok(op) => op,
        Err(r) => return *r,
    };
    use crate::connectors::manual::{HAND_OVER, RETURN};
    let (kind, said) = match done.as_str() {
        "handed-over" => (HAND_OVER, "handed over to"),
        "returned" => (RETURN, "returned by"),
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such key record.",
                Some(&s),
            );
        }
    };
    match views::record_key(&st.api, &op, id, kind).await {
        Ok(t) => {
            let text = format!(
                "{} {said} {}, recorded by {}.",
                t.target,
                t.identity,
                t.done_by.unwrap_or_else(|| op.actor())
            );
            notice("/console/keys", &text)
        }
        Err(p) => problem(p, &s),
    }
}

// ---- audit -------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    q: AuditQuery,
    page: crate::api::admin::Page<views::AuditEntry>,
    next: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AuditForm {
    #[serde(flatten)]
    q: AuditQuery,
    // A string: numbers do not survive `flatten` in a query string.
    offset: Option<String>,
}

pub async fn audit(
    State(st): State<ConsoleState>,
    s: Session,
    Query(f): Query<AuditForm>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = s.require(Role::Viewer) {
        return *r;
    }
    let paging = Paging {
        limit: Some(50),
        offset: f.offset.as_deref().and_then(|o| o.trim().parse().ok()),
    };
    let (page, error) = match views::audit(&st.api, &f.q, paging).await {
        Ok(p) => (p, None),
        Err(p) if p.status == 400 => (crate::api::admin::Page::empty(), Some(p.detail)),
        Err(p) => return problem(p, &s),
    };
    let next = page.next_offset.map(|o| {
        let field = |k: &str, v: &Option<String>| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("&{k}={}", urlencode(v)))
                .unwrap_or_default()
        };
        let q = &f.q;
        format!(
            "?offset={o}{}{}{}{}{}{}",
            field("subject", &q.subject),
            field("target", &q.target),
            field("actor", &q.actor),
            field("action", &q.action),
            field("since", &q.since),
            field("until", &q.until)
        )
    });
    render(
        &AuditPage {
            nav: Some(Nav::of(&s, "audit")),
            q: f.q,
            page,
            next,
            error,
        },
        started,
    )
}
