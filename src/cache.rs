//! An in-memory copy of account balances, kept by the writers, so `GetBalance` need not ask
//! PostgreSQL (`--balance-cache`, off by default).
//!
//! Correct only while this process is the only one writing to the database: the writers update
//! it after each commit, in commit order for each account (one writer owns each account), and an
//! entry is only ever replaced by one with a higher `last_seq`, so a read that raced a commit can
//! never put an older balance back. A balance changed by anything else (another ledger process,
//! SQL by hand) is not seen until the entry is evicted.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::domain::Balance;

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
