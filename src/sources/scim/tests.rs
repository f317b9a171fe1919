use super::*;

#[test]
fn entra_string_boolean_and_capitalised_ops_patch() {
    let raw = json!({"schemas":[schema_urns::USER],"id":"1","userName":"a@x","active":true});
    let body = json!({"schemas":[schema_urns::PATCH_OP],"Operations":[
        {"op":"Replace","path":"active","value":"False"},
        {"op":"Add","path":"emails[type eq \"work\"].value","value":"a@x.com"},
        {"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager","value":"m1"}
    ]});
    let out = apply_patch(
        &Profile::default(),
        Kind::User,
        &raw,
        parse_patch(body).unwrap(),
    )
    .unwrap();
    let out = canonical(&Profile::default(), Kind::User, out, false).unwrap();
    assert_eq!(out["active"], json!(false));
    assert_eq!(out["emails"][0]["value"], json!("a@x.com"));
    assert_eq!(
        out[schema_urns::ENTERPRISE_USER]["manager"]["value"],
        json!("m1")
    );
}

#[test]
fn okta_patch_without_path_and_member_removal_by_filter() {
    let raw = json!({"schemas":[schema_urns::GROUP],"id":"g","displayName":"Doors",
            "members":[{"value":"u1"},{"value":"u2"}]});
    let body = json!({"schemas":[schema_urns::PATCH_OP],"Operations":[
        {"op":"replace","value":{"id":"g","displayName":"Door access"}},
        {"op":"remove","path":"members[value eq \"u1\"]"},
        {"op":"add","path":"members","value":[{"value":"u3"},{"value":"u2"}]}
    ]});
    let out = apply_patch(
        &Profile::default(),
        Kind::Group,
        &raw,
        parse_patch(body).unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = out["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u2", "u3"]);
    assert_eq!(out["displayName"], json!("Door access"));
}

#[test]
fn user_maps_to_a_person_record_with_slugs() {
    let u = json!({"userName":"e1@example.com","externalId":"E1","active":false,
            "title":"Technician","userType":"Employee",
            "addresses":[{"type":"work","locality":"New York"}],
            schema_urns::ENTERPRISE_USER: {"department":"Engineering","manager":{"value":"E9"}}});
    let r = person_record(
        "okta",
        "id1",
        &u,
        &["Doors".into()],
        CorrelateBy::ExternalId,
    )
    .unwrap();
    assert_eq!(r.key, "E1");
    assert_eq!(r.status, Some(RecordStatus::Terminated));
    assert_eq!(r.site.as_deref(), Some("new-york"));
    assert_eq!(r.attrs["department"], "engineering");
    assert_eq!(r.attrs["role"], "technician");
    assert_eq!(r.attrs["manager"], "E9");
    assert_eq!(r.attrs["groups"], "Doors");
    assert_eq!(r.attrs["email"], "e1@example.com");
    assert!(
        person_record(
            "okta",
            "i",
            &json!({"userName":"x"}),
            &[],
            CorrelateBy::ExternalId
        )
        .is_none()
    );
}

#[test]
fn unknown_attributes_refused_kept_or_dropped_and_extensions_coerced() {
    use crate::config::{ScimAttributeConfig, ScimExtensionConfig, UnknownAttributes};
    let urn = "urn:okta:custom:user:1.0";
    let ext = ScimExtensionConfig {
        resource: "User".into(),
        description: None,
        attributes: vec![ScimAttributeConfig {
            name: "badge".into(),
            kind: "integer".into(),
            multi_valued: false,
            sub_attributes: vec![],
            maps_to: Some("badge".into()),
        }],
    };
    let mut p = Profile {
        extensions: vec![(urn.into(), ext)],
        ..Profile::default()
    };
    let body = json!({"schemas":[schema_urns::USER, urn],"userName":"a","shoeSize":40,
        urn: {"badge":"7"}});
    let err = canonical(&p, Kind::User, body.clone(), true).unwrap_err();
    assert!(err.to_string().contains("shoeSize"), "{err}");
    p.unknown = UnknownAttributes::Keep;
    let kept = canonical(&p, Kind::User, body.clone(), true).unwrap();
    assert_eq!(kept["shoeSize"], 40);
    assert_eq!(kept[urn]["badge"], 7);
    assert!(kept["schemas"].as_array().unwrap().contains(&json!(urn)));
    assert_eq!(extension_attrs(&p, &kept)["badge"], "7");
    p.unknown = UnknownAttributes::Drop;
    let dropped = canonical(&p, Kind::User, body, true).unwrap();
    assert!(dropped.get("shoeSize").is_none());
    let undeclared = json!({"userName":"a","urn:x:y:1.0:User":{"a":1}});
    p.unknown = UnknownAttributes::Refuse;
    let err = canonical(&p, Kind::User, undeclared, true).unwrap_err();
    assert!(err.to_string().contains("[scim.extensions."), "{err}");
}
