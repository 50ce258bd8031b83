//! Balance alerts over real gRPC, PostgreSQL and HTTP: crossings write exactly one outbox event
//! in the write's own transaction (also under 32 concurrent writers), rules re-evaluate when
//! edited, and a signed delivery reaches a real receiver that fails its first attempts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tonic::transport::Channel;
use tonic::Code;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;
use token_ledger::transport::alert_hook::{sign, AlertHookConfig, SIGNATURE_HEADER};

type Client = LedgerServiceClient<Channel>;

async fn set_alert(c: &mut Client, user: &str, tokens: Option<i64>, percent: Option<i32>) {
    use pb::set_balance_alert_request::Threshold as T;
    let threshold = match (tokens, percent) {
        (Some(t), _) => Some(T::Tokens(t)),
        (None, Some(p)) => Some(T::Percent(p)),
        _ => None,
    };
    c.set_balance_alert(admin(pb::SetBalanceAlertRequest {
        user_id: user.into(),
        threshold,
    }))
    .await
    .unwrap();
}

/// The user's events, oldest first, as (type, available).
async fn events(c: &mut Client, user: &str) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = c
        .list_alert_events(with_key(
            READ_KEY,
            pb::ListAlertEventsRequest {
                user_id: user.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.r#type, e.available))
        .collect();
    out.reverse();
    out
}

async fn spend(c: &mut Client, user: &str, tokens: i64, key: &str) {
    c.track_usage(with_key(USAGE_KEY, usage_req(user, tokens, key)))
        .await
        .unwrap();
}

async fn credit(c: &mut Client, user: &str, tokens: i64, key: &str) {
    c.grant(admin(grant_req(user, tokens, key))).await.unwrap();
}

fn low(available: i64) -> (String, i64) {
    ("balance_low".to_string(), available)
}

fn recovered(available: i64) -> (String, i64) {
    ("balance_recovered".to_string(), available)
}

fn depleted(available: i64) -> (String, i64) {
    ("balance_depleted".to_string(), available)
}

#[tokio::test]
async fn crossing_the_threshold_writes_one_event_and_recovery_rearms_it() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_alert(&mut c, "", Some(100), None).await;
    credit(&mut c, "u", 250, "g1").await;
    spend(&mut c, "u", 100, "s1").await; // 150: above
    spend(&mut c, "u", 50, "s2").await; // 100: exactly on it counts
    spend(&mut c, "u", 30, "s3").await; // 70: still low, no second event
    credit(&mut c, "u", 31, "g2").await; // 101: recovered
    spend(&mut c, "u", 101, "s4").await; // 0: low again, and depleted
    spend(&mut c, "u", 5, "s5").await; // -5: nothing new
    assert_eq!(
        events(&mut c, "u").await,
        [low(100), recovered(101), low(0), depleted(0)]
    );
    // A retried write is a replay: no second event.
    spend(&mut c, "u", 5, "s5").await;
    assert_eq!(events(&mut c, "u").await.len(), 4);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_percentage_threshold_follows_the_most_recent_credit() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_alert(&mut c, "p", None, Some(20)).await;
    credit(&mut c, "p", 1_000, "g1").await; // threshold 200
    spend(&mut c, "p", 790, "s1").await; // 210
    assert!(events(&mut c, "p").await.is_empty());
    spend(&mut c, "p", 10, "s2").await; // 200
    assert_eq!(events(&mut c, "p").await, [low(200)]);
    // A bigger credit raises the threshold with the balance: 200 + 5,000 = 5,200 > 1,000.
    credit(&mut c, "p", 5_000, "g2").await;
    assert_eq!(events(&mut c, "p").await, [low(200), recovered(5_200)]);
}

#[tokio::test]
async fn an_account_rule_overrides_the_default_and_editing_a_rule_reevaluates_it() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_alert(&mut c, "", Some(10), None).await;
    credit(&mut c, "o", 500, "g1").await;
    spend(&mut c, "o", 100, "s1").await; // 400: above 10
    assert!(events(&mut c, "o").await.is_empty());
    // Its own rule at 450: the edit alone writes the event, no balance change needed.
    set_alert(&mut c, "o", Some(450), None).await;
    assert_eq!(events(&mut c, "o").await, [low(400)]);
    // Deleting it falls back to the default (10): recovered.
    let deleted = c
        .delete_balance_alert(admin(pb::DeleteBalanceAlertRequest {
            user_id: "o".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(events(&mut c, "o").await, [low(400), recovered(400)]);
    let rules = c
        .list_balance_alerts(with_key(READ_KEY, pb::ListBalanceAlertsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].user_id, "", "only the default is left");

    // Raising the default re-evaluates every account, in the background.
    set_alert(&mut c, "", Some(1_000), None).await;
    let mut waited = 0;
    while events(&mut c, "o").await.len() < 3 {
        assert!(
            waited < 100,
            "the default's re-evaluation never reached the account"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(events(&mut c, "o").await[2], low(400));

    // Bad rules and the wrong scope change nothing.
    let err = c
        .set_balance_alert(admin(pb::SetBalanceAlertRequest {
            user_id: "o".into(),
            threshold: Some(pb::set_balance_alert_request::Threshold::Percent(101)),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "percent");
    let err = c
        .set_balance_alert(admin(pb::SetBalanceAlertRequest {
            user_id: "o".into(),
            threshold: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "threshold");
    let err = c
        .set_balance_alert(with_key(
            READ_KEY,
            pb::SetBalanceAlertRequest {
                user_id: "o".into(),
                threshold: Some(pb::set_balance_alert_request::Threshold::Tokens(1)),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_writers_cross_once_per_crossing() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    set_alert(&mut c, "", Some(1_000), None).await;
    credit(&mut c, "hot", 3_000, "g0").await;
    // 32 writers: 28 spend 150, 4 credit 400, in any order and batches: 3,000 + 1,600 − 4,200
    // ends at 400, below the threshold, crossing it at least once.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            if i % 8 == 7 {
                c.grant(admin(grant_req("hot", 400, &format!("g{i}"))))
                    .await
                    .unwrap();
            } else {
                c.track_usage(with_key(USAGE_KEY, usage_req("hot", 150, &format!("s{i}"))))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The crossings the journal implies: walk the balance after every row, in order.
    let balances: Vec<i64> = sqlx::query_scalar(
        "SELECT balance_after FROM journal WHERE account_id = \
           (SELECT account_id FROM accounts WHERE user_id = 'hot') ORDER BY entry_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut expected = Vec::new();
    let (mut is_low, mut is_depleted) = (false, false);
    for b in balances {
        if (b <= 1_000) != is_low {
            is_low = b <= 1_000;
            expected.push(if is_low { low(b) } else { recovered(b) });
        }
        if (b <= 0) != is_depleted {
            is_depleted = b <= 0;
            if is_depleted {
                expected.push(depleted(b));
            }
        }
    }
    assert!(
        !expected.is_empty(),
        "the scenario must cross the threshold"
    );
    assert_eq!(events(&mut c, "hot").await, expected);
    app.assert_verified().await;
}

/// What the test receiver saw: every attempt's event id, and whether its signature checked.
#[derive(Default)]
struct Received {
    attempts: Vec<(String, bool)>,
}

async fn receiver(secret: &'static str, fail_first: usize) -> (String, Arc<Mutex<Received>>) {
    use axum::{http::HeaderMap, http::StatusCode, routing::post, Router};
    let seen = Arc::new(Mutex::new(Received::default()));
    let state = seen.clone();
    let app = Router::new().route(
        "/alerts",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let header = headers
                    .get(SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                // Verify as a receiver would: recompute over "t.body" with the shared secret.
                let t: i64 = header
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default();
                let good = sign(secret, t, &body) == header;
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = json["id"].as_str().unwrap_or_default().to_string();
                let mut s = state.lock().unwrap();
                s.attempts.push((id, good));
                if s.attempts.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_signed_in_order_and_retried_until_accepted() {
    const SECRET: &str = "alert-secret-0123456789";
    let (url, seen) = receiver(SECRET, 2).await;
    let app = TestApp::spawn_with(TestOptions {
        alert_hook: Some(AlertHookConfig {
            url,
            secret: SECRET.into(),
            poll_interval: Duration::from_millis(20),
            // Retries after 1 s, then 2 s: the test waits for both.
            retry_max: Duration::from_secs(2),
        }),
        ..Default::default()
    })
    .await;
    let mut c = app.client().await;
    set_alert(&mut c, "", Some(100), None).await;
    credit(&mut c, "d", 150, "g1").await;
    spend(&mut c, "d", 60, "s1").await; // low
    credit(&mut c, "d", 100, "g2").await; // recovered
    let ids: Vec<String> = {
        let mut e = c
            .list_alert_events(with_key(READ_KEY, pb::ListAlertEventsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .events;
        e.reverse();
        e.into_iter()
            .map(|e| format!("alert_{}", e.event_id))
            .collect()
    };
    assert_eq!(ids.len(), 2);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pending = c
            .list_alert_events(with_key(
                READ_KEY,
                pb::ListAlertEventsRequest {
                    pending_only: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        if pending.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = seen.lock().unwrap().attempts.clone();
    assert!(attempts.iter().all(|(_, good)| *good), "{attempts:?}");
    // The first event failed twice and was retried; the second waited for it (in order per
    // account) and was delivered once.
    let order: Vec<&str> = attempts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, [&ids[0], &ids[0], &ids[0], &ids[1]]);
    let delivered = c
        .list_alert_events(with_key(READ_KEY, pb::ListAlertEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(delivered.iter().all(|e| e.delivered_at.is_some()));
    let first = delivered
        .iter()
        .find(|e| format!("alert_{}", e.event_id) == ids[0]);
    assert_eq!(first.unwrap().attempts, 3);
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_lists_and_shows_alerts() {
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
    let set = run(&["set-alert", "--percent", "10"]);
    assert!(set.contains("(default): at or below 10%"), "{set}");
    let mut c = app.client().await;
    credit(&mut c, "cli", 1_000, "g").await;
    spend(&mut c, "cli", 950, "s").await;
    let listed = run(&["alerts"]);
    assert!(listed.contains("default"), "{listed}");
    let shown = run(&["alert-events", "--user", "cli", "--pending"]);
    assert!(
        shown.contains("balance_low")
            && shown.contains("available=50")
            && shown.contains("pending"),
        "{shown}"
    );
    let deleted = run(&["delete-alert"]);
    assert!(deleted.contains("deleted"), "{deleted}");
}

#[tokio::test]
async fn a_lot_entering_the_expiring_window_alerts_once() {
    let app = TestApp::spawn_with(TestOptions {
        alert_expiring_window: Some(chrono::Duration::hours(24)),
        ..Default::default()
    })
    .await;
    let mut c = app.client().await;
    // Whole seconds: PostgreSQL keeps microseconds, the comparison below wants equality.
    let expires = chrono::DurationRound::duration_trunc(
        chrono::Utc::now() + chrono::Duration::hours(48),
        chrono::Duration::seconds(1),
    )
    .unwrap();
    c.grant(admin(pb::GrantRequest {
        expires_at: Some(ts(&expires.to_rfc3339())),
        ..grant_req("e", 1_000, "g-exp")
    }))
    .await
    .unwrap();
    credit(&mut c, "e", 500, "g-forever").await;
    spend(&mut c, "e", 100, "s1").await; // burns the expiring lot first: 900 left in it
    let ledger = token_ledger::ledger::Ledger::new(app.store.clone());
    let sweep = || token_ledger::ledger::sweeper::sweep_once(&ledger);
    assert_eq!(sweep().await.unwrap(), 0, "48 h out: not due yet");
    assert!(events(&mut c, "e").await.is_empty());

    app.advance(chrono::Duration::hours(25));
    assert_eq!(sweep().await.unwrap(), 1, "23 h out: in the window");
    let listed = c
        .list_alert_events(with_key(READ_KEY, pb::ListAlertEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(listed.len(), 1);
    let e = &listed[0];
    assert_eq!((e.r#type.as_str(), e.tokens), ("credits_expiring", 900));
    assert_eq!(e.expires_at, Some(ts(&expires.to_rfc3339())));
    // Once per lot: later sweeps and writes add nothing.
    assert_eq!(sweep().await.unwrap(), 0);
    spend(&mut c, "e", 1, "s2").await;
    assert_eq!(events(&mut c, "e").await.len(), 1);
    app.assert_verified().await;
}
