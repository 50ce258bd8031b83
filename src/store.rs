//! The PostgreSQL store: every SQL statement the ledger runs lives here.
//!
//! A write is one transaction: claim the idempotency key, check the business key, move the
//! account balance (which row-locks the account), insert one journal row, commit. Concurrent
//! writes to one account serialise on the account row lock; writes to different accounts never
//! wait for each other. Locks are always taken in the same order (idempotency key, then account,
//! then business-key index entry), and a transaction touches one account, so writes cannot
//! deadlock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::domain::{
    BusinessKey, EntryId, EntryKind, GrantSource, Receipt, ReversalSource, UserId, WriteCommand,
    WriteDetails,
};
use crate::error::LedgerError;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times a write is retried after losing a race on a business key to a concurrent write
/// with another idempotency key. One retry always suffices (the retry sees the committed winner);
/// the second is slack.
const BUSINESS_KEY_RACE_RETRIES_MAX: usize = 2;

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

/// Why one attempt at a write did not finish.
enum Attempt {
    Done(Receipt),
    /// A concurrent write with another idempotency key committed the same business key first.
    LostBusinessKeyRace,
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

    /// Applies one write in one transaction, or replays the write its idempotency key or
    /// business key already made.
    pub async fn apply(
        &self,
        cmd: &WriteCommand,
        overdraft: Overdraft,
    ) -> Result<Receipt, LedgerError> {
        for _ in 0..=BUSINESS_KEY_RACE_RETRIES_MAX {
            match self.try_apply(cmd, overdraft).await? {
                Attempt::Done(receipt) => return Ok(receipt),
                Attempt::LostBusinessKeyRace => {
                    tracing::debug!("lost a business-key race to a concurrent write; retrying");
                }
            }
        }
        Err(LedgerError::internal(anyhow::anyhow!(
            "business key still racing after {BUSINESS_KEY_RACE_RETRIES_MAX} retries"
        )))
    }

    async fn try_apply(
        &self,
        cmd: &WriteCommand,
        overdraft: Overdraft,
    ) -> Result<Attempt, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let fingerprint = cmd.fingerprint();

