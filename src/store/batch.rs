//! Group commit: many writes in one PostgreSQL transaction, each decided in arrival order exactly
//! as if it had been applied alone.
//!
//! A batch is three steps, each a handful of statements whatever the batch's size:
//! 1. **load** (`load`): claim every idempotency key at once, look up the committed ones, lock
//!    every account the batch may move with one insert (creating new ones, locking the rest
//!    without a new row version), read those accounts with their live lots, then the business
//!    keys already credited, the credits being reversed, (for accounts that have any, and those
//!    the writes name) their holds, and the prices of the models it must price;
//! 2. **evaluate** (`ledger::rules::evaluate`, pure): decide every write against the running
//!    state, staging rows and account moves;
//! 3. **persist** (`persist`): give back the keys of refused writes, insert the journal rows with
//!    one `unnest` insert per table, move each account once; the usage rows, lot burns and
//!    account moves as one statement ([`Joined`]).
//!
//! Locks are always taken in one global order: idempotency keys sorted, then new users' directory
//! entries and accounts sorted by user id, then business keys (migration 0014) sorted, so two
//! batches can never wait on each other in a cycle. A batch whose transaction fails is rolled back whole; a lost race on a business key
//! (a concurrent batch committed the same payment intent first) or a serialization failure is
//! retried, which then sees the winner and replays it.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, Postgres, Row as _, Transaction};

use super::error::is_unavailable;
use super::joined::{Joined, Part};
use super::prices::PriceCache;
use super::{credit, Store};
use crate::domain::{
    Balance, BusinessKey, EntryId, EntryKind, Pricing, Threshold, Totals, WriteCommand,
    WriteDetails,
};
use crate::error::LedgerError;
use crate::ledger::rules::{
    self, AccountMove, AlertState, BatchState, Fingerprint, Hold, KeyState, LockedAccount, Lot,
    Original, Outcome, PriceBook, PriorCredit, Staged, StagedAlert, StagedRow,
};

/// How many times a whole batch is retried after a retryable failure (a lost business-key race,
/// a deadlock or serialization failure reported by PostgreSQL). Nothing of a failed attempt
/// remains, so a retry is always safe.
const BATCH_RETRIES_MAX: usize = 2;

/// The unique key (migration 0014's `business_keys`) that makes a business object credited once: a batch that trips one lost a
/// race with a concurrent batch crediting the same object, and is retried.
const BUSINESS_KEY_CONSTRAINTS: [&str; 1] = ["business_keys_pkey"];

/// What a committed batch did: each write's result, in order, and the new state of every account
/// it moved (for the balance cache).
#[derive(Debug)]
pub struct BatchOutcome {
    pub results: Vec<Outcome>,
    pub balances: Vec<(String, Balance)>,
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
    pub async fn apply_batch(&self, writes: &[WriteCommand]) -> Result<BatchOutcome, LedgerError> {
        let mut attempt = 0;
        loop {
            match self.try_batch(writes).await.map_err(|e| self.saw(e)) {
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
                Err(err) if is_unavailable(&err) => {
                    return Err(LedgerError::Unavailable(err.to_string()))
                }
                Err(err) => return Err(LedgerError::Internal(err.into())),
            }
        }
    }

    /// load → evaluate → persist, in one transaction.
    async fn try_batch(&self, writes: &[WriteCommand]) -> Result<BatchOutcome, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        let (mut state, now, announced) =
            load(&mut tx, writes, self.clock().offset_micros(), &self.prices).await?;
        state.holds_per_account_max = self.holds_per_account_max();
        state.expiring_window = self.alert_expiring_window();
        let (results, staged) = rules::evaluate(state, writes, now);
        persist(&mut tx, writes, &staged, &announced).await?;
        tx.commit().await?;
        let expired_tokens: i64 = staged.expiries.iter().map(|e| e.expiry.tokens).sum();
        let holds_lapsed = staged
            .holds
            .iter()
            .filter(|h| h.state == crate::domain::HoldState::Expired)
            .filter(|h| h.committed_transaction_id.is_none())
            .count();
        crate::metrics::expired(expired_tokens, holds_lapsed);
        if !staged.alerts.is_empty() {
            crate::metrics::alerts_written(staged.alerts.len());
        }
        let balances = staged
            .moved
            .into_iter()
            .map(|m| (m.user_id, m.balance))
            .collect();
        Ok(BatchOutcome { results, balances })
    }
}

