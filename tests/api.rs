//! Every RPC over real gRPC against a real, freshly migrated PostgreSQL database: what lands in
//! which seed table, validation, replays and business keys.

mod common;

use common::*;
use sqlx::Row;
use token_ledger::domain::{IDEMPOTENCY_KEY_LEN_MAX, REASON_LEN_MAX, TOKENS_MAX, USER_ID_LEN_MAX};
use token_ledger::pb;
use tonic::Code;

#[tokio::test]
async fn an_admin_grant_lands_in_token_transactions_with_the_admin_recorded() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let r = client
        .grant(admin(grant_req("user-1", 1_000, "g-1")))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, 1_000);
    assert!(!r.replayed);
    let row = sqlx::query(
        "SELECT transaction_type, source, token_amount, balance_after, reason, created_by, id::text AS id \
         FROM token_transactions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("transaction_type"), "grant");
    assert_eq!(row.get::<String, _>("source"), "admin");
    assert_eq!(row.get::<i64, _>("token_amount"), 1_000);
    assert_eq!(row.get::<i64, _>("balance_after"), 1_000);
    assert_eq!(row.get::<String, _>("reason"), "support credit");
    assert_eq!(row.get::<String, _>("created_by"), "key:ops");
    assert_eq!(row.get::<String, _>("id"), r.transaction_id);
}

