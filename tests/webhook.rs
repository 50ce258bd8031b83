//! The Stripe webhook end to end: signed HTTP requests in, ledger rows out, over a real server
//! and a real database.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Proxy, Upstream};
use common::stripe::*;
use common::*;
use rand::seq::SliceRandom;
use serde_json::json;
use token_ledger::pb;
use token_ledger::webhook::ledger_port::RemoteLedger;
use token_ledger::webhook::store::WebhookStore;
use token_ledger::webhook::Processor;

async fn app() -> (TestApp, SocketAddr) {
    let app = TestApp::spawn_with(TestOptions {
        webhook: true,
        ..Default::default()
    })
    .await;
    let addr = app.webhook_addr.unwrap();
    (app, addr)
}

async fn send(addr: SocketAddr, event: &serde_json::Value) -> u16 {
    deliver(addr, WEBHOOK_SECRET, event).await.0
}

async fn balance(app: &TestApp, user: &str) -> i64 {
    let mut c = app.client().await;
    balance_of(&mut c, user).await
}

async fn outcome(app: &TestApp, event_id: &str) -> (String, i32) {
    sqlx::query_as("SELECT outcome, deliveries FROM stripe_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

const DAY: i64 = 86_400;

#[tokio::test]
async fn a_paid_token_pack_checkout_records_the_purchase() {
    let (app, addr) = app().await;
    let e = event(
        "evt_pack",
        "checkout.session.completed",
        pack_checkout("cs_1", "pi_1", "user-1", "pack_5m", 19_900),
    );

    assert_eq!(send(addr, &e).await, 200);

    assert_eq!(balance(&app, "user-1").await, 5_000_000);
    let (amount, paid, pi, source, created_by): (i64, i64, String, String, String) = sqlx::query_as(
        "SELECT token_amount, amount_paid_cents, stripe_payment_intent_id, source, created_by FROM token_transactions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (amount, paid, pi.as_str(), source.as_str()),
        (5_000_000, 19_900, "pi_1", "token_pack")
    );
    assert_eq!(created_by, "key:stripe-webhook");
    assert_eq!(outcome(&app, "evt_pack").await, ("credited".to_string(), 1));
    let mapped: String =
        sqlx::query_scalar("SELECT user_id FROM stripe_customers WHERE customer_id = 'cus_user-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(mapped, "user-1");
}

#[tokio::test]
async fn an_annual_subscription_grants_five_million_per_paid_invoice_once() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    // Checkout and its first invoice are twins: one grant.
    let checkout = event(
        "evt_a1",
        "checkout.session.completed",
        subscription_checkout("cs_a", "sub_a", "in_a1", "user-a", "vision_pro_annual", t0),
    );
    let first_invoice = event(
        "evt_a2",
        "invoice.paid",
        invoice_paid(
            "in_a1",
            "sub_a",
            "subscription_create",
            "price_vision_pro_annual",
            t0,
            t0 + 365 * DAY,
            None,
            "cus_user-a",
        ),
    );
    assert_eq!(send(addr, &checkout).await, 200);
    assert_eq!(send(addr, &first_invoice).await, 200);
    assert_eq!(balance(&app, "user-a").await, 5_000_000);
    assert_eq!(outcome(&app, "evt_a2").await.0, "replayed");

    // The yearly renewal: another 5M, once.
    let renewal = event(
        "evt_a3",
        "invoice.paid",
        invoice_paid(
            "in_a2",
            "sub_a",
            "subscription_cycle",
            "price_vision_pro_annual",
            t0 + 365 * DAY,
            t0 + 730 * DAY,
            None,
            "cus_user-a",
        ),
    );
    assert_eq!(send(addr, &renewal).await, 200);
    assert_eq!(send(addr, &renewal).await, 200);
    assert_eq!(balance(&app, "user-a").await, 10_000_000);
    let grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT source, stripe_invoice_id FROM token_transactions WHERE transaction_type = 'grant' ORDER BY entry_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        grants,
        vec![
            ("annual_subscription".into(), "in_a1".into()),
            ("annual_subscription".into(), "in_a2".into())
        ]
    );
}

#[tokio::test]
async fn each_paid_28_day_cycle_drips_375k_and_a_proration_drips_nothing() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    let price = "price_vision_pro_28day";
    let cycle = |n: i64, reason: &str| {
        event(
            &format!("evt_c{n}"),
            "invoice.paid",
            invoice_paid(
                &format!("in_c{n}"),
                "sub_c",
                reason,
                price,
                t0 + n * 28 * DAY,
                t0 + (n + 1) * 28 * DAY,
                Some("user-c"),
                "cus_c",
            ),
        )
    };
    assert_eq!(send(addr, &cycle(0, "subscription_create")).await, 200);
    assert_eq!(send(addr, &cycle(1, "subscription_cycle")).await, 200);
    assert_eq!(send(addr, &cycle(2, "subscription_cycle")).await, 200);
    let proration = event(
        "evt_prorate",
        "invoice.paid",
        invoice_paid(
            "in_p",
            "sub_c",
            "subscription_update",
            price,
            t0 + 30 * DAY,
            t0 + 56 * DAY,
            Some("user-c"),
            "cus_c",
        ),
    );
    assert_eq!(send(addr, &proration).await, 200);

    assert_eq!(balance(&app, "user-c").await, 3 * 375_000);
    assert_eq!(app.count("SELECT count(*) FROM token_drips").await, 3);
    assert_eq!(outcome(&app, "evt_prorate").await.0, "ignored");
    let starts: Vec<i64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM period_start)::bigint FROM token_drips ORDER BY entry_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(starts, vec![t0, t0 + 28 * DAY, t0 + 56 * DAY]);
}

