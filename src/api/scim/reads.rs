//! Reads: one resource, lists, filters and `.search`.

use super::*;

// Representations

pub(super) fn base(s: &Scim, headers: &HeaderMap) -> String {
    match &s.base_url {
        Some(b) => b.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}/scim/v2")
        }
    }
}

pub(super) fn location(base: &str, r: &Resource) -> String {
    format!("{base}/{}/{}", r.kind.endpoint(), r.id)
}

/// The full representation of a stored resource: location, a user's groups (read-only, derived
/// from the groups' members), and a group's members (from their rows, unless the answer leaves
/// them out: `members` false).
pub(super) async fn render(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    base: &str,
    r: &Resource,
    members: bool,
) -> Result<Value, Failure> {
    let mut v = r.raw.clone();
    v["meta"]["location"] = json!(location(base, r));
    if r.kind == Kind::Group && members {
        let list: Vec<Value> = src::members(conn, tenant, &r.id)
            .await?
            .into_iter()
            .map(|m| m.1)
            .collect();
        // One shape for "no members": absent, never `[]`.
        if !list.is_empty() {
            v["members"] = Value::Array(list);
        }
    }
    if r.kind == Kind::User {
        let groups = src::groups_of(conn, tenant, &r.id).await?;
        if !groups.is_empty() {
            v["groups"] = Value::Array(
                groups
                    .into_iter()
                    .map(|(id, name)| {
                        json!({"value": id, "display": name, "$ref": format!("{base}/Groups/{id}"), "type": "direct"})
                    })
                    .collect(),
            );
        }
    }
    Ok(v)
}

pub(super) fn with_etag(mut resp: Response, r: &Resource, base: Option<&str>) -> Response {
    if let Ok(v) = HeaderValue::from_str(&r.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(base) = base
        && let Ok(v) = HeaderValue::from_str(&location(base, r))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(super) fn kind_of(endpoint: &str) -> Result<Kind, Failure> {
    Kind::from_endpoint(endpoint)
        .ok_or_else(|| Failure(ScimError::status(404, format!("no endpoint /{endpoint}"))))
}

/// `If-Match` (RFC 7644 section 3.14): a write against a version the client has not seen is 412.
pub(super) fn check_if_match(headers: &HeaderMap, r: &Resource) -> Result<(), Failure> {
    let Some(want) = headers.get(header::IF_MATCH).and_then(|h| h.to_str().ok()) else {
        return Ok(());
    };
    let etag = r.etag();
    let ok = want.split(',').map(str::trim).any(|w| {
        w == "*" || w == etag || w.trim_start_matches("W/") == etag.trim_start_matches("W/")
    });
    if ok {
        Ok(())
    } else {
        Err(Failure(ScimError::status(
            412,
            format!("resource is at version {etag}"),
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

pub(super) async fn read(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    let tenant = &c.tenant().name;
    let mut conn = s.engine.store.pool().acquire().await?;
    let r = src::get(&mut conn, tenant, kind, &id)
        .await?
        .ok_or_else(|| ScimError::not_found(kind, &id))?;
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|e| e.trim() == r.etag()))
    {
        return Ok(with_etag(
            StatusCode::NOT_MODIFIED.into_response(),
            &r,
            None,
        ));
    }
    let base = base(&s, &headers);
    let p = Projection::parse(
        q.get("attributes").map(String::as_str),
        q.get("excludedAttributes").map(String::as_str),
    );
    let v = render(&mut conn, tenant, &base, &r, p.wants("members")).await?;
    Ok(with_etag(scim_json(StatusCode::OK, &p.apply(v)), &r, None))
}

#[derive(Debug, Default)]
pub(super) struct ListParams {
    filter: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    excluded: Option<String>,
}

pub(super) async fn run_search(
    s: &Scim,
    c: &Caller,
    kind: Option<Kind>,
    p: ListParams,
    headers: &HeaderMap,
) -> Reply {
    let tenant = &c.tenant().name;
    let profile = &c.tenant().mapping.profile;
    let filter = p
        .filter
        .as_deref()
        .map(|f| src::parse_tenant_filter(profile, f))
        .transpose()?;
    let descending = match p.sort_order.as_deref().map(str::to_lowercase).as_deref() {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(o) => {
            return Err(Failure(ScimError::bad(
                "invalidValue",
                format!("sortOrder `{o}` is neither ascending nor descending"),
            )));
        }
    };
    let start_index = p.start_index.unwrap_or(1).max(1);
    let count = p.count.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE);
    let query = Query {
        profile: profile.clone(),
        filter,
        sort_by: p.sort_by,
        descending,
        start_index,
        count,
    };
    let (total, page) = src::search(s.engine.store.pool(), tenant, kind, &query).await?;
    let base = base(s, headers);
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded.as_deref());
    let mut conn = s.engine.store.pool().acquire().await?;
    let mut resources = Vec::with_capacity(page.len());
    for r in &page {
        let v = render(&mut conn, tenant, &base, r, projection.wants("members")).await?;
        resources.push(projection.apply(v));
    }
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [schema_urns::LIST_RESPONSE],
            "totalResults": total,
            "startIndex": start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    ))
}

pub(super) fn int_param(q: &BTreeMap<String, String>, name: &str) -> Result<Option<i64>, Failure> {
    q.get(name)
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                Failure(ScimError::bad(
                    "invalidValue",
                    format!("`{name}` must be an integer"),
                ))
            })
        })
        .transpose()
}

pub(super) async fn list(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    let p = ListParams {
        filter: q.get("filter").cloned(),
        sort_by: q.get("sortBy").cloned(),
        sort_order: q.get("sortOrder").cloned(),
        start_index: int_param(&q, "startIndex")?,
        count: int_param(&q, "count")?,
        attributes: q.get("attributes").cloned(),
        excluded: q.get("excludedAttributes").cloned(),
    };
    run_search(&s, &c, Some(kind), p, &headers).await
}

pub(super) fn search_params(body: &Bytes) -> Result<ListParams, Failure> {
    let v = src::parse_body(body)?;
    let has_schema = v.get("schemas").and_then(Value::as_array).is_some_and(|s| {
        s.iter()
            .any(|u| u.as_str() == Some(schema_urns::SEARCH_REQUEST))
    });
    if !has_schema {
        return Err(Failure(ScimError::bad(
            "invalidSyntax",
            format!(
                "a search must carry the schema {}",
                schema_urns::SEARCH_REQUEST
            ),
        )));
    }
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let list_of = |k: &str| match v.get(k) {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(ListParams {
        filter: str_of("filter"),
        sort_by: str_of("sortBy"),
        sort_order: str_of("sortOrder"),
        start_index: v.get("startIndex").and_then(Value::as_i64),
        count: v.get("count").and_then(Value::as_i64),
        attributes: list_of("attributes"),
        excluded: list_of("excludedAttributes"),
    })
}

pub(super) async fn search_post(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    run_search(&s, &c, Some(kind), search_params(&body)?, &headers).await
}

pub(super) async fn search_root(
    State(s): State<Scim>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    run_search(&s, &c, None, search_params(&body)?, &headers).await
}
