//! The Nuki simulator as the Web API documents it, quirks included.

use super::*;
use crate::clock::ManualClock;
use reqwest::Client;

const TOKEN: &str = "nuki-test";

struct T {
    s: SimServer,
    c: Client,
}

impl T {
    async fn new(opts: NukiOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = start_nuki(
            listener,
            NukiOptions {
                token: TOKEN.into(),
                ..opts
            },
        )
        .await
        .unwrap();
        Self {
            s,
            c: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.s.base_url())
    }

    fn sim(&self) -> &NukiSim {
        self.s.nuki().unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut rb = self.c.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn user(&self, email: &str) -> i64 {
        let (status, body) = self
            .send(
                reqwest::Method::PUT,
                "/account/user",
                Some(json!({"email": email, "name": email, "language": "de"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["accountUserId"].as_i64().unwrap()
    }

    async fn grant(&self, lock: i64, user: i64) -> (u16, String) {
        self.send(
            reqwest::Method::PUT,
            &format!("/smartlock/{lock}/auth"),
            Some(json!({"name": "Door", "type": 0, "accountUserId": user, "remoteAllowed": true})),
        )
        .await
    }

    async fn list(&self, lock: i64) -> Vec<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                &format!("/smartlock/{lock}/auth"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Locks that take `ms` to sync, on a clock the test moves.
fn delayed(ms: u64, clock: &ManualClock) -> NukiOptions {
    NukiOptions {
        sync_delay: Duration::from_millis(ms),
        clock: Arc::new(clock.clone()),
        ..NukiOptions::default()
    }
}

fn stopped_clock() -> ManualClock {
    ManualClock::new(chrono::DateTime::UNIX_EPOCH)
}

#[tokio::test]
async fn users_create_list_filter_paginate_delete() {
    let t = T::new(NukiOptions::default()).await;
    assert_eq!(t.user("a@example.com").await, 1001);
    assert_eq!(t.user("b@example.com").await, 1002);
    assert_eq!(t.user("c@example.com").await, 1003);
    let (status, _) = t
        .send(
            reqwest::Method::PUT,
            "/account/user",
            Some(json!({"email": "A@Example.com", "name": "again"})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = t
        .send(
            reqwest::Method::PUT,
            "/account/user",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 400);

    let (_, body) = t
        .send(
            reqwest::Method::GET,
            "/account/user?email=B%40EXAMPLE.com",
            None,
        )
        .await;
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["accountUserId"], 1002);
    assert_eq!(v[0]["language"], "de");
    let (_, body) = t
        .send(reqwest::Method::GET, "/account/user?offset=1&limit=1", None)
        .await;
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["email"], "b@example.com");

    assert_eq!(t.grant(7, 1002).await.0, 204);
    let (status, _) = t
        .send(reqwest::Method::DELETE, "/account/user/1002", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = t
        .send(reqwest::Method::DELETE, "/account/user/1002", None)
        .await;
    assert_eq!(status, 404);
    assert!(!t.sim().holds(7, 1002));
    assert_eq!(t.sim().users().len(), 2);
    // A deleted user's email is free again: no longer found, and taken by a new user.
    let (_, body) = t
        .send(
            reqwest::Method::GET,
            "/account/user?email=b%40example.com",
            None,
        )
        .await;
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(t.user("B@example.com").await, 1004);
}

#[tokio::test]
async fn create_auth_is_204_with_empty_body_then_listed() {
    let t = T::new(NukiOptions::default()).await;
    let u = t.user("a@example.com").await;
    let (status, body) = t.grant(42, u).await;
    assert_eq!(status, 204);
    assert!(body.is_empty());
    let auths = t.list(42).await;
    assert_eq!(auths.len(), 1);
    let a = &auths[0];
    let id = a["id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a["smartlockId"], 42);
    assert_eq!(a["accountUserId"], u);
    assert_eq!(a["type"], 0);
    assert_eq!(a["enabled"], true);
    assert_eq!(a["remoteAllowed"], true);
    assert!(a.get("operationId").is_none());
    assert!(t.sim().holds(42, u));

    let (_, body) = t
        .send(
            reqwest::Method::GET,
            &format!("/smartlock/auth?accountUserId={u}&types=0,2,13"),
            None,
        )
        .await;
    let across: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(across.len(), 1);
    let (_, body) = t
        .send(reqwest::Method::GET, "/smartlock/auth?types=13", None)
        .await;
    assert_eq!(body, "[]");
}

#[tokio::test]
async fn create_auth_validation() {
    let t = T::new(NukiOptions {
        auto_create_locks: false,
        locks: vec![1],
        ..NukiOptions::default()
    })
    .await;
    let u = t.user("a@example.com").await;
    let put = |lock: i64, body: Value| {
        let t = &t;
        async move {
            t.send(
                reqwest::Method::PUT,
                &format!("/smartlock/{lock}/auth"),
                Some(body),
            )
            .await
            .0
        }
    };
    assert_eq!(put(2, json!({"name": "x", "accountUserId": u})).await, 404);
    assert_eq!(
        put(1, json!({"name": "x".repeat(33), "accountUserId": u})).await,
        400
    );
    assert_eq!(put(1, json!({"name": "x", "type": 0})).await, 400);
    assert_eq!(put(1, json!({"name": "x", "accountUserId": 9})).await, 400);
    assert_eq!(
        put(1, json!({"name": "pin", "type": 13, "code": 123456})).await,
        400
    );
    assert_eq!(
        put(1, json!({"name": "pin", "type": 13, "code": 345678})).await,
        204
    );
    assert_eq!(
        put(1, json!({"name": "pin2", "type": 13, "code": 345678})).await,
        409
    );
    assert_eq!(
        put(1, json!({"name": "x".repeat(32), "accountUserId": u})).await,
        204
    );
}

#[tokio::test]
async fn duplicate_is_409() {
    let t = T::new(NukiOptions::default()).await;
    let u = t.user("a@example.com").await;
    assert_eq!(t.grant(1, u).await.0, 204);
    let (status, body) = t.grant(1, u).await;
    assert_eq!(status, 409);
    assert!(body.contains("detailMessage"));
    // Another lock is a different pair.
    assert_eq!(t.grant(2, u).await.0, 204);
    assert_eq!(t.sim().duplicate_pairs(), 0);
    assert_eq!(t.s.stats().duplicates_created, 0);
}

#[tokio::test]
async fn allow_duplicates_counts_duplicates() {
    let t = T::new(NukiOptions {
        allow_duplicates: true,
        ..NukiOptions::default()
    })
    .await;
    let u = t.user("a@example.com").await;
    for _ in 0..3 {
        assert_eq!(t.grant(1, u).await.0, 204);
    }
    assert_eq!(t.list(1).await.len(), 3);
    assert_eq!(t.sim().duplicate_pairs(), 1);
    let stats = t.s.stats();
    assert_eq!(stats.duplicates_created, 2);
    assert_eq!(stats.auths_live, 3);
    assert_eq!(stats.users, 1);
}

#[tokio::test]
async fn capacity_is_402() {
    let t = T::new(NukiOptions {
        allow_duplicates: true,
        ..NukiOptions::default()
    })
    .await;
    let u = t.user("a@example.com").await;
    for _ in 0..MAX_APP_AUTHS_PER_LOCK {
        assert_eq!(t.grant(1, u).await.0, 204);
    }
    assert_eq!(t.grant(1, u).await.0, 402);
}

#[tokio::test]
async fn delete_is_204_then_gone() {
    let t = T::new(NukiOptions::default()).await;
    let u = t.user("a@example.com").await;
    t.grant(1, u).await;
    let id = t.list(1).await[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/smartlock/1/auth/{id}");
    assert_eq!(t.send(reqwest::Method::DELETE, &path, None).await.0, 204);
    assert!(t.list(1).await.is_empty());
    assert!(!t.sim().holds(1, u));
    assert_eq!(t.send(reqwest::Method::DELETE, &path, None).await.0, 404);
    assert_eq!(
        t.send(reqwest::Method::DELETE, "/smartlock/2/auth/ffff", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn bulk_delete() {
    let t = T::new(NukiOptions::default()).await;
    let a = t.user("a@example.com").await;
    let b = t.user("b@example.com").await;
    t.grant(1, a).await;
    t.grant(2, b).await;
    let ids: Vec<String> = t.sim().auths().into_iter().map(|a| a.id).collect();
    let (status, _) = t
        .send(
            reqwest::Method::DELETE,
            "/smartlock/auth",
            Some(json!([ids[0], ids[1], "000000000000000000000000"])),
        )
        .await;
    assert_eq!(status, 204);
    assert!(t.sim().auths().is_empty());
}

#[tokio::test]
async fn sync_delay_hides_new_and_keeps_deleted_listed() {
    let clock = stopped_clock();
    let t = T::new(NukiOptions {
        locked_while_pending: false,
        ..delayed(300, &clock)
    })
    .await;
    let u = t.user("a@example.com").await;
    assert_eq!(t.grant(1, u).await.0, 204);
    // Stored, but not listed until the lock has synced.
    assert!(t.list(1).await.is_empty());
    assert!(t.sim().holds(1, u));
    assert!(!t.sim().auths()[0].visible);
    clock.advance(Duration::from_millis(299));
    assert!(t.list(1).await.is_empty(), "listed before the lock synced");
    clock.advance(Duration::from_millis(1));
    let listed = t.list(1).await;
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    let path = format!("/smartlock/1/auth/{id}");
    assert_eq!(t.send(reqwest::Method::DELETE, &path, None).await.0, 204);
    let listed = t.list(1).await;
    assert_eq!(listed.len(), 1, "deleted auth stays listed while syncing");
    assert!(listed[0]["operationId"].is_string());
    let snap = &t.sim().auths()[0];
    assert!(snap.pending_delete && snap.visible);
    assert!(!t.sim().holds(1, u));
    clock.advance(Duration::from_millis(299));
    assert_eq!(t.list(1).await.len(), 1, "gone before the lock synced");
    clock.advance(Duration::from_millis(1));
    assert!(t.list(1).await.is_empty());
    assert!(t.sim().auths().is_empty());
}

#[tokio::test]
async fn locked_while_pending_is_423() {
    let clock = stopped_clock();
    let t = T::new(delayed(300, &clock)).await;
    let a = t.user("a@example.com").await;
    let b = t.user("b@example.com").await;
    assert_eq!(t.grant(1, a).await.0, 204);
    let (status, body) = t.grant(1, b).await;
    assert_eq!(status, 423);
    assert!(body.contains("locked for another operation"));
    // Other locks are unaffected.
    assert_eq!(t.grant(2, b).await.0, 204);
    clock.advance(Duration::from_millis(299));
    assert_eq!(t.grant(1, b).await.0, 423, "free before the lock synced");
    clock.advance(Duration::from_millis(1));
    assert_eq!(t.grant(1, b).await.0, 204);
}

#[tokio::test]
async fn offline_lock_syncs_late() {
    let clock = stopped_clock();
    let t = T::new(NukiOptions {
        offline_locks: HashMap::from([(9, Duration::from_secs(6 * 3600))]),
        clock: Arc::new(clock.clone()),
        ..NukiOptions::default()
    })
    .await;
    let u = t.user("a@example.com").await;
    t.grant(1, u).await;
    t.grant(9, u).await;
    assert_eq!(t.list(1).await.len(), 1);
    assert!(t.list(9).await.is_empty());
    // An offline lock syncs when it comes back, hours later.
    clock.advance(Duration::from_secs(6 * 3600 - 1));
    assert!(t.list(9).await.is_empty());
    clock.advance(Duration::from_secs(1));
    assert_eq!(t.list(9).await.len(), 1);
}

#[tokio::test]
async fn partial_update_clears_time_window() {
    let t = T::new(NukiOptions::default()).await;
    let u = t.user("a@example.com").await;
    let (status, _) = t
        .send(
            reqwest::Method::PUT,
            "/smartlock/1/auth",
            Some(json!({
                "name": "Office", "type": 0, "accountUserId": u,
                "allowedFromDate": "2025-01-01T00:00:00.000Z",
                "allowedUntilDate": "2025-12-31T00:00:00.000Z",
                "allowedWeekDays": 124, "allowedFromTime": 480, "allowedUntilTime": 1080
            })),
        )
        .await;
    assert_eq!(status, 204);
    let a = &t.list(1).await[0];
    assert_eq!(a["allowedWeekDays"], 124);
    assert_eq!(a["allowedFromTime"], 480);
    let id = a["id"].as_str().unwrap().to_owned();

    let (status, body) = t
        .send(
            reqwest::Method::POST,
            &format!("/smartlock/1/auth/{id}"),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(status, 204);
    assert!(body.is_empty());
    let a = &t.list(1).await[0];
    assert_eq!(a["name"], "Renamed");
    assert!(a["allowedWeekDays"].is_null());
    assert!(a["allowedFromTime"].is_null());
    assert!(a["allowedUntilTime"].is_null());
    assert!(a["allowedFromDate"].is_null());
    let snap = &t.sim().auths()[0];
    assert_eq!(snap.allowed_week_days, None);
    assert_eq!(snap.allowed_until_date, None);

    let (status, _) = t
        .send(
            reqwest::Method::POST,
            "/smartlock/1/auth/000000000000000000000000",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admin_auths_endpoint() {
    let t = T::new(NukiOptions::default()).await;
    let u = t.user("a@example.com").await;
    t.grant(3, u).await;
    let v: Vec<Value> =
        t.c.get(t.url("/_sim/auths"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["smartlock_id"], 3);
    assert_eq!(v[0]["visible"], true);
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let t = T::new(NukiOptions::default()).await;
    let (status, body) = t.send(reqwest::Method::GET, "/nope", None).await;
    assert_eq!(status, 404);
    assert!(body.contains("detailMessage"));
}