#[tokio::test]
async fn an_annual_subscription_grant_is_recorded_with_its_invoice() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let r = client
        .grant(with_key(
            BILLING_KEY,
            pb::GrantRequest {
                user_id: "user-annual".into(),
                tokens: 5_000_000,
                idempotency_key: "annual-in_1".into(),
                source: pb::GrantSource::AnnualSubscription as i32,
                stripe_subscription_id: "sub_A".into(),
                stripe_invoice_id: "in_1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, 5_000_000);
    let (source, invoice, created_by): (String, String, String) = sqlx::query_as(
        "SELECT source, stripe_invoice_id, created_by FROM token_transactions WHERE transaction_type = 'grant'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (source.as_str(), invoice.as_str()),
        ("annual_subscription", "in_1")
    );
    assert_eq!(created_by, "key:stripe-webhook");
}

#[tokio::test]
async fn a_deduction_lands_as_a_negative_admin_row() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("user-1", 1_000, "g-1")))
        .await
        .unwrap();

    let r = client
        .deduct(admin(pb::DeductRequest {
            user_id: "user-1".into(),
            tokens: 300,
            idempotency_key: "d-1".into(),
            reason: "chargeback".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, 700);
    let (ty, source, amount, reason): (String, String, i64, String) = sqlx::query_as(
        "SELECT transaction_type, source, token_amount, reason FROM token_transactions WHERE transaction_type = 'deduction'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (ty.as_str(), source.as_str(), amount, reason.as_str()),
        ("deduction", "admin", -300, "chargeback")
    );
}

#[tokio::test]
async fn a_deduction_beyond_the_balance_is_refused_with_both_figures_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("user-1", 100, "g-1")))
        .await
        .unwrap();
    let rows_before = app.journal_rows().await;

    let err = client
        .deduct(admin(pb::DeductRequest {
            user_id: "user-1".into(),
            tokens: 101,
            idempotency_key: "d-1".into(),
            reason: "too much".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("100"), "{}", err.message());
    assert!(err.message().contains("101"), "{}", err.message());
    assert_eq!(app.journal_rows().await, rows_before);
    assert_eq!(balance_of(&mut client, "user-1").await, 100);

    // The same key is free to succeed once the balance covers it: a refusal claims nothing.
    client
        .grant(admin(grant_req("user-1", 1, "g-2")))
        .await
        .unwrap();
    let ok = client
        .deduct(admin(pb::DeductRequest {
            user_id: "user-1".into(),
            tokens: 101,
            idempotency_key: "d-1".into(),
            reason: "too much".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.balance, 0);
}

#[tokio::test]
async fn a_deduction_from_an_unknown_user_is_refused_at_balance_zero() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let err = client
        .deduct(admin(pb::DeductRequest {
            user_id: "nobody".into(),
            tokens: 1,
            idempotency_key: "d-1".into(),
            reason: "x".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn a_drip_lands_in_token_drips_with_its_period() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let r = client
        .drip(with_key(
            BILLING_KEY,
            drip_req("user-28", "drip-1", "sub_28", "2026-11-01T00:00:00Z"),
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, 375_000);
    let row = sqlx::query(
        "SELECT token_amount, stripe_subscription_id, stripe_invoice_id, \
         extract(epoch FROM period_end - period_start)::bigint AS secs FROM token_drips",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("token_amount"), 375_000);
    assert_eq!(row.get::<String, _>("stripe_subscription_id"), "sub_28");
    assert_eq!(row.get::<String, _>("stripe_invoice_id"), "in_drip-1");
    assert_eq!(row.get::<i64, _>("secs"), 28 * 86_400);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        0
    );
}

#[tokio::test]
async fn a_token_pack_purchase_lands_as_a_purchase_with_payment_details() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let r = client
        .record_purchase(with_key(
            BILLING_KEY,
            purchase_req("user-p", "pi_1-key", "pi_1"),
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, 2_000_000);
    let row = sqlx::query(
        "SELECT transaction_type, source, token_amount, amount_paid_cents, currency, \
         stripe_payment_intent_id, stripe_checkout_session_id, pack FROM token_transactions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("transaction_type"), "purchase");
    assert_eq!(row.get::<String, _>("source"), "token_pack");
    assert_eq!(row.get::<i64, _>("token_amount"), 2_000_000);
    assert_eq!(row.get::<i64, _>("amount_paid_cents"), 9_900);
    assert_eq!(row.get::<String, _>("currency"), "usd");
    assert_eq!(row.get::<String, _>("stripe_payment_intent_id"), "pi_1");
    assert_eq!(
        row.get::<String, _>("stripe_checkout_session_id"),
        "cs_test_1"
    );
    assert_eq!(row.get::<String, _>("pack"), "pack_2m");
}

#[tokio::test]
async fn usage_lands_in_token_usage_and_may_overdraw() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("user-u", 100, "g-1")))
        .await
        .unwrap();

    let r = client
        .track_usage(with_key(USAGE_KEY, usage_req("user-u", 250, "call-1")))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(r.balance, -150, "usage is recorded even below zero");
    let row = sqlx::query("SELECT token_amount, balance_after, model, input_tokens, output_tokens, feature, created_by FROM token_usage")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("token_amount"), -250);
    assert_eq!(row.get::<i64, _>("balance_after"), -150);
    assert_eq!(row.get::<String, _>("model"), "gpt-4o");
    assert_eq!(row.get::<i64, _>("input_tokens"), 125);
    assert_eq!(row.get::<i64, _>("output_tokens"), 125);
    assert_eq!(row.get::<String, _>("feature"), "chat");
    assert_eq!(row.get::<String, _>("created_by"), "key:ai-backend");
}

#[tokio::test]
async fn get_balance_reports_totals_by_kind_and_zero_for_an_unknown_user() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("u", 1_000, "g")))
        .await
        .unwrap();
    client
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "p", "pi_9")))
        .await
        .unwrap();
    client
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d", "sub_1", "2026-01-01T00:00:00Z"),
        ))
        .await
        .unwrap();
    client
        .track_usage(with_key(USAGE_KEY, usage_req("u", 400, "use")))
        .await
        .unwrap();
    client
        .deduct(admin(pb::DeductRequest {
            user_id: "u".into(),
            tokens: 100,
            idempotency_key: "x".into(),
            reason: "r".into(),
            ..Default::default()
        }))
        .await
        .unwrap();

    let b = client
        .get_balance(with_key(
            USAGE_KEY,
            pb::GetBalanceRequest {
                user_id: "u".into(),
                as_of: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(b.balance, 1_000 + 2_000_000 + 375_000 - 400 - 100);
    let t = b.totals.unwrap();
    assert_eq!(
        (t.granted, t.purchased, t.dripped, t.used, t.deducted),
        (1_000, 2_000_000, 375_000, 400, 100)
    );
    assert_eq!(b.transaction_count, 5);
    assert!(b.updated_at.is_some());

    let unknown = client
        .get_balance(with_key(
            READ_KEY,
            pb::GetBalanceRequest {
                user_id: "ghost".into(),
                as_of: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.balance, 0);
    assert!(unknown.updated_at.is_none());
}

#[tokio::test]
async fn list_transactions_pages_newest_first_across_every_kind() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("u", 1_000, "g")))
        .await
        .unwrap();
    client
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d", "sub_1", "2026-01-01T00:00:00Z"),
        ))
        .await
        .unwrap();
    for i in 0..3 {
        client
            .track_usage(with_key(USAGE_KEY, usage_req("u", 10, &format!("use-{i}"))))
            .await
            .unwrap();
    }
    client
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "p", "pi_9")))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_transactions(with_key(
                READ_KEY,
                pb::ListTransactionsRequest {
                    user_id: "u".into(),
                    page_size: 4,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.transactions.len() <= 4);
        seen.extend(page.transactions);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    let kinds: Vec<i32> = seen.iter().map(|t| t.kind).collect();
    use pb::TransactionKind as K;
    assert_eq!(
        kinds,
        vec![
            K::Purchase as i32,
            K::Usage as i32,
            K::Usage as i32,
            K::Usage as i32,
            K::Drip as i32,
            K::Grant as i32
        ]
    );
    let seqs: Vec<i64> = seen.iter().map(|t| t.sequence).collect();
    assert_eq!(seqs, vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(seen[0].balance_after, 1_000 + 375_000 - 30 + 2_000_000);
    assert_eq!(seen[1].token_amount, -10);
    assert_eq!(seen[5].reason, "support credit");
    assert_eq!(seen[5].created_by, "key:ops");
    // Keys are kept on every row but usage's (stored as a hash only: BENCHMARKS.md, storage).
    assert_eq!(seen[5].idempotency_key, "g");
    assert_eq!(seen[4].idempotency_key, "d");
    assert_eq!(seen[0].idempotency_key, "p");
    assert_eq!(seen[2].idempotency_key, "");
    match &seen[0].details {
        Some(pb::transaction::Details::Purchase(p)) => {
            assert_eq!(p.stripe_payment_intent_id, "pi_9")
        }
        other => panic!("expected purchase details, got {other:?}"),
    }
    match &seen[4].details {
        Some(pb::transaction::Details::Drip(d)) => {
            assert_eq!(d.period_start, Some(ts("2026-01-01T00:00:00Z")))
        }
        other => panic!("expected drip details, got {other:?}"),
    }
    // The journal's running balances add up: each row's balance_after is the previous plus its amount.
    for pair in seen.windows(2) {
        assert_eq!(
            pair[0].balance_after,
            pair[1].balance_after + pair[0].token_amount
        );
    }
}

#[tokio::test]
async fn list_transactions_rejects_a_bad_page_token_and_clamps_the_page_size() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let err = client
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: 10,
            page_token: "garbage!".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "page_token");

    let err = client
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: -1,
            page_token: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "page_size");

    for i in 0..3 {
        client
            .track_usage(admin(usage_req("u", 1, &format!("k{i}"))))
            .await
            .unwrap();
    }
    let page = client
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: 1_000_000,
            page_token: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.transactions.len(), 3);
    assert!(page.next_page_token.is_empty());
}