/// Step 1: everything the rules need, read under the batch's locks, the transaction's time, and
/// the accounts whose moves must be announced (see [`Locked`]).
async fn load(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteCommand],
    clock_offset_micros: i64,
    price_cache: &PriceCache,
) -> Result<(BatchState, DateTime<Utc>, HashSet<i64>), sqlx::Error> {
    let fingerprints: Vec<Fingerprint> = writes.iter().map(WriteCommand::fingerprint).collect();
    let keys = load_keys(tx, writes, &fingerprints).await?;
    let claimed = |w: &&WriteCommand| {
        matches!(
            keys.get(w.idempotency_key.as_str()),
            Some(KeyState::Claimed { .. })
        )
    };
    let mut users: Vec<&str> = writes
        .iter()
        .filter(claimed)
        .map(|w| w.user_id.as_str())
        .collect();
    users.sort_unstable();
    users.dedup();
    let count_prices = writes.iter().any(may_price);
    let Locked {
        accounts,
        debts,
        holders,
        lots,
        now,
        announced,
        price_count,
    } = lock_and_read(tx, &users, clock_offset_micros, count_prices).await?;
    // Read after the account locks, so a concurrent credit of the same user's object has
    // committed (or not) by now.
    let business_keys: Vec<BusinessKey> = writes
        .iter()
        .filter(claimed)
        .filter_map(WriteCommand::business_key)
        .collect();
    let credited = find_business_keys(tx, &business_keys).await?;
    // Each original by (account, id): a reversal names its user, whose account is locked now
    // (the rules refuse an original of another account as not found, so none is looked for).
    let originals: Vec<(i64, i64)> = writes
        .iter()
        .filter_map(|w| match &w.details {
            WriteDetails::Reversal { original, .. } => accounts
                .get(w.user_id.as_str())
                .map(|a| (a.account_id, original.0)),
            _ => None,
        })
        .collect();
    let originals = load_originals(tx, &originals).await?;
    // The holds the batch's hold writes name; a replayed Reserve names its hold by its key.
    let named: Vec<i64> = writes
        .iter()
        .filter_map(
            |w| match (&w.details, keys.get(w.idempotency_key.as_str())) {
                (WriteDetails::Reserve { .. }, Some(KeyState::Committed { entry_id, .. })) => {
                    Some(entry_id.0)
                }
                (details, _) => details.hold_id().map(|h| h.0),
            },
        )
        .collect();
    // Only accounts with an active hold have any to load: the account row counts them exactly
    // (a batch that changes a hold moves its account), and the batch holds the row's lock. Most
    // batches (usage, credits) name no hold and touch no account with one, and skip the query.
    let holds = credit::load_holds(tx, &holders, &named).await?;
    let now =
        now.unwrap_or_else(|| Utc::now() + chrono::Duration::microseconds(clock_offset_micros));
    let prices = load_prices(tx, writes, &holds, now, price_cache, price_count).await?;
    let state = BatchState {
        keys,
        accounts,
        credited,
        originals,
        fingerprints,
        lots,
        holds,
        debts,
        holds_per_account_max: crate::domain::HOLDS_PER_ACCOUNT_DEFAULT,
        prices,
        expiring_window: None,
    };
    Ok((state, now, announced))
}

/// Whether `w` may need a price: a hold that names a model, or usage (or a hold's commit) the
/// ledger prices. The batch's read under its locks then counts the price table's rows.
fn may_price(w: &WriteCommand) -> bool {
    match &w.details {
        WriteDetails::Reserve { model, .. } => model.is_some(),
        WriteDetails::Usage { call } | WriteDetails::CommitHold { call, .. } => {
            call.pricing == Pricing::Ledger
        }
        _ => false,
    }
}

/// The prices the batch may need: for every model a write asks the ledger to price or a new
/// hold names (and the model of every hold a commit names), its version in force at `now`; and
/// every version a loaded hold pinned. They come from the process's [`PriceCache`] when the
/// table still holds as many rows as the cache; else from one read of the table, which
/// refreshes the cache. The count is `counted`, read by the statement that read the accounts
/// after their locks (see [`may_price`]), else counted here: either way after the locks, so a
/// version committed before a batch that wrote to the same account committed is counted (a
/// count read in the lock statement itself would come from a snapshot taken before its lock
/// waits, and could miss it). Most batches (caller-priced usage, credits) name no model to price
/// and need neither.
async fn load_prices(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteCommand],
    holds: &[Hold],
    now: DateTime<Utc>,
    cache: &PriceCache,
    counted: Option<i64>,
) -> Result<PriceBook, sqlx::Error> {
    let mut models: Vec<&str> = Vec::new();
    let mut pricing_commits = false;
    for w in writes {
        match &w.details {
            WriteDetails::Reserve {
                model: Some(model), ..
            } => models.push(model),
            WriteDetails::Usage { call } | WriteDetails::CommitHold { call, .. }
                if call.pricing == Pricing::Ledger =>
            {
                pricing_commits |= matches!(w.details, WriteDetails::CommitHold { .. });
                models.extend(call.model.as_deref());
            }
            _ => {}
        }
    }
    if pricing_commits {
        models.extend(holds.iter().filter_map(|h| h.model.as_deref()));
    }
    let pinned: Vec<i64> = holds.iter().filter_map(|h| h.price_id).collect();
    let mut book = PriceBook::default();
    if models.is_empty() && pinned.is_empty() {
        return Ok(book);
    }
    let counted: i64 = match counted {
        Some(counted) => counted,
        None => {
            sqlx::query_scalar("SELECT count(*) FROM model_prices")
                .fetch_one(&mut **tx)
                .await?
        }
    };
    let versions = match cache.if_current(counted) {
        Some(versions) => versions,
        None => cache.reload(tx).await?,
    };
    for model in models {
        if let Some(price) = versions.in_force(model, now) {
            book.current.insert(model.to_string(), price.clone());
        }
    }
    for id in pinned {
        if let Some(price) = versions.by_id(id) {
            book.pinned.insert(id, price.clone());
        }
    }
    Ok(book)
}

