//! Lots and holds in SQL: what a batch loads of them, what it writes back, and the reads of
//! them (ListLots, ListHolds, the owner of a hold, a balance past its settle instant).

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row as _};

use super::joined::Part;
use super::Store;
use crate::domain::{Balance, EntryId, HoldState, LotSource, UserId};
use crate::error::LedgerError;
use crate::ledger::rules::{Hold, Lot, Staged, Wallet};

/// The ledger's clock: the database's `now()` plus an offset that only tests move, so tests
/// can let time pass (lots expire, holds lapse) without sleeping. Zero in production: nothing but
/// `Store::clock().advance` changes it, and nothing but tests calls that.
#[derive(Debug, Default)]
pub struct Clock {
    offset_micros: AtomicI64,
}

impl Clock {
    /// Moves the ledger's time forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let micros = by.num_microseconds().unwrap_or(i64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::SeqCst);
    }
    /// The offset in microseconds, for `now() + $n * interval '1 microsecond'`.
    pub fn offset_micros(&self) -> i64 {
        self.offset_micros.load(Ordering::SeqCst)
    }
    /// The ledger's time by this machine's clock (for what never reaches the database).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::microseconds(self.offset_micros())
    }
}

/// The SQL of the ledger's time, with the offset bound as `$n`.
pub(crate) fn now_sql(n: usize) -> String {
    format!("(now() + ${n}::bigint * interval '1 microsecond')")
}

/// Like [`now_sql`], but the time the statement reaches the row, not when its transaction
/// began: a batch that waited for an account's lock decides expiries at the time it got it,
/// never before the batch that held the lock (which committed before it was released).
pub(crate) fn clock_sql(n: usize) -> String {
    format!("(clock_timestamp() + ${n}::bigint * interval '1 microsecond')")
}

const LOT_COLUMNS: &str = "lot_id, account_id, source, paid, stripe_subscription_id, granted, \
    remaining, held, expires_at, priority, created_at, expiring_alerted";

const HOLD_COLUMNS: &str =
    "hold_id, account_id, tokens, state, expires_at, earmarks::text, model, \
    feature, created_by, placed_at, ended_at, committed_transaction_id, committed_tokens, \
    available_after, price_id";

fn lot_from_row(row: &sqlx::postgres::PgRow) -> Result<(i64, Lot), sqlx::Error> {
    let source: String = row.try_get("source")?;
    let source = LotSource::from_db(&source)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown lot source {source:?}").into()))?;
    Ok((
        row.try_get("account_id")?,
        Lot {
            lot_id: row.try_get("lot_id")?,
            source,
            paid: row.try_get("paid")?,
            subscription: row.try_get("stripe_subscription_id")?,
            granted: row.try_get("granted")?,
            remaining: row.try_get("remaining")?,
            held: row.try_get("held")?,
            expires_at: row.try_get("expires_at")?,
            priority: row.try_get("priority")?,
            created_at: row.try_get("created_at")?,
            expiring_alerted: row.try_get("expiring_alerted")?,
        },
    ))
}

fn hold_from_row(row: &sqlx::postgres::PgRow) -> Result<Hold, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let state = HoldState::from_db(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown hold state {state:?}").into()))?;
    let earmarks: String = row.try_get("earmarks")?;
    let earmarks: Vec<(i64, i64)> =
        serde_json::from_str(&earmarks).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(Hold {
        hold_id: row.try_get("hold_id")?,
        account_id: row.try_get("account_id")?,
        tokens: row.try_get("tokens")?,
        state,
        expires_at: row.try_get("expires_at")?,
        earmarks,
        model: row.try_get("model")?,
        feature: row.try_get("feature")?,
        created_by: row.try_get("created_by")?,
        placed_at: row.try_get("placed_at")?,
        ended_at: row.try_get("ended_at")?,
        committed_transaction_id: row.try_get("committed_transaction_id")?,
        committed_tokens: row.try_get("committed_tokens")?,
        available_after: row.try_get("available_after")?,
        price_id: row.try_get("price_id")?,
    })
}

/// The lot columns of a read that joins `token_lots l` to its accounts (`a.account_id` is read
/// beside them): every one is NULL on an account's row that has no live lot.
pub(super) const JOINED_LOT_COLUMNS: &str = "l.lot_id, l.source, l.paid, \
    l.stripe_subscription_id, l.granted, l.remaining, l.held, l.expires_at, l.priority, \
    l.created_at, l.expiring_alerted";

