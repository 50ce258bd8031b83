//! A checker in the spirit of Jepsen's bank and idempotence workloads.
//!
//! Writers draw writes (grants, usage, deductions) over a few shared accounts and send each one
//! with its own idempotency key, retrying the **same** request until it is acknowledged (or
//! refused by a rule) however the server or the database fails underneath. Every answer is
//! recorded. At the end, with the faults over:
//! - every acknowledged key replays to the same transaction id;
//! - every key exists exactly once in the journal, bound to the acknowledged transaction, and the
//!   journal holds nothing else;
//! - every balance equals the sum of what was acknowledged for its account;
//! - `verify` finds no discrepancy;
//! - no call was ever answered INTERNAL or UNKNOWN-with-a-server-error.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::common::*;
use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

/// The accounts the writers share, so they contend for the same rows.
pub const ACCOUNTS: usize = 8;
/// How long one attempt may take before the client gives up on it (and retries the same key).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between retries of one key.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// One write, as sent (and re-sent unchanged).
#[derive(Debug, Clone)]
pub enum Op {
    Grant(pb::GrantRequest),
    Usage(pb::TrackUsageRequest),
    Deduct(pb::DeductRequest),
}

impl Op {
    /// The `n`th write of writer `w`: a deterministic mix over the shared accounts.
    pub fn nth(w: usize, n: usize) -> Op {
        let user = format!("acct-{}", (w * 7 + n) % ACCOUNTS);
        let key = format!("w{w}-n{n}");
        let tokens = 1 + ((w * 31 + n * 17) % 997) as i64;
        match n % 4 {
            0 | 1 => Op::Grant(grant_req(&user, tokens, &key)),
            2 => Op::Usage(usage_req(&user, tokens, &key)),
            _ => Op::Deduct(pb::DeductRequest {
                user_id: user,
                tokens,
                idempotency_key: key,
                reason: "fault suite".into(),
                allow_negative: false,
            }),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Grant(r) => &r.idempotency_key,
            Op::Usage(r) => &r.idempotency_key,
            Op::Deduct(r) => &r.idempotency_key,
        }
    }

    pub fn user(&self) -> &str {
        match self {
            Op::Grant(r) => &r.user_id,
            Op::Usage(r) => &r.user_id,
            Op::Deduct(r) => &r.user_id,
        }
    }

    /// What an applied write does to its account's balance.
    pub fn delta(&self) -> i64 {
        match self {
            Op::Grant(r) => r.tokens,
            Op::Usage(r) => -r.tokens,
            Op::Deduct(r) => -r.tokens,
        }
    }

    /// Sends the write once: its transaction id and whether it was a replay.
    pub async fn send(
        &self,
        client: &mut LedgerServiceClient<Channel>,
    ) -> Result<(String, bool), Status> {
        match self.clone() {
            Op::Grant(r) => client
                .grant(admin(r))
                .await
                .map(|a| a.into_inner())
                .map(|a| (a.transaction_id, a.replayed)),
            Op::Usage(r) => client
                .track_usage(with_key(USAGE_KEY, r))
                .await
                .map(|a| a.into_inner())
                .map(|a| (a.transaction_id, a.replayed)),
            Op::Deduct(r) => client
                .deduct(admin(r))
                .await
                .map(|a| a.into_inner())
                .map(|a| (a.transaction_id, a.replayed)),
        }
    }
}

/// What became of one key.
#[derive(Debug, Clone)]
pub enum Fate {
    Acknowledged {
        op: Op,
        transaction_id: String,
    },
    /// Refused by a rule (a deduction the balance did not cover): final, nothing written.
    Refused,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct History {
    pub fates: Mutex<BTreeMap<String, Fate>>,
    /// Answers other than success, by code, counted over every attempt.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Answers that must never happen (INTERNAL, and the like), with their messages.
    pub forbidden: Mutex<Vec<String>>,
}

impl History {
    fn record_error(&self, status: &Status) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        if status.code() == Code::Internal || status.code() == Code::DataLoss {
            self.forbidden.lock().unwrap().push(status.to_string());
        }
    }

    pub fn acknowledged(&self) -> usize {
        self.fates
            .lock()
            .unwrap()
            .values()
            .filter(|f| matches!(f, Fate::Acknowledged { .. }))
            .count()
    }
}

/// Where the ledger listens now; `None` while it is down (between a kill and a restart).
pub type Address = watch::Receiver<Option<String>>;

/// A writer's client for the ledger's current address, rebuilt when the address changes.
pub struct Connection {
    addr: Address,
    current: Option<(String, LedgerServiceClient<Channel>)>,
}

impl Connection {
    pub fn new(addr: Address) -> Self {
        Self {
            addr,
            current: None,
        }
    }

