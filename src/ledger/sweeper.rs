//! The expiry sweeper: writes what is due on accounts nobody writes to (lots past their expiry,
//! holds past their time) as journal rows, through the same group-commit writers as every write.
//!
//! Reads never wait for it: GetBalance, ListLots and ListHolds settle a copy of what is due
//! themselves, and every write settles its account before it applies. The sweeper only makes
//! the journal say so within about one interval. Settling is idempotent under the account's
//! lock, so two sweepers (two ledger processes) racing on one account write it once; and only
//! one process sweeps at a time anyway: each round first takes or renews the sweep's lease
//! (`job_leases`, migration 0016), so N replicas do not all run the same queries. A process that
//! dies holding it is replaced once the lease runs out ([`SWEEP_LEASE_ROUNDS`] intervals).

use std::time::Duration;

use super::Ledger;
use crate::domain::{UserId, WriteCommand};

/// Default time between sweeps.
pub const SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Most accounts one sweep settles; the rest wait for the next.
pub const SWEEP_ACCOUNTS_MAX: i64 = 500;
/// The sweep's lease lasts this many intervals (at least [`SWEEP_LEASE_MIN`]), renewed every
/// round: a dead holder's sweeps are taken over within that long.
pub const SWEEP_LEASE_ROUNDS: u32 = 5;
pub const SWEEP_LEASE_MIN: Duration = Duration::from_secs(1);
/// The sweep's name in `job_leases`.
pub const SWEEP_JOB: &str = "expiry_sweep";

/// Who this process is in `job_leases`: its pid and a random suffix (pids repeat across hosts
/// and restarts).
pub fn lease_holder() -> String {
    format!(
        "pid {} {}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Sweeps every `interval`, in the rounds this process holds the sweep's lease as `holder`,
/// until the ledger's writers stop.
pub async fn run(ledger: Ledger, interval: Duration, holder: String) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lease_for = (interval * SWEEP_LEASE_ROUNDS).max(SWEEP_LEASE_MIN);
    let mut held = false;
    loop {
        ticker.tick().await;
        // Every process reports the gauge, sweeping or not.
        if let Ok(active) = ledger.store().active_holds().await {
            crate::metrics::active_holds(active);
        }
        match ledger
            .store()
            .take_job_lease(SWEEP_JOB, &holder, lease_for)
            .await
        {
            Ok(now_held) => {
                if now_held != held {
                    tracing::info!(%holder, sweeping = now_held, "expiry sweep lease changed hands");
                }
                held = now_held;
            }
            Err(err) => {
                tracing::warn!(error = %err.chain(), "taking the expiry sweep's lease failed; retrying next interval");
                continue;
            }
        }
        if !held {
            continue;
        }
        if let Err(err) = sweep_once(&ledger).await {
            tracing::warn!(error = %err.chain(), "expiry sweep failed; retrying next interval");
        }
    }
}

/// One sweep: settles up to [`SWEEP_ACCOUNTS_MAX`] accounts with something due. Returns how
/// many it settled.
pub async fn sweep_once(ledger: &Ledger) -> Result<usize, crate::error::LedgerError> {
    let store = ledger.store();
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
