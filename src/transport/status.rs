//! The one place where a `LedgerError` becomes a `tonic::Status`.
//!
//! User errors carry a message a person can act on (and, for bad input, a `google.rpc.BadRequest`
//! naming every invalid field). Internal errors reach the client as an opaque `INTERNAL`; their
//! cause is logged once, in the RPC's span, before the conversion (`grpc::Call::run`). The
//! conversion itself is pure: no logging, no I/O.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::LedgerError;

/// The `google.rpc.ErrorInfo` domain of our errors.
const ERROR_DOMAIN: &str = "tokenledger.v1";

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Self {
        let message = err.to_string();
        match err {
            LedgerError::InvalidArgument { violations } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.reason))
                        .collect::<Vec<_>>(),
                ),
            ),
            LedgerError::AmountOverflow { what } => Status::with_error_details(
                Code::OutOfRange,
                message,
                ErrorDetails::with_error_info(
                    "AMOUNT_OVERFLOW",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("what".to_string(), what.to_string()),
                        ("limit".to_string(), i64::MAX.to_string()),
                    ]),
                ),
            ),
            LedgerError::InsufficientBalance {
                balance,
                available,
                requested,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "INSUFFICIENT_BALANCE",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("balance".to_string(), balance.to_string()),
                        ("available".to_string(), available.to_string()),
                        ("requested".to_string(), requested.to_string()),
                    ]),
                ),
            ),
            LedgerError::HoldRefused {
                hold_id,
                reason,
                state,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("hold_id".to_string(), hold_id.to_string()),
                        ("state".to_string(), state.to_string()),
                    ]),
                ),
            ),
            LedgerError::IdempotencyConflict { .. } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_error_info(
                    "IDEMPOTENCY_KEY_REUSED",
                    ERROR_DOMAIN,
                    HashMap::new(),
                ),
            ),
            LedgerError::BusinessKeyConflict { transaction_id, .. } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_error_info(
                    "ALREADY_CREDITED",
                    ERROR_DOMAIN,
                    HashMap::from([("transaction_id".to_string(), transaction_id.to_string())]),
                ),
            ),
            LedgerError::NotFound(_) => Status::not_found(message),
            LedgerError::ReversalExceedsOriginal {
                reversible,
                requested,
                ..
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "REVERSAL_EXCEEDS_ORIGINAL",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("reversible".to_string(), reversible.to_string()),
                        ("requested".to_string(), requested.to_string()),
                    ]),
                ),
            ),
            LedgerError::NotReversible(_) => Status::failed_precondition(message),
            LedgerError::ModelNotPriced { model } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "MODEL_NOT_PRICED",
                    ERROR_DOMAIN,
                    HashMap::from([("model".to_string(), model)]),
                ),
            ),
            LedgerError::Unauthenticated(_) | LedgerError::InvalidJwt(_) => {
                Status::unauthenticated(message)
            }
            LedgerError::PermissionDenied { .. } => Status::permission_denied(message),
            LedgerError::ResourceExhausted(_) => Status::resource_exhausted(message),
            LedgerError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            LedgerError::Unavailable(_) => Status::unavailable(
                "the ledger database is unavailable; retry with the same idempotency key",
            ),
            LedgerError::Invariant(_) | LedgerError::Internal(_) => {
                Status::internal("internal error")
            }
        }
    }
}
