//! The `/api/v1` handlers: each checks its caller's role, then answers what `views` computes
//! (the same functions the web console's pages show).

use super::views::{
    self, AccessRequest, AuditEntry, AuditQuery, DeadLetter, Decision, DoorMigration, Held,
    KeyTask, KeyTaskQuery, LatencyReport, MigrationPlan, NewEmergency, NewMigration, NewRequest,
    NewVisitor, PeoplePage, PersonAccess, Review, SlaConnector, SourceHealth, TargetHolders,
};
use super::{AdminState, Caller, Page, Paging, Problem};
use crate::clock::to_micros;
use crate::model::CommandId;
use crate::operators::Role;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Answer<T> = Result<Json<T>, Problem>;

/// Every route, in one place, so the OpenAPI document lists each one.
pub(super) fn all(router: OpenApiRouter<AdminState>) -> OpenApiRouter<AdminState> {
    router
        .routes(routes!(list_people))
        .routes(routes!(person))
        .routes(routes!(who_has))
        .routes(routes!(list_held))
        .routes(routes!(approve_held))
        .routes(routes!(reject_held))
        .routes(routes!(list_dead_letters))
        .routes(routes!(redrive))
        .routes(routes!(list_key_tasks))
        .routes(routes!(key_handed_over))
        .routes(routes!(key_returned))
        .routes(routes!(sources))
        .routes(routes!(latency_report))
        .routes(routes!(sla_report))
        .routes(routes!(audit))
        .routes(routes!(audit_export))
        .routes(routes!(list_requests, create_request))
        .routes(routes!(approve_request))
        .routes(routes!(reject_request))
        .routes(routes!(end_request))
        .routes(routes!(open_emergency))
        .routes(routes!(review_emergency))
        .routes(routes!(list_migrations, migrate))
        .routes(routes!(add_visitor))
        .routes(routes!(list_reviews, start_review))
        .routes(routes!(review_campaign))
        .routes(routes!(decide_review_item))
        .routes(routes!(review_evidence))
}

// ---- people --------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeopleQuery {
    /// People per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only people whose key, e-mail or name contains this (not paged).
    pub q: Option<String>,
}

/// People, by key.
#[utoipa::path(get, path = "/api/v1/people", params(PeopleQuery), tag = "people",
    description = "Role: viewer.",
    responses((status = 200, body = PeoplePage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_people(
    caller: Caller,
    State(s): State<AdminState>,
    Query(q): Query<PeopleQuery>,
) -> Answer<PeoplePage> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    let page = views::people(&s.api, q.q.as_deref(), q.cursor.as_deref(), limit).await?;
    Ok(Json(page))
}

/// What a person (key, e-mail or name) holds, at which vendor, from which template.
#[utoipa::path(get, path = "/api/v1/people/{person}", tag = "people",
    params(("person" = String, Path, description = "Correlation key, e-mail or full name")),
    description = "Role: viewer.",
    responses((status = 200, body = PersonAccess), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn person(
    caller: Caller,
    State(s): State<AdminState>,
    Path(who): Path<String>,
) -> Answer<PersonAccess> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::person_access(&s.api, &who).await?))
}

/// Who holds a target (lock, group), by its name or the vendor's id.
#[utoipa::path(get, path = "/api/v1/targets/{target}/holders", tag = "people",
    params(("target" = String, Path, description = "Target name or the vendor's id for it")),
    description = "Role: viewer.",
    responses((status = 200, body = Vec<TargetHolders>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn who_has(
    caller: Caller,
    State(s): State<AdminState>,
    Path(target): Path<String>,
) -> Answer<Vec<TargetHolders>> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::who_has(&s.api, &target).await?))
}

// ---- held changes ----------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeldQuery {
    /// Only changes held from this source (`hr`, `reconcile`, ...).
    pub source: Option<String>,
}