/// The lot of a row read with [`JOINED_LOT_COLUMNS`], if it has one.
pub(super) fn joined_lot(row: &sqlx::postgres::PgRow) -> Result<Option<Lot>, sqlx::Error> {
    if row.try_get::<Option<i64>, _>("lot_id")?.is_none() {
        return Ok(None);
    }
    lot_from_row(row).map(|(_, lot)| Some(lot))
}

/// The active holds of `accounts`, and the holds named by `ids` whatever their state.
pub(super) async fn load_holds(
    conn: &mut PgConnection,
    accounts: &[i64],
    ids: &[i64],
) -> Result<Vec<Hold>, sqlx::Error> {
    if accounts.is_empty() && ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM token_holds \
         WHERE (account_id = ANY($1) AND state = 'active') OR hold_id = ANY($2)"
    );
    sqlx::query(&sql)
        .bind(accounts)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(hold_from_row)
        .collect()
}

/// Ids for the rules' placeholders: `-k` becomes the k-th id drawn.
pub(super) async fn draw_ids(
    conn: &mut PgConnection,
    placeholders: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    if placeholders == 0 {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT nextval('ledger_entry_id_seq') FROM generate_series(1, $1::bigint) ORDER BY 1",
    )
    .bind(placeholders)
    .fetch_all(&mut *conn)
    .await
}

/// A staged id: real ids pass through, placeholders are looked up.
pub(super) fn real_id(ids: &[i64], id: i64) -> Result<i64, sqlx::Error> {
    if id >= 0 {
        return Ok(id);
    }
    usize::try_from(-id - 1)
        .ok()
        .and_then(|k| ids.get(k).copied())
        .ok_or_else(|| sqlx::Error::Protocol(format!("placeholder id {id} was never drawn")))
}

/// Writes the expiry rows, lots and holds a batch staged.
pub(super) async fn persist<'a>(
    conn: &mut PgConnection,
    staged: &Staged,
    ids: &[i64],
) -> Result<Option<Part<'a>>, sqlx::Error> {
    if !staged.expiries.is_empty() {
        insert_expiries(conn, staged, ids).await?;
    }
    let burns = if staged.lots.is_empty() {
        None
    } else {
        upsert_lots(conn, staged, ids).await?
    };
    if !staged.holds.is_empty() {
        upsert_holds(conn, staged, ids).await?;
    }
    Ok(burns)
}

