//! `token-ledger bench`: a load generator over real gRPC.
//!
//! It can start its own server (this binary, `serve`, as a child process, so the server's peak
//! RSS is its own) on a fresh database, run one scenario closed-loop (N callers, each sending as
//! soon as its previous call returned) or open-loop (a target rate; a call that cannot be sent on
//! time because every caller is busy is counted as missed), and report throughput and latency
//! percentiles (HDR histogram) and errors by code, as text and JSON. With `--compare` it runs the
//! same scenario at `--batch-max 1` (one transaction per write, the baseline) and at the default,
//! and prints the ratio. After every run it checks the ledger invariant (`verify`) and that every
//! account's balance is exactly what the successful calls say.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use sqlx::Connection;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::ledger_service_client::LedgerServiceClient;
use crate::store::{Store, StoreConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// TrackUsage over many accounts.
    Usage,
    /// TrackUsage on one account.
    UsageHot,
    /// GetBalance over many accounts.
    Balance,
    /// 70% TrackUsage, 25% GetBalance, 5% Grant.
    Mixed,
    /// TrackUsageBatch, --batch-events per call.
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent 1: a few accounts take most of the load.
    Zipf,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Usage)]
    pub scenario: Scenario,
    /// Accounts the load spreads over (usage, balance, mixed, batch).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Concurrent callers (closed loop), or most calls in flight (open loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Open loop at this many calls per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<u64>,
    /// HTTP/2 connections the callers share (as several backend processes would open).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Events per TrackUsageBatch call (batch scenario).
    #[arg(long, default_value_t = 100)]
    pub batch_events: usize,
    /// Seed the first account with this many usage rows before measuring (to show GetBalance does
    /// not depend on history length).
    #[arg(long, default_value_t = 0)]
    pub history_rows: u64,
    /// Benchmark a running server instead of starting one (its data is not verified).
    #[arg(long)]
    pub ledger_url: Option<String>,
    /// API key for --ledger-url.
    #[arg(long, env = "TOKEN_LEDGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PostgreSQL server for the self-started ledger: a fresh database is created on it for each
    /// run and dropped after. Default: the embedded cluster in ./data/bench-postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// --batch-max of the self-started server.
    #[arg(long)]
    pub batch_max: Option<usize>,
    /// Run at --batch-max 1 and at the default, and print the ratio.
    #[arg(long)]
    pub compare: bool,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the benchmark databases.
    #[arg(long)]
    pub keep: bool,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub label: String,
    pub calls: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub calls_per_sec: f64,
    pub latency_us: [u64; 5],
    pub errors: BTreeMap<String, u64>,
    pub missed_sends: u64,
    pub server_peak_rss_kib: Option<u64>,
    pub storage_bytes_per_usage_row: Option<f64>,
    pub verified: String,
}

impl RunReport {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "label": self.label, "calls": self.calls, "events": self.events, "seconds": self.seconds,
            "events_per_sec": self.events_per_sec, "calls_per_sec": self.calls_per_sec,
            "latency_us": {"p50": self.latency_us[0], "p90": self.latency_us[1], "p99": self.latency_us[2],
                           "p99_9": self.latency_us[3], "max": self.latency_us[4]},
            "errors": self.errors, "missed_sends": self.missed_sends,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "storage_bytes_per_usage_row": self.storage_bytes_per_usage_row,
            "verified": self.verified,
        })
    }

    fn print(&self) {
        println!(
            "{:<28} {:>10.0} events/s {:>9.0} calls/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms",
            self.label,
            self.events_per_sec,
            self.calls_per_sec,
            self.latency_us[0] as f64 / 1000.0,
            self.latency_us[1] as f64 / 1000.0,
            self.latency_us[2] as f64 / 1000.0,
            self.latency_us[3] as f64 / 1000.0,
            self.latency_us[4] as f64 / 1000.0,
        );
        println!(
            "{:<28} {} calls, {} events in {:.1} s; errors {:?}; missed sends {}; server peak RSS {}; storage {}; {}",
            "",
            self.calls,
            self.events,
            self.seconds,
            self.errors,
            self.missed_sends,
            self.server_peak_rss_kib
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            self.storage_bytes_per_usage_row
                .map_or("-".into(), |b| format!("{b:.0} B/usage row")),
            self.verified
        );
    }
}

