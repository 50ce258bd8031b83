//! Concurrent writers never lose an update, never overdraw a deduction, and leave
//! `balance = Σ journal` behind.

mod common;

use common::*;
use token_ledger::pb;
use token_ledger::store::Store;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_tasks_tracking_usage_on_one_account_lose_no_update() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("hot", 1_000_000, "seed")))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for task in 0..32 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let tokens = 1 + (task * 200 + i) % 7;
                c.track_usage(with_key(
                    USAGE_KEY,
                    usage_req("hot", tokens, &format!("t{task}-{i}")),
                ))
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let expected_used: i64 = (0..32 * 200).map(|n| 1 + n % 7).sum();
    assert_eq!(
        balance_of(&mut client, "hot").await,
        1_000_000 - expected_used
    );
    assert_eq!(app.count("SELECT count(*) FROM token_usage").await, 6_400);
    assert_eq!(
        app.count("SELECT count(DISTINCT entry_seq) FROM token_usage")
            .await,
        6_400
    );
    let report = Store::from_pool(app.pool.clone()).verify().await.unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deductions_never_take_the_balance_below_zero() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    client
        .grant(admin(grant_req("u", 1_000, "seed")))
        .await
        .unwrap();

    // 40 deductions of 30 against 1,000: exactly 33 fit.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            c.deduct(admin(pb::DeductRequest {
                user_id: "u".into(),
                tokens: 30,
                idempotency_key: format!("d{i}"),
                reason: "load".into(),
                ..Default::default()
            }))
            .await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert!(r.into_inner().balance >= 0);
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (33, 7));
    assert_eq!(balance_of(&mut client, "u").await, 10);
    let min_after: i64 = sqlx::query_scalar("SELECT min(balance_after) FROM token_transactions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(min_after >= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_write_sent_concurrently_is_applied_once() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    // Ten racers with one idempotency key, ten with ten keys but one payment intent.
    for i in 0..20 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            if i < 10 {
                c.grant(admin(grant_req("u", 100, "same-key")))
                    .await
                    .map(|r| r.into_inner().transaction_id)
            } else {
                c.record_purchase(with_key(
                    BILLING_KEY,
                    purchase_req("u", &format!("k{i}"), "pi_race"),
                ))
                .await
                .map(|r| r.into_inner().transaction_id)
            }
        }));
    }
    let mut grant_ids = std::collections::HashSet::new();
    let mut purchase_ids = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let id = t.await.unwrap().expect("every racer gets the one result");
        if i < 10 {
            grant_ids.insert(id)
        } else {
            purchase_ids.insert(id)
        };
    }
    assert_eq!((grant_ids.len(), purchase_ids.len()), (1, 1));
    let mut client = app.client().await;
    assert_eq!(balance_of(&mut client, "u").await, 100 + 2_000_000);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_concurrent_load_over_many_accounts_verifies_clean() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let user = format!("user-{}", (task * 7 + i) % 10);
                let key = format!("m{task}-{i}");
                let result = match i % 4 {
                    0 => c
                        .grant(admin(grant_req(&user, 100, &key)))
                        .await
                        .map(|_| ()),
                    1 | 2 => c
                        .track_usage(with_key(USAGE_KEY, usage_req(&user, 30, &key)))
                        .await
                        .map(|_| ()),
                    _ => c
                        .deduct(admin(pb::DeductRequest {
                            user_id: user,
                            tokens: 20,
                            idempotency_key: key,
                            reason: "r".into(),
                            ..Default::default()
                        }))
                        .await
                        .map(|_| ()),
                };
                if let Err(s) = result {
                    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = Store::from_pool(app.pool.clone()).verify().await.unwrap();
    assert_eq!(report.accounts_checked, 10);
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
}