async fn insert_expiries(
    conn: &mut PgConnection,
    staged: &Staged,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    let e = &staged.expiries;
    let mut rows = Vec::with_capacity(e.len());
    let mut lots = Vec::with_capacity(e.len());
    let mut carried_to = Vec::with_capacity(e.len());
    for x in e {
        rows.push(real_id(ids, x.entry_id)?);
        lots.push(real_id(ids, x.expiry.lot_id)?);
        carried_to.push(match x.expiry.carried {
            Some((_, to)) => Some(real_id(ids, to)?),
            None => None,
        });
    }
    let source: Vec<&str> = e
        .iter()
        .map(|x| {
            if x.expiry.carried.is_some() {
                "rollover"
            } else {
                "lot"
            }
        })
        .collect();
    sqlx::query(
        "INSERT INTO token_transactions (id, account_id, entry_seq, token_amount, balance_after, \
         created_by, transaction_type, source, lot_id, carried_tokens, carried_to_lot, created_at) \
         SELECT id, a, s, t, b, 'ledger', 'expiry', src, l, c, ct, $10::timestamptz \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                     $6::text[], $7::bigint[], $8::bigint[], $9::bigint[]) \
           AS v(id, a, s, t, b, src, l, c, ct)",
    )
    .bind(rows)
    .bind(e.iter().map(|x| x.account_id).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.seq).collect::<Vec<_>>())
    .bind(e.iter().map(|x| -x.expiry.tokens).collect::<Vec<_>>())
    .bind(e.iter().map(|x| x.balance_after).collect::<Vec<_>>())
    .bind(source)
    .bind(lots)
    .bind(
        e.iter()
            .map(|x| x.expiry.carried.map(|(t, _)| t))
            .collect::<Vec<_>>(),
    )
    .bind(carried_to)
    .bind(staged.now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts the batch's new lots, and answers the update of the lots it changed as a part of the
/// batch's last statement.
async fn upsert_lots<'a>(
    conn: &mut PgConnection,
    staged: &Staged,
    ids: &[i64],
) -> Result<Option<Part<'a>>, sqlx::Error> {
    let (created, changed): (Vec<&StagedLot>, Vec<&StagedLot>) = staged
        .lots
        .iter()
        .partition(|(_, lot)| staged.new_lots.contains(&lot.lot_id));
    if !created.is_empty() {
        insert_lots(conn, &created, ids).await?;
    }
    if changed.is_empty() {
        return Ok(None);
    }
    // Existing lots: only what a batch can change (a burn touches `remaining` alone, which no
    // index covers, so the update stays on its page).
    // By (account, lot): the lots' key (migration 0014).
    let update = "UPDATE token_lots l SET remaining = v.remaining, held = v.held, \
           expires_at = v.expires_at, expiring_alerted = v.alerted \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::boolean[], \
           $6::bigint[]) AS v(lot_id, remaining, held, expires_at, alerted, account_id) \
         WHERE l.account_id = v.account_id AND l.lot_id = v.lot_id";
    let lot_ids: Vec<i64> = changed.iter().map(|(_, x)| x.lot_id).collect();
    let remaining: Vec<i64> = changed.iter().map(|(_, x)| x.remaining).collect();
    let held: Vec<i64> = changed.iter().map(|(_, x)| x.held).collect();
    let expires_at: Vec<Option<DateTime<Utc>>> =
        changed.iter().map(|(_, x)| x.expires_at).collect();
    let alerted: Vec<bool> = changed.iter().map(|(_, x)| x.expiring_alerted).collect();
    let accounts: Vec<i64> = changed.iter().map(|(a, _)| *a).collect();
    Ok(Some(Part::new(
        vec![("burnt_lots", update.to_string())],
        6,
        move |q| {
            q.bind(lot_ids)
                .bind(remaining)
                .bind(held)
                .bind(expires_at)
                .bind(alerted)
                .bind(accounts)
        },
    )))
}

/// A lot the batch changed, with its account id.
type StagedLot = (i64, Lot);

