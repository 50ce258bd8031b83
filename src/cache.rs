//! An in-memory copy of account balances, kept by the writers, so `GetBalance` need not ask
//! PostgreSQL (`--balance-cache`, off by default).
//!
//! Correct only while this process is the only one writing to the database: the writers update
//! it after each commit, in commit order for each account (one writer owns each account), and an
//! entry is only ever replaced by one with a higher `last_seq`, so a read that raced a commit can
//! never put an older balance back. A balance changed by anything else (another ledger process,
//! SQL by hand) is not seen until the entry is evicted.
//!
//! So that "the only one" is enforced rather than hoped for, this module also owns the serve lock
//! ([`ServeLock`]): a PostgreSQL advisory lock every `serve` holds, shared without the cache and
//! exclusive with it. A cache process refuses to start beside any other ledger process, every
//! other refuses to start beside a cache process, and a cache process that loses its lock stops.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use crate::domain::Balance;
use crate::store::Store;

/// Shards, to keep readers and writers from contending on one lock.
const SHARDS: usize = 32;

pub struct BalanceCache {
    shards: Vec<RwLock<HashMap<String, Balance>>>,
    /// Entries per shard; a full shard is emptied (the next reads reload from PostgreSQL).
    shard_entries_max: usize,
}

impl std::fmt::Debug for BalanceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceCache").finish_non_exhaustive()
    }
}

impl BalanceCache {
    pub fn new(entries_max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            shard_entries_max: (entries_max / SHARDS).max(1),
        }
    }

    fn shard(&self, user_id: &str) -> &RwLock<HashMap<String, Balance>> {
        &self.shards[crate::domain::shard_of(user_id, SHARDS)]
    }

    pub fn get(&self, user_id: &str) -> Option<Balance> {
        self.shard(user_id)
            .read()
            .ok()
            .and_then(|m| m.get(user_id).cloned())
    }

    /// Stores `balance` unless one at least as new is already there: newer means a higher
    /// `transaction_count` (the account's last_seq), or the same count and a later `updated_at`
    /// (a hold write moves `held` without a journal row).
    pub fn offer(&self, user_id: &str, balance: Balance) {
        let Ok(mut map) = self.shard(user_id).write() else {
            return;
        };
        if let Some(existing) = map.get(user_id) {
            let newer = (balance.transaction_count, balance.updated_at)
                > (existing.transaction_count, existing.updated_at);
            if !newer {
                return;
            }
        } else if map.len() >= self.shard_entries_max {
            map.clear();
        }
        map.insert(user_id.to_string(), balance);
    }
}

/// The advisory lock that keeps the balance cache correct across processes: every `serve` holds
/// it shared for its whole life, and a process with the cache holds it exclusive, so a cache
/// process refuses to start while any other ledger process serves the database, and any other
/// refuses to start while a cache process runs. The two-`int4` key form, a key space apart from
/// the `bigint` keys the Stripe webhook locks payment intents with (`pg_locks.objsubid` 2, not 1).
/// Advisory locks belong to one database, so two databases on one server never see each other's.
const SERVE_LOCK_KEY: (i32, i32) = (0x746c, 1);

/// First wait before a process whose shared lock's connection died tries to take it again;
/// doubled up to [`SERVE_LOCK_RETRY_MAX`].
const SERVE_LOCK_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between two attempts to take a lost shared lock again (while the database is
/// down). Short, because a write made in between is one a cache process started meanwhile could
/// miss; the window only opens when the lock's own connection dies and the database still
/// answers this process's other connections.
const SERVE_LOCK_RETRY_MAX: Duration = Duration::from_secs(1);

/// How a serving process holds [`SERVE_LOCK_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeLockMode {
    /// Any number of ledger processes without the balance cache.
    Shared,
    /// One process with the balance cache, and no other.
    Exclusive,
}

/// The serve lock, held on a connection of its own (a one-connection pool, never lent to a
/// call) for as long as the process serves. Its connection is watched all the time, not polled:
/// PostgreSQL closing it (a terminated backend, a restart) is seen at once.
pub struct ServeLock {
    mode: ServeLockMode,
    pool: PgPool,
    /// The lock's session, `None` while it is being taken again. A `PgListener` because it waits
    /// on its socket between queries, so the connection's end wakes it; it listens on nothing.
    conn: Option<PgListener>,
}

impl std::fmt::Debug for ServeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeLock")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Why a process may not serve (or serve on) this database.
fn refusal(mode: ServeLockMode) -> anyhow::Error {
    match mode {
        ServeLockMode::Exclusive => anyhow::anyhow!(
            "refusing to start with --balance-cache: another token-ledger process serves this database. \
             The cache answers GetBalance from this process's memory and is only correct while this process \
             is the only one writing; stop the other processes, or run every process without --balance-cache"
        ),
        ServeLockMode::Shared => anyhow::anyhow!(
            "refusing to serve: a token-ledger process started with --balance-cache serves this database, \
             and its cache is only correct while it is the only process writing. Stop it, or restart it \
             without --balance-cache, to run several processes"
        ),
    }
}

