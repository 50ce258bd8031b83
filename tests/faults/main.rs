//! The fault suite: the ledger under hard faults, proven by a checker (`checker.rs`) in the
//! spirit of Jepsen's bank and idempotence workloads, and fuzzed with proptest (`fuzz.rs`).
//!
//! Each scenario is bounded to about 30 s and prints what it did (writes acknowledged, faults
//! injected, failed attempts by code) so README's Reliability figures come from here.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod fuzz;
mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checker::{check, start_writers, History};
use common::*;
use server::ServerProcess;
use tokio::sync::watch;
use tonic::Code;

use token_ledger::embedded_pg::{DataDir, EmbeddedPostgres};
use token_ledger::pb;

/// Concurrent writers in the kill and restart scenarios.
const WRITERS: usize = 32;

/// Stops the writers and waits until every write in hand is settled.
async fn stop_writers(stop: &AtomicBool, mut writers: tokio::task::JoinSet<usize>) -> usize {
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let settle = async {
        while let Some(n) = writers.join_next().await {
            sent += n.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settle)
        .await
        .expect("writers did not settle their last writes within 30 s");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_under_32_writers_loses_and_doubles_nothing() {
    let db = TestDb::new().await;
    let mut server = ServerProcess::start(&db.url(), &[]).await;
    let (addr_tx, addr) = watch::channel(Some(server.addr.clone()));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(WRITERS, &addr, &history, &stop);

    let started = Instant::now();
    let mut kills = 0;
    while kills < 5 {
        tokio::time::sleep(Duration::from_millis(1_000 + 500 * (kills % 3))).await;
        let before = history.acknowledged();
        server.kill_9().await;
        addr_tx.send_replace(None);
        kills += 1;
        server = ServerProcess::start(&db.url(), &[]).await;
        addr_tx.send_replace(Some(server.addr.clone()));
        eprintln!(
            "kill -9 #{kills}: {before} writes acknowledged before it; restarted on {}",
            server.addr
        );
    }
    let sent = stop_writers(&stop, writers).await;
    let summary = check(&history, &server.addr, &db.pool().await).await;
    eprintln!(
        "kill -9: {WRITERS} writers, {kills} kills in {:.1} s, {sent} writes sent; {summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 4 && summary.acknowledged > 100, "{summary:?}");
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_restart_of_the_database_under_load_loses_and_doubles_nothing() {
    let dir = server::cluster_dir();
    let pg = EmbeddedPostgres::start(&DataDir::Explicit(dir.path().into()))
        .await
        .unwrap();
    let url = pg.database_url();
    let server = ServerProcess::start(&url, &[]).await;
    let (_addr_tx, addr) = watch::channel(Some(server.addr.clone()));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(WRITERS, &addr, &history, &stop);

    let started = Instant::now();
    let mut restarts = 0;
    while restarts < 3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = history.acknowledged();
        let took = server::restart_immediate(dir.path());
        restarts += 1;
        eprintln!("pg_ctl restart -m immediate #{restarts} after {before} acks took {took:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = stop_writers(&stop, writers).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let summary = check(&history, &server.addr, &pool).await;
    eprintln!(
        "database restarts: {WRITERS} writers, {restarts} immediate restarts in {:.1} s, {sent} writes sent; {summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(summary.acknowledged > 100, "{summary:?}");
    pool.close().await;
    server.terminate().await;
    pg.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_database_sheds_the_flood_with_bounded_memory_and_recovers_fully() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let server = ServerProcess::start(
        &db.url(),
        &["--request-timeout-ms", "1000", "--write-queue-max", "1000"],
    )
    .await;
    let rss_idle = server.rss_kib();
    let (_addr_tx, addr) = watch::channel(Some(server.addr.clone()));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(8, &addr, &history, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Wedge: hold ACCESS EXCLUSIVE on the accounts table for 10 s.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let wedged_at = Instant::now();

    // Flood: 128 callers sending fresh writes as fast as they are answered, one attempt each.
    let flood_stop = Arc::new(AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for f in 0..128 {
        let addr = server.addr.clone();
        let stop = flood_stop.clone();
        flood.spawn(async move {
            let mut client = pb::ledger_service_client::LedgerServiceClient::new(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_lazy(),
            );
            let mut codes = std::collections::BTreeMap::<String, u64>::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut req = with_key(USAGE_KEY, usage_req("flood", 1, &format!("flood-{f}-{n}")));
                req.set_timeout(Duration::from_millis(1_500));
                let code = match client.track_usage(req).await {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                };
                *codes.entry(format!("{code:?}")).or_default() += 1;
                n += 1;
            }
            codes
        });
    }
    let mut rss_max = 0;
    while wedged_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_max = rss_max.max(server.rss_kib());
    }
    flood_stop.store(true, Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    while let Some(c) = flood.join_next().await {
        for (code, n) in c.unwrap() {
            *codes.entry(code).or_default() += n;
        }
    }
    blocker.rollback().await.unwrap();
    let released_at = Instant::now();
    eprintln!(
        "wedged 10 s: flood answers by code {codes:?}; RSS idle {rss_idle} KiB, max {rss_max} KiB"
    );
    assert!(
        !codes.contains_key("Internal") && !codes.contains_key("Unknown"),
        "{codes:?}"
    );
    let shed: u64 = ["ResourceExhausted", "DeadlineExceeded"]
        .iter()
        .filter_map(|c| codes.get(*c))
        .sum();
    assert!(shed > 0, "the flood was not shed: {codes:?}");
    assert!(
        rss_max < 256 * 1024,
        "the server grew to {rss_max} KiB under a wedged database"
    );

    // Full recovery: the checker's writers, which ran through the wedge retrying their keys,
    // settle everything, and the books add up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = stop_writers(&stop, writers).await;
    let summary = check(&history, &server.addr, &pool).await;
    eprintln!(
        "wedge: recovered and checked {:?} after the release: {sent} writes sent; {summary}",
        released_at.elapsed()
    );
    // The flood never retries: what it saw acknowledged is in the journal, what the queue
    // refused is not, and what timed out may be (a write already in its batch commits).
    let flood_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM token_usage u JOIN accounts a USING (account_id) WHERE a.user_id = 'flood'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let ok = codes.get("Ok").copied().unwrap_or(0);
    let unknown_fate: u64 = codes
        .iter()
        .filter(|(c, _)| !matches!(c.as_str(), "Ok" | "ResourceExhausted"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        ok <= flood_rows as u64 && flood_rows as u64 <= ok + unknown_fate,
        "flood: {flood_rows} rows for {codes:?}"
    );
    server.terminate().await;
}
