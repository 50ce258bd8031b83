//! The test harness itself: concurrent first uses of a template that does not exist yet.

mod common;

use std::sync::Arc;

use common::*;
use tokio::sync::Barrier;

/// Harnesses starting at once, as concurrent test binaries do on a fresh clone's first
/// `cargo test`.
const HARNESSES_CONCURRENT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_harnesses_starting_at_once_all_get_a_database_from_one_new_template() {
    // A fresh template name: the template does not exist yet, and other tests are undisturbed.
    let prefix = format!(
        "tl_tpltest_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let barrier = Arc::new(Barrier::new(HARNESSES_CONCURRENT));

    let tasks: Vec<_> = (0..HARNESSES_CONCURRENT)
        .map(|_| {
            let prefix = prefix.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                TestDb::from_template(&prefix).await
            })
        })
        .collect();
    let mut dbs = Vec::new();
    for task in tasks {
        dbs.push(task.await.expect("every harness gets its database"));
    }

    for db in &dbs {
        let pool = db.pool().await;
        let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            migrated,
            token_ledger::store::MIGRATOR.iter().count() as i64
        );
        pool.close().await;
    }
    drop(dbs);
    let mut conn = admin_connection().await;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(&prefix)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![template_name(&prefix)],
        "one template, no build left"
    );
    sqlx::query(&format!(
        "DROP DATABASE {} WITH (FORCE)",
        template_name(&prefix)
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}
