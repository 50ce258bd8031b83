//! The ledger: its rules (`rules`, pure), its write path (`writer`, group commit by writer tasks
//! that each own the accounts hashing to them) and its read path (balances, history pages,
//! accounts). Transport-free (no tonic, no HTTP) and SQL-free (the store runs the statements).

use std::sync::Arc;
use std::time::Duration;

use crate::cache::BalanceCache;
use crate::domain::{
    AccountOrder, AccountSummary, AlertEvent, AlertRule, Balance, EntryId, EntryKind, EntryLookup,
    FoundEntry, HistoryFilter, HoldState, JournalEntry, ModelPrice, NewPrice, Overdraft, Overview,
    OverviewQuery, Receipt, StripeEventFilter, StripeEventRow, Threshold, UsageQuery, UsageRow,
    UserId, VerifyReport, WriteCommand, USER_ID_LEN_MAX,
};
use crate::error::LedgerError;
use crate::store::{Store, WalletQuery};
use rules::{Hold, Lot};

mod paging;
mod reader;
pub mod rules;
pub mod sweeper;
pub mod watch;
mod writer;

pub use paging::STRIPE_EVENT_ID_LEN_MAX;
use paging::{
    decode_account_token, decode_offset_token, decode_page_token, decode_stripe_event_token,
    encode_account_token, encode_offset_token, encode_page_token, encode_stripe_event_token,
};
use reader::Readers;
pub use reader::{
    ReadConfig, READ_BATCH_MAX_DEFAULT, READ_BATCH_TIMEOUT_DEFAULT, READ_CONCURRENCY_DEFAULT,
    READ_QUEUE_MAX_DEFAULT,
};
use writer::{WriterConfig, Writers};

/// Page size when the caller asks for none.
pub const PAGE_SIZE_DEFAULT: i64 = 50;
/// Largest page ListTransactions returns; larger requests are clamped to it, so one call reads at
/// most this many rows.
pub const PAGE_SIZE_MAX: i64 = 500;

/// One page of a user's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<JournalEntry>,
    pub next_page_token: Option<String>,
}

/// How writes are grouped into transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteConfig {
    /// Most writes in one transaction. 1 gives one transaction per write (the baseline).
    pub batch_max: usize,
    /// Writes waiting for a writer, over all writers; when a writer's share is full, new writes
    /// for it get RESOURCE_EXHAUSTED at once rather than queueing without bound.
    pub queue_max: usize,
    /// Writers, each committing its own batches on its own connection. Accounts are split among
    /// them by a hash of the user id, so concurrent batches never wait on each other's account
    /// locks, and one account's writes stay in arrival order.
    pub writers: usize,
    /// How long a writer that found more than one write waiting keeps collecting before it
    /// commits. Never applied to a lone write, so an idle ledger adds no latency.
    pub linger: Duration,
    /// Keep balances in memory for GetBalance (see `cache`): only while this process is the only
    /// writer of its database.
    pub balance_cache: bool,
    /// How concurrent GetBalance calls share queries (see `reader`).
    pub read: ReadConfig,
}

impl Default for WriteConfig {
    fn default() -> Self {
        Self {
            batch_max: BATCH_MAX_DEFAULT,
            queue_max: QUEUE_MAX_DEFAULT,
            writers: WRITERS_DEFAULT,
            linger: Duration::from_micros(LINGER_US_DEFAULT),
            balance_cache: false,
            read: ReadConfig::default(),
        }
    }
}

/// Default most writes per transaction.
pub const BATCH_MAX_DEFAULT: usize = 512;
/// Default write queue bound.
pub const QUEUE_MAX_DEFAULT: usize = 16_384;
/// Default concurrent batches.
pub const WRITERS_DEFAULT: usize = 4;
/// Most balances the cache holds.
pub const BALANCE_CACHE_ENTRIES_MAX: usize = 1_000_000;
/// Default linger, in microseconds.
pub const LINGER_US_DEFAULT: u64 = 500;

/// The ledger: rules over a store. Cheap to clone; the writers stop when the last clone is
/// dropped, after finishing what was queued.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
    writers: Writers,
    readers: Readers,
    cache: Option<Arc<BalanceCache>>,
}

impl Ledger {
    pub fn new(store: Store) -> Self {
        Self::with_config(store, WriteConfig::default())
    }

