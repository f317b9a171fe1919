//! Access reviews against every store backend and the Nuki simulator, the clock controlled: a
//! campaign over a tier lists who holds its doors and why; a reviewer certifies or revokes each
//! holder; a revoked door stays withdrawn whatever the feeds say; at the deadline the undecided
//! are revoked (or escalated), and the campaign's evidence ties each step to the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::access_requests::{self, Ask};
use latchkey::config::OnDeadline;
use latchkey::model::Action;
use latchkey::reviews::{self, Decision, ReviewError, Scope, Start};
use latchkey::store;

fn decision_of<'a>(items: &'a [store::reviews::ItemRow], key: &str) -> Option<&'a str> {
    items
        .iter()
        .find(|i| i.identity_key == key)
        .and_then(|i| i.decision.as_deref())
}

#[tokio::test]
async fn a_review_certifies_revokes_and_at_its_deadline_revokes_whom_nobody_vouched_for() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        let mut h = Harness::builder(&name, &url, &dir)
            .config(
                "[tiers.high]\ntargets = [\"berlin-lab\"]\n[tiers.high.sla]\nrevoke_within_seconds = 30\n",
            )
            .build()
            .await;
        let people = [
            employee("E1", "engineering", "berlin"),
            employee("E2", "engineering", "berlin"),
            employee("E3", "engineering", "berlin"),
            employee("E4", "sales", "berlin"),
        ];
        h.feed(&people).await;
        let engine = h.app.engine.clone();
        let now = h.clock.now_utc();
        // E4 holds the lab through an approved temporary request, not a template.
        let r = access_requests::ask(
            &engine,
            &Ask {
                person: "E4".into(),
                connector: "nuki".into(),
                target: "berlin-lab".into(),
                starts_at: None,
                ends_at: now + chrono::Duration::days(20),
                reason: "prototype tests".into(),
            },
            "os:dana",
        )
        .await
        .unwrap();
        access_requests::decide(&engine, r.id, true, "os:sam")
            .await
            .unwrap();
        h.drain().await;
        for key in ["E1", "E2", "E3", "E4"] {
            assert!(
                h.holds(key, "berlin-lab"),
                "{name}: {key} before the review"
            );
        }

        // Mistakes are refused by name and start nothing.
        let start = |scope: Scope, days: i64, on_deadline| Start {
            name: None,
            scope,
            deadline: now + chrono::Duration::days(days),
            on_deadline,
        };
        for (s, named) in [
            (
                start(Scope::Tier("medium".into()), 7, OnDeadline::Revoke),
                "high",
            ),
            (
                start(Scope::Connector("acme".into()), 7, OnDeadline::Revoke),
                "acme",
            ),
            (
                start(Scope::Target("moon-base".into()), 7, OnDeadline::Revoke),
                "moon-base",
            ),
            (
                start(Scope::Tier("high".into()), -1, OnDeadline::Revoke),
                "future",
            ),
        ] {
            let e = reviews::start(&engine, &s, "os:rita").await.unwrap_err();
            assert!(
                matches!(e, ReviewError::Invalid(_)) && e.to_string().contains(named),
                "{name}: {e}"
            );
        }
        assert!(
            store::reviews::campaigns(h.app.store().pool(), 10)
                .await
                .unwrap()
                .is_empty()
        );

        // The campaign lists every holder of the tier's doors and why they hold it.
        let (c, items) = reviews::start(
            &engine,
            &start(Scope::Tier("high".into()), 7, OnDeadline::Revoke),
            "os:rita",
        )
        .await
        .unwrap();
        assert_eq!(c.status, "open");
        let why: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|i| {
                (
                    i.identity_key.as_str(),
                    i.basis.as_str(),
                    i.template.as_str(),
                )
            })
            .collect();
        let request = format!("request:{}", r.id);
        assert_eq!(
            why,
            vec![
                ("E1", "template", "engineering-lab"),
                ("E2", "template", "engineering-lab"),
                ("E3", "template", "engineering-lab"),
                ("E4", "request", request.as_str()),
            ],
            "{name}"
        );
        let item = |key: &str| items.iter().find(|i| i.identity_key == key).unwrap().id;

        // E1 is certified; E2 is revoked, with a reason (required).
        let e = reviews::decide(&engine, item("E2"), Decision::Revoke, Some(" "), "os:rita")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("note"), "{e}");
        reviews::decide(&engine, item("E1"), Decision::Certify, None, "os:rita")
            .await
            .unwrap();
        let (revoked, a) = reviews::decide(
            &engine,
            item("E2"),
            Decision::Revoke,
            Some("left the lab team"),
            "os:rita",
        )
        .await
        .unwrap();
        assert_eq!(
            (revoked.decision.as_deref(), a.revokes),
            (Some("revoked"), 1)
        );
        let e = reviews::decide(&engine, item("E2"), Decision::Certify, None, "os:sam")
            .await
            .unwrap_err();
        assert!(matches!(e, ReviewError::Decided { .. }), "{e}");
        h.drain().await;
        assert!(
            !h.holds("E2", "berlin-lab"),
            "{name}: revoked by the review"
        );
        assert!(
            h.holds("E2", "berlin-engineering"),
            "{name}: only that door"
        );

        // The template still gives E2 the lab, but neither a feed nor a reconciliation gives it back.
        h.feed(&people).await;
        h.drain().await;
        assert!(!h.holds("E2", "berlin-lab"), "{name}: a feed gave it back");
        let (plan, _) = latchkey::reconcile::run(&engine, "schedule").await.unwrap();
        assert!(plan.is_empty(), "{name}: {}", plan.render());

        // Before the deadline nothing happens; past it, E3 and E4 (nobody vouched for them) are
        // revoked, E4's request ends, and the campaign closes.
        engine.tick().await.unwrap();
        let pool = h.app.store().pool();
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            store::reviews::pending_count(&mut conn, c.id)
                .await
                .unwrap(),
            2
        );
        h.clock
            .advance(chrono::Duration::days(7) + chrono::Duration::minutes(1));
        engine.tick().await.unwrap();
        h.drain().await;
        assert!(
            !h.holds("E3", "berlin-lab"),
            "{name}: undecided E3 kept the lab"
        );
        assert!(
            !h.holds("E4", "berlin-lab"),
            "{name}: undecided E4 kept the lab"
        );
        assert!(
            h.holds("E1", "berlin-lab"),
            "{name}: certified E1 lost the lab"
        );
        let items = store::reviews::items(&mut conn, c.id).await.unwrap();
        assert_eq!(decision_of(&items, "E3"), Some("revoked"));
        assert_eq!(
            items
                .iter()
                .find(|i| i.identity_key == "E4")
                .unwrap()
                .decided_by
                .as_deref(),
            Some("schedule")
        );
        let closed = store::reviews::get_campaign(&mut conn, c.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed.status, "closed", "{name}");
        let req = store::access_requests::get(&mut conn, r.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(req.status, "ended", "{name}");
        let done = store::completed_commands(pool).await.unwrap();
        let causes: Vec<(&str, &str)> = done
            .iter()
            .filter(|c| c.action == Action::Revoke && c.target == "berlin-lab")
            .map(|c| (c.identity_key.as_str(), c.cause.as_str()))
            .collect();
        for key in ["E2", "E3", "E4"] {
            assert!(causes.contains(&(key, "review")), "{name}: {causes:?}");
        }
        // The latency figures say who acted: the reviewer (an operator) or the deadline.
        let source_of = |key: &str| {
            done.iter()
                .find(|c| c.action == Action::Revoke && c.identity_key == key)
                .map(|c| c.source.clone())
        };
        assert_eq!(source_of("E2").as_deref(), Some("operator"), "{name}");
        assert_eq!(source_of("E3").as_deref(), Some("schedule"), "{name}");

        // The tier's own SLA counts the revocations at its doors only.
        let now_us = latchkey::clock::to_micros(h.clock.now_utc());
        let sla = latchkey::telemetry::sla::report(h.app.store(), &h.app.engine.config, now_us)
            .await
            .unwrap();
        let tier = sla.iter().find(|r| r.connector == "tier:high").unwrap();
        assert_eq!(
            (tier.total, tier.met, tier.target_seconds),
            (3, 3, 30.0),
            "{name}: {tier:?}"
        );
        let nuki = sla.iter().find(|r| r.connector == "nuki").unwrap();
        assert_eq!(
            (nuki.total, nuki.target_seconds),
            (3, 60.0),
            "{name}: {nuki:?}"
        );

        // The evidence: every item's decision, and each step's audit record in the chain.
        let ev = reviews::evidence(&engine, c.id).await.unwrap();
        assert_eq!(ev.items.len(), 4);
        let actions: Vec<(&str, &str)> = ev
            .audit
            .iter()
            .map(|r| (r.action.as_str(), r.actor.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("review.started", "os:rita"),
                ("review.certified", "os:rita"),
                ("review.revoked", "os:rita"),
                ("review.revoked", "schedule"),
                ("review.revoked", "schedule"),
                ("review.closed", "schedule"),
            ],
            "{name}"
        );
        for pair in ev.audit.windows(2) {
            assert!(pair[0].seq < pair[1].seq);
        }
        let chain = store::audit::page(pool, ev.audit[0].seq - 1, ev.chain_head.seq, 100_000)
            .await
            .unwrap();
        for r in &ev.audit {
            let stored = chain.iter().find(|s| s.seq == r.seq).unwrap();
            assert_eq!(stored.hash, r.hash);
            assert_eq!(
                latchkey::audit::row_hash(stored),
                r.hash,
                "{name}: hash recomputes"
            );
        }
        assert!(matches!(
            latchkey::audit::verify(h.app.store()).await.unwrap(),
            latchkey::audit::Verdict::Intact { .. }
        ));

        // A door given back by an operator comes back through the template.
        let a = reviews::reinstate(
            &engine,
            "E2",
            "nuki",
            "berlin-lab",
            "rejoined the lab",
            "os:sam",
        )
        .await
        .unwrap();
        assert_eq!(a.issues, 1);
        h.drain().await;
        assert!(h.holds("E2", "berlin-lab"), "{name}: reinstated");
    }
}

