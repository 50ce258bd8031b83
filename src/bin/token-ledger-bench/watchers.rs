//! `--watchers N`: WatchBalance streams open on the run's accounts while the load runs, as the
//! product's open browser tabs would be. The run's figures then include the cost of announcing
//! and re-reading every change; after the load stops, every watcher must come to show its
//! account's final balance (the one `verify` checks), and how long that took is printed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

/// How long watchers may take to show the final balances before the run counts them as behind.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Open watch streams and what they have shown.
pub struct Watchers {
    users: Vec<String>,
    /// The balance each watcher last showed.
    shown: Arc<Vec<AtomicI64>>,
    /// Updates other than heartbeats, over all watchers.
    updates: Arc<AtomicU64>,
    /// Streams that ended before the run did.
    ended: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens `count` watchers on `users` (round robin over the users and the connections), each
/// after its first message, so all are open before the load starts.
pub async fn start(
    clients: &[LedgerServiceClient<Channel>],
    users: &[String],
    count: usize,
    auth: Option<MetadataValue<Ascii>>,
) -> anyhow::Result<Watchers> {
    let started = Instant::now();
    let shown: Arc<Vec<AtomicI64>> = Arc::new((0..count).map(|_| AtomicI64::new(0)).collect());
    let updates = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let mut watched = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let user = users[i % users.len()].clone();
        let mut client = clients[i % clients.len()].clone();
        let mut request = tonic::Request::new(pb::WatchBalanceRequest {
            user_id: user.clone(),
            after_seq: 0,
        });
        if let Some(auth) = &auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let mut stream = client.watch_balance(request).await?.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch of {user} ended at once"))?;
        shown[i].store(first.balance, Ordering::Relaxed);
        let (shown, updates, ended) = (shown.clone(), updates.clone(), ended.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(update)) = stream.message().await {
                if !update.heartbeat {
                    updates.fetch_add(1, Ordering::Relaxed);
                }
                shown[i].store(update.balance, Ordering::Relaxed);
            }
            ended.fetch_add(1, Ordering::Relaxed);
        }));
        watched.push(user);
    }
    println!(
        "opened {count} watchers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Watchers {
        users: watched,
        shown,
        updates,
        ended,
        tasks,
    })
}

impl Watchers {
    /// Updates received so far (heartbeats not counted).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Waits (up to [`SETTLE_MAX`]) until every watcher shows its account's balance in
    /// `expected` (0 for an account absent from it), prints how long that took, and closes the
    /// streams. Errors when a watcher is still behind or a stream ended early.
    pub async fn settle(
        self,
        expected: &BTreeMap<String, i64>,
        updates_during_run: u64,
        seconds: f64,
    ) -> anyhow::Result<()> {
        let stopped = Instant::now();
        let behind = || {
            self.users
                .iter()
                .enumerate()
                .filter(|(i, user)| {
                    self.shown[*i].load(Ordering::Relaxed)
                        != expected.get(*user).copied().unwrap_or(0)
                })
                .count()
        };
        let mut left = behind();
        while left > 0 && stopped.elapsed() < SETTLE_MAX {
            tokio::time::sleep(Duration::from_millis(5)).await;
            left = behind();
        }
        let settled_ms = stopped.elapsed().as_secs_f64() * 1e3;
        let ended = self.ended.load(Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        println!(
            "watchers: {} streams got {} updates ({:.0}/s over warm-up and run); every watcher showed its account's final balance {:.0} ms after the load stopped",
            self.users.len(),
            updates_during_run,
            updates_during_run as f64 / seconds.max(1e-9),
            settled_ms
        );
        anyhow::ensure!(ended == 0, "{ended} watch streams ended during the run");
        anyhow::ensure!(
            left == 0,
            "{left} of {} watchers still showed an old balance {} s after the load stopped",
            self.users.len(),
            SETTLE_MAX.as_secs()
        );
        Ok(())
    }
}
