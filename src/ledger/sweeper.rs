//! The expiry sweeper: writes what is due on accounts nobody writes to (lots past their expiry,
//! holds past their time) as journal rows, through the same group-commit writers as every write.
//!
//! Reads never wait for it: GetBalance, ListLots and ListHolds settle a copy of what is due
//! themselves, and every write settles its account before it applies. The sweeper only makes
//! the journal say so within about one interval. Settling is idempotent under the account's
//! lock, so two sweepers (two ledger processes) racing on one account write it once.

use std::time::Duration;

use super::Ledger;
use crate::domain::{UserId, WriteCommand};

/// Default time between sweeps.
pub const SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Most accounts one sweep settles; the rest wait for the next.
pub const SWEEP_ACCOUNTS_MAX: i64 = 500;

/// Sweeps every `interval` until the ledger's writers stop.
pub async fn run(ledger: Ledger, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(err) = sweep_once(&ledger).await {
            tracing::warn!(error = %err.chain(), "expiry sweep failed; retrying next interval");
        }
    }
}

/// One sweep: settles up to [`SWEEP_ACCOUNTS_MAX`] accounts with something due. Returns how
/// many it settled.
pub async fn sweep_once(ledger: &Ledger) -> Result<usize, crate::error::LedgerError> {
    let store = ledger.store();
    if let Ok(active) = store.active_holds().await {
        crate::metrics::active_holds(active);
    }
    let due = store.due_accounts(SWEEP_ACCOUNTS_MAX).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let cmds: Vec<WriteCommand> = due
        .into_iter()
        .filter_map(|u| UserId::parse("user_id", u).ok())
        .map(WriteCommand::settle)
        .collect();
    let settled = ledger
        .write_many(cmds)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    tracing::debug!(settled, "expiry sweep");
    Ok(settled)
}
