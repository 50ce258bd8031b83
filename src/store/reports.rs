//! Operators' reads over the whole database: the Stripe events the webhook adapter recorded
//! (its `stripe_events` table, in the ledger's database when the adapter is hosted by `serve` or
//! pointed at it), and the overview (liability, daily movements, top users).

use sqlx::Row;

use super::credit::snapshot;
use super::Store;
use crate::domain::{
    DayTotals, Overview, OverviewQuery, StripeEventCursor, StripeEventFilter, StripeEventRow,
    UsageQuery, UsageRow, UserUsage,
};
use crate::error::LedgerError;

/// Newest first by first sight: an immutable key, so a redelivery (which moves `last_seen_at`)
/// cannot move an event between pages. Reads `stripe_events_first_seen_idx` (or the per-user one).
const STRIPE_EVENTS_SQL: &str = "SELECT event_id, event_type, outcome, first_outcome, detail, \
     deliveries, livemode, user_id, transaction_id, api_version, payment_intent, first_seen_at, \
     last_seen_at \
     FROM stripe_events \
     WHERE ($1::text IS NULL OR event_id = $1) AND ($2::text IS NULL OR user_id = $2) \
       AND ($3::text IS NULL OR outcome = $3) AND ($4::boolean IS NULL OR livemode = $4) \
       AND ($5::timestamptz IS NULL OR (first_seen_at, event_id) < ($5, $6)) \
     ORDER BY first_seen_at DESC, event_id DESC LIMIT $7";

/// Every local day of the window, oldest first, with what the journal moved on it. The window
/// starts at local midnight `days - 1` days before today in `$1`; `$3` is the clock's offset.
/// Each kind is summed as the positive tokens it moved. Usage, by far the most rows, comes from
/// the rollups (migration 0011: a quarter hour lies in one local day of every zone), the rest
/// from the journal's credit and debit rows (`kind <> 'usage'` prunes the usage table from the
/// view).
const OVERVIEW_DAYS_SQL: &str = "WITH w AS ( \
       SELECT date_trunc('day', (now() + $3::bigint * interval '1 microsecond') AT TIME ZONE $1) \
              - ($2 - 1) * interval '1 day' AS start_local), \
     moved AS ( \
       SELECT date_trunc('day', j.created_at AT TIME ZONE $1) AS day, \
              COALESCE(sum(j.token_amount) FILTER (WHERE j.kind IN ('grant', 'purchase', 'drip')), 0)::bigint AS credited, \
              COALESCE(-sum(j.token_amount) FILTER (WHERE j.kind = 'expiry'), 0)::bigint AS expired, \
              COALESCE(-sum(j.token_amount) FILTER (WHERE j.kind IN ('deduction', 'reversal')), 0)::bigint AS deducted \
         FROM journal j, w \
        WHERE j.kind <> 'usage' AND j.created_at >= (w.start_local AT TIME ZONE $1) GROUP BY 1), \
     used AS ( \
       SELECT date_trunc('day', r.bucket AT TIME ZONE $1) AS day, sum(r.tokens)::bigint AS used \
         FROM usage_rollups r, w WHERE r.bucket >= (w.start_local AT TIME ZONE $1) GROUP BY 1) \
     SELECT d::date AS day, COALESCE(m.credited, 0) AS credited, COALESCE(u.used, 0) AS used, \
            COALESCE(m.expired, 0) AS expired, COALESCE(m.deducted, 0) AS deducted \
       FROM w, generate_series(w.start_local, w.start_local + ($2 - 1) * interval '1 day', interval '1 day') d \
       LEFT JOIN moved m ON m.day = d LEFT JOIN used u ON u.day = d ORDER BY d";

/// The users who used the most since the window's start, most first, from the rollups.
const OVERVIEW_TOP_SQL: &str = "WITH w AS ( \
       SELECT (date_trunc('day', (now() + $3::bigint * interval '1 microsecond') AT TIME ZONE $1) \
              - ($2 - 1) * interval '1 day') AT TIME ZONE $1 AS start_at) \
     SELECT a.user_id, a.balance, u.used, u.events FROM ( \
       SELECT account_id, sum(tokens)::bigint AS used, sum(events)::bigint AS events \
         FROM usage_rollups, w WHERE bucket >= w.start_at GROUP BY account_id \
         ORDER BY used DESC, account_id LIMIT $4) u \
     JOIN accounts a USING (account_id) ORDER BY u.used DESC, a.user_id";