/// Changes held for approval (mass disappearances, mass revocations of a policy change).
#[utoipa::path(get, path = "/api/v1/held-changes", params(Paging, HeldQuery), tag = "approvals",
    description = "Role: viewer.",
    responses((status = 200, body = Page<Held>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_held(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<HeldQuery>,
) -> Answer<Page<Held>> {
    caller.require(Role::Viewer)?;
    let held = views::held(&s.api, q.source.as_deref()).await?;
    Ok(Json(paging.page(held)))
}

/// Approve a held change. Refused (403, `dual-control`) to whoever caused it.
#[utoipa::path(post, path = "/api/v1/held-changes/{id}/approve", tag = "approvals",
    params(("id" = i64, Path)), description = "Role: approver.",
    responses((status = 200, body = Decision), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn approve_held(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<Decision> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(views::decide(&s.api, op, id, true).await?))
}

/// Reject a held change: nothing it would have revoked is revoked.
#[utoipa::path(post, path = "/api/v1/held-changes/{id}/reject", tag = "approvals",
    params(("id" = i64, Path)), description = "Role: approver.",
    responses((status = 200, body = Decision), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn reject_held(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<Decision> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(views::decide(&s.api, op, id, false).await?))
}

// ---- dead letters ----------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectorQuery {
    /// Only this connector's.
    pub connector: Option<String>,
}

/// Commands that ran out of attempts (revocations first to look at).
#[utoipa::path(get, path = "/api/v1/dead-letters", params(Paging, ConnectorQuery), tag = "recovery",
    description = "Role: viewer.",
    responses((status = 200, body = Page<DeadLetter>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_dead_letters(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<ConnectorQuery>,
) -> Answer<Page<DeadLetter>> {
    caller.require(Role::Viewer)?;
    let dead = views::dead_letters(&s.api, q.connector.as_deref()).await?;
    Ok(Json(paging.page(dead)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RedriveRequest {
    /// Dead letter ids; every one must be a dead letter, or nothing moves.
    #[serde(default)]
    #[schema(value_type = Vec<i64>)]
    pub ids: Vec<CommandId>,
    /// Every dead letter (of `connector`, when given) instead of `ids`.
    #[serde(default)]
    pub all: bool,
    pub connector: Option<String>,
}

/// Put dead letters back in the queue (audited with the operator).
#[utoipa::path(post, path = "/api/v1/dead-letters/redrive", tag = "recovery",
    request_body = RedriveRequest, description = "Role: admin.",
    responses((status = 200, body = Vec<DeadLetter>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn redrive(
    caller: Caller,
    State(s): State<AdminState>,
    Json(req): Json<RedriveRequest>,
) -> Answer<Vec<DeadLetter>> {
    let op = caller.require(Role::Admin)?;
    use crate::dispatch::recovery::{RedriveError, Selection};
    let connector = req.connector.as_deref();
    let selection = match (req.all, req.ids.is_empty()) {
        (true, true) => Selection::All {
            connector,
            action: None,
        },
        (false, false) => Selection::Ids {
            ids: &req.ids,
            connector,
        },
        _ => return Err(Problem::bad_request("give either `ids` or `all: true`")),
    };
    let engine = &s.api.engine;
    let now = to_micros(engine.clock.now());
    let moved =
        crate::dispatch::recovery::redrive(&engine.store, now, &op.actor(), "admin API", selection)
            .await
            .map_err(|e| match e {
                RedriveError::NotFound { .. } => Problem::not_found(e.to_string()),
                other => Problem::internal(other),
            })?;
    Ok(Json(moved.into_iter().map(DeadLetter::from).collect()))
}

// ---- key tasks -------------------------------------------------------------------------------

/// Open mechanical key hand-overs and returns, oldest first.
#[utoipa::path(get, path = "/api/v1/key-tasks", params(Paging, KeyTaskQuery), tag = "keys",
    description = "Role: viewer.",
    responses((status = 200, body = Page<KeyTask>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_key_tasks(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<KeyTaskQuery>,
) -> Answer<Page<KeyTask>> {
    caller.require(Role::Viewer)?;
    Ok(Json(paging.page(views::key_tasks(&s.api, &q).await?)))
}

/// Record that a key was handed to its holder.
#[utoipa::path(post, path = "/api/v1/key-tasks/{id}/handed-over", tag = "keys",
    params(("id" = i64, Path)), description = "Role: desk.",
    responses((status = 200, body = KeyTask), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn key_handed_over(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<KeyTask> {
    let op = caller.require(Role::Desk)?;
    let kind = crate::connectors::manual::HAND_OVER;
    Ok(Json(views::record_key(&s.api, op, id, kind).await?))
}

/// Record that a key was checked back in: this confirms the revocation.
#[utoipa::path(post, path = "/api/v1/key-tasks/{id}/returned", tag = "keys",
    params(("id" = i64, Path)), description = "Role: desk.",
    responses((status = 200, body = KeyTask), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn key_returned(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<KeyTask> {
    let op = caller.require(Role::Desk)?;
    let kind = crate::connectors::manual::RETURN;
    Ok(Json(views::record_key(&s.api, op, id, kind).await?))
}

// ---- health, reports, audit ------------------------------------------------------------------

/// Every configured source: checkpoint, last run, records set aside.
#[utoipa::path(get, path = "/api/v1/sources", tag = "health", description = "Role: viewer.",
    responses((status = 200, body = Vec<SourceHealth>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn sources(caller: Caller, State(s): State<AdminState>) -> Answer<Vec<SourceHealth>> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::sources(&s.api).await?))
}

/// Latency per connector and stage, from each change's trigger to the vendor's confirmation.
#[utoipa::path(get, path = "/api/v1/reports/latency", tag = "reports", description = "Role: viewer.",
    responses((status = 200, body = LatencyReport), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn latency_report(caller: Caller, State(s): State<AdminState>) -> Answer<LatencyReport> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::latency(&s.api).await?))
}

/// Propagation SLA attainment per connector over its window.
#[utoipa::path(get, path = "/api/v1/reports/sla", tag = "reports", description = "Role: viewer.",
    responses((status = 200, body = Vec<SlaConnector>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn sla_report(caller: Caller, State(s): State<AdminState>) -> Answer<Vec<SlaConnector>> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::sla(&s.api).await?))
}

/// The audit log, newest first (read only).
#[utoipa::path(get, path = "/api/v1/audit", params(Paging, AuditQuery), tag = "audit",
    description = "Role: viewer.",
    responses((status = 200, body = Page<AuditEntry>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn audit(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<AuditQuery>,
) -> Answer<Page<AuditEntry>> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::audit(&s.api, &q, paging).await?))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    pub format: Option<String>,
    /// From this instant (RFC 3339), inclusive.
    pub since: Option<String>,
    /// Until this instant (RFC 3339), exclusive.
    pub until: Option<String>,
}

/// The audit log's records in a time range, with their hash chain, as a tar of the data file
/// (`audit.jsonl` or `audit.csv`) and `manifest.json`: `latchkey audit verify --file` checks the
/// unpacked folder offline, without the database.
#[utoipa::path(get, path = "/api/v1/audit/export", params(ExportQuery), tag = "audit",
    description = "Role: viewer. Answers `application/x-tar`.",
    responses((status = 200, content_type = "application/x-tar", description = "data file and manifest"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem, description = "no record in the range")))]
async fn audit_export(
    caller: Caller,
    State(s): State<AdminState>,
    Query(q): Query<ExportQuery>,
) -> Result<axum::response::Response, Problem> {
    use crate::audit::export::{self, ExportError, Format};
    use axum::http::header;
    caller.require(Role::Viewer)?;
    let format = match q.format.as_deref().map(str::trim).unwrap_or("jsonl") {
        "jsonl" | "" => Format::Jsonl,
        "csv" => Format::Csv,
        other => {
            return Err(Problem::bad_request(format!(
                "`format`: `{other}` is not jsonl or csv"
            )));
        }
    };
    let range = AuditQuery {
        since: q.since,
        until: q.until,
        ..Default::default()
    }
    .filter()?;
    let engine = &s.api.engine;
    let dir = tempfile::tempdir().map_err(Problem::internal)?;
    let now = to_micros(engine.clock.now());
    let written = export::export(
        &engine.store,
        range.since,
        range.until,
        format,
        &dir.path().join("export/"),
        now,
    )
    .await
    .map_err(|e| match e {
        ExportError::Empty => Problem::not_found(e.to_string()),
        other => Problem::internal(other),
    })?;
    let name = format!(
        "latchkey-audit-{}-{}.tar",
        written.manifest.first_seq, written.manifest.last_seq
    );
    // The tar goes to an unlinked temporary file and streams from there, so a large range never
    // sits in memory; the export's folder is gone once the tar is built.
    let tar = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        use std::io::{Seek, SeekFrom};
        let mut b = tar::Builder::new(tempfile::tempfile()?);
        let data_name = written
            .data
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        b.append_path_with_name(&written.data, data_name)?;
        b.append_path_with_name(&written.manifest_path, "manifest.json")?;
        let mut file = b.into_inner()?;
        file.seek(SeekFrom::Start(0))?;
        drop(dir);
        Ok(file)
    })
    .await
    .map_err(Problem::internal)?
    .map_err(Problem::internal)?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(tar),
    ));
    axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .body(body)
        .map_err(Problem::internal)
}

// ---- temporary access ------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// Only this status (`requested`, `approved`, `active`, `expired`, `ended`, `rejected`).
    pub status: Option<String>,
    /// Only this person's (key).
    pub person: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Requests for temporary access, newest first.
#[utoipa::path(get, path = "/api/v1/requests", params(RequestQuery), tag = "requests",
    description = "Role: viewer.",
    responses((status = 200, body = Vec<AccessRequest>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_requests(
    caller: Caller,
    State(s): State<AdminState>,
    Query(q): Query<RequestQuery>,
) -> Answer<Vec<AccessRequest>> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    Ok(Json(
        views::requests(&s.api, q.status.as_deref(), q.person.as_deref(), limit).await?,
    ))
}

/// Ask for temporary access to a target for a person, for a window, with a reason. Nothing is
/// issued before an approver approves it.
#[utoipa::path(post, path = "/api/v1/requests", request_body = NewRequest, tag = "requests",
    description = "Role: desk.",
    responses((status = 201, body = AccessRequest), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn create_request(
    caller: Caller,
    State(s): State<AdminState>,
    Json(body): Json<NewRequest>,
) -> Result<(axum::http::StatusCode, Json<AccessRequest>), Problem> {
    let op = caller.require(Role::Desk)?;
    let created = views::ask(&s.api, op, &body).await?;
    Ok((axum::http::StatusCode::CREATED, Json(created)))
}

/// Approve a request (refused to whoever asked for it); in force at once if its window has begun.
#[utoipa::path(post, path = "/api/v1/requests/{id}/approve", params(("id" = i64, Path)), tag = "requests",
    description = "Role: approver.",
    responses((status = 200, body = AccessRequest), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn approve_request(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<AccessRequest> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(views::decide_request(&s.api, op, id, true).await?))
}

/// Reject a request.
#[utoipa::path(post, path = "/api/v1/requests/{id}/reject", params(("id" = i64, Path)), tag = "requests",
    description = "Role: approver.",
    responses((status = 200, body = AccessRequest), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reject_request(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<AccessRequest> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(views::decide_request(&s.api, op, id, false).await?))
}

/// End a request early: its grant is revoked unless a template grants the same door.
#[utoipa::path(post, path = "/api/v1/requests/{id}/end", params(("id" = i64, Path)), tag = "requests",
    description = "Role: approver.",
    responses((status = 200, body = AccessRequest), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn end_request(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<AccessRequest> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(views::end_request(&s.api, op, id).await?))
}

/// Break-glass: give a person a door now for a short time. Under `[break_glass] rule = "review"`
/// it is in force at once (201, `status` active) and pages; under `"two_approvers"` it waits for a
/// second approver (`status` requested).
#[utoipa::path(post, path = "/api/v1/emergencies", request_body = NewEmergency, tag = "requests",
    description = "Role: approver.",
    responses((status = 201, body = AccessRequest), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn open_emergency(
    caller: Caller,
    State(s): State<AdminState>,
    Json(body): Json<NewEmergency>,
) -> Result<(axum::http::StatusCode, Json<AccessRequest>), Problem> {
    let op = caller.require(Role::Approver)?;
    let opened = views::open_emergency(&s.api, op, &body).await?;
    Ok((axum::http::StatusCode::CREATED, Json(opened)))
}

/// Record the review of an emergency (refused to whoever opened it).
#[utoipa::path(post, path = "/api/v1/emergencies/{id}/review", params(("id" = i64, Path)), request_body = Review, tag = "requests",
    description = "Role: approver.",
    responses((status = 200, body = AccessRequest), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn review_emergency(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
    Json(body): Json<Review>,
) -> Answer<AccessRequest> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(
        views::review_emergency(&s.api, op, id, &body.note).await?,
    ))
}

/// Door migrations (a door moved from one connector to another) with their progress.
#[utoipa::path(get, path = "/api/v1/migrations", tag = "migrations", description = "Role: viewer.",
    responses((status = 200, body = Vec<DoorMigration>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_migrations(
    caller: Caller,
    State(s): State<AdminState>,
) -> Answer<Vec<DoorMigration>> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::migrations(&s.api).await?))
}

/// Plan moving a door from one connector to another (mechanical key to smart lock) or, with
/// `"apply": true`, start it: everyone entitled gets the new credential, every key out a return
/// task; it closes when the last old credential is gone.
#[utoipa::path(post, path = "/api/v1/migrations", request_body = NewMigration, tag = "migrations",
    description = "Role: admin.",
    responses((status = 200, body = MigrationPlan), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn migrate(
    caller: Caller,
    State(s): State<AdminState>,
    Json(body): Json<NewMigration>,
) -> Answer<MigrationPlan> {
    let op = caller.require(Role::Admin)?;
    Ok(Json(views::migrate(&s.api, op, &body).await?))
}

/// Record a visitor (someone no feed knows) until their last day; doors come from requests.
#[utoipa::path(post, path = "/api/v1/visitors", request_body = NewVisitor, tag = "requests",
    description = "Role: desk.",
    responses((status = 201, body = views::PersonSummary), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn add_visitor(
    caller: Caller,
    State(s): State<AdminState>,
    Json(body): Json<NewVisitor>,
) -> Result<(axum::http::StatusCode, Json<views::PersonSummary>), Problem> {
    let op = caller.require(Role::Desk)?;
    let added = views::add_visitor(&s.api, op, &body).await?;
    Ok((axum::http::StatusCode::CREATED, Json(added)))
}

// ---- access reviews ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReviewListQuery {
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Access review campaigns, newest first, with how many items each has still to decide.
#[utoipa::path(get, path = "/api/v1/reviews", params(ReviewListQuery), tag = "reviews",
    description = "Role: viewer.",
    responses((status = 200, body = Vec<views::ReviewCampaign>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_reviews(
    caller: Caller,
    State(s): State<AdminState>,
    Query(q): Query<ReviewListQuery>,
) -> Answer<Vec<views::ReviewCampaign>> {
    caller.require(Role::Viewer)?;
    Ok(Json(
        views::review_campaigns(&s.api, q.limit.unwrap_or(100)).await?,
    ))
}

/// Start a campaign over a door, a tier, a connector or a manager's reports: the current holders
/// become items to certify or revoke by the deadline.
#[utoipa::path(post, path = "/api/v1/reviews", request_body = views::NewReview, tag = "reviews",
    description = "Role: approver.",
    responses((status = 201, body = views::ReviewCampaign), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn start_review(
    caller: Caller,
    State(s): State<AdminState>,
    Json(body): Json<views::NewReview>,
) -> Result<(axum::http::StatusCode, Json<views::ReviewCampaign>), Problem> {
    let op = caller.require(Role::Approver)?;
    let started = views::start_review(&s.api, op, &body).await?;
    Ok((axum::http::StatusCode::CREATED, Json(started)))
}

/// One campaign with its items: who holds which door, why, and the decision.
#[utoipa::path(get, path = "/api/v1/reviews/{id}", params(("id" = i64, Path)), tag = "reviews",
    description = "Role: viewer.",
    responses((status = 200, body = views::ReviewCampaign), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn review_campaign(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<views::ReviewCampaign> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::review_campaign(&s.api, id).await?))
}

/// Certify or revoke one item. Revoking takes the door away at the vendor and withholds it from
/// the templates until reinstated.
#[utoipa::path(post, path = "/api/v1/reviews/items/{id}", params(("id" = i64, Path)), request_body = views::ReviewDecision, tag = "reviews",
    description = "Role: approver.",
    responses((status = 200, body = views::ReviewItem), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn decide_review_item(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
    Json(body): Json<views::ReviewDecision>,
) -> Answer<views::ReviewItem> {
    let op = caller.require(Role::Approver)?;
    Ok(Json(
        views::decide_review_item(&s.api, op, id, &body).await?,
    ))
}

/// A campaign's evidence for an auditor: its items and decisions, and the audit records of each
/// step with their place and hash in the chain.
#[utoipa::path(get, path = "/api/v1/reviews/{id}/evidence", params(("id" = i64, Path)), tag = "reviews",
    description = "Role: viewer.",
    responses((status = 200, body = Object), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn review_evidence(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<crate::reviews::Evidence> {
    caller.require(Role::Viewer)?;
    Ok(Json(views::review_evidence(&s.api, id).await?))
}
