//! Per-model pricing over real gRPC and PostgreSQL: SetModelPrice and ListModelPrices, usage the
//! ledger prices (`tokens` = 0), versions in force from their `effective_from`, a hold's pinned
//! price, and every refusal leaving nothing written. Time passes through the ledger's test clock.

mod common;

use chrono::{Duration, Utc};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

type Client = LedgerServiceClient<Channel>;

/// Claude-like rates: 3 tokens per input token, 0.3 per cache read, 3.75 per cache write, 15
/// per output token, doubled input and 1.5× output above 200,000 prompt tokens.
fn rates(input: i64, cache_read: i64, cache_write: i64, output: i64) -> pb::ModelRates {
    pb::ModelRates {
        input_per_million: input,
        cache_read_per_million: cache_read,
        cache_write_per_million: cache_write,
        output_per_million: output,
    }
}

fn base() -> pb::ModelRates {
    rates(3_000_000, 300_000, 3_750_000, 15_000_000)
}

async fn set_price(
    c: &mut Client,
    model: &str,
    rates: pb::ModelRates,
    from: Option<chrono::DateTime<Utc>>,
    key: &str,
) -> Result<pb::SetModelPriceResponse, Status> {
    c.set_model_price(admin(pb::SetModelPriceRequest {
        model: model.into(),
        rates: Some(rates),
        tiers: vec![],
        effective_from: from.map(|t| ts(&t.to_rfc3339())),
        idempotency_key: key.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

/// A call of `model` with 10,000 prompt tokens (8,000 read from cache, 1,000 written to it) and
/// 500 output tokens, for the ledger to price.
fn priced_call(user: &str, model: &str, key: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.into(),
        tokens: 0,
        idempotency_key: key.into(),
        model: model.into(),
        input_tokens: 10_000,
        cache_read_tokens: 8_000,
        cache_write_tokens: 1_000,
        output_tokens: 500,
        feature: "chat".into(),
    }
}

/// What `priced_call` costs under `base()`: 1,000 × 3 + 8,000 × 0.3 + 1,000 × 3.75 + 500 × 15.
const PRICED_CALL_COST: i64 = 3_000 + 2_400 + 3_750 + 7_500;

async fn track(c: &mut Client, m: pb::TrackUsageRequest) -> Result<pb::TrackUsageResponse, Status> {
    c.track_usage(with_key(USAGE_KEY, m))
        .await
        .map(|r| r.into_inner())
}

async fn grant(c: &mut Client, user: &str, tokens: i64) {
    c.grant(admin(grant_req(user, tokens, &format!("grant-{user}"))))
        .await
        .unwrap();
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn usage_with_no_tokens_is_priced_by_the_models_price_per_token_class() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant(&mut c, "u", 100_000).await;
    let price = set_price(&mut c, "claude-x", base(), None, "p1")
        .await
        .unwrap()
        .price
        .unwrap();

    let r = track(&mut c, priced_call("u", "claude-x", "call-1"))
        .await
        .unwrap();
    assert_eq!(r.tokens, PRICED_CALL_COST);
    assert_eq!(r.price_id, price.price_id);
    assert_eq!(r.balance, 100_000 - PRICED_CALL_COST);

    // The journal row keeps the classes and the price version.
    let history = c
        .list_transactions(with_key(
            READ_KEY,
            pb::ListTransactionsRequest {
                user_id: "u".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let row = &history.transactions[0];
    assert_eq!(row.token_amount, -PRICED_CALL_COST);
    let Some(pb::transaction::Details::Usage(u)) = &row.details else {
        panic!("{row:?}")
    };
    assert_eq!((u.cache_read_tokens, u.cache_write_tokens), (8_000, 1_000));
    assert_eq!(u.price_id, price.price_id);

    // A retry is a replay that says what it charged, from the journal.
    let again = track(&mut c, priced_call("u", "claude-x", "call-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!((again.tokens, again.price_id), (r.tokens, r.price_id));
    assert_eq!(balance_of(&mut c, "u").await, 100_000 - PRICED_CALL_COST);
    app.assert_verified().await;
}

#[tokio::test]
async fn usage_with_tokens_given_is_recorded_as_given_and_says_it_was_caller_priced() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_price(&mut c, "claude-x", base(), None, "p1")
        .await
        .unwrap();
    let r = track(
        &mut c,
        pb::TrackUsageRequest {
            tokens: 42,
            ..priced_call("u", "claude-x", "given")
        },
    )
    .await
    .unwrap();
    assert_eq!((r.tokens, r.price_id.as_str()), (42, ""));
    let price_id: Option<i64> = sqlx::query_scalar("SELECT price_id FROM token_usage")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(price_id, None, "NULL marks a caller-priced row");
}

#[tokio::test]
async fn an_unpriced_model_is_refused_writes_nothing_and_its_key_stays_free() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant(&mut c, "u", 100_000).await;
    let rows = app.journal_rows().await;
    let err = track(&mut c, priced_call("u", "unknown-model", "k"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "MODEL_NOT_PRICED");
    assert_eq!(app.journal_rows().await, rows);
    assert_eq!(balance_of(&mut c, "u").await, 100_000);

    // Priced now, the same call under the same key goes through.
    set_price(&mut c, "unknown-model", base(), None, "p")
        .await
        .unwrap();
    let r = track(&mut c, priced_call("u", "unknown-model", "k"))
        .await
        .unwrap();
    assert!(!r.replayed);
    assert_eq!(r.tokens, PRICED_CALL_COST);

    // No model at all, with no tokens: nothing to price with.
    let err = track(
        &mut c,
        pb::TrackUsageRequest {
            model: String::new(),
            ..priced_call("u", "", "k2")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_request_field(&err), "tokens");
}

#[tokio::test]
async fn cached_tokens_beyond_the_prompt_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let err = track(
        &mut c,
        pb::TrackUsageRequest {
            tokens: 10,
            cache_read_tokens: 9_500,
            cache_write_tokens: 501,
            ..priced_call("u", "m", "k")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_request_field(&err), "cache_read_tokens");
    assert_eq!(app.journal_rows().await, 0);
}

#[tokio::test]
async fn a_new_version_applies_from_its_start_and_the_old_one_until_then() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant(&mut c, "u", 1_000_000).await;
    let v1 = set_price(&mut c, "m", base(), None, "v1")
        .await
        .unwrap()
        .price
        .unwrap();
    let doubled = rates(6_000_000, 600_000, 7_500_000, 30_000_000);
    let v2 = set_price(
        &mut c,
        "m",
        doubled,
        Some(Utc::now() + Duration::hours(1)),
        "v2",
    )
    .await
    .unwrap()
    .price
    .unwrap();

    let before = track(&mut c, priced_call("u", "m", "before"))
        .await
        .unwrap();
    assert_eq!(
        (before.tokens, &before.price_id),
        (PRICED_CALL_COST, &v1.price_id)
    );

    let listed = c
        .list_model_prices(with_key(READ_KEY, pb::ListModelPricesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .prices;
    let flags: Vec<(&str, bool)> = listed
        .iter()
        .map(|p| (p.price_id.as_str(), p.current))
        .collect();
    assert_eq!(
        flags,
        [(v2.price_id.as_str(), false), (v1.price_id.as_str(), true)],
        "the scheduled version first, then the one in force"
    );

    app.advance(Duration::hours(2));
    let after = track(&mut c, priced_call("u", "m", "after")).await.unwrap();
    assert_eq!(
        (after.tokens, &after.price_id),
        (2 * PRICED_CALL_COST, &v2.price_id)
    );
    // Now only v2 is listed as current; v1 is history.
    let listed = c
        .list_model_prices(with_key(READ_KEY, pb::ListModelPricesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .prices;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current && listed[0].price_id == v2.price_id);
    let all = c
        .list_model_prices(with_key(
            USAGE_KEY,
            pb::ListModelPricesRequest {
                model: "m".into(),
                include_history: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .prices;
    assert_eq!(all.len(), 2);
    app.assert_verified().await;
}

/// Each process keeps the price table in memory (`store::prices::PriceCache`) and checks it
/// against the table's row count inside the batch's lock statement: a version another process
/// adds applies here from the very next call, not after some refresh interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_set_on_another_process_prices_the_next_call_here() {
    let setter = TestApp::spawn().await;
    let pricer = TestApp::spawn_with(TestOptions {
        database_url: Some(setter.db.url()),
        ..TestOptions::default()
    })
    .await;
    let mut admin_side = setter.client().await;
    let mut usage_side = pricer.client().await;
    grant(&mut admin_side, "u", 10_000_000).await;
    let mut expected = 10_000_000;
    let mut rates_now = base();
    for round in 1..=4_i64 {
        let version = set_price(&mut admin_side, "m", rates_now, None, &format!("v{round}"))
            .await
            .unwrap()
            .price
            .unwrap();
        // Twice per version: the first call after a new version reloads, the second is cached.
        for call in 0..2 {
            let r = track(
                &mut usage_side,
                priced_call("u", "m", &format!("r{round}-c{call}")),
            )
            .await
            .unwrap();
            assert_eq!(
                (r.tokens, &r.price_id),
                (round * PRICED_CALL_COST, &version.price_id),
                "round {round}, call {call}: priced by the version set on the other process"
            );
            expected -= r.tokens;
        }
        let b = base();
        rates_now = rates(
            b.input_per_million * (round + 1),
            b.cache_read_per_million * (round + 1),
            b.cache_write_per_million * (round + 1),
            b.output_per_million * (round + 1),
        );
        // Versions of one model must start at distinct instants.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(balance_of(&mut admin_side, "u").await, expected);
    setter.assert_verified().await;
}

#[tokio::test]
async fn a_hold_commits_at_the_price_in_force_when_it_was_placed() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    grant(&mut c, "u", 1_000_000).await;
    let v1 = set_price(&mut c, "m", base(), None, "v1")
        .await
        .unwrap()
        .price
        .unwrap();
    let hold = c
        .reserve(with_key(
            USAGE_KEY,
            pb::ReserveRequest {
                user_id: "u".into(),
                tokens: 50_000,
                idempotency_key: "r".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                model: "m".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let doubled = rates(6_000_000, 600_000, 7_500_000, 30_000_000);
    set_price(
        &mut c,
        "m",
        doubled,
        Some(Utc::now() + Duration::hours(1)),
        "v2",
    )
    .await
    .unwrap();
    app.advance(Duration::hours(2));

    let holds = c
        .list_holds(with_key(
            READ_KEY,
            pb::ListHoldsRequest {
                user_id: "u".into(),
                active_only: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds[0].price_id, v1.price_id, "the hold pinned v1");
    let call = priced_call("u", "m", "commit");
    let done = c
        .commit_hold(with_key(
            USAGE_KEY,
            pb::CommitHoldRequest {
                hold_id: hold.hold_id.clone(),
                tokens: 0,
                idempotency_key: "commit".into(),
                input_tokens: call.input_tokens,
                cache_read_tokens: call.cache_read_tokens,
                cache_write_tokens: call.cache_write_tokens,
                output_tokens: call.output_tokens,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (done.tokens, &done.price_id),
        (PRICED_CALL_COST, &v1.price_id)
    );
    assert_eq!(done.balance, 1_000_000 - PRICED_CALL_COST);
    // A call without a hold, at the same moment, pays the new version.
    let now = track(&mut c, priced_call("u", "m", "fresh")).await.unwrap();
    assert_eq!(now.tokens, 2 * PRICED_CALL_COST);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_batch_prices_each_event_and_refuses_an_unpriced_one_alone() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_price(&mut c, "m", base(), None, "p").await.unwrap();
    let results = c
        .track_usage_batch(with_key(
            USAGE_KEY,
            pb::TrackUsageBatchRequest {
                events: vec![
                    priced_call("u", "m", "b1"),
                    priced_call("u", "nope", "b2"),
                    pb::TrackUsageRequest {
                        tokens: 7,
                        ..priced_call("u", "nope", "b3")
                    },
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].code, 0);
    assert_eq!(results[0].tokens, PRICED_CALL_COST);
    assert_eq!(results[1].code, Code::FailedPrecondition as i32);
    assert_eq!((results[2].code, results[2].tokens), (0, 7));
    assert_eq!(balance_of(&mut c, "u").await, -(PRICED_CALL_COST + 7));
}

#[tokio::test]
async fn setting_a_price_is_retry_safe_admin_only_and_never_rewrites_the_past() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let first = set_price(&mut c, "m", base(), None, "k").await.unwrap();
    let again = set_price(&mut c, "m", base(), None, "k").await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert!(
        first.price.as_ref().unwrap().current,
        "a price from now is in force"
    );
    assert_eq!(first.price, again.price);
    let other = set_price(&mut c, "m", rates(1, 1, 1, 1), None, "k")
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    let past = set_price(
        &mut c,
        "m",
        base(),
        Some(Utc::now() - Duration::hours(1)),
        "k2",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_request_field(&past), "effective_from");
    let at = Utc::now() + Duration::days(1);
    let scheduled = set_price(&mut c, "m", base(), Some(at), "k3")
        .await
        .unwrap();
    assert!(
        !scheduled.price.unwrap().current,
        "a scheduled price is not in force yet"
    );
    let same_start = set_price(&mut c, "m", rates(1, 1, 1, 1), Some(at), "k4")
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&same_start), "effective_from");

    let tiers = vec![
        pb::LongContextTier {
            above_input_tokens: 200_000,
            rates: Some(rates(6_000_000, 600_000, 7_500_000, 22_500_000)),
        },
        pb::LongContextTier {
            above_input_tokens: 100_000,
            rates: Some(base()),
        },
    ];
    let unordered = c
        .set_model_price(admin(pb::SetModelPriceRequest {
            model: "t".into(),
            rates: Some(base()),
            tiers: tiers.clone(),
            effective_from: None,
            idempotency_key: "t1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&unordered), "tiers");
    let tiered = c
        .set_model_price(admin(pb::SetModelPriceRequest {
            model: "t".into(),
            rates: Some(base()),
            tiers: tiers.into_iter().rev().collect(),
            effective_from: None,
            idempotency_key: "t2".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tiered.price.unwrap().tiers.len(), 2);

    let denied = c
        .set_model_price(with_key(
            USAGE_KEY,
            pb::SetModelPriceRequest {
                model: "m".into(),
                rates: Some(base()),
                idempotency_key: "k5".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_prices")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 3);
    // Versions are never edited.
    let edit = sqlx::query("UPDATE model_prices SET input_per_million = 0")
        .execute(&app.pool)
        .await;
    assert!(edit.is_err());
}

#[tokio::test]
async fn a_long_prompt_is_priced_by_its_tier_through_the_api() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.set_model_price(admin(pb::SetModelPriceRequest {
        model: "long".into(),
        rates: Some(base()),
        tiers: vec![pb::LongContextTier {
            above_input_tokens: 200_000,
            rates: Some(rates(6_000_000, 600_000, 7_500_000, 22_500_000)),
        }],
        effective_from: None,
        idempotency_key: "p".into(),
    }))
    .await
    .unwrap();
    let call = |input: i64, key: &str| pb::TrackUsageRequest {
        input_tokens: input,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 1_000,
        ..priced_call("u", "long", key)
    };
    let at = track(&mut c, call(200_000, "a")).await.unwrap();
    let over = track(&mut c, call(200_001, "b")).await.unwrap();
    assert_eq!(at.tokens, 600_000 + 15_000);
    // 200,001 × 6 = 1,200,006 and 1,000 × 22.5 = 22,500.
    assert_eq!(over.tokens, 1_200_006 + 22_500);
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_lists_and_uses_prices() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
            .args(args)
            .args(["--ledger-url", &url, "--api-key", ADMIN_KEY])
            .env_remove("TOKEN_LEDGER_API_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let set = run(&[
        "set-price",
        "--model",
        "claude-x",
        "--input-per-million",
        "3000000",
        "--cache-read-per-million",
        "300000",
        "--cache-write-per-million",
        "3750000",
        "--output-per-million",
        "15000000",
        "--tier",
        "200000:6000000:600000:7500000:22500000",
    ]);
    assert!(
        set.contains("price 1 of claude-x") && set.contains("above 200000"),
        "{set}"
    );
    let listed = run(&["prices", "--json"]);
    let json: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(json["prices"][0]["current"], true);
    assert_eq!(
        json["prices"][0]["tiers"][0]["above_input_tokens"],
        "200000"
    );
    let used = run(&[
        "usage",
        "--user",
        "u",
        "--tokens",
        "0",
        "--model",
        "claude-x",
        "--input-tokens",
        "10000",
        "--cache-read-tokens",
        "8000",
        "--cache-write-tokens",
        "1000",
        "--output-tokens",
        "500",
    ]);
    assert!(
        used.contains(&format!("priced at {PRICED_CALL_COST} tokens with price 1")),
        "{used}"
    );
}
