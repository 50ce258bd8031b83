//! What operators read about the whole ledger: the Stripe events the webhook recorded
//! (ListStripeEvents), and the overview (GetOverview: liability, daily movements, top users).

use tonic::{Request, Response, Status};

use super::convert::{chrono_to_timestamp, timestamp_to_chrono};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{
    Overview, OverviewQuery, StripeEventFilter, StripeEventRow, UsageQuery, UsageRow, UserId,
};
use crate::error::LedgerError;
use crate::ledger::STRIPE_EVENT_ID_LEN_MAX;
use crate::pb;
use crate::webhook::outcome::EventOutcome;

/// Days an overview covers when the caller asks for none.
pub const OVERVIEW_DAYS_DEFAULT: i32 = 30;
/// Longest overview window: one (leap) year of daily sums, read from the journal on each call.
pub const OVERVIEW_DAYS_MAX: i32 = 366;
/// Top users listed when the caller asks for none.
pub const OVERVIEW_TOP_USERS_DEFAULT: i64 = 10;
/// Most top users listed; larger requests are clamped to it, like page sizes.
pub const OVERVIEW_TOP_USERS_MAX: i64 = 100;
/// Longest time zone name accepted (the longest IANA name is 32 characters).
const TIME_ZONE_LEN_MAX: usize = 64;

pub(super) async fn list_stripe_events(
    grpc: &LedgerGrpc,
    request: Request<pb::ListStripeEventsRequest>,
) -> Result<Response<pb::ListStripeEventsResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::LIST_STRIPE_EVENTS, &request, &m.user_id, "");
    let message = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let (filter, page_size, page_token) = stripe_event_query(message)?;
        let page = call
            .ledger()
            .stripe_events(&filter, page_size, &page_token)
            .await?;
        Ok(pb::ListStripeEventsResponse {
            events: page.events.into_iter().map(stripe_event_to_pb).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    })
    .await
}

pub(super) async fn get_overview(
    grpc: &LedgerGrpc,
    request: Request<pb::GetOverviewRequest>,
) -> Result<Response<pb::GetOverviewResponse>, Status> {
    let call = Call::new(grpc, method::GET_OVERVIEW, &request, "", "");
    let message = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let query = overview_query(message)?;
        let overview = call.ledger().overview(&query).await?;
        Ok(overview_to_pb(overview))
    })
    .await
}

/// Checks every filter once, here: empty strings mean "any".
fn stripe_event_query(
    m: pb::ListStripeEventsRequest,
) -> Result<(StripeEventFilter, i32, String), LedgerError> {
    let pb::ListStripeEventsRequest {
        event_id,
        user_id,
        outcome,
        livemode,
        page_size,
        page_token,
    } = m;
    let event_id = (!event_id.is_empty())
        .then(|| {
            if event_id.chars().count() > STRIPE_EVENT_ID_LEN_MAX
                || event_id.chars().any(char::is_control)
            {
                Err(LedgerError::invalid(
                    "event_id",
                    format!(
                        "must be at most {STRIPE_EVENT_ID_LEN_MAX} characters, without control characters"
                    ),
                ))
            } else {
                Ok(event_id)
            }
        })
        .transpose()?;
    let user_id = (!user_id.is_empty())
        .then(|| UserId::parse("user_id", user_id).map(|u| u.as_str().to_string()))
        .transpose()?;
    let outcome = (!outcome.is_empty())
        .then(|| {
            if EventOutcome::ALL.iter().any(|o| o.as_str() == outcome) {
                Ok(outcome)
            } else {
                let known: Vec<&str> = EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
                Err(LedgerError::invalid(
                    "outcome",
                    format!("must be one of {}", known.join(", ")),
                ))
            }
        })
        .transpose()?;
    let filter = StripeEventFilter {
        event_id,
        user_id,
        outcome,
        livemode,
    };
    Ok((filter, page_size, page_token))
}

fn overview_query(m: pb::GetOverviewRequest) -> Result<OverviewQuery, LedgerError> {
    let pb::GetOverviewRequest {
        days,
        time_zone,
        top_users,
    } = m;
    let days = match days {
        0 => OVERVIEW_DAYS_DEFAULT,
        1..=OVERVIEW_DAYS_MAX => days,
        _ => {
            return Err(LedgerError::invalid(
                "days",
                format!("must be between 1 and {OVERVIEW_DAYS_MAX} (0 means {OVERVIEW_DAYS_DEFAULT}), got {days}"),
            ))
        }
    };
    let top_users = match i64::from(top_users) {
        n if n < 0 => {
            return Err(LedgerError::invalid(
                "top_users",
                format!("must not be negative, got {top_users}"),
            ))
        }
        0 => OVERVIEW_TOP_USERS_DEFAULT,
        n => n.min(OVERVIEW_TOP_USERS_MAX),
    };
    let time_zone = checked_time_zone(time_zone)?;
    Ok(OverviewQuery {
        days,
        time_zone,
        top_users,
    })
}

/// A time zone name fit to send to PostgreSQL, which decides whether it knows the zone; this
/// keeps anything else (and anything long) away from it. Empty means UTC.
fn checked_time_zone(time_zone: String) -> Result<String, LedgerError> {
    let well_formed = time_zone.len() <= TIME_ZONE_LEN_MAX
        && time_zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if !well_formed {
        return Err(LedgerError::invalid(
            "time_zone",
            "must be an IANA time zone name such as Europe/Paris (empty means UTC)",
        ));
    }
    Ok(if time_zone.is_empty() {
        "UTC".to_string()
    } else {
        time_zone
    })
}

