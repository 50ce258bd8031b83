//! The alert deliverer: posts each balance-alert event of the outbox to `--alert-webhook-url`,
//! signed the way Stripe signs its webhooks, at least once, in order per account, retried with
//! exponential backoff until a receiver answers 2xx.
//!
//! Any number of ledger processes may run it on one database: each claims due events with
//! `FOR UPDATE SKIP LOCKED` and leases them (`Store::claim_alert_events`), so a process that
//! dies mid-delivery only delays its events by the lease. A receiver therefore sees an event
//! more than once after a failure or a timeout, and deduplicates by its `id`.
//!
//! The request: `POST <url>`, `content-type: application/json`, header
//! `Token-Ledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, body
//! `{"id":"alert_<event id>","type":"balance_low",…}`.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::AlertEvent;
use crate::store::Store;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Token-Ledger-Signature";
/// Events claimed per round; the rest wait for the next.
const CLAIM_EVENTS_MAX: i64 = 10;
/// A receiver that has not answered by then counts as a failure (and the event is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed event is left to its deliverer before another may take it: longer than a
/// whole round of attempts (one at a time, each at most REQUEST_TIMEOUT), so an event is never
/// posted by two processes at once, and never after a later event of its account.
const LEASE: Duration = Duration::from_secs(10 * 10 + 60);
/// The first retry's delay; each failure doubles it, up to the configured cap.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Where and how alert events are delivered.
#[derive(Debug, Clone)]
pub struct AlertHookConfig {
    pub url: String,
    /// The HMAC key receivers verify signatures with.
    pub secret: String,
    /// Time between rounds when nothing was due.
    pub poll_interval: Duration,
    /// Longest delay between two attempts of one event.
    pub retry_max: Duration,
}

/// `t=…,v1=…` for `body` signed at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// What a receiver gets for `event`.
pub fn body(event: &AlertEvent) -> serde_json::Value {
    serde_json::json!({
        "id": format!("alert_{}", event.event_id),
        "type": event.kind.as_str(),
        "user_id": event.user_id,
        "threshold": event.threshold,
        "available": event.available,
        "balance": event.balance,
        "seq": event.seq,
        "created_at": event.created_at.to_rfc3339(),
        "attempt": event.attempts,
        "lot_id": event.lot.map(|l| l.0),
        "expires_at": event.lot.map(|l| l.1.to_rfc3339()),
        "tokens": event.lot.map(|l| l.2),
    })
}

/// The delay before attempt `attempts + 1` of an event that failed `attempts` times.
fn backoff(attempts: i32, cap: Duration) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    RETRY_FIRST.saturating_mul(1 << doublings).min(cap)
}

/// Delivers until the task is dropped.
pub async fn run(store: Store, config: AlertHookConfig) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "cannot build the alert webhook's HTTP client; alerts stay in the outbox");
            return;
        }
    };
    tracing::info!(url = %config.url, "delivering balance alerts");
    loop {
        match deliver_once(&store, &client, &config).await {
            // A full round: there may be more due right away.
            Ok(n) if n as i64 == CLAIM_EVENTS_MAX => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err.chain(), "alert delivery round failed; retrying")
            }
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// One round: claims what is due and attempts each event once. Returns how many it claimed.
pub async fn deliver_once(
    store: &Store,
    client: &reqwest::Client,
    config: &AlertHookConfig,
) -> Result<usize, crate::error::LedgerError> {
    let lease = chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::seconds(60));
    let events = store.claim_alert_events(CLAIM_EVENTS_MAX, lease).await?;
    // Each claimed event is the oldest pending one of its account; one at a time keeps the
    // deliverer simple, and each attempt is recorded as soon as it ends.
    for event in &events {
        let outcome = match attempt(client, config, event).await {
            Ok(()) => {
                tracing::debug!(event_id = event.event_id, "alert delivered");
                Ok(())
            }
            Err(error) => {
                let delay = backoff(event.attempts, config.retry_max);
                tracing::warn!(
                    event_id = event.event_id,
                    attempts = event.attempts,
                    retry_in_secs = delay.as_secs(),
                    %error,
                    "alert delivery failed"
                );
                let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                Err((error, at))
            }
        };
        crate::metrics::alert_delivery(outcome.is_ok());
        store.alert_attempted(event.event_id, outcome).await?;
    }
    Ok(events.len())
}

async fn attempt(
    client: &reqwest::Client,
    config: &AlertHookConfig,
    event: &AlertEvent,
) -> Result<(), String> {
    let body = serde_json::to_vec(&body(event)).map_err(|e| e.to_string())?;
    let signature = sign(&config.secret, Utc::now().timestamp(), &body);
    let response = client
        .post(&config.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", config.url))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {status}", config.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            sign("secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let cap = Duration::from_secs(3600);
        let delays: Vec<u64> = (1..=14).map(|a| backoff(a, cap).as_secs()).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
        );
    }
}
