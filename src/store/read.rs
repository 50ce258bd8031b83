//! Reads: history pages, account lists, lookups by id or payment intent, and `verify`, all over
//! the `journal` view (migration 0004).

use sqlx::Row;

use super::{balance_from_row, Store};
use crate::domain::{
    AccountCursor, AccountOrder, AccountSummary, AiCall, Discrepancy, EntryId, EntryKind,
    EntryLookup, FoundEntry, GrantSource, HistoryFilter, JournalEntry, Pricing, ReversalSource,
    TokenCounts, UserId, VerifyReport, WriteDetails,
};
use crate::error::LedgerError;

impl Store {
    /// One user's journal, newest first: rows with a sequence number below `before_seq`.
    pub async fn history(
        &self,
        user_id: &UserId,
        before_seq: Option<i64>,
        limit: i64,
        filter: &HistoryFilter,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let mut conn = self.acquire().await?;
        let account_id: Option<i64> =
            sqlx::query_scalar("SELECT account_id FROM account_directory WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.saw(e))?;
        let Some(account_id) = account_id else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(HISTORY_SQL)
            .bind(account_id)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .bind(
                filter
                    .kinds
                    .as_ref()
                    .map(|kinds| kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            )
            .bind(filter.created_after)
            .bind(filter.created_before)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter().map(journal_entry_from_row).collect()
    }

    /// Accounts whose user id starts with `prefix`, in `order`, after `cursor`.
    pub async fn list_accounts(
        &self,
        prefix: &str,
        order: AccountOrder,
        cursor: Option<&AccountCursor>,
        limit: i64,
    ) -> Result<Vec<AccountSummary>, LedgerError> {
        let mut conn = self.acquire().await?;
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        const COLUMNS: &str = "user_id, balance, granted_total, deducted_total, purchased_total, \
             dripped_total, used_total, reversed_total, expired_total, updated_at, last_seq, \
             created_at, held, settle_at, next_expiry_at, next_expiry_tokens";
        let (condition, order_by) = match order {
            AccountOrder::UserId => ("($2::text IS NULL OR user_id > $2)", "user_id"),
            AccountOrder::BalanceDesc => (
                "($4::bigint IS NULL OR (balance, user_id) < ($4, $2))",
                "balance DESC, user_id DESC",
            ),
            AccountOrder::LastActivityDesc => (
                "($5::timestamptz IS NULL OR (updated_at, user_id) < ($5, $2))",
                "updated_at DESC, user_id DESC",
            ),
        };
        let (cursor_user, cursor_balance, cursor_time) = match cursor {
            None => (None, None, None),
            Some(AccountCursor::UserId(u)) => (Some(u.clone()), None, None),
            Some(AccountCursor::Balance(b, u)) => (Some(u.clone()), Some(*b), None),
            Some(AccountCursor::LastActivity(t, u)) => (Some(u.clone()), None, Some(*t)),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM accounts WHERE user_id LIKE $1 AND {condition} ORDER BY {order_by} LIMIT $3"
        );
        let query = sqlx::query(&sql)
            .bind(pattern)
            .bind(cursor_user)
            .bind(limit)
            .bind(cursor_balance)
            .bind(cursor_time);
        let rows = query.fetch_all(&mut *conn).await.map_err(|e| self.saw(e))?;
        rows.iter()
            .map(|row| {
                Ok(AccountSummary {
                    user_id: row.try_get("user_id")?,
                    created_at: row.try_get("created_at")?,
                    balance: balance_from_row(row)?,
                })
            })
            .collect()
    }

    /// Checks `balance = Σ journal` (and the per-kind totals, the row count and the newest row's
    /// `balance_after`) for every account.
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let mut conn = self.acquire().await?;
        let rows = sqlx::query(VERIFY_SQL)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        let mut report = VerifyReport::default();
        for row in rows {
            report.accounts_checked += 1;
            let user_id: String = row.try_get("user_id")?;
            let rows_in_journal: i64 = row.try_get("journal_rows")?;
            report.journal_rows += rows_in_journal;
            let pairs: [(&str, &str, &str); 15] = [
                ("balance", "balance", "journal_balance"),
                ("granted total", "granted_total", "journal_granted"),
                ("deducted total", "deducted_total", "journal_deducted"),
                ("purchased total", "purchased_total", "journal_purchased"),
                ("dripped total", "dripped_total", "journal_dripped"),
                ("used total", "used_total", "journal_used"),
                ("reversed total", "reversed_total", "journal_reversed"),
                ("expired total", "expired_total", "journal_expired"),
                ("row count", "last_seq", "journal_rows"),
                ("balance vs lots", "balance", "lots_balance"),
                ("held vs lots", "held", "lots_held"),
                ("held vs holds", "held", "holds_held"),
                ("active holds", "active_holds", "holds_active"),
                (
                    "holds placed on negative available",
                    "zero",
                    "holds_overdrawn",
                ),
                ("newest balance_after", "balance", "newest_balance_after"),
            ];
            for (what, stored, journal) in pairs {
                let stored_value: i64 = row.try_get(stored)?;
                let journal_value: i64 = row.try_get(journal)?;
                if stored_value != journal_value {
                    report.discrepancies.push(Discrepancy {
                        user_id: user_id.clone(),
                        what: format!(
                            "{what}: account says {stored_value}, journal says {journal_value}"
                        ),
                    });
                }
            }
        }
        let rollups = sqlx::query(VERIFY_ROLLUPS_SQL)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        for row in rollups {
            let bucket: chrono::DateTime<chrono::Utc> = row.try_get("bucket")?;
            let model: String = row.try_get("model")?;
            let feature: String = row.try_get("feature")?;
            let journal: Option<String> = row.try_get("journal")?;
            let rollup: Option<String> = row.try_get("rollup")?;
            report.discrepancies.push(Discrepancy {
                user_id: row.try_get("user_id")?,
                what: format!(
                    "usage rollup of {} model {model:?} feature {feature:?} (events, tokens, input, output, cache read, cache write): rollup says {}, journal says {}",
                    bucket.to_rfc3339(),
                    rollup.as_deref().unwrap_or("nothing"),
                    journal.as_deref().unwrap_or("nothing"),
                ),
            });
        }
        Ok(report)
    }

    /// The balance right after `user_id`'s last journal row at or before `at`.
    pub async fn balance_at(
        &self,
        user_id: &UserId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(i64, i64, Option<chrono::DateTime<chrono::Utc>>), LedgerError> {
        let mut conn = self.acquire().await?;
        let row: Option<(i64, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(BALANCE_AT_SQL)
            .bind(user_id.as_str())
            .bind(at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        Ok(match row {
            Some((seq, balance, created_at)) => (balance, seq, Some(created_at)),
            None => (0, 0, None),
        })
    }

    pub async fn find_entry(
        &self,
        lookup: &EntryLookup,
    ) -> Result<Option<FoundEntry>, LedgerError> {
        let mut conn = self.acquire().await?;
        let row = match lookup {
            EntryLookup::Id(id) => {
                let sql = format!("{FOUND_ENTRY_SQL} WHERE j.id = $1");
                sqlx::query(&sql)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| self.saw(e))?
            }
            EntryLookup::PaymentIntent(pi) => {
                // Through its business key (migration 0014): the journal row by (account, id).
                let sql = format!(
                    "{FOUND_ENTRY_SQL} JOIN business_keys b \
                       ON b.account_id = j.account_id AND b.transaction_id = j.id \
                     WHERE b.kind = 'payment_intent' AND b.key = $1"
                );
                sqlx::query(&sql)
                    .bind(pi)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| self.saw(e))?
            }
        };
        let Some(row) = row else { return Ok(None) };
        Ok(Some(FoundEntry {
            entry: journal_entry_from_row(&row)?,
            user_id: row.try_get("user_id")?,
            reversed_tokens: row.try_get("reversed_tokens")?,
        }))
    }
}

/// A binary search over one account's journal by sequence for the last row created at or before
/// `$2`: each step reads one row through the tables' (account, sequence) indexes, so about
/// log2(rows) index probes whatever the history's length. It relies on an account's rows being
/// in time order as they are in sequence order, which the batch clock guarantees (see
/// `Staged::now`).
const BALANCE_AT_SQL: &str = "\
WITH RECURSIVE acc AS (SELECT account_id, last_seq FROM accounts WHERE user_id = $1),
bs(lo, hi) AS (
  SELECT 0::bigint, last_seq FROM acc
  UNION ALL
  SELECT CASE WHEN m.at <= $2 THEN x.mid ELSE bs.lo END,
         CASE WHEN m.at <= $2 THEN bs.hi ELSE x.mid - 1 END
    FROM bs CROSS JOIN acc
    CROSS JOIN LATERAL (SELECT (bs.lo + bs.hi + 1) / 2 AS mid) x
    CROSS JOIN LATERAL (SELECT created_at AS at FROM journal j
                         WHERE j.account_id = acc.account_id AND j.entry_seq = x.mid) m
   WHERE bs.lo < bs.hi)
SELECT j.entry_seq, j.balance_after, j.created_at
  FROM bs CROSS JOIN acc JOIN journal j ON j.account_id = acc.account_id AND j.entry_seq = bs.lo
 WHERE bs.lo = bs.hi AND bs.lo > 0";

/// Every usage rollup (migration 0011) that differs from the sums of its journal rows, either
/// way (a bucket missing on one side shows as NULL there); at most 100.
const VERIFY_ROLLUPS_SQL: &str = "\
WITH j AS (
  SELECT account_id, ledger_usage_bucket(created_at) AS bucket, COALESCE(model, '') AS model,
         COALESCE(feature, '') AS feature, count(*) AS events, -sum(token_amount) AS tokens,
         sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
         COALESCE(sum(cache_read_tokens), 0) AS cache_read_tokens,
         COALESCE(sum(cache_write_tokens), 0) AS cache_write_tokens
    FROM token_usage GROUP BY 1, 2, 3, 4)
SELECT a.user_id, COALESCE(j.bucket, r.bucket) AS bucket, COALESCE(j.model, r.model) AS model,
       COALESCE(j.feature, r.feature) AS feature,
       CASE WHEN j.account_id IS NOT NULL THEN concat_ws(', ', j.events, j.tokens, j.input_tokens,
         j.output_tokens, j.cache_read_tokens, j.cache_write_tokens) END AS journal,
       CASE WHEN r.account_id IS NOT NULL THEN concat_ws(', ', r.events, r.tokens, r.input_tokens,
         r.output_tokens, r.cache_read_tokens, r.cache_write_tokens) END AS rollup
  FROM j FULL JOIN usage_rollups r
    ON r.account_id = j.account_id AND r.bucket = j.bucket AND r.model = j.model
   AND r.feature = j.feature
  JOIN accounts a ON a.account_id = COALESCE(j.account_id, r.account_id)
 WHERE (j.events, j.tokens, j.input_tokens, j.output_tokens, j.cache_read_tokens,
        j.cache_write_tokens)
       IS DISTINCT FROM (r.events, r.tokens, r.input_tokens, r.output_tokens,
        r.cache_read_tokens, r.cache_write_tokens)
 LIMIT 100";

/// One page of an account's journal, newest first, below the cursor.
const HISTORY_SQL: &str = "\
SELECT j.*, h.hold_id FROM (
  SELECT * FROM journal
   WHERE account_id = $1 AND entry_seq < $2
     AND ($4::text[] IS NULL OR kind = ANY($4))
     AND ($5::timestamptz IS NULL OR created_at >= $5)
     AND ($6::timestamptz IS NULL OR created_at < $6)
   ORDER BY entry_seq DESC LIMIT $3
) j LEFT JOIN token_holds h
    ON h.account_id = j.account_id AND h.committed_transaction_id = j.id AND j.kind = 'usage'