#[tokio::test]
async fn a_bad_signature_or_a_stale_timestamp_is_refused_and_writes_nothing() {
    let (app, addr) = app().await;
    let e = event(
        "evt_sig",
        "checkout.session.completed",
        pack_checkout("cs_1", "pi_1", "user-1", "pack_2m", 9_900),
    );
    let body = serde_json::to_vec(&e).unwrap();

    let wrong_secret = signature("whsec_not_ours", now(), &body);
    assert_eq!(post_raw(addr, &body, Some(&wrong_secret)).await.0, 400);
    assert_eq!(post_raw(addr, &body, None).await.0, 400);
    let stale = signature(WEBHOOK_SECRET, now() - 301, &body);
    assert_eq!(post_raw(addr, &body, Some(&stale)).await.0, 400);
    let sig = signature(WEBHOOK_SECRET, now(), &body);
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    assert_eq!(post_raw(addr, &tampered, Some(&sig)).await.0, 400);
    assert_eq!(
        post_raw(
            addr,
            b"not json",
            Some(&signature(WEBHOOK_SECRET, now(), b"not json"))
        )
        .await
        .0,
        400
    );

    assert_eq!(balance(&app, "user-1").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM stripe_events").await,
        0,
        "unsigned requests are not recorded"
    );

    // Within the tolerance it is accepted.
    let fresh = signature(WEBHOOK_SECRET, now() - 299, &body);
    assert_eq!(post_raw(addr, &body, Some(&fresh)).await.0, 200);
    assert_eq!(balance(&app, "user-1").await, 2_000_000);
}

#[tokio::test]
async fn two_v1_signatures_of_which_one_is_right_are_accepted() {
    let (app, addr) = app().await;
    let e = event(
        "evt_v1",
        "checkout.session.completed",
        pack_checkout("cs_1", "pi_1", "user-1", "pack_2m", 9_900),
    );
    let body = serde_json::to_vec(&e).unwrap();
    let t = now();
    let good = signature(WEBHOOK_SECRET, t, &body);
    let good_v1 = good.split("v1=").nth(1).unwrap();
    let bad_v1 = signature("whsec_old_rotated_out", t, &body)
        .split("v1=")
        .nth(1)
        .unwrap()
        .to_string();
    let header = format!("t={t},v1={bad_v1},v1={good_v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39");

    assert_eq!(post_raw(addr, &body, Some(&header)).await.0, 200);
    assert_eq!(balance(&app, "user-1").await, 2_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_delivered_five_times_three_concurrently_credits_once() {
    let (app, addr) = app().await;
    let e = event(
        "evt_5x",
        "checkout.session.completed",
        pack_checkout("cs_5", "pi_5", "user-5", "pack_12m", 39_900),
    );

    assert_eq!(send(addr, &e).await, 200);
    let concurrent: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { send(addr, &e).await })
        })
        .collect();
    for t in concurrent {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(send(addr, &e).await, 200);

    assert_eq!(balance(&app, "user-5").await, 12_000_000);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        1
    );
    assert_eq!(outcome(&app, "evt_5x").await, ("replayed".to_string(), 5));
}

#[tokio::test]
async fn a_28_day_first_cycle_is_credited_once_whichever_twin_arrives_first() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    for (order, user) in [("checkout-first", "user-x"), ("invoice-first", "user-y")] {
        let sub = format!("sub_{user}");
        let invoice_id = format!("in_{user}");
        let checkout = event(
            &format!("evt_cs_{user}"),
            "checkout.session.completed",
            subscription_checkout(
                &format!("cs_{user}"),
                &sub,
                &invoice_id,
                user,
                "vision_pro_28day",
                t0,
            ),
        );
        let invoice = event(
            &format!("evt_in_{user}"),
            "invoice.paid",
            invoice_paid(
                &invoice_id,
                &sub,
                "subscription_create",
                "price_vision_pro_28day",
                t0,
                t0 + 28 * DAY,
                Some(user),
                &format!("cus_{user}"),
            ),
        );
        let (first, second) = if order == "checkout-first" {
            (&checkout, &invoice)
        } else {
            (&invoice, &checkout)
        };
        assert_eq!(send(addr, first).await, 200, "{order}");
        assert_eq!(send(addr, second).await, 200, "{order}");
        assert_eq!(send(addr, first).await, 200, "{order}");
        assert_eq!(
            balance(&app, user).await,
            375_000,
            "{order}: one cycle credited once"
        );

        // The next cycle is a new credit.
        let renewal = event(
            &format!("evt_r_{user}"),
            "invoice.paid",
            invoice_paid(
                &format!("in2_{user}"),
                &sub,
                "subscription_cycle",
                "price_vision_pro_28day",
                t0 + 28 * DAY,
                t0 + 56 * DAY,
                None,
                &format!("cus_{user}"),
            ),
        );
        assert_eq!(send(addr, &renewal).await, 200, "{order}");
        assert_eq!(balance(&app, user).await, 750_000, "{order}");
    }
}

#[tokio::test]
async fn an_invoice_before_its_checkout_is_retried_until_the_user_is_known() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    let invoice = event(
        "evt_early",
        "invoice.paid",
        invoice_paid(
            "in_e",
            "sub_e",
            "subscription_create",
            "price_vision_pro_28day",
            t0,
            t0 + 28 * DAY,
            None,
            "cus_user-e",
        ),
    );
    let (status, body) = deliver(addr, WEBHOOK_SECRET, &invoice).await;
    assert!((500..600).contains(&status), "{status} {body}");
    assert_eq!(outcome(&app, "evt_early").await.0, "user_unknown");
    assert_eq!(balance(&app, "user-e").await, 0);

    // The checkout (no product in its metadata: its $99 price says 28-day plan) teaches us the
    // user and credits the first cycle.
    let mut session =
        subscription_checkout("cs_e", "sub_e", "in_e", "user-e", "vision_pro_28day", t0);
    session["metadata"] = json!({});
    assert_eq!(
        send(
            addr,
            &event("evt_cs_e", "checkout.session.completed", session)
        )
        .await,
        200
    );
    assert_eq!(balance(&app, "user-e").await, 375_000);

    // Stripe retries the invoice.
    assert_eq!(send(addr, &invoice).await, 200);
    assert_eq!(send(addr, &invoice).await, 200);
    assert_eq!(balance(&app, "user-e").await, 375_000);
    assert_eq!(
        outcome(&app, "evt_early").await,
        ("replayed".to_string(), 3)
    );
}

