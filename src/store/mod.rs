//! The PostgreSQL store: every SQL statement the ledger runs lives here, and nothing else does.
//!
//! Writes are applied in batches (`batch`): load what the batch needs under its locks, let the
//! ledger's rules (`ledger::rules::evaluate`) decide, persist what they staged, all in one
//! transaction. Reads (balance, history, accounts, lookups, verify) are single statements
//! (`read`). Database errors become ledger errors in one place (`error`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgConnection, PgPool, Postgres, Row};
use tokio::sync::Notify;

use crate::domain::{Balance, Totals, UserId};
use crate::error::LedgerError;

mod alerts;
mod balances;
mod batch;
mod credit;
mod error;
pub mod hosts;
mod joined;
pub mod notify;
mod prices;
mod read;
mod reports;

pub use batch::BatchOutcome;
pub use credit::{Clock, WalletQuery};

/// While the database is known to be down, how long a call may wait for a connection before it
/// is answered UNAVAILABLE (instead of the whole pool-acquire timeout).
pub const DOWN_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(100);

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
    /// Where the pool connects, for messages: the URL with its password replaced by `***`.
    target: Arc<str>,
    availability: Arc<Availability>,
    clock: Arc<Clock>,
    holds_per_account_max: i64,
    /// How long before a lot expires a `credits_expiring` alert is written; `None`: never.
    alert_expiring_window: Option<chrono::Duration>,
    /// Every price version, for batches that price usage (shared by clones).
    prices: Arc<prices::PriceCache>,
    /// The hosts of a multi-host DATABASE_URL and which one the pools use; `None` for one host.
    failover: Option<Arc<hosts::Failover>>,
}

/// A pooled connection idle at least this long is pinged before a call gets it (sqlx's
/// `test_before_acquire` pings every one, a round trip of its own on every call's path).
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);
/// For this long after the store lost the database (or saw it answer again), every connection
/// is pinged before use, whatever its idle time: connections of before the loss may be dead.
pub const PING_AFTER_TROUBLE: Duration = Duration::from_secs(30);
/// How long a call waits for a connection before it has the health watcher probe the database.
pub const SLOW_ACQUIRE: Duration = Duration::from_millis(200);

/// How long a probe may take to answer `SELECT 1` (connecting included) before the database
/// counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks the database `SELECT 1` on a connection of its own, so a pool full of busy writers (a
/// wedged table, a load spike) never reads as an outage, and a database that stopped answering
/// does, after [`PROBE_TIMEOUT`].
#[derive(Debug)]
pub struct Probe {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    /// With a multi-host URL: the question is whether the current host still qualifies (in
    /// read-write mode, is not in recovery), and when it does not, the probe searches the hosts
    /// and switches the pools to the one that does.
    failover: Option<Arc<hosts::Failover>>,
}

impl Probe {
    /// Whether the database answered within [`PROBE_TIMEOUT`] (with several hosts: whether one
    /// that qualifies answered, the pools now pointing at it).
    pub async fn answers(&mut self) -> bool {
        let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => self.conn.insert(self.options.connect().await?),
            };
            match &self.failover {
                Some(failover) => failover.still_qualifies(conn).await,
                None => sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .map(|_| true),
            }
        })
        .await;
        if matches!(answered, Ok(Ok(true))) {
            return true;
        }
        // A connection that failed, hung or reached a standby is not trusted again.
        self.conn = None;
        let Some(failover) = &self.failover else {
            return false;
        };
        match failover.search().await {
            Ok((index, conn)) => {
                failover.switch_to(index);
                self.options = failover.current_options();
                self.conn = Some(conn);
                true
            }
            Err(why) => {
                tracing::debug!(%why, "no database host to switch to yet");
                false
            }
        }
    }
}

/// What the store last saw of the database: up, or down since a call lost its connection.
/// Shared by every clone of a store and by the health watcher, which a loss wakes at once.
#[derive(Debug)]
pub struct Availability {
    down: AtomicBool,
    /// Milliseconds after `since` of the last loss or recovery, plus one (0: never).
    troubled_at: AtomicU64,
    since: Instant,
    /// Wakes the health watcher to probe now (one waiter, a stored permit).
    probe_now: Notify,
    /// Wakes every call waiting for a connection, so they fail fast too.
    waiting: Notify,
}

