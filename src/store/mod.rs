//! The PostgreSQL store: every SQL statement the ledger runs lives here, and nothing else does.
//!
//! Writes are applied in batches (`batch`): load what the batch needs under its locks, let the
//! ledger's rules (`ledger::rules::evaluate`) decide, persist what they staged, all in one
//! transaction. Reads (balance, history, accounts, lookups, verify) are single statements
//! (`read`). Database errors become ledger errors in one place (`error`).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::domain::{Balance, Totals, UserId};
use crate::error::LedgerError;

mod batch;
mod error;
mod read;

pub use batch::BatchOutcome;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
        match row {
            Some(row) => balance_from_row(&row),
            None => Ok(Balance::empty()),
        }
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
