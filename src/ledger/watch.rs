//! Live balances (WatchBalance): the watched users of this process, the latest balance of each,
//! and the one listener that hears every ledger process's commits.
//!
//! Every batch that moves accounts announces their user ids from its own transaction
//! (`store::notify`), so the announcement arrives only after the commit, in every process that
//! listens. Here one task listens; for a watched user it re-reads the balance through the
//! ordinary read path (`Ledger::balance`, whose queries start after the announcement arrived,
//! so they see the commit: reader.rs) and publishes it on that user's `tokio::sync::watch`
//! channel. A watch channel holds only the newest value, so a watcher that reads slowly skips
//! what it missed and gets the latest; and a value is published only when its version (`seq`,
//! the account's journal row count, then `updated_at` for hold changes, which write no journal
//! row: see [`version`]) is above the one published, so no watcher ever sees an older balance
//! after a newer one, whichever of two concurrent reads finishes first.
//!
//! Batches announce only accounts some process watches (`store::notify`, migration 0013): a
//! user's first watcher here leases the account before its first read, and a task renews the
//! leases of the users watched here.
//!
//! Announcements made while the listener is disconnected are lost: when it reconnects, every
//! watched user is re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Ledger;
use crate::domain::{Balance, UserId};
use crate::error::LedgerError;
use crate::store::notify::{BalanceListener, Heard};

/// Default time without a change after which a watcher gets a heartbeat.
pub const WATCH_HEARTBEAT_DEFAULT: Duration = Duration::from_secs(15);
/// Default most watchers one process serves; past it WatchBalance is RESOURCE_EXHAUSTED.
/// Each costs a task, a stream and a slot in a map: about a few KiB.
pub const WATCHERS_MAX_DEFAULT: usize = 10_000;
/// Default most watchers of one user in one process (a user's open browser tabs and devices);
/// past it RESOURCE_EXHAUSTED, so one user cannot take the process's whole allowance.
pub const WATCHERS_PER_USER_MAX_DEFAULT: usize = 16;

/// First wait before the listener reconnects; doubled up to [`RECONNECT_WAIT_MAX`].
const RECONNECT_WAIT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often the leases of the users watched here are renewed (each statement renews only those
/// near their end: `store::notify::WATCH_LEASE_RENEW_BELOW`).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(30);
/// Wait before a failed re-read of a watched user is tried again.
const REREAD_RETRY_WAIT: Duration = Duration::from_millis(250);

/// WatchBalance settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    pub heartbeat: Duration,
    pub watchers_max: usize,
    pub watchers_per_user_max: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            heartbeat: WATCH_HEARTBEAT_DEFAULT,
            watchers_max: WATCHERS_MAX_DEFAULT,
            watchers_per_user_max: WATCHERS_PER_USER_MAX_DEFAULT,
        }
    }
}

/// The watched users of this process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watch {
    hub: Arc<Hub>,
}

#[derive(Debug)]
struct Hub {
    ledger: Ledger,
    config: WatchConfig,
    users: Mutex<Users>,
    /// `true` once the server shuts down: every watcher ends.
    stop: watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct Users {
    watched: HashMap<String, Watched>,
    /// Watchers of every user.
    watchers: usize,
}

#[derive(Debug)]
struct Watched {
    user_id: UserId,
    /// The newest balance read (`None` until the first read).
    latest: watch::Sender<Option<Balance>>,
    watchers: usize,
    reread: Reread,
    /// The account is leased as watched (it may not have existed when the first watcher came).
    leased: bool,
}

/// Whether a re-read of a user is running, and whether another must follow it (a change was
/// announced after it started): at most one runs per user, however many changes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    Idle,
    Running,
    RunAgain,
}

/// What a watcher gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A balance newer than any the watcher was given (or resumed after): a higher seq, or the
    /// same seq with holds changed.
    Changed(Balance),
    /// Nothing changed for a heartbeat interval; the latest balance.
    Heartbeat(Balance),
    /// The server is shutting down.
    ShuttingDown,
}

impl Watch {
    /// Starts the listener on the current runtime. It stops, and every watcher ends, when `stop`
    /// becomes `true`.
    pub fn start(ledger: Ledger, config: WatchConfig, stop: watch::Receiver<bool>) -> Self {
        let listener = ledger.store().balance_listener();
        let hub = Arc::new(Hub {
            ledger,
            config,
            users: Mutex::default(),
            stop,
        });
        tokio::spawn(listen(hub.clone(), listener));
        tokio::spawn(renew_leases(hub.clone()));
        Self { hub }
    }

