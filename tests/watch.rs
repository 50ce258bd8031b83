//! WatchBalance over real gRPC: the current balance at once, then every change in order;
//! resuming; two server processes on one database; a slow watcher; limits; heartbeats;
//! shutdown; and the one notification per batch that feeds it all.

mod common;

use std::time::Duration;

use common::*;
use sqlx::postgres::PgListener;
use token_ledger::ledger::watch::WatchConfig;
use token_ledger::pb;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

type Client = pb::ledger_service_client::LedgerServiceClient<Channel>;

/// Longest a test waits for one message it expects.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

async fn watch(c: &mut Client, user: &str, after_seq: i64) -> Streaming<pb::BalanceUpdate> {
    try_watch(c, user, after_seq).await.unwrap()
}

async fn try_watch(
    c: &mut Client,
    user: &str,
    after_seq: i64,
) -> Result<Streaming<pb::BalanceUpdate>, tonic::Status> {
    c.watch_balance(with_key(
        READ_KEY,
        pb::WatchBalanceRequest {
            user_id: user.into(),
            after_seq,
        },
    ))
    .await
    .map(|r| r.into_inner())
}

/// The next message, within [`MESSAGE_WAIT`].
async fn next(stream: &mut Streaming<pb::BalanceUpdate>) -> pb::BalanceUpdate {
    tokio::time::timeout(MESSAGE_WAIT, stream.message())
        .await
        .expect("no message in time")
        .expect("the stream failed")
        .expect("the stream ended")
}

