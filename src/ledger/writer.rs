//! Group commit: writer tasks that each own the accounts hashing to them, collect what is queued
//! for them into one batch, have the store apply it in one transaction, and answer each caller.
//!
//! Two things a batch never does to its writes:
//! - **Commit a write nobody waits for any more.** A write whose deadline passed (or whose
//!   caller hung up) before its batch started is dropped with `DEADLINE_EXCEEDED`, nothing
//!   written; once its batch has started it commits, and a retry with the same key replays it.
//! - **Fail a write for its neighbour's sake.** A batch that fails for a reason the rules did not
//!   foresee (a constraint, a trigger, a bug) is split in two and each half committed on its own,
//!   in order, recursively, so only the write that cannot commit fails, and its cause is logged
//!   once with its method, user and key.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cache::BalanceCache;
use crate::domain::{shard_of, Balance, Receipt, WriteCommand};
use crate::error::LedgerError;
use crate::store::Store;

type Reply = oneshot::Sender<Result<Receipt, LedgerError>>;

/// One write and where its result goes.
struct Job {
    cmd: WriteCommand,
    reply: Reply,
    /// After this instant the caller no longer waits: the write is dropped if its batch has not
    /// started by then.
    deadline: Option<Instant>,
    /// The caller's span (the RPC's method, user and key), for logging this write's failure.
    span: tracing::Span,
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

    /// Queues a write; the returned future resolves once its batch has committed (or the write
    /// was dropped because `deadline` passed first).
    pub fn submit(
        &self,
        cmd: WriteCommand,
        deadline: Option<Instant>,
    ) -> Result<impl std::future::Future<Output = Result<Receipt, LedgerError>>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let writer = shard_of(cmd.user_id.as_str(), self.queues.len());
        let job = Job {
            cmd,
            reply,
            deadline,
            span: tracing::Span::current(),
        };
        self.queues[writer].try_send(job).map_err(|e| match e {
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
        let jobs = drop_expired(jobs);
        if jobs.is_empty() {
            continue;
        }
        let mut cmds = Vec::with_capacity(jobs.len());
        let mut callers = Vec::with_capacity(jobs.len());
        for job in jobs {
            cmds.push(job.cmd);
            callers.push((job.reply, job.span));
        }
        let cmds = Arc::new(cmds);
        let started = std::time::Instant::now();
        let (results, balances) = commit_all(&store, &cmds, &callers).await;
        let commit_ms = started.elapsed().as_secs_f64() * 1000.0;
        let all_failed = results.iter().all(Result::is_err);
        crate::metrics::batch_committed(cmds.len(), commit_ms, !all_failed);
        if let Some(cache) = &config.cache {
            // The cache learns the committed balances before any caller hears back, so a
            // caller's next GetBalance sees its own write.
            for (user, balance) in balances {
                cache.offer(&user, balance);
            }
        }
        for ((result, (reply, _)), cmd) in results.into_iter().zip(callers).zip(cmds.iter()) {
            if matches!(&result, Ok(receipt) if !receipt.replayed) {
                crate::metrics::journal_row(cmd.kind().as_str());
            }
            let _ = reply.send(result);
        }
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
        let deadline = Instant::now() + linger;
        while jobs.len() < batch_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                _ => break,
            }
        }
    }
    Some(jobs)
}

/// Answers the writes nobody waits for any more, before their batch starts: nothing of them is
/// written, so a retry with the same key applies them afresh.
fn drop_expired(jobs: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let (expired, live): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| {
        job.reply.is_closed() || job.deadline.is_some_and(|deadline| deadline <= now)
    });
    for job in expired {
        crate::metrics::write_expired();
        tracing::debug!(parent: &job.span, "deadline passed before the write's batch started: dropped, nothing written");
        let _ = job.reply.send(Err(LedgerError::DeadlineExceeded(
            "the deadline passed while the write was queued; nothing was written: retry with the same idempotency key",
        )));
    }
    live
}

/// Commits `cmds` in arrival order and answers for each. A part that fails for an unforeseen
/// reason is split in two and each half committed on its own (left first, so one account's
/// writes keep their order), until the failing write stands alone. A database that cannot be
/// reached fails the whole part at once: splitting would not help.
async fn commit_all(
    store: &Store,
    cmds: &Arc<Vec<WriteCommand>>,
    callers: &[(Reply, tracing::Span)],
) -> (Vec<Result<Receipt, LedgerError>>, Vec<(String, Balance)>) {
    let mut results: Vec<Option<Result<Receipt, LedgerError>>> =
        (0..cmds.len()).map(|_| None).collect();
    let mut balances = Vec::new();
    let mut parts: VecDeque<Range<usize>> = VecDeque::new();
    parts.push_back(0..cmds.len());
    while let Some(part) = parts.pop_front() {
        match commit_isolated(store, cmds, part.clone()).await {
            Ok(outcome) => {
                for (slot, result) in results[part].iter_mut().zip(outcome.results) {
                    *slot = Some(result);
                }
                balances.extend(outcome.balances);
            }
            Err(err) if part.len() > 1 && err.is_internal() => {
                tracing::warn!(
                    error = err.chain(),
                    writes = part.len(),
                    "batch failed for an unforeseen reason: retrying its halves to isolate the write that fails"
                );
                let mid = part.start + part.len() / 2;
                parts.push_front(mid..part.end);
                parts.push_front(part.start..mid);
            }
            Err(err) if part.len() == 1 && err.is_internal() => {
                let cmd = &cmds[part.start];
                tracing::error!(
                    parent: &callers[part.start].1,
                    user_id = %cmd.user_id,
                    idempotency_key = %cmd.idempotency_key,
                    kind = cmd.kind().as_str(),
                    error = err.chain(),
                    "write failed on its own: nothing of it was applied; its batch neighbours were committed without it"
                );
                results[part.start] = Some(Err(err));
            }
            Err(err) => {
                tracing::error!(
                    error = err.chain(),
                    writes = part.len(),
                    "batch failed: nothing of it was applied"
                );
                for slot in &mut results[part] {
                    *slot = Some(Err(err.for_batch_caller()));
                }
            }
        }
    }
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(LedgerError::Invariant(
                    "the batch returned fewer results than it had writes".into(),
                ))
            })
        })
        .collect();
    (results, balances)
}

/// Applies `cmds[part]` on its own task, so a panic (a bug) fails this part's callers instead of
/// killing the writer.
async fn commit_isolated(
    store: &Store,
    cmds: &Arc<Vec<WriteCommand>>,
    part: Range<usize>,
) -> Result<crate::store::BatchOutcome, LedgerError> {
    let batch_store = store.clone();
    let batch_cmds = Arc::clone(cmds);
    let task = tokio::spawn(async move { batch_store.apply_batch(&batch_cmds[part]).await });
    match task.await {
        Ok(outcome) => outcome,
        Err(panic) => Err(LedgerError::Invariant(
            format!("batch task panicked: {panic}").into(),
        )),
    }
}
