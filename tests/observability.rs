//! What an operator sees of a running `token-ledger serve`: its log lines (JSON and human), its
//! Prometheus metrics, and its start-up messages. Each test runs the real binary against a
//! fresh database and reads its stderr and its ports.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::stripe::{deliver, event, pack_checkout, post_raw};
use common::*;
use serde::de::{Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use token_ledger::pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::ChildStderr;
use tonic::Code;

/// How long a server may take to log that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `token-ledger serve` child: its addresses, read from its log, and everything it logged.
struct Served {
    child: tokio::process::Child,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
    webhook: Option<SocketAddr>,
    lines: Lines<BufReader<ChildStderr>>,
    logged: String,
}

impl Served {
    /// Starts `serve` on port 0 (and on port 0 for whichever of `--metrics-listen` and
    /// `--stripe-webhook-listen` `extra` names) and waits until each listener has logged.
    async fn start(db: &TestDb, extra: &[&str]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--database-url", &db.url()])
            .args(extra)
            .env_remove("TOKEN_LEDGER_API_KEYS")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .env("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let wants_metrics = extra.contains(&"--metrics-listen");
        let wants_webhook = extra.contains(&"--stripe-webhook-listen");
        let (mut grpc, mut metrics, mut webhook) = (None, None, None);
        let mut logged = String::new();
        while grpc.is_none()
            || (wants_metrics && metrics.is_none())
            || (wants_webhook && webhook.is_none())
        {
            let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
                .await
                .expect("serve did not listen in time")
                .unwrap()
                .unwrap_or_else(|| panic!("serve exited before listening:\n{logged}"));
            if line.contains("gRPC server listening") {
                grpc = addr_in(&line, "local_addr");
            } else if line.contains("Prometheus metrics on") {
                metrics = addr_in(&line, "addr");
            } else if line.contains("Stripe webhook listening") {
                webhook = addr_in(&line, "addr");
            }
            logged.push_str(&line);
            logged.push('\n');
        }
        Self {
            child,
            grpc: grpc.unwrap(),
            metrics,
            webhook,
            lines,
            logged,
        }
    }

    async fn client(
        &self,
    ) -> pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel> {
        pb::ledger_service_client::LedgerServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// SIGTERM, then everything the server logged.
    async fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id().unwrap() as i32, libc::SIGTERM) };
        while let Some(line) = tokio::time::timeout(START_TIMEOUT, self.lines.next_line())
            .await
            .expect("serve did not stop in time")
            .unwrap()
        {
            self.logged.push_str(&line);
            self.logged.push('\n');
        }
        let status = self.child.wait().await.unwrap();
        assert!(
            status.success(),
            "serve exited with {status}:\n{}",
            self.logged
        );
        self.logged
    }
}

/// The address after `key=` (human lines) or `"key":"` (JSON lines).
fn addr_in(line: &str, key: &str) -> Option<SocketAddr> {
    let human = format!(" {key}=");
    let json = format!("\"{key}\":\"");
    let start = line
        .find(&human)
        .map(|i| i + human.len())
        .or_else(|| line.find(&json).map(|i| i + json.len()))?;
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// A JSON value parsed by a parser that refuses an object with a key twice (serde_json keeps
/// the last of two and says nothing).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.insert(key.clone(), value).is_some() {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Strict(Value::Object(object)))
    }
}

/// Every line of `log` as a JSON object with unique keys, where any `transaction_id` is a number.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let Strict(value) = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object with unique keys ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            if let Some(id) = value.get("transaction_id") {
                assert!(id.is_i64(), "transaction_id must be a number: {line}");
            }
            value
        })
        .collect()
}