    /// Watches `user_id`: refused past the limits; otherwise the watcher's first event is the
    /// current balance (when its seq is above `after_seq`), read after the watcher was
    /// registered, so it includes every change acknowledged before this call.
    pub async fn subscribe(&self, user_id: UserId, after_seq: i64) -> Result<Watcher, LedgerError> {
        let latest = self.hub.register(&user_id)?;
        let mut watcher = Watcher {
            hub: self.hub.clone(),
            user: user_id.as_str().to_string(),
            latest,
            // Resuming from 0 means nothing was seen: even a new account's empty balance (seq 0)
            // is sent.
            after_seq: if after_seq == 0 { -1 } else { after_seq },
            sent: None,
            first: true,
            heartbeat_at: Instant::now() + self.hub.config.heartbeat,
            stop: self.hub.stop.clone(),
        };
        // Leased before the read: a batch that commits after the read announces the change.
        self.hub.lease(&user_id).await?;
        let balance = self.hub.ledger.balance(&user_id).await?;
        self.hub.publish(user_id.as_str(), balance);
        watcher.heartbeat_at = Instant::now() + self.hub.config.heartbeat;
        Ok(watcher)
    }
}

impl Hub {
    fn users(&self) -> MutexGuard<'_, Users> {
        // A panic while the lock was held left plain counters and channels: still usable.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new watcher of `user_id` against the limits.
    fn register(&self, user_id: &UserId) -> Result<watch::Receiver<Option<Balance>>, LedgerError> {
        let mut users = self.users();
        if users.watchers >= self.config.watchers_max {
            return Err(LedgerError::ResourceExhausted(
                "this server has as many balance watchers as it allows: retry later or elsewhere",
            ));
        }
        let of_user = users
            .watched
            .get(user_id.as_str())
            .map_or(0, |w| w.watchers);
        if of_user >= self.config.watchers_per_user_max {
            return Err(LedgerError::ResourceExhausted(
                "this user has as many balance watchers on this server as it allows: close one first",
            ));
        }
        let watched = users
            .watched
            .entry(user_id.as_str().to_string())
            .or_insert_with(|| Watched {
                user_id: user_id.clone(),
                latest: watch::Sender::new(None),
                watchers: 0,
                reread: Reread::Idle,
                leased: false,
            });
        watched.watchers += 1;
        let latest = watched.latest.subscribe();
        users.watchers += 1;
        crate::metrics::watchers(users.watchers);
        Ok(latest)
    }

    fn unregister(&self, user: &str) {
        let mut users = self.users();
        if let Some(watched) = users.watched.get_mut(user) {
            watched.watchers -= 1;
            if watched.watchers == 0 {
                users.watched.remove(user);
            }
            users.watchers -= 1;
            crate::metrics::watchers(users.watchers);
        }
    }

    /// Leases the user's account as watched (see `Store::lease_watched`), and remembers whether
    /// it had one to lease.
    async fn lease(&self, user_id: &UserId) -> Result<(), LedgerError> {
        let store = self.ledger.store();
        if store.lease_watched(&[user_id.as_str()], false).await? > 0 {
            if let Some(watched) = self.users().watched.get_mut(user_id.as_str()) {
                watched.leased = true;
            }
        }
        Ok(())
    }

    /// Publishes `balance` to the user's watchers if it is newer than what they have.
    fn publish(&self, user: &str, balance: Balance) {
        let users = self.users();
        if let Some(watched) = users.watched.get(user) {
            watched.latest.send_if_modified(|latest| match latest {
                Some(old) if version(old) >= version(&balance) => false,
                _ => {
                    *latest = Some(balance);
                    true
                }
            });
        }
    }

    /// Has the watched ones among `users` re-read.
    fn changed<'a>(self: &Arc<Self>, users: impl IntoIterator<Item = &'a str>) {
        let mut watched_users = self.users();
        for user in users {
            let Some(watched) = watched_users.watched.get_mut(user) else {
                continue;
            };
            match watched.reread {
                Reread::Idle => {
                    watched.reread = Reread::Running;
                    tokio::spawn(reread(self.clone(), watched.user_id.clone()));
                }
                Reread::Running => watched.reread = Reread::RunAgain,
                Reread::RunAgain => {}
            }
        }
    }

    /// Has every watched user re-read (after announcements may have been lost).
    fn changed_all(self: &Arc<Self>) {
        let users: Vec<String> = self.users().watched.keys().cloned().collect();
        self.changed(users.iter().map(String::as_str));
    }
}

/// Renews the leases of the users watched here until the server stops.
async fn renew_leases(hub: Arc<Hub>) {
    let mut stop = hub.stop.clone();
    let mut ticker = tokio::time::interval(LEASE_RENEW_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        let users: Vec<String> = hub.users().watched.keys().cloned().collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        if let Err(err) = hub.ledger.store().lease_watched(&users, true).await {
            tracing::warn!(error = %err.chain(), "renewing watched accounts' leases failed; retrying next interval");
        }
    }
}

