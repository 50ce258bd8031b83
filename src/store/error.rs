//! How database errors become ledger errors: the only place that looks inside a `sqlx::Error`
//! to decide what the caller is told.

use crate::error::LedgerError;

impl From<sqlx::Error> for LedgerError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            LedgerError::Unavailable(err.to_string())
        } else {
            LedgerError::Internal(err.into())
        }
    }
}

/// Whether `err` is a passing condition that retrying with the same idempotency key fixes.
pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exceptions; 57P: the server is shutting down or restarting;
        // 25006: the node is read-only (a primary demoted in a failover or switchover; the
        // store finds the new one); serialization failure, deadlock, lock not available,
        // statement timeout: passing conditions. All are safe to retry with the same
        // idempotency key: none of them committed anything.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || matches!(c.as_ref(), "25006" | "40001" | "40P01" | "55P03" | "57014")
        }),
        _ => false,
    }
}

/// Whether `err` says the database cannot be reached (as opposed to a passing conflict): the
/// store then fails fast until it answers again. A pool timeout is not such a sign (a full pool
/// of busy writers is load, not an outage); the health probe, on a connection of its own,
/// decides those.
pub(crate) fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        // 25006 (read-only transaction): the node was demoted; the health probe, woken by the
        // loss, looks for the new primary (with a single host it finds the same one answering).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "25006"),
        _ => false,
    }
}
