//! Prometheus metrics (`--metrics-listen`, off by default). Names follow Prometheus conventions,
//! units last; every metric has a `# HELP` line (see [`describe`]).
//!
//! - `ledger_requests_total{method,code}` and `ledger_request_duration_seconds{method,code}`,
//!   `code` being gRPC's canonical name (`OK`, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, …)
//! - `ledger_batch_writes` (writes per committed batch), `ledger_batch_commit_seconds`,
//!   `ledger_batches_failed_total`
//! - `ledger_write_queue_depth` (writes waiting for a writer)
//! - `ledger_pool_connections{state=idle|in_use}` (pool waits show as in_use at the maximum)
//! - `ledger_journal_rows_total{kind}`
//! - `ledger_writes_expired_total` (writes dropped because their deadline passed while queued)
//! - `ledger_read_batch_reads` (GetBalance calls answered per query), `ledger_read_timeouts_total`
//!   (GetBalance queries given up at their callers' deadlines)
//! - `ledger_watchers` (WatchBalance streams open), `ledger_watch_notifications_total`
//!   (balance-change notifications heard)
//! - `ledger_active_holds` (holds active now), `ledger_holds_expired_total` (holds that lapsed
//!   unused), `ledger_tokens_expired_total` (tokens that left balances unused at a lot's expiry)
//! - `ledger_webhook_events_total{event_type,outcome}`, `ledger_webhook_signature_failures_total`,
//!   `ledger_webhook_ledger_call_seconds{call}`
//! - `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//!   `process_open_fds`, `process_max_fds`, `process_start_time_seconds` (see [`process`])
//!
//! Counters an alert watches are registered at zero at start-up: an alert on
//! `increase(ledger_batches_failed_total[5m]) > 0` needs a series before the first failure.
//!
//! The exporter's own HTTP listener answers every path with the metrics; this module serves
//! them itself, on `GET /metrics` only, so a probe of `/` or `/healthz` gets a 404 and not a
//! page that looks like success.

pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often the exporter drains its histogram buffers when nobody scrapes, so memory stays flat.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the recorder and serves `GET /metrics` on `listen`; returns the bound address.
pub async fn install(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = crate::server::bind(listen, "metrics").await?;
    let addr = listener.local_addr()?;
    let handle = recorder()?;
    describe();
    register_zeroes();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                let mut text = handle.render();
                text.push_str(&process::render());
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "metrics server failed");
        }
    });
    tracing::info!(%addr, "Prometheus metrics on GET /metrics");
    Ok(addr)
}

fn recorder() -> anyhow::Result<PrometheusHandle> {
    let counts = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .set_buckets_for_metric(Matcher::Full("ledger_read_batch_reads".into()), &counts)?
        .set_buckets_for_metric(Matcher::Full("ledger_batch_writes".into()), &counts)?
        .install_recorder()?)
}

/// The `# HELP` text of every metric this service records.
fn describe() {
    describe_counter!(
        "ledger_requests_total",
        "gRPC calls answered, by method and canonical status code"
    );
    describe_histogram!(
        "ledger_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a gRPC call, by method and canonical status code"
    );
    describe_histogram!(
        "ledger_batch_writes",
        Unit::Count,
        "Writes committed per batch transaction"
    );
    describe_histogram!(
        "ledger_batch_commit_seconds",
        Unit::Seconds,
        "Time to commit one batch transaction"
    );
    describe_counter!(
        "ledger_batches_failed_total",
        "Batch transactions that failed and were not applied"
    );
    describe_gauge!("ledger_write_queue_depth", "Writes waiting for a writer");
    describe_gauge!(
        "ledger_pool_connections",
        "Database pool connections, by state (idle, in_use)"
    );
    describe_counter!("ledger_journal_rows_total", "Journal rows written, by kind");
    describe_counter!(
        "ledger_writes_expired_total",
        "Writes dropped because their deadline passed while they were queued"
    );
    describe_histogram!(
        "ledger_read_batch_reads",
        Unit::Count,
        "GetBalance calls answered by one query"
    );
    describe_counter!(
        "ledger_read_timeouts_total",
        "GetBalance queries given up at their callers' deadlines (their slot freed, the database checked)"
    );
    describe_gauge!("ledger_active_holds", "Holds active now");
    describe_gauge!(
        "ledger_watchers",
        "WatchBalance streams open in this process"
    );
    describe_counter!(
        "ledger_watch_notifications_total",
        "Balance-change notifications (one per committed batch that moved accounts, from any ledger process) heard by this process"
    );
    describe_counter!("ledger_holds_expired_total", "Holds that lapsed unused");
    describe_counter!(
        "ledger_tokens_expired_total",
        "Tokens that left balances unused when their lot expired"
    );
    describe_counter!(
        "ledger_webhook_events_total",
        "Verified Stripe events handled, by event type and recorded outcome"
    );
    describe_counter!(
        "ledger_webhook_signature_failures_total",
        "Stripe webhook requests refused for a missing, stale or wrong signature"
    );
    describe_counter!(
        "ledger_alerts_written_total",
        "Balance alert events written to the outbox, in the transactions that caused them"
    );
    describe_counter!(
        "ledger_alert_deliveries_total",
        "Alert event deliveries to --alert-webhook-url, by result (delivered, failed)"
    );
    describe_histogram!(
        "ledger_webhook_ledger_call_seconds",
        Unit::Seconds,
        "Time the Stripe webhook waited for one ledger call, by call"
    );
}