ORDER BY j.entry_seq DESC";

/// What a looked-up row is answered with besides itself: its owner, its key, and how much of it
/// reversals have taken back.
const FOUND_ENTRY_SQL: &str = "\
SELECT j.*, h.hold_id, a.user_id,
       (SELECT COALESCE(-sum(r.token_amount), 0)::bigint FROM token_transactions r
         WHERE r.account_id = j.account_id AND r.reverses_transaction_id = j.id) AS reversed_tokens
  FROM journal j JOIN accounts a USING (account_id)
  LEFT JOIN token_holds h
    ON h.account_id = j.account_id AND h.committed_transaction_id = j.id AND j.kind = 'usage'";

fn journal_entry_from_row(row: &sqlx::postgres::PgRow) -> Result<JournalEntry, LedgerError> {
    let kind: String = row.try_get("kind")?;
    let kind = EntryKind::from_db(&kind)
        .ok_or_else(|| LedgerError::internal(anyhow::anyhow!("unknown journal kind {kind:?}")))?;
    let details = match kind {
        EntryKind::Grant => {
            let source: String = row.try_get("source")?;
            WriteDetails::Grant {
                source: GrantSource::from_db(&source).ok_or_else(|| {
                    LedgerError::internal(anyhow::anyhow!("unknown grant source {source:?}"))
                })?,
                reason: row.try_get("reason")?,
                stripe_subscription_id: row.try_get("stripe_subscription_id")?,
                stripe_invoice_id: row.try_get("stripe_invoice_id")?,
            }
        }
        EntryKind::Deduction => WriteDetails::Deduction {
            reason: row
                .try_get::<Option<String>, _>("reason")?
                .unwrap_or_default(),
            allow_negative: row
                .try_get::<Option<bool>, _>("allow_negative")?
                .unwrap_or(false),
        },
        EntryKind::Purchase => WriteDetails::Purchase {
            amount_paid_cents: row
                .try_get::<Option<i64>, _>("amount_paid_cents")?
                .unwrap_or_default(),
            currency: row
                .try_get::<Option<String>, _>("currency")?
                .unwrap_or_default(),
            stripe_payment_intent_id: row
                .try_get::<Option<String>, _>("stripe_payment_intent_id")?
                .unwrap_or_default(),
            stripe_checkout_session_id: row.try_get("stripe_checkout_session_id")?,
            pack: row.try_get("pack")?,
        },
        EntryKind::Drip => WriteDetails::Drip {
            stripe_subscription_id: row
                .try_get::<Option<String>, _>("stripe_subscription_id")?
                .unwrap_or_default(),
            stripe_invoice_id: row.try_get("stripe_invoice_id")?,
            period_start: row.try_get("period_start")?,
            period_end: row.try_get("period_end")?,
        },
        EntryKind::Usage => {
            let count = |column: &str| -> Result<i64, sqlx::Error> {
                Ok(row.try_get::<Option<i64>, _>(column)?.unwrap_or_default())
            };
            let call = AiCall {
                model: row.try_get("model")?,
                feature: row.try_get("feature")?,
                counts: TokenCounts {
                    input: count("input_tokens")?,
                    cache_read: count("cache_read_tokens")?,
                    cache_write: count("cache_write_tokens")?,
                    output: count("output_tokens")?,
                },
                pricing: match row.try_get::<Option<i64>, _>("price_id")? {
                    Some(id) => Pricing::Priced(id),
                    None => Pricing::Caller,
                },
            };
            match row.try_get::<Option<i64>, _>("hold_id")? {
                Some(hold_id) => WriteDetails::CommitHold {
                    hold_id: EntryId(hold_id),
                    call,
                },
                None => WriteDetails::Usage { call },
            }
        }
        EntryKind::Expiry => WriteDetails::Expiry {
            lot_id: row.try_get::<Option<i64>, _>("lot_id")?.unwrap_or_default(),
            carried: row
                .try_get::<Option<i64>, _>("carried_tokens")?
                .unwrap_or_default(),
            carried_to: row.try_get("carried_to_lot")?,
        },
        EntryKind::Hold => {
            return Err(LedgerError::internal(anyhow::anyhow!(
                "a journal row of kind hold"
            )))
        }
        EntryKind::Reversal => {
            let source: String = row.try_get("source")?;
            WriteDetails::Reversal {
                original: EntryId(
                    row.try_get::<Option<i64>, _>("reverses_transaction_id")?
                        .unwrap_or_default(),
                ),
                source: ReversalSource::from_db(&source).ok_or_else(|| {
                    LedgerError::internal(anyhow::anyhow!("unknown reversal source {source:?}"))
                })?,
                reason: row
                    .try_get::<Option<String>, _>("reason")?
                    .unwrap_or_default(),
                stripe_reference: row.try_get("stripe_reference")?,
            }
        }
    };
    Ok(JournalEntry {
        id: EntryId(row.try_get("id")?),
        seq: row.try_get("entry_seq")?,
        token_amount: row.try_get("token_amount")?,
        balance_after: row.try_get("balance_after")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        idempotency_key: row.try_get("idempotency_key")?,
        details,
    })
}

