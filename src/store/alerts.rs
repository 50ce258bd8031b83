//! Balance alerts (migration 0012): the rules, the outbox as operators list it, and the
//! deliverer's side of the outbox (claiming due events under a lease, in order per account, and
//! recording each attempt). The events themselves are written by the batch (`batch::insert_alerts`).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::batch::ACCOUNT_IDS_SQL;
use super::Store;
use crate::domain::{AlertEvent, AlertKind, AlertRule, Threshold};
use crate::error::LedgerError;

/// Most rules one ListBalanceAlerts answers with.
pub const ALERT_RULES_LISTED_MAX: i64 = 10_000;

const RULE_COLUMNS: &str = "b.alert_id, a.user_id, b.tokens, b.percent, b.created_by, \
    b.created_at, b.updated_at";

const EVENT_COLUMNS: &str = "event_id, user_id, kind, threshold, available, balance, seq, \
    created_at, delivered_at, attempts, next_attempt_at, last_error, lot_id, expires_at, tokens";

fn rule_from_row(row: &sqlx::postgres::PgRow) -> Result<AlertRule, sqlx::Error> {
    let threshold = match (
        row.try_get::<Option<i64>, _>("tokens")?,
        row.try_get::<Option<i32>, _>("percent")?,
    ) {
        (Some(t), _) => Threshold::Tokens(t),
        (None, Some(p)) => Threshold::Percent(p),
        (None, None) => {
            return Err(sqlx::Error::Decode(
                "a balance alert without a threshold".into(),
            ))
        }
    };
    Ok(AlertRule {
        alert_id: row.try_get("alert_id")?,
        user_id: row.try_get("user_id")?,
        threshold,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(crate) fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<AlertEvent, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(AlertEvent {
        event_id: row.try_get("event_id")?,
        user_id: row.try_get("user_id")?,
        kind: AlertKind::from_db(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown alert kind {kind:?}").into()))?,
        threshold: row.try_get("threshold")?,
        available: row.try_get("available")?,
        balance: row.try_get("balance")?,
        seq: row.try_get("seq")?,
        lot: match (
            row.try_get::<Option<i64>, _>("lot_id")?,
            row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("expires_at")?,
            row.try_get::<Option<i64>, _>("tokens")?,
        ) {
            (Some(l), Some(e), Some(t)) => Some((l, e, t)),
            _ => None,
        },
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
    })
}

fn split(threshold: Threshold) -> (Option<i64>, Option<i32>) {
    match threshold {
        Threshold::Tokens(t) => (Some(t), None),
        Threshold::Percent(p) => (None, Some(p)),
    }
}

impl Store {
    /// Sets `user`'s rule (creating its account row if it has none yet), or the default.
    pub async fn set_alert(
        &self,
        user: Option<&str>,
        threshold: Threshold,
        created_by: &str,
    ) -> Result<AlertRule, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let (tokens, percent) = split(threshold);
        // The account as a batch creates it (`batch::ACCOUNT_IDS_SQL`: directory, then account).
        let sql = format!(
            "WITH input AS (SELECT $1::text AS u WHERE $1::text IS NOT NULL), {ACCOUNT_IDS_SQL} \
             acc AS ( \
               INSERT INTO accounts AS a (account_id, user_id) \
               SELECT account_id, user_id FROM ids \
               ON CONFLICT (account_id) DO UPDATE SET user_id = EXCLUDED.user_id \
               RETURNING a.account_id, a.user_id), \
             upd AS ( \
               UPDATE balance_alerts SET tokens = $2, percent = $3, created_by = $4, \
                      updated_at = now() \
                WHERE account_id IS NOT DISTINCT FROM (SELECT account_id FROM acc) \
                RETURNING *), \
             ins AS ( \
               INSERT INTO balance_alerts (account_id, tokens, percent, created_by) \
               SELECT (SELECT account_id FROM acc), $2, $3, $4 \
                WHERE NOT EXISTS (SELECT 1 FROM upd) \
               RETURNING *) \
             SELECT {RULE_COLUMNS} FROM (SELECT * FROM upd UNION ALL SELECT * FROM ins) b \
               LEFT JOIN acc a ON true"
        );
        let row = sqlx::query(&sql)
            .bind(user)
            .bind(tokens)
            .bind(percent)
            .bind(created_by)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        Ok(rule_from_row(&row)?)
    }

    /// Removes `user`'s rule, or the default, clearing the account's "low" state so a later
    /// rule starts armed. `false` when there was none.
    pub async fn delete_alert(&self, user: Option<&str>) -> Result<bool, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let deleted: Option<i64> = sqlx::query_scalar(
            "DELETE FROM balance_alerts WHERE account_id IS NOT DISTINCT FROM \
               (SELECT account_id FROM account_directory WHERE user_id = $1) \
               AND ($1::text IS NULL OR account_id IS NOT NULL) RETURNING alert_id",
        )
        .bind(user)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.saw(e))?;
        Ok(deleted.is_some())
    }

    /// The default rule first, then users' own by user id; only `user`'s and the default when
    /// given.
    pub async fn alerts(&self, user: Option<&str>) -> Result<Vec<AlertRule>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM balance_alerts b LEFT JOIN accounts a USING (account_id) \
              WHERE $1::text IS NULL OR b.account_id IS NULL OR a.user_id = $1 \
              ORDER BY a.user_id NULLS FIRST LIMIT {ALERT_RULES_LISTED_MAX}"
        );
        let rows = sqlx::query(&sql)
            .bind(user)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter()
            .map(rule_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Alert events, newest first, below `before` (an event id).
    pub async fn alert_events(
        &self,
        user: Option<&str>,
        pending_only: bool,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertEvent>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM alert_outbox \
              WHERE ($1::text IS NULL OR account_id = \
                       (SELECT account_id FROM account_directory WHERE user_id = $1)) \
                AND (NOT $2 OR delivered_at IS NULL) AND ($3::bigint IS NULL OR event_id < $3) \
              ORDER BY event_id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(user)
            .bind(pending_only)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter()
            .map(event_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Claims up to `limit` due events for delivery, leasing them for `lease` (a crashed
    /// deliverer's events come due again when it runs out): only the oldest undelivered event of
    /// each account, so an account's events go out in order; `SKIP LOCKED` lets several ledger
    /// processes deliver side by side without taking the same event.
    pub async fn claim_alert_events(
        &self,
        limit: i64,
        lease: chrono::Duration,
    ) -> Result<Vec<AlertEvent>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let sql = format!(
            "UPDATE alert_outbox SET next_attempt_at = now() + $2 * interval '1 millisecond', \
                    attempts = attempts + 1 \
              WHERE event_id IN ( \
                SELECT o.event_id FROM alert_outbox o \
                 WHERE o.delivered_at IS NULL AND o.next_attempt_at <= now() \
                   AND NOT EXISTS (SELECT 1 FROM alert_outbox p WHERE p.account_id = o.account_id \
                                     AND p.delivered_at IS NULL AND p.event_id < o.event_id) \
                 ORDER BY o.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
              RETURNING {EVENT_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .bind(lease.num_milliseconds())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter()
            .map(event_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Records one delivery attempt: delivered, or failed and due again at `retry_at`.
    pub async fn alert_attempted(
        &self,
        event_id: i64,
        outcome: Result<(), (String, DateTime<Utc>)>,
    ) -> Result<(), LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let (delivered, error, retry_at) = match outcome {
            Ok(()) => (true, None, None),
            Err((error, at)) => (false, Some(error), Some(at)),
        };
        sqlx::query(
            "UPDATE alert_outbox SET \
               delivered_at = CASE WHEN $2 THEN now() END, last_error = $3, \
               next_attempt_at = COALESCE($4, next_attempt_at) \
             WHERE event_id = $1 AND delivered_at IS NULL",
        )
        .bind(event_id)
        .bind(delivered)
        .bind(error)
        .bind(retry_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.saw(e))?;
        Ok(())
    }

    /// Every account's user id after `after`, `limit` at a time (a default rule's
    /// re-evaluation walks them).
    pub async fn user_ids_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        sqlx::query_scalar(
            "SELECT user_id FROM accounts WHERE $1::text IS NULL OR user_id > $1 \
              ORDER BY user_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.saw(e).into())
    }
}
