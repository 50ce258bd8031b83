//! `--scenario checked`: a load that proves nothing was lost or doubled while something failed
//! underneath it (a database failover, a replica drained behind a proxy).
//!
//! Callers send Grants of known amounts, each with a unique idempotency key, over fresh accounts
//! of their own; a call that fails is retried with the SAME key (as a client of the ledger is
//! told to) until it is acknowledged or `--retry-deadline-secs` passes. Every acknowledgement
//! (key, account, amount, transaction id, instant) is recorded. At the end the journal is read
//! back over gRPC: every acknowledged write must be there exactly once, under the transaction id
//! it was acknowledged with, and each account's balance must equal the sum of its acknowledged
//! grants. The outage is the longest time between two acknowledgements, from any caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng;
use tonic::transport::Channel;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

use crate::BenchArgs;

/// How long one attempt may take before it counts as failed and is retried (same key).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed attempt, doubling up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Journal rows read back per ListTransactions page (the server's maximum).
const READ_PAGE_SIZE: i32 = 500;

/// One acknowledged write.
struct Ack {
    account: usize,
    key: String,
    tokens: i64,
    transaction_id: String,
    /// Since the start of the run.
    at: Duration,
}

/// What every caller shares.
struct Shared {
    users: Vec<String>,
    run_id: String,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    started: Instant,
    stop: AtomicBool,
    next_key: AtomicU64,
    acks: Mutex<Vec<Ack>>,
    /// Calls given up at the retry deadline: (key, last error).
    lost: Mutex<Vec<(String, String)>>,
    /// Failed attempts, by gRPC code.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Calls that needed more than one attempt.
    retried_calls: AtomicU64,
    /// Acknowledgements and failed attempts per second of the run, for the timeline.
    per_second: Mutex<BTreeMap<u64, (u64, u64)>>,
    retry_deadline: Duration,
}

