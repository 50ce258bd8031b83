//! The built-in command-line client: one subcommand per RPC, so operators (and the README) need no
//! other tool. Prints a short human line by default, or the response as JSON with `--json`.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::pb;
use crate::pb::ledger_service_client::LedgerServiceClient;

mod admin;
mod holds;
pub mod json;
mod watch;

pub use admin::{
    accounts, alert_events, alerts, delete_alert, overview, prices, reverse, set_alert, set_price,
    stripe_events, transaction, usage_summary, who_am_i,
};
pub use admin::{
    AccountsArgs, AlertEventsArgs, AlertUserArgs, OverviewArgs, PricesArgs, ReverseArgs,
    SetAlertArgs, SetPriceArgs, StripeEventsArgs, TransactionArgs, UsageSummaryArgs, WhoAmIArgs,
};

pub use holds::{commit_hold, extend_hold, holds, lots, release_hold, reserve};
pub use holds::{CommitHoldArgs, ExtendHoldArgs, HoldArgs, ListArgs, ReserveArgs};
pub use watch::{watch, WatchArgs};

/// The `authorization` metadata value for an API key (`Bearer <key>`): the one place every
/// client of the ledger (this CLI, the remote webhook adapter, the load generator) builds it.
pub fn bearer(
    api_key: &str,
) -> Result<
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    tonic::metadata::errors::InvalidMetadataValue,
> {
    MetadataValue::try_from(format!("Bearer {api_key}"))
}

/// Connection settings shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The ledger's gRPC address.
    #[arg(
        long,
        env = "TOKEN_LEDGER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub ledger_url: String,

    /// The API key's secret, sent as `authorization: Bearer <key>`. Not needed when the server
    /// runs without keys.
    #[arg(long, env = "TOKEN_LEDGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Fields of every write.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// The user whose balance changes.
    #[arg(long = "user")]
    pub user_id: String,
    /// How many tokens (positive).
    #[arg(long)]
    pub tokens: i64,
    /// Reuse to retry safely; a fresh `cli-<uuid>` key is made when absent (and printed).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// How a credit's tokens live (grant, drip, purchase).
#[derive(Debug, Clone, Args)]
pub struct TermsArgs {
    /// When the credited tokens expire, RFC 3339 (exclusive); never when absent.
    #[arg(long)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Burn order: lower burns first (-1000..1000).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
}

impl TermsArgs {
    fn expires_at(&self) -> Option<prost_types::Timestamp> {
        self.expires_at.map(timestamp)
    }
}

impl WriteArgs {
    fn key(&self) -> String {
        key_or_new(&self.idempotency_key)
    }
}

/// The idempotency key given, or a fresh `cli-<uuid>` one (printed, so the call can be retried).
pub(crate) fn key_or_new(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()))
}

