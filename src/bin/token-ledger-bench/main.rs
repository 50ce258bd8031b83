//! `token-ledger-bench`: a load generator over real gRPC (see BENCHMARKS.md).
//!
//! It can start its own server (`token-ledger serve`, the binary beside this one, as a child
//! process, so the server's peak RSS is its own) on a fresh database, run one scenario
//! closed-loop (N callers, each sending as soon as its previous call returned) or open-loop (a
//! target rate; a call that cannot be sent on time because every caller is busy is counted as
//! missed), and report throughput (events, or Reserve + CommitHold pairs for `hold`) and latency percentiles (HDR histogram) and errors by code, as
//! text and JSON. With `--compare` it runs the same scenario at `--batch-max 1` (one transaction
//! per write, the baseline) and at the default, and prints the ratio. After every run it checks
//! the ledger invariant (`verify`) and that every account's balance is exactly what the
//! successful calls say. Before measuring, every account is credited with `--lots` grants, each
//! its own lot, as the accounts of a product with promotions and subscriptions hold several. No
//! global state: each run's expected balances travel in its result.

mod checked;
mod echo;
mod load;
mod report;
mod server;
mod watchers;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde_json::json;

use report::RunReport;

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
    /// Reserve then CommitHold of a smaller amount (an AI call that used less than it held),
    /// over many accounts; one operation is the pair.
    Hold,
    /// SummarizeUsage of the first account (the one --history-rows fills) over the last day and
    /// the next, by day and model.
    Summary,
    /// GetBalance of the first account (the one --history-rows fills) as of a random instant of
    /// its history: a binary search over its journal.
    BalanceAt,
    /// Grants with known amounts, each retried with its idempotency key until acknowledged,
    /// then read back: every acknowledged write present exactly once, balances equal to their
    /// sums (see `checked`). Needs --ledger-url; for failover and drain scenarios (deploy/).
    Checked,
}

impl Scenario {
    /// What one operation of the scenario is called in the report.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Hold => "pairs",
            _ => "events",
        }
    }

    /// Whether the scenario needs credited accounts (it reads balances or holds tokens).
    fn needs_credits(self) -> bool {
        matches!(self, Scenario::Balance | Scenario::Mixed | Scenario::Hold)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent 1: a few accounts take most of the load.
    Zipf,
}

/// The load to generate, and against what.
#[derive(Debug, Clone, Parser)]
#[command(name = "token-ledger-bench", version)]
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
    /// Live lots per account before measuring: each account is credited with this many grants
    /// (see `load::seed_grant`: the first never expires, the others expire years from now with
    /// different priorities, so nothing expires during a run). 1 is the setup from before lots
    /// existed (one grant that never expires); 0 credits nothing, so usage runs into debt.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=LOTS_MAX as i64))]
    pub lots: u32,
    /// Seed the first account with this many usage rows before measuring (to show GetBalance does
    /// not depend on history length).
    #[arg(long, default_value_t = 0)]
    pub history_rows: u64,
    /// Usage (and hold commits) with `tokens` = 0: the ledger prices each call from a price set
    /// for the bench's model before the run (1 token per input token, so the debited amounts,
    /// and what `verify` checks, stay the same).
    #[arg(long)]
    pub priced: bool,
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
    /// Do not `ANALYZE` the fresh database after seeding (self-hosted runs): the server then
    /// keeps the query plans it made while the tables were nearly empty (see `load::analyze`).
    /// The figures BENCHMARKS.md recorded before its lots-and-holds section were measured so.
    #[arg(long)]
    pub no_analyze: bool,
    /// Keep the benchmark databases.
    #[arg(long)]
    pub keep: bool,
    /// The `token-ledger` binary to start for self-hosted runs (default: the one beside this
    /// binary, e.g. target/release/token-ledger).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Also run the scenario against the echo server (the same service answering constants, no
    /// database) in the same run, and print every figure as a ratio to it.
    #[arg(long)]
    pub echo: bool,
    /// Keep this many WatchBalance streams open on the run's accounts (round robin) while the
    /// load runs, and check that each shows its account's final balance after it.
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// Checked scenario: how long a call is retried (same idempotency key) before it counts as
    /// lost.
    #[arg(long, default_value_t = 60)]
    pub retry_deadline_secs: u64,
    /// Be the echo server, on this address (how the bench starts its echo child).
    #[arg(long, hide = true)]
    pub serve_echo: Option<std::net::SocketAddr>,
}