#[tokio::test]
async fn an_unpaid_checkout_is_credited_once_its_async_payment_succeeds() {
    let (app, addr) = app().await;
    let mut session = pack_checkout("cs_async", "pi_async", "user-s", "pack_2m", 9_900);
    session["payment_status"] = json!("unpaid");
    assert_eq!(
        send(
            addr,
            &event("evt_unpaid", "checkout.session.completed", session.clone())
        )
        .await,
        200
    );
    assert_eq!(balance(&app, "user-s").await, 0);
    assert_eq!(outcome(&app, "evt_unpaid").await.0, "awaiting_payment");

    session["payment_status"] = json!("paid");
    let succeeded = event(
        "evt_async_ok",
        "checkout.session.async_payment_succeeded",
        session,
    );
    assert_eq!(send(addr, &succeeded).await, 200);
    assert_eq!(send(addr, &succeeded).await, 200);
    assert_eq!(balance(&app, "user-s").await, 2_000_000);
}

#[tokio::test]
async fn an_unknown_price_is_refused_loudly_and_writes_nothing() {
    let (app, addr) = app().await;
    let e = event(
        "evt_unknown",
        "checkout.session.completed",
        pack_checkout("cs_u", "pi_u", "user-u", "pack_999m", 100),
    );
    let (status, body) = deliver(addr, WEBHOOK_SECRET, &e).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("catalog gap"), "{body}");
    let inv = event(
        "evt_unknown_inv",
        "invoice.paid",
        invoice_paid(
            "in_u",
            "sub_u",
            "subscription_cycle",
            "price_not_in_catalog",
            1,
            2,
            Some("user-u"),
            "cus_u",
        ),
    );
    assert_eq!(send(addr, &inv).await, 400);

    assert_eq!(app.journal_rows().await, 0);
    assert_eq!(outcome(&app, "evt_unknown").await.0, "unknown_price");
}

#[tokio::test]
async fn an_unhandled_event_type_is_acknowledged_and_writes_nothing() {
    let (app, addr) = app().await;
    let e = event(
        "evt_other",
        "customer.created",
        json!({"id": "cus_1", "object": "customer"}),
    );
    assert_eq!(send(addr, &e).await, 200);
    assert_eq!(app.journal_rows().await, 0);
    assert_eq!(outcome(&app, "evt_other").await.0, "ignored");
}

#[tokio::test]
async fn a_refund_in_two_partial_steps_claws_back_the_refunded_share() {
    let (app, addr) = app().await;
    assert_eq!(
        send(
            addr,
            &event(
                "evt_buy",
                "checkout.session.completed",
                pack_checkout("cs_r", "pi_r", "user-r", "pack_2m", 9_900)
            )
        )
        .await,
        200
    );
    // The user spends some before the refunds.
    let mut c = app.client().await;
    c.track_usage(with_key(USAGE_KEY, usage_req("user-r", 300_000, "spend")))
        .await
        .unwrap();

    let half = event(
        "evt_ref1",
        "charge.refunded",
        charge_refunded("ch_r", "pi_r", 9_900, 4_950),
    );
    assert_eq!(send(addr, &half).await, 200);
    assert_eq!(
        balance(&app, "user-r").await,
        2_000_000 - 300_000 - 1_000_000
    );
    assert_eq!(
        send(addr, &half).await,
        200,
        "a redelivery claws back nothing more"
    );
    assert_eq!(balance(&app, "user-r").await, 700_000);
    assert_eq!(outcome(&app, "evt_ref1").await.0, "already_reversed");

    let full = event(
        "evt_ref2",
        "charge.refunded",
        charge_refunded("ch_r", "pi_r", 9_900, 9_900),
    );
    assert_eq!(send(addr, &full).await, 200);
    assert_eq!(
        send(addr, &half).await,
        200,
        "a late redelivery of the first step changes nothing"
    );
    assert_eq!(
        balance(&app, "user-r").await,
        -300_000,
        "a refunded pack is not spendable; usage already made stays"
    );

    let reversals: Vec<(i64, String)> = sqlx::query_as(
        "SELECT token_amount, stripe_reference FROM token_transactions WHERE transaction_type = 'reversal' ORDER BY entry_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        reversals,
        vec![
            (-1_000_000, "ch_r".to_string()),
            (-1_000_000, "ch_r".to_string())
        ]
    );
}

#[tokio::test]
async fn a_dispute_claws_back_the_disputed_share_once() {
    let (app, addr) = app().await;
    assert_eq!(
        send(
            addr,
            &event(
                "evt_buy",
                "checkout.session.completed",
                pack_checkout("cs_d", "pi_d", "user-d", "pack_5m", 19_900)
            )
        )
        .await,
        200
    );
    let d = event(
        "evt_dp",
        "charge.dispute.created",
        dispute("dp_1", "ch_d", "pi_d", 19_900),
    );
    assert_eq!(send(addr, &d).await, 200);
    assert_eq!(send(addr, &d).await, 200);
    assert_eq!(balance(&app, "user-d").await, 0);
    let source: String = sqlx::query_scalar(
        "SELECT source FROM token_transactions WHERE transaction_type = 'reversal'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(source, "dispute");
}

#[tokio::test]
async fn a_refund_that_arrives_before_its_purchase_is_clawed_back_when_the_purchase_lands() {
    let (app, addr) = app().await;
    let refund = event(
        "evt_ref_early",
        "charge.refunded",
        charge_refunded("ch_x", "pi_x", 9_900, 9_900),
    );
    assert_eq!(send(addr, &refund).await, 200);
    assert_eq!(
        outcome(&app, "evt_ref_early").await,
        ("unmatched_reversal".to_string(), 1)
    );

    assert_eq!(
        send(
            addr,
            &event(
                "evt_buy_late",
                "checkout.session.completed",
                pack_checkout("cs_x", "pi_x", "user-x", "pack_2m", 9_900)
            )
        )
        .await,
        200
    );

    assert_eq!(
        balance(&app, "user-x").await,
        0,
        "the refunded pack never becomes spendable"
    );
    assert_eq!(outcome(&app, "evt_ref_early").await.0, "reversed");
}

#[tokio::test]
async fn after_a_subscription_ends_no_more_cycles_drip() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    let price = "price_vision_pro_28day";
    let first = event(
        "evt_s0",
        "invoice.paid",
        invoice_paid(
            "in_s0",
            "sub_s",
            "subscription_create",
            price,
            t0,
            t0 + 28 * DAY,
            Some("user-z"),
            "cus_z",
        ),
    );
    assert_eq!(send(addr, &first).await, 200);
    assert_eq!(
        send(
            addr,
            &event(
                "evt_del",
                "customer.subscription.deleted",
                subscription_deleted("sub_s", t0 + 28 * DAY)
            )
        )
        .await,
        200
    );
    assert_eq!(outcome(&app, "evt_del").await.0, "recorded");
    let late = event(
        "evt_s1",
        "invoice.paid",
        invoice_paid(
            "in_s1",
            "sub_s",
            "subscription_cycle",
            price,
            t0 + 28 * DAY,
            t0 + 56 * DAY,
            Some("user-z"),
            "cus_z",
        ),
    );
    assert_eq!(send(addr, &late).await, 200);
    assert_eq!(balance(&app, "user-z").await, 375_000);
    assert_eq!(outcome(&app, "evt_s1").await.0, "ignored");
}

