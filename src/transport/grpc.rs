//! The `tokenledger.v1.LedgerService` gRPC handlers: authorize, convert the request into a
//! validated domain command, call the ledger, convert the answer back.

use std::time::Instant;

use chrono::{DateTime, Datelike, Utc};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{Authenticator, Caller, Scope};
use crate::domain::{
    build, EntryId, EntryKind, GrantSource, Receipt, ReversalSource, UserId, WriteDetails,
};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::pb;
use crate::store::{AccountOrder, EntryLookup, HistoryFilter, JournalEntry};

/// The gRPC face of the ledger.
#[derive(Debug, Clone)]
pub struct LedgerGrpc {
    ledger: Ledger,
    auth: Authenticator,
}

impl LedgerGrpc {
    pub fn new(ledger: Ledger, auth: Authenticator) -> Self {
        Self { ledger, auth }
    }
}

/// Most events one TrackUsageBatch call may carry.
pub const USAGE_BATCH_EVENTS_MAX: usize = 1_000;

fn usage_result(r: Result<Receipt, LedgerError>) -> pb::TrackUsageResult {
    match r {
        Ok(r) => pb::TrackUsageResult {
            code: 0,
            message: String::new(),
            transaction_id: r.transaction_id.to_string(),
            balance: r.balance,
            replayed: r.replayed,
        },
        Err(err) => {
            let status = Status::from(err);
            pb::TrackUsageResult {
                code: status.code() as i32,
                message: status.message().to_string(),
                ..Default::default()
            }
        }
    }
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

impl LedgerGrpc {
    fn authorize(
        &self,
        credentials: &Credentials,
        method: &'static str,
        allowed: &[Scope],
    ) -> Result<Caller, LedgerError> {
        match credentials {
            Credentials::InProcess(caller) => {
                Authenticator::permit(caller.clone(), method, allowed)
            }
            Credentials::Header(header) => self.auth.authorize(header.as_deref(), method, allowed),
        }
    }
}

/// Runs one call inside a span with the method, user and idempotency key, and logs its outcome:
/// one line per call, with the status code and the time it took.
async fn traced<T>(
    method: &'static str,
    user_id: &str,
    idempotency_key: &str,
    call: impl std::future::Future<Output = Result<T, LedgerError>>,
) -> Result<Response<T>, Status> {
    // Clipped: these are caller input, and an over-long one is refused below anyway.
    let span = tracing::info_span!(
        "rpc",
        method,
        user_id = clip(user_id),
        idempotency_key = clip(idempotency_key)
    );
    async move {
        let started = Instant::now();
        let result = call.await;
        let elapsed = started.elapsed().as_secs_f64();
        let elapsed_ms = elapsed * 1000.0;
        match result {
            Ok(value) => {
                tracing::debug!(elapsed_ms, "ok");
                crate::metrics::request(method, tonic::Code::Ok, elapsed);
                Ok(Response::new(value))
            }
            Err(err) => {
                let status = Status::from(err);
                crate::metrics::request(method, status.code(), elapsed);
                match status.code() {
                    tonic::Code::Internal | tonic::Code::Unavailable => {
                        tracing::warn!(code = ?status.code(), elapsed_ms, "failed")
                    }
                    code => {
                        tracing::info!(?code, message = status.message(), elapsed_ms, "refused")
                    }
                }
                Err(status)
            }
        }
    }
    .instrument(span)
    .await
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

impl LedgerGrpc {
    /// Applies a write, logs its commit, and answers with the write's response type. Usage is
    /// the hot path: its commits are logged at debug, every other write's at info.
    async fn commit<R: FromReceipt>(
        &self,
        method: &'static str,
        cmd: crate::domain::WriteCommand,
    ) -> Result<R, LedgerError> {
        let receipt = self.ledger.write(cmd).await?;
        let (transaction_id, balance, replayed) =
            (receipt.transaction_id, receipt.balance, receipt.replayed);
        if method == "TrackUsage" {
            tracing::debug!(method, %transaction_id, balance, replayed, "write committed");
        } else {
            tracing::info!(method, %transaction_id, balance, replayed, "write committed");
        }
        Ok(R::from_receipt(receipt))
    }
}

fn timestamp_to_chrono(
    field: &'static str,
    ts: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, LedgerError> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(LedgerError::invalid(field, "nanos must be in 0..1e9"));
    }
    // PostgreSQL keeps microseconds: truncate here, so what is compared (business keys,
    // fingerprints) is exactly what is stored.
    let micros = ts.nanos / 1_000 * 1_000;
    let t = DateTime::from_timestamp(ts.seconds, micros as u32)
        .ok_or_else(|| LedgerError::invalid(field, "is out of range"))?;
    if !(TIMESTAMP_YEAR_MIN..=TIMESTAMP_YEAR_MAX).contains(&t.year()) {
        return Err(LedgerError::invalid(
            field,
            format!("must be between the years {TIMESTAMP_YEAR_MIN} and {TIMESTAMP_YEAR_MAX}"),
        ));
    }
    Ok(Some(t))
}

/// Timestamps outside these years are caller bugs (and some would not fit PostgreSQL).
const TIMESTAMP_YEAR_MIN: i32 = 1970;
const TIMESTAMP_YEAR_MAX: i32 = 9999;

fn chrono_to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn grant_source_from_pb(value: i32) -> Option<GrantSource> {
    match pb::GrantSource::try_from(value).ok()? {
        pb::GrantSource::Admin => Some(GrantSource::Admin),
        pb::GrantSource::AnnualSubscription => Some(GrantSource::AnnualSubscription),
        pb::GrantSource::Unspecified => None,
    }
}

fn grant_source_to_pb(source: GrantSource) -> pb::GrantSource {
    match source {
        GrantSource::Admin => pb::GrantSource::Admin,
        GrantSource::AnnualSubscription => pb::GrantSource::AnnualSubscription,
    }
}

fn entry_kind_from_pb(value: i32) -> Result<EntryKind, LedgerError> {
    match pb::TransactionKind::try_from(value) {
        Ok(pb::TransactionKind::Grant) => Ok(EntryKind::Grant),
        Ok(pb::TransactionKind::Deduction) => Ok(EntryKind::Deduction),
        Ok(pb::TransactionKind::Purchase) => Ok(EntryKind::Purchase),
        Ok(pb::TransactionKind::Drip) => Ok(EntryKind::Drip),
        Ok(pb::TransactionKind::Usage) => Ok(EntryKind::Usage),
        Ok(pb::TransactionKind::Reversal) => Ok(EntryKind::Reversal),
        Ok(pb::TransactionKind::Unspecified) | Err(_) => Err(LedgerError::invalid(
            "kinds",
            format!("{value} is not a transaction kind"),
        )),
    }
}

fn totals_to_pb(t: &crate::store::Totals) -> pb::BalanceTotals {
    pb::BalanceTotals {
        granted: t.granted,
        deducted: t.deducted,
        purchased: t.purchased,
        dripped: t.dripped,
        used: t.used,
        reversed: t.reversed,
    }
}

fn reversal_source_from_pb(value: i32) -> Option<ReversalSource> {
    match pb::ReversalSource::try_from(value).ok()? {
        pb::ReversalSource::Refund => Some(ReversalSource::Refund),
        pb::ReversalSource::Dispute => Some(ReversalSource::Dispute),
        pb::ReversalSource::Admin => Some(ReversalSource::Admin),
        pb::ReversalSource::Unspecified => None,
    }
}

fn reversal_source_to_pb(source: ReversalSource) -> pb::ReversalSource {
    match source {
        ReversalSource::Refund => pb::ReversalSource::Refund,
        ReversalSource::Dispute => pb::ReversalSource::Dispute,
        ReversalSource::Admin => pb::ReversalSource::Admin,
    }
}

fn transaction_to_pb(entry: JournalEntry) -> pb::Transaction {
    use pb::transaction::Details;
    let kind = entry.kind();
    let (reason, details) = match entry.details {
        WriteDetails::Grant {
            source,
            reason,
            stripe_subscription_id,
            stripe_invoice_id,
        } => (
            reason.unwrap_or_default(),
            Some(Details::Grant(pb::GrantDetails {
                source: grant_source_to_pb(source) as i32,
                stripe_subscription_id: stripe_subscription_id.unwrap_or_default(),
                stripe_invoice_id: stripe_invoice_id.unwrap_or_default(),
            })),
        ),
        WriteDetails::Deduction {
            reason,
            allow_negative,
        } => (
            reason,
            Some(Details::Deduction(pb::DeductionDetails { allow_negative })),
        ),
        WriteDetails::Purchase {
            amount_paid_cents,
            currency,
            stripe_payment_intent_id,
            stripe_checkout_session_id,
            pack,
        } => (
            String::new(),
            Some(Details::Purchase(pb::PurchaseDetails {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id: stripe_checkout_session_id.unwrap_or_default(),
                pack: pack.unwrap_or_default(),
            })),
        ),
        WriteDetails::Drip {
            stripe_subscription_id,
            stripe_invoice_id,
            period_start,
            period_end,
        } => (
            String::new(),
            Some(Details::Drip(pb::DripDetails {
                stripe_subscription_id,
                stripe_invoice_id: stripe_invoice_id.unwrap_or_default(),
                period_start: Some(chrono_to_timestamp(period_start)),
                period_end: Some(chrono_to_timestamp(period_end)),
            })),
        ),
        WriteDetails::Usage {
            model,
            input_tokens,
            output_tokens,
            feature,
        } => (
            String::new(),
            Some(Details::Usage(pb::UsageDetails {
                model: model.unwrap_or_default(),
                input_tokens,
                output_tokens,
                feature: feature.unwrap_or_default(),
            })),
        ),
        WriteDetails::Reversal {
            original,
            source,
            reason,
            stripe_reference,
        } => (
            reason,
            Some(Details::Reversal(pb::ReversalDetails {
                original_transaction_id: original.to_string(),
                source: reversal_source_to_pb(source) as i32,
                stripe_reference: stripe_reference.unwrap_or_default(),
            })),
        ),
    };
    let kind = match kind {
        EntryKind::Grant => pb::TransactionKind::Grant,
        EntryKind::Deduction => pb::TransactionKind::Deduction,
        EntryKind::Purchase => pb::TransactionKind::Purchase,
        EntryKind::Drip => pb::TransactionKind::Drip,
        EntryKind::Usage => pb::TransactionKind::Usage,
        EntryKind::Reversal => pb::TransactionKind::Reversal,
    };
    pb::Transaction {
        id: entry.id.to_string(),
        kind: kind as i32,
        token_amount: entry.token_amount,
        balance_after: entry.balance_after,
        created_at: Some(chrono_to_timestamp(entry.created_at)),
        created_by: entry.created_by,
        reason,
        idempotency_key: entry.idempotency_key.unwrap_or_default(),
        sequence: entry.seq,
        details,
    }
}

/// Every write response has the same three fields.
trait FromReceipt {
    fn from_receipt(r: Receipt) -> Self;
}

macro_rules! impl_from_receipt {
    ($($ty:ty),*) => {$(
        impl FromReceipt for $ty {
            fn from_receipt(r: Receipt) -> Self {
                Self { transaction_id: r.transaction_id.to_string(), balance: r.balance, replayed: r.replayed }
            }
        }
    )*};
}

impl_from_receipt!(
    pb::ReverseResponse,
    pb::GrantResponse,
    pb::DeductResponse,
    pb::DripResponse,
    pb::RecordPurchaseResponse,
    pb::TrackUsageResponse
);

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerGrpc {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let credentials = credentials(&request);
        let pb::GrantRequest {
            user_id,
            tokens,
            idempotency_key,
            source,
            reason,
            stripe_subscription_id,
            stripe_invoice_id,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("Grant", &span_user, &span_key, async move {
            let source = grant_source_from_pb(source);
            // Annual allotments come from the billing adapter; admin grants only from admins.
            let allowed: &[Scope] = match source {
                Some(GrantSource::AnnualSubscription) => &[Scope::Billing],
                _ => &[],
            };
            let caller = self.authorize(&credentials, "Grant", allowed)?;
            let cmd = build::grant(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            )?;
            self.commit("Grant", cmd).await
        })
        .await
    }

    async fn deduct(
        &self,
        request: Request<pb::DeductRequest>,
    ) -> Result<Response<pb::DeductResponse>, Status> {
        let credentials = credentials(&request);
        let pb::DeductRequest {
            user_id,
            tokens,
            idempotency_key,
            reason,
            allow_negative,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("Deduct", &span_user, &span_key, async move {
            let caller = self.authorize(&credentials, "Deduct", &[])?;
            let cmd = build::deduction(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                reason,
                allow_negative,
            )?;
            self.commit("Deduct", cmd).await
        })
        .await
    }

    async fn drip(
        &self,
        request: Request<pb::DripRequest>,
    ) -> Result<Response<pb::DripResponse>, Status> {
        let credentials = credentials(&request);
        let pb::DripRequest {
            user_id,
            tokens,
            idempotency_key,
            stripe_subscription_id,
            stripe_invoice_id,
            period_start,
            period_end,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("Drip", &span_user, &span_key, async move {
            let caller = self.authorize(&credentials, "Drip", &[Scope::Billing])?;
            let cmd = build::drip(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                stripe_subscription_id,
                stripe_invoice_id,
                timestamp_to_chrono("period_start", period_start)?,
                timestamp_to_chrono("period_end", period_end)?,
            )?;
            self.commit("Drip", cmd).await
        })
        .await
    }

    async fn record_purchase(
        &self,
        request: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        let credentials = credentials(&request);
        let pb::RecordPurchaseRequest {
            user_id,
            tokens,
            idempotency_key,
            amount_paid_cents,
            currency,
            stripe_payment_intent_id,
            stripe_checkout_session_id,
            pack,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("RecordPurchase", &span_user, &span_key, async move {
            let caller = self.authorize(&credentials, "RecordPurchase", &[Scope::Billing])?;
            let cmd = build::purchase(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id,
                pack,
            )?;
            self.commit("RecordPurchase", cmd).await
        })
        .await
    }

    async fn track_usage(
        &self,
        request: Request<pb::TrackUsageRequest>,
    ) -> Result<Response<pb::TrackUsageResponse>, Status> {
        let credentials = credentials(&request);
        let pb::TrackUsageRequest {
            user_id,
            tokens,
            idempotency_key,
            model,
            input_tokens,
            output_tokens,
            feature,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("TrackUsage", &span_user, &span_key, async move {
            let caller = self.authorize(&credentials, "TrackUsage", &[Scope::Usage])?;
            let cmd = build::usage(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                model,
                input_tokens,
                output_tokens,
                feature,
            )?;
            self.commit("TrackUsage", cmd).await
        })
        .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let credentials = credentials(&request);
        let pb::GetBalanceRequest { user_id } = request.into_inner();
        let span_user = user_id.clone();
        traced("GetBalance", &span_user, "", async move {
            self.authorize(
                &credentials,
                "GetBalance",
                &[Scope::Usage, Scope::Billing, Scope::Read],
            )?;
            let user_id = UserId::parse("user_id", user_id)?;
            let b = self.ledger.balance(&user_id).await?;
            Ok(pb::GetBalanceResponse {
                user_id: user_id.to_string(),
                balance: b.balance,
                totals: Some(totals_to_pb(&b.totals)),
                updated_at: b.updated_at.map(chrono_to_timestamp),
                transaction_count: b.transaction_count,
            })
        })
        .await
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let credentials = credentials(&request);
        let pb::ListTransactionsRequest {
            user_id,
            page_size,
            page_token,
            kinds,
            created_after,
            created_before,
        } = request.into_inner();
        let span_user = user_id.clone();
        traced("ListTransactions", &span_user, "", async move {
            self.authorize(&credentials, "ListTransactions", &[Scope::Read])?;
            let user_id = UserId::parse("user_id", user_id)?;
            let filter = HistoryFilter {
                kinds: if kinds.is_empty() {
                    None
                } else {
                    Some(
                        kinds
                            .into_iter()
                            .map(entry_kind_from_pb)
                            .collect::<Result<_, _>>()?,
                    )
                },
                created_after: timestamp_to_chrono("created_after", created_after)?,
                created_before: timestamp_to_chrono("created_before", created_before)?,
            };
            let page = self
                .ledger
                .history(&user_id, page_size, &page_token, &filter)
                .await?;
            Ok(pb::ListTransactionsResponse {
                transactions: page.entries.into_iter().map(transaction_to_pb).collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn reverse(
        &self,
        request: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        let credentials = credentials(&request);
        let pb::ReverseRequest {
            user_id,
            tokens,
            idempotency_key,
            original_transaction_id,
            source,
            reason,
            stripe_reference,
        } = request.into_inner();
        let span_user = user_id.clone();
        let span_key = idempotency_key.clone();
        traced("Reverse", &span_user, &span_key, async move {
            let source = reversal_source_from_pb(source);
            // Refunds and disputes come from the billing adapter; hand corrections from admins.
            let allowed: &[Scope] = match source {
                Some(ReversalSource::Refund | ReversalSource::Dispute) => &[Scope::Billing],
                _ => &[],
            };
            let caller = self.authorize(&credentials, "Reverse", allowed)?;
            let cmd = build::reversal(
                build::Common {
                    user_id,
                    tokens,
                    idempotency_key,
                },
                caller.actor(),
                &original_transaction_id,
                source,
                reason,
                stripe_reference,
            )?;
            self.commit("Reverse", cmd).await
        })
        .await
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let credentials = credentials(&request);
        let pb::GetTransactionRequest { lookup } = request.into_inner();
        traced("GetTransaction", "", "", async move {
            self.authorize(
                &credentials,
                "GetTransaction",
                &[Scope::Read, Scope::Billing],
            )?;
            use pb::get_transaction_request::Lookup;
            let lookup = match lookup {
                Some(Lookup::TransactionId(id)) => {
                    EntryLookup::Id(EntryId::parse("transaction_id", &id)?)
                }
                Some(Lookup::StripePaymentIntentId(pi))
                    if !pi.is_empty() && pi.len() <= crate::domain::STRIPE_ID_LEN_MAX =>
                {
                    EntryLookup::PaymentIntent(pi)
                }
                Some(Lookup::StripePaymentIntentId(_)) => {
                    return Err(LedgerError::invalid(
                        "stripe_payment_intent_id",
                        "must be 1 to 255 characters",
                    ))
                }
                None => {
                    return Err(LedgerError::invalid(
                        "lookup",
                        "set transaction_id or stripe_payment_intent_id",
                    ))
                }
            };
            let found = self.ledger.find(&lookup).await?.ok_or_else(|| {
                LedgerError::NotFound(format!("no transaction matches {lookup:?}"))
            })?;
            Ok(pb::GetTransactionResponse {
                transaction: Some(transaction_to_pb(found.entry)),
                user_id: found.user_id,
                reversed_tokens: found.reversed_tokens,
            })
        })
        .await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let credentials = credentials(&request);
        let pb::ListAccountsRequest {
            user_id_prefix,
            order_by,
            page_size,
            page_token,
        } = request.into_inner();
        traced("ListAccounts", &user_id_prefix.clone(), "", async move {
            self.authorize(&credentials, "ListAccounts", &[Scope::Read])?;
            let order = match pb::AccountOrder::try_from(order_by) {
                Ok(pb::AccountOrder::Unspecified | pb::AccountOrder::UserId) => {
                    AccountOrder::UserId
                }
                Ok(pb::AccountOrder::BalanceDesc) => AccountOrder::BalanceDesc,
                Ok(pb::AccountOrder::LastActivityDesc) => AccountOrder::LastActivityDesc,
                Err(_) => return Err(LedgerError::invalid("order_by", "is not an account order")),
            };
            let page = self
                .ledger
                .accounts(&user_id_prefix, order, page_size, &page_token)
                .await?;
            Ok(pb::ListAccountsResponse {
                accounts: page
                    .accounts
                    .into_iter()
                    .map(|a| pb::Account {
                        user_id: a.user_id,
                        balance: a.balance.balance,
                        totals: Some(totals_to_pb(&a.balance.totals)),
                        updated_at: a.balance.updated_at.map(chrono_to_timestamp),
                        transaction_count: a.balance.transaction_count,
                        created_at: Some(chrono_to_timestamp(a.created_at)),
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let credentials = credentials(&request);
        traced("WhoAmI", "", "", async move {
            // Any scope will do; a caller with none (a non-admin JWT) is refused.
            let caller = self.authorize(
                &credentials,
                "WhoAmI",
                &[Scope::Usage, Scope::Billing, Scope::Read],
            )?;
            Ok(pb::WhoAmIResponse {
                actor: caller.actor().as_str().to_string(),
                credential: caller.credential.as_str().to_string(),
                scopes: caller
                    .scopes
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
            })
        })
        .await
    }

    async fn track_usage_batch(
        &self,
        request: Request<pb::TrackUsageBatchRequest>,
    ) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
        let credentials = credentials(&request);
        let pb::TrackUsageBatchRequest { events } = request.into_inner();
        traced("TrackUsageBatch", "", "", async move {
            let caller = self.authorize(&credentials, "TrackUsageBatch", &[Scope::Usage])?;
            if events.len() > USAGE_BATCH_EVENTS_MAX {
                return Err(LedgerError::invalid(
                    "events",
                    format!(
                        "at most {USAGE_BATCH_EVENTS_MAX} events per call, got {}",
                        events.len()
                    ),
                ));
            }
            // Validate each event on its own: a bad one fails alone.
            let mut results: Vec<Option<pb::TrackUsageResult>> = vec![None; events.len()];
            let mut valid = Vec::with_capacity(events.len());
            let mut positions = Vec::with_capacity(events.len());
            for (i, e) in events.into_iter().enumerate() {
                let pb::TrackUsageRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    model,
                    input_tokens,
                    output_tokens,
                    feature,
                } = e;
                match build::usage(
                    build::Common {
                        user_id,
                        tokens,
                        idempotency_key,
                    },
                    caller.actor(),
                    model,
                    input_tokens,
                    output_tokens,
                    feature,
                ) {
                    Ok(cmd) => {
                        valid.push(cmd);
                        positions.push(i);
                    }
                    Err(err) => results[i] = Some(usage_result(Err(err))),
                }
            }
            for (i, r) in positions
                .into_iter()
                .zip(self.ledger.write_many(valid).await)
            {
                results[i] = Some(usage_result(r));
            }
            Ok(pb::TrackUsageBatchResponse {
                results: results.into_iter().map(Option::unwrap_or_default).collect(),
            })
        })
        .await
    }
}