#[test]
fn the_strict_parser_refuses_a_duplicate_key() {
    assert!(serde_json::from_str::<Strict>(r#"{"message":"a","message":"b"}"#).is_err());
    assert!(serde_json::from_str::<Strict>(r#"{"a":{"b":1,"b":2}}"#).is_err());
    assert!(serde_json::from_str::<Strict>(r#"{"message":"a","reason":"b"}"#).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_key_of_each_name_and_numeric_transaction_ids() {
    let db = TestDb::new().await;
    let served = Served::start(&db, &["--log-format", "json"]).await;
    let mut c = served.client().await;

    // A write and a refusal.
    c.grant(grant_req("u", 10, "g1")).await.unwrap();
    let refused = c
        .deduct(pb::DeductRequest {
            user_id: "u".into(),
            tokens: 100,
            reason: "too much".into(),
            idempotency_key: "d1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let log = served.stop().await;

    let lines = json_lines(&log);
    let refusal = lines
        .iter()
        .find(|l| l["message"] == "refused")
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert_eq!(refusal["code"], "FAILED_PRECONDITION", "{refusal}");
    assert!(refusal["reason"].is_string(), "{refusal}");
    let write = lines
        .iter()
        .find(|l| l["message"] == "write committed")
        .unwrap_or_else(|| panic!("no write logged:\n{log}"));
    assert!(write["transaction_id"].is_i64(), "{write}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_logs_through_a_pipe_have_no_colour_codes() {
    let db = TestDb::new().await;
    let served = Served::start(&db, &["--log-format", "human"]).await;
    let mut c = served.client().await;
    c.grant(grant_req("u", 10, "g1")).await.unwrap();
    let log = served.stop().await;

    assert!(log.contains("write committed"), "{log}");
    assert!(
        !log.contains("\u{1b}["),
        "colour codes in a piped log:\n{log}"
    );
}

/// `GET path` on `addr`: the status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .unwrap_or_default()
        .1
        .to_string();
    (status, body)
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_on_their_path_only_with_help_zeroed_alert_counters_and_canonical_codes() {
    let db = TestDb::new().await;
    let served = Served::start(
        &db,
        &[
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:0",
            "--stripe-webhook-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let metrics = served.metrics.unwrap();

    // Before any call: the counters alerts watch already have a series.
    let (status, before) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    for counter in [
        "ledger_batches_failed_total",
        "ledger_writes_expired_total",
        "ledger_webhook_signature_failures_total",
    ] {
        assert_eq!(sample(&before, counter), Some(0.0), "{counter}:\n{before}");
    }
    for path in ["/", "/health", "/metrics/extra"] {
        assert_eq!(http_get(metrics, path).await.0, 404, "{path}");
    }

    // A write, a refusal, a forged webhook delivery and a real one.
    let mut c = served.client().await;
    c.grant(grant_req("u", 10, "g1")).await.unwrap();
    c.deduct(pb::DeductRequest {
        user_id: "u".into(),
        tokens: 100,
        reason: "too much".into(),
        idempotency_key: "d1".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    let webhook = served.webhook.unwrap();
    let paid = event(
        "evt_metrics",
        "checkout.session.completed",
        pack_checkout("cs_m", "pi_m", "buyer", "pack_5m", 19_900),
    );
    assert_eq!(post_raw(webhook, b"{}", Some("t=1,v1=00")).await.0, 400);
    let (status, body) = deliver(webhook, WEBHOOK_SECRET, &paid).await;
    assert_eq!(status, 200, "{body}");

    let (_, after) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&after, r#"ledger_requests_total{method="Grant",code="OK"}"#),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"ledger_requests_total{method="Deduct",code="FAILED_PRECONDITION"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "ledger_webhook_signature_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"ledger_webhook_events_total{event_type="checkout.session.completed",outcome="credited"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"ledger_webhook_ledger_call_seconds_count{call="RecordPurchase"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_every_metric_has_help(&after);
    assert_process_metrics(&after);

    let log = served.stop().await;
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "Stripe event handled" && l["transaction_id"].is_i64()),
        "{log}"
    );
}

fn assert_every_metric_has_help(metrics: &str) {
    let typed: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() > 10, "{metrics}");
    for name in typed {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{metrics}"
        );
    }
}

fn assert_process_metrics(metrics: &str) {
    let now = chrono::Utc::now().timestamp() as f64;
    let cpu = sample(metrics, "process_cpu_seconds_total").expect("cpu seconds");
    assert!(cpu > 0.0, "{cpu}");
    let rss = sample(metrics, "process_resident_memory_bytes").expect("rss");
    assert!(rss > 1_000_000.0, "{rss}");
    let fds = sample(metrics, "process_open_fds").expect("open fds");
    assert!(fds >= 3.0, "{fds}");
    let start = sample(metrics, "process_start_time_seconds").expect("start time");
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "{start} vs {now}"
    );
    assert!(metrics.contains("# TYPE process_cpu_seconds_total counter"));
}

/// Runs the binary to completion (it is expected to fail at start-up); its stderr.
async fn failing_run(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TOKEN_LEDGER_API_KEYS")
        .env("NO_COLOR", "1")
        .env("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .kill_on_drop(true);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = tokio::time::timeout(START_TIMEOUT, command.output())
        .await
        .expect("the run did not end")
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_named_for_each_listener() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let url = db.url();
    for (flag, what) in [
        ("--listen", "gRPC"),
        ("--metrics-listen", "metrics"),
        ("--stripe-webhook-listen", "the Stripe webhook"),
    ] {
        let mut args = vec!["serve", "--database-url", &url];
        if flag != "--listen" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend([flag, &addr]);
        let stderr = failing_run(&args, &[]).await;
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{flag}: no error line:\n{stderr}"));
        assert!(
            error.starts_with(&format!("error: cannot listen on {addr} for {what}: ")),
            "{flag}: {error}"
        );
        assert!(
            error.to_lowercase().contains("address already in use")
                || error.contains("os error 98"),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_reached_is_named_once_without_its_password() {
    // A port nobody listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("postgres://bob:hunter2@{closed}/ledger");
    for command in ["migrate", "serve"] {
        let stderr = failing_run(&[command, "--database-url", &url], &[]).await;
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{command}: {stderr}");
        let error = errors[0];
        assert!(
            error.contains(&format!(
                "cannot connect to PostgreSQL at postgres://bob:***@{closed}/ledger: "
            )),
            "{command}: {error}"
        );
        assert!(!stderr.contains("hunter2"), "{command}: {stderr}");
        assert_eq!(
            error.matches("refused").count(),
            1,
            "{command}: said once: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_url_means_the_embedded_cluster() {
    if token_ledger::embedded_pg::find_binaries().is_err() {
        eprintln!("skipped: no local PostgreSQL binaries");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tl-empty-url-")
        .tempdir_in("/tmp")
        .unwrap();
    // PostgreSQL may run as another user (never as root): let it through the temp dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("pg");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
        .arg("migrate")
        .arg("--data-dir")
        .arg(&data_dir)
        .env("DATABASE_URL", "")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("migrate did not end")
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    assert!(
        data_dir.join("PG_VERSION").exists(),
        "the embedded cluster was made in --data-dir: {stderr}"
    );
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "and stopped on exit"
    );
}
