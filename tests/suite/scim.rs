//! The SCIM 2.0 server over real HTTP, against every store backend: provider-shaped requests (Okta,
//! Entra ID) in, joiners / movers / leavers out, checked at the Nuki simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;

const OKTA: &str = "okta-token-1";
const ENTRA: &str = "entra-token-2";
const SCOPED: &str = "scoped-token-3";
const LIMITED: &str = "limited-token-4";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
const SCIM_JSON: &str = "application/scim+json";

/// The shared harness with four SCIM tenants (Okta, Entra ID with a custom extension, one
/// scoped to a group, one rate limited) and the SCIM server listening over HTTP.
struct Scim {
    h: Harness,
    base: String,
    http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::ops::Deref for Scim {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Scim {
    async fn new(backend: &str, store_url: &str, dir: &Path) -> Self {
        Self::with_settings(backend, store_url, dir, "").await
    }

    /// `scim`: lines of the `[scim]` section (its defaults otherwise).
    async fn with_settings(backend: &str, store_url: &str, dir: &Path, scim: &str) -> Self {
        // The fixture's templates plus one that grants a door from a declared extension attribute.
        let h = Harness::builder(backend, store_url, dir)
            .more_templates(
                "[[templates]]\nname = \"lab-clearance\"\nwhen = \"lab_clearance == 'granted'\"\n\
                 [[templates.grants]]\nconnector = \"nuki\"\ntarget = \"{{ site }}-lab\"\n",
            )
            // The fixture has a `[scim]` section: the settings go into it.
            .patch("[scim]\n", &format!("[scim]\n{scim}\n"))
            .config(&format!(
                "[scim.tenants.okta]\ntoken_sha256 = \"{}\"\nmay_terminate = true\n\
                 [scim.tenants.entra]\ntoken = {{ env = \"LATCHKEY_TEST_SCIM_ENTRA\" }}\n\
                 provider = \"entra\"\n\
                 [scim.tenants.entra.extensions.\"{CUSTOM}\"]\n\
                 attributes = [{{ name = \"CustomAttribute\", maps_to = \"lab_clearance\" }},\
                 {{ name = \"badgeNumbers\", type = \"integer\", multi_valued = true }},\
                 {{ name = \"remote\", type = \"boolean\" }}]\n\
                 [scim.tenants.scoped]\ntoken_sha256 = \"{}\"\ncorrelate_by = \"userName\"\n\
                 scope_groups = [\"Door access\"]\n\
                 [scim.tenants.limited]\ntoken_sha256 = \"{}\"\n\
                 rate_limit = {{ per_second = 1, burst = 3 }}\n\
                 [authority.attributes]\n\
                 department = [\"scim:okta\", \"hr\", \"scim:entra\", \"scim:scoped\", \"scim:limited\"]",
                sha(OKTA),
                sha(SCOPED),
                sha(LIMITED),
            ))
            .secret("LATCHKEY_TEST_SCIM_ENTRA", ENTRA)
            .build()
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/scim/v2", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let router = h.app.router();
        let server = tokio::spawn(async move {
            latchkey::api::serve(listener, router, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            h,
            base,
            http: reqwest::Client::new(),
            _server: server,
            _stop: stop,
        }
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }))
        };
        (status, v)
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Some(token),
            reqwest::Method::POST,
            path,
            Some(&body.to_string()),
        )
        .await
    }

    async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Some(token),
            reqwest::Method::PUT,
            path,
            Some(&body.to_string()),
        )
        .await
    }

    async fn patch(&self, token: &str, path: &str, ops: Value) -> (StatusCode, Value) {
        let body = json!({ "schemas": [PATCH], "Operations": ops });
        self.call(
            Some(token),
            reqwest::Method::PATCH,
            path,
            Some(&body.to_string()),
        )
        .await
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(Some(token), reqwest::Method::GET, path, None)
            .await
    }

    async fn delete(&self, token: &str, path: &str) -> StatusCode {
        self.call(Some(token), reqwest::Method::DELETE, path, None)
            .await
            .0
    }

    async fn drain(&self) {
        let d = self.app.dispatcher();
        let connector = self.app.connectors.get("nuki").unwrap().clone();
        for _ in 0..10_000 {
            if d.step(&connector, "test-worker").await.unwrap() {
                continue;
            }
            match latchkey::store::next_due(self.app.store().pool(), "nuki")
                .await
                .unwrap()
            {
                None => return,
                Some(due) => {
                    let now = latchkey::clock::to_micros(self.clock.now_utc());
                    if due > now {
                        self.clock.set(latchkey::clock::from_micros(due));
                    }
                }
            }
        }
        panic!("outbox did not drain");
    }

    fn lock(&self, target: &str) -> i64 {
        let demo = std::fs::read_to_string(fixture_config()).unwrap();
        let line = demo
            .lines()
            .find(|l| l.starts_with(&format!("\"{target}\"")))
            .unwrap();
        line.split('"').nth(3).unwrap().parse().unwrap()
    }

    fn holds(&self, key: &str, target: &str) -> bool {
        let email = format!("{}@example.com", key.to_lowercase());
        let nuki = self.sim.nuki().unwrap();
        nuki.users()
            .into_iter()
            .find(|u| u.email == email)
            .is_some_and(|u| nuki.holds(self.lock(target), u.account_user_id))
    }

    async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {table}"
        )))
        .fetch_one(self.app.store().pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
    }

    async fn lifecycle(&self, key: &str) -> Option<String> {
        let mut conn = self.app.store().pool().acquire().await.unwrap();
        latchkey::store::get_identity(&mut conn, key)
            .await
            .unwrap()
            .map(|i| i.lifecycle.as_str().to_string())
    }
}

/// Run `body` once per backend, each in its own directory and database.
macro_rules! each_backend {
    (|$h:ident| $body:block) => {{
        let tmp = tempfile::tempdir().unwrap();
        for (name, url) in backends(tmp.path()).await {
            let dir = tmp.path().join(&name);
            let $h = Scim::new(&name, &url, &dir).await;
            eprintln!("-- backend {name}");
            $body
        }
    }};
}