#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub terms: TermsArgs,
    /// Why (required for admin grants).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Grant an annual subscription allotment instead of an admin grant (needs --stripe-invoice).
    #[arg(long)]
    pub annual: bool,
    #[arg(long = "stripe-subscription", default_value = "")]
    pub stripe_subscription_id: String,
    #[arg(long = "stripe-invoice", default_value = "")]
    pub stripe_invoice_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeductArgs {
    #[command(flatten)]
    pub write: WriteArgs,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// Let the balance go below zero if it does not cover the deduction (recorded on the row).
    #[arg(long)]
    pub allow_negative: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DripArgs {
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub terms: TermsArgs,
    /// Roll the subscription's previous cycles over: carry at most this many unused tokens.
    #[arg(long)]
    pub rollover_max: Option<i64>,
    /// Roll over: carry at most this percentage of the unused tokens.
    #[arg(long)]
    pub rollover_max_percent: Option<u32>,
    #[arg(long = "stripe-subscription")]
    pub stripe_subscription_id: String,
    #[arg(long = "stripe-invoice", default_value = "")]
    pub stripe_invoice_id: String,
    /// Start of the cycle, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub period_start: DateTime<Utc>,
    /// End of the cycle, RFC 3339; defaults to 28 days after the start.
    #[arg(long)]
    pub period_end: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PurchaseArgs {
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub terms: TermsArgs,
    /// What was paid, in cents.
    #[arg(long = "amount-cents")]
    pub amount_paid_cents: i64,
    #[arg(long, default_value = "usd")]
    pub currency: String,
    #[arg(long = "payment-intent")]
    pub stripe_payment_intent_id: String,
    #[arg(long = "checkout-session", default_value = "")]
    pub stripe_checkout_session_id: String,
    #[arg(long, default_value = "")]
    pub pack: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub write: WriteArgs,
    #[arg(long, default_value = "")]
    pub model: String,
    #[arg(long, default_value_t = 0)]
    pub input_tokens: i64,
    #[arg(long, default_value_t = 0)]
    pub output_tokens: i64,
    #[arg(long, default_value = "")]
    pub feature: String,
    /// Prompt tokens read from the provider's cache (part of --input-tokens).
    #[arg(long, default_value_t = 0)]
    pub cache_read_tokens: i64,
    /// Prompt tokens written to the provider's cache (part of --input-tokens).
    #[arg(long, default_value_t = 0)]
    pub cache_write_tokens: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BalanceArgs {
    #[arg(long = "user")]
    pub user_id: String,
    /// The balance as it was at this instant, RFC 3339 (only balance, row count and time).
    #[arg(long)]
    pub as_of: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    #[arg(long = "user")]
    pub user_id: String,
    /// Rows per page (at most 500).
    #[arg(long, default_value_t = 20)]
    pub page_size: i32,
    /// The token printed after the previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(crate) struct Client {
    pub(crate) inner: LedgerServiceClient<Channel>,
    api_key: Option<MetadataValue<tonic::metadata::Ascii>>,
    pub(crate) json: bool,
}

impl Client {
    pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(args.ledger_url.clone())
            .with_context(|| format!("bad --ledger-url {:?}", args.ledger_url))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.ledger_url))?;
        let api_key = args
            .api_key
            .as_ref()
            .map(|k| bearer(k))
            .transpose()
            .context("the API key must be printable ASCII")?;
        Ok(Self {
            inner: LedgerServiceClient::new(channel),
            api_key,
            json: args.json,
        })
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("authorization", key.clone());
        }
        request
    }
}

/// Turns a gRPC error into a printed line and exit code 1.
pub(crate) fn report_status(status: tonic::Status) -> anyhow::Result<ExitCode> {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    Ok(ExitCode::FAILURE)
}

/// With `--json` stdout holds only the response; a key the CLI made up goes to stderr, so a
/// retry can reuse it.
pub(crate) fn note_key(given: &Option<String>, key: &str) {
    if given.is_none() {
        eprintln!("idempotency key: {key}");
    }
}

/// The human line of a write: its transaction id first.
fn print_write(key: &str, transaction_id: &str, balance: i64, replayed: bool) {
    println!(
        "transaction {transaction_id}: balance {balance}{} (idempotency key {key})",
        if replayed {
            " [replayed: nothing changed]"
        } else {
            ""
        }
    );
}

