//! Upgrading a ledger with data: a database at migration 0005 (before lots, holds and hashed
//! keys) with a grant, its key and a usage row, migrated to the latest schema, then served: the
//! old key still replays and still conflicts, the balance became an opening lot, the key text is
//! still shown, and `verify` passes.

mod common;

use std::borrow::Cow;

use common::*;
use sqlx::migrate::Migrator;
use token_ledger::domain::build::{Common, Grant};
use token_ledger::domain::{Actor, GrantSource};
use token_ledger::pb;
use token_ledger::store::MIGRATOR;
use tonic::Code;

#[tokio::test]
async fn a_ledger_with_data_upgrades_and_keeps_its_keys() {
    let db = TestDb::empty().await;
    let pool = db.pool().await;
    let before_lots = Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version <= 5)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before_lots.run(&pool).await.unwrap();

    // What the 0005 ledger wrote for: Grant u 1000 (key "g1"), then usage 100 (key "u1").
    let grant = Grant {
        common: Common {
            user_id: "u".into(),
            tokens: 1000,
            idempotency_key: "g1".into(),
        },
        source: Some(GrantSource::Admin),
        reason: "welcome".into(),
        stripe_subscription_id: String::new(),
        stripe_invoice_id: String::new(),
    }
    .build(Actor::new("key:ops"))
    .unwrap();
    for sql in [
        "INSERT INTO accounts (user_id, balance, last_seq, granted_total, used_total) \
         VALUES ('u', 900, 2, 1000, 100)",
        "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
         token_amount, balance_after, reason, created_by) \
         SELECT 1, account_id, 1, 'grant', 'admin', 1000, 1000, 'welcome', 'key:ops' FROM accounts",
        "INSERT INTO token_usage (id, account_id, entry_seq, token_amount, balance_after, model, \
         created_by) SELECT 2, account_id, 2, -100, 900, 'm', 'key:ai' FROM accounts",
        "SELECT setval('ledger_entry_id_seq', 2)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, entry_id) \
         VALUES ('g1', $1, 1), ('u1', $2, 2)",
    )
    .bind(grant.fingerprint().to_vec())
    .bind(vec![7u8; 16])
    .execute(&pool)
    .await
    .unwrap();

    MIGRATOR.run(&pool).await.unwrap();
    pool.close().await;
    let app = TestApp::spawn_with(TestOptions {
        database_url: Some(db.url()),
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;

    // The old key replays the old grant, and conflicts with another request.
    let replay = c
        .grant(admin(grant_req_with_reason("u", 1000, "g1", "welcome")))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        (replay.transaction_id.as_str(), replay.balance),
        ("1", 1000)
    );
    let conflict = c
        .grant(admin(grant_req_with_reason("u", 5, "g1", "welcome")))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let reused = c
        .track_usage(admin(usage_req("u", 5, "u1")))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);

    // The balance became an opening lot; the grant's key is still shown.
    let lots = c
        .list_lots(admin(pb::ListLotsRequest {
            user_id: "u".into(),
            include_spent: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .lots;
    assert_eq!(lots.len(), 1);
    assert_eq!(lots[0].source, pb::LotSource::Opening as i32);
    assert_eq!(lots[0].remaining, 900);
    let usage = c
        .track_usage(admin(usage_req("u", 50, "u2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.balance, 850);
    let page = c
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let grant_row = page.transactions.iter().find(|t| t.id == "1").unwrap();
    assert_eq!(grant_row.idempotency_key, "g1");
    // Migration 0012: percentage alert thresholds start from the account's latest credit, and
    // the rollups of 0011 hold the usage written before them.
    let upgraded = db.pool().await;
    let last_credit: i64 =
        sqlx::query_scalar("SELECT last_credit FROM accounts WHERE user_id = 'u'")
            .fetch_one(&upgraded)
            .await
            .unwrap();
    assert_eq!(last_credit, 1_000);
    app.assert_verified().await;
}

fn grant_req_with_reason(user: &str, tokens: i64, key: &str, reason: &str) -> pb::GrantRequest {
    pb::GrantRequest {
        reason: reason.into(),
        ..grant_req(user, tokens, key)
    }
}