    fn client(&mut self) -> Option<&mut LedgerServiceClient<Channel>> {
        let addr = self.addr.borrow().clone()?;
        if self.current.as_ref().map(|(a, _)| a) != Some(&addr) {
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(ATTEMPT_TIMEOUT)
                .connect_lazy();
            self.current = Some((addr, LedgerServiceClient::new(channel)));
        }
        self.current.as_mut().map(|(_, c)| c)
    }
}

/// Sends `op` until it is acknowledged or refused by a rule, recording every answer.
pub async fn settle(op: Op, conn: &mut Connection, history: &History) {
    loop {
        let Some(client) = conn.client() else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        match op.send(client).await {
            Ok((transaction_id, _)) => {
                history.fates.lock().unwrap().insert(
                    op.key().to_string(),
                    Fate::Acknowledged {
                        op: op.clone(),
                        transaction_id,
                    },
                );
                return;
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                history
                    .fates
                    .lock()
                    .unwrap()
                    .insert(op.key().to_string(), Fate::Refused);
                return;
            }
            Err(status) => {
                history.record_error(&status);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Starts `writers` writers; each sends its writes one after another, each settled before the
/// next, until `stop` is set (the write in hand is still settled).
pub fn start_writers(
    writers: usize,
    addr: &Address,
    history: &Arc<History>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<usize> {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let mut conn = Connection::new(addr.clone());
        let history = history.clone();
        let stop = stop.clone();
        set.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                settle(Op::nth(w, n), &mut conn, &history).await;
                n += 1;
            }
            n
        });
    }
    set
}

/// The end-of-run checks. `addr` must be up.
pub async fn check(history: &History, addr: &str, pool: &PgPool) -> Summary {
    let forbidden = history.forbidden.lock().unwrap().clone();
    assert!(
        forbidden.is_empty(),
        "answers that must never happen: {forbidden:?}"
    );
    let fates = history.fates.lock().unwrap().clone();
    let acked: Vec<(&String, &Op, &String)> = fates
        .iter()
        .filter_map(|(k, f)| match f {
            Fate::Acknowledged { op, transaction_id } => Some((k, op, transaction_id)),
            Fate::Refused => None,
        })
        .collect();

    // Every acknowledged key exists exactly once, bound to its transaction; no other key the
    // checker tried does (keys are stored as their hash: look up every key it sent).
    let tried: Vec<&str> = fates.keys().map(String::as_str).collect();
    let stored: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT t.k, i.entry_id::text FROM unnest($1::text[]) AS t(k) \
             JOIN idempotency_keys i ON i.key_hash = ledger_key_hash(t.k)",
    )
    .bind(&tried)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (key, _, transaction_id) in &acked {
        assert_eq!(
            stored.get(*key),
            Some(*transaction_id),
            "acknowledged key {key} is not stored with its transaction"
        );
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "the journal holds writes nobody saw acknowledged (or lost some)"
    );
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM journal j JOIN accounts a USING (account_id) WHERE a.user_id LIKE 'acct-%'",
    )
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        acked.len(),
        "journal rows != acknowledged writes"
    );

    // Every balance is what was acknowledged.
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, op, _) in &acked {
        *expected.entry(op.user()).or_default() += op.delta();
    }
    let mut client = LedgerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for (user, want) in &expected {
        assert_eq!(
            balance_of(&mut client, user).await,
            *want,
            "balance of {user}"
        );
    }

    // Every acknowledged key replays to the same transaction id.
    let mut replays = tokio::task::JoinSet::new();
    for chunk in acked.chunks(acked.len().div_ceil(16).max(1)) {
        let chunk: Vec<(Op, String)> = chunk
            .iter()
            .map(|(_, op, id)| ((*op).clone(), (*id).clone()))
            .collect();
        let mut client = client.clone();
        replays.spawn(async move {
            for (op, id) in chunk {
                let (replayed_id, replayed) = op.send(&mut client).await.unwrap();
                assert!(replayed, "{} was applied again on replay", op.key());
                assert_eq!(
                    replayed_id,
                    id,
                    "{} replayed to another transaction",
                    op.key()
                );
            }
        });
    }
    while let Some(r) = replays.join_next().await {
        r.unwrap();
    }

    let report = token_ledger::store::Store::from_pool(pool.clone())
        .verify()
        .await
        .unwrap();
    assert!(report.discrepancies.is_empty(), "verify: {report:?}");
    Summary {
        acknowledged: acked.len(),
        refused: fates.len() - acked.len(),
        errors: history.errors.lock().unwrap().clone(),
        journal_rows: report.journal_rows,
    }
}

/// What a scenario prints.
#[derive(Debug)]
pub struct Summary {
    pub acknowledged: usize,
    pub refused: usize,
    /// Failed attempts (later retried) by code.
    pub errors: BTreeMap<String, u64>,
    pub journal_rows: i64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes acknowledged and checked ({} journal rows, every key once, every replay the \
             same transaction, balances exact, verify clean), {} refused by the overdraft rule, \
             failed attempts retried with the same key: {:?}",
            self.acknowledged, self.journal_rows, self.refused, self.errors
        )
    }
}
