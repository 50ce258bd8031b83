//! The load itself: callers drawing accounts and sending calls, closed-loop or open-loop, and
//! the seeding before the measured window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use tonic::transport::Channel;

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

use crate::report::{MachineCpu, RunReport, Stats};
use crate::{BenchArgs, Distribution, Scenario};

/// Tokens a `hold` operation reserves, and the smaller amount it then commits (the AI call used
/// less than was held; the rest goes back to the account).
const HOLD_RESERVE_TOKENS: i64 = 1_000;
const HOLD_COMMIT_TOKENS: i64 = 700;

/// Tokens of each seeded lot: no run comes near emptying one (a run debits at most a few thousand
/// tokens per account), so every lot stays live and debits keep burning the same first lot.
const SEED_LOT_TOKENS: i64 = 1_000_000;

/// Seed grants in flight at once.
const SEED_CALLS_IN_FLIGHT_MAX: usize = 256;

/// A run's figures and the balance every account must have after it.
pub struct Run {
    pub report: RunReport,
    pub expected: BTreeMap<String, i64>,
}

/// What every caller of one run shares.
struct Shared {
    args: BenchArgs,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    users: Vec<String>,
    zipf_cdf: Vec<f64>,
    /// Successful debits per account, to check balances after the run.
    debited: Vec<AtomicI64>,
    credited: Vec<AtomicI64>,
    counter: AtomicU64,
    run_id: String,
}

impl Shared {
    fn new(args: &BenchArgs, api_key: Option<String>) -> anyhow::Result<Self> {
        let accounts = if args.scenario == Scenario::UsageHot {
            1
        } else {
            args.accounts.max(1)
        };
        let run_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let users = (0..accounts)
            .map(|i| format!("{run_id}-user-{i}"))
            .collect();
        let harmonic: f64 = (1..=accounts).map(|k| 1.0 / k as f64).sum();
        let mut acc = 0.0;
        let zipf_cdf = (1..=accounts)
            .map(|k| {
                acc += 1.0 / k as f64 / harmonic;
                acc
            })
            .collect();
        Ok(Shared {
            args: args.clone(),
            auth: api_key
                .map(|k| token_ledger::client::bearer(&k))
                .transpose()?,
            users,
            zipf_cdf,
            debited: (0..accounts).map(|_| AtomicI64::new(0)).collect(),
            credited: (0..accounts).map(|_| AtomicI64::new(0)).collect(),
            counter: AtomicU64::new(0),
            run_id,
        })
    }

