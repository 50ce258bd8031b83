//! The one error type of the ledger. Each variant says which gRPC status it becomes; the mapping
//! itself lives in exactly one place, `transport::grpc::status`.

use std::borrow::Cow;

/// Everything a ledger operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming `field`: the caller sent something
    /// the ledger will never accept. Nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        field: &'static str,
        reason: Cow<'static, str>,
    },

    /// `FAILED_PRECONDITION`: a deduction larger than the balance. Nothing was written; the same
    /// call may succeed once the account has been credited.
    #[error("insufficient balance: balance is {balance}, deduction asked for {requested}")]
    InsufficientBalance { balance: i64, requested: i64 },

    /// `ALREADY_EXISTS`: the idempotency key was used before for a different request. Nothing was
    /// written; the caller must pick a new key for a new request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyConflict { key: String },

    /// `ALREADY_EXISTS`: the business object (payment intent, invoice, subscription period) was
    /// already credited by a request that differs in user or amount. Nothing was written.
    #[error(
        "{object} was already credited by transaction {transaction_id} with different details"
    )]
    BusinessKeyConflict { object: String, transaction_id: i64 },

    /// `NOT_FOUND`: the transaction named by the request does not exist (or belongs to another
    /// user).
    #[error("{0}")]
    NotFound(String),

    /// `FAILED_PRECONDITION`: a reversal would claw back more than its original credited.
    /// Nothing was written.
    #[error("transaction {original} can be reversed by at most {reversible} more tokens, reversal asked for {requested}")]
    ReversalExceedsOriginal {
        original: i64,
        reversible: i64,
        requested: i64,
    },

    /// `FAILED_PRECONDITION`: only credits (grants, purchases, drips) can be reversed.
    #[error("transaction {0} is not a credit and cannot be reversed")]
    NotReversible(i64),

    /// `UNAUTHENTICATED`: no credentials, or credentials no key matches.
    #[error("{0}")]
    Unauthenticated(&'static str),

    /// `UNAUTHENTICATED`: a JWT that is malformed, expired, wrongly signed or for another
    /// audience or issuer.
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),

    /// `PERMISSION_DENIED`: a known caller without the scope this call needs.
    #[error("caller {caller:?} lacks a scope for {method}: needs one of {needed}")]
    PermissionDenied {
        caller: String,
        method: &'static str,
        needed: String,
    },

    /// `RESOURCE_EXHAUSTED`: the server is at a configured limit; retry later.
    #[error("{0}")]
    ResourceExhausted(&'static str),

    /// `UNAVAILABLE`: the database cannot be reached right now. Nothing was written or the write's
    /// outcome is unknown; retrying with the same idempotency key is always safe.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    /// `INTERNAL`: a bug or a broken invariant. Logged with its cause; the client sees only an
    /// opaque message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl LedgerError {
    pub fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        LedgerError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        LedgerError::Internal(err.into())
    }

    /// The error each caller of a failed batch gets (the batch's own error is logged once, with
    /// its cause, where it happened).
    pub fn for_batch_caller(&self) -> Self {
        match self {
            LedgerError::Unavailable(m) => LedgerError::Unavailable(m.clone()),
            _ => LedgerError::Internal(anyhow::anyhow!(
                "the batch holding this write failed: {self:#}"
            )),
        }
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => LedgerError::Unavailable(err.to_string()),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || c.starts_with("57P")
                        || matches!(c.as_ref(), "40001" | "40P01" | "55P03" | "57014")
                }) =>
            {
                // Class 08: connection exceptions; 57P: the server is shutting down or restarting;
                // serialization failure, deadlock, lock not available, statement timeout: passing
                // conditions. All are safe to retry with the same idempotency key.
                LedgerError::Unavailable(err.to_string())
            }
            other => LedgerError::Internal(other.into()),
        }
    }
}
