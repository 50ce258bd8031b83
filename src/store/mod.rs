//! The PostgreSQL store: every SQL statement the ledger runs lives here.
//!
//! Writes are applied in batches (`batch.rs`): one transaction per batch, one journal row per
//! write, each account moved once by its summed delta. Reads (balance, history, accounts,
//! verify) are single statements here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::domain::{
    BusinessKey, EntryId, EntryKind, GrantSource, ReversalSource, UserId, WriteDetails,
};
use crate::error::LedgerError;

mod batch;

pub use batch::{BatchOutcome, BatchResults, Pending};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether a debit may take the balance below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdraft {
    /// Usage: the AI call already happened, so it is always recorded.
    Allowed,
    /// Admin deductions: refused when the balance does not cover them.
    Refused,
}

/// Per-kind totals, each a positive sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub purchased: i64,
    pub dripped: i64,
    pub used: i64,
    pub reversed: i64,
}

/// One account's balance as GetBalance reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub balance: i64,
    pub totals: Totals,
    pub updated_at: Option<DateTime<Utc>>,
    pub transaction_count: i64,
}

/// One journal row, whichever table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: EntryId,
    pub seq: i64,
    pub token_amount: i64,
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub details: WriteDetails,
}

impl JournalEntry {
    pub fn kind(&self) -> EntryKind {
        self.details.kind()
    }
}

/// Which journal rows a history page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only these kinds; `None` means all.
    pub kinds: Option<Vec<EntryKind>>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// How ListAccounts orders accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountOrder {
    UserId,
    BalanceDesc,
    LastActivityDesc,
}

/// Where the previous page of accounts ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCursor {
    UserId(String),
    Balance(i64, String),
    LastActivity(DateTime<Utc>, String),
}

/// One account as the admin page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub user_id: String,
    pub balance: Balance,
    pub created_at: DateTime<Utc>,
}

/// An account whose stored balance disagrees with its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub user_id: String,
    pub what: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts_checked: i64,
    pub journal_rows: i64,
    pub discrepancies: Vec<Discrepancy>,
}

/// Database connection settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub database_url: String,
    pub pool_connections_max: u32,
    pub pool_acquire_timeout: Duration,
}