#[tokio::test]
async fn an_escalated_review_keeps_the_undecided_and_a_tier_starts_its_reviews_on_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let dir = tmp.path().join(&name);
        let mut h = Harness::builder(&name, &url, &dir)
            .config(
                "[tiers.high]\ntargets = [\"berlin-lab\"]\nreview_every_days = 90\nreview_days = 14\n\
             review_on_deadline = \"escalate\"\n",
            )
            .build()
            .await;
        // E2 reports to E1 (the feed's last column, `manager_id`).
        h.feed(&[
            employee("E1", "engineering", "berlin"),
            format!("{}E1", employee("E2", "engineering", "berlin")),
        ])
        .await;
        h.drain().await;
        let engine = h.app.engine.clone();
        let pool = h.app.store().pool().clone();

        // The schedule starts the tier's first review at once, and no second one before 90 days.
        engine.tick().await.unwrap();
        engine.tick().await.unwrap();
        let campaigns = store::reviews::campaigns(&pool, 10).await.unwrap();
        assert_eq!(campaigns.len(), 1, "{name}");
        let c = &campaigns[0];
        assert_eq!(
            (
                c.scope_kind.as_str(),
                c.started_by.as_str(),
                c.on_deadline.as_str()
            ),
            ("tier", "schedule", "escalate")
        );
        let mut conn = pool.acquire().await.unwrap();
        let items = store::reviews::items(&mut conn, c.id).await.unwrap();
        assert_eq!(items.len(), 2);

        // Past the deadline the undecided are escalated, not revoked; the gauge counts them.
        reviews::decide(&engine, items[0].id, Decision::Certify, None, "os:rita")
            .await
            .unwrap();
        h.clock.advance(chrono::Duration::days(15));
        engine.tick().await.unwrap();
        h.drain().await;
        assert!(h.holds("E2", "berlin-lab"), "{name}: escalation revoked");
        let now = latchkey::clock::to_micros(h.clock.now_utc());
        assert_eq!(store::reviews::counts(&pool, now).await.unwrap(), (1, 1, 1));
        let escalated = store::reviews::get_campaign(&mut conn, c.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(escalated.status, "escalated");
        let items = store::reviews::items(&mut conn, c.id).await.unwrap();
        assert_eq!(decision_of(&items, "E2"), Some("escalated"));

        // Someone decides the escalated item: the campaign closes and the gauge clears.
        reviews::decide(
            &engine,
            items[1].id,
            Decision::Certify,
            Some("still on the team"),
            "os:cio",
        )
        .await
        .unwrap();
        let closed = store::reviews::get_campaign(&mut conn, c.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed.status, "closed");
        assert_eq!(store::reviews::counts(&pool, now).await.unwrap(), (0, 0, 0));

        // Ninety days after the first, the next review starts by itself.
        h.clock.advance(chrono::Duration::days(76));
        engine.tick().await.unwrap();
        assert_eq!(
            store::reviews::campaigns(&pool, 10).await.unwrap().len(),
            2,
            "{name}"
        );

        // A manager's review covers their reports' doors only; a manager nobody reports to, who
        // is nobody, is refused by name.
        let manager = |m: &str| Start {
            name: None,
            scope: Scope::Manager(m.into()),
            deadline: h.clock.now_utc() + chrono::Duration::days(7),
            on_deadline: OnDeadline::Revoke,
        };
        let (_, items) = reviews::start(&engine, &manager("E1"), "os:rita")
            .await
            .unwrap();
        let held: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.identity_key.as_str(), i.target.as_str()))
            .collect();
        assert_eq!(
            held,
            vec![("E2", "berlin-engineering"), ("E2", "berlin-lab")],
            "{name}"
        );
        let e = reviews::start(&engine, &manager("E99"), "os:rita")
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReviewError::Invalid(_)) && e.to_string().contains("E99"),
            "{name}: {e}"
        );
    }
}