/// Claims the batch's new idempotency keys (in key order) and reads the committed ones with the
/// `balance_after` of the row each points at.
async fn load_keys(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteCommand],
    fingerprints: &[Fingerprint],
) -> Result<HashMap<String, KeyState>, sqlx::Error> {
    // The fingerprint stored with a key is that of the batch's first write under it.
    let mut first: BTreeMap<&str, Fingerprint> = BTreeMap::new();
    let mut states = HashMap::with_capacity(writes.len());
    for (w, fingerprint) in writes.iter().zip(fingerprints) {
        if w.idempotency_key.is_transient() {
            // Claimed by this batch alone, never stored.
            let state = KeyState::Claimed {
                entry_id: EntryId(0),
                stored: *fingerprint,
            };
            states.insert(w.idempotency_key.as_str().to_string(), state);
            continue;
        }
        first
            .entry(w.idempotency_key.as_str())
            .or_insert(*fingerprint);
    }
    let keys: Vec<&str> = first.keys().copied().collect();
    let hashes: Vec<Vec<u8>> = first.values().map(|h| h.to_vec()).collect();
    // Keys are stored as their hash (`ledger_key_hash`, migration 0007), claimed in hash order.
    let claimed: Vec<(String, i64)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT k, ledger_key_hash(k) AS kh, ledger_bytes_uuid(h) AS rh \
             FROM unnest($1::text[], $2::bytea[]) AS t(k, h)), \
         claimed AS ( \
           INSERT INTO idempotency_keys (key_hash, request_hash) \
           SELECT kh, rh FROM input ORDER BY kh \
           ON CONFLICT (key_hash) DO NOTHING RETURNING key_hash, entry_id) \
         SELECT input.k, claimed.entry_id FROM claimed JOIN input ON input.kh = claimed.key_hash",
    )
    .bind(&keys)
    .bind(&hashes)
    .fetch_all(&mut **tx)
    .await?;
    for (key, entry_id) in claimed {
        let stored = first[key.as_str()];
        let entry_id = EntryId(entry_id);
        states.insert(key, KeyState::Claimed { entry_id, stored });
    }
    let unclaimed: Vec<&str> = keys
        .into_iter()
        .filter(|k| !states.contains_key(*k))
        .collect();
    if unclaimed.is_empty() {
        return Ok(states);
    }
    // Key, stored fingerprint, journal id, and the row's balance after, amount and price.
    type CommittedKey = (String, Vec<u8>, i64, Option<i64>, Option<i64>, Option<i64>);
    let rows: Vec<CommittedKey> = sqlx::query_as(
        "SELECT t.k, ledger_uuid_bytes(i.request_hash), i.entry_id, j.balance_after, \
                j.token_amount, j.price_id \
         FROM unnest($1::text[]) AS t(k) \
         JOIN idempotency_keys i ON i.key_hash = ledger_key_hash(t.k) \
         LEFT JOIN journal j ON j.id = i.entry_id",
    )
    .bind(&unclaimed)
    .fetch_all(&mut **tx)
    .await?;
    for (key, fingerprint, entry_id, balance_after, token_amount, price_id) in rows {
        let state = KeyState::Committed {
            fingerprint,
            entry_id: EntryId(entry_id),
            balance_after,
            token_amount,
            price_id,
        };
        states.insert(key, state);
    }
    Ok(states)
}

/// What a batch reads under its account locks: the accounts (by user), the debts of those that
/// owe, the accounts with active holds, their live lots, the batch's clock, the accounts whose
/// moves are announced to watchers (those some process watches, `watched_until`, migration 0013,
/// read under the row lock the batch keeps until it commits, so a lease taken meanwhile waits
/// for the batch, and those the batch creates: a watcher of a new user could not lease a row that
/// did not exist yet), and the price table's row count when the batch may price (see
/// [`load_prices`]).
#[derive(Default)]
struct Locked {
    accounts: HashMap<String, LockedAccount>,
    debts: HashMap<i64, i64>,
    holders: Vec<i64>,
    lots: HashMap<i64, Vec<Lot>>,
    now: Option<DateTime<Utc>>,
    announced: HashSet<i64>,
    price_count: Option<i64>,
}

/// The common table expressions that give the users of a CTE `input(u)` their account ids, as
/// `ids(user_id, account_id, created)`: from the directory (migration 0014), or from directory
/// entries created here with ids drawn here, in user-id order. A new user is one whose entry
/// carries the id this statement drew: a user created concurrently by another transaction (after
/// this statement's snapshot) conflicts and is found with that transaction's id, so "created"
/// never depends on a system column (`xmax`, which a partitioned or distributed table cannot
/// return). The directory is written only for new users.
pub(super) const ACCOUNT_IDS_SQL: &str = "\
    known AS ( \
      SELECT d.user_id, d.account_id FROM account_directory d JOIN input ON d.user_id = input.u), \
    draw AS ( \
      SELECT u, nextval('account_id_seq') AS id FROM input \
       WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.user_id = input.u)), \
    fresh AS ( \
      INSERT INTO account_directory AS d (user_id, account_id) \
      SELECT u, id FROM draw ORDER BY u \
      ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id \
      RETURNING d.user_id, d.account_id), \
    ids AS ( \
      SELECT user_id, account_id, false AS created FROM known \
      UNION ALL \
      SELECT f.user_id, f.account_id, f.account_id = draw.id FROM fresh f \
        JOIN draw ON draw.u = f.user_id),";

/// Locks every account the batch may move (creating those that are new) in user-id order, one
/// statement: the users' account ids (`ACCOUNT_IDS_SQL`), then an insert whose conflict action
/// locks the existing row without writing a version of it (`DO UPDATE … WHERE false` locks every
/// conflicting row and updates none), so the batch's one update of an account is
/// `move_accounts`'. Answers the account ids and which were created here.
async fn lock_accounts(
    tx: &mut Transaction<'_, Postgres>,
    users: &[&str],
) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH input AS (SELECT u FROM unnest($1::text[]) AS u), {ACCOUNT_IDS_SQL} \
         locked AS ( \
           INSERT INTO accounts AS a (account_id, user_id) \
           SELECT account_id, user_id FROM ids ORDER BY user_id \
           ON CONFLICT (account_id) DO UPDATE SET user_id = EXCLUDED.user_id WHERE false) \
         SELECT account_id, created FROM ids",
    ))
    .bind(users)
    .fetch_all(&mut **tx)
    .await
}