/// The ledger's PostgreSQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so the server can start (and
    /// report NOT_SERVING) while the database is still coming up.
    pub fn connect_lazy(config: &StoreConfig) -> Result<Self, LedgerError> {
        let options: PgConnectOptions = config.database_url.parse().map_err(|e| {
            LedgerError::internal(anyhow::Error::new(e).context("parsing DATABASE_URL"))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_connections_max)
            .acquire_timeout(config.pool_acquire_timeout)
            .connect_lazy_with(options.application_name("token-ledger"));
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Answers whether the database takes queries right now.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One indexed row read, however long the account's history.
    pub async fn balance(&self, user_id: &UserId) -> Result<Balance, LedgerError> {
        let row = sqlx::query(
            "SELECT balance, granted_total, deducted_total, purchased_total, dripped_total, \
             used_total, reversed_total, updated_at, last_seq FROM accounts WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Balance {
                balance: 0,
                totals: Totals::default(),
                updated_at: None,
                transaction_count: 0,
            });
        };
        balance_from_row(&row)
    }

    /// One user's journal, newest first: rows with a sequence number below `before_seq`.
    pub async fn history(
        &self,
        user_id: &UserId,
        before_seq: Option<i64>,
        limit: i64,
        filter: &HistoryFilter,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let account_id: Option<i64> =
            sqlx::query_scalar("SELECT account_id FROM accounts WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
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
            .fetch_all(&self.pool)
            .await?;
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
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        const COLUMNS: &str = "user_id, balance, granted_total, deducted_total, purchased_total, \
             dripped_total, used_total, reversed_total, updated_at, last_seq, created_at";
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
        let rows = query.fetch_all(&self.pool).await?;
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
        let rows = sqlx::query(VERIFY_SQL).fetch_all(&self.pool).await?;
        let mut report = VerifyReport::default();
        for row in rows {
            report.accounts_checked += 1;
            let user_id: String = row.try_get("user_id")?;
            let rows_in_journal: i64 = row.try_get("journal_rows")?;
            report.journal_rows += rows_in_journal;
            let pairs: [(&str, &str, &str); 9] = [
                ("balance", "balance", "journal_balance"),
                ("granted total", "granted_total", "journal_granted"),
                ("deducted total", "deducted_total", "journal_deducted"),
                ("purchased total", "purchased_total", "journal_purchased"),
                ("dripped total", "dripped_total", "journal_dripped"),
                ("used total", "used_total", "journal_used"),
                ("reversed total", "reversed_total", "journal_reversed"),
                ("row count", "last_seq", "journal_rows"),
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
        Ok(report)
    }
}

/// An `accounts` row's balance, totals and last change.
pub(crate) fn balance_from_row(row: &sqlx::postgres::PgRow) -> Result<Balance, LedgerError> {
    Ok(Balance {
        balance: row.try_get("balance")?,
        totals: Totals {
            granted: row.try_get("granted_total")?,
            deducted: row.try_get("deducted_total")?,
            purchased: row.try_get("purchased_total")?,
            dripped: row.try_get("dripped_total")?,
            used: row.try_get("used_total")?,
            reversed: row.try_get("reversed_total")?,
        },
        updated_at: Some(row.try_get("updated_at")?),
        transaction_count: row.try_get("last_seq")?,
    })
}

/// Renders connection options back into a URL (`--database-url` form), Unix sockets included.
pub fn url_of(o: &PgConnectOptions) -> String {
    let db = o.get_database().unwrap_or("postgres");
    match o.get_socket() {
        Some(dir) => format!(
            "postgres://{}@localhost:{}/{db}?host={}",
            o.get_username(),
            o.get_port(),
            dir.display()
        ),
        None => format!(
            "postgres://{}@{}:{}/{db}",
            o.get_username(),
            o.get_host(),
            o.get_port()
        ),
    }
}

pub(super) fn describe_business_key(key: &BusinessKey) -> String {
    match key {
        BusinessKey::PaymentIntent(pi) => format!("payment intent {pi}"),
        BusinessKey::AnnualInvoice(invoice) => format!("annual subscription invoice {invoice}"),
        BusinessKey::SubscriptionPeriod {
            stripe_subscription_id,
            period_start,
        } => format!(
            "subscription {stripe_subscription_id} period starting {}",
            period_start.to_rfc3339()
        ),
    }
}

/// The unique indexes that make a business object credited once.
pub(super) const BUSINESS_KEY_CONSTRAINTS: [&str; 3] = [
    "token_transactions_payment_intent_key",
    "token_transactions_annual_invoice_key",
    "token_drips_subscription_period_key",
];

// The columns every journal query returns, per table; absent details are NULL so the three
// tables' rows line up in one union.
macro_rules! tx_columns {
    () => {
        "id, account_id, entry_seq, transaction_type AS kind, token_amount, balance_after, created_at, \
         created_by, reason, source, stripe_subscription_id, stripe_invoice_id, amount_paid_cents, \
         currency, stripe_payment_intent_id, stripe_checkout_session_id, pack, reverses_transaction_id, \
         stripe_reference, allow_negative, NULL::timestamptz AS period_start, NULL::timestamptz AS period_end, \
         NULL::text AS model, NULL::bigint AS input_tokens, NULL::bigint AS output_tokens, \
         NULL::text AS feature"
    };
}
macro_rules! drip_columns {
    () => {
        "id, account_id, entry_seq, 'drip', token_amount, balance_after, created_at, created_by, \
         NULL, NULL, stripe_subscription_id, stripe_invoice_id, NULL, NULL, NULL, NULL, NULL, NULL, \
         NULL, NULL, period_start, period_end, NULL, NULL, NULL, NULL"
    };
}
macro_rules! usage_columns {
    () => {
        "id, account_id, entry_seq, 'usage', token_amount, balance_after, created_at, created_by, \
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
         model, input_tokens, output_tokens, feature"
    };
}

macro_rules! history_time_filter {
    () => {
        " AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6)"
    };
}

/// One page of an account's journal, newest first: each table's newest rows below the cursor,
/// merged.
const HISTORY_SQL: &str = concat!(
    "SELECT j.*, k.idempotency_key FROM (",
    "(SELECT ",
    tx_columns!(),
    " FROM token_transactions WHERE account_id = $1 AND entry_seq < $2",
    " AND ($4::text[] IS NULL OR transaction_type = ANY($4))",
    history_time_filter!(),
    " ORDER BY entry_seq DESC LIMIT $3)",
    " UNION ALL ",
    "(SELECT ",
    drip_columns!(),
    " FROM token_drips WHERE account_id = $1 AND entry_seq < $2",
    " AND ($4::text[] IS NULL OR 'drip' = ANY($4))",
    history_time_filter!(),
    " ORDER BY entry_seq DESC LIMIT $3)",
    " UNION ALL ",
    "(SELECT ",
    usage_columns!(),
    " FROM token_usage WHERE account_id = $1 AND entry_seq < $2",
    " AND ($4::text[] IS NULL OR 'usage' = ANY($4))",
    history_time_filter!(),
    " ORDER BY entry_seq DESC LIMIT $3)",
    " ORDER BY entry_seq DESC LIMIT $3",
    ") j LEFT JOIN idempotency_keys k ON k.entry_id = j.id ORDER BY j.entry_seq DESC"
);

/// One journal row by id, with its owner and how much of it has been reversed.
const ENTRY_BY_ID_SQL: &str = concat!(
    "SELECT j.*, k.idempotency_key, a.user_id, ",
    "(SELECT COALESCE(-sum(r.token_amount), 0)::bigint FROM token_transactions r WHERE r.reverses_transaction_id = j.id) AS reversed_tokens ",
    "FROM (",
    "SELECT ", tx_columns!(), " FROM token_transactions WHERE id = $1",
    " UNION ALL SELECT ", drip_columns!(), " FROM token_drips WHERE id = $1",
    " UNION ALL SELECT ", usage_columns!(), " FROM token_usage WHERE id = $1",
    ") j JOIN accounts a USING (account_id) LEFT JOIN idempotency_keys k ON k.entry_id = j.id"
);

/// The purchase of a payment intent, with its owner and how much of it has been reversed.
const PURCHASE_BY_PAYMENT_INTENT_SQL: &str = concat!(
    "SELECT j.*, k.idempotency_key, a.user_id, ",
    "(SELECT COALESCE(-sum(r.token_amount), 0)::bigint FROM token_transactions r WHERE r.reverses_transaction_id = j.id) AS reversed_tokens ",
    "FROM (SELECT ", tx_columns!(), " FROM token_transactions ",
    "WHERE transaction_type = 'purchase' AND stripe_payment_intent_id = $1) j ",
    "JOIN accounts a USING (account_id) LEFT JOIN idempotency_keys k ON k.entry_id = j.id"
);

/// A journal row looked up on its own, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEntry {
    pub entry: JournalEntry,
    pub user_id: String,
    /// Tokens reversals have clawed back from this row so far.
    pub reversed_tokens: i64,
}

/// How to find one journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryLookup {
    Id(EntryId),
    PaymentIntent(String),
}

