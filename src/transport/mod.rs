//! Transports: how requests reach the ledger. Each turns wire messages into validated domain
//! commands, calls the ledger, and turns the result back into wire messages.

pub mod alert_hook;
pub mod grpc;
pub mod status;
