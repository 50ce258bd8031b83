//! The `tokenledger.v1.LedgerService` gRPC handlers: authorize, convert the request into a
//! validated domain command (`convert`), call the ledger, convert the answer back.
//!
//! Handlers live in one file per caller: `usage` (the AI backend), `billing` (the Stripe
//! adapter), `admin` (the admin console and read-only dashboards). Every handler goes through a
//! `Call`, which carries the method's name (written once, in `method`), so its span, its metrics
//! and its permission errors can never disagree.

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{Authenticator, Caller, Scope};
use crate::domain::WriteCommand;
use crate::error::LedgerError;
use crate::ledger::watch::Watch;
use crate::ledger::Ledger;
use crate::pb;

mod admin;
mod alerts;
mod billing;
mod convert;
mod holds;
mod prices;
mod reports;
mod usage;
mod watch;

use convert::FromReceipt;

pub use usage::USAGE_BATCH_EVENTS_MAX;

/// The RPCs' names as gRPC spells them, each written once.
mod method {
    pub const GRANT: &str = "Grant";
    pub const DEDUCT: &str = "Deduct";
    pub const DRIP: &str = "Drip";
    pub const RECORD_PURCHASE: &str = "RecordPurchase";
    pub const TRACK_USAGE: &str = "TrackUsage";
    pub const TRACK_USAGE_BATCH: &str = "TrackUsageBatch";
    pub const GET_BALANCE: &str = "GetBalance";
    pub const LIST_TRANSACTIONS: &str = "ListTransactions";
    pub const REVERSE: &str = "Reverse";
    pub const GET_TRANSACTION: &str = "GetTransaction";
    pub const LIST_ACCOUNTS: &str = "ListAccounts";
    pub const WHO_AM_I: &str = "WhoAmI";
    pub const RESERVE: &str = "Reserve";
    pub const COMMIT_HOLD: &str = "CommitHold";
    pub const RELEASE_HOLD: &str = "ReleaseHold";
    pub const EXTEND_HOLD: &str = "ExtendHold";
    pub const LIST_HOLDS: &str = "ListHolds";
    pub const LIST_LOTS: &str = "ListLots";
    pub const LIST_STRIPE_EVENTS: &str = "ListStripeEvents";
    pub const GET_OVERVIEW: &str = "GetOverview";
    pub const SET_MODEL_PRICE: &str = "SetModelPrice";
    pub const LIST_MODEL_PRICES: &str = "ListModelPrices";
    pub const SUMMARIZE_USAGE: &str = "SummarizeUsage";
    pub const WATCH_BALANCE: &str = "WatchBalance";
    pub const SET_BALANCE_ALERT: &str = "SetBalanceAlert";
    pub const LIST_BALANCE_ALERTS: &str = "ListBalanceAlerts";
    pub const DELETE_BALANCE_ALERT: &str = "DeleteBalanceAlert";
    pub const LIST_ALERT_EVENTS: &str = "ListAlertEvents";
}

/// The gRPC face of the ledger.
#[derive(Debug, Clone)]
pub struct LedgerGrpc {
    ledger: Ledger,
    auth: Authenticator,
    /// The server's own limit on a call (`--request-timeout-ms`); a caller's `grpc-timeout` may
    /// only shorten it.
    request_timeout: Option<Duration>,
    /// The watched balances (WatchBalance); without it WatchBalance is UNAVAILABLE.
    watch: Option<Watch>,
}

impl LedgerGrpc {
    pub fn new(ledger: Ledger, auth: Authenticator) -> Self {
        Self {
            ledger,
            auth,
            request_timeout: None,
            watch: None,
        }
    }

    /// Serves WatchBalance from `watch`.
    pub fn with_watch(mut self, watch: Watch) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Answers every call within `timeout` (`DEADLINE_EXCEEDED` past it).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

/// How much earlier than the deadline a call gives up, so its `DEADLINE_EXCEEDED` reaches the
/// caller before the caller's own clock runs out (and before tonic's timer for the same
/// `grpc-timeout`, which would answer the less telling `CANCELLED`).
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// A `grpc-timeout` header's value (gRPC over HTTP/2: up to 8 digits and a unit), or `None`
/// when absent or malformed (a malformed one is ignored, as tonic ignores it).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When the call must be answered: the sooner of the server's limit and the caller's deadline.
fn deadline_of<T>(request: &Request<T>, server: Option<Duration>) -> Option<tokio::time::Instant> {
    let client = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout);
    let timeout = match (client, server) {
        (Some(c), Some(s)) => Some(c.min(s)),
        (c, s) => c.or(s),
    }?;
    Some(tokio::time::Instant::now() + timeout.saturating_sub(DEADLINE_MARGIN))
}

