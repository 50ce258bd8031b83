//! CLI commands for holds and lots: `reserve`, `commit-hold`, `release-hold`, `extend-hold`,
//! `holds`, `lots`.

use std::process::ExitCode;

use super::{json, key_or_new, note_key, report_status, Client, ClientArgs};
use crate::pb;
use chrono::DateTime;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    #[arg(long = "user")]
    pub user_id: String,
    /// Tokens to hold.
    #[arg(long)]
    pub tokens: i64,
    /// How long the hold lives, in seconds (default 900, at most 86400).
    #[arg(long)]
    pub ttl_secs: Option<i64>,
    /// Hold what is available (at least 1) instead of refusing when it does not cover --tokens.
    #[arg(long)]
    pub cap: bool,
    #[arg(long, default_value = "")]
    pub model: String,
    #[arg(long, default_value = "")]
    pub feature: String,
    /// Reuse to retry safely; a fresh `cli-<uuid>` key is made when absent (and printed).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CommitHoldArgs {
    #[arg(long = "hold")]
    pub hold_id: String,
    /// Tokens the call actually used; 0 with token counts: the ledger prices them (with the
    /// price the hold pinned); 0 without: nothing used.
    #[arg(long, default_value_t = 0)]
    pub tokens: i64,
    /// Prompt tokens read from the provider's cache (part of --input-tokens).
    #[arg(long, default_value_t = 0)]
    pub cache_read_tokens: i64,
    /// Prompt tokens written to the provider's cache (part of --input-tokens).
    #[arg(long, default_value_t = 0)]
    pub cache_write_tokens: i64,
    #[arg(long, default_value = "")]
    pub model: String,
    #[arg(long, default_value_t = 0)]
    pub input_tokens: i64,
    #[arg(long, default_value_t = 0)]
    pub output_tokens: i64,
    #[arg(long, default_value = "")]
    pub feature: String,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    #[arg(long = "hold")]
    pub hold_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExtendHoldArgs {
    #[arg(long = "hold")]
    pub hold_id: String,
    /// The hold then lives at least this many seconds from now.
    #[arg(long)]
    pub ttl_secs: Option<i64>,
    /// Tokens to hold in addition.
    #[arg(long, default_value_t = 0)]
    pub add_tokens: i64,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[arg(long = "user")]
    pub user_id: String,
    /// Holds: also ended ones. Lots: also spent ones.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn secs(s: Option<i64>) -> Option<prost_types::Duration> {
    s.map(|seconds| prost_types::Duration { seconds, nanos: 0 })
}

fn time(ts: Option<prost_types::Timestamp>) -> String {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map_or("-".to_string(), |t| t.to_rfc3339())
}

fn state(value: i32) -> String {
    pb::HoldState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("HOLD_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn print_hold(h: &pb::Hold, balance: i64, available: i64) {
    println!(
        "hold {}: {} tokens, {}, expires {}; balance {balance}, available {available}",
        h.hold_id,
        h.tokens,
        state(h.state),
        time(h.expires_at)
    );
}

pub async fn reserve(a: ReserveArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = key_or_new(&a.idempotency_key);
    let overage = if a.cap {
        pb::Overage::Cap
    } else {
        pb::Overage::Reject
    };
    let req = c.request(pb::ReserveRequest {
        user_id: a.user_id,
        tokens: a.tokens,
        idempotency_key: key.clone(),
        ttl: secs(a.ttl_secs),
        model: a.model,
        feature: a.feature,
        overage: overage as i32,
    });
    let r = match c.inner.reserve(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        note_key(&a.idempotency_key, &key);
    } else {
        println!(
            "hold {}: {} tokens held until {}; balance {}, available {}{} (idempotency key {key})",
            r.hold_id,
            r.held,
            time(r.expires_at),
            r.balance,
            r.available,
            if r.replayed { " [replayed]" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn commit_hold(a: CommitHoldArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = key_or_new(&a.idempotency_key);
    let req = c.request(pb::CommitHoldRequest {
        hold_id: a.hold_id,
        tokens: a.tokens,
        idempotency_key: key.clone(),
        model: a.model,
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        feature: a.feature,
        cache_read_tokens: a.cache_read_tokens,
        cache_write_tokens: a.cache_write_tokens,
    });
    let r = match c.inner.commit_hold(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        note_key(&a.idempotency_key, &key);
    } else {
        println!(
            "transaction {}: balance {}, available {}{}{} (idempotency key {key})",
            r.transaction_id,
            r.balance,
            r.available,
            if r.hold_expired {
                " [the hold had expired; usage recorded]"
            } else {
                ""
            },
            if r.replayed { " [replayed]" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn release_hold(a: HoldArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ReleaseHoldRequest { hold_id: a.hold_id });
    match c.inner.release_hold(req).await {
        Ok(r) if c.json => json::print(&r.into_inner()),
        Ok(r) => {
            let r = r.into_inner();
            print_hold(&r.hold.unwrap_or_default(), r.balance, r.available);
        }
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn extend_hold(a: ExtendHoldArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let key = key_or_new(&a.idempotency_key);
    let req = c.request(pb::ExtendHoldRequest {
        hold_id: a.hold_id,
        ttl: secs(a.ttl_secs),
        add_tokens: a.add_tokens,
        idempotency_key: key.clone(),
    });
    match c.inner.extend_hold(req).await {
        Ok(r) if c.json => {
            json::print(&r.into_inner());
            note_key(&a.idempotency_key, &key);
        }
        Ok(r) => {
            let r = r.into_inner();
            print_hold(&r.hold.unwrap_or_default(), r.balance, r.available);
        }
        Err(status) => return report_status(status),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn holds(a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListHoldsRequest {
        user_id: a.user_id,
        active_only: !a.all,
    });
    let r = match c.inner.list_holds(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>10} {:>12} {:<10} {:<26} {:<16} feature",
        "hold", "tokens", "state", "expires_at", "model"
    );
    for h in &r.holds {
        println!(
            "{:>10} {:>12} {:<10} {:<26} {:<16} {}",
            h.hold_id,
            h.tokens,
            state(h.state),
            time(h.expires_at),
            h.model,
            h.feature
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn lots(a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::ListLotsRequest {
        user_id: a.user_id,
        include_spent: a.all,
    });
    let r = match c.inner.list_lots(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    let source = |v: i32| {
        pb::LotSource::try_from(v)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("LOT_SOURCE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into())
    };
    if c.json {
        json::print(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>10} {:<9} {:>14} {:>14} {:>12} {:>8}  expires_at (burn order, next first)",
        "lot", "source", "remaining", "granted", "held", "priority"
    );
    for l in &r.lots {
        println!(
            "{:>10} {:<9} {:>14} {:>14} {:>12} {:>8}  {}",
            l.lot_id,
            source(l.source),
            l.remaining,
            l.granted,
            l.held,
            l.priority,
            l.expires_at.map_or("never".to_string(), |t| time(Some(t)))
        );
    }
    Ok(ExitCode::SUCCESS)
}