impl Default for Availability {
    fn default() -> Self {
        Self {
            down: AtomicBool::new(false),
            troubled_at: AtomicU64::new(0),
            since: Instant::now(),
            probe_now: Notify::new(),
            waiting: Notify::new(),
        }
    }
}

impl Availability {
    /// Whether the database was lost or came back within [`PING_AFTER_TROUBLE`].
    pub fn recently_troubled(&self) -> bool {
        match self.troubled_at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let at = Duration::from_millis(at - 1);
                self.since.elapsed().saturating_sub(at) < PING_AFTER_TROUBLE
            }
        }
    }

    fn troubled(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.troubled_at.store(now + 1, Ordering::Relaxed);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Records that a call lost the database; wakes the watcher on the first loss.
    pub fn mark_down(&self) {
        self.troubled();
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("lost the database: calls fail fast until it answers again");
            self.probe_now.notify_one();
            self.waiting.notify_waiters();
        }
    }

    /// Records that the database answered.
    pub fn mark_up(&self) {
        // Load first: every call passes here, and a plain load keeps the cache line shared.
        if self.is_down() && self.down.swap(false, Ordering::Relaxed) {
            self.troubled();
            tracing::info!("the database answers again");
        }
    }

    /// Asks the watcher to probe now: a call has waited unusually long for a connection.
    pub fn suspect(&self) {
        self.probe_now.notify_one();
    }

    /// Resolves when a call lost the database or suspects it (at once if one did since the
    /// last wait).
    pub async fn probe_wanted(&self) {
        self.probe_now.notified().await
    }
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so the server can start (and
    /// report NOT_SERVING) while the database is still coming up.
    /// A URL listing several hosts (libpq's `h1:p1,h2:p2` form) is handled by [`hosts`].
    pub fn connect_lazy(config: &StoreConfig) -> Result<Self, LedgerError> {
        let availability = Arc::<Availability>::default();
        let troubled = Arc::clone(&availability);
        // sqlx pings every connection it hands out (and again when it takes one back, which no
        // option turns off, but off the call's path): here only one idle a while, or any while
        // the database was recently lost, since then a connection may be dead. Under load a call
        // gets a connection without a round trip of its own (`GetBalance` makes one, not two).
        let ping: hosts::PingWhen =
            Arc::new(move |meta| meta.idle_for >= PING_IDLE_AFTER || troubled.recently_troubled());
        let options = PgPoolOptions::new()
            .max_connections(config.pool_connections_max)
            .acquire_timeout(config.pool_acquire_timeout)
            .test_before_acquire(false);
        let (pool, failover) =
            hosts::pool_for(&config.database_url, options, "token-ledger", Some(ping))
                .map_err(|e| LedgerError::internal(anyhow::anyhow!("parsing DATABASE_URL: {e}")))?;
        Ok(Self {
            target: redact_url(&config.database_url).into(),
            failover,
            availability,
            ..Self::from_pool(pool)
        })
    }

    /// A pool of its own (the LISTEN connection, the webhook's lane) to the database the store
    /// uses, with the ledger pool's connect options under another application name; with
    /// several hosts it switches host along with the ledger's pool.
    pub fn side_pool(&self, options: PgPoolOptions, application_name: &str) -> PgPool {
        match &self.failover {
            Some(failover) => failover.pool(options, application_name, None),
            None => options.connect_lazy_with(
                (*self.pool.connect_options())
                    .clone()
                    .application_name(application_name),
            ),
        }
    }

    /// With several hosts, finds the one to use now and points the pools at it; with one host,
    /// does nothing (the pool connects on first use, as it always did).
    pub async fn choose_host(&self) -> anyhow::Result<()> {
        let Some(failover) = &self.failover else {
            return Ok(());
        };
        let (index, conn) = failover.search().await.map_err(|why| {
            anyhow::anyhow!("cannot connect to PostgreSQL at {}: {why}", self.target)
        })?;
        let _ = sqlx::Connection::close(conn).await;
        failover.switch_to(index);
        tracing::debug!(host = %failover.current_label(), "database host chosen");
        Ok(())
    }

    pub fn from_pool(pool: PgPool) -> Self {
        let options = pool.connect_options();
        let target = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        Self {
            target: target.into(),
            pool,
            availability: Arc::default(),
            clock: Arc::default(),
            holds_per_account_max: crate::domain::HOLDS_PER_ACCOUNT_DEFAULT,
            alert_expiring_window: None,
            prices: Arc::default(),
            failover: None,
        }
    }

    /// The ledger's clock (the database's, plus an offset only tests move).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Sets the most active holds one account may have.
    pub fn with_holds_per_account_max(mut self, max: i64) -> Self {
        self.holds_per_account_max = max.max(1);
        self
    }

    /// Writes a `credits_expiring` alert when a lot's remaining tokens are `window` from expiring.
    pub fn with_alert_expiring_window(mut self, window: Option<chrono::Duration>) -> Self {
        self.alert_expiring_window = window;
        self
    }

    pub fn alert_expiring_window(&self) -> Option<chrono::Duration> {
        self.alert_expiring_window
    }

    pub fn holds_per_account_max(&self) -> i64 {
        self.holds_per_account_max
    }

    pub fn availability(&self) -> &Arc<Availability> {
        &self.availability
    }

    /// A connection from the pool. While the database is known to be down, waits at most
    /// [`DOWN_ACQUIRE_TIMEOUT`] (a connection that comes back in that time is taken: recovery
    /// needs no watcher).
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let fail_fast = || async {
            tokio::time::timeout(DOWN_ACQUIRE_TIMEOUT, self.pool.acquire())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        };
        // Registered before the check, so a loss between the two still wakes this call.
        let went_down = self.availability.waiting.notified();
        let acquired = if self.availability.is_down() {
            fail_fast().await
        } else {
            let acquiring = self.pool.acquire();
            tokio::pin!(acquiring, went_down);
            let slow = tokio::time::sleep(SLOW_ACQUIRE);
            tokio::select! {
                acquired = &mut acquiring => acquired,
                () = &mut went_down => fail_fast().await,
                () = slow => {
                    // A database that stopped answering shows here first: have it probed now
                    // rather than at the next ping, and keep waiting.
                    self.availability.suspect();
                    tokio::select! {
                        acquired = acquiring => acquired,
                        () = went_down => fail_fast().await,
                    }
                }
            }
        };
        match acquired {
            Ok(conn) => {
                self.availability.mark_up();
                Ok(conn)
            }
            Err(err) => Err(self.saw(err)),
        }
    }

    /// Passes `err` through, marking the database down when it says the connection is gone.
    pub(crate) fn saw(&self, err: sqlx::Error) -> sqlx::Error {
        if error::is_connection_lost(&err) {
            self.availability.mark_down();
        }
        err
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where the store connects (password redacted), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Applies pending migrations. A database that cannot be reached is reported once, naming
    /// it: the pool alone would only say that it timed out waiting for a connection.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.connect_once().await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|err| anyhow::anyhow!("{}", crate::error::one_line(&err)))
    }

    /// Opens one connection outside the pool, within the pool's acquire timeout, so a failure
    /// carries its real cause (refused, unknown host, bad password).
    pub async fn connect_once(&self) -> anyhow::Result<()> {
        if self.failover.is_some() {
            return self.choose_host().await;
        }
        let timeout = self.pool.options().get_acquire_timeout();
        let failure =
            match tokio::time::timeout(timeout, self.pool.connect_options().connect()).await {
                Ok(Ok(conn)) => {
                    let _ = sqlx::Connection::close(conn).await;
                    return Ok(());
                }
                Ok(Err(err)) => crate::error::one_line(&err),
                Err(_) => format!("no answer within {timeout:?}"),
            };
        anyhow::bail!("cannot connect to PostgreSQL at {}: {failure}", self.target)
    }

    /// A probe of the database on a connection of its own, outside the pool.
    pub fn probe(&self) -> Probe {
        Probe {
            options: (*self.pool.connect_options()).clone(),
            conn: None,
            failover: self.failover.clone(),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One indexed row read, however long the account's history, while nothing of the account
    /// is due; past its settle instant (a lot expired, a hold lapsed, not yet swept) the row's
    /// figures are corrected from its lots and holds, so an expired lot is never counted.
    pub async fn balance(&self, user_id: &UserId) -> Result<Balance, LedgerError> {
        let mut conn = self.read_connection().await?;
        let balance = async {
            let row = sqlx::query(BALANCE_SQL)
                .bind(user_id.as_str())
                .bind(self.clock.offset_micros())
                .fetch_optional(&mut *conn.conn)
                .await
                .map_err(|e| self.saw(e))?;
            let Some(row) = row else {
                return Ok(Balance::empty());
            };
            let due: bool = row.try_get("due")?;
            if !due {
                return balance_from_row(&row);
            }
            self.settled_balance(&mut conn.conn, user_id)
                .await
                .map_err(|e| self.saw(e).into())
        }
        .await;
        conn.finish();
        balance
    }

    /// A connection for a read whose caller may give it up mid-query (see [`ReadConnection`]).
    pub(crate) async fn read_connection(&self) -> Result<ReadConnection, sqlx::Error> {
        Ok(ReadConnection {
            conn: self.acquire().await?,
            finished: false,
        })
    }
}

/// A pooled connection for a read that may be given up mid-query (its callers' deadline passed).
/// Dropped before `finish`, it is closed (sqlx bounds that to 5 s) instead of returned to the
/// pool: sqlx pings a returned connection without a time limit, which on a connection that went
/// silent would hold its pool slot for good.
pub(crate) struct ReadConnection {
    pub conn: PoolConnection<Postgres>,
    finished: bool,
}

impl ReadConnection {
    /// The read is over: the connection goes back to the pool.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for ReadConnection {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// The columns GetBalance shows, and whether the account must be settled first.
macro_rules! balance_columns {
    () => {
        "user_id, balance, granted_total, deducted_total, purchased_total, dripped_total, \
         used_total, reversed_total, expired_total, updated_at, last_seq, held, settle_at, \
         next_expiry_at, next_expiry_tokens, \
         (settle_at <= now() + $2::bigint * interval '1 microsecond') IS TRUE AS due"
    };
}

pub(crate) const BALANCE_SQL: &str = concat!(
    "SELECT ",
    balance_columns!(),
    " FROM accounts WHERE user_id = $1"
);
pub(crate) const BALANCES_SQL: &str = concat!(
    "SELECT ",
    balance_columns!(),
    " FROM accounts WHERE user_id = ANY($1)"
);

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
            expired: row.try_get("expired_total")?,
        },
        updated_at: Some(row.try_get("updated_at")?),
        transaction_count: row.try_get("last_seq")?,
        held: row.try_get("held")?,
        next_expiry: row
            .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("next_expiry_at")?
            .map(|at| Ok::<_, sqlx::Error>((at, row.try_get("next_expiry_tokens")?)))
            .transpose()?,
        settle_at: row.try_get("settle_at")?,
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

/// `url` with the password of its user info, and any `password=` parameter, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

#[cfg(test)]
mod availability_tests {
    use super::Availability;

    #[test]
    fn a_loss_and_a_recovery_each_start_the_window_where_every_connection_is_pinged() {
        let a = Availability::default();
        assert!(!a.recently_troubled(), "never lost");
        a.mark_up();
        assert!(!a.recently_troubled(), "answering all along is no recovery");
        a.mark_down();
        assert!(a.is_down() && a.recently_troubled());
        a.mark_up();
        assert!(!a.is_down() && a.recently_troubled());
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn a_password_never_survives_redaction() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/ledger?sslmode=require&password=x"),
            "postgres://bob:***@db:5432/ledger?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://bob@db/ledger"),
            "postgres://bob@db/ledger"
        );
    }
}
