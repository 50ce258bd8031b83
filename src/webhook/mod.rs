//! The Stripe webhook adapter: `POST /stripe/webhook` turns verified Stripe events into ledger
//! calls. It answers 2xx only once the ledger call has committed (or the event is deliberately
//! ignored), 400 for requests that will never be accepted as sent (bad signature, stale timestamp,
//! unparseable body, a price missing from the catalog), and 5xx when Stripe should retry (ledger
//! unreachable, user not known yet).

pub mod catalog;
pub mod event;
pub mod ledger_port;
pub mod outcome;
pub mod process;
pub mod signature;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use outcome::EventOutcome;
pub use process::Processor;

/// Largest webhook body accepted. Stripe's events are a few KiB; invoices with many lines reach
/// tens of KiB. Larger bodies get 413 before any parsing.
pub const BODY_BYTES_MAX: usize = 512 * 1024;
/// Default tolerance between a signature's timestamp and now, as Stripe's libraries use.
pub const TOLERANCE_SECS_DEFAULT: i64 = 300;
/// Default size of the hosted webhook's own connection pool (its lane; see
/// `store::WebhookStore::lane`). Each delivery uses one connection at a time, holding it across
/// its ledger calls only while it holds a payment intent's lock; at the limit, further deliveries
/// wait for a connection (up to the database acquire timeout, then 503 and Stripe retries) while
/// the ledger's own pool stays free for its writers and readers.
pub const POOL_CONNECTIONS_MAX_DEFAULT: u32 = 4;

/// Which Stripe mode's events the webhook acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StripeMode {
    /// Live events only: a test-mode event can never mint tokens here.
    Live,
    /// Test events only: a live event pointed here by mistake is never acted on.
    Test,
    /// Both (the default, as before this setting existed).
    #[default]
    Any,
}

impl StripeMode {
    pub fn accepts(self, livemode: bool) -> bool {
        match self {
            StripeMode::Live => livemode,
            StripeMode::Test => !livemode,
            StripeMode::Any => true,
        }
    }
}

/// What the webhook answers an event for a price or product the catalog lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnknownProducts {
    /// 400, logged as an error: Stripe retries until the catalog is fixed (the default: no
    /// payment for tokens is ever dropped silently).
    #[default]
    Reject,
    /// 200, recorded as `ignored_unknown_product` and logged at warn: for a Stripe account that
    /// sells other things too (a 400 forever would make Stripe disable the endpoint).
    Ignore,
}

/// Signature settings and the webhook's safety settings.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Every accepted `whsec_...` secret (several during a rotation).
    pub secrets: Vec<String>,
    pub tolerance_secs: i64,
    pub mode: StripeMode,
    pub unknown_products: UnknownProducts,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secrets", &format!("{} configured", self.secrets.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .field("mode", &self.mode)
            .field("unknown_products", &self.unknown_products)
            .finish()
    }
}

struct AppState {
    config: WebhookConfig,
    processor: Processor,
}

/// What the webhook does about a verified event: nothing for an event of the other mode; else
/// what the processor does, with an unknown product acknowledged when so configured.
async fn settle_event(state: &AppState, envelope: &event::Envelope) -> process::Outcome {
    let config = &state.config;
    if !config.mode.accepts(envelope.livemode) {
        let detail = format!(
            "a {} event at an endpoint for {:?} mode events: not acted on",
            if envelope.livemode { "live" } else { "test" },
            config.mode
        );
        tracing::warn!(%detail, "Stripe event of the other mode ignored");
        return process::Outcome::acknowledged(envelope, EventOutcome::IgnoredOtherMode, detail);
    }
    let mut outcome = state.processor.process(envelope).await;
    if outcome.record.outcome == EventOutcome::UnknownPrice
        && config.unknown_products == UnknownProducts::Ignore
    {
        tracing::warn!(detail = %outcome.record.detail, "Stripe event for a product the catalog lacks ignored (--stripe-unknown-products ignore)");
        outcome.record.outcome = EventOutcome::IgnoredUnknownProduct;
        outcome.http_status = EventOutcome::IgnoredUnknownProduct.http_status();
    }
    outcome
}

/// The webhook's HTTP routes.
pub fn router(config: WebhookConfig, processor: Processor) -> Router {
    Router::new()
        .route("/stripe/webhook", post(handle))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(Arc::new(AppState { config, processor }))
}

/// Serves `router` on `listener` until `shutdown` resolves, finishing in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "Stripe webhook listening on POST /stripe/webhook");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn reply(status: u16, outcome: &str, detail: &str) -> axum::response::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"outcome": outcome, "detail": detail}))).into_response()
}

async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    // Verify the raw bytes before reading anything in them.
    if let Err(err) = signature::verify(
        signature,
        &body,
        &state.config.secrets,
        state.config.tolerance_secs,
        now,
    ) {
        tracing::warn!(error = %err, body_bytes = body.len(), "Stripe webhook refused: bad signature");
        crate::metrics::webhook_signature_failure();
        // Not an `EventOutcome`: nothing unverified is recorded.
        return reply(400, "bad_signature", &err.to_string());
    }
    let envelope = match event::parse_envelope(&body) {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!(error = %err, "Stripe webhook refused: unparseable body");
            crate::metrics::webhook_event("unparseable", EventOutcome::Malformed.as_str());
            // Not recorded: with no event id there is no row to write.
            return reply(400, EventOutcome::Malformed.as_str(), &err);
        }
    };
    let span = tracing::info_span!("stripe_event", event_id = %envelope.id, event_type = %envelope.event_type);
    async move {
        let outcome = settle_event(&state, &envelope).await;
        crate::metrics::webhook_event(&envelope.event_type, outcome.record.outcome.as_str());
        if let Err(err) = state.processor.store().record_event(&outcome.record).await {
            // The ledger call (if any) is committed; only the operator's log row is missing.
            tracing::error!(error = %err, "could not record the Stripe event's outcome");
        }
        tracing::info!(
            outcome = %outcome.record.outcome,
            http_status = outcome.http_status,
            user_id = outcome.record.user_id.as_deref().unwrap_or("-"),
            // A number, as in every other log line (see `telemetry`); absent when none.
            transaction_id = outcome
                .record
                .transaction_id
                .as_deref()
                .and_then(|id| id.parse::<i64>().ok()),
            detail = %outcome.record.detail,
            "Stripe event handled"
        );
        reply(
            outcome.http_status,
            outcome.record.outcome.as_str(),
            &outcome.record.detail,
        )
    }
    .instrument(span)
    .await
}
