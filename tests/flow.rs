//! The spine, end to end, against every store backend: HR feed -> identity -> policy -> plan ->
//! outbox -> dispatcher -> Nuki simulator over HTTP -> ledger, latency and audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use latchkey::audit::{self, Verdict};
use latchkey::model::Lifecycle;
use latchkey::sim::NukiOptions;
use latchkey::store;

/// Run `body` once per backend, each in its own directory and database.
macro_rules! each_backend {
    (|$h:ident| $body:block) => {{
        let tmp = tempfile::tempdir().unwrap();
        for (name, url) in backends(tmp.path()).await {
            let dir = tmp.path().join(&name);
            #[allow(unused_mut)]
            let mut $h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
            eprintln!("-- backend {name}");
            $body
        }
    }};
}

#[tokio::test]
async fn joiner_mover_leaver_rehire_reach_the_vendor() {
    each_backend!(|h| {
        let r = h
            .feed(&[
                employee("E1", "engineering", "berlin"),
                employee("E2", "sales", "london"),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Terminated",
                    "2015-01-01",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((r.joiners, r.issues), (2, 3), "{} {r:?}", h.backend);
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering"));
        assert!(h.holds("E1", "berlin-lab"));
        assert!(h.holds("E2", "london-sales"));
        assert!(
            h.user_id("E3").is_none(),
            "a terminated person gets nothing"
        );

        // Mover: E1 moves to finance in London: old doors revoked, new one issued.
        let r = h
            .feed(&[
                employee("E1", "finance", "london"),
                employee("E2", "sales", "london"),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Terminated",
                    "2015-01-01",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((r.movers, r.issues, r.revokes), (1, 1, 2), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E1", "berlin-engineering"));
        assert!(!h.holds("E1", "berlin-lab"));
        assert!(h.holds("E1", "london-finance"));

        // Leaver E2 (explicit termination) and rehire E3.
        let r = h
            .feed(&[
                employee("E1", "finance", "london"),
                row(
                    "E2",
                    "sales",
                    "analyst",
                    "employee",
                    "london",
                    "Terminated",
                    "2020-01-01",
                    "2026-11-20",
                    "",
                ),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Active",
                    "2026-11-23",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((r.leavers, r.rehires), (1, 1), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E2", "london-sales"));
        assert!(h.holds("E3", "berlin-finance"));

        // The same feed again issues nothing.
        let again = h
            .feed(&[
                employee("E1", "finance", "london"),
                row(
                    "E2",
                    "sales",
                    "analyst",
                    "employee",
                    "london",
                    "Terminated",
                    "2020-01-01",
                    "2026-11-20",
                    "",
                ),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Active",
                    "2026-11-23",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((again.issues, again.revokes), (0, 0), "{again:?}");
        let before = h.sim.stats().requests;
        h.drain().await;
        assert_eq!(
            h.sim.stats().requests,
            before,
            "no vendor call for an unchanged feed"
        );
        assert_eq!(h.sim.nuki().unwrap().duplicate_pairs(), 0);

        // Latency was measured for every revocation, and the ledger says what the vendor says.
        let done = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revokes: Vec<_> = done
            .iter()
            .filter(|c| c.action == latchkey::model::Action::Revoke)
            .collect();
        assert_eq!(revokes.len(), 3);
        assert!(
            revokes
                .iter()
                .all(|c| c.confirmed_at.is_some() && c.first_attempt_at.is_some())
        );
        assert!(matches!(
            audit::verify(h.app.store()).await.unwrap(),
            Verdict::Intact { .. }
        ));
    });
}

#[tokio::test]
async fn future_dated_termination_fires_at_its_instant_in_the_site_time_zone() {
    each_backend!(|h| {
        // Last day 2026-11-27 in New York: access ends 2026-11-28 00:00 EST = 05:00 UTC.
        h.feed(&[row(
            "E1",
            "sales",
            "analyst",
            "employee",
            "new-york",
            "Active",
            "2020-01-01",
            "2026-11-27",
            "",
        )])
        .await;
        h.drain().await;
        assert!(h.holds("E1", "new-york-sales"));
        h.clock.set(t("2026-11-28T04:59:59Z"));
        h.app.engine.tick().await.unwrap();
        h.drain().await;
        assert!(h.holds("E1", "new-york-sales"), "not before its instant");
        h.clock.set(t("2026-11-28T05:00:00Z"));
        let a = h.app.engine.tick().await.unwrap();
        assert_eq!(a.revokes, 1);
        h.drain().await;
        assert!(!h.holds("E1", "new-york-sales"));
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        let ident = store::get_identity(&mut conn, "E1").await.unwrap().unwrap();
        assert_eq!(ident.lifecycle, Lifecycle::Terminated);
        // Trigger is the effective instant, so detect latency is the timer's lag (zero here).
        let c = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revoke = c
            .iter()
            .find(|c| c.action == latchkey::model::Action::Revoke)
            .unwrap();
        assert_eq!(
            revoke.trigger_at,
            latchkey::clock::to_micros(t("2026-11-28T05:00:00Z"))
        );
    });
}
