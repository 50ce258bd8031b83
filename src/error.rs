//! The one error type of the ledger. Each variant says which gRPC status it becomes; the mapping
//! itself lives in exactly one place, `transport::status`. This module knows nothing of SQL or
//! gRPC: the store maps database errors into these variants (`store::error`).

use std::borrow::Cow;

/// One invalid field of a request and why, as `google.rpc.BadRequest.FieldViolation` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub reason: Cow<'static, str>,
}

/// Everything a ledger operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming every invalid field: the caller
    /// sent something the ledger will never accept. Nothing was written.
    #[error("{}", describe_violations(.violations))]
    InvalidArgument { violations: Vec<FieldViolation> },

    /// `FAILED_PRECONDITION`: a deduction larger than the balance. Nothing was written; the same
    /// call may succeed once the account has been credited.
    #[error("insufficient balance: balance is {balance}, {available} available (the rest is held), asked for {requested}")]
    InsufficientBalance {
        balance: i64,
        available: i64,
        requested: i64,
    },

    /// `FAILED_PRECONDITION` with `ErrorInfo` reason `HOLD_RELEASED`, `HOLD_ALREADY_COMMITTED` or
    /// `HOLD_EXPIRED`: the hold is not in a state that allows the write. Nothing was written.
    #[error("hold {hold_id} is {state}: {reason}")]
    HoldRefused {
        hold_id: i64,
        reason: &'static str,
        state: &'static str,
    },

    /// `OUT_OF_RANGE` with `ErrorInfo` reason `AMOUNT_OVERFLOW`: applying the write would take
    /// the balance or one of the account's running totals past what a signed 64-bit integer
    /// holds. Nothing was written; the write's batch neighbours are not affected.
    #[error("the write would take the account's {what} past {}", i64::MAX)]
    AmountOverflow { what: &'static str },

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
    /// user). The message is a sentence naming what was looked for.
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

    /// `FAILED_PRECONDITION` with `ErrorInfo` reason `MODEL_NOT_PRICED`: the ledger was asked to
    /// price a call (`tokens` = 0) of a model with no price in force. Nothing was written; the
    /// call succeeds once the model is priced (or with `tokens` given).
    #[error("model {model:?} has no price in force: set one with SetModelPrice, or send tokens")]
    ModelNotPriced { model: String },

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

    /// `DEADLINE_EXCEEDED`: the caller's deadline (its `grpc-timeout`, or the server's
    /// `--request-timeout-ms`) passed. The message says whether the write is known not to have
    /// been written (it was still queued) or its outcome is unknown (its batch had started);
    /// either way, retrying with the same idempotency key is the only safe retry.
    #[error("{0}")]
    DeadlineExceeded(&'static str),

    /// `UNAVAILABLE`: the database cannot be reached right now. Nothing was written or the write's
    /// outcome is unknown; retrying with the same idempotency key is always safe.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    /// `INTERNAL`: the ledger's own bookkeeping contradicts itself (a key that points at a
    /// missing journal row, an account its batch did not lock). A bug; logged with the
    /// description, the client sees only an opaque message.
    #[error("broken invariant: {0}")]
    Invariant(Cow<'static, str>),

    /// `INTERNAL`: an unexpected failure (a database error nobody foresaw, a panic). Logged with
    /// its cause chain; the client sees only an opaque message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("invalid {}: {}", v.field, v.reason))
        .collect();
    parts.join("; ")
}

impl LedgerError {
    /// One invalid field.
    pub fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        LedgerError::InvalidArgument {
            violations: vec![FieldViolation {
                field,
                reason: reason.into(),
            }],
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        LedgerError::Internal(err.into())
    }

    /// Whether this is the ledger's fault (logged with its cause), not the caller's.
    pub fn is_internal(&self) -> bool {
        matches!(self, LedgerError::Internal(_) | LedgerError::Invariant(_))
    }

    /// The error and its whole cause chain on one line, for logs.
    pub fn chain(&self) -> String {
        one_line(self)
    }

    /// The error each caller of a failed batch gets (the batch's own error is logged once, with
    /// its cause, where it happened).
    pub fn for_batch_caller(&self) -> Self {
        match self {
            LedgerError::Unavailable(m) => LedgerError::Unavailable(m.clone()),
            _ => LedgerError::Internal(anyhow::anyhow!(
                "the batch holding this write failed: {}",
                self.chain()
            )),
        }
    }
}

/// `err` and its causes in one line, each cause once: many errors (sqlx's among them) print
/// their source inside their own message and also return it as `source()`, so a plain chain
/// would say the same thing twice.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_request_names_every_field_in_its_message() {
        let err = LedgerError::InvalidArgument {
            violations: vec![
                FieldViolation {
                    field: "user_id",
                    reason: "must not be empty".into(),
                },
                FieldViolation {
                    field: "tokens",
                    reason: "must be positive, got 0".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid user_id: must not be empty; invalid tokens: must be positive, got 0"
        );
    }
}
