//! Group commit: many writes in one PostgreSQL transaction, each evaluated in arrival order
//! exactly as if it had been applied alone.
//!
//! One batch is a handful of statements whatever its size: claim every idempotency key at once,
//! look up every replayed key and business key at once, lock every account the batch touches with
//! one upsert, compute each write's result in memory against the running balances (so a deduction
//! is refused against the balance the writes before it left), then insert the journal rows with
//! one `unnest` insert per table and move each account once by its summed delta.
//!
//! Locks are always taken in one global order: idempotency keys sorted, then accounts sorted by
//! user id, then business-key index entries sorted, so two batches can never wait on each other in
//! a cycle. A batch whose transaction fails is rolled back whole; a lost race on a business key
//! (a concurrent batch committed the same payment intent first) or a serialization failure is
//! retried, which then sees the winner and replays it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use super::{describe_business_key, Overdraft, Store, Totals, BUSINESS_KEY_CONSTRAINTS};
use crate::domain::{
    BusinessKey, EntryId, EntryKind, GrantSource, Receipt, WriteCommand, WriteDetails,
};
use crate::error::LedgerError;

/// How many times a whole batch is retried after a retryable failure (a lost business-key race,
/// a deadlock or serialization failure reported by PostgreSQL). Nothing of a failed attempt
/// remains, so a retry is always safe.
const BATCH_RETRIES_MAX: usize = 2;

/// One write waiting to be applied.
#[derive(Debug, Clone)]
pub struct Pending {
    pub cmd: WriteCommand,
    pub overdraft: Overdraft,
}

/// The result of each write of a batch, in order.
pub type BatchResults = Vec<Result<Receipt, LedgerError>>;

/// What a committed batch did: each write's result, and the new state of every account it moved
/// (for the balance cache).
#[derive(Debug)]
pub struct BatchOutcome {
    pub results: BatchResults,
    pub balances: Vec<(String, super::Balance)>,
}

/// What the batch knows about an idempotency key.
enum KeyState {
    /// Committed before this batch: a replay if the request matches, else a conflict.
    Committed { hash: Vec<u8>, entry_id: i64 },
    /// Claimed by this batch, with the journal id it reserved.
    Claimed {
        entry_id: i64,
        stored_hash: [u8; crate::domain::FINGERPRINT_LEN],
        applied: Option<([u8; crate::domain::FINGERPRINT_LEN], Receipt)>,
    },
}

struct ExistingCredit {
    id: i64,
    user_id: String,
    token_amount: i64,
    balance_after: i64,
}

/// One account as the batch moves it.
struct AccountState {
    account_id: i64,
    balance: i64,
    last_seq: i64,
    delta: Totals,
    touched: bool,
    /// Created by this batch's lock (a first write); removed again if no write of the batch
    /// applied to it, so a refused deduction leaves no empty account behind.
    created: bool,
}

/// A journal row to insert.
struct StagedRow {
    write: usize,
    entry_id: i64,
    account_id: i64,
    seq: i64,
    balance_after: i64,
}

fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.constraint()
                .is_some_and(|name| BUSINESS_KEY_CONSTRAINTS.contains(&name))
                || matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

