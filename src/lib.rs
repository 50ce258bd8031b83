//! token-ledger: the books for an AI product's tokens.
//!
//! Layers, imports pointing one way: `transport` (gRPC) and `webhook` (Stripe over HTTP, a
//! client of the gRPC API) → `ledger` (rules) → `store` (SQL), with
//! `domain` (validated types) and `error` (the one error enum) shared by all of them.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod client;
pub mod console;
pub mod domain;
pub mod embedded_pg;
pub mod error;
pub mod jwks;
pub mod jwt;
pub mod ledger;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod webhook;
