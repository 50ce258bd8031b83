//! The ledger's rules (which writes may overdraw, how history is paged) and its write path: group
//! commit by writer tasks that each own the accounts hashing to them. Transport-free (no tonic,
//! no HTTP) and SQL-free (the store runs the statements).

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

use crate::cache::BalanceCache;
use crate::domain::{Receipt, UserId, WriteCommand, WriteDetails};
use crate::error::LedgerError;
use crate::store::{
    AccountCursor, AccountOrder, AccountSummary, Balance, EntryLookup, FoundEntry, HistoryFilter,
    JournalEntry, Overdraft, Pending, Store, VerifyReport,
};

/// Page size when the caller asks for none.
pub const PAGE_SIZE_DEFAULT: i64 = 50;
/// Largest page ListTransactions returns; larger requests are clamped to it, so one call reads at
/// most this many rows.
pub const PAGE_SIZE_MAX: i64 = 500;
/// Longest page token accepted; real ones are about 20 characters.
const PAGE_TOKEN_LEN_MAX: usize = 64;
/// Prefix of page tokens, so that a random string is rejected rather than misread.
const PAGE_TOKEN_PREFIX: &str = "seq:";

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
}

impl Default for WriteConfig {
    fn default() -> Self {
        Self {
            batch_max: BATCH_MAX_DEFAULT,
            queue_max: QUEUE_MAX_DEFAULT,
            writers: WRITERS_DEFAULT,
            linger: Duration::from_micros(LINGER_US_DEFAULT),
            balance_cache: false,
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

/// One write and where its result goes.
struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<Receipt, LedgerError>>,
}

/// The ledger: rules over a store. Cheap to clone; the writers stop when the last clone is
/// dropped, after finishing what was queued.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
    /// One queue per writer.
    queues: Arc<[mpsc::Sender<Job>]>,
    cache: Option<Arc<BalanceCache>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new(store: Store) -> Self {
        Self::with_config(store, WriteConfig::default())
    }

    /// Starts `config.writers` writer tasks on the current runtime.
    pub fn with_config(store: Store, config: WriteConfig) -> Self {
        let batch_max = config.batch_max.max(1);
        let writers = config.writers.max(1);
        let per_writer = (config.queue_max / writers).max(1);
        let cache = config
            .balance_cache
            .then(|| Arc::new(BalanceCache::new(BALANCE_CACHE_ENTRIES_MAX)));
        let mut queues = Vec::with_capacity(writers);
        for _ in 0..writers {
            let (queue, rx) = mpsc::channel::<Job>(per_writer);
            tokio::spawn(run_writer(
                store.clone(),
                rx,
                batch_max,
                config.linger,
                cache.clone(),
            ));
            queues.push(queue);
        }
        Self {
            store,
            queues: queues.into(),
            cache,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies one write, or replays it.
    pub async fn write(&self, cmd: WriteCommand) -> Result<Receipt, LedgerError> {
        let overdraft = overdraft_of(&cmd);
        let receipt = self.submit(Pending { cmd, overdraft })?.await?;
        if !receipt.replayed && overdraft == Overdraft::Refused && receipt.balance < 0 {
            // The batch's in-order evaluation makes this impossible; if it ever happens the
            // transaction has committed, so shout rather than hide it.
            tracing::error!(
                transaction_id = %receipt.transaction_id,
                balance = receipt.balance,
                "invariant broken: a refused-overdraft write left a negative balance"
            );
        }
        Ok(receipt)
    }

    /// Several writes at once (TrackUsageBatch): all are queued before any is awaited, so they
    /// share batches. Each has its own result.
    pub async fn write_many(&self, cmds: Vec<WriteCommand>) -> Vec<Result<Receipt, LedgerError>> {
        let submitted: Vec<_> = cmds
            .into_iter()
            .map(|cmd| {
                let overdraft = overdraft_of(&cmd);
                self.submit(Pending { cmd, overdraft })
            })
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

    /// Queues a write; the returned future resolves once its batch has committed.
    fn submit(
        &self,
        pending: Pending,
    ) -> Result<impl std::future::Future<Output = Result<Receipt, LedgerError>>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queues[writer_of(pending.cmd.user_id.as_str(), self.queues.len())]
            .try_send(Job { pending, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LedgerError::ResourceExhausted(
                    "the write queue is full: retry with the same idempotency key after a short wait",
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    LedgerError::Unavailable("the ledger is shutting down".into())
                }
            })?;
        Ok(async move {
            answer.await.unwrap_or_else(|_| {
                Err(LedgerError::internal(anyhow::anyhow!(
                    "the writer stopped before answering"
                )))
            })
        })
    }

    /// Writes waiting in the queue right now.
    pub fn queue_depth(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    pub async fn balance(&self, user_id: &UserId) -> Result<Balance, LedgerError> {
        let Some(cache) = &self.cache else {
            return self.store.balance(user_id).await;
        };
        if let Some(balance) = cache.get(user_id.as_str()) {
            return Ok(balance);
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
        if prefix.chars().count() > crate::domain::USER_ID_LEN_MAX {
            return Err(LedgerError::invalid(
                "user_id_prefix",
                format!(
                    "must be at most {} characters",
                    crate::domain::USER_ID_LEN_MAX
                ),
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

    pub async fn find(&self, lookup: &EntryLookup) -> Result<Option<FoundEntry>, LedgerError> {
        self.store.find_entry(lookup).await
    }

    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.store.verify().await
    }
}

fn overdraft_of(cmd: &WriteCommand) -> Overdraft {
    // Usage is always recorded: the AI call already happened and losing its record loses
    // revenue. Reversals claw back credits that may be spent already. Admin deductions must be
    // covered by the balance unless the admin explicitly allowed otherwise.
    match &cmd.details {
        WriteDetails::Deduction {
            allow_negative: false,
            ..
        } => Overdraft::Refused,
        _ => Overdraft::Allowed,
    }
}

/// Which writer owns a user's account (FNV-1a of the user id): stable, so one account's writes
/// are applied in arrival order, and two writers never lock the same account.
fn writer_of(user_id: &str, writers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % writers as u64) as usize
}

/// One writer: takes what is queued for it (up to `batch_max`), commits it as one batch, answers
/// each caller, repeats. The writes that arrive while a batch commits form the next batch, so
/// batches grow with load and shrink to one write when idle.
async fn run_writer(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    linger: Duration,
    cache: Option<Arc<BalanceCache>>,
) {
    loop {
        let mut jobs: Vec<Job> = Vec::new();
        {
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < batch_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.len() > 1 && jobs.len() < batch_max && !linger.is_zero() {
                let deadline = tokio::time::Instant::now() + linger;
                while jobs.len() < batch_max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => jobs.push(job),
                        _ => break,
                    }
                }
            }
        }
        let (pendings, replies): (Vec<Pending>, Vec<_>) =
            jobs.into_iter().map(|j| (j.pending, j.reply)).unzip();
        let started = std::time::Instant::now();
        // On its own task, so a panic (a bug) fails this batch's callers instead of killing the
        // writer.
        let batch_store = store.clone();
        let (pendings, outcome) = match tokio::spawn(async move {
            let outcome = batch_store.apply_batch(&pendings).await;
            (pendings, outcome)
        })
        .await
        {
            Ok(done) => done,
            Err(panic) => {
                tracing::error!(error = %panic, "batch task panicked");
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::internal(anyhow::anyhow!(
                        "batch task panicked"
                    ))));
                }
                continue;
            }
        };
        let commit_ms = started.elapsed().as_secs_f64() * 1000.0;
        crate::metrics::batch_committed(pendings.len(), commit_ms, outcome.is_ok());
        match outcome {
            Ok(outcome) => {
                // The cache learns the committed balances before any caller hears back, so a
                // caller's next GetBalance sees its own write.
                if let Some(cache) = &cache {
                    for (user, balance) in outcome.balances {
                        cache.offer(&user, balance);
                    }
                }
                let results = outcome.results;
                for ((reply, result), pending) in replies.into_iter().zip(results).zip(&pendings) {
                    if matches!(&result, Ok(receipt) if !receipt.replayed) {
                        crate::metrics::journal_row(pending.cmd.kind().as_str());
                    }
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    writes = pendings.len(),
                    "batch failed: nothing of it was applied"
                );
                for reply in replies {
                    let _ = reply.send(Err(err.for_batch_caller()));
                }
            }
        }
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

/// One page of accounts.
#[derive(Debug, Clone)]
pub struct AccountsPage {
    pub accounts: Vec<AccountSummary>,
    pub next_page_token: Option<String>,
}

fn encode_account_token(order: AccountOrder, last: &AccountSummary) -> String {
    let raw = match order {
        AccountOrder::UserId => format!("u:{}", last.user_id),
        AccountOrder::BalanceDesc => format!("b:{}:{}", last.balance.balance, last.user_id),
        AccountOrder::LastActivityDesc => format!(
            "t:{}:{}",
            last.balance
                .updated_at
                .map(|t| t.timestamp_micros())
                .unwrap_or_default(),
            last.user_id
        ),
    };
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_account_token(
    order: AccountOrder,
    token: &str,
) -> Result<Option<AccountCursor>, LedgerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        LedgerError::invalid(
            "page_token",
            "is not a token this server issued for this order",
        )
    };
    if token.len() > 4 * crate::domain::USER_ID_LEN_MAX {
        return Err(bad());
    }
    let raw =
        String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, ':');
    let cursor = match (order, parts.next()) {
        (AccountOrder::UserId, Some("u")) => {
            AccountCursor::UserId(raw.get(2..).ok_or_else(bad)?.to_string())
        }
        (AccountOrder::BalanceDesc, Some("b")) => {
            let balance = parts.next().and_then(|b| b.parse().ok()).ok_or_else(bad)?;
            AccountCursor::Balance(balance, parts.next().ok_or_else(bad)?.to_string())
        }
        (AccountOrder::LastActivityDesc, Some("t")) => {
            let micros: i64 = parts.next().and_then(|b| b.parse().ok()).ok_or_else(bad)?;
            let at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
            AccountCursor::LastActivity(at, parts.next().ok_or_else(bad)?.to_string())
        }
        _ => return Err(bad()),
    };
    Ok(Some(cursor))
}

fn encode_page_token(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{seq}"))
}

fn decode_page_token(token: &str) -> Result<Option<i64>, LedgerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || LedgerError::invalid("page_token", "is not a token this server issued");
    if token.len() > PAGE_TOKEN_LEN_MAX {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let seq = text
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(bad)?;
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        assert_eq!(decode_page_token(&encode_page_token(42)).unwrap(), Some(42));
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("not-a-token").is_err());
        assert!(decode_page_token(&URL_SAFE_NO_PAD.encode("seq:-1")).is_err());
        assert!(decode_page_token(&"A".repeat(PAGE_TOKEN_LEN_MAX + 1)).is_err());
    }
}