/// Runs the benchmark the arguments describe.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "token-ledger bench: scenario {:?}, {} accounts ({:?}), concurrency {}, {} s + {} s warm-up, {}; {} cores, {}",
        args.scenario,
        args.accounts,
        args.distribution,
        args.concurrency,
        args.duration_secs,
        args.warmup_secs,
        args.rate.map_or("closed loop".to_string(), |r| format!("open loop at {r}/s")),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        host
    );
    let mut reports = Vec::new();
    if let Some(url) = &args.ledger_url {
        reports.push(drive(&args, url, args.api_key.clone(), "external server").await?);
    } else {
        let batches: Vec<Option<usize>> = if args.compare {
            vec![
                Some(1),
                args.batch_max.or(Some(crate::ledger::BATCH_MAX_DEFAULT)),
            ]
        } else {
            vec![args.batch_max]
        };
        for batch_max in batches {
            let label = match batch_max {
                Some(1) => "batch max 1 (baseline)".to_string(),
                Some(n) => format!("batch max {n}"),
                None => "default".to_string(),
            };
            reports.push(self_hosted(&args, batch_max, &label).await?);
        }
    }
    println!();
    for r in &reports {
        r.print();
    }
    if reports.len() == 2 {
        let ratio = reports[1].events_per_sec / reports[0].events_per_sec.max(1e-9);
        println!("ratio default / baseline: {ratio:.1}x events/s");
    }
    if let Some(path) = &args.json {
        let value = json!({
            "scenario": format!("{:?}", args.scenario), "accounts": args.accounts,
            "distribution": format!("{:?}", args.distribution), "concurrency": args.concurrency,
            "duration_secs": args.duration_secs, "rate": args.rate, "batch_events": args.batch_events,
            "runs": reports.iter().map(RunReport::to_json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}

const BENCH_KEY: &str = "bench-admin-secret-0123456789";

/// Starts `token-ledger serve` as a child on a fresh database, drives it, verifies, stops it.
async fn self_hosted(
    args: &BenchArgs,
    batch_max: Option<usize>,
    label: &str,
) -> anyhow::Result<RunReport> {
    let (admin_url, _embedded) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = crate::embedded_pg::EmbeddedPostgres::start(
                &crate::embedded_pg::DataDir::Default("./data/bench-postgres".into()),
            )
            .await?;
            (pg.url_for("postgres"), Some(pg))
        }
    };
    let admin_options: sqlx::postgres::PgConnectOptions = admin_url.parse()?;
    let db_name = format!("tl_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect_with(&admin_options).await?;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await?;
    let db_options = admin_options.clone().database(&db_name);
    let db_url = crate::store::url_of(&db_options);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--database-url",
        &db_url,
    ])
    .args(["--api-key", &format!("bench:admin:{BENCH_KEY}")])
    .args(["--db-pool-max", "16"])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .kill_on_drop(true);
    if let Some(n) = batch_max {
        cmd.args(["--batch-max", &n.to_string()]);
    }
    let mut child = cmd.spawn().context("starting the server")?;
    let pid = child.id().unwrap_or(0);
    let url = format!("http://127.0.0.1:{port}");
    wait_for_server(&url).await?;

    let result = drive(args, &url, Some(BENCH_KEY.to_string()), label).await;
    let peak_rss = read_peak_rss_kib(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let mut report = result?;
    report.server_peak_rss_kib = peak_rss;

    // Check the books: the invariant, and each account's exact balance.
    let store = Store::connect_lazy(&StoreConfig {
        database_url: db_url.clone(),
        pool_connections_max: 2,
        pool_acquire_timeout: Duration::from_secs(10),
    })?;
    let verify = store
        .verify()
        .await
        .map_err(|e| anyhow::anyhow!("verify: {e}"))?;
    let storage: Option<(i64, i64)> = sqlx::query_as(
        "SELECT (pg_total_relation_size('token_usage') + pg_total_relation_size('idempotency_keys'))::bigint, \
         (SELECT count(*) FROM token_usage)",
    )
    .fetch_optional(store.pool())
    .await?;
    report.storage_bytes_per_usage_row = storage
        .filter(|(_, n)| *n > 0)
        .map(|(b, n)| b as f64 / n as f64);
    let expected = EXPECTED.lock().map(|m| m.clone()).unwrap_or_default();
    let actual: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, balance FROM accounts")
        .fetch_all(store.pool())
        .await?;
    let mut mismatches = 0;
    for (user, balance) in &actual {
        if expected.get(user).copied().unwrap_or(0) != *balance {
            mismatches += 1;
        }
    }
    let missing = expected
        .keys()
        .filter(|u| !actual.iter().any(|(a, _)| a == *u))
        .count();
    store.close().await;
    report.verified = if verify.discrepancies.is_empty() && mismatches == 0 && missing == 0 {
        format!(
            "verified: {} accounts, {} journal rows, balances exact",
            verify.accounts_checked, verify.journal_rows
        )
    } else {
        format!(
            "VERIFY FAILED: {} discrepancies, {mismatches} balances off, {missing} accounts missing",
            verify.discrepancies.len()
        )
    };
    if !args.keep {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    if let Some(pg) = _embedded {
        pg.stop().await?;
    }
    if report.verified.starts_with("VERIFY FAILED") {
        report.print();
        bail!("{}", report.verified);
    }
    Ok(report)
}

fn read_peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn wait_for_server(url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(channel) = Channel::from_shared(url.to_string())?.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                if r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server at {url} never became SERVING")
}

/// Expected balances of the current self-hosted run, by user.
static EXPECTED: std::sync::Mutex<BTreeMap<String, i64>> = std::sync::Mutex::new(BTreeMap::new());

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
        Scenario::Usage | Scenario::UsageHot => {
            let r = client
                .track_usage(s.request(pb::TrackUsageRequest {
                    user_id: user.clone(),
                    tokens,
                    idempotency_key: s.key(),
                    model: "bench-model".into(),
                    input_tokens: tokens,
                    output_tokens: 0,
                    feature: "bench".into(),
                }))
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
        Scenario::Batch => {
            let mut accounts = Vec::with_capacity(s.args.batch_events);
            let events = (0..s.args.batch_events)
                .map(|_| {
                    let a = s.pick(rng);
                    let t: i64 = rng.random_range(1..=20);
                    accounts.push((a, t));
                    pb::TrackUsageRequest {
                        user_id: s.users[a].clone(),
                        tokens: t,
                        idempotency_key: s.key(),
                        model: "bench-model".into(),
                        input_tokens: t,
                        output_tokens: 0,
                        feature: "bench".into(),
                    }
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
    }
}

/// Seeds accounts (balance scenario and history), then runs warm-up and the measured window.
async fn drive(
    args: &BenchArgs,
    url: &str,
    api_key: Option<String>,
    label: &str,
) -> anyhow::Result<RunReport> {
    let accounts = if args.scenario == Scenario::UsageHot {
        1
    } else {
        args.accounts.max(1)
    };
    let run_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let users: Vec<String> = (0..accounts)
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
    let shared = Arc::new(Shared {
        args: args.clone(),
        auth: api_key.map(|k| format!("Bearer {k}").parse()).transpose()?,
        users,
        zipf_cdf,
        debited: (0..accounts).map(|_| AtomicI64::new(0)).collect(),
        credited: (0..accounts).map(|_| AtomicI64::new(0)).collect(),
        counter: AtomicU64::new(0),
        run_id,
    });
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
    let mut client = clients[0].clone();

    // Seed: a credit per account so balances exist (and the balance scenario reads real rows).
    if matches!(args.scenario, Scenario::Balance | Scenario::Mixed) {
        for chunk in (0..accounts).collect::<Vec<_>>().chunks(64) {
            let mut calls = Vec::new();
            for &a in chunk {
                let mut c = client.clone();
                let req = shared.request(pb::GrantRequest {
                    user_id: shared.users[a].clone(),
                    tokens: 1_000_000,
                    idempotency_key: shared.key(),
                    source: pb::GrantSource::Admin as i32,
                    reason: "bench seed".into(),
                    ..Default::default()
                });
                calls.push(tokio::spawn(async move { c.grant(req).await }));
            }
            for (call, &a) in calls.into_iter().zip(chunk) {
                call.await??;
                shared.credited[a].fetch_add(1_000_000, Ordering::Relaxed);
            }
        }
    }
    if args.history_rows > 0 {
        let started = Instant::now();
        let mut done = 0u64;
        while done < args.history_rows {
            let n = (args.history_rows - done).min(1_000);
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
            "seeded {} history rows on {} in {:.1} s",
            args.history_rows,
            shared.users[0],
            started.elapsed().as_secs_f64()
        );
    }

    let warmup = Duration::from_secs(args.warmup_secs);
    let measure = Duration::from_secs(args.duration_secs);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let missed = Arc::new(AtomicU64::new(0));

    let mut workers = Vec::new();
    match args.rate {
        None => {
            for w in 0..args.concurrency.max(1) {
                let s = shared.clone();
                let mut c = clients[w % clients.len()].clone();
                workers.push(tokio::spawn(async move {
                    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(w as u64);
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                        .expect("histogram bounds");
                    let mut stats = Stats::default();
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let (events, err) = one_call(&s, &mut c, &mut rng).await;
                        if t0 >= measure_from {
                            stats.record(&mut hist, t0.elapsed(), events, err);
                        }
                    }
                    (hist, stats)
                }));
            }
        }
        Some(rate) => {
            // Open loop: one scheduler issues calls on a fixed timetable into at most
            // `concurrency` in flight; latency counts from the scheduled instant.
            let s = shared.clone();
            let clients = clients.clone();
            let missed = missed.clone();
            workers.push(tokio::spawn(async move {
                let permits = Arc::new(tokio::sync::Semaphore::new(s.args.concurrency.max(1)));
                let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
                    Duration,
                    u64,
                    Option<tonic::Code>,
                    bool,
                )>();
                let mut n: u64 = 0;
                loop {
                    let scheduled = start + interval.mul_f64(n as f64);
                    if scheduled >= end {
                        break;
                    }
                    tokio::time::sleep_until(scheduled.into()).await;
                    n += 1;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        if scheduled >= measure_from {
                            missed.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    };
                    let s = s.clone();
                    let mut c = clients[n as usize % clients.len()].clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(n);
                        let (events, err) = one_call(&s, &mut c, &mut rng).await;
                        let _ =
                            tx.send((scheduled.elapsed(), events, err, scheduled >= measure_from));
                        drop(permit);
                    });
                }
                drop(tx);
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut stats = Stats::default();
                while let Some((latency, events, err, measured)) = rx.recv().await {
                    if measured {
                        stats.record(&mut hist, latency, events, err);
                    }
                }
                (hist, stats)
            }));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut stats = Stats::default();
    for w in workers {
        let (h, s) = w.await?;
        hist.add(h)?;
        stats.merge(s);
    }
    let seconds = measure.as_secs_f64();
    let mut expected = BTreeMap::new();
    for (i, user) in shared.users.iter().enumerate() {
        let balance =
            shared.credited[i].load(Ordering::Relaxed) - shared.debited[i].load(Ordering::Relaxed);
        if balance != 0 || shared.debited[i].load(Ordering::Relaxed) != 0 {
            expected.insert(user.clone(), balance);
        }
    }
    if let Ok(mut e) = EXPECTED.lock() {
        *e = expected;
    }
    Ok(RunReport {
        label: label.to_string(),
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
        verified: "not verified (external server)".into(),
    })
}

#[derive(Default)]
struct Stats {
    calls: u64,
    events: u64,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn record(
        &mut self,
        hist: &mut Histogram<u64>,
        latency: Duration,
        events: u64,
        err: Option<tonic::Code>,
    ) {
        self.calls += 1;
        self.events += events;
        let _ = hist.record((latency.as_micros() as u64).max(1));
        if let Some(code) = err {
            *self.errors.entry(format!("{code:?}")).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Stats) {
        self.calls += other.calls;
        self.events += other.events;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}
