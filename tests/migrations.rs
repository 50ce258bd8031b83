//! Upgrading a ledger with data: a database at migration 0005 (before lots, holds and hashed
//! keys) with a grant, its key and a usage row, migrated to the latest schema, then served: the
//! old key still replays and still conflicts, the balance became an opening lot, the key text is
//! still shown, and `verify` passes. And a database at 0013 with Stripe credits (a purchase, an
//! annual grant, a drip) migrated to 0014's shard-ready keys: the directory and the business keys
//! are carried over, the old credits still replay and still refuse another user, and new
//! accounts get ids past the old ones.
//!
//! These tests build their own schema from the migrations: the hash-partitioned variant
//! (`TOKEN_LEDGER_TEST_SCHEMA`, tests/common) does not apply to them, and they skip under it.

mod common;

use std::borrow::Cow;

use common::*;
use sqlx::migrate::Migrator;
use token_ledger::domain::build::{Common, Grant};
use token_ledger::domain::{Actor, GrantSource};
use token_ledger::pb;
use token_ledger::store::MIGRATOR;
use tonic::Code;

/// Whether this run is the hash-partitioned variant's, which these tests do not test: said once
/// per test, so a skip is never silent.
fn skipped_in_variant() -> bool {
    if hash_partitioned() {
        eprintln!(
            "skipped: a migration test builds its own schema; the hash-partitioned variant \
             converts the migrated template only"
        );
        return true;
    }
    false
}

/// A migrator of the migrations up to `version`.
fn migrator_until(version: i64) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

