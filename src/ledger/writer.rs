//! Group commit: writer tasks that each own the accounts hashing to them, collect what is queued
//! for them into one batch, have the store apply it in one transaction, and answer each caller.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::cache::BalanceCache;
use crate::domain::{shard_of, Receipt, WriteCommand};
use crate::error::LedgerError;
use crate::store::{BatchOutcome, Store};

/// One write and where its result goes.
struct Job {
    cmd: WriteCommand,
    reply: oneshot::Sender<Result<Receipt, LedgerError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// How a writer groups writes.
#[derive(Debug, Clone)]
pub(super) struct WriterConfig {
    pub batch_max: usize,
    pub linger: Duration,
    pub cache: Option<Arc<BalanceCache>>,
}

/// The writers' queues, one per writer. Dropping the last clone stops the writers once they
/// have committed what was queued.
#[derive(Debug, Clone)]
pub(super) struct Writers {
    queues: Arc<[mpsc::Sender<Job>]>,
}

impl Writers {
    /// Starts `writers` writer tasks on the current runtime, each with a queue of `per_writer`.
    pub fn start(store: &Store, writers: usize, per_writer: usize, config: WriterConfig) -> Self {
        let queues: Vec<_> = (0..writers.max(1))
            .map(|_| {
                let (queue, rx) = mpsc::channel::<Job>(per_writer.max(1));
                tokio::spawn(run_writer(store.clone(), rx, config.clone()));
                queue
            })
            .collect();
        Self {
            queues: queues.into(),
        }
    }

    /// Queues a write; the returned future resolves once its batch has committed.
    pub fn submit(
        &self,
        cmd: WriteCommand,
    ) -> Result<impl std::future::Future<Output = Result<Receipt, LedgerError>>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let writer = shard_of(cmd.user_id.as_str(), self.queues.len());
        self.queues[writer]
            .try_send(Job { cmd, reply })
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
                Err(LedgerError::Invariant(
                    "the writer stopped before answering".into(),
                ))
            })
        })
    }

    /// Writes waiting in the queues right now.
    pub fn queue_depth(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }
}

/// One writer: takes what is queued for it (up to `batch_max`), commits it as one batch, answers
/// each caller, repeats. The writes that arrive while a batch commits form the next batch, so
/// batches grow with load and shrink to one write when idle.
async fn run_writer(store: Store, mut rx: mpsc::Receiver<Job>, config: WriterConfig) {
    while let Some(jobs) = next_batch(&mut rx, config.batch_max, config.linger).await {
        let (cmds, replies): (Vec<WriteCommand>, Vec<_>) =
            jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
        let writes = cmds.len();
        let started = std::time::Instant::now();
        let (cmds, outcome) = commit_isolated(&store, cmds).await;
        let commit_ms = started.elapsed().as_secs_f64() * 1000.0;
        crate::metrics::batch_committed(writes, commit_ms, outcome.is_ok());
        answer(&cmds, replies, outcome, config.cache.as_deref());
    }
}

/// Waits for a first write, then takes what else is queued, lingering briefly when more than one
/// write was waiting (a sign of load). `None` once every queue sender is gone.
async fn next_batch(
    rx: &mut mpsc::Receiver<Job>,
    batch_max: usize,
    linger: Duration,
) -> Option<Vec<Job>> {
    let mut jobs = vec![rx.recv().await?];
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
    Some(jobs)
}

/// Applies the batch on its own task, so a panic (a bug) fails this batch's callers instead of
/// killing the writer.
async fn commit_isolated(
    store: &Store,
    cmds: Vec<WriteCommand>,
) -> (Vec<WriteCommand>, Result<BatchOutcome, LedgerError>) {
    let batch_store = store.clone();
    let count = cmds.len();
    let task = tokio::spawn(async move {
        let outcome = batch_store.apply_batch(&cmds).await;
        (cmds, outcome)
    });
    match task.await {
        Ok(done) => done,
        Err(panic) => {
            tracing::error!(error = %panic, writes = count, "batch task panicked");
            let err = LedgerError::Invariant(format!("batch task panicked: {panic}").into());
            (Vec::new(), Err(err))
        }
    }
}

/// Tells each caller how its write went; the balance cache learns the committed balances first,
/// so a caller's next GetBalance sees its own write.
fn answer(
    cmds: &[WriteCommand],
    replies: Vec<oneshot::Sender<Result<Receipt, LedgerError>>>,
    outcome: Result<BatchOutcome, LedgerError>,
    cache: Option<&BalanceCache>,
) {
    match outcome {
        Ok(outcome) => {
            if let Some(cache) = cache {
                for (user, balance) in outcome.balances {
                    cache.offer(&user, balance);
                }
            }
            let mut results = outcome.results.into_iter();
            for (reply, cmd) in replies.into_iter().zip(cmds) {
                let result = results.next().unwrap_or_else(|| {
                    Err(LedgerError::Invariant(
                        "the batch returned fewer results than it had writes".into(),
                    ))
                });
                if matches!(&result, Ok(receipt) if !receipt.replayed) {
                    crate::metrics::journal_row(cmd.kind().as_str());
                }
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            tracing::error!(
                error = err.chain(),
                writes = replies.len(),
                "batch failed: nothing of it was applied"
            );
            for reply in replies {
                let _ = reply.send(Err(err.for_batch_caller()));
            }
        }
    }
}