/// Counters an operator alerts on, present at zero before their first increment.
fn register_zeroes() {
    gauge!("ledger_watchers").set(0.0);
    for name in [
        "ledger_batches_failed_total",
        "ledger_writes_expired_total",
        "ledger_read_timeouts_total",
        "ledger_holds_expired_total",
        "ledger_tokens_expired_total",
        "ledger_webhook_signature_failures_total",
        "ledger_watch_notifications_total",
        "ledger_alerts_written_total",
    ] {
        counter!(name).absolute(0);
    }
}

/// gRPC's canonical name for `code`, as grpcurl and the gRPC docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn request(method: &'static str, code: tonic::Code, seconds: f64) {
    let code = code_name(code);
    counter!("ledger_requests_total", "method" => method, "code" => code).increment(1);
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

/// Balance watchers (WatchBalance streams) open in this process.
pub fn watchers(active: usize) {
    gauge!("ledger_watchers").set(active as f64);
}

/// One balance-change notification heard by this process's listener.
pub fn watch_notification() {
    counter!("ledger_watch_notifications_total").increment(1);
}

/// Alert events a committed batch wrote.
pub fn alerts_written(events: usize) {
    counter!("ledger_alerts_written_total").increment(events as u64);
}

/// One delivery attempt of an alert event.
pub fn alert_delivery(delivered: bool) {
    let result = if delivered { "delivered" } else { "failed" };
    counter!("ledger_alert_deliveries_total", "result" => result).increment(1);
}

pub fn read_batch(reads: usize) {
    histogram!("ledger_read_batch_reads").record(reads as f64);
}

/// A GetBalance query given up at its callers' deadlines (a silent connection, a lock).
pub fn read_timed_out() {
    counter!("ledger_read_timeouts_total").increment(1);
}

/// One verified Stripe event, with the outcome recorded for it.
pub fn webhook_event(event_type: &str, outcome: &'static str) {
    // Stripe's event types are a closed, documented set of short names, but the body is the
    // sender's: a type beyond `EVENT_TYPE_BYTES_MAX` is counted as "other" so a label cannot
    // grow without bound.
    let event_type = if event_type.len() <= EVENT_TYPE_BYTES_MAX
        && event_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
    {
        event_type.to_string()
    } else {
        "other".to_string()
    };
    counter!("ledger_webhook_events_total", "event_type" => event_type, "outcome" => outcome)
        .increment(1);
}

/// Longest Stripe event type kept as a label value (the longest Stripe documents is under 60).
const EVENT_TYPE_BYTES_MAX: usize = 64;

pub fn webhook_signature_failure() {
    counter!("ledger_webhook_signature_failures_total").increment(1);
}

pub fn webhook_ledger_call(call: &'static str, seconds: f64) {
    histogram!("ledger_webhook_ledger_call_seconds", "call" => call).record(seconds);
}