impl Store {
    /// Applies `writes` in one transaction. The outer error means the whole batch failed and
    /// nothing of it was applied; otherwise each write has its own result.
    pub async fn apply_batch(&self, writes: &[Pending]) -> Result<BatchOutcome, LedgerError> {
        let mut attempt = 0;
        loop {
            match self.try_batch(writes).await {
                Ok(outcome) => return Ok(outcome),
                Err(err) if is_retryable(&err) && attempt < BATCH_RETRIES_MAX => {
                    attempt += 1;
                    tracing::debug!(error = %err, attempt, "batch lost a race; retrying it whole");
                }
                Err(err) if is_retryable(&err) => {
                    tracing::warn!(error = %err, "batch still racing after retries");
                    return Err(LedgerError::Unavailable(
                        "lost a race with a concurrent write; retry with the same idempotency key"
                            .into(),
                    ));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn try_batch(&self, writes: &[Pending]) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;

        // 1. Idempotency keys: claim the new ones, read the committed ones.
        let fingerprints: Vec<[u8; crate::domain::FINGERPRINT_LEN]> =
            writes.iter().map(|w| w.cmd.fingerprint()).collect();
        let mut first_hash: BTreeMap<&str, [u8; crate::domain::FINGERPRINT_LEN]> = BTreeMap::new();
        for (w, fp) in writes.iter().zip(&fingerprints) {
            first_hash
                .entry(w.cmd.idempotency_key.as_str())
                .or_insert(*fp);
        }
        let keys: Vec<&str> = first_hash.keys().copied().collect();
        let hashes: Vec<Vec<u8>> = first_hash.values().map(|h| h.to_vec()).collect();
        let claimed: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO idempotency_keys (idempotency_key, request_hash) \
             SELECT k, h FROM unnest($1::text[], $2::bytea[]) AS t(k, h) ORDER BY k \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, entry_id",
        )
        .bind(&keys)
        .bind(&hashes)
        .fetch_all(&mut *tx)
        .await?;
        let mut key_states: HashMap<String, KeyState> = HashMap::with_capacity(keys.len());
        for (key, entry_id) in claimed {
            let stored_hash = first_hash[key.as_str()];
            key_states.insert(
                key,
                KeyState::Claimed {
                    entry_id,
                    stored_hash,
                    applied: None,
                },
            );
        }
        let unclaimed: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !key_states.contains_key(*k))
            .collect();
        let mut replay_balance: HashMap<i64, i64> = HashMap::new();
        if !unclaimed.is_empty() {
            let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT idempotency_key, request_hash, entry_id FROM idempotency_keys \
                 WHERE idempotency_key = ANY($1)",
            )
            .bind(&unclaimed)
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.2).collect();
            replay_balance = balances_after(&mut tx, &ids).await?;
            for (key, hash, entry_id) in rows {
                key_states.insert(key, KeyState::Committed { hash, entry_id });
            }
        }

        // 3. Lock (creating where new) every account the batch may move, in user-id order.
        let mut users: Vec<&str> = writes
            .iter()
            .filter(|w| {
                matches!(
                    key_states.get(w.cmd.idempotency_key.as_str()),
                    Some(KeyState::Claimed { .. })
                )
            })
            .map(|w| w.cmd.user_id.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        let mut accounts: HashMap<String, AccountState> = HashMap::with_capacity(users.len());
        if !users.is_empty() {
            let rows = sqlx::query(
                "INSERT INTO accounts (user_id) SELECT u FROM unnest($1::text[]) AS u ORDER BY u \
                 ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id \
                 RETURNING account_id, user_id, balance, last_seq, (xmax = 0) AS created",
            )
            .bind(&users)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                accounts.insert(
                    row.try_get("user_id")?,
                    AccountState {
                        account_id: row.try_get("account_id")?,
                        balance: row.try_get("balance")?,
                        last_seq: row.try_get("last_seq")?,
                        delta: Totals::default(),
                        touched: false,
                        created: row.try_get("created")?,
                    },
                );
            }
        }

        // 3b. Business keys already credited by earlier transactions, read after the account locks so
        //     a concurrent credit of the same user's object has committed (or not) by now.
        let business_keys: Vec<BusinessKey> = writes
            .iter()
            .filter(|w| {
                matches!(
                    key_states.get(w.cmd.idempotency_key.as_str()),
                    Some(KeyState::Claimed { .. })
                )
            })
            .filter_map(|w| w.cmd.business_key())
            .collect();
        let credited: HashMap<BusinessKey, ExistingCredit> =
            find_business_keys(&mut tx, &business_keys).await?;

        // 4. What reversals reverse (read under the account locks just taken).
        let originals: Vec<i64> = writes
            .iter()
            .filter_map(|w| match &w.cmd.details {
                WriteDetails::Reversal { original, .. } => Some(original.0),
                _ => None,
            })
            .collect();
        let (mut reversible, original_info) = reversal_state(&mut tx, &originals).await?;