/// Locks the batch's accounts ([`lock_accounts`]), then reads them in a statement of its own,
/// whose snapshot is taken after every lock was granted, so it sees every write of a batch that
/// held one of them: each account's balance, totals and alert rule (its own, else the default),
/// its live lots (one row per lot, the account's columns repeated), the time (`clock_timestamp()`,
/// the batch's clock: every account of the batch was locked by then), and with `count_prices` the
/// price table's row count. Also the transaction's time, the batch's clock.
async fn lock_and_read(
    tx: &mut Transaction<'_, Postgres>,
    users: &[&str],
    clock_offset_micros: i64,
    count_prices: bool,
) -> Result<Locked, sqlx::Error> {
    let mut locked = Locked::default();
    if users.is_empty() {
        return Ok(locked);
    }
    let ids = lock_accounts(tx, users).await?;
    let created: HashSet<i64> = ids.iter().filter(|(_, c)| *c).map(|(a, _)| *a).collect();
    let account_ids: Vec<i64> = ids.iter().map(|(a, _)| *a).collect();
    let price_count = if count_prices {
        "(SELECT count(*) FROM model_prices)"
    } else {
        "NULL::bigint"
    };
    let rows = sqlx::query(&format!(
        "SELECT a.account_id, a.user_id, a.balance, a.granted_total, a.deducted_total, \
           a.purchased_total, a.dripped_total, a.used_total, a.reversed_total, a.expired_total, \
           a.debt, a.active_holds, a.last_seq, a.last_credit, a.alert_low, a.alert_depleted, \
           (a.watched_until > now()) IS TRUE AS watched, {clock} AS now, \
           rule.tokens AS alert_tokens, rule.percent AS alert_percent, \
           {price_count} AS price_count, {LOT_COLUMNS} \
         FROM accounts a LEFT JOIN LATERAL ( \
             SELECT tokens, percent FROM balance_alerts b \
              WHERE b.account_id = a.account_id OR b.account_id IS NULL \
              ORDER BY b.account_id NULLS LAST LIMIT 1) rule ON true \
           LEFT JOIN token_lots l ON l.account_id = a.account_id AND l.remaining > 0 \
         WHERE a.account_id = ANY($1)",
        clock = credit::clock_sql(2),
        LOT_COLUMNS = credit::JOINED_LOT_COLUMNS,
    ))
    .bind(&account_ids)
    .bind(clock_offset_micros)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        // The latest row's time: every account of the batch was locked by then.
        let at: DateTime<Utc> = row.try_get("now")?;
        locked.now = locked.now.max(Some(at));
        locked.price_count = row.try_get("price_count")?;
        let account_id: i64 = row.try_get("account_id")?;
        if let Some(lot) = credit::joined_lot(&row)? {
            locked.lots.entry(account_id).or_default().push(lot);
        }
        let user_id: String = row.try_get("user_id")?;
        if locked.accounts.contains_key(&user_id) {
            continue; // the account's columns again, with its next lot
        }
        let debt: i64 = row.try_get("debt")?;
        if debt != 0 {
            locked.debts.insert(account_id, debt);
        }
        let created = created.contains(&account_id);
        if created || row.try_get::<bool, _>("watched")? {
            locked.announced.insert(account_id);
        }
        let active_holds: i32 = row.try_get("active_holds")?;
        if active_holds != 0 {
            locked.holders.push(account_id);
        }
        let account = LockedAccount {
            account_id,
            balance: row.try_get("balance")?,
            totals: Totals {
                granted: row.try_get("granted_total")?,
                deducted: row.try_get("deducted_total")?,
                purchased: row.try_get("purchased_total")?,
                dripped: row.try_get("dripped_total")?,
                used: row.try_get("used_total")?,
                reversed: row.try_get("reversed_total")?,
                expired: row.try_get("expired_total")?,
            },
            last_seq: row.try_get("last_seq")?,
            created,
            alerts: alert_state(&row, created)?,
        };
        locked.accounts.insert(user_id, account);
    }
    Ok(locked)
}

/// An account's alert rule and state from its locked row. A new account starts depleted (it has
/// nothing): its first write alerts only if it crosses its threshold.
fn alert_state(row: &sqlx::postgres::PgRow, created: bool) -> Result<AlertState, sqlx::Error> {
    let rule = match (
        row.try_get::<Option<i64>, _>("alert_tokens")?,
        row.try_get::<Option<i32>, _>("alert_percent")?,
    ) {
        (Some(t), _) => Some(Threshold::Tokens(t)),
        (None, Some(p)) => Some(Threshold::Percent(p)),
        (None, None) => None,
    };
    Ok(AlertState {
        rule,
        last_credit: row.try_get("last_credit")?,
        low: row.try_get("alert_low")?,
        depleted: created || row.try_get::<bool, _>("alert_depleted")?,
    })
}

