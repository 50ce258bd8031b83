//! Balance-change notifications between ledger processes: what a committing batch tells
//! PostgreSQL (`NOTIFY ledger_balance`, sent by the batch's own transaction, so only at commit
//! and only if it commits), and the one `LISTEN` connection per process that hears it.
//!
//! A payload is a JSON array of the moved accounts' user ids (JSON, so ids with commas or quotes
//! need no escaping scheme of our own). A batch sends one notification; only a batch whose ids
//! do not fit in PostgreSQL's payload limit sends several. It names only accounts some process
//! watches, which it knows by their lease (`watched_until`, migration 0013, set here), and
//! accounts it created; a batch with none sends nothing.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::Store;
use crate::error::LedgerError;

/// The channel every balance change is announced on.
pub const BALANCE_CHANNEL: &str = "ledger_balance";

/// How long a lease on a watched account lasts: a process that dies while watching costs
/// notifications for at most this long.
pub const WATCH_LEASE: Duration = Duration::from_secs(300);
/// A lease with less than this left is renewed; with more, renewing it is a no-op.
pub const WATCH_LEASE_RENEW_BELOW: Duration = Duration::from_secs(240);
/// Most accounts one lease statement renews, so no statement holds many row locks at once.
pub const WATCH_LEASE_ACCOUNTS_MAX: usize = 500;

/// After this long with nothing heard, the listener asks its connection `SELECT 1`: a connection
/// that went silent (a peer gone without a reset, a network that drops packets) is otherwise
/// never noticed, and its watchers would wait for changes that never come.
pub const LISTEN_IDLE_PING: Duration = Duration::from_secs(15);
/// How long that `SELECT 1` may take before the connection counts as lost.
pub const LISTEN_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest payload one notification carries. PostgreSQL refuses 8,000 bytes and more.
pub const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_999;

/// The payloads announcing `user_ids`: JSON arrays, each at most [`NOTIFY_PAYLOAD_BYTES_MAX`]
/// bytes, as few as fit (one for any ordinary batch). Empty when no id is given.
pub fn balance_payloads<'a>(user_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::from("[");
    for id in user_ids {
        let quoted = serde_json::Value::from(id).to_string();
        // One more id, its comma and the closing bracket.
        if current.len() > 1 && current.len() + 1 + quoted.len() + 1 > NOTIFY_PAYLOAD_BYTES_MAX {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&quoted);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    payloads
}

/// The user ids a payload announces; `None` for a payload this version did not write.
pub fn parse_balance_payload(payload: &str) -> Option<Vec<String>> {
    serde_json::from_str(payload).ok()
}

/// What the listener heard.
#[derive(Debug)]
pub enum Heard {
    /// Balances of these users changed (their transactions have committed).
    Changed(Vec<String>),
    /// The connection was lost: whatever was announced until it is back is never heard.
    Lost,
}

/// One `LISTEN ledger_balance` connection, on a one-connection pool of its own so it never
/// takes a connection the ledger's calls need.
#[derive(Debug)]
pub struct BalanceListener {
    /// Makes the listener's pool (one that follows a failover to another host).
    store: Store,
    pool: PgPool,
    listener: Option<PgListener>,
    idle_ping: Duration,
    ping_timeout: Duration,
}

/// The listener's one-connection pool.
fn listener_pool(store: &Store) -> PgPool {
    store.side_pool(
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5)),
        "token-ledger-listen",
    )
}

impl Store {
    /// Leases `user_ids`' accounts as watched for [`WATCH_LEASE`] (with `renewal`, only those
    /// with less than [`WATCH_LEASE_RENEW_BELOW`] left). A user with no account yet has nothing
    /// to lease: the batch that creates it announces it. Each leased row is updated, which waits
    /// for a batch holding its lock, so every batch that commits a change to these accounts after
    /// this returns announces it. Rows are locked in user-id order, the batches' order, so this
    /// never deadlocks with them. Answers how many accounts it leased.
    pub async fn lease_watched(
        &self,
        user_ids: &[&str],
        renewal: bool,
    ) -> Result<u64, LedgerError> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let mut leased = 0;
        for chunk in user_ids.chunks(WATCH_LEASE_ACCOUNTS_MAX) {
            let mut conn = self.acquire().await?;
            let done = sqlx::query(
                "UPDATE accounts a SET watched_until = now() + $2::bigint * interval '1 microsecond' \
                 FROM (SELECT account_id FROM accounts WHERE user_id = ANY($1) \
                         AND (NOT $4 OR watched_until IS NULL \
                              OR watched_until < now() + $3::bigint * interval '1 microsecond') \
                         ORDER BY user_id FOR UPDATE) AS w \
                 WHERE a.account_id = w.account_id",
            )
            .bind(chunk)
            .bind(micros(WATCH_LEASE))
            .bind(micros(WATCH_LEASE_RENEW_BELOW))
            .bind(renewal)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.saw(e))?;
            leased += done.rows_affected();
        }
        Ok(leased)
    }

    /// A listener for balance changes (not yet connected: see [`BalanceListener::connect`]).
    pub fn balance_listener(&self) -> BalanceListener {
        BalanceListener {
            pool: listener_pool(self),
            store: self.clone(),
            listener: None,
            idle_ping: LISTEN_IDLE_PING,
            ping_timeout: LISTEN_PING_TIMEOUT,
        }
    }
}