        // 1. Claim the idempotency key. A concurrent holder of the same key makes this wait until
        //    it commits (then we see its row) or rolls back (then we claim the key).
        let claimed: Option<i64> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (idempotency_key, request_hash) VALUES ($1, $2) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING entry_id",
        )
        .bind(cmd.idempotency_key.as_str())
        .bind(&fingerprint[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(entry_id) = claimed else {
            let (request_hash, entry_id): (Vec<u8>, i64) = sqlx::query_as(
                "SELECT request_hash, entry_id FROM idempotency_keys WHERE idempotency_key = $1",
            )
            .bind(cmd.idempotency_key.as_str())
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            if request_hash != fingerprint {
                return Err(LedgerError::IdempotencyConflict {
                    key: cmd.idempotency_key.to_string(),
                });
            }
            let balance = self.balance_after(EntryId(entry_id)).await?;
            return Ok(Attempt::Done(Receipt {
                transaction_id: EntryId(entry_id),
                balance,
                replayed: true,
            }));
        };

        // 2. A business object already credited under another key is a replay of that credit.
        if let Some(key) = cmd.business_key() {
            if let Some(existing) = find_business_key(&mut tx, &key).await? {
                tx.rollback().await?;
                if existing.user_id == cmd.user_id.as_str()
                    && existing.token_amount == cmd.token_amount()
                {
                    return Ok(Attempt::Done(Receipt {
                        transaction_id: EntryId(existing.id),
                        balance: existing.balance_after,
                        replayed: true,
                    }));
                }
                return Err(LedgerError::BusinessKeyConflict {
                    object: describe_business_key(&key),
                    transaction_id: existing.id,
                });
            }
        }

        // 3. Move the balance; this row-locks the account until commit.
        let Some((account_id, balance_after, seq)) = move_balance(&mut tx, cmd, overdraft).await?
        else {
            let balance: i64 =
                sqlx::query_scalar("SELECT balance FROM accounts WHERE user_id = $1")
                    .bind(cmd.user_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .unwrap_or(0);
            tx.rollback().await?;
            return Err(LedgerError::InsufficientBalance {
                balance,
                requested: cmd.tokens.get(),
            });
        };

        // 4. A reversal must name a credit of this account and stay within what it credited.
        //    The account row lock taken above serialises this check with every other reversal of
        //    the same credit.
        if let WriteDetails::Reversal { original, .. } = &cmd.details {
            if let Err(err) = check_reversal(&mut tx, cmd, account_id, *original).await {
                tx.rollback().await?;
                return Err(err);
            }
        }

        // 5. The journal row.
        match insert_journal(&mut tx, cmd, entry_id, account_id, seq, balance_after).await {
            Ok(()) => {}
            Err(err) if is_business_key_violation(&err) => {
                tx.rollback().await?;
                return Ok(Attempt::LostBusinessKeyRace);
            }
            Err(err) => return Err(err.into()),
        }
        tx.commit().await?;
        Ok(Attempt::Done(Receipt {
            transaction_id: EntryId(entry_id),
            balance: balance_after,
            replayed: false,
        }))
    }

    async fn balance_after(&self, id: EntryId) -> Result<i64, LedgerError> {
        let balance: Option<i64> = sqlx::query_scalar(
            "SELECT balance_after FROM token_transactions WHERE id = $1 \
             UNION ALL SELECT balance_after FROM token_drips WHERE id = $1 \
             UNION ALL SELECT balance_after FROM token_usage WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        balance.ok_or_else(|| {
            LedgerError::internal(anyhow::anyhow!(
                "idempotency key points at journal row {id}, which does not exist"
            ))
        })
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
                    balance: Balance {
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
                    },
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

struct ExistingEntry {
    id: i64,
    user_id: String,
    token_amount: i64,
    balance_after: i64,
}

async fn find_business_key(
    tx: &mut Transaction<'_, Postgres>,
    key: &BusinessKey,
) -> Result<Option<ExistingEntry>, sqlx::Error> {
    let query = match key {
        BusinessKey::PaymentIntent(pi) => sqlx::query(
            "SELECT t.id, a.user_id, t.token_amount, t.balance_after FROM token_transactions t \
             JOIN accounts a USING (account_id) \
             WHERE t.transaction_type = 'purchase' AND t.stripe_payment_intent_id = $1",
        )
        .bind(pi),
        BusinessKey::AnnualInvoice(invoice) => sqlx::query(
            "SELECT t.id, a.user_id, t.token_amount, t.balance_after FROM token_transactions t \
             JOIN accounts a USING (account_id) \
             WHERE t.source = 'annual_subscription' AND t.stripe_invoice_id = $1",
        )
        .bind(invoice),
        BusinessKey::SubscriptionPeriod {
            stripe_subscription_id,
            period_start,
        } => sqlx::query(
            "SELECT d.id, a.user_id, d.token_amount, d.balance_after FROM token_drips d \
             JOIN accounts a USING (account_id) \
             WHERE d.stripe_subscription_id = $1 AND d.period_start = $2",
        )
        .bind(stripe_subscription_id)
        .bind(period_start),
    };
    let Some(row) = query.fetch_optional(&mut **tx).await? else {
        return Ok(None);
    };
    Ok(Some(ExistingEntry {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        token_amount: row.try_get("token_amount")?,
        balance_after: row.try_get("balance_after")?,
    }))
}

fn describe_business_key(key: &BusinessKey) -> String {
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

/// Applies the write's delta to the account (creating it on first credit) and returns
/// `(account_id, balance_after, entry_seq)`, or `None` for a refused deduction.
async fn move_balance(
    tx: &mut Transaction<'_, Postgres>,
    cmd: &WriteCommand,
    overdraft: Overdraft,
) -> Result<Option<(i64, i64, i64)>, sqlx::Error> {
    let tokens = cmd.tokens.get();
    if cmd.kind() == EntryKind::Deduction && overdraft == Overdraft::Refused {
        return sqlx::query_as(
            "UPDATE accounts SET balance = balance - $2, deducted_total = deducted_total + $2, \
             last_seq = last_seq + 1, updated_at = now() \
             WHERE user_id = $1 AND balance >= $2 \
             RETURNING account_id, balance, last_seq",
        )
        .bind(cmd.user_id.as_str())
        .bind(tokens)
        .fetch_optional(&mut **tx)
        .await;
    }
    let mut totals = Totals::default();
    match cmd.kind() {
        EntryKind::Grant => totals.granted = tokens,
        EntryKind::Deduction => totals.deducted = tokens,
        EntryKind::Purchase => totals.purchased = tokens,
        EntryKind::Drip => totals.dripped = tokens,
        EntryKind::Usage => totals.used = tokens,
        EntryKind::Reversal => totals.reversed = tokens,
    }
    sqlx::query_as(
        "INSERT INTO accounts (user_id, balance, last_seq, granted_total, deducted_total, \
         purchased_total, dripped_total, used_total, reversed_total) \
         VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (user_id) DO UPDATE SET \
           balance = accounts.balance + EXCLUDED.balance, \
           last_seq = accounts.last_seq + 1, \
           granted_total = accounts.granted_total + EXCLUDED.granted_total, \
           deducted_total = accounts.deducted_total + EXCLUDED.deducted_total, \
           purchased_total = accounts.purchased_total + EXCLUDED.purchased_total, \
           dripped_total = accounts.dripped_total + EXCLUDED.dripped_total, \
           used_total = accounts.used_total + EXCLUDED.used_total, \
           reversed_total = accounts.reversed_total + EXCLUDED.reversed_total, \
           updated_at = now() \
         RETURNING account_id, balance, last_seq",
    )
    .bind(cmd.user_id.as_str())
    .bind(cmd.token_amount())
    .bind(totals.granted)
    .bind(totals.deducted)
    .bind(totals.purchased)
    .bind(totals.dripped)
    .bind(totals.used)
    .bind(totals.reversed)
    .fetch_optional(&mut **tx)
    .await
}

async fn insert_journal(
    tx: &mut Transaction<'_, Postgres>,
    cmd: &WriteCommand,
    entry_id: i64,
    account_id: i64,
    seq: i64,
    balance_after: i64,
) -> Result<(), sqlx::Error> {
    let amount = cmd.token_amount();
    let created_by = cmd.created_by.as_str();
    let query = match &cmd.details {
        WriteDetails::Grant {
            source,
            reason,
            stripe_subscription_id,
            stripe_invoice_id,
        } => sqlx::query(
            "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
             token_amount, balance_after, reason, created_by, stripe_subscription_id, stripe_invoice_id) \
             VALUES ($1, $2, $3, 'grant', $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(source.as_str())
        .bind(amount)
        .bind(balance_after)
        .bind(reason)
        .bind(created_by)
        .bind(stripe_subscription_id)
        .bind(stripe_invoice_id),
        WriteDetails::Deduction {
            reason,
            allow_negative,
        } => sqlx::query(
            "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
             token_amount, balance_after, reason, created_by, allow_negative) \
             VALUES ($1, $2, $3, 'deduction', 'admin', $4, $5, $6, $7, $8)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(amount)
        .bind(balance_after)
        .bind(reason)
        .bind(created_by)
        .bind(allow_negative),
        WriteDetails::Purchase {
            amount_paid_cents,
            currency,
            stripe_payment_intent_id,
            stripe_checkout_session_id,
            pack,
        } => sqlx::query(
            "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
             token_amount, balance_after, created_by, amount_paid_cents, currency, \
             stripe_payment_intent_id, stripe_checkout_session_id, pack) \
             VALUES ($1, $2, $3, 'purchase', 'token_pack', $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(amount)
        .bind(balance_after)
        .bind(created_by)
        .bind(amount_paid_cents)
        .bind(currency)
        .bind(stripe_payment_intent_id)
        .bind(stripe_checkout_session_id)
        .bind(pack),
        WriteDetails::Drip {
            stripe_subscription_id,
            stripe_invoice_id,
            period_start,
            period_end,
        } => sqlx::query(
            "INSERT INTO token_drips (id, account_id, entry_seq, token_amount, balance_after, \
             stripe_subscription_id, stripe_invoice_id, period_start, period_end, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(amount)
        .bind(balance_after)
        .bind(stripe_subscription_id)
        .bind(stripe_invoice_id)
        .bind(period_start)
        .bind(period_end)
        .bind(created_by),
        WriteDetails::Usage {
            model,
            input_tokens,
            output_tokens,
            feature,
        } => sqlx::query(
            "INSERT INTO token_usage (id, account_id, entry_seq, token_amount, balance_after, \
             model, input_tokens, output_tokens, feature, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(amount)
        .bind(balance_after)
        .bind(model)
        .bind(input_tokens)
        .bind(output_tokens)
        .bind(feature)
        .bind(created_by),
        WriteDetails::Reversal {
            original,
            source,
            reason,
            stripe_reference,
        } => sqlx::query(
            "INSERT INTO token_transactions (id, account_id, entry_seq, transaction_type, source, \
             token_amount, balance_after, reason, created_by, reverses_transaction_id, stripe_reference) \
             VALUES ($1, $2, $3, 'reversal', $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(entry_id)
        .bind(account_id)
        .bind(seq)
        .bind(source.as_str())
        .bind(amount)
        .bind(balance_after)
        .bind(reason)
        .bind(created_by)
        .bind(original.0)
        .bind(stripe_reference),
    };
    query.execute(&mut **tx).await.map(|_| ())
}

/// Finds a journal row by id in whichever table holds it: `(account_id, kind, token_amount)`.
const FIND_ENTRY_SQL: &str = "\
SELECT account_id, transaction_type AS kind, token_amount FROM token_transactions WHERE id = $1
UNION ALL SELECT account_id, 'drip', token_amount FROM token_drips WHERE id = $1
UNION ALL SELECT account_id, 'usage', token_amount FROM token_usage WHERE id = $1";

async fn check_reversal(
    tx: &mut Transaction<'_, Postgres>,
    cmd: &WriteCommand,
    account_id: i64,
    original: EntryId,
) -> Result<(), LedgerError> {
    let found: Option<(i64, String, i64)> = sqlx::query_as(FIND_ENTRY_SQL)
        .bind(original.0)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((owner, kind, amount)) = found.filter(|(owner, _, _)| *owner == account_id) else {
        return Err(LedgerError::NotFound(format!(
            "transaction {original} is not a transaction of user {}",
            cmd.user_id
        )));
    };
    if !EntryKind::from_db(&kind).is_some_and(EntryKind::is_credit) {
        return Err(LedgerError::NotReversible(original.0));
    }
    debug_assert_eq!(owner, account_id);
    let reversed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(-sum(token_amount), 0)::bigint FROM token_transactions \
         WHERE reverses_transaction_id = $1",
    )
    .bind(original.0)
    .fetch_one(&mut **tx)
    .await?;
    let reversible = amount - reversed;
    if cmd.tokens.get() > reversible {
        return Err(LedgerError::ReversalExceedsOriginal {
            original: original.0,
            reversible,
            requested: cmd.tokens.get(),
        });
    }
    Ok(())
}

/// The unique indexes that make a business object credited once.
const BUSINESS_KEY_CONSTRAINTS: [&str; 3] = [
    "token_transactions_payment_intent_key",
    "token_transactions_annual_invoice_key",
    "token_drips_subscription_period_key",
];

fn is_business_key_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .constraint()
            .is_some_and(|name| BUSINESS_KEY_CONSTRAINTS.contains(&name)),
        _ => false,
    }
}

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
