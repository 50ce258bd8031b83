//! Coalesced reads: concurrent `GetBalance` calls answered by one `… WHERE user_id = ANY($1)`
//! query, the way writes share batches.
//!
//! A read that finds a free query slot and nobody waiting runs its query at once, on its own
//! task: a lone read on an idle server pays no hop through a queue. Otherwise it queues: one
//! dispatcher takes the first waiting read, waits for a free slot (at most `concurrency` queries
//! run at once), then takes whatever else is waiting (up to `batch_max`) and answers all of them
//! with one query. Under load, reads pile up while the slots are busy, so batches grow with
//! load, like group commit's.
//!
//! **Read-after-write, across processes.** A read is queued when its call arrives, and the query
//! that answers it starts after it was taken from the queue: its snapshot (READ COMMITTED takes
//! one per statement) is newer than anything committed before the call arrived. So a read that
//! arrives after a write was acknowledged, by this process or any other on the same database,
//! sees that write. No cache, nothing kept between queries.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::domain::{Balance, UserId};
use crate::error::LedgerError;
use crate::store::Store;

type Reply = oneshot::Sender<Result<Balance, LedgerError>>;

/// How reads are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadConfig {
    /// Most reads answered by one query; 1 = one query per read (the baseline).
    pub batch_max: usize,
    /// Queries in flight at once.
    pub concurrency: usize,
    /// Reads waiting; beyond it RESOURCE_EXHAUSTED.
    pub queue_max: usize,
}

/// Default most reads per query.
pub const READ_BATCH_MAX_DEFAULT: usize = 256;
/// Default queries in flight. One: while it runs, the reads arriving behind it queue and share
/// the next query, so batches grow with load. Measured on two cores (BENCHMARKS.md, "Issue 12's
/// figures with one read query in flight"): 1 answered about 35% more GetBalance calls at 64
/// callers than 4, for 29% less CPU per call, with a lone caller's p50 within the rounds'
/// spread (its code path is the same); 8 answered about a quarter fewer than 4.
pub const READ_CONCURRENCY_DEFAULT: usize = 1;
/// Default read queue bound.
pub const READ_QUEUE_MAX_DEFAULT: usize = 16_384;

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            batch_max: READ_BATCH_MAX_DEFAULT,
            concurrency: READ_CONCURRENCY_DEFAULT,
            queue_max: READ_QUEUE_MAX_DEFAULT,
        }
    }
}

/// The read queue. Dropping the last clone stops the dispatcher.
#[derive(Debug, Clone)]
pub(super) struct Readers {
    queue: mpsc::Sender<(UserId, Reply)>,
    slots: Arc<Semaphore>,
    store: Store,
}

impl Readers {
    pub fn start(store: &Store, config: ReadConfig) -> Self {
        let (queue, rx) = mpsc::channel(config.queue_max.max(1));
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        tokio::spawn(dispatch(store.clone(), rx, config, slots.clone()));
        Self {
            queue,
            slots,
            store: store.clone(),
        }
    }

    pub async fn balance(&self, user_id: &UserId) -> Result<Balance, LedgerError> {
        // Nobody waiting and a slot free: this read goes out now, by itself.
        if self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(_slot) = self.slots.try_acquire() {
                crate::metrics::read_batch(1);
                return self.store.balance(user_id).await;
            }
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send((user_id.clone(), reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LedgerError::ResourceExhausted(
                    "the read queue is full: retry after a short wait",
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    LedgerError::Unavailable("the ledger is shutting down".into())
                }
            })?;
        answer.await.unwrap_or_else(|_| {
            Err(LedgerError::Invariant(
                "the reader stopped before answering".into(),
            ))
        })
    }
}

async fn dispatch(
    store: Store,
    mut rx: mpsc::Receiver<(UserId, Reply)>,
    config: ReadConfig,
    slots: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Taken after the slot is free: what arrived meanwhile rides along.
        let mut reads = vec![first];
        while reads.len() < config.batch_max.max(1) {
            match rx.try_recv() {
                Ok(read) => reads.push(read),
                Err(_) => break,
            }
        }
        crate::metrics::read_batch(reads.len());
        let store = store.clone();
        tokio::spawn(async move { answer(&store, reads, slot).await });
    }
}

/// One query for every read of the batch, and every read that needs nothing more is answered as
/// soon as it is done. An account past its settle instant is settled afterwards, alone (rare:
/// only until the next write or sweep of that account), so it does not hold up the other reads
/// of its batch; the slot is kept until then, so settling stays within `concurrency` queries.
async fn answer(store: &Store, reads: Vec<(UserId, Reply)>, slot: OwnedSemaphorePermit) {
    let mut users: Vec<&str> = reads.iter().map(|(u, _)| u.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let found = store.balances(&users).await;
    let found: HashMap<String, (Balance, bool)> = match found {
        Ok(found) => found,
        Err(err) => {
            for (_, reply) in reads {
                let _ = reply.send(Err(err.for_batch_caller()));
            }
            return;
        }
    };
    let mut due = Vec::new();
    for (user, reply) in reads {
        match found.get(user.as_str()) {
            None => {
                let _ = reply.send(Ok(Balance::empty()));
            }
            Some((balance, false)) => {
                let _ = reply.send(Ok(balance.clone()));
            }
            Some((_, true)) => due.push((user, reply)),
        }
    }
    for (user, reply) in due {
        let _ = reply.send(store.balance(&user).await);
    }
    drop(slot);
}