        // 5. Each write, in arrival order, against the running state.
        let mut results: BatchResults = Vec::with_capacity(writes.len());
        let mut rows: Vec<StagedRow> = Vec::new();
        let mut in_batch_credits: HashMap<BusinessKey, (i64, String, i64, i64)> = HashMap::new();
        for (i, (w, fp)) in writes.iter().zip(&fingerprints).enumerate() {
            let cmd = &w.cmd;
            let key = cmd.idempotency_key.as_str();
            let result = match key_states.get_mut(key) {
                None => Err(LedgerError::internal(anyhow::anyhow!(
                    "idempotency key {key:?} vanished from the batch"
                ))),
                Some(KeyState::Committed { hash, entry_id }) => {
                    if hash.as_slice() == fp.as_slice() {
                        match replay_balance.get(entry_id) {
                            Some(balance) => Ok(Receipt {
                                transaction_id: EntryId(*entry_id),
                                balance: *balance,
                                replayed: true,
                            }),
                            None => Err(LedgerError::internal(anyhow::anyhow!(
                                "idempotency key points at journal row {entry_id}, which does not exist"
                            ))),
                        }
                    } else {
                        Err(LedgerError::IdempotencyConflict {
                            key: key.to_string(),
                        })
                    }
                }
                Some(KeyState::Claimed {
                    applied: Some((hash, receipt)),
                    ..
                }) => {
                    if hash == fp {
                        Ok(Receipt {
                            replayed: true,
                            ..*receipt
                        })
                    } else {
                        Err(LedgerError::IdempotencyConflict {
                            key: key.to_string(),
                        })
                    }
                }
                Some(KeyState::Claimed {
                    entry_id, applied, ..
                }) => {
                    let entry_id = *entry_id;
                    let bk = cmd.business_key();
                    let prior = bk.as_ref().and_then(|bk| {
                        credited
                            .get(bk)
                            .map(|c| (c.id, c.user_id.clone(), c.token_amount, c.balance_after))
                            .or_else(|| in_batch_credits.get(bk).cloned())
                    });
                    if let (Some(bk), Some((id, user, amount, balance_after))) = (&bk, prior) {
                        // The business object was credited already: a replay of that credit if
                        // it is the same user and amount, else a conflict. The key stays unused.
                        if user == cmd.user_id.as_str() && amount == cmd.token_amount() {
                            Ok(Receipt {
                                transaction_id: EntryId(id),
                                balance: balance_after,
                                replayed: true,
                            })
                        } else {
                            Err(LedgerError::BusinessKeyConflict {
                                object: describe_business_key(bk),
                                transaction_id: id,
                            })
                        }
                    } else {
                        let Some(account) = accounts.get_mut(cmd.user_id.as_str()) else {
                            return Err(sqlx::Error::Protocol(format!(
                                "account of {} was not locked by its batch",
                                cmd.user_id
                            )));
                        };
                        match evaluate(cmd, w.overdraft, account, &original_info, &mut reversible) {
                            Err(err) => Err(err),
                            Ok(()) => {
                                let amount = cmd.token_amount();
                                account.balance += amount;
                                account.last_seq += 1;
                                account.touched = true;
                                add_total(&mut account.delta, cmd.kind(), cmd.tokens.get());
                                rows.push(StagedRow {
                                    write: i,
                                    entry_id,
                                    account_id: account.account_id,
                                    seq: account.last_seq,
                                    balance_after: account.balance,
                                });
                                let receipt = Receipt {
                                    transaction_id: EntryId(entry_id),
                                    balance: account.balance,
                                    replayed: false,
                                };
                                if let Some(bk) = bk {
                                    in_batch_credits.insert(
                                        bk,
                                        (
                                            entry_id,
                                            cmd.user_id.as_str().to_string(),
                                            amount,
                                            account.balance,
                                        ),
                                    );
                                }
                                *applied = Some((*fp, receipt));
                                Ok(receipt)
                            }
                        }
                    }
                }
            };
            results.push(result);
        }

