//! The shared simulator parts over real HTTP: auth, faults, rate limits, the admin endpoints.

use super::*;

const TOKEN: &str = "test-token";

async fn nuki_with(faults: Faults, rate: Option<u32>) -> SimServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            faults,
            rate_limit_per_sec: rate,
            ..NukiOptions::default()
        },
    )
    .await
    .unwrap()
}

fn users_url(s: &SimServer) -> String {
    format!("{}/account/user", s.base_url())
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let s = nuki_with(Faults::none(), None).await;
    let c = reqwest::Client::new();
    let r = c
        .get(users_url(&s))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["detailMessage"], "unauthorized");
    let r = c.get(users_url(&s)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.stats().by_status.get(&401), Some(&2));
}

#[tokio::test]
async fn storm_429_sets_retry_after() {
    let s = nuki_with(
        Faults {
            storm_429: Some(7),
            ..Faults::none()
        },
        None,
    )
    .await;
    let c = reqwest::Client::new();
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    s.set_faults(Faults::none());
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rate_limit_gives_429_without_retry_after() {
    let s = nuki_with(Faults::none(), Some(3)).await;
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = c
            .get(users_url(&s))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().get(header::RETRY_AFTER).is_none());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let stats = s.stats();
    assert_eq!(stats.max_requests_in_any_second, 5);
    // Once the window has passed the client is let through again.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn error_rate_one_gives_5xx_and_applies_nothing() {
    let s = nuki_with(
        Faults {
            error_rate: 1.0,
            ..Faults::none()
        },
        None,
    )
    .await;
    let c = reqwest::Client::new();
    for _ in 0..10 {
        let r = c
            .put(users_url(&s))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"email": "a@example.com", "name": "A"}))
            .send()
            .await
            .unwrap();
        assert!(
            [500, 502, 503].contains(&r.status().as_u16()),
            "{}",
            r.status()
        );
    }
    assert_eq!(s.stats().users, 0);
}

#[tokio::test]
async fn outage_gives_503() {
    let s = nuki_with(Faults::none(), None).await;
    s.set_faults(Faults {
        outage: true,
        ..Faults::none()
    });
    let c = reqwest::Client::new();
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn timeout_applies_change_but_holds_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            faults: Faults {
                timeout_rate: 1.0,
                ..Faults::none()
            },
            timeout_hold: Duration::from_secs(30),
            ..NukiOptions::default()
        },
    )
    .await
    .unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = c
        .put(users_url(&s))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"email": "held@example.com", "name": "Held"}))
        .send()
        .await;
    assert!(r.is_err(), "response should have been held");
    assert_eq!(s.nuki().unwrap().users().len(), 1);
    assert_eq!(s.requests()[0].status, 200);
    // Reads are never held.
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Shutdown releases the held response instead of waiting 30 s.
    let started = Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn latency_is_added() {
    let s = nuki_with(
        Faults {
            latency_ms: (120, 120),
            ..Faults::none()
        },
        None,
    )
    .await;
    let c = reqwest::Client::new();
    let started = Instant::now();
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn stats_and_log_match_requests_sent() {
    let s = nuki_with(Faults::none(), None).await;
    let c = reqwest::Client::new();
    for _ in 0..4 {
        c.get(users_url(&s))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
    }
    c.get(format!("{}?email=x%40example.com", users_url(&s)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    c.get(users_url(&s))
        .bearer_auth("bad")
        .send()
        .await
        .unwrap();
    c.delete(format!("{}/4242", users_url(&s)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    // Admin calls are not part of the log.
    let admin: serde_json::Value = c
        .get(format!("{}/_sim/stats", s.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["requests"], 7);

    let stats = s.stats();
    assert_eq!(stats.requests, 7);
    assert_eq!(
        stats.by_status,
        BTreeMap::from([(200, 5), (401, 1), (404, 1)])
    );
    assert_eq!(stats.max_requests_in_any_second, 7);
    assert!(stats.max_requests_in_calendar_second >= 1);
    let log = s.requests();
    assert_eq!(log.len(), 7);
    assert!(log.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    assert_eq!(log[4].path, "/account/user");
    assert_eq!(log[4].query.as_deref(), Some("email=x%40example.com"));
    assert_eq!(log[6].method, "DELETE");
    assert_eq!(log[6].status, 404);
}

#[tokio::test]
async fn admin_faults_endpoint_changes_faults() {
    let s = nuki_with(Faults::none(), None).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/_sim/faults", s.base_url()))
        .json(&serde_json::json!({"storm_429": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.faults().storm_429, Some(3));
    let r = c
        .get(users_url(&s))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn start_by_name() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = start("kisi-ish", listener, TOKEN.into())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("nuki"), "{err}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = start("nuki", listener, TOKEN.into()).await.unwrap();
    assert!(s.nuki().is_some());
    assert!(s.base_url().starts_with("http://127.0.0.1:"));
}

#[test]
fn rolling_and_calendar_windows() {
    let at = |ms| LoggedRequest {
        seq: 0,
        at: Duration::from_millis(ms),
        method: "GET".into(),
        path: "/".into(),
        query: None,
        status: 200,
    };
    // 900..1800 is a dense rolling second split across two calendar seconds.
    let log: Vec<_> = [100, 900, 950, 1000, 1100, 1800, 2500]
        .into_iter()
        .map(at)
        .collect();
    let s = stats_from_log(&log);
    assert_eq!(s.max_requests_in_any_second, 5);
    assert_eq!(s.max_requests_in_calendar_second, 3);
    assert_eq!(stats_from_log(&[]).max_requests_in_any_second, 0);
}
