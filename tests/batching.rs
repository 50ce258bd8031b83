//! The group-commit write path: correctness, not speed. Mixed writes sharing batches end exactly
//! where a one-at-a-time model says; the queue bound answers RESOURCE_EXHAUSTED; a batch whose
//! commit fails leaves nothing behind; batch max 1 and the default give identical results.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::*;
use token_ledger::domain::{build, Actor, GrantSource, Receipt};
use token_ledger::error::LedgerError;
use token_ledger::ledger::{Ledger, WriteConfig};
use token_ledger::pb;
use token_ledger::store::{Store, StoreConfig};
use tonic::Code;

fn config(batch_max: usize, writers: usize) -> WriteConfig {
    WriteConfig {
        batch_max,
        writers,
        ..WriteConfig::default()
    }
}

fn common(user: &str, tokens: i64, key: &str) -> build::Common {
    build::Common {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
    }
}

/// A deterministic mixed workload: credits, usage, deductions (some refused against the running
/// balance), replays, conflicting replays, business keys repeated under other keys, reversals.
fn mixed_commands() -> Vec<token_ledger::domain::WriteCommand> {
    let a = || Actor::new("key:test");
    let grant = |u: &str, t: i64, k: &str| {
        build::Grant {
            common: common(u, t, k),
            source: Some(GrantSource::Admin),
            reason: "r".into(),
            stripe_subscription_id: String::new(),
            stripe_invoice_id: String::new(),
        }
        .build(a())
        .unwrap()
    };
    let usage = |u: &str, t: i64, k: &str, m: &str| {
        build::Usage {
            common: common(u, t, k),
            call: build::CallInput {
                model: m.into(),
                input_tokens: 1,
                output_tokens: 1,
                ..Default::default()
            },
        }
        .build(a())
        .unwrap()
    };
    let deduct = |u: &str, t: i64, k: &str| {
        build::Deduction {
            common: common(u, t, k),
            reason: "r".into(),
            allow_negative: false,
        }
        .build(a())
        .unwrap()
    };
    let purchase = |u: &str, k: &str, pi: &str| {
        build::Purchase {
            common: common(u, 500, k),
            amount_paid_cents: 9_900,
            currency: "usd".into(),
            stripe_payment_intent_id: pi.into(),
            stripe_checkout_session_id: String::new(),
            pack: String::new(),
        }
        .build(a())
        .unwrap()
    };
    let drip = |u: &str, k: &str, day: u32| {
        let start = Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap();
        build::Drip {
            common: common(u, 300, k),
            stripe_subscription_id: "sub_1".into(),
            stripe_invoice_id: String::new(),
            period_start: Some(start),
            period_end: Some(start + chrono::Duration::days(28)),
        }
        .build(a())
        .unwrap()
    };
    vec![
        grant("alice", 1_000, "k1"),
        usage("alice", 300, "k2", "m"),
        deduct("alice", 800, "k3"),         // refused: 700 left
        deduct("alice", 700, "k4"),         // fits exactly: 0 left
        usage("alice", 50, "k5", "m"),      // overdraws: -50
        grant("alice", 1_000, "k1"),        // replay of k1 (in the same batch)
        usage("alice", 300, "k2", "other"), // conflicting replay of k2
        deduct("bob", 1, "k6"),             // refused: unknown user, balance 0
        purchase("bob", "k7", "pi_1"),
        purchase("bob", "k8", "pi_1"), // the same payment intent under another key: replay
        purchase("carol", "k9", "pi_1"), // the same payment intent for someone else: conflict
        drip("carol", "k10", 1),
        drip("carol", "k11", 1),  // the same period under another key: replay
        drip("carol", "k12", 29), // the next period: a credit
        deduct("carol", 600, "k13"),
        deduct("carol", 1, "k3"), // k3 was refused above, so it is free: evaluated afresh, refused (0 left)
        usage("dave", 10, "k14", "m"),
        deduct("alice", 1, "k6"), // k6 was refused for bob: free again, refused again for alice (-50)
    ]
}