#[tokio::test]
async fn a_ledger_with_data_upgrades_and_keeps_its_keys() {
    if skipped_in_variant() {
        return;
    }
    let db = TestDb::empty().await;
    let pool = db.pool().await;
    migrator_until(5).run(&pool).await.unwrap();

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

#[tokio::test]
async fn stripe_credits_keep_their_business_keys_through_the_shard_ready_migration() {
    if skipped_in_variant() {
        return;
    }
    let db = TestDb::empty().await;
    let pool = db.pool().await;
    migrator_until(13).run(&pool).await.unwrap();
    // What the 0013 ledger wrote for user u: a purchase of 2,000,000 (payment intent pi_old), an
    // annual grant of 300 (invoice in_old) and a drip of 375,000 (sub_old, January), one lot
    // each, as the requests below would have; ids 1-3 are the journal's, 4-6 the lots'.
    for sql in [
        "INSERT INTO accounts (user_id, balance, last_seq, granted_total, purchased_total, \
           dripped_total, last_credit) VALUES ('u', 2375300, 3, 300, 2000000, 375000, 375000)",
        "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
           token_amount, balance_after, created_by, amount_paid_cents, currency, \
           stripe_payment_intent_id, stripe_checkout_session_id, pack) \
         SELECT 1, account_id, 1, 'purchase', 'token_pack', 2000000, 2000000, 'key:billing', 9900, \
           'usd', 'pi_old', 'cs_test_1', 'pack_2m' FROM accounts",
        "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
           token_amount, balance_after, created_by, stripe_invoice_id, reason) \
         SELECT 2, account_id, 2, 'grant', 'annual_subscription', 300, 2000300, 'key:billing', \
           'in_old', 'support credit' FROM accounts",
        "INSERT INTO token_drips (id, account_id, entry_seq, token_amount, balance_after, \
           stripe_subscription_id, stripe_invoice_id, period_start, period_end, created_by) \
         SELECT 3, account_id, 3, 375000, 2375300, 'sub_old', 'in_d-new', \
           '2026-01-01T00:00:00Z', '2026-01-29T00:00:00Z', 'key:billing' FROM accounts",
        "INSERT INTO token_lots (lot_id, account_id, source, paid, stripe_subscription_id, \
           granted, remaining, created_at) \
         SELECT l, account_id, s, p, sub, t, t, now() FROM accounts, (VALUES \
           (4, 'purchase', true, NULL, 2000000), (5, 'grant', true, NULL, 300), \
           (6, 'drip', true, 'sub_old', 375000)) AS v(l, s, p, sub, t)",
        "SELECT setval('ledger_entry_id_seq', 6)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let old_account: i64 = sqlx::query_scalar("SELECT account_id FROM accounts")
        .fetch_one(&pool)
        .await
        .unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    // Carried over: the directory entry, and one business key per credit, pointing at its row.
    let directory: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, account_id FROM account_directory")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(directory, vec![("u".to_string(), old_account)]);
    let keys: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT kind, key, account_id, transaction_id FROM business_keys ORDER BY transaction_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        vec![
            ("payment_intent".into(), "pi_old".into(), old_account, 1),
            ("annual_invoice".into(), "in_old".into(), old_account, 2),
            (
                "subscription_period".into(),
                "sub_old".into(),
                old_account,
                3
            ),
        ]
    );
    pool.close().await;

    let app = TestApp::spawn_with(TestOptions {
        database_url: Some(db.url()),
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;
    // The old credits replay under new keys, and refuse another user.
    let purchase = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "p-new", "pi_old")))
        .await
        .unwrap()
        .into_inner();
    assert!(purchase.replayed);
    assert_eq!(purchase.transaction_id, "1");
    let intruder = c
        .record_purchase(with_key(BILLING_KEY, purchase_req("v", "p-v", "pi_old")))
        .await
        .unwrap_err();
    assert_eq!(intruder.code(), Code::AlreadyExists);
    let annual = c
        .grant(with_key(
            BILLING_KEY,
            pb::GrantRequest {
                source: pb::GrantSource::AnnualSubscription as i32,
                stripe_invoice_id: "in_old".into(),
                ..grant_req("u", 300, "a-new")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(annual.replayed);
    assert_eq!(annual.transaction_id, "2");
    let drip = c
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d-new", "sub_old", "2026-01-01T00:00:00Z"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(drip.replayed);
    assert_eq!(drip.transaction_id, "3");
    assert_eq!(balance_of(&mut c, "u").await, 2_375_300);

    // A new user gets a new account id, past the old ones, and a directory entry.
    c.grant(admin(grant_req("w", 10, "g-w"))).await.unwrap();
    let upgraded = db.pool().await;
    let new_account: i64 =
        sqlx::query_scalar("SELECT account_id FROM account_directory WHERE user_id = 'w'")
            .fetch_one(&upgraded)
            .await
            .unwrap();
    assert!(
        new_account > old_account,
        "{new_account} after {old_account}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM accounts WHERE user_id = 'v'")
            .await,
        0,
        "the refused purchase left no account"
    );
    app.assert_verified().await;
}

/// The columns every write updates are in no index, partial-index predicates included: an
/// update that changes an indexed column cannot stay on its page (no HOT update) and writes a new
/// entry in every index of its table. A burn changes a lot's `remaining` and `held` (0012's
/// expiring-soon index once named `remaining` in its predicate: 0017); every batch moves its
/// accounts' balance, totals, sequence and alert state; every usage event adds to a rollup.
#[tokio::test]
async fn the_columns_every_write_updates_are_in_no_index() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let hot: [(&str, &[&str]); 3] = [
        ("token_lots", &["remaining", "held"]),
        (
            "accounts",
            &[
                "balance",
                "last_seq",
                "granted_total",
                "deducted_total",
                "purchased_total",
                "dripped_total",
                "used_total",
                "reversed_total",
                "expired_total",
                "updated_at",
                "held",
                "debt",
                "active_holds",
                "last_credit",
                "alert_low",
                "alert_depleted",
            ],
        ),
        (
            "usage_rollups",
            &[
                "events",
                "tokens",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
            ],
        ),
    ];
    for (table, columns) in hot {
        // Every index of the table (of each partition, in the hash-partitioned variant), with
        // the columns its keys, expressions and predicate use.
        let indexed: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, a.attname::text \
               FROM pg_index i \
               JOIN pg_class t ON t.oid = i.indrelid \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 \
              WHERE (t.oid = $1::regclass \
                     OR t.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)) \
                AND (a.attnum = ANY (i.indkey::int2[]) \
                     OR pg_get_expr(i.indpred, i.indrelid) ~ ('\\m' || a.attname || '\\M') \
                     OR pg_get_expr(i.indexprs, i.indrelid) ~ ('\\m' || a.attname || '\\M'))",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!indexed.is_empty(), "{table} has indexes");
        for (index, column) in indexed {
            assert!(
                !columns.contains(&column.as_str()),
                "{index} uses {table}.{column}, which every write updates: those updates could not stay HOT"
            );
        }
    }
    pool.close().await;
}