impl Shared {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(ATTEMPT_TIMEOUT);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    fn tick(&self, acked: bool) {
        let second = self.started.elapsed().as_secs();
        let mut per_second = self.per_second.lock().expect("no panics under this lock");
        let entry = per_second.entry(second).or_default();
        if acked {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
}

/// Runs the checked load against `--ledger-url`, prints the verdict, and fails when anything
/// acknowledged was lost or doubled, a call was never acknowledged, or a balance is off.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let url = args
        .ledger_url
        .as_deref()
        .context("--scenario checked needs --ledger-url (the ledger, or the proxy in front)")?;
    let run_id = format!("checked-{}", uuid::Uuid::new_v4().simple());
    let shared = Arc::new(Shared {
        users: (0..args.accounts.max(1))
            .map(|i| format!("{run_id}-user-{i}"))
            .collect(),
        run_id,
        auth: args
            .api_key
            .as_deref()
            .map(token_ledger::client::bearer)
            .transpose()?,
        started: Instant::now(),
        stop: AtomicBool::new(false),
        next_key: AtomicU64::new(0),
        acks: Mutex::default(),
        lost: Mutex::default(),
        failures: Mutex::default(),
        retried_calls: AtomicU64::new(0),
        per_second: Mutex::default(),
        retry_deadline: Duration::from_secs(args.retry_deadline_secs),
    });
    println!(
        "checked load: Grants from {} callers over {} connections to {url}, {} accounts, {} s; \
         each call retried with its key for up to {} s; {} cores",
        args.concurrency.max(1),
        args.connections.max(1),
        shared.users.len(),
        args.duration_secs,
        args.retry_deadline_secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let clients = connect_lazy(url, args.connections)?;
    let callers: Vec<_> = (0..args.concurrency.max(1))
        .map(|i| tokio::spawn(caller(shared.clone(), clients[i % clients.len()].clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let load_secs = shared.started.elapsed().as_secs_f64();
    for c in callers {
        c.await?;
    }
    print_timeline(&shared);
    let read = read_back(&shared, &clients[0]).await?;
    verdict(&shared, &read, load_secs)
}

/// Channels that connect on first use and reconnect on their own (a proxy or a ledger that is
/// not up yet, or restarts, is retried like any failed call).
fn connect_lazy(
    url: &str,
    connections: usize,
) -> anyhow::Result<Vec<LedgerServiceClient<Channel>>> {
    (0..connections.max(1))
        .map(|_| {
            let channel = Channel::from_shared(url.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            Ok(LedgerServiceClient::new(channel))
        })
        .collect()
}

/// One caller: a Grant at a time until told to stop, each retried with its key until acknowledged.
async fn caller(s: Arc<Shared>, mut client: LedgerServiceClient<Channel>) {
    while !s.stop.load(Ordering::Relaxed) {
        let (account, tokens) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..s.users.len()),
                rng.random_range(1..=1_000),
            )
        };
        let key = format!(
            "{}-{}",
            s.run_id,
            s.next_key.fetch_add(1, Ordering::Relaxed)
        );
        let first = Instant::now();
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = client
                .grant(s.request(pb::GrantRequest {
                    user_id: s.users[account].clone(),
                    tokens,
                    idempotency_key: key.clone(),
                    source: pb::GrantSource::Admin as i32,
                    reason: "checked load".into(),
                    ..Default::default()
                }))
                .await;
            match answer {
                Ok(r) => {
                    s.tick(true);
                    if attempts > 1 {
                        s.retried_calls.fetch_add(1, Ordering::Relaxed);
                    }
                    let at = s.started.elapsed();
                    s.acks.lock().expect("no panics under this lock").push(Ack {
                        account,
                        key,
                        tokens,
                        transaction_id: r.into_inner().transaction_id,
                        at,
                    });
                    break;
                }
                Err(status) => {
                    s.tick(false);
                    *s.failures
                        .lock()
                        .expect("no panics under this lock")
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    if first.elapsed() >= s.retry_deadline {
                        s.lost
                            .lock()
                            .expect("no panics under this lock")
                            .push((key, format!("{:?}: {}", status.code(), status.message())));
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Seconds with failures, and the seconds around them, as `t acked failed` lines.
fn print_timeline(s: &Shared) {
    let per_second = s.per_second.lock().expect("no panics under this lock");
    let failing: Vec<u64> = per_second
        .iter()
        .filter(|(_, (_, failed))| *failed > 0)
        .map(|(t, _)| *t)
        .collect();
    if failing.is_empty() {
        return;
    }
    println!("timeline (second of the run: acknowledged, failed attempts), around the failures:");
    let near = |t: u64| failing.iter().any(|f| t + 2 >= *f && t <= f + 2);
    for (t, (acked, failed)) in per_second.iter().filter(|(t, _)| near(**t)) {
        println!("  {t:>4}s  acked {acked:>6}  failed {failed:>6}");
    }
}

/// What the ledger holds for the run's accounts: each journal row's key and transaction id,
/// and each balance.
struct ReadBack {
    rows: HashMap<String, Vec<String>>,
    balances: Vec<i64>,
}

async fn read_back(s: &Shared, client: &LedgerServiceClient<Channel>) -> anyhow::Result<ReadBack> {
    let mut client = client.clone();
    let mut rows: HashMap<String, Vec<String>> = HashMap::new();
    let mut balances = Vec::with_capacity(s.users.len());
    for user in &s.users {
        let mut page_token = String::new();
        loop {
            let page = client
                .list_transactions(s.request(pb::ListTransactionsRequest {
                    user_id: user.clone(),
                    page_size: READ_PAGE_SIZE,
                    page_token: page_token.clone(),
                    ..Default::default()
                }))
                .await
                .with_context(|| format!("reading back the journal of {user}"))?
                .into_inner();
            for t in page.transactions {
                rows.entry(t.idempotency_key).or_default().push(t.id);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let balance = client
            .get_balance(s.request(pb::GetBalanceRequest {
                user_id: user.clone(),
                ..Default::default()
            }))
            .await
            .with_context(|| format!("reading back the balance of {user}"))?
            .into_inner()
            .balance;
        balances.push(balance);
    }
    Ok(ReadBack { rows, balances })
}

/// Compares what was acknowledged with what the ledger holds and prints the figures.
fn verdict(s: &Shared, read: &ReadBack, load_secs: f64) -> anyhow::Result<()> {
    let mut acks = std::mem::take(&mut *s.acks.lock().expect("no panics under this lock"));
    acks.sort_by_key(|a| a.at);
    let lost = s.lost.lock().expect("no panics under this lock");
    let mut missing = 0;
    let mut doubled = 0;
    let mut wrong_id = 0;
    let mut expected = vec![0i64; s.users.len()];
    for a in &acks {
        expected[a.account] += a.tokens;
        match read.rows.get(&a.key).map(Vec::as_slice) {
            None | Some([]) => missing += 1,
            Some([id]) if *id == a.transaction_id => {}
            Some([_]) => wrong_id += 1,
            Some(_) => doubled += 1,
        }
    }
    // Rows whose key was never acknowledged: calls given up at the deadline that had committed.
    let acked_keys: std::collections::HashSet<&str> = acks.iter().map(|a| a.key.as_str()).collect();
    let unacknowledged_rows = read
        .rows
        .keys()
        .filter(|k| !acked_keys.contains(k.as_str()))
        .count();
    let balance_mismatches = expected
        .iter()
        .zip(&read.balances)
        .filter(|(e, b)| e != b)
        .count();
    // The outage: the longest time with no acknowledgement, from the start to the end of load.
    let mut edges: Vec<Duration> = vec![Duration::ZERO];
    edges.extend(acks.iter().map(|a| a.at));
    let (gap, gap_from) = edges
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default();
    let failures = s.failures.lock().expect("no panics under this lock");
    let failed_attempts: u64 = failures.values().sum();
    println!(
        "checked load: {:.1} s of load, {} calls",
        load_secs,
        acks.len() + lost.len()
    );
    println!(
        "  acknowledged {}  ({:.0}/s)  retried calls {}  failed attempts {} {:?}",
        acks.len(),
        acks.len() as f64 / load_secs.max(1e-9),
        s.retried_calls.load(Ordering::Relaxed),
        failed_attempts,
        *failures
    );
    println!(
        "  lost {} (acknowledged but missing {missing}; never acknowledged {})  doubled {doubled}  wrong transaction id {wrong_id}  balance mismatches {balance_mismatches}  rows never acknowledged {unacknowledged_rows}",
        missing + lost.len(),
        lost.len()
    );
    println!(
        "  write outage: longest gap between acknowledgements {:.2} s (from t={:.2} s)",
        gap.as_secs_f64(),
        gap_from.as_secs_f64()
    );
    for (key, why) in lost.iter().take(5) {
        println!("  never acknowledged: {key}: {why}");
    }
    let ok = missing == 0
        && lost.is_empty()
        && doubled == 0
        && wrong_id == 0
        && balance_mismatches == 0
        && unacknowledged_rows == 0;
    if ok {
        println!("  CHECK OK: every acknowledged write is in the journal exactly once; every balance is the sum of its acknowledged writes");
        Ok(())
    } else {
        anyhow::bail!("CHECK FAILED")
    }
}