/// The rows reversals name, by (account, id) (read under the account locks just taken), with
/// what committed reversals have taken back from each.
async fn load_originals(
    tx: &mut Transaction<'_, Postgres>,
    originals: &[(i64, i64)],
) -> Result<HashMap<EntryId, Original>, sqlx::Error> {
    if originals.is_empty() {
        return Ok(HashMap::new());
    }
    let (accounts, ids): (Vec<i64>, Vec<i64>) = originals.iter().copied().unzip();
    let rows: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT j.id, j.account_id, j.kind, j.token_amount, \
           (SELECT COALESCE(-sum(r.token_amount), 0)::bigint FROM token_transactions r \
             WHERE r.account_id = j.account_id AND r.reverses_transaction_id = j.id) \
         FROM unnest($1::bigint[], $2::bigint[]) AS o(account_id, id) \
         JOIN journal j ON j.account_id = o.account_id AND j.id = o.id",
    )
    .bind(accounts)
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut originals = HashMap::with_capacity(rows.len());
    for (id, account_id, kind, token_amount, reversed) in rows {
        let Some(kind) = EntryKind::from_db(&kind) else {
            return Err(sqlx::Error::Decode(
                format!("journal row {id} has the unknown kind {kind:?}").into(),
            ));
        };
        let original = Original {
            account_id,
            kind,
            token_amount,
            reversed,
        };
        originals.insert(EntryId(id), original);
    }
    Ok(originals)
}

/// Step 3: what the rules staged.
async fn persist(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteCommand],
    staged: &Staged,
    announced: &HashSet<i64>,
) -> Result<(), sqlx::Error> {
    if !staged.released_keys.is_empty() {
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE key_hash IN (SELECT ledger_key_hash(k) FROM unnest($1::text[]) AS t(k))",
        )
        .bind(&staged.released_keys)
        .execute(&mut **tx)
        .await?;
    }
    if !staged.rehashed_keys.is_empty() {
        let (keys, hashes): (Vec<&str>, Vec<Vec<u8>>) = staged
            .rehashed_keys
            .iter()
            .map(|(k, h)| (k.as_str(), h.to_vec()))
            .unzip();
        sqlx::query(
            "UPDATE idempotency_keys i SET request_hash = ledger_bytes_uuid(v.h) \
             FROM unnest($1::text[], $2::bytea[]) AS v(k, h) WHERE i.key_hash = ledger_key_hash(v.k)",
        )
        .bind(&keys)
        .bind(&hashes)
        .execute(&mut **tx)
        .await?;
    }
    let usage = insert_rows(tx, writes, &staged.rows, staged.now).await?;
    let ids = credit::draw_ids(tx, staged.placeholders).await?;
    let burns = credit::persist(tx, staged, &ids).await?;
    if !staged.abandoned_accounts.is_empty() {
        // With their directory entries: the account never existed.
        sqlx::query(
            "WITH gone AS (DELETE FROM accounts WHERE account_id = ANY($1) RETURNING user_id) \
             DELETE FROM account_directory WHERE user_id IN (SELECT user_id FROM gone) \
               AND account_id = ANY($1)",
        )
        .bind(&staged.abandoned_accounts)
        .execute(&mut **tx)
        .await?;
    }
    // The batch's last writes, one statement: usage rows and rollups, lot burns, account moves.
    let mut last = Joined::default();
    last.push(usage);
    last.push(burns);
    move_accounts(&mut last, &staged.moved, announced);
    last.execute(tx).await?;
    insert_alerts(tx, &staged.alerts).await
}

/// Each moved account once, to the balance and totals the rules computed, as a part of the
/// batch's last statement; and in it (no extra round trip) one `NOTIFY ledger_balance` naming
/// the `announced` ones, which PostgreSQL delivers to every listening ledger process when, and
/// only if, this commits. A batch that moved no announced account sends none: NOTIFY serializes
/// committing transactions database-wide (migration 0013).
fn move_accounts<'a>(last: &mut Joined<'a>, moved: &[AccountMove], announced: &HashSet<i64>) {
    if moved.is_empty() {
        return;
    }
    let col = |f: fn(&AccountMove) -> i64| moved.iter().map(f).collect::<Vec<i64>>();
    let updated_at: Vec<Option<DateTime<Utc>>> =
        moved.iter().map(|m| m.balance.updated_at).collect();
    let wallet = |f: fn(&AccountMove) -> Option<DateTime<Utc>>| {
        moved.iter().map(f).collect::<Vec<Option<DateTime<Utc>>>>()
    };
    let ids = col(|m| m.account_id);
    let balances = col(|m| m.balance.balance);
    let seqs = col(|m| m.balance.transaction_count);
    let granted = col(|m| m.balance.totals.granted);
    let deducted = col(|m| m.balance.totals.deducted);
    let purchased = col(|m| m.balance.totals.purchased);
    let dripped = col(|m| m.balance.totals.dripped);
    let used = col(|m| m.balance.totals.used);
    let reversed = col(|m| m.balance.totals.reversed);
    let expired = col(|m| m.balance.totals.expired);
    let held = col(|m| m.wallet.held);
    let debt = col(|m| m.wallet.debt);
    let active_holds = col(|m| m.wallet.active_holds);
    let settle_at = wallet(|m| m.wallet.settle_at);
    let next_expiry_at = wallet(|m| m.wallet.next_expiry.map(|(at, _)| at));
    let next_expiry_tokens = col(|m| m.wallet.next_expiry.map_or(0, |(_, t)| t));
    let last_credit = col(|m| m.alerts.last_credit);
    let low: Vec<bool> = moved.iter().map(|m| m.alerts.low).collect();
    let depleted: Vec<bool> = moved.iter().map(|m| m.alerts.depleted).collect();
    let update = "UPDATE accounts a SET balance = v.balance, last_seq = v.last_seq, \
           granted_total = v.granted, deducted_total = v.deducted, purchased_total = v.purchased, \
           dripped_total = v.dripped, used_total = v.used, reversed_total = v.reversed, \
           updated_at = v.updated_at, expired_total = v.expired, held = v.held, debt = v.debt, \
           active_holds = v.active_holds, settle_at = v.settle_at, \
           next_expiry_at = v.next_expiry_at, next_expiry_tokens = v.next_expiry_tokens, \
           last_credit = v.last_credit, alert_low = v.alert_low, alert_depleted = v.alert_depleted \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::timestamptz[], $11::bigint[], \
                     $12::bigint[], $13::bigint[], $14::bigint[], $15::timestamptz[], \
                     $16::timestamptz[], $17::bigint[], $18::bigint[], $19::boolean[], \
                     $20::boolean[]) \
           AS v(account_id, balance, last_seq, granted, deducted, purchased, dripped, used, reversed, \
                updated_at, expired, held, debt, active_holds, settle_at, next_expiry_at, \
                next_expiry_tokens, last_credit, alert_low, alert_depleted) \
         WHERE a.account_id = v.account_id AND a.account_id = ANY($1)";
    last.push(Some(Part::new(
        vec![("moved", update.to_string())],
        20,
        move |q| {
            q.bind(ids)
                .bind(balances)
                .bind(seqs)
                .bind(granted)
                .bind(deducted)
                .bind(purchased)
                .bind(dripped)
                .bind(used)
                .bind(reversed)
                .bind(updated_at)
                .bind(expired)
                .bind(held)
                .bind(debt)
                .bind(active_holds)
                .bind(settle_at)
                .bind(next_expiry_at)
                .bind(next_expiry_tokens)
                .bind(last_credit)
                .bind(low)
                .bind(depleted)
        },
    )));
    let payloads = super::notify::balance_payloads(
        moved
            .iter()
            .filter(|m| announced.contains(&m.account_id))
            .map(|m| m.user_id.as_str()),
    );
    // Without an announcement, the statement selects nothing more.
    if !payloads.is_empty() {
        let notify = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";
        last.select(Part::new(vec![("", notify.to_string())], 2, move |q| {
            q.bind(super::notify::BALANCE_CHANNEL).bind(payloads)
        }));
    }
}

