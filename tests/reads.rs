//! Coalesced reads keep read-after-write across processes: two server processes on one database,
//! one writes, the other reads, many rounds, while other readers keep the reading server busy
//! (so its reads are answered in shared queries).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use token_ledger::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_an_acknowledged_write_on_another_process_sees_it() {
    let writer = TestApp::spawn().await;
    let reader = TestApp::spawn_with(TestOptions {
        database_url: Some(writer.db.url()),
        ..TestOptions::default()
    })
    .await;
    const USERS: usize = 12;
    const ROUNDS: i64 = 40;
    let stop = Arc::new(AtomicBool::new(false));
    // Background readers: keep the reading process's queue full.
    let mut noise = Vec::new();
    for n in 0..24 {
        let mut c = reader.client().await;
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("rw-{}", (n + reads as usize) % USERS);
                c.get_balance(admin(pb::GetBalanceRequest {
                    user_id: user,
                    as_of: None,
                }))
                .await
                .unwrap();
                reads += 1;
            }
            reads
        }));
    }
    let mut checkers = Vec::new();
    for u in 0..USERS {
        let mut w = writer.client().await;
        let mut r = reader.client().await;
        checkers.push(tokio::spawn(async move {
            let user = format!("rw-{u}");
            let mut expected = 0;
            for round in 0..ROUNDS {
                let key = format!("{user}-{round}");
                if round % 3 == 0 {
                    w.grant(admin(grant_req(&user, 1_000, &key))).await.unwrap();
                    expected += 1_000;
                } else {
                    w.track_usage(admin(usage_req(&user, 7, &key)))
                        .await
                        .unwrap();
                    expected -= 7;
                }
                let seen = r
                    .get_balance(admin(pb::GetBalanceRequest {
                        user_id: user.clone(),
                        as_of: None,
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .balance;
                assert_eq!(seen, expected, "{user} round {round}: a stale read");
            }
        }));
    }
    for c in checkers {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for n in noise {
        reads += n.await.unwrap();
    }
    assert!(reads > 0);
    writer.assert_verified().await;
}

/// The ledger's pooled connections, ended by the database while they sat in the pool (a
/// restart, an operator's `pg_terminate_backend`). sqlx pings every connection it hands out; the
/// ledger pings only one idle a second or more, or any while the database was lost or came back
/// within the last 30 s (README, "Connections"). So: connections idle a second are replaced before
/// any call gets one, and of connections ended while hot, only the first a call finds fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_database_ended_are_replaced_before_calls_use_them() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let call = |mut client: pb::ledger_service_client::LedgerServiceClient<_>, i: usize| async move {
        client
            .grant(admin(grant_req(
                &format!("u{}", i % 4),
                10,
                &format!("k{i}"),
            )))
            .await?;
        client
            .get_balance(admin(pb::GetBalanceRequest {
                user_id: format!("u{}", i % 4),
                ..Default::default()
            }))
            .await
    };
    // Several connections in the pool, each used just now: concurrent writes and reads.
    let warm = |calls: std::ops::Range<usize>| {
        let tasks: Vec<_> = calls
            .map(|i| tokio::spawn(call(client.clone(), i)))
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap().expect("warm-up call");
            }
        }
    };
    warm(0..16).await;
    assert!(terminate_backends(&app.db, "token-ledger").await >= 2);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    for i in 16..48 {
        call(client.clone(), i)
            .await
            .unwrap_or_else(|s| panic!("call {i} after the connections idled a second: {s:?}"));
    }
    // Ended while hot (several used within the second): the call that finds one dead may fail,
    // UNAVAILABLE; every connection is pinged from then on, so no other call fails.
    warm(100..116).await;
    assert!(terminate_backends(&app.db, "token-ledger").await >= 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut failed, mut answered) = (Vec::new(), 0);
    let mut i = 48;
    while answered < 40 {
        assert!(std::time::Instant::now() < deadline, "calls still failing");
        match call(client.clone(), i).await {
            Ok(_) => answered += 1,
            Err(status) => {
                assert_eq!(
                    answered, 0,
                    "a call failed after calls were answered again: {status:?}"
                );
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                failed.push(i);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        i += 1;
    }
    eprintln!(
        "hot connections ended: {} calls failed before calls were answered again",
        failed.len()
    );
    assert!(failed.len() <= 1, "calls failed: {failed:?}");
    // A failed call's grant may or may not have applied: retried with its key, it applies once.
    for k in failed {
        let req = grant_req(&format!("u{}", k % 4), 10, &format!("k{k}"));
        client.grant(admin(req)).await.expect("a retried grant");
    }
    let total = balance_of(&mut client, "u0").await
        + balance_of(&mut client, "u1").await
        + balance_of(&mut client, "u2").await
        + balance_of(&mut client, "u3").await;
    assert_eq!(total, 10 * (i + 16) as i64, "each grant applied once");
    app.assert_verified().await;
}

/// One read batch on a connection that went silent (no reset: a partition, a frozen host) must
/// not stop every read. With one read query in flight, a batch that never ends would hold the
/// only slot for good; instead it is given up at its callers' deadline (here the 1 s request
/// timeout), frees the slot and closes its connection, and the reads after it come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_batch_stuck_on_a_silent_connection_does_not_stop_the_reads_after_it() {
    use common::proxy::{Proxy, Upstream};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    let db = TestDb::new().await;
    let proxy = Proxy::start(Upstream::of(&db.options)).await;
    let through_proxy = proxy.url_of(&db);
    let app = TestApp::spawn_on(
        db,
        TestOptions {
            database_url: Some(through_proxy),
            request_timeout: Some(Duration::from_secs(1)),
            // The health probe runs only when a call suspects the database (every 100 ms in
            // the other tests), so the silent connections are found by the reads using them.
            health_check_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    let mut client = app.client().await;
    client.grant(admin(grant_req("u", 100, "k"))).await.unwrap();

    // 32 callers read in a loop, so a batch is nearly always in flight, and record every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, Result<i64, tonic::Code>)>::new()));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (stop, answers, mut client) = (stop.clone(), answers.clone(), client.clone());
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .get_balance(admin(pb::GetBalanceRequest {
                        user_id: "u".into(),
                        ..Default::default()
                    }))
                    .await
                    .map(|r| r.into_inner().balance)
                    .map_err(|status| status.code());
                answers.lock().unwrap().push((Instant::now(), answer));
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let silenced = Instant::now();
    proxy.silence_open_connections();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    while callers.join_next().await.is_some() {}

    let answers = answers.lock().unwrap();
    let after: Vec<_> = answers.iter().filter(|(at, _)| *at > silenced).collect();
    for (_, answer) in &after {
        match answer {
            Ok(balance) => assert_eq!(*balance, 100),
            Err(code) => assert!(
                [tonic::Code::Unavailable, tonic::Code::DeadlineExceeded].contains(code),
                "{code:?}"
            ),
        }
    }
    // The silence caught reads in flight: they failed.
    let failed = after.iter().filter(|(_, a)| a.is_err()).count();
    assert!(failed > 0, "no read failed after the silence");
    // And reads came back: the last two seconds answered, well within the ten.
    let late = silenced + Duration::from_secs(8);
    let late_ok = after
        .iter()
        .filter(|(at, a)| *at > late && a.is_ok())
        .count();
    eprintln!(
        "after the silence: {} answers, {failed} failed, {late_ok} answered in the last 2 s",
        after.len()
    );
    assert!(
        late_ok >= 32,
        "reads did not come back after a silent connection: {late_ok} answered in the last 2 s"
    );
}
