//! Credits with a lifecycle, over real gRPC and PostgreSQL: holds (Reserve, CommitHold,
//! ReleaseHold, ExtendHold), lots (burn order, expiry, debt, rollover) and the sweeper. Time
//! passes through the ledger's test clock (`TestApp::advance`), never by sleeping.

mod common;

use chrono::{Duration, Utc};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

type Client = LedgerServiceClient<Channel>;

fn ttl(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos: 0,
    })
}

fn at(t: chrono::DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

async fn reserve(
    c: &mut Client,
    user: &str,
    tokens: i64,
    key: &str,
    secs: i64,
) -> Result<pb::ReserveResponse, Status> {
    c.reserve(with_key(
        USAGE_KEY,
        pb::ReserveRequest {
            user_id: user.into(),
            tokens,
            idempotency_key: key.into(),
            ttl: ttl(secs),
            model: "gpt".into(),
            ..Default::default()
        },
    ))
    .await
    .map(|r| r.into_inner())
}

async fn commit(
    c: &mut Client,
    hold: &str,
    tokens: i64,
    key: &str,
) -> Result<pb::CommitHoldResponse, Status> {
    c.commit_hold(with_key(
        USAGE_KEY,
        pb::CommitHoldRequest {
            hold_id: hold.into(),
            tokens,
            idempotency_key: key.into(),
            model: "gpt".into(),
            // A call that used nothing reports no tokens (0 with counts asks the ledger to
            // price them).
            input_tokens: if tokens > 0 { 10 } else { 0 },
            output_tokens: if tokens > 0 { 20 } else { 0 },
            ..Default::default()
        },
    ))
    .await
    .map(|r| r.into_inner())
}

async fn release(c: &mut Client, hold: &str) -> pb::ReleaseHoldResponse {
    c.release_hold(with_key(
        USAGE_KEY,
        pb::ReleaseHoldRequest {
            hold_id: hold.into(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

async fn balance(c: &mut Client, user: &str) -> pb::GetBalanceResponse {
    c.get_balance(admin(pb::GetBalanceRequest {
        user_id: user.into(),
        as_of: None,
    }))
    .await
    .unwrap()
    .into_inner()
}

/// (balance, held, available)
async fn figures(c: &mut Client, user: &str) -> (i64, i64, i64) {
    let b = balance(c, user).await;
    assert_eq!(b.available, b.balance - b.held);
    (b.balance, b.held, b.available)
}

async fn lots(c: &mut Client, user: &str) -> Vec<pb::Lot> {
    c.list_lots(admin(pb::ListLotsRequest {
        user_id: user.into(),
        include_spent: false,
    }))
    .await
    .unwrap()
    .into_inner()
    .lots
}

async fn grant_with(
    c: &mut Client,
    user: &str,
    tokens: i64,
    key: &str,
    expires: Option<chrono::DateTime<Utc>>,
    priority: i32,
) -> pb::GrantResponse {
    c.grant(admin(pb::GrantRequest {
        expires_at: expires.and_then(at),
        priority,
        ..grant_req(user, tokens, key)
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn usage(c: &mut Client, user: &str, tokens: i64, key: &str) -> pb::TrackUsageResponse {
    c.track_usage(with_key(USAGE_KEY, usage_req(user, tokens, key)))
        .await
        .unwrap()
        .into_inner()
}

/// One 28-day cycle of subscription `sub_<user>` starting at `start`, whose tokens expire a day
/// after it ends.
fn drip_cycle(
    user: &str,
    tokens: i64,
    key: &str,
    start: chrono::DateTime<Utc>,
    rollover: Option<pb::Rollover>,
) -> pb::DripRequest {
    pb::DripRequest {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
        stripe_subscription_id: format!("sub_{user}"),
        stripe_invoice_id: format!("in_{key}"),
        period_start: at(start),
        period_end: at(start + Duration::days(28)),
        expires_at: at(start + Duration::days(29)),
        priority: 0,
        rollover,
    }
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_hold_reserves_and_its_commit_charges_what_was_used() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();

    let hold = reserve(&mut c, "u", 300, "r1", 60).await.unwrap();
    assert_eq!((hold.held, hold.balance, hold.available), (300, 1000, 700));
    assert_eq!(figures(&mut c, "u").await, (1000, 300, 700));
    // A replay answers the same hold.
    let again = reserve(&mut c, "u", 300, "r1", 60).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.hold_id, hold.hold_id);
    assert_eq!(figures(&mut c, "u").await, (1000, 300, 700));

    let done = commit(&mut c, &hold.hold_id, 200, "c1").await.unwrap();
    assert_eq!((done.balance, done.available, done.held), (800, 800, 300));
    assert!(!done.hold_expired);
    assert_eq!(figures(&mut c, "u").await, (800, 0, 800));
    // Same key: a replay; another key: refused, nothing written.
    let replay = commit(&mut c, &hold.hold_id, 200, "c1").await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.transaction_id, done.transaction_id);
    let rows = app.journal_rows().await;
    let err = commit(&mut c, &hold.hold_id, 200, "c2").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "HOLD_ALREADY_COMMITTED");
    assert_eq!(app.journal_rows().await, rows);

    // The usage row is linked to its hold.
    let page = c
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::transaction::Details::Usage(details)) = &page.transactions[0].details else {
        panic!(
            "newest row is the commit's usage row: {:?}",
            page.transactions[0]
        );
    };
    assert_eq!(details.hold_id, hold.hold_id);
    assert_eq!(page.transactions[0].token_amount, -200);
    app.assert_verified().await;
}

#[tokio::test]
async fn commits_below_at_and_above_the_held_amount() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    for (i, (actual, after)) in [(0, 1000), (100, 900), (150, 750)].into_iter().enumerate() {
        let hold = reserve(&mut c, "u", 100, &format!("r{i}"), 60)
            .await
            .unwrap();
        let done = commit(&mut c, &hold.hold_id, actual, &format!("c{i}"))
            .await
            .unwrap();
        assert_eq!(done.balance, after, "commit of {actual} for a hold of 100");
        assert_eq!(figures(&mut c, "u").await, (after, 0, after));
    }
    // Above the hold and above the balance: charged anyway, the balance goes negative.
    let hold = reserve(&mut c, "u", 700, "r9", 60).await.unwrap();
    let done = commit(&mut c, &hold.hold_id, 1000, "c9").await.unwrap();
    assert_eq!(done.balance, -250);
    assert_eq!(figures(&mut c, "u").await, (-250, 0, -250));
    app.assert_verified().await;
}

#[tokio::test]
async fn twenty_concurrent_reserves_get_only_what_the_balance_allows() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    let calls = (0..20).map(|i| {
        let mut c = c.clone();
        tokio::spawn(async move { reserve(&mut c, "u", 100, &format!("r{i}"), 60).await })
    });
    let results = futures_join(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "{results:?}");
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(reason(err), "INSUFFICIENT_BALANCE");
        let info = err.get_details_error_info().unwrap();
        assert_eq!(info.metadata["available"], "0");
        assert_eq!(info.metadata["requested"], "100");
    }
    assert_eq!(figures(&mut c, "u").await, (1000, 1000, 0));
    // A deduction may not take held tokens either.
    let err = c
        .deduct(admin(pb::DeductRequest {
            user_id: "u".into(),
            tokens: 1,
            idempotency_key: "d".into(),
            reason: "r".into(),
            allow_negative: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.assert_verified().await;
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_hold_lapses_at_its_expiry_without_a_sweeper() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    let hold = reserve(&mut c, "u", 400, "r", 60).await.unwrap();
    app.advance(Duration::seconds(59));
    assert_eq!(figures(&mut c, "u").await, (1000, 400, 600));
    app.advance(Duration::seconds(1));
    // Exactly at expires_at the hold no longer counts.
    assert_eq!(figures(&mut c, "u").await, (1000, 0, 1000));
    let holds = c
        .list_holds(admin(pb::ListHoldsRequest {
            user_id: "u".into(),
            active_only: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds[0].state, pb::HoldState::Expired as i32);
    // Committing it still records the usage, and says the hold had lapsed.
    let done = commit(&mut c, &hold.hold_id, 250, "c").await.unwrap();
    assert!(done.hold_expired);
    assert_eq!(done.balance, 750);
    let err = commit(&mut c, &hold.hold_id, 1, "c2").await.unwrap_err();
    assert_eq!(reason(&err), "HOLD_ALREADY_COMMITTED");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_usage_write_ends_a_lapsed_hold_before_it_burns() {
    // The store loads holds only for accounts whose row counts active ones: a write that names no
    // hold must still find this one, lapse it, and burn the tokens it held.
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    reserve(&mut c, "u", 400, "r", 60).await.unwrap();
    usage(&mut c, "u", 100, "u1").await;
    assert_eq!(figures(&mut c, "u").await, (900, 400, 500));
    app.advance(Duration::seconds(61));
    let u = usage(&mut c, "u", 700, "u2").await;
    assert_eq!(u.balance, 200);
    assert_eq!(figures(&mut c, "u").await, (200, 0, 200));
    let holds = c
        .list_holds(admin(pb::ListHoldsRequest {
            user_id: "u".into(),
            active_only: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds[0].state, pb::HoldState::Expired as i32);
    assert_eq!(
        app.count("SELECT count(*) FROM accounts WHERE active_holds = 0 AND held = 0 AND debt = 0")
            .await,
        1
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn released_holds_answer_their_state_and_cannot_be_committed() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    let hold = reserve(&mut c, "u", 400, "r", 60).await.unwrap();
    let released = release(&mut c, &hold.hold_id).await;
    assert_eq!(released.hold.unwrap().state, pb::HoldState::Released as i32);
    assert_eq!((released.balance, released.available), (1000, 1000));
    let again = release(&mut c, &hold.hold_id).await;
    assert_eq!(again.hold.unwrap().state, pb::HoldState::Released as i32);
    let err = commit(&mut c, &hold.hold_id, 1, "c").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "HOLD_RELEASED");
    // Releasing a lapsed hold answers "expired".
    let lapsing = reserve(&mut c, "u", 10, "r2", 5).await.unwrap();
    app.advance(Duration::seconds(10));
    let lapsed = release(&mut c, &lapsing.hold_id).await;
    assert_eq!(lapsed.hold.unwrap().state, pb::HoldState::Expired as i32);
    let missing = c
        .release_hold(with_key(
            USAGE_KEY,
            pb::ReleaseHoldRequest {
                hold_id: "999999".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.assert_verified().await;
}

#[tokio::test]
async fn extending_a_hold_holds_more_and_longer() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1000, "g"))).await.unwrap();
    let hold = reserve(&mut c, "u", 400, "r", 60).await.unwrap();
    let extend = |add: i64, secs: i64, key: &str| pb::ExtendHoldRequest {
        hold_id: hold.hold_id.clone(),
        ttl: ttl(secs),
        add_tokens: add,
        idempotency_key: key.into(),
    };
    let err = c
        .extend_hold(with_key(USAGE_KEY, extend(601, 60, "e0")))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_BALANCE");
    let grown = c
        .extend_hold(with_key(USAGE_KEY, extend(200, 600, "e1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.hold.as_ref().unwrap().tokens, 600);
    assert_eq!(grown.available, 400);
    // A retry under the same key does not hold the tokens twice.
    let replay = c
        .extend_hold(with_key(USAGE_KEY, extend(200, 600, "e1")))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(figures(&mut c, "u").await, (1000, 600, 400));
    // Past the first expiry, the extended hold still holds.
    app.advance(Duration::seconds(120));
    assert_eq!(figures(&mut c, "u").await, (1000, 600, 400));
    app.advance(Duration::seconds(600));
    assert_eq!(figures(&mut c, "u").await, (1000, 0, 1000));
    let err = c
        .extend_hold(with_key(USAGE_KEY, extend(0, 60, "e2")))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "HOLD_EXPIRED");
    app.assert_verified().await;
}

#[tokio::test]
async fn cap_holds_what_is_left_and_limits_apply() {
    let app = TestApp::spawn_with(TestOptions {
        holds_per_account_max: 3,
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 250, "g"))).await.unwrap();
    let capped = c
        .reserve(with_key(
            USAGE_KEY,
            pb::ReserveRequest {
                user_id: "u".into(),
                tokens: 1000,
                idempotency_key: "cap".into(),
                overage: pb::Overage::Cap as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((capped.held, capped.available), (250, 0));
    let err = c
        .reserve(with_key(
            USAGE_KEY,
            pb::ReserveRequest {
                user_id: "u".into(),
                tokens: 1,
                idempotency_key: "cap2".into(),
                overage: pb::Overage::Cap as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_BALANCE");
    release(&mut c, &capped.hold_id).await;
    for i in 0..3 {
        reserve(&mut c, "u", 1, &format!("h{i}"), 60).await.unwrap();
    }
    let err = reserve(&mut c, "u", 1, "h3", 60).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Bad input: clear errors, nothing written.
    for (tokens, secs) in [(0, 60), (1, 0), (1, 86_401)] {
        let err = reserve(&mut c, "u", tokens, "bad", secs).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{tokens} {secs}");
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn debits_burn_lots_in_burn_order_and_expired_lots_never_count() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    grant_with(&mut c, "u", 200, "keep", None, 0).await;
    grant_with(&mut c, "u", 500, "soon", Some(now + Duration::hours(1)), 0).await;
    grant_with(&mut c, "u", 300, "later", Some(now + Duration::hours(2)), 0).await;
    grant_with(&mut c, "u", 50, "first", None, -5).await;
    usage(&mut c, "u", 150, "u1").await;
    // Priority -5 first (50), then the soonest expiry (100 of 500).
    let l = lots(&mut c, "u").await;
    let remaining: Vec<i64> = l.iter().map(|l| l.remaining).collect();
    assert_eq!(remaining, vec![400, 300, 200], "{l:?}");
    let b = balance(&mut c, "u").await;
    let next = b.next_expiry.unwrap();
    assert_eq!(next.tokens, 400);

    // An hour and a bit later the first lot has expired: not counted, though nothing was written.
    app.advance(Duration::minutes(61));
    assert_eq!(figures(&mut c, "u").await, (500, 0, 500));
    assert_eq!(balance(&mut c, "u").await.next_expiry.unwrap().tokens, 300);
    let expiry_rows = "SELECT count(*) FROM token_transactions WHERE transaction_type = 'expiry'";
    assert_eq!(app.count(expiry_rows).await, 0);
    // A write settles the account first: the expiry row is written, the usage burns the next lot.
    let u = usage(&mut c, "u", 100, "u2").await;
    assert_eq!(u.balance, 400);
    assert_eq!(app.count(expiry_rows).await, 1);
    let l = lots(&mut c, "u").await;
    assert_eq!(
        l.iter().map(|l| l.remaining).collect::<Vec<_>>(),
        vec![200, 200]
    );
    app.assert_verified().await;
}

/// Coalesced reads: a batch that holds an account past its settle instant answers it settled
/// (the expired lot not counted) and answers the batch's other accounts from their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_sharing_a_query_show_an_expired_lot_as_gone_and_other_accounts_as_they_are() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    grant_with(&mut c, "due", 200, "keep", None, 0).await;
    grant_with(
        &mut c,
        "due",
        500,
        "soon",
        Some(now + Duration::hours(1)),
        0,
    )
    .await;
    grant_with(&mut c, "plain", 300, "plain", None, 0).await;
    app.advance(Duration::minutes(61));
    // Many reads at once over several connections: while one query runs, the rest queue and
    // share the next ones, so batches hold both accounts.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(app.channel().await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..256 {
        let mut c = Client::new(channels[i % 8].clone());
        calls.spawn(async move {
            let user = if i % 2 == 0 { "due" } else { "plain" };
            (user, figures(&mut c, user).await)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (user, got) = done.unwrap();
        let want = if user == "due" {
            (200, 0, 200)
        } else {
            (300, 0, 300)
        };
        assert_eq!(got, want, "{user}");
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn a_lot_expiring_under_a_hold_keeps_the_held_part_until_the_hold_ends() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    grant_with(&mut c, "u", 100, "a", Some(now + Duration::hours(1)), 0).await;
    grant_with(&mut c, "u", 100, "b", None, 0).await;
    let hold = reserve(&mut c, "u", 150, "r", 3 * 3600).await.unwrap();
    app.advance(Duration::hours(2));
    // Lot a is fully held: nothing of it expires yet.
    assert_eq!(figures(&mut c, "u").await, (200, 150, 50));
    let released = release(&mut c, &hold.hold_id).await;
    // The held part of lot a expired with the hold; it never came back to available.
    assert_eq!((released.balance, released.available), (100, 100));
    assert_eq!(figures(&mut c, "u").await, (100, 0, 100));
    app.assert_verified().await;
}

#[tokio::test]
async fn debt_is_paid_by_the_next_credit_and_reversals_take_from_their_lot() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    usage(&mut c, "u", 300, "u1").await;
    assert_eq!(figures(&mut c, "u").await, (-300, 0, -300));
    grant_with(&mut c, "u", 500, "g", None, 0).await;
    assert_eq!(figures(&mut c, "u").await, (200, 0, 200));
    let l = lots(&mut c, "u").await;
    assert_eq!((l[0].granted, l[0].remaining), (500, 200));

    // Reversal: from its own lot first, the rest from other lots.
    let p = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "p", "pi_1")))
        .await
        .unwrap()
        .into_inner();
    usage(&mut c, "u", 100, "u2").await; // burns the grant lot (unpaid first): 200 → 100
    c.reverse(with_key(
        BILLING_KEY,
        pb::ReverseRequest {
            user_id: "u".into(),
            tokens: 2_000_000,
            idempotency_key: "rev".into(),
            original_transaction_id: p.transaction_id.clone(),
            source: pb::ReversalSource::Refund as i32,
            reason: "refund".into(),
            stripe_reference: String::new(),
        },
    ))
    .await
    .unwrap();
    let l = lots(&mut c, "u").await;
    assert_eq!(l.iter().map(|l| l.remaining).collect::<Vec<_>>(), vec![100]);
    assert_eq!(figures(&mut c, "u").await, (100, 0, 100));
    app.assert_verified().await;
}

#[tokio::test]
async fn rollover_carries_the_capped_part_of_the_previous_cycle() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let start = Utc::now() - Duration::days(1);
    let cycle = |n: i64, key: &str, rollover: Option<pb::Rollover>| {
        drip_cycle("u", 375_000, key, start + Duration::days(28 * n), rollover)
    };
    c.drip(with_key(BILLING_KEY, cycle(0, "d0", None)))
        .await
        .unwrap();
    usage(&mut c, "u", 75_000, "u1").await; // 300k unused
                                            // The renewal is paid a day before the previous cycle's tokens would expire.
    app.advance(Duration::days(27));
    let rollover = pb::Rollover {
        max_tokens: Some(100_000),
        max_percent: Some(50),
    };
    let d = c
        .drip(with_key(BILLING_KEY, cycle(1, "d1", Some(rollover))))
        .await
        .unwrap()
        .into_inner();
    // The previous cycle ended first: 200k expired, 100k carried, then the new 375k.
    assert_eq!(d.balance, 100_000 + 375_000);
    assert_eq!(figures(&mut c, "u").await, (100_000 + 375_000, 0, 475_000));
    let (carried, expired): (i64, i64) = sqlx::query_as(
        "SELECT carried_tokens, -token_amount FROM token_transactions WHERE source = 'rollover'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((carried, expired), (100_000, 200_000));
    let l = lots(&mut c, "u").await;
    assert_eq!(l.len(), 2);
    assert!(l.iter().any(|l| l.source == pb::LotSource::Rollover as i32
        && l.remaining == 100_000
        && l.expires_at == at(start + Duration::days(28 + 29))));
    app.assert_verified().await;
}

#[tokio::test]
async fn the_sweeper_writes_expiries_once() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    for user in ["a", "b", "c"] {
        grant_with(
            &mut c,
            user,
            100,
            &format!("g{user}"),
            Some(now + Duration::hours(1)),
            0,
        )
        .await;
        reserve(&mut c, user, 10, &format!("r{user}"), 60)
            .await
            .unwrap();
    }
    app.advance(Duration::hours(2));
    let ledger = token_ledger::ledger::Ledger::new(app.store.clone());
    let settled = token_ledger::ledger::sweeper::sweep_once(&ledger)
        .await
        .unwrap();
    assert_eq!(settled, 3);
    assert_eq!(
        token_ledger::ledger::sweeper::sweep_once(&ledger)
            .await
            .unwrap(),
        0
    );
    let expired: i64 = app
        .count("SELECT -sum(token_amount)::bigint FROM token_transactions WHERE transaction_type = 'expiry'")
        .await;
    assert_eq!(expired, 300);
    let lapsed = app
        .count("SELECT count(*) FROM token_holds WHERE state = 'expired'")
        .await;
    assert_eq!(lapsed, 3);
    for user in ["a", "b", "c"] {
        assert_eq!(figures(&mut c, user).await, (0, 0, 0));
    }
    app.assert_verified().await;
}

fn cli(app: &TestApp, args: &[&str]) -> serde_json::Value {
    let url = format!("http://{}", app.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
        .args(args)
        .args(["--ledger-url", &url, "--api-key", ADMIN_KEY, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reserves_commits_releases_and_lists() {
    let app = TestApp::spawn().await;
    let expires = (Utc::now() + Duration::days(30)).to_rfc3339();
    cli(
        &app,
        &[
            "grant",
            "--user",
            "u",
            "--tokens",
            "1000",
            "--reason",
            "r",
            "--expires-at",
            &expires,
        ],
    );
    let hold = cli(
        &app,
        &[
            "reserve",
            "--user",
            "u",
            "--tokens",
            "300",
            "--ttl-secs",
            "60",
        ],
    );
    assert_eq!(
        hold["available"], "700",
        "canonical proto JSON: int64 as a string"
    );
    let hold_id = hold["hold_id"].as_str().unwrap().to_string();
    let holds = cli(&app, &["holds", "--user", "u"]);
    assert_eq!(holds["holds"][0]["hold_id"], hold_id.as_str());
    assert_eq!(holds["holds"][0]["state"], "HOLD_STATE_ACTIVE");
    let done = cli(
        &app,
        &["commit-hold", "--hold", &hold_id, "--tokens", "120"],
    );
    assert_eq!(done["balance"], "880");
    assert!(done["transaction_id"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let released = cli(&app, &["release-hold", "--hold", &hold_id]);
    assert_eq!(released["hold"]["state"], "HOLD_STATE_COMMITTED");
    let lots = cli(&app, &["lots", "--user", "u"]);
    assert_eq!(lots["lots"][0]["remaining"], "880");
    assert!(lots["lots"][0]["expires_at"].is_string());
    let balance = cli(&app, &["balance", "--user", "u"]);
    assert_eq!(balance["held"], "0");
    assert_eq!(balance["next_expiry"]["tokens"], "880");
}

#[tokio::test]
async fn the_balance_cache_follows_holds_and_expiry() {
    let app = TestApp::spawn_with(TestOptions {
        write: token_ledger::ledger::WriteConfig {
            balance_cache: true,
            ..Default::default()
        },
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;
    grant_with(
        &mut c,
        "u",
        600,
        "a",
        Some(Utc::now() + Duration::hours(1)),
        0,
    )
    .await;
    grant_with(&mut c, "u", 400, "b", None, 0).await;
    assert_eq!(figures(&mut c, "u").await, (1000, 0, 1000));
    // A hold moves no journal row: the cached figures must follow it anyway.
    let hold = reserve(&mut c, "u", 300, "r", 7200).await.unwrap();
    assert_eq!(figures(&mut c, "u").await, (1000, 300, 700));
    release(&mut c, &hold.hold_id).await;
    assert_eq!(figures(&mut c, "u").await, (1000, 0, 1000));
    // Past the lot's expiry, a cached balance is not served.
    app.advance(Duration::hours(2));
    assert_eq!(figures(&mut c, "u").await, (400, 0, 400));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_commit_spends_its_own_earmarks_even_on_a_lot_that_expired_meanwhile() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant_with(
        &mut c,
        "u",
        100,
        "a",
        Some(Utc::now() + Duration::hours(1)),
        0,
    )
    .await;
    grant_with(&mut c, "u", 50, "b", None, 0).await;
    let hold = reserve(&mut c, "u", 100, "r", 3 * 3600).await.unwrap();
    app.advance(Duration::hours(2));
    assert_eq!(figures(&mut c, "u").await, (150, 100, 50));
    // The call used 60 of its 100: taken from the held lot; the other 40 expire with the hold.
    let done = commit(&mut c, &hold.hold_id, 60, "c").await.unwrap();
    assert_eq!((done.balance, done.available), (90, 50));
    assert_eq!(figures(&mut c, "u").await, (50, 0, 50));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_commit_takes_the_earmarked_amounts_then_burn_order() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant_with(&mut c, "u", 10, "b", None, -10).await;
    grant_with(&mut c, "u", 1000, "a", None, 0).await;
    let hold = reserve(&mut c, "u", 20, "r", 600).await.unwrap(); // b:10, a:10
    grant_with(&mut c, "u", 100, "c", None, -5).await;
    commit(&mut c, &hold.hold_id, 200, "k").await.unwrap();
    // 20 from the earmarks, then c (priority -5) 100, then a 80.
    let l = lots(&mut c, "u").await;
    let by_priority: Vec<(i32, i64)> = l.iter().map(|l| (l.priority, l.remaining)).collect();
    assert_eq!(by_priority, vec![(0, 910)]);
    // The replay answers the original balance and today's available.
    reserve(&mut c, "u", 500, "r2", 600).await.unwrap();
    let replay = commit(&mut c, &hold.hold_id, 200, "k").await.unwrap();
    assert!(replay.replayed);
    assert_eq!((replay.balance, replay.available), (910, 410));
    app.assert_verified().await;
}

#[tokio::test]
async fn a_fully_held_expired_lot_does_not_keep_the_sweeper_busy() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant_with(
        &mut c,
        "u",
        100,
        "a",
        Some(Utc::now() + Duration::hours(1)),
        0,
    )
    .await;
    let hold = reserve(&mut c, "u", 100, "r", 3 * 3600).await.unwrap();
    app.advance(Duration::hours(2));
    let ledger = token_ledger::ledger::Ledger::new(app.store.clone());
    use token_ledger::ledger::sweeper::sweep_once;
    // Nothing of the lot can expire while its hold holds it all: nothing is due.
    assert_eq!(sweep_once(&ledger).await.unwrap(), 0);
    // Only-extending a hold needs nothing available, even below zero.
    usage(&mut c, "u", 10, "u1").await;
    assert_eq!(figures(&mut c, "u").await, (90, 100, -10));
    c.extend_hold(with_key(
        USAGE_KEY,
        pb::ExtendHoldRequest {
            hold_id: hold.hold_id.clone(),
            ttl: ttl(3600),
            add_tokens: 0,
            idempotency_key: "e".into(),
        },
    ))
    .await
    .unwrap();
    app.advance(Duration::hours(2));
    assert_eq!(sweep_once(&ledger).await.unwrap(), 1);
    assert_eq!(sweep_once(&ledger).await.unwrap(), 0);
    assert_eq!(figures(&mut c, "u").await, (-10, 0, -10));
    app.assert_verified().await;
}

#[tokio::test]
async fn an_expired_credit_pays_no_debt_and_a_late_old_cycle_ends_nothing() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    usage(&mut c, "u", 100, "u1").await;
    // Credited already expired (a late delivery): it expires at once and pays no debt.
    grant_with(
        &mut c,
        "u",
        100,
        "late",
        Some(Utc::now() - Duration::hours(1)),
        0,
    )
    .await;
    assert_eq!(figures(&mut c, "u").await, (-100, 0, -100));
    let drip = |key: &str, start: chrono::DateTime<Utc>, rollover: bool| {
        let cap = pb::Rollover {
            max_tokens: Some(0),
            max_percent: None,
        };
        drip_cycle("v", 1000, key, start, rollover.then_some(cap))
    };
    let now = Utc::now();
    c.drip(with_key(
        BILLING_KEY,
        drip("d2", now - Duration::days(1), true),
    ))
    .await
    .unwrap();
    // The previous cycle arrives late, with rollover: it must not end the current cycle.
    c.drip(with_key(
        BILLING_KEY,
        drip("d1", now - Duration::days(29), true),
    ))
    .await
    .unwrap();
    let b = balance(&mut c, "v").await;
    assert!(b.balance >= 1000, "the current cycle survived: {b:?}");
    let l = lots(&mut c, "v").await;
    assert!(l
        .iter()
        .any(|l| l.remaining == 1000 && l.expires_at == at(now + Duration::days(28))));
    app.assert_verified().await;
}

async fn overview(
    c: &mut Client,
    m: pb::GetOverviewRequest,
) -> Result<pb::GetOverviewResponse, Status> {
    c.get_overview(with_key(READ_KEY, m))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_overview_sums_the_liability_and_each_days_movements_in_one_snapshot() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    // heavy: 1,000 credited, 700 used in two calls, 50 held; light: 500 credited in two lots,
    // 300 used (the soonest-expiring lot of 200 burns first, so nothing is left to expire);
    // over: 100 credited, 30 deducted, 220 used (overdrawn by 150).
    grant_with(&mut c, "heavy", 1_000, "g-heavy", None, 0).await;
    usage(&mut c, "heavy", 400, "u-heavy-1").await;
    usage(&mut c, "heavy", 300, "u-heavy-2").await;
    grant_with(
        &mut c,
        "light",
        200,
        "g-light-exp",
        Some(now + Duration::hours(1)),
        0,
    )
    .await;
    grant_with(&mut c, "light", 300, "g-light", None, 0).await;
    usage(&mut c, "light", 300, "u-light").await;
    grant_with(&mut c, "over", 100, "g-over", None, 0).await;
    c.deduct(admin(pb::DeductRequest {
        user_id: "over".into(),
        tokens: 30,
        idempotency_key: "d-over".into(),
        reason: "correction".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    usage(&mut c, "over", 220, "u-over").await;
    reserve(&mut c, "heavy", 50, "r-heavy", 86_400)
        .await
        .unwrap();
    app.advance(Duration::hours(2));
    let ledger = token_ledger::ledger::Ledger::new(app.store.clone());
    token_ledger::ledger::sweeper::sweep_once(&ledger)
        .await
        .unwrap();

    let o = overview(&mut c, pb::GetOverviewRequest::default())
        .await
        .unwrap();
    // heavy 300 left, light 200, over −150.
    assert_eq!(o.tokens_outstanding, 300 + 200);
    assert_eq!(o.tokens_overdrawn, 150);
    assert_eq!(o.tokens_held, 50);
    assert_eq!(o.accounts, 3);
    assert_eq!(o.days.len(), 30, "the default window");
    let sum = |f: fn(&pb::DayTotals) -> i64| o.days.iter().map(f).sum::<i64>();
    assert_eq!(sum(|d| d.credited), 1_000 + 500 + 100);
    assert_eq!(sum(|d| d.used), 700 + 300 + 220);
    assert_eq!(sum(|d| d.deducted), 30);
    assert_eq!(
        sum(|d| d.expired),
        0,
        "nothing was left of the expiring lot"
    );
    let today = (Utc::now() + Duration::hours(2)).date_naive();
    let last = &o.days.last().unwrap().day;
    assert!(
        [today, today.pred_opt().unwrap()]
            .iter()
            .any(|d| d.format("%Y-%m-%d").to_string() == *last),
        "{last} is today (or yesterday, across midnight)"
    );
    let users: Vec<(&str, i64, i64)> = o
        .top_users
        .iter()
        .map(|u| (u.user_id.as_str(), u.used, u.events))
        .collect();
    assert_eq!(
        users,
        [("heavy", 700, 2), ("light", 300, 1), ("over", 220, 1)]
    );
    assert_eq!(o.top_users[2].balance, -150);
    app.assert_verified().await;

    // Fewer top users, a shorter window, and days on either side of the date line.
    let o1 = overview(
        &mut c,
        pb::GetOverviewRequest {
            days: 1,
            top_users: 1,
            time_zone: "Pacific/Kiritimati".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!((o1.days.len(), o1.top_users.len()), (1, 1));
    let o2 = overview(
        &mut c,
        pb::GetOverviewRequest {
            days: 2,
            time_zone: "Pacific/Pago_Pago".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        o1.days[0].day > o2.days[1].day,
        "UTC+14 is a day ahead of UTC−11"
    );
}

#[tokio::test]
async fn the_overview_counts_expired_tokens_on_the_day_they_expired() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let now = Utc::now();
    grant_with(&mut c, "x", 1_000, "g-x", Some(now + Duration::hours(1)), 0).await;
    usage(&mut c, "x", 100, "u-x").await;
    app.advance(Duration::hours(2));
    let ledger = token_ledger::ledger::Ledger::new(app.store.clone());
    assert_eq!(
        token_ledger::ledger::sweeper::sweep_once(&ledger)
            .await
            .unwrap(),
        1
    );
    let o = overview(&mut c, pb::GetOverviewRequest::default())
        .await
        .unwrap();
    let expired: i64 = o.days.iter().map(|d| d.expired).sum();
    assert_eq!(expired, 900);
    assert_eq!(o.tokens_outstanding, 0);
}

#[tokio::test]
async fn a_bad_overview_request_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    for (m, field) in [
        (
            pb::GetOverviewRequest {
                days: 367,
                ..Default::default()
            },
            "days",
        ),
        (
            pb::GetOverviewRequest {
                days: -1,
                ..Default::default()
            },
            "days",
        ),
        (
            pb::GetOverviewRequest {
                top_users: -1,
                ..Default::default()
            },
            "top_users",
        ),
        (
            pb::GetOverviewRequest {
                time_zone: "Mars/Olympus_Mons".into(),
                ..Default::default()
            },
            "time_zone",
        ),
        (
            pb::GetOverviewRequest {
                time_zone: "UTC'; DROP TABLE accounts; --".into(),
                ..Default::default()
            },
            "time_zone",
        ),
    ] {
        let err = overview(&mut c, m).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field);
    }
    let denied = c
        .get_overview(with_key(USAGE_KEY, pb::GetOverviewRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