/// Each case: a request that must be refused with INVALID_ARGUMENT naming `field`.
#[tokio::test]
async fn every_validation_error_names_its_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let long = "x".repeat(USER_ID_LEN_MAX.max(IDEMPOTENCY_KEY_LEN_MAX) + 1);
    let g = |f: &dyn Fn(&mut pb::GrantRequest)| {
        let mut r = grant_req("u", 10, "k");
        f(&mut r);
        r
    };
    let grant_cases: Vec<(&str, pb::GrantRequest)> = vec![
        ("user_id", g(&|r| r.user_id.clear())),
        ("user_id", g(&|r| r.user_id = long.clone())),
        ("user_id", g(&|r| r.user_id = "a\u{0}b".into())),
        ("tokens", g(&|r| r.tokens = 0)),
        ("tokens", g(&|r| r.tokens = -5)),
        ("tokens", g(&|r| r.tokens = TOKENS_MAX + 1)),
        ("idempotency_key", g(&|r| r.idempotency_key.clear())),
        ("idempotency_key", g(&|r| r.idempotency_key = long.clone())),
        ("reason", g(&|r| r.reason.clear())),
        ("reason", g(&|r| r.reason = "r".repeat(REASON_LEN_MAX + 1))),
        ("source", g(&|r| r.source = 0)),
        ("source", g(&|r| r.source = 99)),
        (
            "stripe_invoice_id",
            g(&|r| r.source = pb::GrantSource::AnnualSubscription as i32),
        ),
    ];
    for (field, req) in grant_cases {
        let err = c.grant(admin(req.clone())).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field, "grant {req:?}");
    }

    let err = c
        .deduct(admin(pb::DeductRequest {
            user_id: "u".into(),
            tokens: 5,
            idempotency_key: "k".into(),
            reason: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "reason");

    let d = |f: &dyn Fn(&mut pb::DripRequest)| {
        let mut r = drip_req("u", "k", "sub", "2026-01-01T00:00:00Z");
        f(&mut r);
        r
    };
    let drip_cases: Vec<(&str, pb::DripRequest)> = vec![
        (
            "stripe_subscription_id",
            d(&|r| r.stripe_subscription_id.clear()),
        ),
        ("period_start", d(&|r| r.period_start = None)),
        ("period_end", d(&|r| r.period_end = None)),
        ("period_end", d(&|r| r.period_end = r.period_start)),
        (
            "period_end",
            d(&|r| r.period_end = Some(ts("2028-01-01T00:00:00Z"))),
        ),
        (
            "period_start",
            d(&|r| {
                r.period_start = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                })
            }),
        ),
    ];
    for (field, req) in drip_cases {
        let err = c.drip(admin(req.clone())).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field, "drip {req:?}");
    }

    let p = |f: &dyn Fn(&mut pb::RecordPurchaseRequest)| {
        let mut r = purchase_req("u", "k", "pi");
        f(&mut r);
        r
    };
    let purchase_cases: Vec<(&str, pb::RecordPurchaseRequest)> = vec![
        (
            "stripe_payment_intent_id",
            p(&|r| r.stripe_payment_intent_id.clear()),
        ),
        ("amount_paid_cents", p(&|r| r.amount_paid_cents = -1)),
        (
            "amount_paid_cents",
            p(&|r| r.amount_paid_cents = 10_000_000_001),
        ),
        ("currency", p(&|r| r.currency = "USD".into())),
        ("currency", p(&|r| r.currency.clear())),
        ("pack", p(&|r| r.pack = long.clone())),
    ];
    for (field, req) in purchase_cases {
        let err = c.record_purchase(admin(req.clone())).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field, "purchase {req:?}");
    }

    let u = |f: &dyn Fn(&mut pb::TrackUsageRequest)| {
        let mut r = usage_req("u", 10, "k");
        f(&mut r);
        r
    };
    let usage_cases: Vec<(&str, pb::TrackUsageRequest)> = vec![
        // 0 asks the ledger to price the call, which needs a model.
        (
            "tokens",
            u(&|r| {
                r.tokens = 0;
                r.model.clear()
            }),
        ),
        ("tokens", u(&|r| r.tokens = -1)),
        ("input_tokens", u(&|r| r.input_tokens = -1)),
        ("cache_read_tokens", u(&|r| r.cache_read_tokens = -1)),
        ("cache_write_tokens", u(&|r| r.cache_write_tokens = -1)),
        (
            "cache_read_tokens",
            u(&|r| r.cache_write_tokens = r.input_tokens + 1),
        ),
        ("output_tokens", u(&|r| r.output_tokens = -1)),
        ("model", u(&|r| r.model = long.clone())),
        ("feature", u(&|r| r.feature = " chat".into())),
    ];
    for (field, req) in usage_cases {
        let err = c.track_usage(admin(req.clone())).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field, "usage {req:?}");
    }

    let err = c
        .get_balance(admin(pb::GetBalanceRequest {
            user_id: String::new(),
            as_of: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "user_id");

    assert_eq!(
        app.journal_rows().await,
        0,
        "a refused request writes nothing"
    );
    assert_eq!(app.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test]
async fn limits_accept_values_exactly_at_the_limit() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let mut req = grant_req(
        &"u".repeat(USER_ID_LEN_MAX),
        TOKENS_MAX,
        &"k".repeat(IDEMPOTENCY_KEY_LEN_MAX),
    );
    req.reason = "r".repeat(REASON_LEN_MAX);
    let r = c.grant(admin(req)).await.unwrap().into_inner();
    assert_eq!(r.balance, TOKENS_MAX);
}

#[tokio::test]
async fn every_write_replays_its_original_response_and_refuses_a_changed_request() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;

    // Grant
    let first = c
        .grant(admin(grant_req("u", 500, "g")))
        .await
        .unwrap()
        .into_inner();
    c.track_usage(admin(usage_req("u", 1, "later")))
        .await
        .unwrap();
    let again = c
        .grant(admin(grant_req("u", 500, "g")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(
        (again.transaction_id.as_str(), again.balance),
        (first.transaction_id.as_str(), 500),
        "replay returns the original balance"
    );
    assert_eq!(
        c.grant(admin(grant_req("u", 501, "g")))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    // Deduct
    let d = pb::DeductRequest {
        user_id: "u".into(),
        tokens: 10,
        idempotency_key: "d".into(),
        reason: "r".into(),
        ..Default::default()
    };
    let first = c.deduct(admin(d.clone())).await.unwrap().into_inner();
    let again = c.deduct(admin(d.clone())).await.unwrap().into_inner();
    assert!(
        again.replayed
            && again.transaction_id == first.transaction_id
            && again.balance == first.balance
    );
    let changed = pb::DeductRequest {
        reason: "other".into(),
        ..d
    };
    assert_eq!(
        c.deduct(admin(changed)).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // Drip
    let dr = drip_req("u", "dr", "sub", "2026-02-01T00:00:00Z");
    let first = c.drip(admin(dr.clone())).await.unwrap().into_inner();
    let again = c.drip(admin(dr.clone())).await.unwrap().into_inner();
    assert!(again.replayed && again.transaction_id == first.transaction_id);
    let changed = pb::DripRequest { tokens: 1, ..dr };
    assert_eq!(
        c.drip(admin(changed)).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // RecordPurchase
    let p = purchase_req("u", "p", "pi_1");
    let first = c
        .record_purchase(admin(p.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .record_purchase(admin(p.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed && again.transaction_id == first.transaction_id);
    let changed = pb::RecordPurchaseRequest {
        amount_paid_cents: 1,
        ..p
    };
    assert_eq!(
        c.record_purchase(admin(changed)).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // TrackUsage
    let u = usage_req("u", 7, "use");
    let first = c.track_usage(admin(u.clone())).await.unwrap().into_inner();
    let again = c.track_usage(admin(u.clone())).await.unwrap().into_inner();
    assert!(
        again.replayed
            && again.transaction_id == first.transaction_id
            && again.balance == first.balance
    );
    let changed = pb::TrackUsageRequest {
        model: "other".into(),
        ..u
    };
    assert_eq!(
        c.track_usage(admin(changed)).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // A key is global: reusing it for another kind or another user is a conflict too.
    assert_eq!(
        c.track_usage(admin(usage_req("u", 500, "g")))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        c.grant(admin(grant_req("someone-else", 500, "g")))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        3
    );
    assert_eq!(app.count("SELECT count(*) FROM token_drips").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM token_usage").await, 2);
    assert_eq!(
        balance_of(&mut c, "u").await,
        500 - 1 - 10 + 375_000 + 2_000_000 - 7
    );
}

#[tokio::test]
async fn a_business_object_is_credited_once_whatever_the_idempotency_key() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;

    // Payment intent.
    let first = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "k1", "pi_same")))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "k2", "pi_same")))
        .await
        .unwrap()
        .into_inner();
    assert!(second.replayed);
    assert_eq!(second.transaction_id, first.transaction_id);

    // Subscription period.
    let first = c
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d1", "sub_1", "2026-03-01T00:00:00Z"),
        ))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d2", "sub_1", "2026-03-01T00:00:00Z"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(second.replayed);
    assert_eq!(second.transaction_id, first.transaction_id);
    // The next period is a new credit.
    let next = c
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d3", "sub_1", "2026-03-29T00:00:00Z"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!next.replayed);

    // Annual invoice.
    let annual = |key: &str| pb::GrantRequest {
        user_id: "u".into(),
        tokens: 5_000_000,
        idempotency_key: key.into(),
        source: pb::GrantSource::AnnualSubscription as i32,
        stripe_invoice_id: "in_year1".into(),
        ..Default::default()
    };
    let first = c
        .grant(with_key(BILLING_KEY, annual("a1")))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .grant(with_key(BILLING_KEY, annual("a2")))
        .await
        .unwrap()
        .into_inner();
    assert!(second.replayed);
    assert_eq!(second.transaction_id, first.transaction_id);

    // The same payment intent for another user is a conflict, not a credit.
    let err = c
        .record_purchase(with_key(
            BILLING_KEY,
            purchase_req("intruder", "k3", "pi_same"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    assert_eq!(
        balance_of(&mut c, "u").await,
        2_000_000 + 375_000 * 2 + 5_000_000
    );
    assert_eq!(balance_of(&mut c, "intruder").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        2
    );
    assert_eq!(app.count("SELECT count(*) FROM token_drips").await, 2);
}

#[tokio::test]
async fn the_journal_refuses_updates_and_deletes() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 10, "g"))).await.unwrap();
    c.track_usage(with_key(USAGE_KEY, usage_req("u", 1, "t")))
        .await
        .unwrap();
    c.drip(with_key(
        BILLING_KEY,
        drip_req("u", "d", "sub_1", "2026-01-01T00:00:00Z"),
    ))
    .await
    .unwrap();
    let before = app.journal_rows().await;
    for table in ["token_transactions", "token_drips", "token_usage"] {
        for (op, sql) in [
            ("UPDATE", format!("UPDATE {table} SET token_amount = 1000")),
            ("DELETE", format!("DELETE FROM {table}")),
        ] {
            let err = sqlx::query(&sql)
                .execute(&app.pool)
                .await
                .expect_err("journal rows are immutable");
            // The trigger's own error (integrity_constraint_violation), not another failure.
            let db = err.as_database_error().expect("a database error");
            assert_eq!(db.code().as_deref(), Some("23000"), "{db}");
            assert_eq!(
                db.message(),
                format!("journal table {table} is append-only: {op} is not allowed")
            );
        }
    }
    assert_eq!(app.journal_rows().await, before);
}

fn reverse_req(user: &str, tokens: i64, key: &str, original: &str) -> pb::ReverseRequest {
    pb::ReverseRequest {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
        original_transaction_id: original.into(),
        source: pb::ReversalSource::Refund as i32,
        reason: "refund".into(),
        stripe_reference: "ch_1".into(),
    }
}

#[tokio::test]
async fn a_purchase_is_reversed_in_parts_never_beyond_what_it_credited() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let purchase = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "p", "pi_r")))
        .await
        .unwrap()
        .into_inner();
    // The user spends most of it before the refund arrives.
    c.track_usage(with_key(USAGE_KEY, usage_req("u", 1_500_000, "use")))
        .await
        .unwrap();

    let first = c
        .reverse(with_key(
            BILLING_KEY,
            reverse_req("u", 1_000_000, "r1", &purchase.transaction_id),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.balance,
        2_000_000 - 1_500_000 - 1_000_000,
        "a reversal may overdraw"
    );

    let over = c
        .reverse(with_key(
            BILLING_KEY,
            reverse_req("u", 1_000_001, "r2", &purchase.transaction_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(
        over.message().contains("1000000 more"),
        "{}",
        over.message()
    );

    let second = c
        .reverse(with_key(
            BILLING_KEY,
            reverse_req("u", 1_000_000, "r2", &purchase.transaction_id),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.balance, -1_500_000);
    let replay = c
        .reverse(with_key(
            BILLING_KEY,
            reverse_req("u", 1_000_000, "r2", &purchase.transaction_id),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        c.reverse(with_key(
            BILLING_KEY,
            reverse_req("u", 1, "r3", &purchase.transaction_id)
        ))
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition,
        "fully reversed"
    );

    let found = c
        .get_transaction(with_key(
            BILLING_KEY,
            pb::GetTransactionRequest {
                lookup: Some(pb::get_transaction_request::Lookup::StripePaymentIntentId(
                    "pi_r".into(),
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user_id, "u");
    assert_eq!(found.reversed_tokens, 2_000_000);
    assert_eq!(found.transaction.unwrap().id, purchase.transaction_id);

    let (ty, source, amount, link): (String, String, i64, i64) = sqlx::query_as(
        "SELECT transaction_type, source, token_amount, reverses_transaction_id FROM token_transactions \
         WHERE transaction_type = 'reversal' ORDER BY entry_seq LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (ty.as_str(), source.as_str(), amount),
        ("reversal", "refund", -1_000_000)
    );
    assert_eq!(link.to_string(), purchase.transaction_id);
    let b = c
        .get_balance(admin(pb::GetBalanceRequest {
            user_id: "u".into(),
            as_of: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.totals.unwrap().reversed, 2_000_000);
    let report = token_ledger::store::Store::from_pool(app.pool.clone())
        .verify()
        .await
        .unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
}

#[tokio::test]
async fn only_a_credit_of_the_same_user_can_be_reversed() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let usage = c
        .track_usage(admin(usage_req("u", 5, "use")))
        .await
        .unwrap()
        .into_inner();
    let grant = c
        .grant(admin(grant_req("u", 50, "g")))
        .await
        .unwrap()
        .into_inner();

    let err = c
        .reverse(admin(reverse_req("u", 1, "a", &usage.transaction_id)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "usage is not a credit"
    );
    let err = c
        .reverse(admin(reverse_req(
            "someone-else",
            1,
            "b",
            &grant.transaction_id,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .reverse(admin(reverse_req("u", 1, "c", "999999")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .reverse(admin(reverse_req("u", 1, "d", "not-a-number")))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "original_transaction_id");
    let mut no_reason = reverse_req("u", 1, "e", &grant.transaction_id);
    no_reason.reason.clear();
    assert_eq!(
        bad_request_field(&c.reverse(admin(no_reason)).await.unwrap_err()),
        "reason"
    );
    // A billing key may reverse for refunds and disputes, not make admin corrections.
    let mut by_admin = reverse_req("u", 1, "f", &grant.transaction_id);
    by_admin.source = pb::ReversalSource::Admin as i32;
    assert_eq!(
        c.reverse(with_key(BILLING_KEY, by_admin))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'reversal'")
            .await,
        0
    );
    assert_eq!(balance_of(&mut c, "u").await, 45);
}

#[tokio::test]
async fn a_request_with_several_invalid_fields_names_every_one_of_them() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let err = client
        .record_purchase(with_key(
            BILLING_KEY,
            pb::RecordPurchaseRequest {
                user_id: String::new(),
                tokens: 0,
                idempotency_key: "p-bad".into(),
                amount_paid_cents: 9_900,
                currency: "USD".into(),
                stripe_payment_intent_id: "pi_\0".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT must carry google.rpc.BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["user_id", "tokens", "currency", "stripe_payment_intent_id"]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM token_transactions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_write_that_would_overflow_a_total_is_refused_alone_and_its_batch_neighbours_commit() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .track_usage(with_key(USAGE_KEY, usage_req("heavy", 1, "seed")))
        .await
        .unwrap();
    // An account whose used total is a few tokens from i64::MAX (reaching it through the API
    // takes ~9 million maximal writes): balance = granted − used stays 0 - 1.
    sqlx::query(
        "UPDATE accounts SET granted_total = 9223372036854775800, \
           used_total = 9223372036854775801, balance = -1 WHERE user_id = 'heavy'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let results = client
        .track_usage_batch(with_key(
            USAGE_KEY,
            pb::TrackUsageBatchRequest {
                events: vec![
                    usage_req("light", 3, "n-1"),
                    usage_req("heavy", 10, "over"),
                    usage_req("light", 4, "n-2"),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;

    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [Code::Ok as i32, Code::OutOfRange as i32, Code::Ok as i32],
        "{results:?}"
    );
    assert_eq!(results[2].balance, -7);
    // The same write alone: OUT_OF_RANGE with ErrorInfo AMOUNT_OVERFLOW, naming the total.
    let err = client
        .track_usage(with_key(USAGE_KEY, usage_req("heavy", 10, "over")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "AMOUNT_OVERFLOW");
    assert_eq!(info.metadata["what"], "used total");
    let heavy_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM token_usage u JOIN accounts a USING (account_id) \
         WHERE a.user_id = 'heavy'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(heavy_rows, 1, "only the seed row");
    // Its key was given back: a corrected retry under it applies.
    let ok = client
        .track_usage(with_key(USAGE_KEY, usage_req("heavy", 6, "over")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.balance, -7);
}