/// The batch's alert events, into the outbox (migration 0012), in the order they happened.
async fn insert_alerts(
    tx: &mut Transaction<'_, Postgres>,
    alerts: &[StagedAlert],
) -> Result<(), sqlx::Error> {
    if alerts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO alert_outbox (account_id, user_id, kind, threshold, available, balance, seq, \
           lot_id, expires_at, tokens) \
         SELECT a, u, k, th, av, b, s, l, e, t \
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                       $6::bigint[], $7::bigint[], $8::bigint[], $9::timestamptz[], $10::bigint[]) \
                WITH ORDINALITY AS x(a, u, k, th, av, b, s, l, e, t, o) \
          ORDER BY o",
    )
    .bind(alerts.iter().map(|a| a.account_id).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.user_id.clone()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.threshold).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.available).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.balance).collect::<Vec<_>>())
    .bind(alerts.iter().map(|a| a.seq).collect::<Vec<_>>())
    .bind(
        alerts
            .iter()
            .map(|a| a.lot.map(|l| l.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        alerts
            .iter()
            .map(|a| a.lot.map(|l| l.1))
            .collect::<Vec<_>>(),
    )
    .bind(
        alerts
            .iter()
            .map(|a| a.lot.map(|l| l.2))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Credits already committed for these business keys: one statement over `business_keys`
/// (migration 0014), each joined to its journal row by (account, id).
async fn find_business_keys(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[BusinessKey],
) -> Result<HashMap<BusinessKey, PriorCredit>, sqlx::Error> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut kinds = Vec::with_capacity(keys.len());
    let mut texts = Vec::with_capacity(keys.len());
    let mut periods: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(keys.len());
    for (kind, text, period) in keys.iter().map(business_key_columns) {
        kinds.push(kind);
        texts.push(text);
        periods.push(period);
    }
    let rows = sqlx::query(
        "SELECT b.kind, b.key, b.period_start, j.id, a.user_id, j.token_amount, j.balance_after \
           FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(kind, key, period_start) \
           JOIN business_keys b ON b.kind = k.kind AND b.key = k.key \
                AND b.period_start = COALESCE(k.period_start, '-infinity') \
           JOIN journal j ON j.account_id = b.account_id AND j.id = b.transaction_id \
           JOIN accounts a ON a.account_id = b.account_id",
    )
    .bind(&kinds)
    .bind(&texts)
    .bind(&periods)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let key: String = row.try_get("key")?;
        let key = match kind.as_str() {
            "payment_intent" => BusinessKey::PaymentIntent(key),
            "annual_invoice" => BusinessKey::AnnualInvoice(key),
            _ => BusinessKey::SubscriptionPeriod {
                stripe_subscription_id: key,
                period_start: row.try_get("period_start")?,
            },
        };
        let prior = PriorCredit {
            transaction_id: EntryId(row.try_get("id")?),
            user_id: row.try_get("user_id")?,
            token_amount: row.try_get("token_amount")?,
            balance_after: row.try_get("balance_after")?,
        };
        found.insert(key, prior);
    }
    Ok(found)
}

/// A business key as `business_keys` stores it: kind, key, and the period for a drip's.
fn business_key_columns(key: &BusinessKey) -> (&'static str, &str, Option<DateTime<Utc>>) {
    match key {
        BusinessKey::PaymentIntent(pi) => ("payment_intent", pi.as_str(), None),
        BusinessKey::AnnualInvoice(inv) => ("annual_invoice", inv.as_str(), None),
        BusinessKey::SubscriptionPeriod {
            stripe_subscription_id,
            period_start,
        } => (
            "subscription_period",
            stripe_subscription_id.as_str(),
            Some(*period_start),
        ),
    }
}

/// Inserts the batch's journal rows: one `unnest` insert per table, rows with business keys in
/// key order so concurrent batches wait on unique-index entries in one order.
/// Inserts the batch's drips and transactions, and answers its usage rows as a part of the
/// batch's last statement (usage is nearly every batch: one round trip fewer).
async fn insert_rows<'a>(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteCommand],
    rows: &[StagedRow],
    now: DateTime<Utc>,
) -> Result<Option<Part<'a>>, sqlx::Error> {
    let mut usage: Vec<Row<'_>> = Vec::new();
    let mut drips: Vec<Row<'_>> = Vec::new();
    let mut transactions: Vec<Row<'_>> = Vec::new();
    for staged in rows {
        let row = Row {
            staged,
            cmd: &writes[staged.write],
        };
        match row.cmd.kind() {
            EntryKind::Usage => usage.push(row),
            EntryKind::Drip => drips.push(row),
            _ => transactions.push(row),
        }
    }
    if !drips.is_empty() {
        insert_drips(tx, &mut drips, now).await?;
    }
    if !transactions.is_empty() {
        insert_transactions(tx, &mut transactions, now).await?;
    }
    Ok((!usage.is_empty()).then(|| usage_part(&usage, now)))
}