fn summarize(r: &Result<Receipt, LedgerError>) -> String {
    match r {
        Ok(r) => format!("ok balance={} replayed={}", r.balance, r.replayed),
        Err(LedgerError::InsufficientBalance { .. }) => "err FailedPrecondition".into(),
        Err(LedgerError::IdempotencyConflict { .. } | LedgerError::BusinessKeyConflict { .. }) => {
            "err AlreadyExists".into()
        }
        Err(other) => format!("err {other}"),
    }
}

async fn run_ledger(
    write: WriteConfig,
    cmds: Vec<token_ledger::domain::WriteCommand>,
) -> (Vec<String>, Vec<(String, i64)>, TestDb) {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&StoreConfig {
        database_url: db.url(),
        pool_connections_max: 8,
        pool_acquire_timeout: Duration::from_secs(5),
    })
    .unwrap();
    let ledger = Ledger::with_config(store.clone(), write);
    let results = ledger.write_many(cmds).await;
    let summary: Vec<String> = results.iter().map(summarize).collect();
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, balance FROM accounts ORDER BY user_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let report = store.verify().await.unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    store.close().await;
    (summary, balances, db)
}

#[tokio::test]
async fn mixed_writes_in_one_batch_match_the_one_at_a_time_model() {
    let (summary, balances, _db) = run_ledger(config(512, 1), mixed_commands()).await;
    let expected = [
        "ok balance=1000 replayed=false",
        "ok balance=700 replayed=false",
        "err FailedPrecondition",
        "ok balance=0 replayed=false",
        "ok balance=-50 replayed=false",
        "ok balance=1000 replayed=true",
        "err AlreadyExists",
        "err FailedPrecondition",
        "ok balance=500 replayed=false",
        "ok balance=500 replayed=true",
        "err AlreadyExists",
        "ok balance=300 replayed=false",
        "ok balance=300 replayed=true",
        "ok balance=600 replayed=false",
        "ok balance=0 replayed=false",
        "err FailedPrecondition",
        "ok balance=-10 replayed=false",
        "err FailedPrecondition",
    ];
    assert_eq!(summary, expected);
    assert_eq!(
        balances,
        vec![
            ("alice".to_string(), -50),
            ("bob".to_string(), 500),
            ("carol".to_string(), 0),
            ("dave".to_string(), -10)
        ]
    );
}