fn stripe_event_to_pb(e: StripeEventRow) -> pb::StripeEvent {
    pb::StripeEvent {
        event_id: e.event_id,
        r#type: e.event_type,
        outcome: e.outcome,
        first_outcome: e.first_outcome,
        detail: e.detail.unwrap_or_default(),
        deliveries: e.deliveries,
        livemode: e.livemode,
        user_id: e.user_id.unwrap_or_default(),
        transaction_id: e.transaction_id.unwrap_or_default(),
        api_version: e.api_version.unwrap_or_default(),
        payment_intent_id: e.payment_intent.unwrap_or_default(),
        first_seen_at: Some(chrono_to_timestamp(e.first_seen_at)),
        last_seen_at: Some(chrono_to_timestamp(e.last_seen_at)),
    }
}

fn overview_to_pb(o: Overview) -> pb::GetOverviewResponse {
    pb::GetOverviewResponse {
        tokens_outstanding: o.tokens_outstanding,
        tokens_overdrawn: o.tokens_overdrawn,
        tokens_held: o.tokens_held,
        accounts: o.accounts,
        days: o
            .days
            .into_iter()
            .map(|d| pb::DayTotals {
                day: d.day.format("%Y-%m-%d").to_string(),
                credited: d.credited,
                used: d.used,
                expired: d.expired,
                deducted: d.deducted,
            })
            .collect(),
        top_users: o
            .top_users
            .into_iter()
            .map(|u| pb::UserUsage {
                user_id: u.user_id,
                used: u.used,
                events: u.events,
                balance: u.balance,
            })
            .collect(),
        as_of: Some(chrono_to_timestamp(o.as_of)),
    }
}

pub(super) async fn summarize_usage(
    grpc: &LedgerGrpc,
    request: Request<pb::SummarizeUsageRequest>,
) -> Result<Response<pb::SummarizeUsageResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::SUMMARIZE_USAGE, &request, &m.user_id, "");
    let message = request.into_inner();
    call.run(async {
        // Every user's usage is for dashboards (`read`); one user's, also for the AI backend.
        let allowed: &[Scope] = if message.user_id.is_empty() {
            &[Scope::Read]
        } else {
            &[Scope::Read, Scope::Usage]
        };
        call.authorize(allowed)?;
        let (page_size, page_token) = (message.page_size, message.page_token.clone());
        let query = usage_query(message)?;
        let (rows, next) = call
            .ledger()
            .summarize_usage(&query, page_size, &page_token)
            .await?;
        Ok(pb::SummarizeUsageResponse {
            rows: rows.into_iter().map(usage_row_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    })
    .await
}

/// The rollups' grain: `from` and `to` must be whole multiples of it.
const USAGE_GRAIN_SECS: i64 = 15 * 60;
/// Longest SummarizeUsage window (a leap year, and a day of slack for a local-day window).
const USAGE_WINDOW_DAYS_MAX: i64 = 367;

fn usage_query(m: pb::SummarizeUsageRequest) -> Result<UsageQuery, LedgerError> {
    let pb::SummarizeUsageRequest {
        user_id,
        from,
        to,
        time_zone,
        group_by,
        page_size: _,
        page_token: _,
    } = m;
    let user_id = (!user_id.is_empty())
        .then(|| UserId::parse("user_id", user_id).map(|u| u.as_str().to_string()))
        .transpose()?;
    let instant = |field: &'static str, ts: Option<prost_types::Timestamp>| {
        let at = timestamp_to_chrono(field, ts)?
            .ok_or_else(|| LedgerError::invalid(field, "is required"))?;
        if at.timestamp() % USAGE_GRAIN_SECS != 0 || at.timestamp_subsec_nanos() != 0 {
            return Err(LedgerError::invalid(
                field,
                format!(
                    "must be a whole quarter hour (minutes 0, 15, 30 or 45, no seconds), the grain usage is summed at; got {}",
                    at.to_rfc3339()
                ),
            ));
        }
        Ok(at)
    };
    let (from, to) = (instant("from", from)?, instant("to", to)?);
    if to <= from || to - from > chrono::Duration::days(USAGE_WINDOW_DAYS_MAX) {
        return Err(LedgerError::invalid(
            "to",
            format!("must be after `from` and at most {USAGE_WINDOW_DAYS_MAX} days after it"),
        ));
    }
    let time_zone = checked_time_zone(time_zone)?;
    let mut q = UsageQuery {
        user_id,
        from,
        to,
        time_zone,
        by_model: false,
        by_feature: false,
        by_day: false,
        by_hour: false,
    };
    for g in group_by {
        match pb::UsageGroup::try_from(g) {
            Ok(pb::UsageGroup::Model) => q.by_model = true,
            Ok(pb::UsageGroup::Feature) => q.by_feature = true,
            Ok(pb::UsageGroup::Day) => q.by_day = true,
            Ok(pb::UsageGroup::Hour) => q.by_hour = true,
            _ => {
                return Err(LedgerError::invalid(
                    "group_by",
                    format!("{g} is not a UsageGroup: use MODEL, FEATURE, DAY or HOUR"),
                ))
            }
        }
    }
    Ok(q)
}

fn usage_row_to_pb(r: UsageRow) -> pb::UsageSummaryRow {
    pb::UsageSummaryRow {
        model: r.model.unwrap_or_default(),
        feature: r.feature.unwrap_or_default(),
        period_start: r.period_start.map(chrono_to_timestamp),
        day: r
            .day
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
        hour: r.hour,
        events: r.events,
        tokens: r.tokens,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cache_read_tokens: r.cache_read_tokens,
        cache_write_tokens: r.cache_write_tokens,
        partial: r.partial,
    }
}
