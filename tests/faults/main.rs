//! The fault suite: what the service does when its inputs misbehave. Every part drives the real
//! code (a real server on port 0, a real database) and asserts it degrades the way its contract
//! says: refusals, not panics or internal errors. Run it alone with `cargo test --test faults`.
#[path = "../common/mod.rs"]
mod common;
mod fuzz;