#[tokio::test]
async fn batch_max_one_and_the_default_give_identical_results() {
    let (one_at_a_time, balances_1, _db1) = run_ledger(config(1, 1), mixed_commands()).await;
    let (batched, balances_n, _db2) = run_ledger(config(512, 1), mixed_commands()).await;
    assert_eq!(one_at_a_time, batched);
    assert_eq!(balances_1, balances_n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_mixed_load_ends_where_the_model_says() {
    let app = TestApp::spawn().await;
    let users = ["u0", "u1", "u2", "u3"];
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            let mut codes: HashMap<String, Code> = HashMap::new();
            for i in 0..40 {
                let user = users[(t + i) % 4];
                let key = format!("t{t}-{i}");
                let result: Result<(), tonic::Status> = match i % 8 {
                    // Usage, sent twice in a row with the same key: recorded once.
                    0 | 1 => c
                        .track_usage(with_key(
                            USAGE_KEY,
                            // Both deliveries name the same user: (t + i / 8) is the same for i, i + 1.
                            usage_req(users[(t + i / 8) % 4], 7, &format!("use-{t}-{}", i / 8)),
                        ))
                        .await
                        .map(|_| ()),
                    2 => c.grant(admin(grant_req(user, 100, &key))).await.map(|_| ()),
                    // A deduction no balance here can cover: always refused.
                    3 => c
                        .deduct(admin(pb::DeductRequest {
                            user_id: user.into(),
                            tokens: 1_000_000_000,
                            idempotency_key: key.clone(),
                            reason: "r".into(),
                            ..Default::default()
                        }))
                        .await
                        .map(|_| ()),
                    // A conflicting replay: same key as a grant of another task's, other amount.
                    4 => c
                        .grant(admin(grant_req(
                            user,
                            999,
                            &format!("t{}-{}", (t + 1) % 16, i - 2),
                        )))
                        .await
                        .map(|_| ()),
                    // One payment intent per user, bought under many keys: credited once.
                    5 => c
                        .record_purchase(with_key(
                            BILLING_KEY,
                            purchase_req(user, &key, &format!("pi-{user}")),
                        ))
                        .await
                        .map(|_| ()),
                    _ => c
                        .track_usage(with_key(USAGE_KEY, usage_req(user, 3, &key)))
                        .await
                        .map(|_| ()),
                };
                codes.insert(
                    format!("{t}-{i}"),
                    result.err().map(|s| s.code()).unwrap_or(Code::Ok),
                );
            }
            codes
        }));
    }
    let mut codes = HashMap::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    // Every refused deduction is FAILED_PRECONDITION; every conflicting replay ALREADY_EXISTS
    // (or OK when it raced ahead of the grant it collides with, which is then the conflict).
    for (k, code) in &codes {
        let i: usize = k.split('-').nth(1).unwrap().parse().unwrap();
        match i % 8 {
            3 => assert_eq!(*code, Code::FailedPrecondition, "{k}"),
            4 | 2 => assert!(
                matches!(code, Code::Ok | Code::AlreadyExists),
                "{k}: {code:?}"
            ),
            _ => assert_eq!(*code, Code::Ok, "{k}"),
        }
    }
    // Each grant key (t, i%8==2) collides with exactly one conflicting write: one of each pair won.
    let grant_pairs = codes
        .iter()
        .filter(|(k, _)| k.split('-').nth(1).unwrap().parse::<usize>().unwrap() % 8 == 2)
        .count();
    let conflicts = codes
        .values()
        .filter(|c| **c == Code::AlreadyExists)
        .count();
    assert_eq!(
        conflicts, grant_pairs,
        "exactly one write of each colliding pair lost"
    );

    // The model, independent of order: usage keys counted once, 3-token usage once each, one
    // credit per grant key (100 or 999, whichever won), one purchase per user.
    let grants: i64 = sqlx::query_scalar("SELECT COALESCE(sum(token_amount), 0)::bigint FROM token_transactions WHERE transaction_type = 'grant'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let used_expected = 16 * 5 * 7 + 16 * 10 * 3;
    let total: i64 = sqlx::query_scalar("SELECT COALESCE(sum(balance), 0)::bigint FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(total, grants + 4 * 2_000_000 - used_expected);
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'grant'")
            .await,
        grant_pairs as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'purchase'")
            .await,
        4
    );
    assert_eq!(
        app.count("SELECT count(*) FROM token_transactions WHERE transaction_type = 'deduction'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM token_usage").await,
        16 * 5 + 16 * 10
    );
    let report = Store::from_pool(app.pool.clone()).verify().await.unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    let gaps: i64 = app
        .count("SELECT count(*) FROM accounts a WHERE last_seq <> (SELECT count(*) FROM (SELECT account_id FROM token_transactions UNION ALL SELECT account_id FROM token_drips UNION ALL SELECT account_id FROM token_usage) j WHERE j.account_id = a.account_id)")
        .await;
    assert_eq!(gaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_write_queue_answers_resource_exhausted() {
    const QUEUE_MAX: usize = 2;
    const CALLS: usize = 11;
    let app = TestApp::spawn_with(TestOptions {
        write: WriteConfig {
            batch_max: 1,
            writers: 1,
            queue_max: QUEUE_MAX,
            ..WriteConfig::default()
        },
        ..Default::default()
    })
    .await;
    // The one writer holds one write, blocked on a row lock.
    let (blocker, held) = block_the_writer(&app, "held-q").await;

    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..CALLS {
        let mut c = app.client().await;
        let answers = answers.clone();
        tokio::spawn(async move {
            let r = c
                .track_usage(with_key(USAGE_KEY, usage_req("held", 1, &format!("q{i}"))))
                .await;
            let _ = answers.send(r.map_err(|s| s.code()).map(|_| ()));
        });
    }
    // The queue takes QUEUE_MAX of them; every other call is turned away while the writer is
    // still blocked. Wait for those refusals themselves (no timing).
    let refusals = CALLS - QUEUE_MAX;
    for _ in 0..refusals {
        let answer = tokio::time::timeout(Duration::from_secs(30), answered.recv())
            .await
            .expect("a call past the queue's bound was not turned away")
            .unwrap();
        assert_eq!(answer, Err(Code::ResourceExhausted));
    }
    assert_eq!(app.count("SELECT count(*) FROM token_usage").await, 0);

    // Released, the held write and the queued ones commit.
    blocker.rollback().await.unwrap();
    held.await.unwrap().unwrap();
    for _ in 0..QUEUE_MAX {
        assert_eq!(answered.recv().await.unwrap(), Ok(()));
    }
    assert_eq!(
        app.count("SELECT count(*) FROM token_usage").await,
        1 + QUEUE_MAX as i64
    );
}

/// A single-threaded runtime: the server's handler queues all 51 events of the TrackUsageBatch
/// before the one writer task can run, so they form one batch.
#[tokio::test]
async fn a_write_that_fails_inside_postgresql_fails_alone_and_its_batch_neighbours_commit() {
    let app = TestApp::spawn_with(TestOptions {
        write: config(512, 1),
        ..Default::default()
    })
    .await;
    // A deferred trigger (test-only) that fails the transaction at COMMIT when it sees one
    // poisoned row: a failure the ledger's rules cannot foresee.
    sqlx::query(
        "CREATE FUNCTION explode_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.model = 'explode' THEN RAISE EXCEPTION 'boom at commit'; END IF; RETURN NULL; END $$",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE CONSTRAINT TRIGGER explode AFTER INSERT ON token_usage DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION explode_at_commit()",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    // 51 events, some users with several, the poisoned one in the middle of them.
    let mut events: Vec<pb::TrackUsageRequest> = (0..51)
        .map(|i| usage_req(&format!("v{}", i % 7), 10, &format!("e{i}")))
        .collect();
    events[23].model = "explode".into();
    let mut c = app.client().await;
    let results = c
        .track_usage_batch(with_key(USAGE_KEY, pb::TrackUsageBatchRequest { events }))
        .await
        .unwrap()
        .into_inner()
        .results;

    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.code != Code::Ok as i32)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, [23], "{results:?}");
    assert_eq!(results[23].code, Code::Internal as i32);
    // 50 journal rows and their 50 keys.
    assert_eq!(app.journal_rows().await, 100);
    // The poisoned write left nothing, not even its key: fixed, it applies under the same key.
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE key_hash = ledger_key_hash('e23')")
            .await,
        0
    );
    // Each account's rows still count 1, 2, 3, … in arrival order, and balances are exact.
    let report = token_ledger::store::Store::from_pool(app.pool.clone())
        .verify()
        .await
        .unwrap();
    assert!(report.discrepancies.is_empty(), "{report:?}");
    let v2: i64 = app
        .count("SELECT balance FROM accounts WHERE user_id = 'v2'")
        .await;
    // v2 had events 2, 9, 16, 23 (poisoned), 30, 37, 44: six of ten tokens each.
    assert_eq!(v2, -60);
}