        // 6. Give back the keys of refused writes; fix the stored request of a key whose first
        //    write was refused and a later, different one applied.
        let mut unused: Vec<&str> = Vec::new();
        let mut rehash_keys: Vec<&str> = Vec::new();
        let mut rehash_values: Vec<Vec<u8>> = Vec::new();
        for (key, state) in &key_states {
            if let KeyState::Claimed {
                stored_hash,
                applied,
                ..
            } = state
            {
                match applied {
                    None => unused.push(key),
                    Some((hash, _)) if hash != stored_hash => {
                        rehash_keys.push(key);
                        rehash_values.push(hash.to_vec());
                    }
                    Some(_) => {}
                }
            }
        }
        if !unused.is_empty() {
            sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = ANY($1)")
                .bind(&unused)
                .execute(&mut *tx)
                .await?;
        }
        if !rehash_keys.is_empty() {
            sqlx::query(
                "UPDATE idempotency_keys k SET request_hash = v.h \
                 FROM unnest($1::text[], $2::bytea[]) AS v(k, h) WHERE k.idempotency_key = v.k",
            )
            .bind(&rehash_keys)
            .bind(&rehash_values)
            .execute(&mut *tx)
            .await?;
        }

        // 7. The journal rows, one insert per table.
        insert_rows(&mut tx, writes, &rows).await?;

        // 8. Each touched account moves once; accounts this batch created for nothing go.
        let untouched_new: Vec<i64> = accounts
            .values()
            .filter(|a| a.created && !a.touched)
            .map(|a| a.account_id)
            .collect();
        if !untouched_new.is_empty() {
            sqlx::query("DELETE FROM accounts WHERE account_id = ANY($1)")
                .bind(&untouched_new)
                .execute(&mut *tx)
                .await?;
        }
        let touched: Vec<&AccountState> = accounts.values().filter(|a| a.touched).collect();
        let mut balances = Vec::with_capacity(touched.len());
        if !touched.is_empty() {
            let col =
                |f: fn(&AccountState) -> i64| touched.iter().map(|a| f(a)).collect::<Vec<i64>>();
            let rows = sqlx::query(
                "UPDATE accounts a SET balance = v.balance, last_seq = v.last_seq, \
                   granted_total = a.granted_total + v.granted, deducted_total = a.deducted_total + v.deducted, \
                   purchased_total = a.purchased_total + v.purchased, dripped_total = a.dripped_total + v.dripped, \
                   used_total = a.used_total + v.used, reversed_total = a.reversed_total + v.reversed, \
                   updated_at = now() \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], \
                             $7::bigint[], $8::bigint[], $9::bigint[]) \
                   AS v(account_id, balance, last_seq, granted, deducted, purchased, dripped, used, reversed) \
                 WHERE a.account_id = v.account_id AND a.account_id = ANY($1) \
                 RETURNING a.user_id, a.balance, a.granted_total, a.deducted_total, a.purchased_total, \
                   a.dripped_total, a.used_total, a.reversed_total, a.updated_at, a.last_seq",
            )
            .bind(col(|a| a.account_id))
            .bind(col(|a| a.balance))
            .bind(col(|a| a.last_seq))
            .bind(col(|a| a.delta.granted))
            .bind(col(|a| a.delta.deducted))
            .bind(col(|a| a.delta.purchased))
            .bind(col(|a| a.delta.dripped))
            .bind(col(|a| a.delta.used))
            .bind(col(|a| a.delta.reversed))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let balance = super::balance_from_row(&row)
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                balances.push((row.try_get("user_id")?, balance));
            }
        }

        tx.commit().await?;
        Ok(BatchOutcome { results, balances })
    }
}

fn add_total(t: &mut Totals, kind: EntryKind, tokens: i64) {
    match kind {
        EntryKind::Grant => t.granted += tokens,
        EntryKind::Deduction => t.deducted += tokens,
        EntryKind::Purchase => t.purchased += tokens,
        EntryKind::Drip => t.dripped += tokens,
        EntryKind::Usage => t.used += tokens,
        EntryKind::Reversal => t.reversed += tokens,
    }
}

