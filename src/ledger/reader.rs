//! Coalesced reads: concurrent `GetBalance` calls answered by one `… WHERE user_id = ANY($1)`
//! query, the way writes share batches.
//!
//! A read that finds a free query slot and nobody waiting runs its query at once, on its own
//! task: a lone read on an idle server pays no hop through a queue. Otherwise it queues: one
//! dispatcher takes the first waiting read, waits for a free slot (at most `concurrency` batches
//! run at once), then takes whatever else is waiting (up to `batch_max`) and answers all of them
//! with one query (plus one per account past its settle instant, rare). Under load, reads pile
//! up while the slots are busy, so batches grow with load, like group commit's. A read's query,
//! lone or shared, is given up once every caller it answers has stopped waiting (their
//! deadlines, at most `batch_timeout`): its slot is freed and its connection closed.
//!
//! **Read-after-write, across processes.** A read is queued when its call arrives, and the query
//! that answers it starts after it was taken from the queue: its snapshot (READ COMMITTED takes
//! one per statement) is newer than anything committed before the call arrived. So a read that
//! arrives after a write was acknowledged, by this process or any other on the same database,
//! sees that write. No cache, nothing kept between queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

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
    /// Longest a read's queries may run, for reads whose callers set no earlier deadline: past
    /// it, they are answered UNAVAILABLE and the slot is freed, so one query stuck on a dead
    /// connection or behind a lock cannot stop every read. `serve` sets the request timeout.
    pub batch_timeout: Duration,
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
/// Default longest batch (the default request timeout).
pub const READ_BATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            batch_max: READ_BATCH_MAX_DEFAULT,
            concurrency: READ_CONCURRENCY_DEFAULT,
            queue_max: READ_QUEUE_MAX_DEFAULT,
            batch_timeout: READ_BATCH_TIMEOUT_DEFAULT,
        }
    }
}

/// A queued read: whose balance, where to answer, and when its caller stops waiting.
type Read = (UserId, Reply, Option<Instant>);

/// The read queue. Dropping the last clone stops the dispatcher.
#[derive(Debug, Clone)]
pub(super) struct Readers {
    queue: mpsc::Sender<Read>,
    slots: Arc<Semaphore>,
    store: Store,
    batch_timeout: Duration,
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
            batch_timeout: config.batch_timeout,
        }
    }

    /// `deadline`: when the caller stops waiting (none: `batch_timeout` bounds the read).
    pub async fn balance(
        &self,
        user_id: &UserId,
        deadline: Option<Instant>,
    ) -> Result<Balance, LedgerError> {
        // Nobody waiting and a slot free: this read goes out now, by itself.
        if self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(_slot) = self.slots.try_acquire() {
                crate::metrics::read_batch(1);
                let until = give_up_at(self.batch_timeout, deadline);
                return match tokio::time::timeout_at(until, self.store.balance(user_id)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(timed_out(&self.store, 1)),
                };
            }
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send((user_id.clone(), reply, deadline))
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

/// When a read's queries are given up: at its caller's deadline, and never later than
/// `batch_timeout` from now (a caller with no deadline, or a far one).
fn give_up_at(batch_timeout: Duration, deadline: Option<Instant>) -> Instant {
    let latest = Instant::now() + batch_timeout;
    deadline.map_or(latest, |d| d.min(latest))
}

/// A read's queries did not finish in time: most likely a connection that went silent, so the
/// store is told to check the database, and the read is answered UNAVAILABLE.
fn timed_out(store: &Store, reads: usize) -> LedgerError {
    crate::metrics::read_timed_out();
    store.availability().suspect();
    tracing::warn!(
        reads,
        "a GetBalance query did not finish before its callers' deadlines: its slot is freed and \
         the database checked"
    );
    LedgerError::Unavailable("the database did not answer the balance read in time: retry".into())
}

async fn dispatch(
    store: Store,
    mut rx: mpsc::Receiver<Read>,
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
        // A caller that already gave up (its deadline, or it went away) needs no query.
        reads.retain(|(_, reply, _)| !reply.is_closed());
        if reads.is_empty() {
            continue;
        }
        crate::metrics::read_batch(reads.len());
        // The batch is given up once its last caller's deadline has passed: nobody is left to
        // answer, and the slot is what every other read waits for.
        let deadlines: Option<Vec<Instant>> = reads.iter().map(|(_, _, d)| *d).collect();
        let last = deadlines.and_then(|d| d.into_iter().max());
        let until = give_up_at(config.batch_timeout, last);
        let store = store.clone();
        tokio::spawn(async move {
            let mut reads: Vec<(UserId, Reply)> =
                reads.into_iter().map(|(u, r, _)| (u, r)).collect();
            if tokio::time::timeout_at(until, answer(&store, &mut reads))
                .await
                .is_err()
            {
                let waiting = reads.iter().filter(|(_, r)| !r.is_closed()).count();
                let err = timed_out(&store, waiting);
                for (_, reply) in reads {
                    let _ = reply.send(Err(err.for_batch_caller()));
                }
            }
            drop(slot);
        });
    }
}

/// One query for every read of the batch; every read that needs nothing more is answered as soon
/// as it is done. Each account past its settle instant (rare: only until the next write or sweep
/// of that account) is then settled once, with one more query, for all its reads. `reads` keeps
/// only the reads not answered yet, so a batch that times out answers exactly those.
async fn answer(store: &Store, reads: &mut Vec<(UserId, Reply)>) {
    let mut users: Vec<&str> = reads.iter().map(|(u, _)| u.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let found: HashMap<String, (Balance, bool)> = match store.balances(&users).await {
        Ok(found) => found,
        Err(err) => {
            for (_, reply) in reads.drain(..) {
                let _ = reply.send(Err(err.for_batch_caller()));
            }
            return;
        }
    };
    let mut due = Vec::new();
    for (user, reply) in reads.drain(..) {
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
    due.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    *reads = due;
    while let Some((user, _)) = reads.first() {
        let user = user.clone();
        let same = reads.iter().take_while(|(u, _)| u == &user).count();
        let waiting = reads[..same].iter().any(|(_, reply)| !reply.is_closed());
        let settled = if waiting {
            Some(store.balance(&user).await)
        } else {
            None
        };
        let mut unavailable = None;
        for (_, reply) in reads.drain(..same) {
            let _ = match &settled {
                Some(Ok(balance)) => reply.send(Ok(balance.clone())),
                Some(Err(LedgerError::Unavailable(m))) => {
                    unavailable = Some(m.clone());
                    reply.send(Err(LedgerError::Unavailable(m.clone())))
                }
                Some(Err(err)) => reply.send(Err(err.for_batch_caller())),
                None => Ok(()),
            };
        }
        // The database is gone: the other due accounts would wait for it the same way.
        if let Some(m) = unavailable {
            for (_, reply) in reads.drain(..) {
                let _ = reply.send(Err(LedgerError::Unavailable(m.clone())));
            }
        }
    }
}
