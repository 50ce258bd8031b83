//! Several ledger processes on one database (issue 11): every guarantee holds across processes,
//! not only inside one. Three real `token-ledger serve` processes share a fresh database, and a
//! client spreads the same accounts and the same keys over all three: business keys and key
//! replays sent to every process at once, deductions racing on hot accounts, reversals racing on
//! one credit, holds placed on one process and ended on another, lots expired by the sweepers of
//! three processes (one sweeps at a time, elected by a lease in PostgreSQL),
//! a watcher on one process hearing writes made through the others. Then `token-ledger verify`
//! and exact balances computed from the answers.
//!
//! Each process runs its own group-commit writers, so two processes' batches contend for the same
//! account rows; only PostgreSQL's locks (taken in one global order: `store::batch`) keep them
//! apart. A lost update shows as a balance that is not the sum of the acknowledged writes, a
//! deduction acknowledged with a negative balance, or a refusal while the balance covered it.
//!
//! Also here: the `--balance-cache` process refuses to share its database, and the deliverers and
//! the Stripe webhook of three processes do each thing once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::process::ServerProcess;
use common::*;
use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

type Client = LedgerServiceClient<Channel>;

/// Three processes on one database, and a client of each.
struct Replicas {
    db: TestDb,
    servers: Vec<ServerProcess>,
    clients: Vec<Client>,
}

impl Replicas {
    async fn start(extra: &[&str]) -> Self {
        let db = TestDb::new().await;
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(ServerProcess::start(&db.url(), extra).await);
        }
        let mut clients = Vec::new();
        for s in &servers {
            clients.push(Client::connect(s.url()).await.unwrap());
        }
        Self {
            db,
            servers,
            clients,
        }
    }

    /// The client of process `i` (any number: it wraps around).
    fn via(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }

    /// `token-ledger verify`, a process of its own: every balance is the sum of its journal.
    fn verify(&self) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
            .arg("verify")
            .env("DATABASE_URL", self.db.url())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.starts_with("ok:"),
            "verify: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// No process logged an error (a deadlock or a failed batch would have).
    fn assert_no_server_errors(&self) {
        for (i, s) in self.servers.iter().enumerate() {
            let errors = s.errors.lock().unwrap().clone();
            assert!(errors.is_empty(), "process {i} logged errors: {errors:?}");
        }
    }

    async fn stop(self) {
        for s in self.servers {
            s.terminate().await;
        }
    }
}