/// The ledger's rules for one write against its account's running state.
fn evaluate(
    cmd: &WriteCommand,
    overdraft: Overdraft,
    account: &AccountState,
    originals: &HashMap<i64, (i64, String, i64)>,
    reversible: &mut HashMap<i64, i64>,
) -> Result<(), LedgerError> {
    let tokens = cmd.tokens.get();
    if !cmd.kind().is_credit() && overdraft == Overdraft::Refused && account.balance < tokens {
        return Err(LedgerError::InsufficientBalance {
            balance: account.balance,
            requested: tokens,
        });
    }
    if let WriteDetails::Reversal { original, .. } = &cmd.details {
        let Some((owner, kind, _)) = originals
            .get(&original.0)
            .filter(|(owner, _, _)| *owner == account.account_id)
        else {
            return Err(LedgerError::NotFound(format!(
                "transaction {original} is not a transaction of user {}",
                cmd.user_id
            )));
        };
        debug_assert_eq!(*owner, account.account_id);
        if !EntryKind::from_db(kind).is_some_and(EntryKind::is_credit) {
            return Err(LedgerError::NotReversible(original.0));
        }
        let left = reversible
            .get_mut(&original.0)
            .expect("every credit original has a reversible amount");
        if tokens > *left {
            return Err(LedgerError::ReversalExceedsOriginal {
                original: original.0,
                reversible: *left,
                requested: tokens,
            });
        }
        *left -= tokens;
    }
    Ok(())
}

/// `balance_after` of journal rows by id, whichever table holds them.
async fn balances_after(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT id, balance_after FROM token_transactions WHERE id = ANY($1) \
         UNION ALL SELECT id, balance_after FROM token_drips WHERE id = ANY($1) \
         UNION ALL SELECT id, balance_after FROM token_usage WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Credits already committed for these business keys.
async fn find_business_keys(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[BusinessKey],
) -> Result<HashMap<BusinessKey, ExistingCredit>, sqlx::Error> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut intents = Vec::new();
    let mut invoices = Vec::new();
    let mut subs = Vec::new();
    let mut starts: Vec<DateTime<Utc>> = Vec::new();
    for k in keys {
        match k {
            BusinessKey::PaymentIntent(pi) => intents.push(pi.as_str()),
            BusinessKey::AnnualInvoice(inv) => invoices.push(inv.as_str()),
            BusinessKey::SubscriptionPeriod {
                stripe_subscription_id,
                period_start,
            } => {
                subs.push(stripe_subscription_id.as_str());
                starts.push(*period_start);
            }
        }
    }
    let existing = |row: &sqlx::postgres::PgRow| -> Result<ExistingCredit, sqlx::Error> {
        Ok(ExistingCredit {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            token_amount: row.try_get("token_amount")?,
            balance_after: row.try_get("balance_after")?,
        })
    };
    if !intents.is_empty() {
        for row in sqlx::query(
            "SELECT t.stripe_payment_intent_id AS k, t.id, a.user_id, t.token_amount, t.balance_after \
             FROM token_transactions t JOIN accounts a USING (account_id) \
             WHERE t.transaction_type = 'purchase' AND t.stripe_payment_intent_id = ANY($1)",
        )
        .bind(&intents)
        .fetch_all(&mut **tx)
        .await?
        {
            found.insert(BusinessKey::PaymentIntent(row.try_get("k")?), existing(&row)?);
        }
    }
    if !invoices.is_empty() {
        for row in sqlx::query(
            "SELECT t.stripe_invoice_id AS k, t.id, a.user_id, t.token_amount, t.balance_after \
             FROM token_transactions t JOIN accounts a USING (account_id) \
             WHERE t.source = 'annual_subscription' AND t.stripe_invoice_id = ANY($1)",
        )
        .bind(&invoices)
        .fetch_all(&mut **tx)
        .await?
        {
            found.insert(
                BusinessKey::AnnualInvoice(row.try_get("k")?),
                existing(&row)?,
            );
        }
    }
    if !subs.is_empty() {
        for row in sqlx::query(
            "SELECT d.stripe_subscription_id AS k, d.period_start, d.id, a.user_id, d.token_amount, d.balance_after \
             FROM token_drips d JOIN accounts a USING (account_id) \
             JOIN unnest($1::text[], $2::timestamptz[]) AS p(sub, start) \
               ON d.stripe_subscription_id = p.sub AND d.period_start = p.start",
        )
        .bind(&subs)
        .bind(&starts)
        .fetch_all(&mut **tx)
        .await?
        {
            found.insert(
                BusinessKey::SubscriptionPeriod {
                    stripe_subscription_id: row.try_get("k")?,
                    period_start: row.try_get("period_start")?,
                },
                existing(&row)?,
            );
        }
    }
    Ok(found)
}