/// An Okta-shaped user (Okta sends `externalId` and the enterprise extension when mapped).
fn okta_user(key: &str, dept: &str, city: &str, active: bool) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": format!("{}@example.com", key.to_lowercase()),
        "externalId": key,
        "name": { "givenName": "Person", "familyName": key },
        "emails": [{ "primary": true, "value": format!("{}@example.com", key.to_lowercase()), "type": "work" }],
        "displayName": format!("Person {key}"),
        "userType": "Employee",
        "title": "Analyst",
        "addresses": [{ "type": "work", "locality": city, "primary": true }],
        "active": active,
        ENTERPRISE: { "department": dept, "employeeNumber": key }
    })
}

/// An Entra ID-shaped create: string booleans, capitalised names where Entra uses them.
fn entra_user(key: &str, dept: &str, city: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "externalId": key,
        "userName": format!("{}@example.com", key.to_lowercase()),
        "active": "True",
        "displayName": format!("Person {key}"),
        "emails": [{ "primary": true, "type": "work", "value": format!("{}@example.com", key.to_lowercase()) }],
        "addresses": [{ "type": "work", "locality": city, "primary": true }],
        "userType": "Employee",
        ENTERPRISE: { "department": dept, "manager": { "value": "M1" } }
    })
}

#[tokio::test]
async fn okta_create_deactivate_reactivate_put_and_delete_reach_the_doors() {
    each_backend!(|h| {
        let (st, u) = h
            .post(
                OKTA,
                "/Users",
                okta_user("E1", "Engineering", "Berlin", true),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{} {u}", h.backend);
        let id = u["id"].as_str().unwrap().to_string();
        assert_eq!(u["meta"]["resourceType"], "User");
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering"), "{}", h.backend);
        assert!(h.holds("E1", "berlin-lab"));

        // Okta deactivates with a PATCH without path carrying an object.
        let started = Instant::now();
        let (st, u) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "value": { "id": id, "active": false } }]),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(st, StatusCode::OK, "{u}");
        assert_eq!(u["active"], false);
        // The answer comes only once the revoke is durable in the outbox.
        assert_eq!(h.lifecycle("E1").await.as_deref(), Some("terminated"));
        eprintln!(
            "SCIM PATCH active=false answered in {took:?} ({})",
            h.backend
        );
        h.drain().await;
        assert!(!h.holds("E1", "berlin-engineering"));
        assert!(!h.holds("E1", "berlin-lab"));

        // Reactivation.
        let (st, _) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "value": { "active": true } }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering"));

        // Okta's PUT-to-deactivate: the whole user again, with active false.
        let (st, u) = h
            .put(
                OKTA,
                &format!("/Users/{id}"),
                okta_user("E1", "Engineering", "Berlin", false),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{u}");
        h.drain().await;
        assert!(!h.holds("E1", "berlin-engineering"));

        // Group push: create, member add, member removal by filter path.
        let (st, u2) = h
            .post(OKTA, "/Users", okta_user("E2", "Sales", "London", true))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let id2 = u2["id"].as_str().unwrap().to_string();
        let (st, g) = h
            .post(
                OKTA,
                "/Groups",
                json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],
                       "displayName":"Door access","members":[]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let (st, _) = h
            .patch(
                OKTA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "add", "path": "members", "value": [{ "value": id2, "display": "E2" }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (_, u2) = h.get(OKTA, &format!("/Users/{id2}")).await;
        assert_eq!(u2["groups"][0]["display"], "Door access", "{u2}");
        let (st, g) = h
            .patch(
                OKTA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "remove", "path": format!("members[value eq \"{id2}\"]") }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert!(g.get("members").is_none(), "{g}");
        h.drain().await;
        assert!(h.holds("E2", "london-sales"));

        // Delete: a leaver, and the resource is gone.
        assert_eq!(
            h.delete(OKTA, &format!("/Users/{id2}")).await,
            StatusCode::NO_CONTENT
        );
        h.drain().await;
        assert!(!h.holds("E2", "london-sales"));
        assert_eq!(
            h.get(OKTA, &format!("/Users/{id2}")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(h.sim.nuki().unwrap().duplicate_pairs(), 0);
    });
}

#[tokio::test]
async fn entra_string_booleans_mover_soft_delete_then_delete() {
    each_backend!(|h| {
        let (st, u) = h
            .post(ENTRA, "/Users", entra_user("E7", "Engineering", "Berlin"))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{u}");
        assert_eq!(u["active"], true, "string boolean stored as boolean");
        let id = u["id"].as_str().unwrap().to_string();
        h.drain().await;
        assert!(h.holds("E7", "berlin-engineering"), "{}", h.backend);

        // Mover: Entra replaces the department with a capitalised op and a URN path.
        let (st, u) = h
            .patch(
                ENTRA,
                &format!("/Users/{id}"),
                json!([
                    { "op": "Replace", "path": format!("{ENTERPRISE}:department"), "value": "Sales" },
                    { "op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": "M2" },
                    { "op": "Replace", "path": "emails[type eq \"work\"].value", "value": "e7@example.com" }
                ]),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{u}");
        assert_eq!(u[ENTERPRISE]["manager"]["value"], "M2");
        h.drain().await;
        assert!(!h.holds("E7", "berlin-engineering"));
        assert!(!h.holds("E7", "berlin-lab"));
        assert!(h.holds("E7", "berlin-sales"));

        // Soft delete: "active":"False" as a string.
        let (st, u) = h
            .patch(
                ENTRA,
                &format!("/Users/{id}"),
                json!([{ "op": "Replace", "path": "active", "value": "False" }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{u}");
        assert_eq!(u["active"], false);
        h.drain().await;
        assert!(!h.holds("E7", "berlin-sales"));
        // Entra looks the user up by filter before deleting.
        let (st, l) = h
            .get(ENTRA, "/Users?filter=userName%20eq%20%22E7@EXAMPLE.com%22")
            .await;
        assert_eq!((st, l["totalResults"].as_i64()), (StatusCode::OK, Some(1)));
        let revokes = h.count("commands").await;
        assert_eq!(
            h.delete(ENTRA, &format!("/Users/{id}")).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(h.count("commands").await, revokes, "nothing left to revoke");
        assert_eq!(
            h.delete(ENTRA, &format!("/Users/{id}")).await,
            StatusCode::NOT_FOUND
        );
    });
}

#[tokio::test]
async fn removal_from_the_provisioned_group_is_a_leaver() {
    each_backend!(|h| {
        // This tenant correlates by userName, and only members of "Door access" are in scope.
        let mut user = okta_user("E3", "Facilities", "London", true);
        user["userName"] = json!("E3");
        let (st, u) = h.post(SCOPED, "/Users", user).await;
        assert_eq!(st, StatusCode::CREATED, "{u}");
        let id = u["id"].as_str().unwrap().to_string();
        h.drain().await;
        assert!(!h.holds("E3", "london-facilities"), "not in scope yet");
        let (st, g) = h
            .post(
                SCOPED,
                "/Groups",
                json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],
                       "displayName":"Door access","members":[{"value": id}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        h.drain().await;
        assert!(h.holds("E3", "london-facilities"), "{}", h.backend);
        assert!(h.holds("E3", "london-plant-room"));
        // Entra's member removal: path `members` with the ids as value.
        let (st, _) = h
            .patch(
                SCOPED,
                &format!("/Groups/{gid}"),
                json!([{ "op": "Remove", "path": "members", "value": [{ "value": id }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(h.lifecycle("E3").await.as_deref(), Some("terminated"));
        h.drain().await;
        assert!(!h.holds("E3", "london-facilities"));
        assert!(!h.holds("E3", "london-plant-room"));
    });
}

#[tokio::test]
async fn hr_and_scim_correlate_and_the_leaver_wins() {
    each_backend!(|h| {
        // The HR feed knows E5 as an active engineer; Okta pushes the same person disabled.
        let feed = h
            .app
            .engine
            .config
            .base_dir
            .join("feeds")
            .join("hr-0001.csv");
        std::fs::write(
            &feed,
            format!("{HEADER}\n{}\n", employee("E5", "engineering", "berlin")),
        )
        .unwrap();
        h.app.engine.apply_hr_file("hr", &feed).await.unwrap();
        h.drain().await;
        assert!(h.holds("E5", "berlin-engineering"), "{}", h.backend);
        let (st, _) = h
            .post(
                OKTA,
                "/Users",
                okta_user("E5", "Engineering", "Berlin", false),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        h.drain().await;
        assert!(!h.holds("E5", "berlin-engineering"), "leaver wins");
    });
}

#[tokio::test]
async fn tokens_tenants_and_bad_requests() {
    each_backend!(|h| {
        let (st, u) = h
            .post(OKTA, "/Users", okta_user("E4", "Sales", "Berlin", true))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let id = u["id"].as_str().unwrap().to_string();
        // 401 without a token and with a wrong one.
        let (st, e) = h.call(None, reqwest::Method::GET, "/Users", None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert_eq!(e["status"], "401");
        let (st, _) = h.get("not-a-token", "/Users").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        // Another tenant's resource does not exist for this one.
        let (st, _) = h.get(ENTRA, &format!("/Users/{id}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (_, l) = h.get(ENTRA, "/Users").await;
        assert_eq!(l["totalResults"], 0);
        assert_eq!(
            h.delete(ENTRA, &format!("/Users/{id}")).await,
            StatusCode::NOT_FOUND
        );

        let resources = h.count("scim_resources").await;
        let commands = h.count("commands").await;
        let audit = h.count("audit_log").await;
        let bad = |st: StatusCode, e: &Value, t: &str| {
            assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
            assert_eq!(e["scimType"], t, "{e}");
            assert_eq!(
                e["schemas"][0],
                "urn:ietf:params:scim:api:messages:2.0:Error"
            );
        };
        let (st, e) = h
            .call(
                Some(OKTA),
                reqwest::Method::POST,
                "/Users",
                Some("{\"userName\": \"x\""),
            )
            .await;
        bad(st, &e, "invalidSyntax");
        let mut unknown = okta_user("E9", "Sales", "Berlin", true);
        unknown["departmnet"] = json!("Sales");
        let (st, e) = h.post(OKTA, "/Users", unknown).await;
        bad(st, &e, "invalidSyntax");
        let (st, e) = h.get(OKTA, "/Users?filter=userName%20eq").await;
        bad(st, &e, "invalidFilter");
        let (st, e) = h.get(OKTA, "/Users?filter=shoeSize%20gt%2040").await;
        bad(st, &e, "invalidFilter");
        let (st, e) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "path": "nope[", "value": 1 }]),
            )
            .await;
        bad(st, &e, "invalidPath");
        // A PATCH whose second operation fails leaves the first one unapplied.
        let (st, e) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "path": "active", "value": false },
                       { "op": "replace", "path": "shoeSize", "value": 40 }]),
            )
            .await;
        bad(st, &e, "invalidPath");
        let (_, u) = h.get(OKTA, &format!("/Users/{id}")).await;
        assert_eq!(u["active"], true);
        let (st, e) = h
            .post(OKTA, "/Users", okta_user("E4", "Sales", "Berlin", true))
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{e}");
        assert_eq!(e["scimType"], "uniqueness");
        assert_eq!(
            h.count("scim_resources").await,
            resources,
            "nothing half-written"
        );
        assert_eq!(h.count("commands").await, commands);
        assert_eq!(h.count("audit_log").await, audit);
    });
}

#[tokio::test]
async fn filters_pages_projections_and_etags() {
    each_backend!(|h| {
        let mut ids = Vec::new();
        for (i, dept) in ["Sales", "Engineering", "Sales", "Finance", "Sales"]
            .iter()
            .enumerate()
        {
            let mut u = okta_user(&format!("F{i}"), dept, "Berlin", i != 3);
            u["emails"] = json!([
                { "value": format!("f{i}@example.com"), "type": "work", "primary": true },
                { "value": format!("f{i}@home.example"), "type": "home" }
            ]);
            let (st, u) = h.post(OKTA, "/Users", u).await;
            assert_eq!(st, StatusCode::CREATED, "{u}");
            ids.push(u["id"].as_str().unwrap().to_string());
        }
        let q = |f: &str| format!("/Users?filter={}", urlencode(f));
        let total = |v: &Value| v["totalResults"].as_i64().unwrap();
        let cases = [
            (
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "sales""#,
                3,
            ),
            (r#"userName sw "F1@""#, 1),
            (r#"userName co "example" and not (active eq true)"#, 1),
            (
                r#"emails[type eq "home" and value ew "f2@home.example"]"#,
                1,
            ),
            (r#"emails[type eq "work" and value ew "home.example"]"#, 0),
            (r#"emails co "home.example""#, 5),
            (r#"externalId eq "F0" or externalId eq "F4""#, 2),
            (r#"title pr and meta.created pr"#, 5),
            (r#"nickName pr"#, 0),
            (r#"externalId ne "F0""#, 4),
            (r#"meta.lastModified gt "2020-01-01T00:00:00Z""#, 5),
        ];
        for (f, n) in cases {
            let (st, l) = h.get(OKTA, &q(f)).await;
            assert_eq!(st, StatusCode::OK, "{f}: {l}");
            assert_eq!(total(&l), n, "{f} ({})", h.backend);
        }
        // Pages.
        let (_, l) = h
            .get(
                OKTA,
                "/Users?startIndex=2&count=2&sortBy=externalId&sortOrder=descending",
            )
            .await;
        assert_eq!((total(&l), l["itemsPerPage"].as_i64()), (5, Some(2)));
        assert_eq!(l["startIndex"], 2);
        assert_eq!(l["Resources"][0]["externalId"], "F3", "{l}");
        // Projections.
        let (_, l) = h.get(OKTA, "/Users?attributes=userName&count=1").await;
        let r = &l["Resources"][0];
        assert!(r.get("userName").is_some() && r.get("id").is_some());
        assert!(
            r.get("emails").is_none() && r.get("active").is_none(),
            "{r}"
        );
        let (_, u) = h
            .get(
                OKTA,
                &format!("/Users/{}?excludedAttributes=emails", ids[0]),
            )
            .await;
        assert!(u.get("emails").is_none() && u.get("userName").is_some());
        // POST .search.
        let (st, l) = h
            .post(
                OKTA,
                "/Users/.search",
                json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                       "filter":"externalId eq \"F2\"","attributes":["externalId"]}),
            )
            .await;
        assert_eq!((st, total(&l)), (StatusCode::OK, 1), "{l}");
        // ETags: If-None-Match and a stale If-Match.
        let resp = h
            .http
            .get(format!("{}/Users/{}", h.base, ids[0]))
            .bearer_auth(OKTA)
            .send()
            .await
            .unwrap();
        let etag = resp.headers()["etag"].to_str().unwrap().to_string();
        let resp = h
            .http
            .get(format!("{}/Users/{}", h.base, ids[0]))
            .bearer_auth(OKTA)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        let resp = h
            .http
            .patch(format!("{}/Users/{}", h.base, ids[0]))
            .bearer_auth(OKTA)
            .header("if-match", "W/\"999\"")
            .body(json!({"schemas":[PATCH],"Operations":[{"op":"replace","path":"title","value":"x"}]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        // Discovery.
        for p in ["/ServiceProviderConfig", "/ResourceTypes", "/Schemas"] {
            let (st, _) = h.get(OKTA, p).await;
            assert_eq!(st, StatusCode::OK, "{p}");
        }
        h.clock.set(t("2026-11-25T10:00:00Z"));
    });
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error answer as the client sees it: status, content type, Retry-After, SCIM body.
async fn error_of(resp: reqwest::Response) -> (StatusCode, String, Option<String>, Value) {
    let st = resp.status();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (ct, ra) = (h("content-type").unwrap_or_default(), h("retry-after"));
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
        "{body}"
    );
    assert_eq!(body["status"], st.as_u16().to_string(), "{body}");
    (st, ct, ra, body)
}

#[tokio::test]
async fn rate_limit_and_every_error_is_a_scim_error() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Scim::new(
        "sqlite",
        &format!("sqlite://{}/s.db", tmp.path().display()),
        tmp.path(),
    )
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let resp = h
            .http
            .get(format!("{}/Users", h.base))
            .bearer_auth(LIMITED)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(error_of(resp).await);
        }
    }
    assert_eq!(&statuses[..3], [StatusCode::OK; 3]);
    let (_, ct, retry_after, _) = limited.expect("a 429 after the burst");
    assert_eq!(ct, SCIM_JSON);
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another tenant's budget is its own, and the default budget takes an import's burst.
    for _ in 0..300 {
        assert_eq!(h.get(OKTA, "/Users?count=0").await.0, StatusCode::OK);
    }
    // 413 (body over the limit), 415 (not JSON), 405 (no such method), 404: all SCIM errors.
    let huge = format!("{{\"userName\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let post = |body: String, ct: &str| {
        h.http
            .post(format!("{}/Users", h.base))
            .bearer_auth(OKTA)
            .header("content-type", ct)
            .body(body)
    };
    let (st, ct, _, _) = error_of(post(huge, SCIM_JSON).send().await.unwrap()).await;
    assert_eq!(
        (st, ct.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, SCIM_JSON)
    );
    let (st, ct, _, _) = error_of(
        post("userName=x".into(), "text/plain")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (st, ct.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, SCIM_JSON)
    );
    let resp = h
        .http
        .delete(format!("{}/Users", h.base))
        .bearer_auth(OKTA)
        .send()
        .await
        .unwrap();
    let (st, ct, _, _) = error_of(resp).await;
    assert_eq!(
        (st, ct.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, SCIM_JSON)
    );
    // Okta sends application/json: accepted.
    let (st, _) = h
        .post(OKTA, "/Users", okta_user("E60", "Sales", "Berlin", true))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(h.count("scim_resources").await, 1);
}

/// Requests as Microsoft documents Entra ID's provisioning service sending them (the SCIM
/// validator's scenarios and "Develop a SCIM endpoint"): string booleans, `roles` with
/// displayName, flattened enterprise attributes with nulls, the manager as an array, unquoted
/// filter values, a custom extension, and group PATCH answered 204.
#[tokio::test]
async fn entra_golden_requests_with_a_custom_extension() {
    each_backend!(|h| {
        let create = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE, CUSTOM],
            "externalId": "E20",
            "userName": "Test_User_ab6490ee@testuser.com",
            "active": "True",
            "displayName": "Test User",
            "emails": [{ "primary": true, "type": "work", "value": "e20@example.com" }],
            "meta": { "resourceType": "User" },
            "name": { "formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName" },
            "addresses": [{ "type": "work", "locality": "Berlin", "primary": true }],
            "userType": "Employee",
            "title": null,
            "roles": [{ "primary": "True", "type": "WindowsAzureActiveDirectoryRole", "value": "door-admin", "displayName": "Door administrator" }],
            "department": "Sales",
            "manager": null,
            ENTERPRISE: { "employeeNumber": "E20", "manager": [{ "$ref": null, "value": "M1" }] },
            CUSTOM: { "CustomAttribute": "granted", "badgeNumbers": ["17", 42], "remote": "False" }
        });
        let (st, u) = h.post(ENTRA, "/Users", create).await;
        assert_eq!(st, StatusCode::CREATED, "{} {u}", h.backend);
        let id = u["id"].as_str().unwrap().to_string();
        assert_eq!(
            u[ENTERPRISE]["department"], "Sales",
            "flattened moved in: {u}"
        );
        assert_eq!(u[ENTERPRISE]["manager"]["value"], "M1");
        assert_eq!(u["roles"][0]["displayName"], "Door administrator");
        assert_eq!(u["roles"][0]["primary"], true);
        assert_eq!(u[CUSTOM]["badgeNumbers"], json!([17, 42]));
        assert_eq!(u[CUSTOM]["remote"], false);
        assert!(u["schemas"].as_array().unwrap().contains(&json!(CUSTOM)));
        h.drain().await;
        assert!(h.holds("E20", "berlin-sales"), "{}", h.backend);
        assert!(
            h.holds("E20", "berlin-lab"),
            "door from the extension attribute"
        );

        // Filters: unquoted values (Entra's compatibility mode), the extension's attributes.
        for (f, n) in [
            ("externalId%20eq%20E20", 1),
            ("manager%20eq%20M1", 1),
            ("externalId%20eq%20nobody", 0),
            (
                &*format!(
                    "{}%20eq%20%22granted%22",
                    urlencode(&format!("{CUSTOM}:CustomAttribute"))
                ),
                1,
            ),
            (
                &*format!("{}%20eq%2042", urlencode(&format!("{CUSTOM}:badgeNumbers"))),
                1,
            ),
        ] {
            let (st, l) = h.get(ENTRA, &format!("/Users?filter={f}")).await;
            assert_eq!(
                (st, l["totalResults"].as_i64()),
                (StatusCode::OK, Some(n)),
                "{f}: {l}"
            );
        }
        // The strict tenant still refuses bare values.
        let (st, _) = h.get(OKTA, "/Users?filter=externalId%20eq%20E20").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        // Manager updates in Entra's default shapes, on both paths.
        for (path, value) in [
            (
                format!("{ENTERPRISE}:manager"),
                json!([{ "$ref": null, "value": "M2" }]),
            ),
            ("manager".to_string(), json!([{ "value": "M3" }])),
            ("manager".to_string(), json!("M4")),
        ] {
            let (st, u) = h
                .patch(
                    ENTRA,
                    &format!("/Users/{id}"),
                    json!([{ "op": "Add", "path": path, "value": value }]),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{path}: {u}");
            assert!(u[ENTERPRISE]["manager"]["value"].is_string(), "{u}");
        }
        let (_, u) = h.get(ENTRA, &format!("/Users/{id}")).await;
        assert_eq!(u[ENTERPRISE]["manager"]["value"], "M4");
        // The extension attribute patched by path takes the lab door away.
        let (st, u) = h
            .patch(
                ENTRA,
                &format!("/Users/{id}"),
                json!([{ "op": "Replace", "path": format!("{CUSTOM}:CustomAttribute"), "value": "revoked" }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{u}");
        h.drain().await;
        assert!(!h.holds("E20", "berlin-lab"));
        assert!(h.holds("E20", "berlin-sales"));

        // An undeclared extension is refused with how to declare it.
        let mut other = entra_user("E21", "Sales", "Berlin");
        other["urn:okta:custom:user:1.0"] = json!({ "costCode": "x" });
        let (st, e) = h.post(ENTRA, "/Users", other).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["detail"].as_str().unwrap().contains("[scim.extensions."),
            "{e}"
        );
        let (st, e) = h
            .patch(
                ENTRA,
                &format!("/Users/{id}"),
                json!([{ "op": "Add", "path": "urn:okta:custom:user:1.0:costCode", "value": "x" }]),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");

        // Groups as Entra sends them.
        let group = |name: &str| {
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "externalId": format!("ext-{name}"), "displayName": name, "meta": { "resourceType": "Group" }
            })
        };
        let (st, g) = h.post(ENTRA, "/Groups", group("Doors")).await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let (st, e) = h.post(ENTRA, "/Groups", group("doors")).await;
        assert_eq!(
            (st, e["scimType"].as_str()),
            (StatusCode::CONFLICT, Some("uniqueness")),
            "{e}"
        );
        let (st, _) = h
            .post(ENTRA, "/Groups", json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "members": [] }))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "displayName is required");
        let add =
            json!([{ "op": "Add", "path": "members", "value": [{ "$ref": null, "value": id }] }]);
        let (st, body) = h.patch(ENTRA, &format!("/Groups/{gid}"), add).await;
        assert_eq!((st, body), (StatusCode::NO_CONTENT, Value::Null));
        let (st, e) = h
            .patch(
                ENTRA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "Add", "path": "members", "value": [{ "value": "never-issued" }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        let (st, e) = h
            .patch(
                ENTRA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "Remove", "path": "displayName" }]),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        let (_, g) = h.get(ENTRA, &format!("/Groups/{gid}")).await;
        assert_eq!(g["members"][0]["value"], json!(id), "{g}");
        let (_, g) = h
            .get(ENTRA, &format!("/Groups/{gid}?excludedAttributes=members"))
            .await;
        assert!(
            g.get("members").is_none() && g["displayName"] == "Doors",
            "{g}"
        );
        let (_, l) = h
            .get(
                ENTRA,
                "/Groups?excludedAttributes=members&filter=displayName%20eq%20%22Doors%22",
            )
            .await;
        assert_eq!(l["totalResults"], 1, "{l}");
        // Asked with `attributes`, a group PATCH answers 200 without the members.
        let (st, g) = h
            .patch(
                ENTRA,
                &format!("/Groups/{gid}?attributes=displayName"),
                json!([{ "op": "Replace", "path": "displayName", "value": "Door access 2" }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            g.get("members").is_none() && g["displayName"] == "Door access 2",
            "{g}"
        );
        let (_, u) = h.get(ENTRA, &format!("/Users/{id}")).await;
        assert_eq!(u["groups"][0]["display"], "Door access 2", "{u}");
        let (st, _) = h
            .patch(
                ENTRA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "Remove", "path": "members", "value": [{ "value": id }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (_, g) = h.get(ENTRA, &format!("/Groups/{gid}")).await;
        assert!(g.get("members").is_none(), "{g}");

        // Soft delete with Entra's string boolean.
        let (st, _) = h
            .patch(
                ENTRA,
                &format!("/Users/{id}"),
                json!([{ "op": "Replace", "path": "active", "value": "False" }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        h.drain().await;
        assert!(!h.holds("E20", "berlin-sales"));
    });
}

/// Tenant A naming tenant B's or HR's people: neither a deactivation, a deletion nor a title
/// reaches them (DESIGN.md invariant 12); the refusal is recorded for an operator.
#[tokio::test]
async fn a_tenant_cannot_terminate_or_promote_people_it_does_not_own() {
    each_backend!(|h| {
        let (st, _) = h
            .post(
                OKTA,
                "/Users",
                okta_user("E30", "Engineering", "Berlin", true),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let feed = h
            .app
            .engine
            .config
            .base_dir
            .join("feeds")
            .join("hr-0001.csv");
        std::fs::write(
            &feed,
            format!("{HEADER}\n{}\n", employee("E31", "engineering", "berlin")),
        )
        .unwrap();
        h.app.engine.apply_hr_file("hr", &feed).await.unwrap();
        h.drain().await;
        assert!(
            h.holds("E30", "berlin-engineering") && h.holds("E31", "berlin-engineering"),
            "{}",
            h.backend
        );
        let quarantined = h.count("quarantine").await;
        for key in ["E30", "E31"] {
            let mut u = entra_user(key, "Engineering", "Berlin");
            u["userName"] = json!(format!("{}-impostor@example.com", key.to_lowercase()));
            u["active"] = json!(false);
            u["title"] = json!("Manager");
            let (st, created) = h.post(ENTRA, "/Users", u).await;
            assert_eq!(st, StatusCode::CREATED, "{created}");
            h.drain().await;
            assert!(
                h.holds(key, "berlin-engineering"),
                "{key} kept their doors ({})",
                h.backend
            );
            assert!(!h.holds(key, "berlin-management"), "{key} was not promoted");
            assert_eq!(h.lifecycle(key).await.as_deref(), Some("active"));
            // Reactivated as a manager: still nothing.
            let id = created["id"].as_str().unwrap().to_string();
            let (st, _) = h
                .patch(
                    ENTRA,
                    &format!("/Users/{id}"),
                    json!([{ "op": "Replace", "path": "active", "value": "True" }]),
                )
                .await;
            assert_eq!(st, StatusCode::OK);
            h.drain().await;
            assert!(!h.holds(key, "berlin-management"));
            // And its deletion is no leaver either.
            assert_eq!(
                h.delete(ENTRA, &format!("/Users/{id}")).await,
                StatusCode::NO_CONTENT
            );
            h.drain().await;
            assert!(h.holds(key, "berlin-engineering"));
        }
        assert!(
            h.count("quarantine").await >= quarantined + 4,
            "refusals recorded"
        );
        // The tenant that created E30 still can.
        let (_, l) = h
            .get(OKTA, "/Users?filter=externalId%20eq%20%22E30%22")
            .await;
        let id = l["Resources"][0]["id"].as_str().unwrap().to_string();
        let (st, _) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "value": { "active": false } }]),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        h.drain().await;
        assert!(!h.holds("E30", "berlin-engineering"));
    });
}

/// A group of 20,000 members: built in chunks as providers send them, then one-member adds and
/// removals, each answered 204 and rewriting only that member's rows. Prints the figures.
#[tokio::test]
async fn twenty_thousand_member_group() {
    use latchkey::store::scim as db;
    const N: usize = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let h = Scim::new(
        "sqlite",
        &format!("sqlite://{}/s.db", tmp.path().display()),
        tmp.path(),
    )
    .await;
    let ids: Vec<String> = (0..=N)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let mut tx = h.app.store().begin_write().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let raw = json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": id, "userName": format!("u{i}@example.com") });
        let r = db::ScimPut {
            id,
            resource_type: "User",
            person_key: None,
            raw: &raw,
            version: 1,
        };
        db::put(&mut tx, "okta", &r, None, 0, 0).await.unwrap();
    }
    tx.commit().await.unwrap();
    let (st, g) = h
        .post(OKTA, "/Groups", json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Everyone" }))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let gid = g["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    for chunk in ids[..N].chunks(1000) {
        let members: Vec<Value> = chunk.iter().map(|id| json!({ "value": id })).collect();
        let (st, e) = h
            .patch(
                OKTA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "add", "path": "members", "value": members }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{e}");
    }
    let build = started.elapsed();
    let rows = h.count("scim_values").await;
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let (st, _) = h
            .patch(
                OKTA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "add", "path": "members", "value": [{ "value": ids[N] }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        add.push(t0.elapsed());
        assert_eq!(
            h.count("scim_values").await,
            rows + 1,
            "one member, one row"
        );
        let t0 = Instant::now();
        let (st, _) = h
            .patch(
                OKTA,
                &format!("/Groups/{gid}"),
                json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", ids[N]) }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        remove.push(t0.elapsed());
        assert_eq!(h.count("scim_values").await, rows);
    }
    add.sort();
    remove.sort();
    let (_, g) = h.get(OKTA, &format!("/Groups/{gid}")).await;
    assert_eq!(g["members"].as_array().unwrap().len(), N);
    let (_, l) = h
        .get(
            OKTA,
            &format!(
                "/Groups?filter={}",
                urlencode(&format!("members[value eq \"{}\"]", ids[7]))
            ),
        )
        .await;
    assert_eq!(l["totalResults"], 1);
    eprintln!(
        "SCIM group of {N}: built in 20 adds of 1,000 in {build:?}; one-member add median {:?}, removal median {:?} (sqlite, debug build)",
        add[2], remove[2]
    );
}

/// The audit records of one subject: (action, details).
async fn audit_of(h: &Scim, subject: &str) -> Vec<(String, Value)> {
    use sqlx::Row;
    sqlx::query("SELECT action, details FROM audit_log WHERE subject = $1 ORDER BY seq")
        .bind(subject)
        .fetch_all(h.app.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let d: String = r.try_get("details").unwrap();
            (
                r.try_get("action").unwrap(),
                serde_json::from_str(&d).unwrap(),
            )
        })
        .collect()
}

/// Every shape in which Entra ID and Okta change a group's members (a one-member add, a removal by
/// value list and by filter, a partial resource without path, a replace of all members, a PUT),
/// each changing only the members named: the door follows membership, the audit names who joined
/// and who left, reads assemble the members and leave them out when asked, and a member that is
/// deleted leaves its groups.
#[tokio::test]
async fn group_members_change_member_by_member_in_every_provider_shape() {
    each_backend!(|h| {
        let mut ids = Vec::new();
        for key in ["E71", "E72", "E73", "E74"] {
            let mut user = okta_user(key, "Facilities", "London", true);
            user["userName"] = json!(key);
            let (st, u) = h.post(SCOPED, "/Users", user).await;
            assert_eq!(st, StatusCode::CREATED, "{u}");
            ids.push(u["id"].as_str().unwrap().to_string());
        }
        let (st, g) = h
            .post(
                SCOPED,
                "/Groups",
                json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],
                       "displayName":"Door access","members":[{"value": ids[0], "display": "E71"}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        assert_eq!(g["members"][0]["display"], "E71", "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let path = format!("/Groups/{gid}");
        h.drain().await;
        assert!(h.holds("E71", "london-facilities"), "{}", h.backend);
        assert!(!h.holds("E72", "london-facilities"));

        // Entra ID: one member added, answered 204.
        let (st, _) = h
            .patch(
                SCOPED,
                &path,
                json!([{ "op": "Add", "path": "members", "value": [{ "value": ids[1] }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        // Okta: a partial resource without a path, two members, one already there (a no-op).
        let (st, _) = h
            .patch(SCOPED, &path, json!([{ "op": "add", "value": { "members": [{ "value": ids[1] }, { "value": ids[2], "display": "E73" }] } }]))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        h.drain().await;
        for key in ["E71", "E72", "E73"] {
            assert!(h.holds(key, "london-facilities"), "{key} {}", h.backend);
        }
        let (_, g) = h.get(SCOPED, &path).await;
        let members: Vec<&str> = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        assert_eq!(
            members,
            [ids[0].as_str(), ids[1].as_str(), ids[2].as_str()],
            "in the order added"
        );
        assert_eq!(
            g["meta"]["version"], "W/\"3\"",
            "the re-sent member made no version: {g}"
        );
        let audit = audit_of(&h, &gid).await;
        assert_eq!(
            audit.last().unwrap().1["membersAdded"],
            json!([ids[2]]),
            "{audit:?}"
        );

        // A member the server never issued is refused, and nothing of the request is applied.
        let (st, e) = h
            .patch(SCOPED, &path, json!([{ "op": "add", "path": "members", "value": [{ "value": ids[3] }, { "value": "no-such-user" }] }]))
            .await;
        assert_eq!(
            (st, e["scimType"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalidValue")),
            "{e}"
        );
        h.drain().await;
        assert!(!h.holds("E74", "london-facilities"));

        // Entra ID's removal by filter, Okta's by value list.
        let (st, _) = h
            .patch(
                SCOPED,
                &path,
                json!([{ "op": "Remove", "path": format!("members[value eq \"{}\"]", ids[0]) }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = h
            .patch(
                SCOPED,
                &path,
                json!([{ "op": "remove", "path": "members", "value": [{ "value": ids[1] }] }]),
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        h.drain().await;
        assert!(!h.holds("E71", "london-facilities"), "{}", h.backend);
        assert!(!h.holds("E72", "london-facilities"));
        assert!(h.holds("E73", "london-facilities"));
        assert_eq!(h.lifecycle("E71").await.as_deref(), Some("terminated"));
        let audit = audit_of(&h, &gid).await;
        assert_eq!(
            audit.last().unwrap().1["membersRemoved"],
            json!([ids[1]]),
            "{audit:?}"
        );

        // Reads without members: none read, none sent; with `attributes`, only what is asked.
        let (_, g) = h
            .get(SCOPED, &format!("{path}?excludedAttributes=members"))
            .await;
        assert!(g.get("members").is_none(), "{g}");
        assert_eq!(g["displayName"], "Door access");
        let (_, g) = h
            .get(SCOPED, &format!("{path}?attributes=displayName"))
            .await;
        assert!(g.get("members").is_none(), "{g}");
        let (_, g) = h
            .get(SCOPED, &format!("{path}?attributes=members.value"))
            .await;
        assert_eq!(g["members"], json!([{ "value": ids[2] }]), "{g}");
        let (_, l) = h.get(SCOPED, "/Groups?excludedAttributes=members").await;
        assert!(l["Resources"][0].get("members").is_none(), "{l}");
        let (_, l) = h
            .get(
                SCOPED,
                &format!(
                    "/Groups?filter={}",
                    urlencode(&format!("members[value eq \"{}\"]", ids[2]))
                ),
            )
            .await;
        assert_eq!(l["totalResults"], 1, "{l}");
        assert_eq!(l["Resources"][0]["members"][0]["display"], "E73", "{l}");
        // A PATCH asked for attributes answers 200 with them, members only when asked.
        let body = json!({ "schemas": [PATCH], "Operations": [{ "op": "replace", "path": "members", "value": [{ "value": ids[2] }, { "value": ids[3] }] }] });
        let (st, g) = h
            .call(
                Some(SCOPED),
                reqwest::Method::PATCH,
                &format!("{path}?attributes=displayName"),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{g}");
        assert!(g.get("members").is_none(), "{g}");
        assert_eq!(g["displayName"], "Door access");
        h.drain().await;
        assert!(h.holds("E74", "london-facilities"), "{}", h.backend);
        let audit = audit_of(&h, &gid).await;
        assert_eq!(
            audit.last().unwrap().1["membersAdded"],
            json!([ids[3]]),
            "{audit:?}"
        );
        assert!(
            audit.last().unwrap().1.get("membersRemoved").is_none(),
            "{audit:?}"
        );

        // A sub-attribute of one member (the whole list is read for it).
        let (st, _) = h
            .patch(SCOPED, &path, json!([{ "op": "replace", "path": format!("members[value eq \"{}\"].display", ids[3]), "value": "E74" }]))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (_, g) = h.get(SCOPED, &path).await;
        assert_eq!(
            g["members"][1],
            json!({ "value": ids[3], "display": "E74" }),
            "{g}"
        );

        // A deleted user leaves the group; the group's version moves on.
        assert_eq!(
            h.delete(SCOPED, &format!("/Users/{}", ids[3])).await,
            StatusCode::NO_CONTENT
        );
        let (_, g) = h.get(SCOPED, &path).await;
        assert_eq!(g["members"], json!([{ "value": ids[2] }]), "{g}");
        h.drain().await;
        assert!(!h.holds("E74", "london-facilities"));

        // PUT with no members empties the group: every former member is a leaver.
        let (st, g) = h
            .put(SCOPED, &path, json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName":"Door access"}))
            .await;
        assert_eq!(st, StatusCode::OK, "{g}");
        assert!(g.get("members").is_none(), "{g}");
        h.drain().await;
        assert!(!h.holds("E73", "london-facilities"), "{}", h.backend);
        // Deleting the group leaves no member rows behind.
        assert_eq!(h.delete(SCOPED, &path).await, StatusCode::NO_CONTENT);
        assert_eq!(h.count("scim_members").await, 0);
    });
}

/// A request still running at `request_timeout_seconds` is answered 503 as a SCIM error, its
/// transaction rolled back: nothing of it is stored, and the provider's retry goes through. A
/// store that cannot be reached is 503 too, with Retry-After.
#[tokio::test]
async fn a_request_cut_off_by_the_timeout_is_a_scim_503_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let dir = tmp.path().join(&name);
        let h = Scim::with_settings(&name, &url, &dir, "request_timeout_seconds = 1").await;
        eprintln!("-- backend {name}");
        // Another writer holds the store longer than the timeout.
        let mut tx = h.app.store().begin_write().await.unwrap();
        if name != "sqlite" {
            sqlx::query("LOCK TABLE scim_resources IN ACCESS EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await
                .unwrap();
        }
        let resp = h
            .http
            .post(format!("{}/Users", h.base))
            .bearer_auth(OKTA)
            .header("content-type", SCIM_JSON)
            .body(okta_user("E80", "Sales", "Berlin", true).to_string())
            .send()
            .await
            .unwrap();
        let (st, ct, _, body) = error_of(resp).await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, SCIM_JSON),
            "{body}"
        );
        assert!(
            body.get("scimType").is_none(),
            "RFC 7644 gives 503 no scimType: {body}"
        );
        tx.rollback().await.unwrap();
        assert_eq!(h.count("scim_resources").await, 0, "{name}");
        assert_eq!(h.lifecycle("E80").await, None);
        let (st, _) = h
            .post(OKTA, "/Users", okta_user("E80", "Sales", "Berlin", true))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{name}");
        assert_eq!(h.lifecycle("E80").await.as_deref(), Some("active"));
        // The store gone: 503 with Retry-After, a SCIM error, not a 500.
        h.app.store().pool().close().await;
        let resp = h
            .http
            .post(format!("{}/Users", h.base))
            .bearer_auth(OKTA)
            .header("content-type", SCIM_JSON)
            .body(okta_user("E81", "Sales", "Berlin", true).to_string())
            .send()
            .await
            .unwrap();
        let (st, ct, retry_after, body) = error_of(resp).await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, SCIM_JSON),
            "{body}"
        );
        assert!(retry_after.is_some(), "{body}");
    }
}

/// Requests as Okta's SCIM 2.0 guide shows them: a create with a password, `groups: []` and a
/// locale, the lookup by userName with paging, deactivation by PATCH without path, group push.
#[tokio::test]
async fn okta_golden_requests() {
    each_backend!(|h| {
        let (st, l) = h
            .get(
                OKTA,
                "/Users?filter=userName%20eq%20%22test.user%40okta.local%22&startIndex=1&count=100",
            )
            .await;
        assert_eq!(
            (st, l["totalResults"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{l}"
        );
        let (st, u) = h
            .call(
                Some(OKTA),
                reqwest::Method::POST,
                "/Users",
                Some(
                    &json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": "test.user@okta.local",
                        "name": { "givenName": "Test", "familyName": "User" },
                        // The guide's shape; the address is the one the simulator's account is found by.
                        "emails": [{ "primary": true, "value": "e40@example.com", "type": "work" }],
                        "displayName": "Test User",
                        "locale": "en-US",
                        "externalId": "E40",
                        "groups": [],
                        "password": "1mz050nq",
                        "active": true,
                        "title": "Manager",
                        "addresses": [{ "type": "work", "locality": "London", "primary": true }]
                    })
                    .to_string(),
                ),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{u}");
        assert!(u.get("password").is_none());
        let id = u["id"].as_str().unwrap().to_string();
        h.drain().await;
        assert!(h.holds("E40", "london-management"), "{}", h.backend);
        let (_, l) = h
            .get(
                OKTA,
                "/Users?filter=userName%20eq%20%22test.user%40okta.local%22&startIndex=1&count=100",
            )
            .await;
        assert_eq!(l["Resources"][0]["id"], json!(id));
        let (st, g) = h
            .post(OKTA, "/Groups", json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Test SCIMv2", "members": [] }))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let (st, _) = h
            .patch(OKTA, &format!("/Groups/{gid}"), json!([
                { "op": "replace", "value": { "id": gid, "displayName": "Test SCIMv2" } },
                { "op": "add", "path": "members", "value": [{ "value": id, "display": "test.user@okta.local" }] }
            ]))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, u) = h
            .patch(
                OKTA,
                &format!("/Users/{id}"),
                json!([{ "op": "replace", "value": { "active": false } }]),
            )
            .await;
        assert_eq!((st, &u["active"]), (StatusCode::OK, &json!(false)), "{u}");
        h.drain().await;
        assert!(!h.holds("E40", "london-management"));
    });
}

#[tokio::test]
async fn the_source_authoritative_for_an_attribute_decides_it() {
    each_backend!(|h| {
        // Okta creates E9 in sales; the HR feed later knows E9 as an engineer. By name, `hr` would
        // win every attribute it has; the configuration makes Okta authoritative for `department`.
        let (st, _) = h
            .post(OKTA, "/Users", okta_user("E9", "Sales", "Berlin", true))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let feed = h
            .app
            .engine
            .config
            .base_dir
            .join("feeds")
            .join("hr-0001.csv");
        std::fs::write(
            &feed,
            format!("{HEADER}\n{}\n", employee("E9", "engineering", "berlin")),
        )
        .unwrap();
        h.app.engine.apply_hr_file("hr", &feed).await.unwrap();
        h.drain().await;
        assert!(h.holds("E9", "berlin-sales"), "{}", h.backend);
        assert!(!h.holds("E9", "berlin-engineering"), "{}", h.backend);
        assert!(!h.holds("E9", "berlin-lab"), "{}", h.backend);
    });
}