async fn insert_lots(
    conn: &mut PgConnection,
    l: &[&StagedLot],
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    let mut lot_ids = Vec::with_capacity(l.len());
    for (_, lot) in l {
        lot_ids.push(real_id(ids, lot.lot_id)?);
    }
    sqlx::query(
        "INSERT INTO token_lots (lot_id, account_id, source, paid, stripe_subscription_id, \
           granted, remaining, held, expires_at, priority, created_at, expiring_alerted) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::boolean[], $5::text[], \
           $6::bigint[], $7::bigint[], $8::bigint[], $9::timestamptz[], $10::int[], \
           $11::timestamptz[], $12::boolean[])",
    )
    .bind(lot_ids)
    .bind(l.iter().map(|(a, _)| *a).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.source.as_str()).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.paid).collect::<Vec<_>>())
    .bind(
        l.iter()
            .map(|(_, x)| x.subscription.clone())
            .collect::<Vec<_>>(),
    )
    .bind(l.iter().map(|(_, x)| x.granted).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.remaining).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.held).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.expires_at).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.priority).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, x)| x.created_at).collect::<Vec<_>>())
    .bind(
        l.iter()
            .map(|(_, x)| x.expiring_alerted)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn upsert_holds(
    conn: &mut PgConnection,
    staged: &Staged,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    let h = &staged.holds;
    let mut earmarks = Vec::with_capacity(h.len());
    for hold in h {
        let mut real = Vec::with_capacity(hold.earmarks.len());
        for (lot, tokens) in &hold.earmarks {
            real.push((real_id(ids, *lot)?, *tokens));
        }
        earmarks.push(serde_json::to_string(&real).map_err(|e| sqlx::Error::Encode(e.into()))?);
    }
    sqlx::query(
        "INSERT INTO token_holds (hold_id, account_id, tokens, state, expires_at, earmarks, model, \
           feature, created_by, placed_at, ended_at, committed_transaction_id, committed_tokens, \
           available_after, price_id) \
         SELECT h, a, t, s, e, m::jsonb, mo, f, c, p, en, ct, ctk, av, pr \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], \
           $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[]) \
           AS v(h, a, t, s, e, m, mo, f, c, p, en, ct, ctk, av, pr) \
         ON CONFLICT (account_id, hold_id) DO UPDATE SET tokens = EXCLUDED.tokens, state = EXCLUDED.state, \
           expires_at = EXCLUDED.expires_at, earmarks = EXCLUDED.earmarks, \
           ended_at = EXCLUDED.ended_at, \
           committed_transaction_id = EXCLUDED.committed_transaction_id, \
           committed_tokens = EXCLUDED.committed_tokens, \
           available_after = EXCLUDED.available_after, updated_at = now()",
    )
    .bind(h.iter().map(|x| x.hold_id).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.account_id).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.tokens).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.state.as_str()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.expires_at).collect::<Vec<_>>())
    .bind(earmarks)
    .bind(h.iter().map(|x| x.model.clone()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.feature.clone()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.created_by.clone()).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.placed_at).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.ended_at).collect::<Vec<_>>())
    .bind(
        h.iter()
            .map(|x| x.committed_transaction_id)
            .collect::<Vec<_>>(),
    )
    .bind(h.iter().map(|x| x.committed_tokens).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.available_after).collect::<Vec<_>>())
    .bind(h.iter().map(|x| x.price_id).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Accounts with something due by the ledger's now (a lot expired, a hold lapsed, a lot
    /// entered its expiring-soon alert window), soonest first.
    pub async fn due_accounts(&self, limit: i64) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.acquire().await?;
        // Lots entering the expiring-soon window are found from the lots themselves (a partial
        // index of the ones not alerted yet), so nothing stored can go stale when the window
        // changes, and lots from before alerts existed are found too.
        let window_micros = self
            .alert_expiring_window
            .and_then(|w| w.num_microseconds())
            .unwrap_or(-1);
        sqlx::query_scalar(&format!(
            "SELECT user_id FROM ( \
               SELECT user_id, settle_at AS at FROM accounts WHERE settle_at <= {now} \
               UNION ALL \
               SELECT a.user_id, l.expires_at - $3 * interval '1 microsecond' \
                 FROM token_lots l JOIN accounts a USING (account_id) \
                WHERE $3 >= 0 AND NOT l.expiring_alerted AND l.remaining > 0 \
                  AND l.expires_at > {now} \
                  AND l.expires_at <= {now} + $3 * interval '1 microsecond') d \
             GROUP BY user_id ORDER BY min(at) LIMIT $2",
            now = now_sql(1)
        ))
        .bind(self.clock().offset_micros())
        .bind(limit)
        .bind(window_micros)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.saw(e).into())
    }

    /// Takes or renews the lease on background `job` for `holder`, for `lease_for`: `true`
    /// when `holder` holds it now (it was free, had run out, or was already its own).
    pub async fn take_job_lease(
        &self,
        job: &str,
        holder: &str,
        lease_for: std::time::Duration,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.acquire().await?;
        let micros = i64::try_from(lease_for.as_micros()).unwrap_or(i64::MAX);
        let held = sqlx::query_scalar::<_, bool>(
            "INSERT INTO job_leases AS l (job, holder, held_until) \
             VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond') \
             ON CONFLICT (job) DO UPDATE SET holder = EXCLUDED.holder, \
               held_until = EXCLUDED.held_until \
             WHERE l.holder = EXCLUDED.holder OR l.held_until < clock_timestamp() \
             RETURNING true",
        )
        .bind(job)
        .bind(holder)
        .bind(micros)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.saw(e))?;
        Ok(held.unwrap_or(false))
    }

    /// Holds active right now, over every account (lapsed ones not yet swept included).
    pub async fn active_holds(&self) -> Result<i64, LedgerError> {
        let mut conn = self.acquire().await?;
        sqlx::query_scalar("SELECT count(*) FROM token_holds WHERE state = 'active'")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.saw(e).into())
    }

    /// The owner of a hold, for routing a hold write to its account's writer.
    pub async fn hold_owner(&self, hold_id: EntryId) -> Result<Option<String>, LedgerError> {
        let mut conn = self.acquire().await?;
        sqlx::query_scalar(
            "SELECT a.user_id FROM token_holds h JOIN accounts a USING (account_id) \
             WHERE h.hold_id = $1",
        )
        .bind(hold_id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.saw(e).into())
    }

    /// The account's lots and holds as they are now (one snapshot), and the ledger's now: the
    /// caller settles a copy, so what has expired by now shows expired before the sweeper has
    /// written it.
    pub async fn wallet(
        &self,
        user_id: &UserId,
        query: &WalletQuery,
    ) -> Result<(Wallet, DateTime<Utc>), LedgerError> {
        let mut conn = self.acquire().await?;
        let result = async {
            let mut tx = snapshot(&mut conn).await?;
            let wallet = wallet_of(&mut tx, user_id, query, self.clock()).await?;
            tx.commit().await?;
            Ok(wallet)
        }
        .await;
        result.map_err(|e| self.saw(e).into())
    }

    /// GetBalance past the account's settle instant: the row's figures with what is due settled
    /// on a copy of its lots and holds, all read in one snapshot (a sweep committing meanwhile
    /// cannot make it count an expired lot).
    pub(super) async fn settled_balance(
        &self,
        conn: &mut PgConnection,
        user_id: &UserId,
    ) -> Result<Balance, sqlx::Error> {
        let mut tx = snapshot(conn).await?;
        let row = sqlx::query(super::BALANCE_SQL)
            .bind(user_id.as_str())
            .bind(self.clock().offset_micros())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Balance::empty());
        };
        let mut balance =
            super::balance_from_row(&row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
        let query = WalletQuery::default();
        let (mut wallet, now) = wallet_of(&mut tx, user_id, &query, self.clock()).await?;
        tx.commit().await?;
        let expired: i64 = wallet.settle(now).iter().map(|e| e.tokens).sum();
        balance.balance -= expired;
        balance.totals.expired += expired;
        let summary = wallet.summary(now);
        balance.held = summary.held;
        balance.next_expiry = summary.next_expiry;
        balance.settle_at = summary.settle_at;
        Ok(balance)
    }
}

