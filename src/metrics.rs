//! Prometheus metrics (`--metrics-listen`, off by default). Names follow Prometheus conventions,
//! units last.
//!
//! - `ledger_requests_total{method,code}` and `ledger_request_duration_seconds{method,code}`
//! - `ledger_batch_writes` (writes per committed batch), `ledger_batch_commit_seconds`,
//!   `ledger_batches_failed_total`
//! - `ledger_write_queue_depth` (writes waiting for a writer)
//! - `ledger_pool_connections{state=idle|in_use}` (pool waits show as in_use at the maximum)
//! - `ledger_journal_rows_total{kind}`
//! - `ledger_writes_expired_total` (writes dropped because their deadline passed while queued)
//! - `ledger_read_batch_reads` (GetBalance calls answered per query)
//! - `ledger_active_holds` (holds active now), `ledger_holds_expired_total` (holds that lapsed
//!   unused), `ledger_tokens_expired_total` (tokens that left balances unused at a lot's expiry)

use std::net::SocketAddr;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Starts the exporter on `listen` (HTTP `GET /metrics`).
pub fn install(listen: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            Matcher::Suffix("seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("ledger_read_batch_reads".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("ledger_batch_writes".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )?
        .install()?;
    tracing::info!(%listen, "Prometheus metrics on GET /metrics");
    Ok(())
}

pub fn request(method: &'static str, code: tonic::Code, seconds: f64) {
    let code = format!("{code:?}");
    counter!("ledger_requests_total", "method" => method, "code" => code.clone()).increment(1);
    histogram!("ledger_request_duration_seconds", "method" => method, "code" => code)
        .record(seconds);
}

pub fn batch_committed(writes: usize, commit_ms: f64, ok: bool) {
    histogram!("ledger_batch_writes").record(writes as f64);
    histogram!("ledger_batch_commit_seconds").record(commit_ms / 1000.0);
    if !ok {
        counter!("ledger_batches_failed_total").increment(1);
    }
}

pub fn queue_depth(depth: usize) {
    gauge!("ledger_write_queue_depth").set(depth as f64);
}

pub fn pool(size: u32, idle: usize) {
    gauge!("ledger_pool_connections", "state" => "idle").set(idle as f64);
    gauge!("ledger_pool_connections", "state" => "in_use").set(f64::from(size) - idle as f64);
}

pub fn journal_row(kind: &'static str) {
    counter!("ledger_journal_rows_total", "kind" => kind).increment(1);
}

pub fn write_expired() {
    counter!("ledger_writes_expired_total").increment(1);
}

pub fn active_holds(active: i64) {
    gauge!("ledger_active_holds").set(active as f64);
}

/// What one committed batch let expire.
pub fn expired(tokens: i64, holds: usize) {
    if tokens > 0 {
        counter!("ledger_tokens_expired_total").increment(tokens as u64);
    }
    if holds > 0 {
        counter!("ledger_holds_expired_total").increment(holds as u64);
    }
}

pub fn read_batch(reads: usize) {
    histogram!("ledger_read_batch_reads").record(reads as f64);
}