/// Per account: the stored figures beside the journal's.
const VERIFY_SQL: &str = "\
WITH sums AS (
  SELECT account_id,
         COALESCE(sum(token_amount), 0)::bigint AS journal_balance,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'grant'), 0)::bigint AS journal_granted,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'deduction'), 0)::bigint AS journal_deducted,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'purchase'), 0)::bigint AS journal_purchased,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'drip'), 0)::bigint AS journal_dripped,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'usage'), 0)::bigint AS journal_used,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'reversal'), 0)::bigint AS journal_reversed,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'expiry'), 0)::bigint AS journal_expired,
         count(*) AS journal_rows,
         max(entry_seq) AS newest_seq
    FROM journal
   GROUP BY account_id
), lots AS (
  SELECT account_id, sum(remaining)::bigint AS remaining, sum(held)::bigint AS held
    FROM token_lots GROUP BY account_id
), holds AS (
  SELECT account_id,
         COALESCE(sum(tokens) FILTER (WHERE state = 'active'), 0)::bigint AS held,
         count(*) FILTER (WHERE state = 'active') AS active,
         count(*) FILTER (WHERE available_after < 0) AS overdrawn
    FROM token_holds GROUP BY account_id
)
SELECT a.user_id, a.balance, a.granted_total, a.deducted_total, a.purchased_total, a.dripped_total,
       a.used_total, a.reversed_total, a.expired_total, a.last_seq, a.held,
       a.active_holds::bigint AS active_holds, 0::bigint AS zero,
       COALESCE(l.remaining, 0) - a.debt AS lots_balance,
       COALESCE(l.held, 0) AS lots_held,
       COALESCE(h.held, 0) AS holds_held,
       COALESCE(h.active, 0) AS holds_active,
       COALESCE(h.overdrawn, 0) AS holds_overdrawn,
       COALESCE(j.journal_expired, 0) AS journal_expired,
       COALESCE(j.journal_balance, 0) AS journal_balance,
       COALESCE(j.journal_granted, 0) AS journal_granted,
       COALESCE(j.journal_deducted, 0) AS journal_deducted,
       COALESCE(j.journal_purchased, 0) AS journal_purchased,
       COALESCE(j.journal_dripped, 0) AS journal_dripped,
       COALESCE(j.journal_used, 0) AS journal_used,
       COALESCE(j.journal_reversed, 0) AS journal_reversed,
       COALESCE(j.journal_rows, 0) AS journal_rows,
       COALESCE(n.balance_after, 0) AS newest_balance_after
  FROM accounts a
  LEFT JOIN sums j USING (account_id)
  LEFT JOIN lots l USING (account_id)
  LEFT JOIN holds h USING (account_id)
  LEFT JOIN journal n ON n.account_id = a.account_id AND n.entry_seq = a.last_seq
 ORDER BY a.user_id";
