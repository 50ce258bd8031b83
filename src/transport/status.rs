//! The one place where a `LedgerError` becomes a `tonic::Status`.
//!
//! User errors carry a message a person can act on (and, for bad input, a `google.rpc.BadRequest`
//! naming the field). Internal errors are logged here with their whole cause chain and reach the
//! client as an opaque `INTERNAL`.

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
            LedgerError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            LedgerError::InsufficientBalance { balance, requested } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "INSUFFICIENT_BALANCE",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("balance".to_string(), balance.to_string()),
                        ("requested".to_string(), requested.to_string()),
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
            LedgerError::Unauthenticated(_) | LedgerError::InvalidJwt(_) => {
                Status::unauthenticated(message)
            }
            LedgerError::PermissionDenied { .. } => Status::permission_denied(message),
            LedgerError::ResourceExhausted(_) => Status::resource_exhausted(message),
            LedgerError::Unavailable(ref cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Status::unavailable(
                    "the ledger database is unavailable; retry with the same idempotency key",
                )
            }
            LedgerError::Internal(ref cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
