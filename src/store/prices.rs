//! Model prices (migration 0010): adding a version (retry-safe by its request key) and listing
//! them. The batch reads the versions it prices with (`batch::load_prices`) through
//! `PRICE_COLUMNS` and `price_from_row`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Store;
use crate::domain::{ModelPrice, NewPrice, Rates, Tier};
use crate::error::LedgerError;

pub(super) const PRICE_COLUMNS: &str = "price_id, model, effective_from, input_per_million, \
    cache_read_per_million, cache_write_per_million, output_per_million, tiers::text AS tiers, \
    created_by, created_at";

pub(super) fn price_from_row(row: &sqlx::postgres::PgRow) -> Result<ModelPrice, sqlx::Error> {
    let tiers: String = row.try_get("tiers")?;
    let tiers: Vec<Tier> =
        serde_json::from_str(&tiers).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(ModelPrice {
        price_id: row.try_get("price_id")?,
        model: row.try_get("model")?,
        effective_from: row.try_get("effective_from")?,
        rates: Rates {
            input: row.try_get("input_per_million")?,
            cache_read: row.try_get("cache_read_per_million")?,
            cache_write: row.try_get("cache_write_per_million")?,
            output: row.try_get("output_per_million")?,
        },
        tiers,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

impl Store {
    /// Adds a price version, or answers the one its key added before (`true`: replayed). A key
    /// reused for another request is `ALREADY_EXISTS`; a second version of one model at one
    /// instant is `ALREADY_EXISTS` too; `effective_from` in the past is `INVALID_ARGUMENT`.
    pub async fn set_price(
        &self,
        price: &NewPrice,
        created_by: &str,
    ) -> Result<(ModelPrice, bool), LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let fingerprint = price.fingerprint().to_vec();
        let key = price.idempotency_key.as_str();
        let select = format!(
            "SELECT {PRICE_COLUMNS}, request_hash FROM model_prices WHERE request_key = $1"
        );
        if let Some(row) = sqlx::query(&select)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?
        {
            return replay(&row, &fingerprint, key);
        }
        let tiers =
            serde_json::to_string(&price.tiers).map_err(|e| LedgerError::Internal(e.into()))?;
        let now = self.clock().now();
        let effective_from = price.effective_from.unwrap_or(now);
        // A second of slack for the caller's clock; beyond it a past start would re-price
        // history that was written under another version.
        if effective_from < now - chrono::Duration::seconds(1) {
            return Err(LedgerError::invalid(
                "effective_from",
                format!(
                    "must not be in the past (it is {}, now is {}): leave it unset for now",
                    effective_from.to_rfc3339(),
                    now.to_rfc3339()
                ),
            ));
        }
        let insert = format!(
            "INSERT INTO model_prices (model, effective_from, input_per_million, \
               cache_read_per_million, cache_write_per_million, output_per_million, tiers, \
               created_by, request_key, request_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10) \
             ON CONFLICT (request_key) DO NOTHING RETURNING {PRICE_COLUMNS}"
        );
        let inserted = sqlx::query(&insert)
            .bind(&price.model)
            .bind(effective_from)
            .bind(price.rates.input)
            .bind(price.rates.cache_read)
            .bind(price.rates.cache_write)
            .bind(price.rates.output)
            .bind(&tiers)
            .bind(created_by)
            .bind(key)
            .bind(&fingerprint)
            .fetch_optional(&mut *conn)
            .await;
        match inserted {
            Ok(Some(row)) => Ok((price_from_row(&row)?, false)),
            // A concurrent call with the same key won: answer what it wrote.
            Ok(None) => {
                let row = sqlx::query(&select)
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.saw(e))?;
                replay(&row, &fingerprint, key)
            }
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(UNIQUE_VIOLATION)
                    && db.constraint() == Some("model_prices_version_key") =>
            {
                Err(LedgerError::invalid(
                    "effective_from",
                    format!(
                        "{} already has a version from {}: versions are never edited, pick another start",
                        price.model,
                        effective_from.to_rfc3339()
                    ),
                ))
            }
            Err(e) => Err(self.saw(e).into()),
        }
    }

    /// Prices of `model` (every model when `None`), by model then newest first: every version
    /// with `history`, else the one in force at the ledger's now and those scheduled after it.
    /// The flag says which one is in force.
    pub async fn prices(
        &self,
        model: Option<&str>,
        history: bool,
    ) -> Result<Vec<(ModelPrice, bool)>, LedgerError> {
        let mut conn = self.acquire().await.map_err(|e| self.saw(e))?;
        let now: DateTime<Utc> = self.clock().now();
        let sql = format!(
            "WITH current AS ( \
               SELECT DISTINCT ON (model) price_id FROM model_prices \
                WHERE effective_from <= $2 AND ($1::text IS NULL OR model = $1) \
                ORDER BY model, effective_from DESC) \
             SELECT {PRICE_COLUMNS}, price_id IN (SELECT price_id FROM current) AS current \
               FROM model_prices \
              WHERE ($1::text IS NULL OR model = $1) \
                AND ($3 OR effective_from > $2 OR price_id IN (SELECT price_id FROM current)) \
              ORDER BY model, effective_from DESC LIMIT {PRICES_LISTED_MAX}"
        );
        let rows = sqlx::query(&sql)
            .bind(model)
            .bind(now)
            .bind(history)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
        rows.iter()
            .map(|r| Ok((price_from_row(r)?, r.try_get("current")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// Most price versions one ListModelPrices answers with.
pub const PRICES_LISTED_MAX: i64 = 10_000;

fn replay(
    row: &sqlx::postgres::PgRow,
    fingerprint: &[u8],
    key: &str,
) -> Result<(ModelPrice, bool), LedgerError> {
    let stored: Vec<u8> = row.try_get("request_hash")?;
    if stored != fingerprint {
        return Err(LedgerError::IdempotencyConflict {
            key: key.to_string(),
        });
    }
    Ok((price_from_row(row)?, true))
}

/// Every price version, as this process last read them, so a batch that prices usage needs no
/// round trip of its own for them.
///
/// Exact across processes because versions are append-only (a trigger refuses UPDATE and
/// DELETE): the set of rows only grows, so two reads that count the same number of rows read the
/// same rows. The batch counts them after its account locks (`batch::load_prices`: a
/// `count(*)` of a few rows instead of reading and decoding the versions it needs); when the
/// count differs from the cached one it reads them all again.
#[derive(Debug, Default)]
pub struct PriceCache {
    versions: std::sync::RwLock<Arc<PriceVersions>>,
}

/// One read of the whole price table.
#[derive(Debug)]
pub struct PriceVersions {
    /// How many rows the read returned; `-1` before the first read.
    count: i64,
    /// Each model's versions in increasing `effective_from`.
    by_model: HashMap<String, Vec<ModelPrice>>,
    by_id: HashMap<i64, ModelPrice>,
}

impl Default for PriceVersions {
    fn default() -> Self {
        Self {
            count: -1,
            by_model: HashMap::new(),
            by_id: HashMap::new(),
        }
    }
}

impl PriceVersions {
    fn new(rows: Vec<ModelPrice>) -> Self {
        let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let mut by_model: HashMap<String, Vec<ModelPrice>> = HashMap::new();
        let mut by_id = HashMap::with_capacity(rows.len());
        for price in rows {
            by_id.insert(price.price_id, price.clone());
            by_model.entry(price.model.clone()).or_default().push(price);
        }
        for versions in by_model.values_mut() {
            versions.sort_by_key(|p| p.effective_from);
        }
        Self {
            count,
            by_model,
            by_id,
        }
    }

    /// The version of `model` in force at `at`: the latest that starts at or before it.
    pub fn in_force(&self, model: &str, at: DateTime<Utc>) -> Option<&ModelPrice> {
        let versions = self.by_model.get(model)?;
        let after = versions.partition_point(|p| p.effective_from <= at);
        after.checked_sub(1).map(|i| &versions[i])
    }

    pub fn by_id(&self, price_id: i64) -> Option<&ModelPrice> {
        self.by_id.get(&price_id)
    }
}

impl PriceCache {
    /// The cached versions if the table still holds `count` rows, else `None`.
    pub fn if_current(&self, count: i64) -> Option<Arc<PriceVersions>> {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        (versions.count == count).then(|| Arc::clone(&versions))
    }

    /// Reads every version on `conn` and keeps them.
    pub async fn reload(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Arc<PriceVersions>, sqlx::Error> {
        let sql = format!("SELECT {PRICE_COLUMNS} FROM model_prices");
        let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
        let prices = rows
            .iter()
            .map(price_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let fresh = Arc::new(PriceVersions::new(prices));
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        // Another batch may have read a later (larger) set meanwhile: keep the larger.
        if fresh.count >= versions.count {
            *versions = Arc::clone(&fresh);
        }
        Ok(fresh)
    }
}