/// A caller already authenticated by code in this process (the in-process Stripe webhook), set
/// as a request extension. Remote clients cannot set extensions, only headers.
#[derive(Debug, Clone)]
pub struct InProcessCaller(pub Caller);

/// Who a request says it comes from.
enum Credentials {
    InProcess(Caller),
    Header(Option<String>),
}

fn credentials<T>(request: &Request<T>) -> Credentials {
    if let Some(InProcessCaller(caller)) = request.extensions().get::<InProcessCaller>() {
        return Credentials::InProcess(caller.clone());
    }
    Credentials::Header(
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

/// At most 130 bytes of a caller-supplied string, for logs.
fn clip(s: &str) -> &str {
    const LOG_FIELD_BYTES_MAX: usize = 130;
    if s.len() <= LOG_FIELD_BYTES_MAX {
        return s;
    }
    let mut end = LOG_FIELD_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One call being handled: its method, its credentials and its span.
struct Call<'a> {
    grpc: &'a LedgerGrpc,
    method: &'static str,
    credentials: Credentials,
    span: tracing::Span,
    deadline: Option<tokio::time::Instant>,
}

impl<'a> Call<'a> {
    /// `user_id` and `idempotency_key` (empty where the call has none) go into the span, clipped:
    /// they are caller input, and an over-long one is refused later anyway.
    fn new<T>(
        grpc: &'a LedgerGrpc,
        method: &'static str,
        request: &Request<T>,
        user_id: &str,
        idempotency_key: &str,
    ) -> Self {
        let span = tracing::info_span!(
            "rpc",
            method,
            user_id = clip(user_id),
            idempotency_key = clip(idempotency_key)
        );
        Self {
            grpc,
            method,
            credentials: credentials(request),
            span,
            deadline: deadline_of(request, grpc.request_timeout),
        }
    }

    fn ledger(&self) -> &Ledger {
        &self.grpc.ledger
    }

    /// The caller, if it holds one of `allowed` (admins hold every scope).
    fn authorize(&self, allowed: &[Scope]) -> Result<Caller, LedgerError> {
        match &self.credentials {
            Credentials::InProcess(caller) => {
                Authenticator::permit(caller.clone(), self.method, allowed)
            }
            Credentials::Header(header) => {
                self.grpc
                    .auth
                    .authorize(header.as_deref(), self.method, allowed)
            }
        }
    }

    /// Applies a write, logs its commit, and answers with the write's response type. Usage is
    /// the hot path: its commits are logged at debug, every other write's at info.
    async fn commit<R: FromReceipt>(&self, cmd: WriteCommand) -> Result<R, LedgerError> {
        let receipt = self.ledger().write_within(cmd, self.deadline).await?;
        let (transaction_id, balance, replayed) =
            (receipt.transaction_id, receipt.balance, receipt.replayed);
        if self.method == method::TRACK_USAGE {
            tracing::debug!(
                transaction_id = transaction_id.0,
                balance,
                replayed,
                "write committed"
            );
        } else {
            tracing::info!(
                transaction_id = transaction_id.0,
                balance,
                replayed,
                "write committed"
            );
        }
        Ok(R::from_receipt(receipt))
    }

    /// Runs the call inside its span and logs its outcome: one line per call, with the status
    /// code and the time it took. An internal error's cause chain is logged here, once; the
    /// client only hears the opaque status.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, LedgerError>>,
    ) -> Result<Response<T>, Status> {
        let method = self.method;
        let deadline = self.deadline;
        async move {
            let started = Instant::now();
            if let Credentials::Header(header) = &self.credentials {
                self.grpc.auth.prepare(header.as_deref()).await;
            }
            let result = match deadline {
                None => call.await,
                Some(deadline) => tokio::time::timeout_at(deadline, call).await.unwrap_or(Err(
                    LedgerError::DeadlineExceeded(
                        "the deadline passed before the call finished; a write may or may not \
                         have been applied: retry with the same idempotency key",
                    ),
                )),
            };
            let elapsed = started.elapsed().as_secs_f64();
            let elapsed_ms = elapsed * 1000.0;
            match result {
                Ok(value) => {
                    tracing::debug!(elapsed_ms, "ok");
                    crate::metrics::request(method, tonic::Code::Ok, elapsed);
                    Ok(Response::new(value))
                }
                Err(err) => {
                    let cause = (err.is_internal() || matches!(err, LedgerError::Unavailable(_)))
                        .then(|| err.chain());
                    let status = Status::from(err);
                    let code = status.code();
                    crate::metrics::request(method, code, elapsed);
                    // `reason`, not `message`: flattened JSON lines already have the event's
                    // own `message` key.
                    let code = crate::metrics::code_name(code);
                    match cause {
                        Some(cause) if code == "INTERNAL" => {
                            tracing::error!(code, error = cause, elapsed_ms, "failed")
                        }
                        Some(cause) => tracing::warn!(code, error = cause, elapsed_ms, "failed"),
                        None => {
                            tracing::info!(code, reason = status.message(), elapsed_ms, "refused")
                        }
                    }
                    Err(status)
                }
            }
        }
        .instrument(self.span.clone())
        .await
    }
}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerGrpc {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        admin::grant(self, request).await
    }

    async fn deduct(
        &self,
        request: Request<pb::DeductRequest>,
    ) -> Result<Response<pb::DeductResponse>, Status> {
        admin::deduct(self, request).await
    }

    async fn drip(
        &self,
        request: Request<pb::DripRequest>,
    ) -> Result<Response<pb::DripResponse>, Status> {
        billing::drip(self, request).await
    }

    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        billing::record_purchase(self, request).await
    }

    async fn track_usage(
        &self,
        request: Request<pb::TrackUsageRequest>,
    ) -> Result<Response<pb::TrackUsageResponse>, Status> {
        usage::track_usage(self, request).await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        usage::get_balance(self, request).await
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        admin::list_transactions(self, request).await
    }

    async fn reverse(
        &self,
        request: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        billing::reverse(self, request).await
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        admin::get_transaction(self, request).await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        admin::list_accounts(self, request).await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        admin::who_am_i(self, request).await
    }

    async fn track_usage_batch(
        &self,
        request: Request<pb::TrackUsageBatchRequest>,
    ) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
        usage::track_usage_batch(self, request).await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        holds::reserve(self, request).await
    }

    async fn commit_hold(
        &self,
        request: Request<pb::CommitHoldRequest>,
    ) -> Result<Response<pb::CommitHoldResponse>, Status> {
        holds::commit_hold(self, request).await
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        holds::release_hold(self, request).await
    }

    async fn extend_hold(
        &self,
        request: Request<pb::ExtendHoldRequest>,
    ) -> Result<Response<pb::ExtendHoldResponse>, Status> {
        holds::extend_hold(self, request).await
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        holds::list_holds(self, request).await
    }

    async fn list_lots(
        &self,
        request: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        holds::list_lots(self, request).await
    }

    async fn list_stripe_events(
        &self,
        request: Request<pb::ListStripeEventsRequest>,
    ) -> Result<Response<pb::ListStripeEventsResponse>, Status> {
        reports::list_stripe_events(self, request).await
    }

    async fn get_overview(
        &self,
        request: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::GetOverviewResponse>, Status> {
        reports::get_overview(self, request).await
    }

    async fn set_model_price(
        &self,
        request: Request<pb::SetModelPriceRequest>,
    ) -> Result<Response<pb::SetModelPriceResponse>, Status> {
        prices::set_model_price(self, request).await
    }

    async fn list_model_prices(
        &self,
        request: Request<pb::ListModelPricesRequest>,
    ) -> Result<Response<pb::ListModelPricesResponse>, Status> {
        prices::list_model_prices(self, request).await
    }

    async fn summarize_usage(
        &self,
        request: Request<pb::SummarizeUsageRequest>,
    ) -> Result<Response<pb::SummarizeUsageResponse>, Status> {
        reports::summarize_usage(self, request).await
    }

    type WatchBalanceStream = watch::WatchBalanceStream;

    async fn watch_balance(
        &self,
        request: Request<pb::WatchBalanceRequest>,
    ) -> Result<Response<Self::WatchBalanceStream>, Status> {
        watch::watch_balance(self, request).await
    }

    async fn set_balance_alert(
        &self,
        request: Request<pb::SetBalanceAlertRequest>,
    ) -> Result<Response<pb::SetBalanceAlertResponse>, Status> {
        alerts::set_balance_alert(self, request).await
    }

    async fn list_balance_alerts(
        &self,
        request: Request<pb::ListBalanceAlertsRequest>,
    ) -> Result<Response<pb::ListBalanceAlertsResponse>, Status> {
        alerts::list_balance_alerts(self, request).await
    }

    async fn delete_balance_alert(
        &self,
        request: Request<pb::DeleteBalanceAlertRequest>,
    ) -> Result<Response<pb::DeleteBalanceAlertResponse>, Status> {
        alerts::delete_balance_alert(self, request).await
    }

    async fn list_alert_events(
        &self,
        request: Request<pb::ListAlertEventsRequest>,
    ) -> Result<Response<pb::ListAlertEventsResponse>, Status> {
        alerts::list_alert_events(self, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_spells_them() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "S5"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