#[tokio::test]
async fn an_invoice_in_the_pre_2025_shape_is_understood_too() {
    let (app, addr) = app().await;
    let invoice = json!({
        "id": "in_old", "object": "invoice", "billing_reason": "subscription_cycle", "customer": "cus_old",
        "subscription": "sub_old", "subscription_details": {"metadata": {"user_id": "user-old"}},
        "lines": {"object": "list", "has_more": false, "data": [{
            "id": "il_1", "object": "line_item", "proration": false,
            "period": {"start": 1_760_000_000, "end": 1_762_419_200},
            "price": {"id": "price_x_not_listed", "lookup_key": "vision_pro_28day_99", "object": "price"}
        }]}
    });
    let mut old = event("evt_old", "invoice.paid", invoice);
    old["api_version"] = json!("2024-06-20");
    assert_eq!(send(addr, &old).await, 200);
    assert_eq!(balance(&app, "user-old").await, 375_000);
    let version: Option<String> =
        sqlx::query_scalar("SELECT api_version FROM stripe_events WHERE event_id = 'evt_old'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        version.as_deref(),
        Some("2024-06-20"),
        "each event's version is stored"
    );
}

/// The webhook as its own process would run it: a remote ledger over gRPC with a billing key.
async fn remote_webhook(db_pool: sqlx::PgPool, ledger_url: &str) -> SocketAddr {
    let ledger = RemoteLedger::new(ledger_url, Some(BILLING_KEY), Duration::from_secs(2)).unwrap();
    let processor = Processor::new(
        Arc::new(ledger),
        WebhookStore::new(db_pool),
        Arc::new(example_catalog()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(token_ledger::webhook::serve(
        listener,
        token_ledger::webhook::router(webhook_config(), processor),
        std::future::pending(),
    ));
    addr
}

#[tokio::test]
async fn while_the_ledger_is_down_events_get_503_and_are_credited_once_it_is_back() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // The webhook reaches the ledger through a proxy that does not answer (yet): the ledger is
    // down as far as the webhook can tell, and no port is released and bound again.
    let app = TestApp::spawn_on(db, TestOptions::default()).await;
    let mut proxy = Proxy::start(Upstream::Tcp("127.0.0.1".into(), app.addr.port())).await;
    proxy.cut();
    let addr = remote_webhook(pool.clone(), &format!("http://{}", proxy.addr)).await;
    let e = event(
        "evt_down",
        "checkout.session.completed",
        pack_checkout("cs_dn", "pi_dn", "user-dn", "pack_2m", 9_900),
    );

    let (status, body) = deliver(addr, WEBHOOK_SECRET, &e).await;
    assert_eq!(status, 503, "{body}");
    let recorded: String =
        sqlx::query_scalar("SELECT outcome FROM stripe_events WHERE event_id = 'evt_down'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, "ledger_unavailable");

    // The ledger becomes reachable; Stripe retries.
    proxy.restore();
    let mut status = 0;
    for _ in 0..50 {
        status = send(addr, &e).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(send(addr, &e).await, 200);
    assert_eq!(balance(&app, "user-dn").await, 2_000_000);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        1
    );
    let created_by: String = sqlx::query_scalar("SELECT created_by FROM token_transactions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        created_by, "key:stripe-webhook",
        "the remote adapter is its own billing key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_fifty_objects_each_delivered_five_times_in_shuffled_order_credits_each_once() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    let packs = [
        ("pack_2m", 2_000_000, 9_900),
        ("pack_5m", 5_000_000, 19_900),
        ("pack_12m", 12_000_000, 39_900),
    ];
    let mut events = Vec::new();
    let mut expected_total = 0i64;
    for i in 0..50i64 {
        let user = format!("storm-{}", i % 7);
        if i % 2 == 0 {
            let (pack, tokens, cents) = packs[(i as usize / 2) % 3];
            expected_total += tokens;
            events.push(event(
                &format!("evt_p{i}"),
                "checkout.session.completed",
                pack_checkout(&format!("cs_{i}"), &format!("pi_{i}"), &user, pack, cents),
            ));
        } else {
            expected_total += 375_000;
            events.push(event(
                &format!("evt_d{i}"),
                "invoice.paid",
                invoice_paid(
                    &format!("in_{i}"),
                    &format!("sub_{user}"),
                    "subscription_cycle",
                    "price_vision_pro_28day",
                    t0 + i * 28 * DAY,
                    t0 + (i + 1) * 28 * DAY,
                    Some(&user),
                    &format!("cus_{user}"),
                ),
            ));
        }
    }
    let mut deliveries: Vec<serde_json::Value> = events
        .iter()
        .flat_map(|e| std::iter::repeat_n(e.clone(), 5))
        .collect();
    deliveries.shuffle(&mut rand::rng());

    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for e in deliveries {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let status = send(addr, &e).await;
            drop(permit);
            status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }

    let total: i64 = sqlx::query_scalar("SELECT COALESCE(sum(balance), 0)::bigint FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(total, expected_total);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        25
    );
    assert_eq!(app.count("SELECT count(*) FROM token_drips").await, 25);
    assert_eq!(
        app.count("SELECT sum(deliveries) FROM stripe_events").await,
        250
    );
    let report = token_ledger::store::Store::from_pool(app.pool.clone())
        .verify()
        .await
        .unwrap();
    assert!(report.discrepancies.is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_parsing() {
    let (app, addr) = app().await;
    let big = vec![b' '; token_ledger::webhook::BODY_BYTES_MAX + 1];
    let sig = signature(WEBHOOK_SECRET, now(), &big);
    assert_eq!(post_raw(addr, &big, Some(&sig)).await.0, 413);
    // Exactly at the limit the body is read (and here refused as not JSON).
    let at_limit = vec![b' '; token_ledger::webhook::BODY_BYTES_MAX];
    let sig = signature(WEBHOOK_SECRET, now(), &at_limit);
    assert_eq!(post_raw(addr, &at_limit, Some(&sig)).await.0, 400);
    assert_eq!(app.journal_rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_events_lists_what_was_done_with_each_event() {
    let (app, addr) = app().await;
    assert_eq!(
        send(
            addr,
            &event(
                "evt_listed",
                "checkout.session.completed",
                pack_checkout("cs_l", "pi_l", "user-l", "pack_2m", 9_900)
            )
        )
        .await,
        200
    );
    assert_eq!(
        send(
            addr,
            &event("evt_ignored", "customer.created", json!({"id": "cus_1"}))
        )
        .await,
        200
    );

    let url = format!("http://{}", app.addr);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
            .arg("stripe-events")
            .args(args)
            .args(["--ledger-url", &url, "--api-key", READ_KEY])
            .output()
            .unwrap()
    };
    let out = cli(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("evt_listed")
            && text.contains("credited")
            && text.contains("user=user-l")
            && text.contains("deliveries=1")
            && text.contains("api_version=2025-03-31.basil"),
        "{text}"
    );
    assert!(
        text.contains("evt_ignored") && text.contains("ignored"),
        "{text}"
    );

    let one = cli(&["--event", "evt_listed"]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(
        text.contains("evt_listed") && !text.contains("evt_ignored"),
        "{text}"
    );
    let ignored = cli(&["--outcome", "ignored", "--livemode", "false", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&ignored.stdout).unwrap();
    assert_eq!(json["events"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["events"][0]["event_id"], "evt_ignored");
    assert_eq!(json["events"][0]["first_outcome"], "ignored");
    let mine = cli(&["--user", "user-l", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&mine.stdout).unwrap();
    assert_eq!(json["events"][0]["event_id"], "evt_listed", "{json}");
    assert_eq!(json["events"][0]["deliveries"], 1);
}

#[tokio::test]
async fn a_checkout_or_invoice_naming_no_product_is_recognised_by_its_price() {
    let (app, addr) = app().await;
    // A pack checkout with no metadata at all: $199 is the 5M pack, and only it.
    let mut session = pack_checkout("cs_amt", "pi_amt", "user-amt", "unused", 19_900);
    session["metadata"] = json!({});
    assert_eq!(
        send(
            addr,
            &event("evt_amt", "checkout.session.completed", session)
        )
        .await,
        200
    );
    assert_eq!(balance(&app, "user-amt").await, 5_000_000);

    // Expanded line items name the price.
    let mut session = pack_checkout("cs_li", "pi_li", "user-li", "unused", 1);
    session["metadata"] = json!({});
    session["line_items"] =
        json!({"object": "list", "data": [{"price": {"id": "price_pack_12m"}}]});
    assert_eq!(
        send(
            addr,
            &event("evt_li", "checkout.session.completed", session)
        )
        .await,
        200
    );
    assert_eq!(balance(&app, "user-li").await, 12_000_000);

    // An invoice.payment_succeeded twin of an invoice.paid credits once.
    let t0 = 1_760_000_000;
    let inv = invoice_paid(
        "in_tw",
        "sub_tw",
        "subscription_cycle",
        "price_vision_pro_28day",
        t0,
        t0 + 28 * DAY,
        Some("user-tw"),
        "cus_tw",
    );
    assert_eq!(
        send(addr, &event("evt_tw1", "invoice.paid", inv.clone())).await,
        200
    );
    assert_eq!(
        send(addr, &event("evt_tw2", "invoice.payment_succeeded", inv)).await,
        200
    );
    assert_eq!(balance(&app, "user-tw").await, 375_000);
}

/// The hosted webhook runs in its own lane: fifty refunds at once, each holding its payment
/// intent's lock across two ledger calls, take the webhook's own connections, never the ones the
/// ledger's writers and readers need.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_refunds_neither_starve_track_usage_nor_apply_twice() {
    const PURCHASES: usize = 50;
    const SPENDERS: usize = 8;
    const SPEND_TOKENS: i64 = 1_000;
    let (app, addr) = app().await;
    let mut c = app.client().await;
    for i in 0..PURCHASES {
        c.record_purchase(with_key(
            BILLING_KEY,
            purchase_req(
                &format!("lane-{i}"),
                &format!("buy-{i}"),
                &format!("pi_lane_{i}"),
            ),
        ))
        .await
        .unwrap();
    }

    // TrackUsage callers keep writing for as long as the refunds run (and a few calls more).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut spenders = Vec::new();
    for w in 0..SPENDERS {
        let mut c = app.client().await;
        let stop = stop.clone();
        spenders.push(tokio::spawn(async move {
            let (mut spent, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0;
            while n < 5 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = format!("lane-{}", (w * 7 + n) % PURCHASES);
                let request = usage_req(&user, SPEND_TOKENS, &format!("use-{w}-{n}"));
                match c.track_usage(with_key(USAGE_KEY, request)).await {
                    Ok(_) => spent.push(user),
                    Err(status) => refused.push(status),
                }
                n += 1;
            }
            (spent, refused)
        }));
    }
    let refunds: Vec<_> = (0..PURCHASES)
        .map(|i| {
            let refund = event(
                &format!("evt_lane_ref{i}"),
                "charge.refunded",
                charge_refunded(
                    &format!("ch_lane_{i}"),
                    &format!("pi_lane_{i}"),
                    9_900,
                    9_900,
                ),
            );
            // At the lane's limit a delivery waits for a webhook connection, then is answered
            // 503, and Stripe delivers it again: so does this test (on a machine busy enough
            // for that to happen), which must still apply each refund exactly once.
            tokio::spawn(async move {
                let mut attempt = 0;
                loop {
                    let answer = deliver(addr, WEBHOOK_SECRET, &refund).await;
                    attempt += 1;
                    if answer.0 != 503 || attempt == 5 {
                        return answer;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in refunds {
        answers.push(r.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut spent_by = std::collections::HashMap::<String, i64>::new();
    for s in spenders {
        let (spent, refused) = s.await.unwrap();
        let codes: Vec<_> = refused.iter().map(|s| s.code()).collect();
        assert!(
            codes.is_empty(),
            "no TrackUsage may fail while the refunds run: {codes:?}"
        );
        for user in spent {
            *spent_by.entry(user).or_default() += SPEND_TOKENS;
        }
    }

    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let outcome: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(outcome["outcome"], "reversed", "{body}");
    }
    let reversed: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT count(*), count(DISTINCT reverses_transaction_id) FROM token_transactions \
         WHERE transaction_type = 'reversal' AND token_amount = -2000000",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        reversed,
        vec![(PURCHASES as i64, PURCHASES as i64)],
        "every refund is applied exactly once"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'reversal'")
            .await,
        PURCHASES as i64
    );
    for i in 0..PURCHASES {
        let user = format!("lane-{i}");
        let spent = spent_by.get(&user).copied().unwrap_or(0);
        assert_eq!(
            balance(&app, &user).await,
            -spent,
            "{user}: bought 2M, refunded 2M, spent {spent}"
        );
    }
    let report = token_ledger::store::Store::from_pool(app.pool.clone())
        .verify()
        .await
        .unwrap();
    assert!(report.discrepancies.is_empty());
}

/// The lane at its limit: with one connection, a purchase that settles refunds parked before it
/// reads and settles them through the lock's own transaction, so it never waits for a second
/// connection of its pool (which would deadlock until the acquire timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_connection_lane_settles_parked_refunds_while_purchases_land_at_once() {
    const PURCHASES: usize = 10;
    let app = TestApp::spawn_with(TestOptions {
        webhook: true,
        webhook_pool_connections_max: Some(1),
        ..Default::default()
    })
    .await;
    let addr = app.webhook_addr.unwrap();
    for i in 0..PURCHASES {
        let refund = event(
            &format!("evt_one_ref{i}"),
            "charge.refunded",
            charge_refunded(&format!("ch_one_{i}"), &format!("pi_one_{i}"), 9_900, 9_900),
        );
        assert_eq!(send(addr, &refund).await, 200);
        assert_eq!(
            outcome(&app, &format!("evt_one_ref{i}")).await.0,
            "unmatched_reversal"
        );
    }

    let purchases: Vec<_> = (0..PURCHASES)
        .map(|i| {
            let buy = event(
                &format!("evt_one_buy{i}"),
                "checkout.session.completed",
                pack_checkout(
                    &format!("cs_one_{i}"),
                    &format!("pi_one_{i}"),
                    &format!("one-{i}"),
                    "pack_2m",
                    9_900,
                ),
            );
            tokio::spawn(async move { deliver(addr, WEBHOOK_SECRET, &buy).await })
        })
        .collect();
    for p in purchases {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    for i in 0..PURCHASES {
        assert_eq!(balance(&app, &format!("one-{i}")).await, 0);
        assert_eq!(
            outcome(&app, &format!("evt_one_ref{i}")).await.0,
            "reversed"
        );
    }
}

#[tokio::test]
async fn outcomes_are_a_known_list_held_by_a_named_constraint() {
    let (app, addr) = app().await;
    // A charge with no amount_refunded is malformed: refused (400) and recorded as such.
    let mut charge = charge_refunded("ch_bad", "pi_bad", 9_900, 9_900);
    charge.as_object_mut().unwrap().remove("amount_refunded");
    let (status, body) = deliver(
        addr,
        WEBHOOK_SECRET,
        &event("evt_bad", "charge.refunded", charge),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(outcome(&app, "evt_bad").await.0, "malformed");

    let err = sqlx::query("UPDATE stripe_events SET outcome = 'done' WHERE event_id = 'evt_bad'")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.constraint()),
        Some("stripe_events_outcome_known")
    );
}

/// A catalog whose products are credited with terms: the 28-day plan expires a day after each
/// cycle and carries at most half, and at most 100k, of a cycle's unused tokens into the next;
/// the annual plan expires 12 hours after its year; the pack burns late.
const CATALOG_WITH_TERMS: &str = r#"
[[product]]
name = "plan_28day"
kind = "drip"
tokens = 375_000
price_ids = ["price_plan_28day"]
expires = "period_end"
grace = "1d"
rollover_max = 100_000
rollover_max_percent = 50
priority = -5

[[product]]
name = "plan_annual"
kind = "annual"
tokens = 5_000_000
price_ids = ["price_plan_annual"]
expires = "period_end"
grace = "12h"

[[product]]
name = "pack_late"
kind = "pack"
tokens = 2_000_000
price_ids = ["price_pack_late"]
priority = 10
"#;

async fn app_with_terms() -> (TestApp, SocketAddr) {
    let catalog = token_ledger::webhook::catalog::Catalog::parse(CATALOG_WITH_TERMS).unwrap();
    let app = TestApp::spawn_with(TestOptions {
        webhook: true,
        catalog: Some(catalog),
        ..Default::default()
    })
    .await;
    let addr = app.webhook_addr.unwrap();
    (app, addr)
}

/// A user's lots with something left, in burn order.
async fn lots(app: &TestApp, user: &str) -> Vec<pb::Lot> {
    let mut c = app.client().await;
    c.list_lots(admin(pb::ListLotsRequest {
        user_id: user.into(),
        include_spent: false,
    }))
    .await
    .unwrap()
    .into_inner()
    .lots
}

/// (source, remaining, expires_at in unix seconds, priority) of each lot.
fn lot_terms(lots: &[pb::Lot]) -> Vec<(pb::LotSource, i64, Option<i64>, i32)> {
    lots.iter()
        .map(|l| {
            (
                l.source(),
                l.remaining,
                l.expires_at.as_ref().map(|t| t.seconds),
                l.priority,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_drip_expiring_at_its_period_end_rolls_the_capped_part_of_a_cycle_over_once() {
    let (app, addr) = app_with_terms().await;
    let mut c = app.client().await;
    // The first cycle started a day ago (the ledger's clock is the wall clock until advanced).
    let t0 = now() - DAY;
    let checkout = event(
        "evt_t_cs",
        "checkout.session.completed",
        subscription_checkout("cs_t", "sub_t", "in_t1", "user-t", "plan_28day", t0),
    );
    let first_invoice = event(
        "evt_t_in1",
        "invoice.paid",
        invoice_paid(
            "in_t1",
            "sub_t",
            "subscription_create",
            "price_plan_28day",
            t0,
            t0 + 28 * DAY,
            Some("user-t"),
            "cus_user-t",
        ),
    );

    // The first cycle, from the checkout (its invoice is the twin): 375k until a day past the
    // cycle's end.
    assert_eq!(send(addr, &checkout).await, 200);
    assert_eq!(send(addr, &first_invoice).await, 200);
    assert_eq!(outcome(&app, "evt_t_in1").await.0, "replayed");
    assert_eq!(
        lot_terms(&lots(&app, "user-t").await),
        vec![(pb::LotSource::Drip, 375_000, Some(t0 + 29 * DAY), -5)]
    );
    c.track_usage(with_key(USAGE_KEY, usage_req("user-t", 75_000, "use-1")))
        .await
        .unwrap();

    // The renewal is paid at the cycle's end, inside the grace: of the 300k left, at most half
    // and at most 100k carry over (100k); the other 200k expire.
    app.advance(chrono::Duration::days(27));
    let renewal = event(
        "evt_t_in2",
        "invoice.paid",
        invoice_paid(
            "in_t2",
            "sub_t",
            "subscription_cycle",
            "price_plan_28day",
            t0 + 28 * DAY,
            t0 + 56 * DAY,
            None,
            "cus_user-t",
        ),
    );
    assert_eq!(send(addr, &renewal).await, 200);

    assert_eq!(outcome(&app, "evt_t_in2").await, ("credited".into(), 1));
    assert_eq!(balance(&app, "user-t").await, 100_000 + 375_000);
    let rolled: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT carried_tokens, -token_amount FROM token_transactions \
         WHERE transaction_type = 'expiry' AND source = 'rollover'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rolled, vec![(100_000, 200_000)]);
    let mut after = lot_terms(&lots(&app, "user-t").await);
    after.sort_by_key(|l| l.1);
    assert_eq!(
        after,
        vec![
            (pb::LotSource::Rollover, 100_000, Some(t0 + 57 * DAY), -5),
            (pb::LotSource::Drip, 375_000, Some(t0 + 57 * DAY), -5),
        ],
        "the carried tokens expire with the new cycle"
    );

    // Stripe redelivers the renewal, and the first invoice: replays, nothing credited or
    // rolled over twice.
    assert_eq!(send(addr, &renewal).await, 200);
    assert_eq!(send(addr, &first_invoice).await, 200);
    assert_eq!(outcome(&app, "evt_t_in2").await, ("replayed".into(), 2));
    assert_eq!(outcome(&app, "evt_t_in1").await.0, "replayed");
    assert_eq!(balance(&app, "user-t").await, 100_000 + 375_000);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'expiry'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM token_drips").await, 2);
    app.assert_verified().await;
}

#[tokio::test]
async fn an_annual_plan_expiring_at_its_period_end_is_granted_by_its_invoice_not_its_checkout() {
    let (app, addr) = app_with_terms().await;
    let t0 = now();
    let checkout = event(
        "evt_y_cs",
        "checkout.session.completed",
        subscription_checkout("cs_y", "sub_y", "in_y1", "user-y", "plan_annual", t0),
    );
    let invoice = event(
        "evt_y_in1",
        "invoice.paid",
        invoice_paid(
            "in_y1",
            "sub_y",
            "subscription_create",
            "price_plan_annual",
            t0,
            t0 + 365 * DAY,
            None,
            "cus_user-y",
        ),
    );

    // The checkout carries no period: it only records whose subscription this is.
    assert_eq!(send(addr, &checkout).await, 200);
    assert_eq!(outcome(&app, "evt_y_cs").await.0, "recorded");
    assert_eq!(balance(&app, "user-y").await, 0);
    // Its invoice does, and grants the year until 12 hours past its end, once.
    assert_eq!(send(addr, &invoice).await, 200);
    assert_eq!(send(addr, &invoice).await, 200);
    assert_eq!(send(addr, &checkout).await, 200);

    assert_eq!(outcome(&app, "evt_y_in1").await, ("replayed".into(), 2));
    assert_eq!(balance(&app, "user-y").await, 5_000_000);
    assert_eq!(
        lot_terms(&lots(&app, "user-y").await),
        vec![(
            pb::LotSource::Grant,
            5_000_000,
            Some(t0 + 365 * DAY + DAY / 2),
            0
        )]
    );
}

#[tokio::test]
async fn a_pack_is_credited_with_its_catalog_priority_and_no_expiry() {
    let (app, addr) = app_with_terms().await;
    let e = event(
        "evt_p",
        "checkout.session.completed",
        pack_checkout("cs_p", "pi_p", "user-p", "pack_late", 9_900),
    );

    assert_eq!(send(addr, &e).await, 200);
    assert_eq!(send(addr, &e).await, 200);

    assert_eq!(outcome(&app, "evt_p").await, ("replayed".into(), 2));
    assert_eq!(
        lot_terms(&lots(&app, "user-p").await),
        vec![(pb::LotSource::Purchase, 2_000_000, None, 10)]
    );
}

async fn app_with(config: token_ledger::webhook::WebhookConfig) -> (TestApp, SocketAddr) {
    let app = TestApp::spawn_with(TestOptions {
        webhook: true,
        webhook_config: Some(config),
        ..Default::default()
    })
    .await;
    let addr = app.webhook_addr.unwrap();
    (app, addr)
}

#[tokio::test]
async fn a_live_endpoint_never_acts_on_a_test_event_and_the_reverse() {
    use token_ledger::webhook::StripeMode;
    for (mode, live_ok) in [(StripeMode::Live, true), (StripeMode::Test, false)] {
        let (app, addr) = app_with(token_ledger::webhook::WebhookConfig {
            mode,
            ..webhook_config()
        })
        .await;
        let pack = |id: &str, pi: &str, livemode: bool| {
            let mut e = event(
                id,
                "checkout.session.completed",
                pack_checkout(&format!("cs_{id}"), pi, "user-m", "pack_2m", 9_900),
            );
            e["livemode"] = json!(livemode);
            e
        };
        // The event of the other mode: 200, recorded, nothing credited.
        let other = pack("evt_other_mode", "pi_other", !live_ok);
        assert_eq!(send(addr, &other).await, 200);
        assert_eq!(
            outcome(&app, "evt_other_mode").await.0,
            "ignored_other_mode"
        );
        assert_eq!(app.journal_rows().await, 0, "{mode:?}");
        // The endpoint's own mode is credited.
        let own = pack("evt_own_mode", "pi_own", live_ok);
        assert_eq!(send(addr, &own).await, 200);
        assert_eq!(outcome(&app, "evt_own_mode").await.0, "credited");
        assert_eq!(balance(&app, "user-m").await, 2_000_000, "{mode:?}");
    }
}

#[tokio::test]
async fn an_unknown_product_can_be_acknowledged_and_recorded() {
    let (app, addr) = app_with(token_ledger::webhook::WebhookConfig {
        unknown_products: token_ledger::webhook::UnknownProducts::Ignore,
        ..webhook_config()
    })
    .await;
    let e = event(
        "evt_other_product",
        "checkout.session.completed",
        pack_checkout("cs_o", "pi_o", "user-o", "tshirt", 2_500),
    );
    let (status, body) = deliver(addr, WEBHOOK_SECRET, &e).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        outcome(&app, "evt_other_product").await.0,
        "ignored_unknown_product"
    );
    assert_eq!(app.journal_rows().await, 0);
}

#[tokio::test]
async fn list_stripe_events_shows_each_events_first_and_latest_outcome_and_its_transaction() {
    let (app, addr) = app().await;
    let t0 = 1_760_000_000;
    // An invoice before its checkout: user_unknown first, replayed once the checkout credited it.
    let invoice = event(
        "evt_l_inv",
        "invoice.paid",
        invoice_paid(
            "in_l",
            "sub_l",
            "subscription_create",
            "price_vision_pro_28day",
            t0,
            t0 + 28 * DAY,
            None,
            "cus_user-sl",
        ),
    );
    assert!((500..600).contains(&send(addr, &invoice).await));
    let session = subscription_checkout("cs_l", "sub_l", "in_l", "user-sl", "vision_pro_28day", t0);
    assert_eq!(
        send(
            addr,
            &event("evt_l_cs", "checkout.session.completed", session)
        )
        .await,
        200
    );
    assert_eq!(send(addr, &invoice).await, 200);
    // A pack bought in live mode by another user.
    let mut live = event(
        "evt_l_pack",
        "checkout.session.completed",
        pack_checkout("cs_lp", "pi_lp", "user-lp", "pack_2m", 9_900),
    );
    live["livemode"] = json!(true);
    assert_eq!(send(addr, &live).await, 200);

    let mut c = app.client().await;
    let lister = c.clone();
    let list = |m: pb::ListStripeEventsRequest| {
        let mut c = lister.clone();
        async move { c.list_stripe_events(with_key(READ_KEY, m)).await }
    };
    let all = list(Default::default()).await.unwrap().into_inner();
    let ids: Vec<&str> = all.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["evt_l_pack", "evt_l_cs", "evt_l_inv"], "newest first");
    let inv = &all.events[2];
    assert_eq!(
        (
            inv.first_outcome.as_str(),
            inv.outcome.as_str(),
            inv.deliveries
        ),
        ("user_unknown", "replayed", 2)
    );
    assert_eq!(inv.r#type, "invoice.paid");
    assert_eq!(inv.api_version, "2025-03-31.basil");
    assert!(!inv.livemode);
    let pack = &all.events[0];
    assert!(pack.livemode);
    assert_eq!(
        (pack.outcome.as_str(), pack.user_id.as_str()),
        ("credited", "user-lp")
    );
    assert_eq!(pack.payment_intent_id, "pi_lp");
    // The transaction it produced is the purchase of its payment intent.
    let found = c
        .get_transaction(with_key(
            READ_KEY,
            pb::GetTransactionRequest {
                lookup: Some(pb::get_transaction_request::Lookup::TransactionId(
                    pack.transaction_id.clone(),
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user_id, "user-lp");
    assert_eq!(found.transaction.unwrap().token_amount, 2_000_000);

    // Filters, each alone.
    let only = |m: pb::ListStripeEventsRequest| async move {
        list(m)
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    };
    let by_user = pb::ListStripeEventsRequest {
        user_id: "user-sl".into(),
        ..Default::default()
    };
    assert_eq!(only(by_user).await, ["evt_l_cs", "evt_l_inv"]);
    let live_only = pb::ListStripeEventsRequest {
        livemode: Some(true),
        ..Default::default()
    };
    assert_eq!(only(live_only).await, ["evt_l_pack"]);
    let test_only = pb::ListStripeEventsRequest {
        livemode: Some(false),
        ..Default::default()
    };
    assert_eq!(only(test_only).await, ["evt_l_cs", "evt_l_inv"]);
    let replayed = pb::ListStripeEventsRequest {
        outcome: "replayed".into(),
        ..Default::default()
    };
    assert_eq!(only(replayed).await, ["evt_l_inv"]);
    let one = pb::ListStripeEventsRequest {
        event_id: "evt_l_cs".into(),
        ..Default::default()
    };
    assert_eq!(only(one).await, ["evt_l_cs"]);

    // Pages of one, in the same order, without repeats.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListStripeEventsRequest {
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        seen.extend(page.events.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["evt_l_pack", "evt_l_cs", "evt_l_inv"]);

    // Bad input and the wrong scope change nothing and say why.
    let bad = list(pb::ListStripeEventsRequest {
        outcome: "great".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(bad_request_field(&bad), "outcome");
    let bad = list(pb::ListStripeEventsRequest {
        page_token: "forged".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(bad_request_field(&bad), "page_token");
    let denied = c
        .list_stripe_events(with_key(USAGE_KEY, pb::ListStripeEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}