impl ServeLock {
    /// Takes the lock in `mode`, or refuses (with a message saying what to do) when a process
    /// holding it the other way serves the database. A process without the cache may start
    /// while the database is down (it serves nothing until the database is back, and
    /// [`ServeLock::hold`] takes the lock as soon as it answers); a cache process may not.
    pub async fn acquire(store: &Store, mode: ServeLockMode) -> anyhow::Result<Self> {
        let options = (*store.pool().connect_options())
            .clone()
            .application_name("token-ledger-serve-lock");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let mut lock = Self {
            mode,
            pool,
            conn: None,
        };
        match lock.take().await {
            Ok(true) => Ok(lock),
            Ok(false) => {
                lock.release().await;
                Err(refusal(mode))
            }
            Err(err) if mode == ServeLockMode::Shared => {
                tracing::warn!(error = %err, "cannot take the serve lock yet: the database does not answer");
                Ok(lock)
            }
            Err(err) => {
                lock.release().await;
                Err(anyhow::Error::new(err).context("taking the --balance-cache lock"))
            }
        }
    }

    /// One attempt on a fresh connection: `Ok(false)` when the lock is held the other way.
    async fn take(&mut self) -> Result<bool, sqlx::Error> {
        self.conn = None;
        let mut conn = PgListener::connect_with(&self.pool).await?;
        // A lost connection must be seen, never silently replaced by one without the lock.
        conn.eager_reconnect(false);
        conn.ignore_pool_close_event(true);
        let sql = match self.mode {
            ServeLockMode::Shared => "SELECT pg_try_advisory_lock_shared($1, $2)",
            ServeLockMode::Exclusive => "SELECT pg_try_advisory_lock($1, $2)",
        };
        let granted: bool = sqlx::query_scalar(sql)
            .bind(SERVE_LOCK_KEY.0)
            .bind(SERVE_LOCK_KEY.1)
            .fetch_one(&mut conn)
            .await?;
        if granted {
            self.conn = Some(conn);
        }
        Ok(granted)
    }

    /// Resolves when the lock's connection has ended (and with it the lock).
    async fn connection_lost(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Nothing is ever notified on this connection; were something, it would change nothing.
        // `Ok(None)` or an error: the connection has ended.
        while let Ok(Some(_)) = conn.try_recv().await {}
        self.conn = None;
    }

    /// Holds the lock until `release` resolves (then gives it back: `Ok`), or until it is lost
    /// for good (`Err`, after telling `lost`):
    /// - **exclusive** (the cache): at its connection's end. From then on another process may
    ///   start and write behind the cache's back, and nothing would tell this one which balances
    ///   went stale, so the process stops (its caller shuts the server down, and `serve` exits
    ///   with an error for its supervisor to restart it, which takes the lock again or refuses).
    /// - **shared**: a lost connection is replaced and the lock taken again (after a database
    ///   restart, say); lost for good only if a cache process took the exclusive lock meanwhile,
    ///   since this process must not write while that one serves.
    pub async fn hold(
        mut self,
        release: tokio::sync::oneshot::Receiver<()>,
        lost: tokio::sync::oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let kept = async {
            let mut wait = SERVE_LOCK_RETRY_MIN;
            loop {
                if self.conn.is_some() {
                    self.connection_lost().await;
                    wait = SERVE_LOCK_RETRY_MIN;
                    if self.mode == ServeLockMode::Exclusive {
                        return anyhow::anyhow!(
                            "the connection holding the --balance-cache lock was lost: another process may \
                             write from now on and the cache could serve stale balances, so this process stops"
                        );
                    }
                    tracing::warn!("the serve lock's connection was lost; taking the lock again");
                }
                match self.take().await {
                    Ok(true) => tracing::info!(mode = ?self.mode, "serve lock held"),
                    Ok(false) => return refusal(self.mode),
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot take the serve lock yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(SERVE_LOCK_RETRY_MAX);
                    }
                }
            }
        };
        let lost_for_good = tokio::select! {
            _ = release => None,
            err = kept => Some(err),
        };
        self.release().await;
        match lost_for_good {
            None => Ok(()),
            Some(err) => {
                tracing::error!(error = %err, "serve lock lost: stopping");
                let _ = lost.send(());
                Err(err)
            }
        }
    }

    /// Gives the lock back by closing its connection.
    async fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
        }
        self.pool.close().await;
    }
}