/// Which lots and holds a read wants besides the live lots and active holds.
#[derive(Debug, Clone, Default)]
pub struct WalletQuery {
    /// Lots with nothing left too.
    pub include_spent: bool,
    /// The account's newest 1,000 holds whatever their state.
    pub recent_holds: bool,
    /// These holds whatever their state.
    pub hold_ids: Vec<i64>,
}

/// A read-only transaction whose statements all see one snapshot.
pub(crate) async fn snapshot(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn wallet_of(
    conn: &mut PgConnection,
    user_id: &UserId,
    query: &WalletQuery,
    clock: &Clock,
) -> Result<(Wallet, DateTime<Utc>), sqlx::Error> {
    let row: Option<(i64, i64, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT account_id, debt, {} FROM accounts WHERE user_id = $1",
        now_sql(2)
    ))
    .bind(user_id.as_str())
    .bind(clock.offset_micros())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((account, debt, now)) = row else {
        return Ok((Wallet::default(), clock.now()));
    };
    let lots_sql = format!(
        "SELECT {LOT_COLUMNS} FROM token_lots WHERE account_id = $1 AND ($2 OR remaining > 0) \
         ORDER BY lot_id"
    );
    let mut lots = Vec::new();
    for row in sqlx::query(&lots_sql)
        .bind(account)
        .bind(query.include_spent)
        .fetch_all(&mut *conn)
        .await?
    {
        lots.push(lot_from_row(&row)?.1);
    }
    // Every active hold (settling needs them all), plus what the query names.
    let holds_sql = format!(
        "SELECT {HOLD_COLUMNS} FROM token_holds WHERE account_id = $1 AND (state = 'active' \
           OR hold_id = ANY($3) OR ($2 AND hold_id IN (SELECT hold_id FROM token_holds \
             WHERE account_id = $1 ORDER BY hold_id DESC LIMIT 1000)))"
    );
    let holds = sqlx::query(&holds_sql)
        .bind(account)
        .bind(query.recent_holds)
        .bind(&query.hold_ids)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(hold_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let wallet = Wallet {
        lots,
        holds,
        debt,
        ..Wallet::default()
    };
    Ok((wallet, now))
}