/// Re-reads one watched user until no change is pending and publishes what it read; ends as
/// soon as nobody watches the user. An account announced before it was leased (the batch that
/// created it announced it) is leased before it is read, so its next changes are announced too.
async fn reread(hub: Arc<Hub>, user_id: UserId) {
    loop {
        let Some(leased) = hub.users().watched.get(user_id.as_str()).map(|w| w.leased) else {
            return;
        };
        let read = async {
            if !leased {
                hub.lease(&user_id).await?;
            }
            hub.ledger.balance(&user_id).await
        }
        .await;
        let failed = match read {
            Ok(balance) => {
                hub.publish(user_id.as_str(), balance);
                false
            }
            Err(err) => {
                tracing::warn!(user_id = %user_id, error = %err.chain(), "re-reading a watched balance failed; retrying");
                tokio::time::sleep(REREAD_RETRY_WAIT).await;
                true
            }
        };
        let mut users = hub.users();
        let Some(watched) = users.watched.get_mut(user_id.as_str()) else {
            return;
        };
        match watched.reread {
            Reread::RunAgain => watched.reread = Reread::Running,
            _ if failed => {}
            _ => {
                watched.reread = Reread::Idle;
                return;
            }
        }
    }
}

/// Orders an account's states: by `seq`, the journal row count; then, for changes that write
/// no journal row (a hold placed, extended or released), by `updated_at`, which every move of
/// the account sets to the batch's clock read after the account's lock was taken, so a later
/// move always has a later time. A value read earlier never has a higher version than one read
/// after it.
type Version = (i64, Option<chrono::DateTime<chrono::Utc>>);

fn version(b: &Balance) -> Version {
    (b.transaction_count, b.updated_at)
}

/// Resolves once `stop` is `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The listener: (re)connects, re-reads every watched user after each (re)connection, and
/// hands every announcement to the hub, until the server stops.
async fn listen(hub: Arc<Hub>, mut listener: BalanceListener) {
    let mut stop = hub.stop.clone();
    let mut wait = RECONNECT_WAIT_MIN;
    let mut lost = false;
    'connect: loop {
        let connected = tokio::select! {
            () = stopped(&mut stop) => break 'connect,
            connected = listener.connect() => connected,
        };
        if let Err(err) = connected {
            if !lost {
                tracing::warn!(error = %err, "the balance listener cannot connect; watchers wait for it");
                lost = true;
            }
            tokio::select! {
                () = stopped(&mut stop) => break 'connect,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RECONNECT_WAIT_MAX);
            continue;
        }
        if std::mem::take(&mut lost) {
            tracing::info!("the balance listener is back: re-reading every watched balance");
        }
        wait = RECONNECT_WAIT_MIN;
        hub.changed_all();
        loop {
            let heard = tokio::select! {
                () = stopped(&mut stop) => break 'connect,
                heard = listener.next() => heard,
            };
            match heard {
                Heard::Changed(users) => {
                    crate::metrics::watch_notification();
                    hub.changed(users.iter().map(String::as_str));
                }
                Heard::Lost => {
                    tracing::warn!("the balance listener lost its connection; reconnecting");
                    lost = true;
                    continue 'connect;
                }
            }
        }
    }
    listener.close().await;
}

/// One WatchBalance call's subscription; dropping it stops watching.
#[derive(Debug)]
pub struct Watcher {
    hub: Arc<Hub>,
    user: String,
    latest: watch::Receiver<Option<Balance>>,
    /// The watcher's first balance is sent only if its seq is above this.
    after_seq: i64,
    /// The version of the newest balance the watcher was given (or, resuming, had already seen).
    sent: Option<Version>,
    /// The current balance has not been looked at yet.
    first: bool,
    heartbeat_at: Instant,
    stop: watch::Receiver<bool>,
}

impl Watcher {
    /// The next thing to send: a newer balance, a heartbeat, or the end.
    pub async fn next(&mut self) -> WatchEvent {
        let heartbeat = self.hub.config.heartbeat;
        loop {
            if std::mem::take(&mut self.first) {
                if let Some(event) = self.newer() {
                    return event;
                }
            }
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return WatchEvent::ShuttingDown,
                changed = self.latest.changed() => {
                    if changed.is_err() {
                        return WatchEvent::ShuttingDown;
                    }
                    if let Some(event) = self.newer() {
                        return event;
                    }
                }
                () = tokio::time::sleep_until(self.heartbeat_at) => {
                    self.heartbeat_at = Instant::now() + heartbeat;
                    let latest = self.latest.borrow().clone().unwrap_or_else(Balance::empty);
                    return WatchEvent::Heartbeat(latest);
                }
            }
        }
    }

    /// The latest balance, if the watcher has not had it (or a newer one) yet.
    fn newer(&mut self) -> Option<WatchEvent> {
        let latest = self.latest.borrow_and_update().clone()?;
        let now = version(&latest);
        match self.sent {
            // A resumed watcher has seen everything up to its seq. (A hold changed since, at the
            // same seq, shows in the next heartbeat, which carries the latest figures.)
            None if latest.transaction_count <= self.after_seq => {
                self.sent = Some(now);
                return None;
            }
            Some(sent) if now <= sent => return None,
            _ => {}
        }
        self.sent = Some(now);
        self.heartbeat_at = Instant::now() + self.hub.config.heartbeat;
        Some(WatchEvent::Changed(latest))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.unregister(&self.user);
    }
}