/// Blocks the single writer: holds the row lock of `held`'s account and sends one write for it,
/// then waits until PostgreSQL shows that write waiting for the lock.
async fn block_the_writer(
    app: &TestApp,
    key: &str,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::TrackUsageResponse>, tonic::Status>>,
) {
    let mut c = app.client().await;
    c.grant(admin(grant_req("held", 10, &format!("seed-{key}"))))
        .await
        .unwrap();
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM accounts WHERE user_id = 'held' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let key = key.to_string();
    let held = tokio::spawn(async move {
        c.track_usage(with_key(USAGE_KEY, usage_req("held", 1, &key)))
            .await
    });
    // An observable condition, polled: a lock request that is not granted yet.
    let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted";
    for _ in 0..500 {
        if app.count(waiting).await > 0 {
            return (blocker, held);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the held write never waited for the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_deadline_passes_while_queued_is_dropped_and_a_retry_with_its_key_applies_it()
{
    let app = TestApp::spawn_with(TestOptions {
        write: config(1, 1),
        ..Default::default()
    })
    .await;
    let (blocker, held) = block_the_writer(&app, "held-1").await;

    // Queued behind the blocked write, with a 200 ms deadline of the caller's own.
    let mut c = app.client().await;
    let mut late = with_key(USAGE_KEY, usage_req("late", 5, "late-1"));
    late.set_timeout(Duration::from_millis(200));
    let err = c.track_usage(late).await.unwrap_err();
    // The server answers DEADLINE_EXCEEDED just before the deadline; on a loaded machine
    // tonic's own client timer (same deadline) may fire first and report CANCELLED "Timeout
    // expired". Either way the write must be dropped, which is what is checked below.
    assert!(
        err.code() == Code::DeadlineExceeded
            || (err.code() == Code::Cancelled && err.message() == "Timeout expired"),
        "{err:?}"
    );

    blocker.rollback().await.unwrap();
    held.await.unwrap().unwrap();
    // The writer reached the late write after its deadline: dropped, nothing written.
    let rows = app
        .count("SELECT count(*) FROM token_usage u JOIN accounts a USING (account_id) WHERE a.user_id = 'late'")
        .await;
    assert_eq!(rows, 0);
    // The only safe retry, with the same key, applies it now (not a replay: it never landed).
    let retried = c
        .track_usage(with_key(USAGE_KEY, usage_req("late", 5, "late-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(!retried.replayed);
    assert_eq!(retried.balance, -5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_timeout_answers_deadline_exceeded_and_a_write_already_in_its_batch_commits(
) {
    let app = TestApp::spawn_with(TestOptions {
        write: config(1, 1),
        request_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let (blocker, held) = block_the_writer(&app, "held-2").await;

    // The held write is inside its batch (waiting for the lock) when the server's timeout ends
    // the call: DEADLINE_EXCEEDED, not CANCELLED.
    let err = held.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    blocker.rollback().await.unwrap();
    // Its batch had started, so it commits; a retry with the same key is a replay of it.
    let mut c = app.client().await;
    // The retry queues behind the held write on the same writer, so it sees it committed.
    let replayed = c
        .track_usage(with_key(USAGE_KEY, usage_req("held", 1, "held-2")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        replayed.replayed,
        "the retry applied the write a second time: {replayed:?}"
    );
    assert_eq!(replayed.balance, 9);
    assert_eq!(
        app.count("SELECT count(*) FROM token_usage").await,
        1,
        "exactly one usage row"
    );
}

#[tokio::test]
async fn track_usage_batch_answers_each_event_on_its_own() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let mut events = vec![
        usage_req("b", 5, "b1"),
        usage_req("b", 6, "b2"),
        usage_req("b", 5, "b1"),
        usage_req("b", 7, "b1"),
    ];
    events.push(pb::TrackUsageRequest {
        tokens: -1,
        ..usage_req("b", 1, "b3")
    });
    let results = c
        .track_usage_batch(with_key(USAGE_KEY, pb::TrackUsageBatchRequest { events }))
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![
            0,
            0,
            0,
            Code::AlreadyExists as i32,
            Code::InvalidArgument as i32
        ]
    );
    assert_eq!((results[0].balance, results[1].balance), (-5, -11));
    assert!(results[2].replayed && results[2].transaction_id == results[0].transaction_id);
    assert_eq!(balance_of(&mut c, "b").await, -11);

    let too_many = (0..=token_ledger::transport::grpc::USAGE_BATCH_EVENTS_MAX)
        .map(|i| usage_req("b", 1, &format!("m{i}")))
        .collect();
    let err = c
        .track_usage_batch(with_key(
            USAGE_KEY,
            pb::TrackUsageBatchRequest { events: too_many },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "events");
    let at_limit = (0..1_000)
        .map(|i| usage_req("c", 1, &format!("n{i}")))
        .collect();
    let ok = c
        .track_usage_batch(with_key(
            USAGE_KEY,
            pb::TrackUsageBatchRequest { events: at_limit },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.results.iter().all(|r| r.code == 0));
    assert_eq!(balance_of(&mut c, "c").await, -1_000);
    assert_eq!(
        c.track_usage_batch(with_key(
            READ_KEY,
            pb::TrackUsageBatchRequest { events: vec![] }
        ))
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn a_drip_period_with_nanoseconds_is_stored_and_matched_at_microseconds() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let mut first = drip_req("n", "n1", "sub_n", "2026-05-01T00:00:00Z");
    first.period_start.as_mut().unwrap().nanos = 123_456_789;
    let a = c
        .drip(with_key(BILLING_KEY, first.clone()))
        .await
        .unwrap()
        .into_inner();
    // The same period under another key, differing only below a microsecond: a replay.
    let mut second = first.clone();
    second.idempotency_key = "n2".into();
    second.period_start.as_mut().unwrap().nanos = 123_456_001;
    let b = c
        .drip(with_key(BILLING_KEY, second))
        .await
        .unwrap()
        .into_inner();
    assert!(b.replayed && b.transaction_id == a.transaction_id);
    let mut ancient = drip_req("n", "n3", "sub_n", "2026-05-01T00:00:00Z");
    ancient.period_start = Some(prost_types::Timestamp {
        seconds: -300_000_000_000,
        nanos: 0,
    });
    assert_eq!(
        bad_request_field(&c.drip(with_key(BILLING_KEY, ancient)).await.unwrap_err()),
        "period_start"
    );
    assert_eq!(balance_of(&mut c, "n").await, 375_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_balance_cache_every_read_sees_the_committed_balance() {
    let app = TestApp::spawn_with(TestOptions {
        write: WriteConfig {
            balance_cache: true,
            ..WriteConfig::default()
        },
        ..Default::default()
    })
    .await;
    let mut c = app.client().await;
    // An unknown user reads 0 (and is cached as such); its first credit replaces that.
    assert_eq!(balance_of(&mut c, "cached").await, 0);
    c.grant(admin(grant_req("cached", 1_000, "g")))
        .await
        .unwrap();
    assert_eq!(balance_of(&mut c, "cached").await, 1_000);
    c.track_usage(with_key(USAGE_KEY, usage_req("cached", 300, "u")))
        .await
        .unwrap();
    assert_eq!(balance_of(&mut c, "cached").await, 700);
    let refused = c
        .deduct(admin(pb::DeductRequest {
            user_id: "cached".into(),
            tokens: 5_000,
            idempotency_key: "d".into(),
            reason: "r".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
    let b = c
        .get_balance(admin(pb::GetBalanceRequest {
            user_id: "cached".into(),
            as_of: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.balance, b.transaction_count), (700, 2));
    assert_eq!(b.totals.unwrap().used, 300);

    // Concurrent writers and readers: afterwards the cached balance is the database's.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                c.track_usage(with_key(
                    USAGE_KEY,
                    usage_req("cached", 1, &format!("c{t}-{i}")),
                ))
                .await
                .unwrap();
                let _ = balance_of(&mut c, "cached").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let in_db: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE user_id = 'cached'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(in_db, 700 - 400);
    assert_eq!(balance_of(&mut c, "cached").await, in_db);
}