/// For reversed originals: (owner account, kind, amount) and how much may still be reversed.
#[allow(clippy::type_complexity)]
async fn reversal_state(
    tx: &mut Transaction<'_, Postgres>,
    originals: &[i64],
) -> Result<(HashMap<i64, i64>, HashMap<i64, (i64, String, i64)>), sqlx::Error> {
    if originals.is_empty() {
        return Ok((HashMap::new(), HashMap::new()));
    }
    let info: Vec<(i64, i64, String, i64)> = sqlx::query_as(
        "SELECT id, account_id, transaction_type, token_amount FROM token_transactions WHERE id = ANY($1) \
         UNION ALL SELECT id, account_id, 'drip', token_amount FROM token_drips WHERE id = ANY($1) \
         UNION ALL SELECT id, account_id, 'usage', token_amount FROM token_usage WHERE id = ANY($1)",
    )
    .bind(originals)
    .fetch_all(&mut **tx)
    .await?;
    let reversed: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT reverses_transaction_id, COALESCE(-sum(token_amount), 0)::bigint FROM token_transactions \
         WHERE reverses_transaction_id = ANY($1) GROUP BY reverses_transaction_id",
    )
    .bind(originals)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let mut reversible = HashMap::new();
    let mut by_id = HashMap::new();
    for (id, account_id, kind, amount) in info {
        reversible.insert(id, amount - reversed.get(&id).copied().unwrap_or(0));
        by_id.insert(id, (account_id, kind, amount));
    }
    Ok((reversible, by_id))
}