    /// Starts `config.writers` writer tasks on the current runtime.
    pub fn with_config(store: Store, config: WriteConfig) -> Self {
        let writers = config.writers.max(1);
        let cache = config
            .balance_cache
            .then(|| Arc::new(BalanceCache::new(BALANCE_CACHE_ENTRIES_MAX)));
        let writer_config = WriterConfig {
            batch_max: config.batch_max.max(1),
            linger: config.linger,
            cache: cache.clone(),
        };
        let per_writer = config.queue_max / writers;
        Self {
            writers: Writers::start(&store, writers, per_writer, writer_config),
            readers: Readers::start(&store, config.read),
            store,
            cache,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies one write, or replays it.
    pub async fn write(&self, cmd: WriteCommand) -> Result<Receipt, LedgerError> {
        self.write_within(cmd, None).await
    }

    /// Like `write`, for a caller who stops waiting at `deadline`: if the write's batch has not
    /// started by then, the write is dropped (`DEADLINE_EXCEEDED`, nothing written).
    pub async fn write_within(
        &self,
        cmd: WriteCommand,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Receipt, LedgerError> {
        let overdraft = cmd.overdraft();
        let hold_write = cmd.kind() == EntryKind::Hold;
        let user = (cmd.details.hold_id().is_some() || hold_write).then(|| cmd.user_id.clone());
        let mut receipt = self.writers.submit(cmd, deadline)?.await?;
        if let (Some(user), None) = (user, receipt.held) {
            // A replayed hold write: its figures are the account's current ones.
            let now = self.store.balance(&user).await?;
            if hold_write {
                receipt.balance = now.balance;
            }
            receipt.held = Some(now.held);
            receipt.available = Some(now.available());
        }
        if !receipt.replayed && overdraft == Overdraft::Refused && receipt.balance < 0 {
            // The rules make this impossible; if it ever happens the transaction has committed,
            // so shout rather than hide it.
            tracing::error!(
                transaction_id = receipt.transaction_id.0,
                balance = receipt.balance,
                "invariant broken: a refused-overdraft write left a negative balance"
            );
        }
        Ok(receipt)
    }

    /// Several writes at once (TrackUsageBatch): all are queued before any is awaited, so they
    /// share batches. Each has its own result, in order.
    pub async fn write_many(&self, cmds: Vec<WriteCommand>) -> Vec<Result<Receipt, LedgerError>> {
        self.write_many_within(cmds, None).await
    }

    /// `write_many` with a deadline, as `write_within`.
    pub async fn write_many_within(
        &self,
        cmds: Vec<WriteCommand>,
        deadline: Option<tokio::time::Instant>,
    ) -> Vec<Result<Receipt, LedgerError>> {
        let submitted: Vec<_> = cmds
            .into_iter()
            .map(|cmd| self.writers.submit(cmd, deadline))
            .collect();
        let mut results = Vec::with_capacity(submitted.len());
        for s in submitted {
            results.push(match s {
                Ok(waiting) => waiting.await,
                Err(err) => Err(err),
            });
        }
        results
    }

    /// The owner of a hold (NOT_FOUND if there is no such hold).
    pub async fn hold_owner(&self, hold_id: EntryId) -> Result<String, LedgerError> {
        self.store
            .hold_owner(hold_id)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("hold {hold_id} does not exist")))
    }

    /// A user's holds, newest first (at most 1,000), as of the ledger's now: a hold past its
    /// expiry shows as expired even before the sweeper has written it.
    pub async fn holds(
        &self,
        user_id: &UserId,
        active_only: bool,
    ) -> Result<Vec<Hold>, LedgerError> {
        let query = WalletQuery {
            recent_holds: !active_only,
            ..WalletQuery::default()
        };
        let (mut wallet, now) = self.store.wallet(user_id, &query).await?;
        wallet.settle(now);
        let mut holds = wallet.holds;
        if active_only {
            holds.retain(|h| h.state == HoldState::Active);
        }
        holds.sort_by_key(|h| std::cmp::Reverse(h.hold_id));
        Ok(holds)
    }

    /// One hold of a user, as of the ledger's now.
    pub async fn hold(&self, user_id: &UserId, hold_id: EntryId) -> Result<Hold, LedgerError> {
        let query = WalletQuery {
            hold_ids: vec![hold_id.0],
            ..WalletQuery::default()
        };
        let (mut wallet, now) = self.store.wallet(user_id, &query).await?;
        wallet.settle(now);
        wallet
            .holds
            .into_iter()
            .find(|h| h.hold_id == hold_id.0)
            .ok_or_else(|| LedgerError::NotFound(format!("hold {hold_id} does not exist")))
    }

    /// A user's lots in burn order (the next debit takes from the first), as of the ledger's
    /// now: what has expired is shown expired even before the sweeper has written it.
    pub async fn lots(
        &self,
        user_id: &UserId,
        include_spent: bool,
    ) -> Result<Vec<Lot>, LedgerError> {
        let query = WalletQuery {
            include_spent,
            ..WalletQuery::default()
        };
        let (mut wallet, now) = self.store.wallet(user_id, &query).await?;
        wallet.settle(now);
        let mut lots = wallet.lots_in_burn_order();
        if !include_spent {
            lots.retain(|l| l.remaining > 0);
        }
        Ok(lots)
    }

    /// Writes waiting in the queue right now.
    pub fn queue_depth(&self) -> usize {
        self.writers.queue_depth()
    }

    pub async fn balance(&self, user_id: &UserId) -> Result<Balance, LedgerError> {
        self.balance_within(user_id, None).await
    }

    /// `balance` for a caller who stops waiting at `deadline`: a shared read query is given up
    /// once every caller it answers has stopped waiting (see `reader`).
    pub async fn balance_within(
        &self,
        user_id: &UserId,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Balance, LedgerError> {
        let Some(cache) = &self.cache else {
            return self.readers.balance(user_id, deadline).await;
        };
        if let Some(balance) = cache.get(user_id.as_str()) {
            // Kept only until something of the account expires or lapses by itself.
            let now = self.store.clock().now();
            if balance.settle_at.is_none_or(|t| now < t) {
                return Ok(balance);
            }
        }
        let balance = self.store.balance(user_id).await?;
        cache.offer(user_id.as_str(), balance.clone());
        Ok(balance)
    }

    /// One page of history, newest first. `page_size` 0 means the default; larger than the maximum
    /// is clamped.
    pub async fn history(
        &self,
        user_id: &UserId,
        page_size: i32,
        page_token: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryPage, LedgerError> {
        let limit = page_limit(page_size)?;
        let before_seq = decode_page_token(page_token)?;
        // One row more than asked tells whether another page exists.
        let mut entries = self
            .store
            .history(user_id, before_seq, limit + 1, filter)
            .await?;
        let next_page_token = if entries.len() as i64 > limit {
            entries.truncate(limit as usize);
            entries.last().map(|e| encode_page_token(e.seq))
        } else {
            None
        };
        Ok(HistoryPage {
            entries,
            next_page_token,
        })
    }

    /// One page of accounts for the admin page.
    pub async fn accounts(
        &self,
        prefix: &str,
        order: AccountOrder,
        page_size: i32,
        page_token: &str,
    ) -> Result<AccountsPage, LedgerError> {
        if prefix.chars().count() > USER_ID_LEN_MAX {
            return Err(LedgerError::invalid(
                "user_id_prefix",
                format!("must be at most {USER_ID_LEN_MAX} characters"),
            ));
        }
        if prefix.chars().any(char::is_control) {
            return Err(LedgerError::invalid(
                "user_id_prefix",
                "must not contain control characters",
            ));
        }
        let limit = page_limit(page_size)?;
        let cursor = decode_account_token(order, page_token)?;
        let mut accounts = self
            .store
            .list_accounts(prefix, order, cursor.as_ref(), limit + 1)
            .await?;
        let next_page_token = if accounts.len() as i64 > limit {
            accounts.truncate(limit as usize);
            accounts.last().map(|a| encode_account_token(order, a))
        } else {
            None
        };
        Ok(AccountsPage {
            accounts,
            next_page_token,
        })
    }

    /// A page of the Stripe events the webhook recorded, newest first.
    pub async fn stripe_events(
        &self,
        filter: &StripeEventFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<StripeEventsPage, LedgerError> {
        let limit = page_limit(page_size)?;
        let cursor = decode_stripe_event_token(page_token)?;
        let mut events = self
            .store
            .stripe_events(filter, cursor.as_ref(), limit + 1)
            .await?;
        let next_page_token = if events.len() as i64 > limit {
            events.truncate(limit as usize);
            events.last().map(encode_stripe_event_token)
        } else {
            None
        };
        Ok(StripeEventsPage {
            events,
            next_page_token,
        })
    }

    /// The ledger's time (the store's clock, which tests may move).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.store.clock().now()
    }

    /// The balance right after the user's last journal row at or before `at`, with that row's
    /// sequence and time; `(0, 0, None)` before the first.
    pub async fn balance_at(
        &self,
        user_id: &UserId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(i64, i64, Option<chrono::DateTime<chrono::Utc>>), LedgerError> {
        self.store.balance_at(user_id, at).await
    }

    /// Adds a model price version (`true`: a replay of the key's earlier call).
    pub async fn set_price(
        &self,
        price: &NewPrice,
        created_by: &str,
    ) -> Result<(ModelPrice, bool), LedgerError> {
        self.store.set_price(price, created_by).await
    }

    /// Model prices, with whether each is the version in force.
    pub async fn prices(
        &self,
        model: Option<&str>,
        history: bool,
    ) -> Result<Vec<(ModelPrice, bool)>, LedgerError> {
        self.store.prices(model, history).await
    }

    /// A page of usage sums; the token is an offset into the groups, checked on the way in.
    pub async fn summarize_usage(
        &self,
        query: &UsageQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<UsageRow>, Option<String>), LedgerError> {
        let limit = match i64::from(page_size) {
            n if n < 0 => {
                return Err(LedgerError::invalid(
                    "page_size",
                    format!("must not be negative, got {page_size}"),
                ))
            }
            0 => SUMMARY_PAGE_SIZE_DEFAULT,
            n => n.min(SUMMARY_PAGE_SIZE_MAX),
        };
        let offset = decode_offset_token(page_token)?;
        let mut rows = self.store.summarize_usage(query, offset, limit + 1).await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            Some(encode_offset_token(offset + limit))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Sets a balance-alert rule, then re-evaluates the accounts it applies to: the user's at once
    /// (a settle write through the writers, which writes any event its new state calls for),
    /// every account in the background for the default.
    pub async fn set_alert(
        &self,
        user: Option<&UserId>,
        threshold: Threshold,
        created_by: &str,
    ) -> Result<AlertRule, LedgerError> {
        let rule = self
            .store
            .set_alert(user.map(UserId::as_str), threshold, created_by)
            .await?;
        self.reevaluate(user).await?;
        Ok(rule)
    }

    /// Deletes a rule (the user's own, or the default) and re-evaluates as `set_alert` does.
    pub async fn delete_alert(&self, user: Option<&UserId>) -> Result<bool, LedgerError> {
        let deleted = self.store.delete_alert(user.map(UserId::as_str)).await?;
        if deleted {
            self.reevaluate(user).await?;
        }
        Ok(deleted)
    }

    async fn reevaluate(&self, user: Option<&UserId>) -> Result<(), LedgerError> {
        match user {
            Some(user) => self
                .write(WriteCommand::settle(user.clone()))
                .await
                .map(|_| ()),
            None => {
                let ledger = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = ledger.reevaluate_all().await {
                        tracing::error!(error = %err.chain(), "re-evaluating every account against the default alert rule failed");
                    }
                });
                Ok(())
            }
        }
    }

    /// Every account, a page at a time, through settle writes.
    async fn reevaluate_all(&self) -> Result<(), LedgerError> {
        const PAGE: i64 = 500;
        let mut after: Option<String> = None;
        let mut accounts = 0usize;
        loop {
            let users = self.store.user_ids_after(after.as_deref(), PAGE).await?;
            let Some(last) = users.last().cloned() else {
                break;
            };
            let cmds: Vec<WriteCommand> = users
                .into_iter()
                .filter_map(|u| UserId::parse("user_id", u).ok())
                .map(WriteCommand::settle)
                .collect();
            accounts += cmds.len();
            for result in self.write_many(cmds).await {
                result?;
            }
            after = Some(last);
        }
        tracing::info!(
            accounts,
            "re-evaluated every account against the default alert rule"
        );
        Ok(())
    }

    pub async fn alerts(&self, user: Option<&str>) -> Result<Vec<AlertRule>, LedgerError> {
        self.store.alerts(user).await
    }

    /// A page of alert events, newest first; the token is the last event's id.
    pub async fn alert_events(
        &self,
        user: Option<&str>,
        pending_only: bool,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AlertEvent>, Option<String>), LedgerError> {
        let limit = page_limit(page_size)?;
        let before = decode_page_token(page_token)?;
        let mut events = self
            .store
            .alert_events(user, pending_only, before, limit + 1)
            .await?;
        let next = if events.len() as i64 > limit {
            events.truncate(limit as usize);
            events.last().map(|e| encode_page_token(e.event_id))
        } else {
            None
        };
        Ok((events, next))
    }

    /// The whole ledger at one instant: liability, daily movements, top users.
    pub async fn overview(&self, query: &OverviewQuery) -> Result<Overview, LedgerError> {
        self.store.overview(query).await
    }

    pub async fn find(&self, lookup: &EntryLookup) -> Result<Option<FoundEntry>, LedgerError> {
        self.store.find_entry(lookup).await
    }

    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.store.verify().await
    }
}

fn page_limit(page_size: i32) -> Result<i64, LedgerError> {
    match i64::from(page_size) {
        n if n < 0 => Err(LedgerError::invalid(
            "page_size",
            format!("must not be negative, got {page_size}"),
        )),
        0 => Ok(PAGE_SIZE_DEFAULT),
        n => Ok(n.min(PAGE_SIZE_MAX)),
    }
}

/// Groups a SummarizeUsage page holds when the caller asks for none.
pub const SUMMARY_PAGE_SIZE_DEFAULT: i64 = 100;
/// Most groups one SummarizeUsage page holds.
pub const SUMMARY_PAGE_SIZE_MAX: i64 = 1_000;

/// One page of Stripe events.
#[derive(Debug, Clone)]
pub struct StripeEventsPage {
    pub events: Vec<StripeEventRow>,
    pub next_page_token: Option<String>,
}

/// One page of accounts.
#[derive(Debug, Clone)]
pub struct AccountsPage {
    pub accounts: Vec<AccountSummary>,
    pub next_page_token: Option<String>,
}
