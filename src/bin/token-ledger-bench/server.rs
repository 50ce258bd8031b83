//! The self-hosted run: `token-ledger serve` as a child process on a fresh database, driven,
//! stopped, and its books checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

use token_ledger::embedded_pg::{DataDir, EmbeddedPostgres};
use token_ledger::store::{url_of, Store, StoreConfig};

use crate::report::RunReport;
use crate::BenchArgs;

const BENCH_KEY: &str = "bench-admin-secret-0123456789";
/// How long the server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `token-ledger serve` as a child on a fresh database, drives it, verifies, stops it.
pub async fn self_hosted(
    args: &BenchArgs,
    batch_max: Option<usize>,
    label: &str,
) -> anyhow::Result<RunReport> {
    let (admin_url, embedded) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg =
                EmbeddedPostgres::start(&DataDir::Default("./data/bench-postgres".into())).await?;
            (pg.url_for("postgres"), Some(pg))
        }
    };
    let admin_options: sqlx::postgres::PgConnectOptions = admin_url.parse()?;
    let db_name = format!("tl_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect_with(&admin_options).await?;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await?;
    let db_url = url_of(&admin_options.clone().database(&db_name));

    let mut child = start_server(args, &db_url, batch_max).await?;
    let analyze = (!args.no_analyze).then_some(db_url.as_str());
    let result = crate::load::drive(
        args,
        &child.url,
        Some(BENCH_KEY.to_string()),
        label,
        analyze,
    )
    .await;
    let peak_rss = read_peak_rss_kib(child.pid);
    child.stop().await;
    let run = result?;
    let mut report = run.report;
    report.server_peak_rss_kib = peak_rss;
    // Another binary's schema may not be the one this binary's `verify` reads.
    let verify = args.server_bin.is_none();
    check_books(&db_url, &run.expected, verify, &mut report).await?;

    if !args.keep {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    if report.verified.starts_with("VERIFY FAILED") {
        report.print();
        bail!("{}", report.verified);
    }
    Ok(report)
}

/// The `token-ledger` binary: `--server-bin`, else the one beside this binary.
fn server_binary(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.server_bin {
        return Ok(path.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("token-ledger");
    if !beside.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release`) or pass --server-bin",
            beside.display()
        );
    }
    Ok(beside)
}

/// A running `serve` child.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    url: String,
}

impl Server {
    async fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Starts `serve` on an ephemeral port and waits for its "listening" log line, which names the
/// port (no port is picked, released and re-bound).
async fn start_server(
    args: &BenchArgs,
    db_url: &str,
    batch_max: Option<usize>,
) -> anyhow::Result<Server> {
    let mut cmd = tokio::process::Command::new(server_binary(args)?);
    cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--database-url", db_url])
        .args(["--api-key", &format!("bench:admin:{BENCH_KEY}")])
        .args(["--db-pool-max", "16"])
        .env("RUST_LOG", "warn,token_ledger::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(n) = batch_max {
        cmd.args(["--batch-max", &n.to_string()]);
    }
    let mut child = cmd.spawn().context("starting the server")?;
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stderr.take().context("server stderr")?).lines();
    let addr = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("gRPC server listening") {
                let v: serde_json::Value = serde_json::from_str(&line)?;
                if let Some(addr) = v["local_addr"].as_str() {
                    return Ok(addr.to_string());
                }
            }
            eprintln!("server: {line}");
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not listen in time")??;
    // Keep draining its log (so it never blocks on a full pipe), showing what it says.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("server: {line}");
        }
    });
    Ok(Server {
        child,
        pid,
        url: format!("http://{addr}"),
    })
}

/// Checks the books after a run: the invariant, and each account's exact balance; records the
/// storage per usage row.
async fn check_books(
    db_url: &str,
    expected: &BTreeMap<String, i64>,
    verify: bool,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&StoreConfig {
        database_url: db_url.to_string(),
        pool_connections_max: 2,
        pool_acquire_timeout: Duration::from_secs(10),
    })?;
    let verify = match verify {
        true => Some(
            store
                .verify()
                .await
                .map_err(|e| anyhow::anyhow!("verify: {e}"))?,
        ),
        false => None,
    };
    // Per usage event: its row and indexes, and its share of the key table (which also holds
    // the keys of the seeding grants and of hold writes).
    let storage: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT pg_total_relation_size('token_usage')::bigint, \
         pg_total_relation_size('idempotency_keys')::bigint, \
         (SELECT count(*) FROM token_usage), (SELECT count(*) FROM idempotency_keys)",
    )
    .fetch_optional(store.pool())
    .await?;
    report.storage_bytes_per_usage_row =
        storage
            .filter(|(_, _, n, k)| *n > 0 && *k > 0)
            .map(|(usage, keys, n, k)| {
                let key_share = keys as f64 * (n.min(k) as f64 / k as f64);
                (usage as f64 + key_share) / n as f64
            });
    let actual: BTreeMap<String, i64> = sqlx::query_as("SELECT user_id, balance FROM accounts")
        .fetch_all(store.pool())
        .await?
        .into_iter()
        .collect();
    store.close().await;
    let mismatches = actual
        .iter()
        .filter(|(user, balance)| expected.get(*user).copied().unwrap_or(0) != **balance)
        .count();
    let missing = expected.keys().filter(|u| !actual.contains_key(*u)).count();
    let discrepancies = verify.as_ref().map_or(0, |v| v.discrepancies.len());
    report.verified = match &verify {
        _ if discrepancies > 0 || mismatches > 0 || missing > 0 => format!(
            "VERIFY FAILED: {discrepancies} discrepancies, {mismatches} balances off, {missing} accounts missing"
        ),
        Some(v) => format!(
            "verified: {} accounts, {} journal rows, balances exact",
            v.accounts_checked, v.journal_rows
        ),
        None => format!(
            "{} accounts, balances exact (verify skipped: another binary's schema)",
            actual.len()
        ),
    };
    Ok(())
}

fn read_peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