/// Sends a write and prints its answer: the whole response with `--json`, else one line.
macro_rules! write_call {
    ($client:expr, $args:expr, $key:expr, $call:expr) => {
        match $call.await {
            Ok(r) => {
                let r = r.into_inner();
                if $client.json {
                    json::print(&r);
                    note_key(&$args.idempotency_key, &$key);
                } else {
                    print_write(&$key, &r.transaction_id, r.balance, r.replayed);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(status) => report_status(status),
        }
    };
}

pub async fn grant(a: GrantArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = a.write.key();
    let source = if a.annual {
        pb::GrantSource::AnnualSubscription
    } else {
        pb::GrantSource::Admin
    };
    let req = c.request(pb::GrantRequest {
        user_id: a.write.user_id,
        tokens: a.write.tokens,
        idempotency_key: key.clone(),
        source: source as i32,
        reason: a.reason,
        stripe_subscription_id: a.stripe_subscription_id,
        stripe_invoice_id: a.stripe_invoice_id,
        expires_at: a.terms.expires_at(),
        priority: a.terms.priority,
    });
    write_call!(c, a.write, key, c.inner.grant(req))
}

pub async fn deduct(a: DeductArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = a.write.key();
    let req = c.request(pb::DeductRequest {
        user_id: a.write.user_id,
        tokens: a.write.tokens,
        idempotency_key: key.clone(),
        reason: a.reason,
        allow_negative: a.allow_negative,
    });
    write_call!(c, a.write, key, c.inner.deduct(req))
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub async fn drip(a: DripArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = a.write.key();
    let end = a
        .period_end
        .unwrap_or(a.period_start + ChronoDuration::days(28));
    let req = c.request(pb::DripRequest {
        user_id: a.write.user_id,
        tokens: a.write.tokens,
        idempotency_key: key.clone(),
        stripe_subscription_id: a.stripe_subscription_id,
        stripe_invoice_id: a.stripe_invoice_id,
        period_start: Some(timestamp(a.period_start)),
        period_end: Some(timestamp(end)),
        expires_at: a.terms.expires_at(),
        priority: a.terms.priority,
        rollover: (a.rollover_max.is_some() || a.rollover_max_percent.is_some()).then_some(
            pb::Rollover {
                max_tokens: a.rollover_max,
                max_percent: a.rollover_max_percent,
            },
        ),
    });
    write_call!(c, a.write, key, c.inner.drip(req))
}

pub async fn purchase(a: PurchaseArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = a.write.key();
    let req = c.request(pb::RecordPurchaseRequest {
        user_id: a.write.user_id,
        tokens: a.write.tokens,
        idempotency_key: key.clone(),
        amount_paid_cents: a.amount_paid_cents,
        currency: a.currency,
        stripe_payment_intent_id: a.stripe_payment_intent_id,
        stripe_checkout_session_id: a.stripe_checkout_session_id,
        pack: a.pack,
        expires_at: a.terms.expires_at(),
        priority: a.terms.priority,
    });
    write_call!(c, a.write, key, c.inner.record_purchase(req))
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = a.write.key();
    let req = c.request(pb::TrackUsageRequest {
        user_id: a.write.user_id,
        tokens: a.write.tokens,
        idempotency_key: key.clone(),
        model: a.model,
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        feature: a.feature,
        cache_read_tokens: a.cache_read_tokens,
        cache_write_tokens: a.cache_write_tokens,
    });
    match c.inner.track_usage(req).await {
        Ok(r) if c.json => {
            json::print(&r.into_inner());
            note_key(&a.write.idempotency_key, &key);
        }
        Ok(r) => {
            let r = r.into_inner();
            if !r.price_id.is_empty() {
                println!("priced at {} tokens with price {}", r.tokens, r.price_id);
            }
            print_write(&key, &r.transaction_id, r.balance, r.replayed);
        }
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn balance(a: BalanceArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::GetBalanceRequest {
        user_id: a.user_id,
        as_of: a.as_of.map(timestamp),
    });
    let r = match c.inner.get_balance(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    let t = r.totals.unwrap_or_default();
    println!(
        "user {}: balance {}  held {}  available {}",
        r.user_id, r.balance, r.held, r.available
    );
    // Every total, in the one equation they satisfy, so a reader can check them.
    let credited = t.granted + t.purchased + t.dripped;
    let debited = t.deducted + t.used + t.reversed + t.expired;
    println!(
        "  credited {credited} = granted {} + purchased {} + dripped {}",
        t.granted, t.purchased, t.dripped
    );
    println!(
        "  debited  {debited} = deducted {} + used {} + reversed {} + expired {}",
        t.deducted, t.used, t.reversed, t.expired
    );
    println!(
        "  balance  {} = credited {credited} - debited {debited}",
        credited - debited
    );
    if let Some(n) = &r.next_expiry {
        println!("  next expiry: {} tokens at {}", n.tokens, time(n.at));
    }
    println!(
        "  {} transactions, last change {}",
        r.transaction_count,
        r.updated_at.map_or("never".to_string(), |t| time(Some(t)))
    );
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 instant, or `-` when unset.
pub(crate) fn time(ts: Option<prost_types::Timestamp>) -> String {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map_or("-".to_string(), |t| t.to_rfc3339())
}

/// A proto enum value's name without its prefix, lower-cased (`TRANSACTION_KIND_USAGE` → `usage`).
pub(crate) fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map_or("unknown".to_string(), |n| {
        n.trim_start_matches(prefix).to_lowercase()
    })
}

pub(crate) fn kind_name(kind: i32) -> String {
    enum_name(
        pb::TransactionKind::try_from(kind)
            .ok()
            .map(|k| k.as_str_name()),
        "TRANSACTION_KIND_",
    )
}

/// The details of a journal row, as `key=value` pairs for a human.
pub(crate) fn details_text(t: &pb::Transaction) -> String {
    use pb::transaction::Details;
    let pairs: Vec<(&str, String)> = match &t.details {
        None => Vec::new(),
        Some(Details::Grant(d)) => vec![
            (
                "source",
                enum_name(
                    pb::GrantSource::try_from(d.source)
                        .ok()
                        .map(|s| s.as_str_name()),
                    "GRANT_SOURCE_",
                ),
            ),
            ("subscription", d.stripe_subscription_id.clone()),
            ("invoice", d.stripe_invoice_id.clone()),
        ],
        Some(Details::Purchase(d)) => vec![
            ("payment_intent", d.stripe_payment_intent_id.clone()),
            ("paid", format!("{} {}", d.amount_paid_cents, d.currency)),
            ("pack", d.pack.clone()),
        ],
        Some(Details::Drip(d)) => vec![
            ("subscription", d.stripe_subscription_id.clone()),
            ("period_start", time(d.period_start)),
        ],
        Some(Details::Usage(d)) => vec![
            ("model", d.model.clone()),
            ("feature", d.feature.clone()),
            ("input", d.input_tokens.to_string()),
            ("output", d.output_tokens.to_string()),
        ],
        Some(Details::Reversal(d)) => vec![
            ("reverses", d.original_transaction_id.clone()),
            (
                "source",
                enum_name(
                    pb::ReversalSource::try_from(d.source)
                        .ok()
                        .map(|s| s.as_str_name()),
                    "REVERSAL_SOURCE_",
                ),
            ),
            ("stripe", d.stripe_reference.clone()),
        ],
        Some(Details::Deduction(d)) => vec![("allow_negative", d.allow_negative.to_string())],
        Some(Details::Expiry(d)) => vec![("lot", d.lot_id.clone())],
    };
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty() && v != "0" && v != "false")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn history(a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListTransactionsRequest {
        user_id: a.user_id,
        page_size: a.page_size,
        page_token: a.page_token,
        ..Default::default()
    });
    let r = match c.inner.list_transactions(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>10} {:>6}  {:<10} {:>14} {:>14}  {:<20} {:<20} reason / details",
        "id", "seq", "kind", "amount", "balance", "created_by", "created_at"
    );
    for t in &r.transactions {
        let created_at = t
            .created_at
            .and_then(|ts| DateTime::from_timestamp(ts.seconds, ts.nanos as u32))
            .map_or(String::new(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        println!(
            "{:>10} {:>6}  {:<10} {:>14} {:>14}  {:<20} {:<20} {}{}{}",
            t.id,
            t.sequence,
            kind_name(t.kind),
            t.token_amount,
            t.balance_after,
            t.created_by,
            created_at,
            t.reason,
            if t.reason.is_empty() { "" } else { "  " },
            details_text(t)
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}