impl Store {
    pub async fn find_entry(
        &self,
        lookup: &EntryLookup,
    ) -> Result<Option<FoundEntry>, LedgerError> {
        let row = match lookup {
            EntryLookup::Id(id) => sqlx::query(ENTRY_BY_ID_SQL).bind(id.0),
            EntryLookup::PaymentIntent(pi) => sqlx::query(PURCHASE_BY_PAYMENT_INTENT_SQL).bind(pi),
        }
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(FoundEntry {
            entry: journal_entry_from_row(&row)?,
            user_id: row.try_get("user_id")?,
            reversed_tokens: row.try_get("reversed_tokens")?,
        }))
    }
}

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
        EntryKind::Usage => WriteDetails::Usage {
            model: row.try_get("model")?,
            input_tokens: row
                .try_get::<Option<i64>, _>("input_tokens")?
                .unwrap_or_default(),
            output_tokens: row
                .try_get::<Option<i64>, _>("output_tokens")?
                .unwrap_or_default(),
            feature: row.try_get("feature")?,
        },
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
WITH journal AS (
  SELECT account_id,
         COALESCE(sum(token_amount), 0)::bigint AS journal_balance,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'grant'), 0)::bigint AS journal_granted,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'deduction'), 0)::bigint AS journal_deducted,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'purchase'), 0)::bigint AS journal_purchased,
         COALESCE(sum(token_amount) FILTER (WHERE kind = 'drip'), 0)::bigint AS journal_dripped,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'usage'), 0)::bigint AS journal_used,
         COALESCE(-sum(token_amount) FILTER (WHERE kind = 'reversal'), 0)::bigint AS journal_reversed,
         count(*) AS journal_rows,
         max(entry_seq) AS newest_seq
    FROM (SELECT account_id, transaction_type AS kind, token_amount, entry_seq FROM token_transactions
          UNION ALL SELECT account_id, 'drip', token_amount, entry_seq FROM token_drips
          UNION ALL SELECT account_id, 'usage', token_amount, entry_seq FROM token_usage) rows
   GROUP BY account_id
)
SELECT a.user_id, a.balance, a.granted_total, a.deducted_total, a.purchased_total, a.dripped_total,
       a.used_total, a.reversed_total, a.last_seq,
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
  LEFT JOIN journal j USING (account_id)
  LEFT JOIN LATERAL (
    SELECT balance_after FROM token_transactions t WHERE t.account_id = a.account_id AND t.entry_seq = a.last_seq
    UNION ALL
    SELECT balance_after FROM token_drips d WHERE d.account_id = a.account_id AND d.entry_seq = a.last_seq
    UNION ALL
    SELECT balance_after FROM token_usage u WHERE u.account_id = a.account_id AND u.entry_seq = a.last_seq
    LIMIT 1
  ) n ON true
 ORDER BY a.user_id";