async fn balance(c: &mut Client, user: &str) -> pb::GetBalanceResponse {
    c.get_balance(with_key(
        READ_KEY,
        pb::GetBalanceRequest {
            user_id: user.into(),
            as_of: None,
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

/// The same request sent to all three processes at once: every answer.
async fn to_all_at_once<T, F, Fut>(r: &Replicas, send: F) -> Vec<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
{
    let tasks: Vec<_> = (0..3).map(|i| tokio::spawn(send(r.via(i)))).collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Of answers to one write: all succeeded with one transaction, and exactly one was not a
/// replay. Returns the transaction id.
fn one_write(answers: Vec<Result<(String, bool), Status>>, what: &str) -> String {
    let answers: Vec<(String, bool)> = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|s| panic!("{what}: {s:?}")))
        .collect();
    let fresh = answers.iter().filter(|(_, replayed)| !replayed).count();
    assert_eq!(
        fresh, 1,
        "{what}: one write, the others replays: {answers:?}"
    );
    assert!(
        answers.iter().all(|(id, _)| id == &answers[0].0),
        "{what}: every process answers the same transaction: {answers:?}"
    );
    answers[0].0.clone()
}

/// Payment intents, subscription periods and idempotency keys, each sent to all three processes
/// at once: one credit each. Answers the balances it expects.
async fn business_keys_and_replays(r: &Replicas) -> BTreeMap<String, i64> {
    let mut expected = BTreeMap::new();
    for i in 0..6 {
        let user = format!("buyer-{}", i % 3);
        let answers = to_all_at_once(r, |mut c| {
            let (user, pi) = (user.clone(), format!("pi_{i}"));
            async move {
                // Another key at each process: only the payment intent makes it one purchase.
                let key = format!("buy-{i}-{}", uuid::Uuid::new_v4().simple());
                let a = c
                    .record_purchase(with_key(BILLING_KEY, purchase_req(&user, &key, &pi)))
                    .await?
                    .into_inner();
                Ok((a.transaction_id, a.replayed))
            }
        })
        .await;
        one_write(answers, &format!("purchase pi_{i}"));
        *expected.entry(user).or_default() += 2_000_000;
    }
    for i in 0..3 {
        let user = format!("dripper-{i}");
        let answers = to_all_at_once(r, |mut c| {
            let user = user.clone();
            async move {
                let key = format!("drip-{i}-{}", uuid::Uuid::new_v4().simple());
                let mut req = drip_req(&user, &key, &format!("sub_{i}"), "2026-11-01T00:00:00Z");
                req.stripe_invoice_id = format!("in_{i}");
                let a = c.drip(with_key(BILLING_KEY, req)).await?.into_inner();
                Ok((a.transaction_id, a.replayed))
            }
        })
        .await;
        one_write(answers, &format!("drip of sub_{i}"));
        *expected.entry(user).or_default() += 375_000;
    }
    for i in 0..6 {
        let user = format!("granted-{}", i % 2);
        let key = format!("grant-{i}");
        let tokens = 100 + i as i64;
        let answers = to_all_at_once(r, |mut c| {
            let req = grant_req(&user, tokens, &key);
            async move {
                let a = c.grant(admin(req)).await?.into_inner();
                Ok((a.transaction_id, a.replayed))
            }
        })
        .await;
        one_write(answers, &key);
        *expected.entry(user.clone()).or_default() += tokens;
        // The key reused for another request, at any process: refused, nothing written.
        let reuse = r
            .via(i + 1)
            .grant(admin(grant_req(&user, tokens + 1, &key)))
            .await
            .unwrap_err();
        assert_eq!(reuse.code(), Code::AlreadyExists, "{reuse:?}");
    }
    expected
}

/// Hot accounts and their starting balance.
const HOT_ACCOUNTS: usize = 3;
const HOT_START: i64 = 20_000;
/// Writers per process on the hot accounts, and writes per writer.
const HOT_WRITERS_PER_PROCESS: usize = 8;
const HOT_WRITES: usize = 40;

/// What the writers of one hot account saw.
#[derive(Debug, Default, Clone)]
struct HotAccount {
    deducted: i64,
    used: i64,
    deductions: usize,
    refused: usize,
    /// The smallest refused deduction: the balance was below it then, so it is below it at the
    /// end (the hot accounts only lose tokens).
    smallest_refused: Option<i64>,
}

/// Deductions and usage from 24 writers over three processes on three accounts, more than they
/// hold: the overdraft rule refuses the rest. Answers what each account must end at.
async fn hot_accounts(r: &Replicas) -> BTreeMap<String, i64> {
    let mut c = r.via(0);
    for a in 0..HOT_ACCOUNTS {
        c.grant(admin(grant_req(
            &format!("hot-{a}"),
            HOT_START,
            &format!("hot-start-{a}"),
        )))
        .await
        .unwrap();
    }
    let seen: Arc<Mutex<HashMap<String, HotAccount>>> = Arc::default();
    let mut writers = JoinSet::new();
    for w in 0..3 * HOT_WRITERS_PER_PROCESS {
        let (mut c, seen) = (r.via(w), seen.clone());
        writers.spawn(async move {
            for n in 0..HOT_WRITES {
                let user = format!("hot-{}", (w + n) % HOT_ACCOUNTS);
                let key = format!("hot-w{w}-n{n}");
                if n % 4 == 3 {
                    let tokens = 1 + ((w * 7 + n) % 13) as i64;
                    c.track_usage(with_key(USAGE_KEY, usage_req(&user, tokens, &key)))
                        .await
                        .unwrap_or_else(|s| panic!("usage {key}: {s:?}"));
                    seen.lock().unwrap().entry(user).or_default().used += tokens;
                    continue;
                }
                let tokens = 20 + ((w * 31 + n * 17) % 180) as i64;
                let answer = c
                    .deduct(admin(pb::DeductRequest {
                        user_id: user.clone(),
                        tokens,
                        idempotency_key: key.clone(),
                        reason: "replicas".into(),
                        allow_negative: false,
                    }))
                    .await;
                let mut seen = seen.lock().unwrap();
                let account = seen.entry(user).or_default();
                match answer {
                    Ok(a) => {
                        let a = a.into_inner();
                        assert!(a.balance >= 0, "{key} left {}", a.balance);
                        account.deducted += tokens;
                        account.deductions += 1;
                    }
                    Err(s) if s.code() == Code::FailedPrecondition => {
                        account.refused += 1;
                        account.smallest_refused =
                            Some(account.smallest_refused.map_or(tokens, |t| t.min(tokens)));
                    }
                    Err(s) => panic!("deduction {key}: {s:?}"),
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let mut expected = BTreeMap::new();
    for (user, account) in &seen {
        let end = HOT_START - account.deducted - account.used;
        let got = balance(&mut r.via(2), user).await.balance;
        assert_eq!(got, end, "{user}: {account:?}");
        if let Some(t) = account.smallest_refused {
            assert!(
                got < t,
                "{user} was refused {t} but ends with {got}: {account:?}"
            );
        }
        expected.insert(user.clone(), end);
    }
    let (done, refused): (usize, usize) = seen
        .values()
        .fold((0, 0), |(d, f), a| (d + a.deductions, f + a.refused));
    eprintln!("hot accounts: {done} deductions applied, {refused} refused, {seen:?}");
    assert!(
        done > 100 && refused > 0,
        "the writers must both drain the accounts and be refused"
    );
    expected
}

/// Twelve reversals of 150 racing on one credit of 1,000 from three processes: six fit.
async fn racing_reversals(r: &Replicas) -> BTreeMap<String, i64> {
    let credit = r
        .via(0)
        .grant(admin(grant_req("refunded", 1_000, "refunded-credit")))
        .await
        .unwrap()
        .into_inner()
        .transaction_id;
    let mut tasks = JoinSet::new();
    for i in 0..12 {
        let (mut c, credit) = (r.via(i), credit.clone());
        tasks.spawn(async move {
            c.reverse(with_key(
                BILLING_KEY,
                pb::ReverseRequest {
                    user_id: "refunded".into(),
                    tokens: 150,
                    idempotency_key: format!("reverse-{i}"),
                    original_transaction_id: credit,
                    source: pb::ReversalSource::Refund as i32,
                    reason: "partial refund".into(),
                    stripe_reference: format!("re_{i}"),
                },
            ))
            .await
        });
    }
    let (mut applied, mut capped) = (0, 0);
    while let Some(answer) = tasks.join_next().await {
        match answer.unwrap() {
            Ok(_) => applied += 1,
            Err(s) if s.code() == Code::FailedPrecondition => capped += 1,
            Err(s) => panic!("reversal: {s:?}"),
        }
    }
    assert_eq!(
        (applied, capped),
        (6, 6),
        "the cap of 1,000 fits six of 150"
    );
    let b = balance(&mut r.via(1), "refunded").await;
    assert_eq!(b.totals.unwrap().reversed, 900);
    BTreeMap::from([("refunded".to_string(), 100)])
}

/// Holds placed on one process, then committed on a second and released on a third at the same
/// time: one of the two wins each hold.
async fn holds_across_processes(r: &Replicas) -> BTreeMap<String, i64> {
    r.via(0)
        .grant(admin(grant_req("holder", 10_000, "holder-credit")))
        .await
        .unwrap();
    let mut holds = Vec::new();
    for k in 0..6 {
        let hold = r
            .via(k)
            .reserve(with_key(
                USAGE_KEY,
                pb::ReserveRequest {
                    user_id: "holder".into(),
                    tokens: 1_000,
                    idempotency_key: format!("hold-{k}"),
                    ttl: Some(prost_types::Duration {
                        seconds: 120,
                        nanos: 0,
                    }),
                    model: "gpt".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        holds.push(hold.hold_id);
    }
    let mut committed = 0;
    for (k, hold_id) in holds.into_iter().enumerate() {
        let tokens = 300 + k as i64;
        let (mut by_commit, mut by_release) = (r.via(k + 1), r.via(k + 2));
        let commit = pb::CommitHoldRequest {
            hold_id: hold_id.clone(),
            tokens,
            idempotency_key: format!("commit-{k}"),
            model: "gpt".into(),
            input_tokens: 10,
            output_tokens: 20,
            ..Default::default()
        };
        let release = pb::ReleaseHoldRequest { hold_id };
        let (commit, release) = tokio::join!(
            tokio::spawn(async move { by_commit.commit_hold(with_key(USAGE_KEY, commit)).await }),
            tokio::spawn(
                async move { by_release.release_hold(with_key(USAGE_KEY, release)).await }
            ),
        );
        let release = release.unwrap().unwrap().into_inner();
        let state = release.hold.unwrap().state;
        match commit.unwrap() {
            Ok(_) => {
                assert_eq!(state, pb::HoldState::Committed as i32, "hold {k}");
                committed += tokens;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "hold {k}: {s:?}");
                assert_eq!(state, pb::HoldState::Released as i32, "hold {k}");
            }
        }
    }
    let b = balance(&mut r.via(2), "holder").await;
    assert_eq!(
        (b.held, b.available),
        (0, b.balance),
        "no hold is left active"
    );
    BTreeMap::from([("holder".to_string(), 10_000 - committed)])
}

/// Users whose lots the sweepers expire.
const LOT_USERS: usize = 4;

/// Credits that expire shortly, each on an account nobody writes to again.
async fn lots_due_soon(r: &Replicas) -> chrono::DateTime<chrono::Utc> {
    let expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    for i in 0..LOT_USERS {
        let user = format!("lot-{i}");
        let mut expiring = grant_req(&user, 1_000, &format!("lot-{i}-expiring"));
        expiring.expires_at = Some(prost_types::Timestamp {
            seconds: expires.timestamp(),
            nanos: expires.timestamp_subsec_nanos() as i32,
        });
        r.via(i).grant(admin(expiring)).await.unwrap();
        r.via(i + 1)
            .grant(admin(grant_req(&user, 500, &format!("lot-{i}-kept"))))
            .await
            .unwrap();
    }
    expires
}

/// The expiry rows of `user`'s journal, read through `c`.
async fn expiry_rows(c: &mut Client, user: &str) -> Vec<pb::Transaction> {
    c.list_transactions(with_key(
        READ_KEY,
        pb::ListTransactionsRequest {
            user_id: user.to_string(),
            page_size: 100,
            kinds: vec![pb::TransactionKind::Expiry as i32],
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .transactions
}

/// Waits for the sweepers to write each lot's expiry, then checks each was written once.
async fn lots_expired_once(r: &Replicas) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut expected = BTreeMap::new();
    for i in 0..LOT_USERS {
        let user = format!("lot-{i}");
        let expiries = loop {
            let rows = expiry_rows(&mut r.via(i), &user).await;
            if !rows.is_empty() || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Give the other sweepers time to write a second one, were they able to.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again = expiry_rows(&mut r.via(i + 2), &user).await;
        assert_eq!(expiries.len(), 1, "{user}: {expiries:?}");
        assert_eq!(
            again.len(),
            1,
            "{user} expired once by three sweepers: {again:?}"
        );
        assert_eq!(again[0].token_amount, -1_000);
        let b = balance(&mut r.via(i + 1), &user).await;
        assert_eq!(b.totals.unwrap().expired, 1_000, "{user}");
        expected.insert(user, 500);
    }
    expected
}

async fn next(stream: &mut tonic::Streaming<pb::BalanceUpdate>) -> pb::BalanceUpdate {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no balance update within 10 s")
        .unwrap()
        .unwrap()
}

/// A watcher on process 2 hears writes made through processes 0 and 1, in order.
async fn a_watcher_hears_the_other_processes(r: &Replicas) -> BTreeMap<String, i64> {
    let mut stream = r
        .via(2)
        .watch_balance(with_key(
            READ_KEY,
            pb::WatchBalanceRequest {
                user_id: "watched".into(),
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!((first.seq, first.balance), (0, 0));
    let mut expected = 0;
    for round in 0..6 {
        let tokens = 10 * (round + 1);
        r.via(round as usize % 2)
            .grant(admin(grant_req(
                "watched",
                tokens,
                &format!("watched-{round}"),
            )))
            .await
            .unwrap();
        expected += tokens;
        let update = next(&mut stream).await;
        assert_eq!(
            (update.seq, update.balance),
            (round + 1, expected),
            "round {round}: a write through process {} reached process 2's watcher",
            round % 2
        );
    }
    BTreeMap::from([("watched".to_string(), expected)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_one_database_keep_every_guarantee() {
    let started = Instant::now();
    let r = Replicas::start(&["--expiry-sweep-interval-ms", "100"]).await;
    let expires = lots_due_soon(&r).await;

    let mut expected = BTreeMap::new();
    expected.extend(business_keys_and_replays(&r).await);
    expected.extend(hot_accounts(&r).await);
    expected.extend(racing_reversals(&r).await);
    expected.extend(holds_across_processes(&r).await);
    expected.extend(a_watcher_hears_the_other_processes(&r).await);
    assert!(chrono::Utc::now() > expires - chrono::Duration::seconds(2));
    expected.extend(lots_expired_once(&r).await);

    let verified = r.verify();
    for (i, (user, want)) in expected.iter().enumerate() {
        let got = balance(&mut r.via(i), user).await.balance;
        assert_eq!(got, *want, "{user}");
    }
    let accounts = expected.len();
    r.assert_no_server_errors();
    eprintln!(
        "three processes: {accounts} accounts exact, {} in {:.1} s",
        verified.trim(),
        started.elapsed().as_secs_f64()
    );
    r.stop().await;
}

/// The backends holding a serve lock on `db` (any advisory lock: nothing else holds one there
/// between calls).
async fn serve_lock_holders(db: &TestDb) -> Vec<i32> {
    let pool = db.pool().await;
    let pids = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY pid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    pids
}

/// Waits until the serve locks on `db` are held by `count` backends, none of them in `not`
/// (a stopped server's backend ends a moment after the server; a server whose lock connection
/// was ended takes the lock again on a new one).
async fn wait_for_serve_locks(db: &TestDb, count: usize, not: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holders = serve_lock_holders(db).await;
        if holders.len() == count && holders.iter().all(|p| !not.contains(p)) {
            return;
        }
        assert!(Instant::now() < deadline, "serve lock holders: {holders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CACHE_REFUSED: &str =
    "refusing to start with --balance-cache: another token-ledger process serves this database";
const PLAIN_REFUSED: &str =
    "refusing to serve: a token-ledger process started with --balance-cache serves this database";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_cache_process_and_any_other_refuse_to_share_a_database() {
    let db = TestDb::new().await;
    // A plain process serves: the cache process refuses, before listening.
    let plain = ServerProcess::start(&db.url(), &[]).await;
    let refused = ServerProcess::refused(&db.url(), &["--balance-cache"]).await;
    assert!(refused.contains(CACHE_REFUSED), "{refused}");
    // A plain process whose lock connection is lost takes the lock again: still refused.
    let before = serve_lock_holders(&db).await;
    assert_eq!(before.len(), 1);
    assert_eq!(terminate_backends(&db, "token-ledger-serve-lock").await, 1);
    wait_for_serve_locks(&db, 1, &before).await;
    let refused = ServerProcess::refused(&db.url(), &["--balance-cache"]).await;
    assert!(refused.contains(CACHE_REFUSED), "{refused}");
    let mut c = Client::connect(plain.url()).await.unwrap();
    c.grant(admin(grant_req("u", 10, "still-serving")))
        .await
        .unwrap();
    plain.terminate().await;
    wait_for_serve_locks(&db, 0, &[]).await;

    // The cache process alone: a plain process refuses.
    let mut cached = ServerProcess::start(&db.url(), &["--balance-cache"]).await;
    let refused = ServerProcess::refused(&db.url(), &[]).await;
    assert!(refused.contains(PLAIN_REFUSED), "{refused}");
    let mut c = Client::connect(cached.url()).await.unwrap();
    assert_eq!(balance(&mut c, "u").await.balance, 10);

    // Its lock connection lost, the cache process stops with an error (another process could
    // start and write behind its cache now), and the database is free for plain processes.
    assert_eq!(terminate_backends(&db, "token-ledger-serve-lock").await, 1);
    let status = cached
        .exited_within(Duration::from_secs(20))
        .await
        .expect("the cache process still runs without its lock");
    assert!(!status.success(), "{status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errors = cached.errors.lock().unwrap().join("\n");
    assert!(
        errors.contains("the connection holding the --balance-cache lock was lost"),
        "{errors}"
    );
    let plain = ServerProcess::start(&db.url(), &[]).await;
    plain.terminate().await;
}

/// A receiver of alert deliveries: every event id, with its user, in the order received.
async fn alert_receiver() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    use axum::{http::StatusCode, routing::post, Router};
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let state = seen.clone();
    let app = Router::new().route(
        "/alerts",
        post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = json["id"].as_str().unwrap_or_default().to_string();
                let user = json["user_id"].as_str().unwrap_or_default().to_string();
                state.lock().unwrap().push((id, user));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Every alert event of the outbox, oldest first.
async fn alert_events(c: &mut Client, pending_only: bool) -> Vec<pb::AlertEvent> {
    let mut events = c
        .list_alert_events(with_key(
            READ_KEY,
            pb::ListAlertEventsRequest {
                pending_only,
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    events.reverse();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_deliverers_post_each_alert_once_and_in_order_per_account() {
    let (url, seen) = alert_receiver().await;
    let r = Replicas::start(&[
        "--alert-webhook-url",
        &url,
        "--alert-webhook-secret",
        "alert-secret-0123456789",
        "--alert-poll-ms",
        "20",
    ])
    .await;
    r.via(0)
        .set_balance_alert(admin(pb::SetBalanceAlertRequest {
            user_id: String::new(),
            threshold: Some(pb::set_balance_alert_request::Threshold::Tokens(100)),
        }))
        .await
        .unwrap();
    // Six accounts cross their threshold down and up three times each, their writes spread over
    // the three processes.
    let mut accounts = JoinSet::new();
    for a in 0..6 {
        let clients: Vec<Client> = (0..3).map(|i| r.via(i)).collect();
        accounts.spawn(async move {
            let user = format!("alerted-{a}");
            let mut c = clients[a % 3].clone();
            c.grant(admin(grant_req(&user, 150, &format!("{user}-start"))))
                .await
                .unwrap();
            for round in 0..3 {
                let mut c = clients[(a + round) % 3].clone();
                let key = format!("{user}-spend-{round}");
                c.track_usage(with_key(USAGE_KEY, usage_req(&user, 60, &key)))
                    .await
                    .unwrap();
                let mut c = clients[(a + round + 1) % 3].clone();
                let key = format!("{user}-top-up-{round}");
                c.grant(admin(grant_req(&user, 60, &key))).await.unwrap();
            }
        });
    }
    while let Some(done) = accounts.join_next().await {
        done.unwrap();
    }
    let mut c = r.via(1);
    let events = alert_events(&mut c, false).await;
    assert_eq!(
        events.len(),
        6 * 6,
        "a low and a recovery per round: {events:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alert_events(&mut c, true).await.is_empty() {
        assert!(Instant::now() < deadline, "alerts still pending after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = seen.lock().unwrap().clone();
    let mut by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, user) in &received {
        let n: i64 = id.strip_prefix("alert_").unwrap().parse().unwrap();
        by_user.entry(user.clone()).or_default().push(n);
    }
    for e in alert_events(&mut c, false).await {
        let n: i64 = e.event_id.parse().unwrap();
        let got = &by_user[&e.user_id];
        assert_eq!(
            got.iter().filter(|&&m| m == n).count(),
            1,
            "event {n} of {} posted once: {got:?}",
            e.user_id
        );
        assert_eq!(e.attempts, 1, "event {n} claimed by one deliverer once");
    }
    for (user, ids) in &by_user {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{user}: in order: {ids:?}"
        );
    }
    assert_eq!(received.len(), 36);
    r.assert_no_server_errors();
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_event_sent_to_three_processes_credits_once_and_refunds_stay_capped() {
    use common::stripe::*;
    let r = Replicas::start(&[
        "--stripe-webhook-listen",
        "127.0.0.1:0",
        "--stripe-webhook-secret",
        WEBHOOK_SECRET,
    ])
    .await;
    let hooks: Vec<std::net::SocketAddr> = r
        .servers
        .iter()
        .map(|s| s.webhook_addr.as_ref().unwrap().parse().unwrap())
        .collect();
    let send_everywhere = |e: serde_json::Value, times: usize| {
        let mut tasks = JoinSet::new();
        for i in 0..3 * times {
            let (addr, e) = (hooks[i % 3], e.clone());
            tasks.spawn(async move { deliver(addr, WEBHOOK_SECRET, &e).await.0 });
        }
        tasks
    };
    let checkout = event(
        "evt_pack",
        "checkout.session.completed",
        pack_checkout("cs_1", "pi_1", "payer", "pack_2m", 9_900),
    );
    let mut sent = send_everywhere(checkout, 2);
    while let Some(status) = sent.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(balance(&mut r.via(0), "payer").await.balance, 2_000_000);
    // A partial refund and then the full one, each delivered to every process at once, racing
    // with each other: together they take back the purchase once.
    let half = event(
        "evt_ref1",
        "charge.refunded",
        charge_refunded("ch_1", "pi_1", 9_900, 4_950),
    );
    let full = event(
        "evt_ref2",
        "charge.refunded",
        charge_refunded("ch_1", "pi_1", 9_900, 9_900),
    );
    let mut sent = send_everywhere(half, 1);
    let mut sent_full = send_everywhere(full, 1);
    while let Some(status) = sent.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    while let Some(status) = sent_full.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let b = balance(&mut r.via(1), "payer").await;
    let totals = b.totals.unwrap();
    assert_eq!(
        (b.balance, totals.purchased, totals.reversed),
        (0, 2_000_000, 2_000_000)
    );
    r.verify();
    r.assert_no_server_errors();
    r.stop().await;
}

/// The process holding the expiry sweep's lease (`job_leases`, migration 0016): the pid in its
/// holder name, if any holds it now.
async fn sweeping_pid(db: &TestDb) -> Option<u32> {
    let pool = db.pool().await;
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT holder FROM job_leases WHERE job = 'expiry_sweep' AND held_until > clock_timestamp()",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    holder.and_then(|h| h.split_whitespace().nth(1)?.parse().ok())
}

/// One process sweeps at a time, elected by PostgreSQL (a lease row, no list of processes); when
/// it dies, another takes the lease over once it runs out, and lots still expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_sweeps_and_another_takes_over_when_it_dies() {
    // 100 ms rounds: the lease lasts 1 s (SWEEP_LEASE_MIN).
    let mut r = Replicas::start(&["--expiry-sweep-interval-ms", "100"]).await;
    let pids: Vec<u32> = r.servers.iter().map(ServerProcess::pid).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(pid) = sweeping_pid(&r.db).await {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process took the sweep's lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pids.contains(&first), "{first} is not one of {pids:?}");
    // It keeps it: renewed every round, never taken by the others while it lives.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sweeping_pid(&r.db).await, Some(first));
    }

    let dead = pids.iter().position(|p| *p == first).unwrap();
    r.servers[dead].kill_9().await;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(10);
    let next = loop {
        if let Some(pid) = sweeping_pid(&r.db).await.filter(|p| *p != first) {
            break pid;
        }
        assert!(Instant::now() < deadline, "nobody took over the sweep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pids.contains(&next) && next != first);
    eprintln!(
        "sweep lease: pid {first} killed, pid {next} took over after {:.2} s",
        killed.elapsed().as_secs_f64()
    );

    // The new holder sweeps: a lot granted through a survivor expires on time.
    let alive = (dead + 1) % 3;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(1);
    let mut grant = grant_req("after-takeover", 700, "after-takeover-lot");
    grant.expires_at = Some(prost_types::Timestamp {
        seconds: expires.timestamp(),
        nanos: expires.timestamp_subsec_nanos() as i32,
    });
    let mut c = r.via(alive);
    c.grant(admin(grant)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let swept = expiry_rows(&mut c, "after-takeover").await;
        if swept.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lot was never swept after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let servers: Vec<ServerProcess> = r.servers.drain(..).collect();
    for (i, s) in servers.into_iter().enumerate() {
        if i != dead {
            s.terminate().await;
        }
    }
}