/// A staged journal row with the write it records.
struct Row<'a> {
    staged: &'a StagedRow,
    cmd: &'a WriteCommand,
}

/// The columns every journal table has, one array each.
struct CommonColumns {
    ids: Vec<i64>,
    account_ids: Vec<i64>,
    seqs: Vec<i64>,
    amounts: Vec<i64>,
    balances: Vec<i64>,
    actors: Vec<String>,
}

/// The idempotency keys of `rows`, kept on every journal row but usage's.
fn key_texts(rows: &[Row<'_>]) -> Vec<String> {
    rows.iter()
        .map(|r| r.cmd.idempotency_key.as_str().to_string())
        .collect()
}

impl CommonColumns {
    fn of(rows: &[Row<'_>]) -> Self {
        Self {
            ids: rows.iter().map(|r| r.staged.entry_id.0).collect(),
            account_ids: rows.iter().map(|r| r.staged.account_id).collect(),
            seqs: rows.iter().map(|r| r.staged.seq).collect(),
            amounts: rows.iter().map(|r| r.staged.token_amount).collect(),
            balances: rows.iter().map(|r| r.staged.balance_after).collect(),
            actors: rows
                .iter()
                .map(|r| r.cmd.created_by.as_str().to_string())
                .collect(),
        }
    }
}

/// The usage rows and, from what they inserted, their sums added to the rollups (migration
/// 0011), so the two can never disagree: a part of the batch's last statement ([`Joined`]).
fn usage_part<'a>(rows: &[Row<'_>], now: DateTime<Utc>) -> Part<'a> {
    let c = CommonColumns::of(rows);
    let mut models = Vec::with_capacity(rows.len());
    let mut features = Vec::with_capacity(rows.len());
    let mut inputs = Vec::with_capacity(rows.len());
    let mut outputs = Vec::with_capacity(rows.len());
    // NULL unless given (a NULL costs no bytes), so a plain event stays as small as before.
    let mut cache_reads: Vec<Option<i64>> = Vec::with_capacity(rows.len());
    let mut cache_writes: Vec<Option<i64>> = Vec::with_capacity(rows.len());
    let mut prices = Vec::with_capacity(rows.len());
    for r in rows {
        // A commit's row is a usage row; its hold names it (`committed_transaction_id`).
        let Some(call) = r.cmd.ai_call() else {
            continue;
        };
        models.push(call.model.clone());
        features.push(call.feature.clone());
        inputs.push(call.counts.input);
        outputs.push(call.counts.output);
        cache_reads.push((call.counts.cache_read != 0).then_some(call.counts.cache_read));
        cache_writes.push((call.counts.cache_write != 0).then_some(call.counts.cache_write));
        prices.push(r.staged.price_id);
    }
    let inserted = "INSERT INTO token_usage (id, account_id, entry_seq, token_amount, \
         balance_after, model, input_tokens, output_tokens, feature, created_by, \
         cache_read_tokens, cache_write_tokens, price_id, created_at) \
       SELECT *, $14::timestamptz FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], \
         $4::bigint[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], $9::text[], \
         $10::text[], $11::bigint[], $12::bigint[], $13::bigint[]) \
       RETURNING account_id, created_at, model, feature, token_amount, input_tokens, \
         output_tokens, cache_read_tokens, cache_write_tokens";
    let rolled_up = "INSERT INTO usage_rollups AS r \
       SELECT account_id, ledger_usage_bucket(created_at), COALESCE(model, ''), \
              COALESCE(feature, ''), count(*), -sum(token_amount), sum(input_tokens), \
              sum(output_tokens), COALESCE(sum(cache_read_tokens), 0), \
              COALESCE(sum(cache_write_tokens), 0) \
         FROM usage_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
       ON CONFLICT (account_id, bucket, model, feature) DO UPDATE SET \
         events = r.events + EXCLUDED.events, tokens = r.tokens + EXCLUDED.tokens, \
         input_tokens = r.input_tokens + EXCLUDED.input_tokens, \
         output_tokens = r.output_tokens + EXCLUDED.output_tokens, \
         cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens, \
         cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens";
    Part::new(
        vec![
            ("usage_rows", inserted.to_string()),
            ("rollups", rolled_up.to_string()),
        ],
        14,
        move |q| {
            q.bind(c.ids)
                .bind(c.account_ids)
                .bind(c.seqs)
                .bind(c.amounts)
                .bind(c.balances)
                .bind(models)
                .bind(inputs)
                .bind(outputs)
                .bind(features)
                .bind(c.actors)
                .bind(cache_reads)
                .bind(cache_writes)
                .bind(prices)
                .bind(now)
        },
    )
}