async fn get(c: &mut Client, user: &str) -> pb::GetBalanceResponse {
    c.get_balance(admin(pb::GetBalanceRequest {
        user_id: user.into(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
}

/// Asserts that `update` carries exactly what GetBalance says now.
fn assert_matches(update: &pb::BalanceUpdate, now: &pb::GetBalanceResponse) {
    assert!(!update.heartbeat, "{update:?}");
    assert_eq!(
        (
            update.user_id.as_str(),
            update.balance,
            update.held,
            update.available,
            update.seq,
            update.updated_at
        ),
        (
            now.user_id.as_str(),
            now.balance,
            now.held,
            now.available,
            now.transaction_count,
            now.updated_at
        ),
    );
}

#[tokio::test]
async fn a_watcher_gets_the_balance_at_once_then_grants_usage_and_holds_in_order() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("w", 1_000, "g1"))).await.unwrap();

    let mut stream = watch(&mut c, "w", 0).await;
    let first = next(&mut stream).await;
    assert_eq!((first.balance, first.seq), (1_000, 1));
    assert_matches(&first, &get(&mut c, "w").await);

    // A hold writes no journal row: its update has the same seq and a later updated_at.
    let version = |u: &pb::BalanceUpdate| (u.seq, u.updated_at.map(|t| (t.seconds, t.nanos)));
    let mut last = version(&first);
    let mut expect = |update: pb::BalanceUpdate, balance, held| {
        assert!(version(&update) > last, "{last:?} then {update:?}");
        last = version(&update);
        assert_eq!(
            (update.balance, update.held, update.available),
            (balance, held, balance - held),
            "{update:?}"
        );
        update
    };
    c.track_usage(with_key(USAGE_KEY, usage_req("w", 100, "u1")))
        .await
        .unwrap();
    let u = expect(next(&mut stream).await, 900, 0);
    assert_matches(&u, &get(&mut c, "w").await);

    let hold = c
        .reserve(with_key(
            USAGE_KEY,
            pb::ReserveRequest {
                user_id: "w".into(),
                tokens: 300,
                idempotency_key: "r1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let u = expect(next(&mut stream).await, 900, 300);
    assert_matches(&u, &get(&mut c, "w").await);

    c.commit_hold(with_key(
        USAGE_KEY,
        pb::CommitHoldRequest {
            hold_id: hold.hold_id,
            tokens: 250,
            idempotency_key: "c1".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let u = expect(next(&mut stream).await, 650, 0);
    assert_matches(&u, &get(&mut c, "w").await);

    c.grant(admin(grant_req("w", 50, "g2"))).await.unwrap();
    let u = expect(next(&mut stream).await, 700, 0);
    assert_matches(&u, &get(&mut c, "w").await);
}

#[tokio::test]
async fn a_resumed_watcher_gets_nothing_it_has_seen_then_the_next_change() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("r", 1_000, "g1"))).await.unwrap();
    c.grant(admin(grant_req("r", 1_000, "g2"))).await.unwrap();
    let seen = get(&mut c, "r").await.transaction_count;
    assert_eq!(seen, 2);

    let mut stream = watch(&mut c, "r", seen).await;
    c.track_usage(with_key(USAGE_KEY, usage_req("r", 10, "u1")))
        .await
        .unwrap();
    // Had the watcher been sent the balance it resumed at, that would come first.
    let first = next(&mut stream).await;
    assert_eq!((first.seq, first.balance), (3, 1_990), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_one_process_sees_writes_made_through_another() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_with(TestOptions {
        database_url: Some(a.db.url()),
        ..TestOptions::default()
    })
    .await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;

    let mut stream = watch(&mut on_a, "x", 0).await;
    let first = next(&mut stream).await;
    assert_eq!(
        (first.seq, first.balance),
        (0, 0),
        "a new account's empty balance"
    );

    let mut expected = 0;
    for round in 0..10 {
        let key = format!("x-{round}");
        if round % 2 == 0 {
            on_b.grant(admin(grant_req("x", 1_000, &key)))
                .await
                .unwrap();
            expected += 1_000;
        } else {
            on_b.track_usage(with_key(USAGE_KEY, usage_req("x", 30, &key)))
                .await
                .unwrap();
            expected -= 30;
        }
        let update = next(&mut stream).await;
        assert_eq!(
            (update.seq, update.balance),
            (round + 1, expected),
            "round {round}: the write through B reached A's watcher"
        );
    }
    // And the other way: B's watchers hear A's writes.
    let mut on_b_stream = watch(&mut on_b, "x", 10).await;
    on_a.grant(admin(grant_req("x", 5, "from-a")))
        .await
        .unwrap();
    let update = next(&mut on_b_stream).await;
    assert_eq!((update.seq, update.balance), (11, expected + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_gets_the_latest_balance_and_never_an_older_one_after_a_newer() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("s", 1_000, "g"))).await.unwrap();
    let mut stream = watch(&mut c, "s", 0).await;
    assert_eq!(next(&mut stream).await.seq, 1);

    // 50 usage writes of 7 from 10 concurrent writers while the watcher reads nothing: they
    // commit in batches, and re-reads race each other.
    const WRITERS: usize = 10;
    const WRITES_EACH: usize = 5;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            for n in 0..WRITES_EACH {
                let key = format!("s-{w}-{n}");
                c.track_usage(with_key(USAGE_KEY, usage_req("s", 7, &key)))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last_seq = 1 + (WRITERS * WRITES_EACH) as i64;
    let last_balance = 1_000 - 7 * (WRITERS * WRITES_EACH) as i64;
    assert_eq!(get(&mut c, "s").await.transaction_count, last_seq);

    let mut seq = 1;
    let mut messages = 0;
    loop {
        let update = next(&mut stream).await;
        messages += 1;
        assert!(
            update.seq > seq,
            "seq {} after {seq}: an older balance after a newer one",
            update.seq
        );
        seq = update.seq;
        // Every usage is 7, so each seq has exactly one balance.
        assert_eq!(update.balance, 1_000 - 7 * (seq - 1), "{update:?}");
        if seq == last_seq {
            assert_eq!(update.balance, last_balance);
            break;
        }
    }
    assert!(messages <= WRITERS * WRITES_EACH, "{messages} messages");
}

#[tokio::test]
async fn the_seventeenth_watcher_of_a_user_and_one_past_the_process_limit_are_refused() {
    let app = TestApp::spawn_with(TestOptions {
        watch: WatchConfig {
            watchers_per_user_max: 16,
            watchers_max: 20,
            ..WatchConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;
    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(watch(&mut c, "busy", 0).await);
    }
    let refused = try_watch(&mut c, "busy", 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("this user"), "{refused:?}");

    // Other users still get theirs, up to the process's limit.
    for n in 0..4 {
        streams.push(watch(&mut c, &format!("other-{n}"), 0).await);
    }
    let refused = try_watch(&mut c, "one-more", 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("this server"), "{refused:?}");

    // A watcher that goes away frees its place (once the server has seen it go).
    streams.truncate(15);
    let deadline = tokio::time::Instant::now() + MESSAGE_WAIT;
    let mut again = loop {
        match try_watch(&mut c, "busy", 0).await {
            Ok(stream) => break stream,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    assert_eq!(next(&mut again).await.seq, 0);
}

#[tokio::test]
async fn heartbeats_arrive_while_nothing_changes_and_the_stream_outlives_the_request_timeout() {
    let app = TestApp::spawn_with(TestOptions {
        watch: WatchConfig {
            heartbeat: Duration::from_secs(1),
            ..WatchConfig::default()
        },
        // The call's limit bounds opening the stream, not the stream's life.
        request_timeout: Some(Duration::from_millis(1_500)),
        ..TestOptions::default()
    })
    .await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("h", 40, "g"))).await.unwrap();
    let mut stream = watch(&mut c, "h", 0).await;
    let first = next(&mut stream).await;
    assert!(!first.heartbeat);
    for _ in 0..3 {
        let beat = next(&mut stream).await;
        assert!(beat.heartbeat, "{beat:?}");
        assert_eq!(
            (beat.seq, beat.balance),
            (1, 40),
            "a heartbeat has the latest figures"
        );
    }
    // A change after heartbeats is an ordinary update.
    c.grant(admin(grant_req("h", 2, "g2"))).await.unwrap();
    let update = next(&mut stream).await;
    assert_eq!(
        (update.heartbeat, update.seq, update.balance),
        (false, 2, 42)
    );
}

#[tokio::test]
async fn a_watcher_ends_with_unavailable_when_the_server_shuts_down() {
    let mut app = TestApp::spawn().await;
    let mut c = app.client().await;
    let mut stream = watch(&mut c, "bye", 0).await;
    next(&mut stream).await;
    let server = app.begin_stop();
    let end = tokio::time::timeout(MESSAGE_WAIT, stream.message())
        .await
        .expect("the stream did not end");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    tokio::time::timeout(MESSAGE_WAIT, server)
        .await
        .expect("an open watcher kept the server from draining")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_batch_announces_the_watched_and_new_accounts_it_moved_in_one_notification() {
    let app = TestApp::spawn().await;
    let mut listener = PgListener::connect_with(&app.pool).await.unwrap();
    listener.listen("ledger_balance").await.unwrap();
    let mut c = app.client().await;
    let users = ["a,b", "quote\"d", "plain", "a,b"];
    let events = users
        .iter()
        .enumerate()
        .map(|(n, u)| usage_req(u, 5, &format!("e{n}")))
        .collect();
    let batch = c
        .track_usage_batch(with_key(USAGE_KEY, pb::TrackUsageBatchRequest { events }))
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results.iter().all(|r| r.code == 0), "{batch:?}");

    // The batch's writes may have been split over writers (by user), each batch announcing its
    // own accounts once.
    let mut heard: Vec<String> = Vec::new();
    let mut notifications = 0;
    while heard.len() < 3 {
        let n = tokio::time::timeout(MESSAGE_WAIT, listener.recv())
            .await
            .unwrap()
            .unwrap();
        notifications += 1;
        let ids: Vec<String> = serde_json::from_str(n.payload()).unwrap();
        heard.extend(ids);
    }
    heard.sort();
    assert_eq!(
        heard,
        ["a,b", "plain", "quote\"d"],
        "each moved account once"
    );
    assert!(notifications <= 3);

    // A replay moves nothing, and a move of an account nobody watches (it exists already)
    // announces nothing: the next notification is that of the write creating "later".
    c.track_usage(with_key(USAGE_KEY, usage_req("plain", 5, "e2")))
        .await
        .unwrap();
    c.track_usage(with_key(USAGE_KEY, usage_req("plain", 5, "e5")))
        .await
        .unwrap();
    c.grant(admin(grant_req("later", 5, "g"))).await.unwrap();
    let n = tokio::time::timeout(MESSAGE_WAIT, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), r#"["later"]"#);

    // Once watched (through either process: the lease is in the database), it is announced.
    let mut stream = watch(&mut c, "plain", 0).await;
    next(&mut stream).await;
    c.track_usage(with_key(USAGE_KEY, usage_req("plain", 5, "e6")))
        .await
        .unwrap();
    let n = tokio::time::timeout(MESSAGE_WAIT, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), r#"["plain"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_database_outage_the_listener_rereads_what_it_may_have_missed() {
    use common::proxy::{Proxy, Upstream};
    let db = TestDb::new().await;
    let mut proxy = Proxy::start(Upstream::of(&db.options)).await;
    let through_proxy = proxy.url_of(&db);
    let direct = db.url();
    // A reaches the database through the proxy; B directly.
    let a = TestApp::spawn_on(
        db,
        TestOptions {
            database_url: Some(through_proxy),
            ..TestOptions::default()
        },
    )
    .await;
    let b = TestApp::spawn_with(TestOptions {
        database_url: Some(direct),
        ..TestOptions::default()
    })
    .await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_b.grant(admin(grant_req("o", 100, "g1"))).await.unwrap();
    let mut stream = watch(&mut on_a, "o", 0).await;
    assert_eq!(next(&mut stream).await.balance, 100);

    // A loses the database: its listener's session ends, so the announcement of this write,
    // made through B meanwhile, never reaches A.
    proxy.cut();
    on_b.grant(admin(grant_req("o", 23, "g2"))).await.unwrap();
    proxy.restore();

    // Back, A's listener re-reads every watched user.
    let update = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the change made during the outage never reached the watcher")
        .unwrap()
        .unwrap();
    assert_eq!((update.seq, update.balance), (2, 123), "{update:?}");
}

/// A listener connection that goes silent without a reset (a peer gone, a network dropping
/// packets) is noticed by the listener's own ping, not never: it reports the loss, and its next
/// connection (on a fresh pool: the silent one still holds the old) hears announcements again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_goes_silent_reports_it_lost_and_reconnects() {
    use common::proxy::{Proxy, Upstream};
    use token_ledger::store::notify::{Heard, BALANCE_CHANNEL};
    use token_ledger::store::{Store, StoreConfig};
    let db = TestDb::new().await;
    let proxy = Proxy::start(Upstream::of(&db.options)).await;
    let through_proxy = proxy.url_of(&db);
    let store = Store::connect_lazy(&StoreConfig {
        database_url: through_proxy,
        pool_connections_max: 2,
        pool_acquire_timeout: Duration::from_secs(5),
    })
    .unwrap();
    let mut listener = store
        .balance_listener()
        .with_keepalive(Duration::from_millis(500), Duration::from_millis(500));
    listener.connect().await.unwrap();
    let pool = db.pool().await;
    let announce = |payload: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(BALANCE_CHANNEL)
                .bind(payload)
                .execute(&pool)
                .await
                .unwrap();
        }
    };

    // Quiet for longer than the idle ping: the pings pass and the listener keeps listening.
    let quiet = tokio::time::timeout(Duration::from_secs(2), listener.next()).await;
    assert!(
        quiet.is_err(),
        "nothing was announced, yet it returned {quiet:?}"
    );
    announce(r#"["first"]"#).await;
    match tokio::time::timeout(Duration::from_secs(5), listener.next()).await {
        Ok(Heard::Changed(users)) => assert_eq!(users, ["first"]),
        other => panic!("expected the announcement, got {other:?}"),
    }

    proxy.silence_open_connections();
    announce(r#"["unheard"]"#).await;
    let lost = tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("a silent connection was never noticed");
    assert!(matches!(lost, Heard::Lost), "{lost:?}");

    listener.connect().await.unwrap();
    announce(r#"["second"]"#).await;
    match tokio::time::timeout(Duration::from_secs(5), listener.next()).await {
        Ok(Heard::Changed(users)) => assert_eq!(users, ["second"]),
        other => panic!("expected the announcement after reconnecting, got {other:?}"),
    }
    listener.close().await;
}