    /// The balance each touched account must have: what was credited minus what was debited
    /// by calls that succeeded.
    fn expected(&self) -> BTreeMap<String, i64> {
        let mut expected = BTreeMap::new();
        for (i, user) in self.users.iter().enumerate() {
            let debited = self.debited[i].load(Ordering::Relaxed);
            let balance = self.credited[i].load(Ordering::Relaxed) - debited;
            if balance != 0 || debited != 0 {
                expected.insert(user.clone(), balance);
            }
        }
        expected
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        if self.args.scenario == Scenario::UsageHot {
            return 0;
        }
        match self.args.distribution {
            Distribution::Uniform => rng.random_range(0..self.users.len()),
            Distribution::Zipf => {
                let u: f64 = rng.random();
                self.zipf_cdf
                    .partition_point(|c| *c < u)
                    .min(self.users.len() - 1)
            }
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    fn key(&self) -> String {
        format!(
            "{}-{}",
            self.run_id,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Outcome of one call: events it carried, and its error code if any.
type CallOutcome = (u64, Option<tonic::Code>);

/// One bench usage event of `tokens` for `user`: priced by the ledger with `--priced` (the
/// bench model costs one token per input token), else caller-priced.
fn usage_event(s: &Shared, user: &str, tokens: i64) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.to_string(),
        tokens: if s.args.priced { 0 } else { tokens },
        idempotency_key: s.key(),
        model: BENCH_MODEL.into(),
        input_tokens: tokens,
        output_tokens: 0,
        feature: "bench".into(),
        ..Default::default()
    }
}

async fn one_call(
    s: &Shared,
    client: &mut LedgerServiceClient<Channel>,
    rng: &mut rand::rngs::StdRng,
) -> CallOutcome {
    let account = s.pick(rng);
    let user = &s.users[account];
    let tokens: i64 = rng.random_range(1..=20);
    let scenario = match s.args.scenario {
        Scenario::Mixed => match rng.random_range(0..100) {
            0..70 => Scenario::Usage,
            70..95 => Scenario::Balance,
            _ => Scenario::Mixed, // a grant
        },
        other => other,
    };
    match scenario {
        // `run` hands the checked scenario to `checked::run` before any load starts.
        Scenario::Checked => unreachable!("the checked scenario has its own callers"),
        Scenario::BalanceAt | Scenario::Summary => history_read(s, client, scenario, rng).await,
        Scenario::Usage | Scenario::UsageHot => {
            let r = client
                .track_usage(s.request(usage_event(s, user, tokens)))
                .await;
            if r.is_ok() {
                s.debited[account].fetch_add(tokens, Ordering::Relaxed);
            }
            (1, r.err().map(|e| e.code()))
        }
        Scenario::Balance => {
            let r = client
                .get_balance(s.request(pb::GetBalanceRequest {
                    user_id: user.clone(),
                    as_of: None,
                }))
                .await;
            (1, r.err().map(|e| e.code()))
        }
        Scenario::Mixed => {
            let r = client
                .grant(s.request(pb::GrantRequest {
                    user_id: user.clone(),
                    tokens: tokens * 10,
                    idempotency_key: s.key(),
                    source: pb::GrantSource::Admin as i32,
                    reason: "bench".into(),
                    ..Default::default()
                }))
                .await;
            if r.is_ok() {
                s.credited[account].fetch_add(tokens * 10, Ordering::Relaxed);
            }
            (1, r.err().map(|e| e.code()))
        }
        Scenario::Hold => match hold_pair(s, client, account).await {
            Ok(()) => (1, None),
            Err(status) => (0, Some(status.code())),
        },
        Scenario::Batch => batch_call(s, client, rng).await,
    }
}

/// A read over the first account's history (the one `--history-rows` fills): its balance as
/// of an instant of the last minute, or its usage summary over the last day and the next.
async fn history_read(
    s: &Shared,
    client: &mut LedgerServiceClient<Channel>,
    scenario: Scenario,
    rng: &mut rand::rngs::StdRng,
) -> CallOutcome {
    let at = |t: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_micros() as i32 * 1_000,
    };
    let code = if scenario == Scenario::BalanceAt {
        let back = rng.random_range(0..60_000_000i64);
        let instant = chrono::Utc::now() - chrono::Duration::microseconds(back);
        let req = s.request(pb::GetBalanceRequest {
            user_id: s.users[0].clone(),
            as_of: Some(at(instant)),
        });
        client.get_balance(req).await.err().map(|e| e.code())
    } else {
        // SummarizeUsage takes whole quarter hours.
        let quarter = chrono::Duration::minutes(15);
        let now = chrono::DurationRound::duration_trunc(chrono::Utc::now(), quarter)
            .unwrap_or_else(|_| chrono::Utc::now());
        let day = chrono::Duration::days(1);
        let req = s.request(pb::SummarizeUsageRequest {
            user_id: s.users[0].clone(),
            from: Some(at(now - day)),
            to: Some(at(now + day)),
            group_by: vec![pb::UsageGroup::Day as i32, pb::UsageGroup::Model as i32],
            ..Default::default()
        });
        client.summarize_usage(req).await.err().map(|e| e.code())
    };
    (1, code)
}

/// One TrackUsageBatch of `--batch-events` events over random accounts.
async fn batch_call(
    s: &Shared,
    client: &mut LedgerServiceClient<Channel>,
    rng: &mut rand::rngs::StdRng,
) -> CallOutcome {
    let mut accounts = Vec::with_capacity(s.args.batch_events);
    let events = (0..s.args.batch_events)
        .map(|_| {
            let a = s.pick(rng);
            let t: i64 = rng.random_range(1..=20);
            accounts.push((a, t));
            usage_event(s, &s.users[a], t)
        })
        .collect();
    match client
        .track_usage_batch(s.request(pb::TrackUsageBatchRequest { events }))
        .await
    {
        Ok(r) => {
            let results = r.into_inner().results;
            let mut first_error = None;
            for (res, (a, t)) in results.iter().zip(&accounts) {
                if res.code == 0 {
                    s.debited[*a].fetch_add(*t, Ordering::Relaxed);
                } else if first_error.is_none() {
                    first_error = Some(tonic::Code::from_i32(res.code));
                }
            }
            (
                results.iter().filter(|r| r.code == 0).count() as u64,
                first_error,
            )
        }
        Err(e) => (0, Some(e.code())),
    }
}

/// One `hold` operation on `account`: Reserve, then CommitHold of less than was held.
async fn hold_pair(
    s: &Shared,
    client: &mut LedgerServiceClient<Channel>,
    account: usize,
) -> Result<(), tonic::Status> {
    let hold_id = client
        .reserve(s.request(pb::ReserveRequest {
            user_id: s.users[account].clone(),
            tokens: HOLD_RESERVE_TOKENS,
            idempotency_key: s.key(),
            model: BENCH_MODEL.into(),
            feature: "bench".into(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .hold_id;
    client
        .commit_hold(s.request(pb::CommitHoldRequest {
            hold_id,
            tokens: if s.args.priced { 0 } else { HOLD_COMMIT_TOKENS },
            idempotency_key: s.key(),
            model: BENCH_MODEL.into(),
            input_tokens: HOLD_COMMIT_TOKENS,
            output_tokens: 0,
            feature: "bench".into(),
            ..Default::default()
        }))
        .await?;
    s.debited[account].fetch_add(HOLD_COMMIT_TOKENS, Ordering::Relaxed);
    Ok(())
}

/// Seeds accounts (lots and history), analyzes the database when given one (see
/// [`analyze`]), then runs warm-up and the measured window.
pub async fn drive(
    args: &BenchArgs,
    url: &str,
    api_key: Option<String>,
    label: &str,
    analyze_db_url: Option<&str>,
) -> anyhow::Result<Run> {
    let shared = Arc::new(Shared::new(args, api_key)?);
    let clients = connect(args, url).await?;
    seed(&shared, &clients).await?;
    if args.scenario == Scenario::Hold {
        seed_holds(&shared, &clients).await?;
    }
    if let Some(db_url) = analyze_db_url {
        analyze(db_url).await?;
    }
    let watchers = match args.watchers {
        0 => None,
        n => Some(crate::watchers::start(&clients, &shared.users, n, shared.auth.clone()).await?),
    };
    let updates_before = watchers.as_ref().map_or(0, |w| w.updates());

    let window = Window::starting_now(args);
    let cpu = tokio::spawn(machine_cpu(window));
    let missed = Arc::new(AtomicU64::new(0));
    let workers = match args.rate {
        None => closed_loop(&shared, &clients, window),
        Some(rate) => vec![open_loop(&shared, &clients, window, rate, missed.clone())],
    };
    let mut hist = new_histogram();
    let mut stats = Stats::default();
    for w in workers {
        let (h, s) = w.await?;
        hist.add(h)?;
        stats.merge(s);
    }
    let seconds = window.measure.as_secs_f64();
    let cpu = cpu.await?;
    let expected = shared.expected();
    if let Some(watchers) = watchers {
        // Counted from the start of the warm-up.
        let updates = watchers.updates() - updates_before;
        let since = seconds + args.warmup_secs as f64;
        watchers.settle(&expected, updates, since).await?;
    }
    Ok(Run {
        report: RunReport {
            label: label.to_string(),
            unit: args.scenario.unit(),
            calls: stats.calls,
            events: stats.events,
            seconds,
            events_per_sec: stats.events as f64 / seconds,
            calls_per_sec: stats.calls as f64 / seconds,
            latency_us: [
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.9),
                hist.value_at_quantile(0.99),
                hist.value_at_quantile(0.999),
                hist.max(),
            ],
            errors: stats.errors,
            missed_sends: missed.load(Ordering::Relaxed),
            server_peak_rss_kib: None,
            storage_bytes_per_usage_row: None,
            machine_cpu: cpu.map(|(busy, seconds)| MachineCpu {
                busy_percent: 100.0 * busy / seconds,
                us_per_event: busy * 1e6 / stats.events.max(1) as f64,
            }),
            verified: "not verified (external server)".into(),
        },
        expected,
    })
}

/// `ANALYZE` on the run's fresh database, once seeded. The server's pooled connections keep a
/// generic plan for each prepared statement, made when the statement first ran: on a database
/// created seconds ago that was while the tables were nearly empty, where a sequential scan is
/// the cheapest plan (the batch's `UPDATE accounts … = ANY($1)` below about 1,000 accounts, for
/// one). Nothing replaces those plans during a run of seconds (autovacuum would not have analyzed
/// so young a database yet, where it is on at all), so every batch would scan whole tables and
/// the figures would depend on how big each table was when each connection first planned.
/// `ANALYZE` is what autovacuum does on a live database: the statistics it writes invalidate the
/// cached plans, and the next executions plan against the real sizes. A table still empty here
/// is planned as empty (sequential scans) until the end of the run: hence `seed_holds`.
async fn analyze(db_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let started = Instant::now();
    let mut conn = sqlx::PgConnection::connect(db_url).await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    println!(
        "analyzed the seeded database in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The whole machine's busy CPU time over the measured window, and the CPU time there was to
/// have (cores × seconds), from `/proc/stat` (Linux only): CPU per event is steadier than events
/// per second on a shared machine, where a round's rate swings with what else runs. It counts
/// every process (load generator, server and PostgreSQL alike).
async fn machine_cpu(window: Window) -> Option<(f64, f64)> {
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = proc_stat_jiffies()?;
    tokio::time::sleep_until(window.end.into()).await;
    let after = proc_stat_jiffies()?;
    // USER_HZ is 100 on every Linux this runs on.
    let busy = (after.0 - before.0) as f64 / 100.0;
    let total = (after.1 - before.1) as f64 / 100.0;
    Some((busy, total))
}

/// (busy, total) jiffies of all CPUs: busy is everything but idle and iowait.
fn proc_stat_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// The warm-up and the measured window, from the run's start.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    measure: Duration,
}

impl Window {
    fn starting_now(args: &BenchArgs) -> Self {
        let start = Instant::now();
        let measure = Duration::from_secs(args.duration_secs);
        let measure_from = start + Duration::from_secs(args.warmup_secs);
        Window {
            start,
            measure_from,
            end: measure_from + measure,
            measure,
        }
    }
}

type Worker = tokio::task::JoinHandle<(Histogram<u64>, Stats)>;

/// Opens `--connections` HTTP/2 connections for the callers to share.
async fn connect(args: &BenchArgs, url: &str) -> anyhow::Result<Vec<LedgerServiceClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = Channel::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(
            LedgerServiceClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        );
    }
    Ok(clients)
}

/// The `k`-th seed grant of an account. The first never expires at priority 0 (the one grant
/// every account got before lots existed); each further one expires `k` years from now at
/// priority `k - 1`, so the accounts hold lots of different expiries and priorities and debits
/// burn the second (priority 0, expiring) first. Nothing expires during a run.
fn seed_grant(shared: &Shared, account: usize, k: u32) -> pb::GrantRequest {
    const YEAR_SECS: i64 = 365 * 24 * 3600;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (expires_at, priority) = match k {
        0 => (None, 0),
        k => (
            Some(prost_types::Timestamp {
                seconds: now_secs + i64::from(k) * YEAR_SECS,
                nanos: 0,
            }),
            k as i32 - 1,
        ),
    };
    pb::GrantRequest {
        user_id: shared.users[account].clone(),
        tokens: SEED_LOT_TOKENS,
        idempotency_key: shared.key(),
        source: pb::GrantSource::Admin as i32,
        reason: "bench seed".into(),
        expires_at,
        priority,
        ..Default::default()
    }
}

/// `--lots` credits per account (each its own lot), and `--history-rows` usage rows on the
/// first account.
/// The model the bench's usage names.
const BENCH_MODEL: &str = "bench-model";

async fn seed(shared: &Shared, clients: &[LedgerServiceClient<Channel>]) -> anyhow::Result<()> {
    if shared.args.priced {
        // One token per input token: a priced call debits what a caller-priced one would.
        let mut c = clients[0].clone();
        c.set_model_price(shared.request(pb::SetModelPriceRequest {
            model: BENCH_MODEL.into(),
            rates: Some(pb::ModelRates {
                input_per_million: 1_000_000,
                ..Default::default()
            }),
            idempotency_key: shared.key(),
            ..Default::default()
        }))
        .await?;
    }
    let lots = shared.args.lots;
    if lots > 0 {
        let started = Instant::now();
        let grants: Vec<(usize, u32)> = (0..shared.users.len())
            .flat_map(|a| (0..lots).map(move |k| (a, k)))
            .collect();
        for chunk in grants.chunks(SEED_CALLS_IN_FLIGHT_MAX) {
            let mut calls = Vec::with_capacity(chunk.len());
            for (i, &(a, k)) in chunk.iter().enumerate() {
                let mut c = clients[i % clients.len()].clone();
                let req = shared.request(seed_grant(shared, a, k));
                calls.push(tokio::spawn(async move { c.grant(req).await }));
            }
            for (call, &(a, _)) in calls.into_iter().zip(chunk) {
                call.await??;
                shared.credited[a].fetch_add(SEED_LOT_TOKENS, Ordering::Relaxed);
            }
        }
        println!(
            "seeded {lots} lots on each of {} accounts in {:.1} s",
            shared.users.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let rows = shared.args.history_rows;
    if rows > 0 {
        let mut client = clients[0].clone();
        let started = Instant::now();
        let mut done = 0u64;
        while done < rows {
            let n = (rows - done).min(1_000);
            let events = (0..n)
                .map(|_| pb::TrackUsageRequest {
                    user_id: shared.users[0].clone(),
                    tokens: 1,
                    idempotency_key: shared.key(),
                    model: "seed".into(),
                    ..Default::default()
                })
                .collect();
            let r = client
                .track_usage_batch(shared.request(pb::TrackUsageBatchRequest { events }))
                .await?
                .into_inner();
            let ok = r.results.iter().filter(|r| r.code == 0).count() as i64;
            shared.debited[0].fetch_add(ok, Ordering::Relaxed);
            done += n;
        }
        println!(
            "seeded {rows} history rows on {} in {:.1} s",
            shared.users[0],
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// One committed hold per account before measuring, so `token_holds` has a history when the
/// database is analyzed, as on a live ledger where every AI call left one. Without it the table
/// is empty when the server plans its hold statements and they scan it whole for the rest of the
/// run (see [`analyze`]).
async fn seed_holds(
    shared: &Arc<Shared>,
    clients: &[LedgerServiceClient<Channel>],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let accounts: Vec<usize> = (0..shared.users.len()).collect();
    for chunk in accounts.chunks(SEED_CALLS_IN_FLIGHT_MAX) {
        let mut calls = Vec::with_capacity(chunk.len());
        for (i, &a) in chunk.iter().enumerate() {
            let mut c = clients[i % clients.len()].clone();
            let s = shared.clone();
            calls.push(tokio::spawn(async move { hold_pair(&s, &mut c, a).await }));
        }
        for call in calls {
            call.await??;
        }
    }
    println!(
        "seeded one committed hold on each of {} accounts in {:.1} s",
        shared.users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--concurrency` callers, each sending as soon as its previous call returned.
fn closed_loop(
    shared: &Arc<Shared>,
    clients: &[LedgerServiceClient<Channel>],
    window: Window,
) -> Vec<Worker> {
    (0..shared.args.concurrency.max(1))
        .map(|w| {
            let s = shared.clone();
            let mut c = clients[w % clients.len()].clone();
            tokio::spawn(async move {
                let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(w as u64);
                let mut hist = new_histogram();
                let mut stats = Stats::default();
                while Instant::now() < window.end {
                    let t0 = Instant::now();
                    let (events, err) = one_call(&s, &mut c, &mut rng).await;
                    if t0 >= window.measure_from {
                        stats.record(&mut hist, t0.elapsed(), events, err);
                    }
                }
                (hist, stats)
            })
        })
        .collect()
}

/// Open loop: one scheduler issues calls on a fixed timetable into at most `--concurrency` in
/// flight; latency counts from the scheduled instant, and a call that finds every slot busy is
/// counted as missed.
fn open_loop(
    shared: &Arc<Shared>,
    clients: &[LedgerServiceClient<Channel>],
    window: Window,
    rate: u64,
    missed: Arc<AtomicU64>,
) -> Worker {
    let s = shared.clone();
    let clients = clients.to_vec();
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(s.args.concurrency.max(1)));
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, CallOutcome, bool)>();
        let mut n: u64 = 0;
        loop {
            let scheduled = window.start + interval.mul_f64(n as f64);
            if scheduled >= window.end {
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            n += 1;
            let measured = scheduled >= window.measure_from;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if measured {
                    missed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let s = s.clone();
            let mut c = clients[n as usize % clients.len()].clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(n);
                let outcome = one_call(&s, &mut c, &mut rng).await;
                let _ = tx.send((scheduled.elapsed(), outcome, measured));
                drop(permit);
            });
        }
        drop(tx);
        let mut hist = new_histogram();
        let mut stats = Stats::default();
        while let Some((latency, (events, err), measured)) = rx.recv().await {
            if measured {
                stats.record(&mut hist, latency, events, err);
            }
        }
        (hist, stats)
    })
}