/// Inserts the batch's journal rows: one `unnest` insert per table, rows with business keys in
/// key order so concurrent batches wait on unique-index entries in one order.
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[Pending],
    rows: &[StagedRow],
) -> Result<(), sqlx::Error> {
    let mut usage: Vec<&StagedRow> = Vec::new();
    let mut drips: Vec<&StagedRow> = Vec::new();
    let mut transactions: Vec<&StagedRow> = Vec::new();
    for r in rows {
        match writes[r.write].cmd.kind() {
            EntryKind::Usage => usage.push(r),
            EntryKind::Drip => drips.push(r),
            _ => transactions.push(r),
        }
    }
    let cmd = |r: &StagedRow| &writes[r.write].cmd;
    let ids = |rs: &[&StagedRow]| rs.iter().map(|r| r.entry_id).collect::<Vec<_>>();
    let account_ids = |rs: &[&StagedRow]| rs.iter().map(|r| r.account_id).collect::<Vec<_>>();
    let seqs = |rs: &[&StagedRow]| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    let balances = |rs: &[&StagedRow]| rs.iter().map(|r| r.balance_after).collect::<Vec<_>>();
    let amounts = |rs: &[&StagedRow]| rs.iter().map(|r| cmd(r).token_amount()).collect::<Vec<_>>();
    let actors = |rs: &[&StagedRow]| {
        rs.iter()
            .map(|r| cmd(r).created_by.as_str().to_string())
            .collect::<Vec<_>>()
    };

    if !usage.is_empty() {
        let mut models = Vec::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut features = Vec::new();
        for r in &usage {
            if let WriteDetails::Usage {
                model,
                input_tokens,
                output_tokens,
                feature,
            } = &cmd(r).details
            {
                models.push(model.clone());
                inputs.push(*input_tokens);
                outputs.push(*output_tokens);
                features.push(feature.clone());
            }
        }
        sqlx::query(
            "INSERT INTO token_usage (id, account_id, entry_seq, token_amount, balance_after, model, \
             input_tokens, output_tokens, feature, created_by) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                                  $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::text[])",
        )
        .bind(ids(&usage))
        .bind(account_ids(&usage))
        .bind(seqs(&usage))
        .bind(amounts(&usage))
        .bind(balances(&usage))
        .bind(models)
        .bind(inputs)
        .bind(outputs)
        .bind(features)
        .bind(actors(&usage))
        .execute(&mut **tx)
        .await?;
    }

    if !drips.is_empty() {
        let period = |r: &StagedRow| match &cmd(r).details {
            WriteDetails::Drip {
                stripe_subscription_id,
                period_start,
                ..
            } => (stripe_subscription_id.clone(), *period_start),
            _ => unreachable!("only drips are in the drip rows"),
        };
        drips.sort_by_key(|r| period(r));
        let mut subs = Vec::new();
        let mut invoices = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for r in &drips {
            if let WriteDetails::Drip {
                stripe_subscription_id,
                stripe_invoice_id,
                period_start,
                period_end,
            } = &cmd(r).details
            {
                subs.push(stripe_subscription_id.clone());
                invoices.push(stripe_invoice_id.clone());
                starts.push(*period_start);
                ends.push(*period_end);
            }
        }
        sqlx::query(
            "INSERT INTO token_drips (id, account_id, entry_seq, token_amount, balance_after, \
             stripe_subscription_id, stripe_invoice_id, period_start, period_end, created_by) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                                  $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])",
        )
        .bind(ids(&drips))
        .bind(account_ids(&drips))
        .bind(seqs(&drips))
        .bind(amounts(&drips))
        .bind(balances(&drips))
        .bind(subs)
        .bind(invoices)
        .bind(starts)
        .bind(ends)
        .bind(actors(&drips))
        .execute(&mut **tx)
        .await?;
    }

    if !transactions.is_empty() {
        transactions.sort_by_key(|r| match &cmd(r).details {
            WriteDetails::Purchase {
                stripe_payment_intent_id,
                ..
            } => (0, stripe_payment_intent_id.clone()),
            WriteDetails::Grant {
                stripe_invoice_id: Some(inv),
                source: GrantSource::AnnualSubscription,
                ..
            } => (1, inv.clone()),
            _ => (2, String::new()),
        });
        let mut c = TransactionColumns::default();
        for r in &transactions {
            c.push(&cmd(r).details);
        }
        sqlx::query(
            "INSERT INTO token_transactions (id, account_id, entry_seq, token_amount, balance_after, created_by, \
             transaction_type, source, reason, amount_paid_cents, currency, stripe_payment_intent_id, \
             stripe_checkout_session_id, stripe_subscription_id, stripe_invoice_id, pack, \
             reverses_transaction_id, stripe_reference, allow_negative) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], \
                                  $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], \
                                  $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::text[], \
                                  $19::boolean[])",
        )
        .bind(ids(&transactions))
        .bind(account_ids(&transactions))
        .bind(seqs(&transactions))
        .bind(amounts(&transactions))
        .bind(balances(&transactions))
        .bind(actors(&transactions))
        .bind(c.transaction_type)
        .bind(c.source)
        .bind(c.reason)
        .bind(c.amount_paid_cents)
        .bind(c.currency)
        .bind(c.stripe_payment_intent_id)
        .bind(c.stripe_checkout_session_id)
        .bind(c.stripe_subscription_id)
        .bind(c.stripe_invoice_id)
        .bind(c.pack)
        .bind(c.reverses_transaction_id)
        .bind(c.stripe_reference)
        .bind(c.allow_negative)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The kind-specific columns of `token_transactions`, one array per column.
#[derive(Default)]
struct TransactionColumns {
    transaction_type: Vec<&'static str>,
    source: Vec<&'static str>,
    reason: Vec<Option<String>>,
    amount_paid_cents: Vec<Option<i64>>,
    currency: Vec<Option<String>>,
    stripe_payment_intent_id: Vec<Option<String>>,
    stripe_checkout_session_id: Vec<Option<String>>,
    stripe_subscription_id: Vec<Option<String>>,
    stripe_invoice_id: Vec<Option<String>>,
    pack: Vec<Option<String>>,
    reverses_transaction_id: Vec<Option<i64>>,
    stripe_reference: Vec<Option<String>>,
    allow_negative: Vec<bool>,
}

/// One `token_transactions` row's kind-specific columns.
struct TransactionRow {
    transaction_type: &'static str,
    source: &'static str,
    reason: Option<String>,
    amount_paid_cents: Option<i64>,
    currency: Option<String>,
    stripe_payment_intent_id: Option<String>,
    stripe_checkout_session_id: Option<String>,
    stripe_subscription_id: Option<String>,
    stripe_invoice_id: Option<String>,
    pack: Option<String>,
    reverses_transaction_id: Option<i64>,
    stripe_reference: Option<String>,
    allow_negative: bool,
}

impl TransactionRow {
    fn of(details: &WriteDetails) -> Self {
        let base = |transaction_type, source| TransactionRow {
            transaction_type,
            source,
            reason: None,
            amount_paid_cents: None,
            currency: None,
            stripe_payment_intent_id: None,
            stripe_checkout_session_id: None,
            stripe_subscription_id: None,
            stripe_invoice_id: None,
            pack: None,
            reverses_transaction_id: None,
            stripe_reference: None,
            allow_negative: false,
        };
        match details {
            WriteDetails::Grant {
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            } => TransactionRow {
                reason: reason.clone(),
                stripe_subscription_id: stripe_subscription_id.clone(),
                stripe_invoice_id: stripe_invoice_id.clone(),
                ..base("grant", source.as_str())
            },
            WriteDetails::Deduction {
                reason,
                allow_negative,
            } => TransactionRow {
                reason: Some(reason.clone()),
                allow_negative: *allow_negative,
                ..base("deduction", "admin")
            },
            WriteDetails::Purchase {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id,
                pack,
            } => TransactionRow {
                amount_paid_cents: Some(*amount_paid_cents),
                currency: Some(currency.clone()),
                stripe_payment_intent_id: Some(stripe_payment_intent_id.clone()),
                stripe_checkout_session_id: stripe_checkout_session_id.clone(),
                pack: pack.clone(),
                ..base("purchase", "token_pack")
            },
            WriteDetails::Reversal {
                original,
                source,
                reason,
                stripe_reference,
            } => TransactionRow {
                reason: Some(reason.clone()),
                reverses_transaction_id: Some(original.0),
                stripe_reference: stripe_reference.clone(),
                ..base("reversal", source.as_str())
            },
            WriteDetails::Drip { .. } | WriteDetails::Usage { .. } => {
                unreachable!("drips and usage have tables of their own")
            }
        }
    }
}

impl TransactionColumns {
    fn push(&mut self, details: &WriteDetails) {
        let row = TransactionRow::of(details);
        self.transaction_type.push(row.transaction_type);
        self.source.push(row.source);
        self.reason.push(row.reason);
        self.amount_paid_cents.push(row.amount_paid_cents);
        self.currency.push(row.currency);
        self.stripe_payment_intent_id
            .push(row.stripe_payment_intent_id);
        self.stripe_checkout_session_id
            .push(row.stripe_checkout_session_id);
        self.stripe_subscription_id.push(row.stripe_subscription_id);
        self.stripe_invoice_id.push(row.stripe_invoice_id);
        self.pack.push(row.pack);
        self.reverses_transaction_id
            .push(row.reverses_transaction_id);
        self.stripe_reference.push(row.stripe_reference);
        self.allow_negative.push(row.allow_negative);
    }
}
