//! CLI commands for support and operators: `reverse`, `transaction`, `accounts`, `whoami`,
//! `stripe-events`, `overview`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{
    details_text, json, key_or_new, kind_name, note_key, print_write, report_status, time, Client,
    ClientArgs,
};
use crate::pb;

/// Why a credit is reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReversalSourceArg {
    /// An admin correcting a credit by hand (scope `admin`).
    Admin,
    /// The payment was refunded (scope `billing` or `admin`).
    Refund,
    /// The payment was disputed (scope `billing` or `admin`).
    Dispute,
}

#[derive(Debug, Clone, Args)]
pub struct ReverseArgs {
    /// The owner of the original credit.
    #[arg(long = "user")]
    pub user_id: String,
    /// Tokens to claw back (at most what is left to reverse of the original).
    #[arg(long)]
    pub tokens: i64,
    /// The credit (grant, purchase or drip) being reversed: its transaction id.
    #[arg(long = "original")]
    pub original_transaction_id: String,
    /// Why (required, for the audit trail).
    #[arg(long)]
    pub reason: String,
    #[arg(long, value_enum, default_value_t = ReversalSourceArg::Admin)]
    pub source: ReversalSourceArg,
    /// The Stripe refund, charge or dispute id behind it, if any.
    #[arg(long, default_value = "")]
    pub stripe_reference: String,
    /// Reuse to retry safely; a fresh `cli-<uuid>` key is made when absent (and printed).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct TransactionLookup {
    /// The transaction id.
    #[arg(long)]
    pub id: Option<String>,
    /// The Stripe payment intent (pi_...) of a purchase.
    #[arg(long)]
    pub payment_intent: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TransactionArgs {
    #[command(flatten)]
    pub lookup: TransactionLookup,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How `accounts` orders its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccountOrderArg {
    UserId,
    Balance,
    Activity,
}

#[derive(Debug, Clone, Args)]
pub struct AccountsArgs {
    /// Only user ids starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[arg(long, value_enum, default_value_t = AccountOrderArg::UserId)]
    pub order: AccountOrderArg,
    /// Rows per page (at most 500).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// The token printed after the previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WhoAmIArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StripeEventsArgs {
    /// Only this event (evt_...).
    #[arg(long)]
    pub event: Option<String>,
    /// Only events of this user.
    #[arg(long = "user")]
    pub user_id: Option<String>,
    /// Only events whose latest outcome is this (e.g. credited, user_unknown).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only live (true) or test-mode (false) events.
    #[arg(long)]
    pub livemode: Option<bool>,
    /// Events per page (at most 500).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// The token printed after the previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct OverviewArgs {
    /// Days up to and including today (at most 366).
    #[arg(long, default_value_t = 30)]
    pub days: i32,
    /// The IANA time zone of the days (e.g. Europe/Paris); UTC when absent.
    #[arg(long, default_value = "")]
    pub time_zone: String,
    /// How many top users to list (at most 100).
    #[arg(long, default_value_t = 10)]
    pub top_users: i32,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn reverse(a: ReverseArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = key_or_new(&a.idempotency_key);
    let source = match a.source {
        ReversalSourceArg::Admin => pb::ReversalSource::Admin,
        ReversalSourceArg::Refund => pb::ReversalSource::Refund,
        ReversalSourceArg::Dispute => pb::ReversalSource::Dispute,
    };
    let req = c.request(pb::ReverseRequest {
        user_id: a.user_id,
        tokens: a.tokens,
        idempotency_key: key.clone(),
        original_transaction_id: a.original_transaction_id,
        source: source as i32,
        reason: a.reason,
        stripe_reference: a.stripe_reference,
    });
    match c.inner.reverse(req).await {
        Ok(r) if c.json => {
            json::print(&r.into_inner());
            note_key(&a.idempotency_key, &key);
        }
        Ok(r) => {
            let r = r.into_inner();
            print_write(&key, &r.transaction_id, r.balance, r.replayed);
        }
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn transaction(a: TransactionArgs) -> anyhow::Result<ExitCode> {
    use pb::get_transaction_request::Lookup;
    let mut c = Client::connect(&a.client).await?;
    let lookup = match (a.lookup.id, a.lookup.payment_intent) {
        (Some(id), _) => Lookup::TransactionId(id),
        (None, Some(pi)) => Lookup::StripePaymentIntentId(pi),
        (None, None) => anyhow::bail!("give --id or --payment-intent"),
    };
    let req = c.request(pb::GetTransactionRequest {
        lookup: Some(lookup),
    });
    let r = match c.inner.get_transaction(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    let t = r.transaction.unwrap_or_default();
    println!(
        "transaction {} of user {}: {} {} tokens, balance after {}",
        t.id,
        r.user_id,
        kind_name(t.kind),
        t.token_amount,
        t.balance_after
    );
    println!(
        "  #{} at {} by {}{}",
        t.sequence,
        time(t.created_at),
        t.created_by,
        if t.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", t.reason)
        }
    );
    let details = details_text(&t);
    if !details.is_empty() {
        println!("  {details}");
    }
    if t.token_amount > 0 {
        println!(
            "  reversed {} of {}: {} left to reverse",
            r.reversed_tokens,
            t.token_amount,
            t.token_amount - r.reversed_tokens
        );
    }
    println!("  idempotency key {}", t.idempotency_key);
    Ok(ExitCode::SUCCESS)
}

pub async fn accounts(a: AccountsArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let order = match a.order {
        AccountOrderArg::UserId => pb::AccountOrder::UserId,
        AccountOrderArg::Balance => pb::AccountOrder::BalanceDesc,
        AccountOrderArg::Activity => pb::AccountOrder::LastActivityDesc,
    };
    let req = c.request(pb::ListAccountsRequest {
        user_id_prefix: a.prefix,
        order_by: order as i32,
        page_size: a.page_size,
        page_token: a.page_token,
    });
    let r = match c.inner.list_accounts(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<38} {:>14} {:>8}  last change",
        "user", "balance", "rows"
    );
    for acc in &r.accounts {
        println!(
            "{:<38} {:>14} {:>8}  {}",
            acc.user_id,
            acc.balance,
            acc.transaction_count,
            time(acc.updated_at)
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn who_am_i(a: WhoAmIArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::WhoAmIRequest {});
    let r = match c.inner.who_am_i(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
    } else {
        println!(
            "{} ({}): scopes {}",
            r.actor,
            r.credential,
            r.scopes.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stripe_events(a: StripeEventsArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListStripeEventsRequest {
        event_id: a.event.unwrap_or_default(),
        user_id: a.user_id.unwrap_or_default(),
        outcome: a.outcome.unwrap_or_default(),
        livemode: a.livemode,
        page_size: a.page_size,
        page_token: a.page_token,
    });
    let r = match c.inner.list_stripe_events(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    if r.events.is_empty() {
        println!("no Stripe events recorded match");
    }
    for e in &r.events {
        let outcome = if e.first_outcome == e.outcome {
            e.outcome.clone()
        } else {
            format!("{} (first: {})", e.outcome, e.first_outcome)
        };
        println!(
            "{}  {}  {}  {}  {}  deliveries={} user={} transaction={} api_version={}",
            time(e.first_seen_at),
            e.event_id,
            e.r#type,
            if e.livemode { "live" } else { "test" },
            outcome,
            e.deliveries,
            dash(&e.user_id),
            dash(&e.transaction_id),
            dash(&e.api_version),
        );
        if !e.detail.is_empty() {
            println!("    {}", e.detail);
        }
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub async fn overview(a: OverviewArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::GetOverviewRequest {
        days: a.days,
        time_zone: a.time_zone,
        top_users: a.top_users,
    });
    let r = match c.inner.get_overview(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "as of {}: {} tokens outstanding, {} overdrawn, {} held, {} accounts",
        time(r.as_of),
        r.tokens_outstanding,
        r.tokens_overdrawn,
        r.tokens_held,
        r.accounts
    );
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>14}",
        "day", "credited", "used", "expired", "deducted"
    );
    for d in &r.days {
        println!(
            "{:<10} {:>14} {:>14} {:>14} {:>14}",
            d.day, d.credited, d.used, d.expired, d.deducted
        );
    }
    println!("top users by usage:");
    for u in &r.top_users {
        println!(
            "  {:<38} used {:>14} in {:>8} calls, balance {}",
            u.user_id, u.used, u.events, u.balance
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Args)]
pub struct SetPriceArgs {
    /// The model, as usage reports it (e.g. gpt-4o).
    #[arg(long)]
    pub model: String,
    /// Product tokens per million uncached prompt tokens.
    #[arg(long)]
    pub input_per_million: i64,
    /// Per million prompt tokens read from the cache.
    #[arg(long, default_value_t = 0)]
    pub cache_read_per_million: i64,
    /// Per million prompt tokens written to the cache.
    #[arg(long, default_value_t = 0)]
    pub cache_write_per_million: i64,
    /// Per million output tokens (reasoning included).
    #[arg(long)]
    pub output_per_million: i64,
    /// Long-context tiers, each ABOVE:INPUT:CACHE_READ:CACHE_WRITE:OUTPUT (rates per million,
    /// applied when the prompt exceeds ABOVE tokens); repeat or comma-separate.
    #[arg(long = "tier", value_delimiter = ',')]
    pub tiers: Vec<String>,
    /// When the version starts to apply, RFC 3339; now when absent.
    #[arg(long)]
    pub effective_from: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PricesArgs {
    /// Only this model.
    #[arg(long, default_value = "")]
    pub model: String,
    /// Every version, past ones included.
    #[arg(long)]
    pub history: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn tier_arg(spec: &str) -> anyhow::Result<pb::LongContextTier> {
    let parts: Vec<i64> = spec
        .split(':')
        .map(|p| p.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            anyhow::anyhow!(
                "--tier {spec:?}: expected ABOVE:INPUT:CACHE_READ:CACHE_WRITE:OUTPUT, all integers"
            )
        })?;
    let [above, input, cache_read, cache_write, output] = parts[..] else {
        anyhow::bail!(
            "--tier {spec:?}: expected 5 numbers, ABOVE:INPUT:CACHE_READ:CACHE_WRITE:OUTPUT"
        );
    };
    Ok(pb::LongContextTier {
        above_input_tokens: above,
        rates: Some(pb::ModelRates {
            input_per_million: input,
            cache_read_per_million: cache_read,
            cache_write_per_million: cache_write,
            output_per_million: output,
        }),
    })
}

fn print_price(p: &pb::ModelPrice) {
    let r = p.rates.unwrap_or_default();
    println!(
        "price {} of {}: from {}{}  input {}  cache_read {}  cache_write {}  output {} (per million)",
        p.price_id,
        p.model,
        time(p.effective_from),
        if p.current { " [in force]" } else { "" },
        r.input_per_million,
        r.cache_read_per_million,
        r.cache_write_per_million,
        r.output_per_million
    );
    for t in &p.tiers {
        let r = t.rates.unwrap_or_default();
        println!(
            "    above {} prompt tokens: input {}  cache_read {}  cache_write {}  output {}",
            t.above_input_tokens,
            r.input_per_million,
            r.cache_read_per_million,
            r.cache_write_per_million,
            r.output_per_million
        );
    }
}

pub async fn set_price(a: SetPriceArgs) -> anyhow::Result<ExitCode> {
    let tiers = a
        .tiers
        .iter()
        .map(|t| tier_arg(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut c = Client::connect(&a.client).await?;
    let key = key_or_new(&a.idempotency_key);
    let req = c.request(pb::SetModelPriceRequest {
        model: a.model,
        rates: Some(pb::ModelRates {
            input_per_million: a.input_per_million,
            cache_read_per_million: a.cache_read_per_million,
            cache_write_per_million: a.cache_write_per_million,
            output_per_million: a.output_per_million,
        }),
        tiers,
        effective_from: a.effective_from.map(super::timestamp),
        idempotency_key: key.clone(),
    });
    let r = match c.inner.set_model_price(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        note_key(&a.idempotency_key, &key);
    } else {
        print_price(&r.price.unwrap_or_default());
        if r.replayed {
            println!("  [replayed: nothing changed] (idempotency key {key})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn prices(a: PricesArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListModelPricesRequest {
        model: a.model,
        include_history: a.history,
    });
    let r = match c.inner.list_model_prices(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    if r.prices.is_empty() {
        println!("no prices set");
    }
    r.prices.iter().for_each(print_price);
    Ok(ExitCode::SUCCESS)
}

/// What `usage-summary` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsageGroupArg {
    Model,
    Feature,
    Day,
    Hour,
}

#[derive(Debug, Clone, Args)]
pub struct UsageSummaryArgs {
    /// One user; every user when absent (needs the read scope).
    #[arg(long = "user")]
    pub user_id: Option<String>,
    /// Start, RFC 3339, a whole quarter hour (inclusive).
    #[arg(long)]
    pub from: chrono::DateTime<chrono::Utc>,
    /// End, RFC 3339, a whole quarter hour (exclusive).
    #[arg(long)]
    pub to: chrono::DateTime<chrono::Utc>,
    /// IANA time zone of days and hours; UTC when absent.
    #[arg(long, default_value = "")]
    pub time_zone: String,
    /// Group by these (comma-separated): model, feature, day, hour.
    #[arg(long = "by", value_enum, value_delimiter = ',')]
    pub group_by: Vec<UsageGroupArg>,
    /// Groups per page (at most 1,000).
    #[arg(long, default_value_t = 100)]
    pub page_size: i32,
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn usage_summary(a: UsageSummaryArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let group_by = a
        .group_by
        .iter()
        .map(|g| {
            (match g {
                UsageGroupArg::Model => pb::UsageGroup::Model,
                UsageGroupArg::Feature => pb::UsageGroup::Feature,
                UsageGroupArg::Day => pb::UsageGroup::Day,
                UsageGroupArg::Hour => pb::UsageGroup::Hour,
            }) as i32
        })
        .collect();
    let req = c.request(pb::SummarizeUsageRequest {
        user_id: a.user_id.unwrap_or_default(),
        from: Some(super::timestamp(a.from)),
        to: Some(super::timestamp(a.to)),
        time_zone: a.time_zone,
        group_by,
        page_size: a.page_size,
        page_token: a.page_token,
    });
    let r = match c.inner.summarize_usage(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:>4} {:<20} {:<12} {:>8} {:>14} {:>12} {:>12} {:>12}",
        "day", "hour", "model", "feature", "calls", "tokens", "input", "cached", "output"
    );
    for row in &r.rows {
        println!(
            "{:<10} {:>4} {:<20} {:<12} {:>8} {:>14} {:>12} {:>12} {:>12}{}",
            dash(&row.day),
            row.hour.map_or("-".to_string(), |h| h.to_string()),
            dash(&row.model),
            dash(&row.feature),
            row.events,
            row.tokens,
            row.input_tokens,
            row.cache_read_tokens + row.cache_write_tokens,
            row.output_tokens,
            if row.partial { "  (partial)" } else { "" }
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ThresholdArg {
    /// Low at or below this many tokens.
    #[arg(long)]
    pub tokens: Option<i64>,
    /// Low at or below this percentage of the account's most recent credit.
    #[arg(long)]
    pub percent: Option<i32>,
}

#[derive(Debug, Clone, Args)]
pub struct SetAlertArgs {
    /// The user; the default for every account when absent.
    #[arg(long = "user")]
    pub user_id: Option<String>,
    #[command(flatten)]
    pub threshold: ThresholdArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AlertUserArgs {
    /// The user; the default rule (or everyone's events) when absent.
    #[arg(long = "user")]
    pub user_id: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AlertEventsArgs {
    /// Only this user's events.
    #[arg(long = "user")]
    pub user_id: Option<String>,
    /// Only events not delivered yet.
    #[arg(long)]
    pub pending: bool,
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    #[arg(long, default_value = "")]
    pub page_token: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn rule_text(a: &pb::BalanceAlert) -> String {
    use pb::balance_alert::Threshold as T;
    let who = if a.user_id.is_empty() {
        "default".to_string()
    } else {
        format!("user {}", a.user_id)
    };
    let threshold = match a.threshold {
        Some(T::Tokens(t)) => format!("at or below {t} tokens"),
        Some(T::Percent(p)) => format!("at or below {p}% of the most recent credit"),
        None => "-".into(),
    };
    format!(
        "alert {} ({who}): {threshold}, set by {}",
        a.alert_id, a.created_by
    )
}

pub async fn set_alert(a: SetAlertArgs) -> anyhow::Result<ExitCode> {
    use pb::set_balance_alert_request::Threshold as T;
    let mut c = Client::connect(&a.client).await?;
    let threshold = match (a.threshold.tokens, a.threshold.percent) {
        (Some(t), _) => Some(T::Tokens(t)),
        (None, Some(p)) => Some(T::Percent(p)),
        (None, None) => None,
    };
    let req = c.request(pb::SetBalanceAlertRequest {
        user_id: a.user_id.unwrap_or_default(),
        threshold,
    });
    match c.inner.set_balance_alert(req).await {
        Ok(r) if c.json => json::print(&r.into_inner()),
        Ok(r) => println!("{}", rule_text(&r.into_inner().alert.unwrap_or_default())),
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn alerts(a: AlertUserArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListBalanceAlertsRequest {
        user_id: a.user_id.unwrap_or_default(),
    });
    match c.inner.list_balance_alerts(req).await {
        Ok(r) if c.json => json::print(&r.into_inner()),
        Ok(r) => {
            let alerts = r.into_inner().alerts;
            if alerts.is_empty() {
                println!("no balance alerts set");
            }
            alerts.iter().for_each(|a| println!("{}", rule_text(a)));
        }
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete_alert(a: AlertUserArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::DeleteBalanceAlertRequest {
        user_id: a.user_id.unwrap_or_default(),
    });
    match c.inner.delete_balance_alert(req).await {
        Ok(r) if c.json => json::print(&r.into_inner()),
        Ok(r) if r.get_ref().deleted => println!("deleted"),
        Ok(_) => println!("there was no such rule"),
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn alert_events(a: AlertEventsArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListAlertEventsRequest {
        user_id: a.user_id.unwrap_or_default(),
        pending_only: a.pending,
        page_size: a.page_size,
        page_token: a.page_token,
    });
    let r = match c.inner.list_alert_events(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &r.events {
        let state = match &e.delivered_at {
            Some(at) => format!("delivered {}", time(Some(*at))),
            None if e.attempts == 0 => "pending".into(),
            None => format!(
                "pending, {} attempts, next {}: {}",
                e.attempts,
                time(e.next_attempt_at),
                e.last_error
            ),
        };
        println!(
            "alert_{}  {}  {:<18} user={} available={} threshold={} seq={}  {state}",
            e.event_id,
            time(e.created_at),
            e.r#type,
            e.user_id,
            e.available,
            e.threshold,
            e.seq
        );
    }
    if !r.next_page_token.is_empty() {
        println!("more: --page-token {}", r.next_page_token);
    }
    Ok(ExitCode::SUCCESS)
}