impl BalanceListener {
    /// Sets how long the listener waits in silence before it pings its connection, and how long
    /// the ping may take (defaults [`LISTEN_IDLE_PING`], [`LISTEN_PING_TIMEOUT`]).
    pub fn with_keepalive(mut self, idle_ping: Duration, ping_timeout: Duration) -> Self {
        self.idle_ping = idle_ping;
        self.ping_timeout = ping_timeout;
        self
    }

    /// (Re)connects and listens. Announcements made before this returns may have been missed.
    pub async fn connect(&mut self) -> Result<(), sqlx::Error> {
        // The old listener, if any, gives its connection back (after an UNLISTEN) first.
        self.listener = None;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(BALANCE_CHANNEL).await?;
        self.listener = Some(listener);
        Ok(())
    }

    /// The next announcement, or `Lost` (after which `connect` must be called again).
    pub async fn next(&mut self) -> Heard {
        let Some(listener) = self.listener.as_mut() else {
            return Heard::Lost;
        };
        loop {
            let Ok(received) = tokio::time::timeout(self.idle_ping, listener.try_recv()).await
            else {
                // `try_recv` is cancel-safe (sqlx reads whole messages from its buffer), so
                // the wait can be cut short to ask whether the connection still answers.
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                if let Ok(Ok(_)) = tokio::time::timeout(self.ping_timeout, ping).await {
                    continue;
                }
                tracing::warn!(
                    silent_secs = (self.idle_ping + self.ping_timeout).as_secs(),
                    "the balance listener's connection stopped answering; reconnecting"
                );
                self.abandon();
                return Heard::Lost;
            };
            match received {
                Ok(Some(notification)) => match parse_balance_payload(notification.payload()) {
                    Some(users) => return Heard::Changed(users),
                    None => tracing::warn!(
                        payload_bytes = notification.payload().len(),
                        "ignoring a balance notification this version cannot read"
                    ),
                },
                Ok(None) => {
                    self.listener = None;
                    return Heard::Lost;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the balance listener failed");
                    self.listener = None;
                    return Heard::Lost;
                }
            }
        }
    }

    /// Drops a connection that stopped answering, and its pool: dropping a listener runs
    /// `UNLISTEN` on its connection before giving it back, which on a silent connection waits
    /// until the kernel gives up on it, and would hold the pool's one connection until then.
    fn abandon(&mut self) {
        self.listener = None;
        let old = std::mem::replace(&mut self.pool, listener_pool(&self.store));
        // Closed at once for new acquires (and so dropped from a failover's pool list); the
        // close itself completes when the silent connection finally fails.
        tokio::spawn(async move { old.close().await });
    }

    /// Closes the listener's connection.
    pub async fn close(mut self) {
        self.listener = None;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_commas_and_quotes_come_back_as_they_went() {
        let ids = ["a,b", "say \"hi\"", "plain", "ünï,cödé"];
        let payloads = balance_payloads(ids);
        assert_eq!(payloads.len(), 1);
        assert_eq!(parse_balance_payload(&payloads[0]).unwrap(), ids);
    }

    #[test]
    fn a_batch_over_the_payload_limit_is_split_and_nothing_is_lost() {
        let ids: Vec<String> = (0..2_000).map(|i| format!("user-{i:06},x")).collect();
        let payloads = balance_payloads(ids.iter().map(String::as_str));
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= NOTIFY_PAYLOAD_BYTES_MAX, "{}", p.len());
            back.extend(parse_balance_payload(p).unwrap());
        }
        assert_eq!(back, ids);
        // Full payloads: a split happens only when the next id would not fit.
        assert!(payloads[0].len() > NOTIFY_PAYLOAD_BYTES_MAX - 20);
    }

    #[test]
    fn no_ids_no_payload() {
        assert!(balance_payloads(std::iter::empty()).is_empty());
    }
}