/// Most `--lots`: each is a Grant RPC per account before the run starts.
const LOTS_MAX: u32 = 100;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark the arguments describe.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.serve_echo {
        return echo::serve(listen).await;
    }
    if args.lots == 0 && args.scenario.needs_credits() {
        anyhow::bail!(
            "--lots 0 leaves accounts without tokens; {:?} needs at least one",
            args.scenario
        );
    }
    if args.watchers > 0 && args.echo {
        anyhow::bail!("--watchers needs a real ledger: the echo server answers no WatchBalance");
    }
    if args.scenario == Scenario::Checked {
        return checked::run(&args).await;
    }
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "token-ledger bench: scenario {:?}, {} accounts ({:?}), {} lots each, concurrency {}, {} s + {} s warm-up, {}; {} cores, {}",
        args.scenario,
        args.accounts,
        args.distribution,
        args.lots,
        args.concurrency,
        args.duration_secs,
        args.warmup_secs,
        args.rate.map_or("closed loop".to_string(), |r| format!("open loop at {r}/s")),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        host
    );
    let mut reports = Vec::new();
    if let Some(url) = &args.ledger_url {
        reports.push(
            load::drive(&args, url, args.api_key.clone(), "external server", None)
                .await?
                .report,
        );
    } else {
        let batches: Vec<Option<usize>> = if args.compare {
            vec![
                Some(1),
                args.batch_max
                    .or(Some(token_ledger::ledger::BATCH_MAX_DEFAULT)),
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
            reports.push(server::self_hosted(&args, batch_max, &label).await?);
        }
    }
    let echo = if args.echo {
        let child = echo::start().await?;
        let run = load::drive(&args, &child.url, None, "echo (transport only)", None).await?;
        Some(run.report)
    } else {
        None
    };
    println!();
    for r in reports.iter().chain(echo.iter()) {
        r.print();
    }
    if let Some(echo) = &echo {
        for r in &reports {
            println!(
                "{}: {:.1}% of echo's {}/s (echo {:.0}/s); p50 {:.2}x, p99 {:.2}x echo's",
                r.label,
                100.0 * r.events_per_sec / echo.events_per_sec.max(1e-9),
                args.scenario.unit(),
                echo.events_per_sec,
                r.latency_us[0] as f64 / echo.latency_us[0].max(1) as f64,
                r.latency_us[2] as f64 / echo.latency_us[2].max(1) as f64,
            );
        }
    }
    if reports.len() == 2 {
        let ratio = reports[1].events_per_sec / reports[0].events_per_sec.max(1e-9);
        println!(
            "ratio default / baseline: {ratio:.1}x {}/s",
            args.scenario.unit()
        );
    }
    if let Some(path) = &args.json {
        let value = json!({
            "scenario": format!("{:?}", args.scenario), "accounts": args.accounts,
            "distribution": format!("{:?}", args.distribution), "lots": args.lots,
            "unit": args.scenario.unit(), "analyzed_after_seed": args.ledger_url.is_none() && !args.no_analyze,
            "concurrency": args.concurrency,
            "duration_secs": args.duration_secs, "rate": args.rate, "batch_events": args.batch_events,
            "runs": reports.iter().map(RunReport::to_json).collect::<Vec<_>>(),
            "echo": echo.as_ref().map(RunReport::to_json),
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}
