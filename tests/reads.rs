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