/// SQLSTATE of "time zone not recognized".
const INVALID_PARAMETER_VALUE: &str = "22023";

impl Store {
    /// Stripe events matching `filter`, after `cursor`, newest first.
    pub async fn stripe_events(
        &self,
        filter: &StripeEventFilter,
        cursor: Option<&StripeEventCursor>,
        limit: i64,
    ) -> Result<Vec<StripeEventRow>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let rows = sqlx::query(STRIPE_EVENTS_SQL)
            .bind(&filter.event_id)
            .bind(&filter.user_id)
            .bind(&filter.outcome)
            .bind(filter.livemode)
            .bind(cursor.map(|c| c.first_seen_at))
            .bind(cursor.map(|c| c.event_id.as_str()))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter()
            .map(|r| {
                Ok(StripeEventRow {
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    outcome: r.try_get("outcome")?,
                    first_outcome: r.try_get("first_outcome")?,
                    detail: r.try_get("detail")?,
                    deliveries: r.try_get("deliveries")?,
                    livemode: r.try_get("livemode")?,
                    user_id: r.try_get("user_id")?,
                    transaction_id: r.try_get("transaction_id")?,
                    api_version: r.try_get("api_version")?,
                    payment_intent: r.try_get("payment_intent")?,
                    first_seen_at: r.try_get("first_seen_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The whole ledger in one snapshot: every figure of the answer describes the same instant.
    /// Usage comes from the rollups; credits and debits other than usage from the journal rows
    /// of the window.
    pub async fn overview(&self, q: &OverviewQuery) -> Result<Overview, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let mut tx = snapshot(&mut conn).await.map_err(|e| self.saw(e))?;
        let offset = self.clock().offset_micros();
        // An unknown zone fails the first statement that uses it; say which field is wrong.
        let as_of: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "SELECT (now() + $2::bigint * interval '1 microsecond') \
             WHERE (now() AT TIME ZONE $1) IS NOT NULL",
        )
        .bind(&q.time_zone)
        .bind(offset)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| time_zone_error(e, &q.time_zone).unwrap_or_else(|e| self.saw(e).into()))?;
        let totals = sqlx::query(
            "SELECT COALESCE(sum(balance) FILTER (WHERE balance > 0), 0)::bigint AS outstanding, \
                    COALESCE(-sum(balance) FILTER (WHERE balance < 0), 0)::bigint AS overdrawn, \
                    COALESCE(sum(held), 0)::bigint AS held, count(*) AS accounts \
               FROM accounts WHERE last_seq > 0",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.saw(e))?;
        let days = sqlx::query(OVERVIEW_DAYS_SQL)
            .bind(&q.time_zone)
            .bind(q.days)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.saw(e))?
            .iter()
            .map(|r| {
                Ok(DayTotals {
                    day: r.try_get("day")?,
                    credited: r.try_get("credited")?,
                    used: r.try_get("used")?,
                    expired: r.try_get("expired")?,
                    deducted: r.try_get("deducted")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let top_users = sqlx::query(OVERVIEW_TOP_SQL)
            .bind(&q.time_zone)
            .bind(q.days)
            .bind(offset)
            .bind(q.top_users)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.saw(e))?
            .iter()
            .map(|r| {
                Ok(UserUsage {
                    user_id: r.try_get("user_id")?,
                    used: r.try_get("used")?,
                    events: r.try_get("events")?,
                    balance: r.try_get("balance")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        tx.commit().await.map_err(|e| self.saw(e))?;
        Ok(Overview {
            tokens_outstanding: totals.try_get("outstanding")?,
            tokens_overdrawn: totals.try_get("overdrawn")?,
            tokens_held: totals.try_get("held")?,
            accounts: totals.try_get("accounts")?,
            days,
            top_users,
            as_of,
        })
    }
}

/// Usage sums over whole rollup buckets (migration 0011) of `[$2, $3)`, grouped as asked.
/// A local hour is grouped by the instant it starts (a bucket minus its local minutes), so the
/// hour repeated when DST ends stays two groups; a local day by its local midnight's instant.
const SUMMARY_SQL: &str = "\
WITH src AS (
  SELECT * FROM usage_rollups
   WHERE ($1::bigint IS NULL OR account_id = $1) AND bucket >= $2 AND bucket < $3),
g AS (
  SELECT CASE WHEN $5 THEN model END AS model,
         CASE WHEN $6 THEN feature END AS feature,
         CASE WHEN $8 THEN bucket - make_interval(mins => extract(minute FROM bucket AT TIME ZONE $4)::int)
              WHEN $7 THEN date_trunc('day', bucket AT TIME ZONE $4) AT TIME ZONE $4 END AS period,
         sum(events)::bigint AS events, sum(tokens)::bigint AS tokens,
         sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
         sum(cache_read_tokens)::bigint AS cache_read_tokens,
         sum(cache_write_tokens)::bigint AS cache_write_tokens
    FROM src GROUP BY 1, 2, 3)
SELECT g.*, (g.period AT TIME ZONE $4)::date AS day,
       CASE WHEN $8 THEN extract(hour FROM g.period AT TIME ZONE $4)::int END AS hour,
       CASE WHEN g.period IS NULL THEN false
            WHEN $8 THEN g.period < $2 OR g.period + interval '1 hour' > $3
            ELSE g.period < $2 OR ((g.period AT TIME ZONE $4) + interval '1 day') AT TIME ZONE $4 > $3
       END AS partial
  FROM g ORDER BY g.period NULLS FIRST, g.model NULLS FIRST, g.feature NULLS FIRST
 LIMIT $9 OFFSET $10";

impl Store {
    /// Usage sums for `q`, a page of `limit` groups from `offset`, read from the rollups only.
    pub async fn summarize_usage(
        &self,
        q: &UsageQuery,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        // The user's account, and the zone checked even when no rollup row would use it.
        let (account,): (Option<i64>,) = sqlx::query_as(
            "SELECT (SELECT account_id FROM account_directory WHERE user_id = $1) \
              WHERE (now() AT TIME ZONE $2) IS NOT NULL",
        )
        .bind(&q.user_id)
        .bind(&q.time_zone)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| time_zone_error(e, &q.time_zone).unwrap_or_else(|e| self.saw(e).into()))?;
        if q.user_id.is_some() && account.is_none() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SUMMARY_SQL)
            .bind(account)
            .bind(q.from)
            .bind(q.to)
            .bind(&q.time_zone)
            .bind(q.by_model)
            .bind(q.by_feature)
            .bind(q.by_day)
            .bind(q.by_hour)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| time_zone_error(e, &q.time_zone).unwrap_or_else(|e| self.saw(e).into()))?;
        let grouped_by_time = q.by_day || q.by_hour;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    model: r.try_get("model")?,
                    feature: r.try_get("feature")?,
                    period_start: r.try_get("period")?,
                    day: if grouped_by_time {
                        r.try_get("day")?
                    } else {
                        None
                    },
                    hour: r.try_get("hour")?,
                    events: r.try_get("events")?,
                    tokens: r.try_get("tokens")?,
                    input_tokens: r.try_get("input_tokens")?,
                    output_tokens: r.try_get("output_tokens")?,
                    cache_read_tokens: r.try_get("cache_read_tokens")?,
                    cache_write_tokens: r.try_get("cache_write_tokens")?,
                    partial: r.try_get("partial")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// An unknown time zone, said of the field that named it; any other error is given back.
fn time_zone_error(e: sqlx::Error, zone: &str) -> Result<LedgerError, sqlx::Error> {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(INVALID_PARAMETER_VALUE) => {
            Ok(LedgerError::invalid(
                "time_zone",
                format!(
                    "{zone:?} is not a time zone name PostgreSQL knows; use an IANA name such as \
                     Europe/Paris, or leave it empty for UTC"
                ),
            ))
        }
        _ => Err(e),
    }
}