async fn insert_drips(
    tx: &mut Transaction<'_, Postgres>,
    rows: &mut [Row<'_>],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // In (subscription, period) order, as their business keys are locked.
    rows.sort_by_key(|r| r.cmd.business_key());
    let c = CommonColumns::of(rows);
    let mut subs = Vec::with_capacity(rows.len());
    let mut invoices = Vec::with_capacity(rows.len());
    let mut starts = Vec::with_capacity(rows.len());
    let mut ends = Vec::with_capacity(rows.len());
    for r in rows.iter() {
        if let WriteDetails::Drip {
            stripe_subscription_id,
            stripe_invoice_id,
            period_start,
            period_end,
        } = &r.cmd.details
        {
            subs.push(stripe_subscription_id.clone());
            invoices.push(stripe_invoice_id.clone());
            starts.push(*period_start);
            ends.push(*period_end);
        }
    }
    // One statement: the rows and their business keys (migration 0014), in key order.
    sqlx::query(
        "WITH ins AS ( \
         INSERT INTO token_drips (id, account_id, entry_seq, token_amount, balance_after, \
         stripe_subscription_id, stripe_invoice_id, period_start, period_end, created_by, \
         idempotency_key, created_at) \
         SELECT *, $12::timestamptz FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                              $5::bigint[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], \
                              $10::text[], $11::text[]) \
         RETURNING id, account_id, stripe_subscription_id, period_start) \
         INSERT INTO business_keys (kind, key, period_start, account_id, transaction_id) \
         SELECT 'subscription_period', stripe_subscription_id, period_start, account_id, id \
           FROM ins ORDER BY 2, 3",
    )
    .bind(c.ids)
    .bind(c.account_ids)
    .bind(c.seqs)
    .bind(c.amounts)
    .bind(c.balances)
    .bind(subs)
    .bind(invoices)
    .bind(starts)
    .bind(ends)
    .bind(c.actors)
    .bind(key_texts(rows))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_transactions(
    tx: &mut Transaction<'_, Postgres>,
    rows: &mut [Row<'_>],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // Payment intents, then annual invoices, each in key order (their business keys are locked
    // in key order by the insert itself).
    rows.sort_by_key(|r| match r.cmd.business_key() {
        Some(BusinessKey::PaymentIntent(pi)) => (0, pi),
        Some(BusinessKey::AnnualInvoice(inv)) => (1, inv),
        _ => (2, String::new()),
    });
    let c = CommonColumns::of(rows);
    let mut t = TransactionColumns::default();
    for r in rows.iter() {
        t.push(&r.cmd.details);
    }
    // One statement: the rows and the business keys (migration 0014) of purchases (the payment
    // intent) and annual grants (the invoice), in key order: what the partial unique indexes
    // of the journal table were before.
    sqlx::query(
        "WITH ins AS ( \
         INSERT INTO token_transactions (id, account_id, entry_seq, token_amount, balance_after, created_by, \
         transaction_type, source, reason, amount_paid_cents, currency, stripe_payment_intent_id, \
         stripe_checkout_session_id, stripe_subscription_id, stripe_invoice_id, pack, \
         reverses_transaction_id, stripe_reference, allow_negative, idempotency_key, created_at) \
         SELECT *, $21::timestamptz FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                              $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
                              $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], \
                              $17::bigint[], $18::text[], $19::boolean[], $20::text[]) \
         RETURNING id, account_id, transaction_type, source, stripe_payment_intent_id, \
           stripe_invoice_id) \
         INSERT INTO business_keys (kind, key, account_id, transaction_id) \
         SELECT CASE WHEN transaction_type = 'purchase' THEN 'payment_intent' \
                     ELSE 'annual_invoice' END, \
                CASE WHEN transaction_type = 'purchase' THEN stripe_payment_intent_id \
                     ELSE stripe_invoice_id END, \
                account_id, id \
           FROM ins \
          WHERE transaction_type = 'purchase' \
             OR (source = 'annual_subscription' AND stripe_invoice_id IS NOT NULL) \
          ORDER BY 1, 2",
    )
    .bind(c.ids)
    .bind(c.account_ids)
    .bind(c.seqs)
    .bind(c.amounts)
    .bind(c.balances)
    .bind(c.actors)
    .bind(t.transaction_type)
    .bind(t.source)
    .bind(t.reason)
    .bind(t.amount_paid_cents)
    .bind(t.currency)
    .bind(t.stripe_payment_intent_id)
    .bind(t.stripe_checkout_session_id)
    .bind(t.stripe_subscription_id)
    .bind(t.stripe_invoice_id)
    .bind(t.pack)
    .bind(t.reverses_transaction_id)
    .bind(t.stripe_reference)
    .bind(t.allow_negative)
    .bind(key_texts(rows))
    .bind(now)
    .execute(&mut **tx)
    .await?;
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
            WriteDetails::Expiry { .. } => unreachable!("expiry rows are written by `credit`"),
            WriteDetails::Drip { .. }
            | WriteDetails::Usage { .. }
            | WriteDetails::CommitHold { .. }
            | WriteDetails::Reserve { .. }
            | WriteDetails::ReleaseHold { .. }
            | WriteDetails::ExtendHold { .. }
            | WriteDetails::Settle => {
                unreachable!("drips, usage and hold writes are not token_transactions rows")
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
