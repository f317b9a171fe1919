//! Discovery (RFC 7644 section 4).

use super::*;

// Discovery (RFC 7644 section 4)

pub(super) fn meta(base: &str, kind: &str, path: &str) -> Value {
    json!({ "resourceType": kind, "location": format!("{base}/{path}") })
}

pub(super) async fn service_provider_config(State(s): State<Scim>, headers: HeaderMap) -> Response {
    let base = base(&s, &headers);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [schema_urns::SERVICE_PROVIDER_CONFIG],
            "documentationUri": "https://github.com/latchkey/latchkey#scim",
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": MAX_PAGE },
            "changePassword": { "supported": false },
            "sort": { "supported": true },
            "etag": { "supported": true },
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A per-tenant bearer token in the Authorization header",
                "primary": true,
            }],
            "meta": meta(&base, "ServiceProviderConfig", "ServiceProviderConfig"),
        }),
    )
}

pub(super) fn resource_type_json(base: &str, kind: Kind, p: &src::Profile) -> Value {
    let mut v = json!({
        "schemas": [schema_urns::RESOURCE_TYPE],
        "id": kind.resource_type(),
        "name": kind.resource_type(),
        "endpoint": format!("/{}", kind.endpoint()),
        "description": kind.resource_type(),
        "schema": kind.schema(),
        "meta": meta(base, "ResourceType", &format!("ResourceTypes/{}", kind.resource_type())),
    });
    let mut exts: Vec<Value> = p
        .extensions_of(kind)
        .map(|(urn, _)| json!({ "schema": urn, "required": false }))
        .collect();
    if kind == Kind::User {
        exts.insert(
            0,
            json!({ "schema": schema_urns::ENTERPRISE_USER, "required": false }),
        );
    }
    if !exts.is_empty() {
        v["schemaExtensions"] = Value::Array(exts);
    }
    v
}

pub(super) fn list_json(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [schema_urns::LIST_RESPONSE],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

pub(super) async fn resource_types(
    State(s): State<Scim>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Response {
    let base = base(&s, &headers);
    let p = &c.tenant().mapping.profile;
    scim_json(
        StatusCode::OK,
        &list_json(vec![
            resource_type_json(&base, Kind::User, p),
            resource_type_json(&base, Kind::Group, p),
        ]),
    )
}

pub(super) async fn resource_type(
    State(s): State<Scim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Response {
    let base = base(&s, &headers);
    match [Kind::User, Kind::Group]
        .into_iter()
        .find(|k| k.resource_type() == id)
    {
        Some(k) => scim_json(
            StatusCode::OK,
            &resource_type_json(&base, k, &c.tenant().mapping.profile),
        ),
        None => error(404, None, &format!("no resource type {id}")),
    }
}

pub(super) fn schema_list(base: &str, p: &src::Profile) -> Vec<Value> {
    let names = ["user", "enterprise_user", "group"];
    let Ok(schemas) = scim_v2::models::scim_schema::get_schemas(names.to_vec()) else {
        return vec![];
    };
    let declared = p.extensions.iter().map(|(u, e)| src::schema_json(u, e));
    schemas
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .map(group_name_required)
        .chain(declared)
        .map(|mut v| {
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            v["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:Schema"]);
            v["meta"] = meta(base, "Schema", &format!("Schemas/{id}"));
            v
        })
        .collect()
}

/// RFC 7643's Group schema marks displayName optional, while its prose, RFC 7644 and every
/// provider treat it as the group's name; latchkey requires it (and keeps it unique per tenant).
fn group_name_required(mut v: Value) -> Value {
    if v.get("id").and_then(Value::as_str) == Some(schema_urns::GROUP)
        && let Some(Value::Array(attrs)) = v.get_mut("attributes")
    {
        for a in attrs.iter_mut() {
            if a.get("name").and_then(Value::as_str) == Some("displayName") {
                a["required"] = json!(true);
                a["uniqueness"] = json!("server");
            }
        }
    }
    v
}

pub(super) async fn schemas(
    State(s): State<Scim>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Response {
    let base = base(&s, &headers);
    let p = &c.tenant().mapping.profile;
    scim_json(StatusCode::OK, &list_json(schema_list(&base, p)))
}

pub(super) async fn schema(
    State(s): State<Scim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Response {
    let base = base(&s, &headers);
    match schema_list(&base, &c.tenant().mapping.profile)
        .into_iter()
        .find(|v| v.get("id").and_then(Value::as_str) == Some(id.as_str()))
    {
        Some(v) => scim_json(StatusCode::OK, &v),
        None => error(404, None, &format!("no schema {id}")),
    }
}
