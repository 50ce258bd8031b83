//! Running the service: auth, health, reflection, verify, shutdown, and the embedded database.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proxy::{Proxy, Upstream};
use common::*;
use token_ledger::pb;
use token_ledger::server::{Application, ServerConfig};
use token_ledger::store::{Store, StoreConfig};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn a_call_without_a_key_or_with_an_unknown_key_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;

    let none = c
        .get_balance(tonic::Request::new(pb::GetBalanceRequest {
            user_id: "u".into(),
            as_of: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let unknown = c
        .get_balance(with_key(
            "not-a-real-key-at-all",
            pb::GetBalanceRequest {
                user_id: "u".into(),
                as_of: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let mut basic = tonic::Request::new(pb::GetBalanceRequest {
        user_id: "u".into(),
        as_of: None,
    });
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_eq!(
        c.get_balance(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn each_scope_reaches_only_its_calls() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let denied = Code::PermissionDenied;

    // usage: TrackUsage and GetBalance only.
    assert!(c
        .track_usage(with_key(USAGE_KEY, usage_req("u", 1, "a")))
        .await
        .is_ok());
    assert!(c
        .get_balance(with_key(
            USAGE_KEY,
            pb::GetBalanceRequest {
                user_id: "u".into(),
                as_of: None,
            }
        ))
        .await
        .is_ok());
    assert_eq!(
        c.grant(with_key(USAGE_KEY, grant_req("u", 1, "b")))
            .await
            .unwrap_err()
            .code(),
        denied
    );
    assert_eq!(
        c.list_transactions(with_key(
            USAGE_KEY,
            pb::ListTransactionsRequest {
                user_id: "u".into(),
                ..Default::default()
            }
        ))
        .await
        .unwrap_err()
        .code(),
        denied
    );

    // billing: Drip, RecordPurchase, annual Grant, GetBalance; not admin grants or deductions.
    assert!(c
        .record_purchase(with_key(BILLING_KEY, purchase_req("u", "c", "pi_1")))
        .await
        .is_ok());
    assert!(c
        .drip(with_key(
            BILLING_KEY,
            drip_req("u", "d", "sub", "2026-01-01T00:00:00Z")
        ))
        .await
        .is_ok());
    assert_eq!(
        c.grant(with_key(BILLING_KEY, grant_req("u", 1, "e")))
            .await
            .unwrap_err()
            .code(),
        denied
    );
    let deduct = pb::DeductRequest {
        user_id: "u".into(),
        tokens: 1,
        idempotency_key: "f".into(),
        reason: "r".into(),
        ..Default::default()
    };
    assert_eq!(
        c.deduct(with_key(BILLING_KEY, deduct.clone()))
            .await
            .unwrap_err()
            .code(),
        denied
    );
    assert_eq!(
        c.track_usage(with_key(BILLING_KEY, usage_req("u", 1, "g")))
            .await
            .unwrap_err()
            .code(),
        denied
    );

    // read: GetBalance and ListTransactions only.
    assert!(c
        .get_balance(with_key(
            READ_KEY,
            pb::GetBalanceRequest {
                user_id: "u".into(),
                as_of: None,
            }
        ))
        .await
        .is_ok());
    assert!(c
        .list_transactions(with_key(
            READ_KEY,
            pb::ListTransactionsRequest {
                user_id: "u".into(),
                ..Default::default()
            }
        ))
        .await
        .is_ok());
    assert_eq!(
        c.track_usage(with_key(READ_KEY, usage_req("u", 1, "h")))
            .await
            .unwrap_err()
            .code(),
        denied
    );
    assert_eq!(
        c.deduct(with_key(READ_KEY, deduct.clone()))
            .await
            .unwrap_err()
            .code(),
        denied
    );

    // admin: everything.
    assert!(c.deduct(admin(deduct)).await.is_ok());

    // Refused calls wrote nothing: one usage, one purchase, one drip, one deduction.
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 4);
}

#[tokio::test]
async fn with_no_keys_the_server_runs_open_on_loopback_and_records_the_open_caller() {
    let app = TestApp::spawn_with(TestOptions {
        api_keys: vec![],
        ..Default::default()
    })
    .await;
    let mut c = app.client().await;
    let r = c
        .grant(tonic::Request::new(grant_req("u", 5, "k")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.balance, 5);
    let created_by: String = sqlx::query_scalar("SELECT created_by FROM token_transactions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(created_by, "key:open-mode");
}

#[tokio::test]
async fn with_no_keys_the_server_refuses_to_listen_beyond_loopback() {
    let db = TestDb::new().await;
    let store = Store::connect_lazy(&StoreConfig {
        database_url: db.url(),
        pool_connections_max: 1,
        pool_acquire_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let err = Application::build(ServerConfig::new("0.0.0.0:0".parse().unwrap()), store)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("no API keys"), "{err}");
}

async fn health_status(app: &TestApp, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(app.channel().await);
    let r = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

async fn wait_for_health(app: &TestApp, want: ServingStatus) {
    for _ in 0..100 {
        if health_status(app, "").await == want {
            assert_eq!(
                health_status(app, "tokenledger.v1.LedgerService").await,
                want
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_follows_the_database_and_needs_no_key() {
    let db = TestDb::new().await;
    let mut proxy = Proxy::start(Upstream::of(&db.options)).await;
    let through_proxy = proxy.url_of(&db);
    // The production default: a call waits up to 5 s for a connection while the database is up.
    let pool_acquire_timeout = Duration::from_secs(5);
    let app = TestApp::spawn_on(
        db,
        TestOptions {
            database_url: Some(through_proxy),
            // The production interval: an outage must show without waiting for a ping.
            health_check_interval: Duration::from_secs(2),
            pool_acquire_timeout,
            ..Default::default()
        },
    )
    .await;

    wait_for_health(&app, ServingStatus::Serving).await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1, "k1"))).await.unwrap();
    proxy.cut();

    // The call that finds the database gone flips health at once, not at the next ping. (Its
    // connection was dropped and a new one gets no answer: it waits for the watcher's ping to
    // time out, never for the whole pool wait.)
    let started = Instant::now();
    let err = c.grant(admin(grant_req("u", 1, "k2"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(health_status(&app, "").await, ServingStatus::NotServing);
    eprintln!(
        "first call after the cut answered in {:?}",
        started.elapsed()
    );

    // While it is down, reads and writes answer UNAVAILABLE fast, far within the 5 s pool wait.
    for i in 0..10 {
        let started = Instant::now();
        let err = c
            .get_balance(with_key(
                READ_KEY,
                pb::GetBalanceRequest {
                    user_id: "u".into(),
                    as_of: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let err = c
            .grant(admin(grant_req("u", 1, &format!("down-{i}"))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < pool_acquire_timeout / 5,
            "two calls took {:?} while the database was known to be down",
            started.elapsed()
        );
    }

    // Recovery shows within a second (pings every 250 ms while down), then writes apply.
    proxy.restore();
    let restored = Instant::now();
    wait_for_health(&app, ServingStatus::Serving).await;
    eprintln!("health SERVING {:?} after the restore", restored.elapsed());
    assert!(restored.elapsed() < Duration::from_secs(2));
    let r = c
        .grant(admin(grant_req("u", 1, "k2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.balance, 2);
}

#[tokio::test]
async fn reflection_lists_the_ledger_and_health_services_in_v1_and_v1alpha() {
    let app = TestApp::spawn().await;

    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        app.channel().await,
    );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = response.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "tokenledger.v1.LedgerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    let mut v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            app.channel().await,
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tokenledger.v1.LedgerService".into(),
            ),
        ),
    };
    let mut stream = v1alpha
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        response.message_response,
        Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
}

/// grpcurl and `buf curl` decode an error's details (`grpc-status-details-bin`) only if
/// reflection can describe their types.
#[tokio::test]
async fn reflection_resolves_the_google_rpc_error_detail_types() {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            app.channel().await,
        );

    for (symbol, file) in [
        ("google.rpc.BadRequest", "google/rpc/error_details.proto"),
        ("google.rpc.ErrorInfo", "google/rpc/error_details.proto"),
        ("google.rpc.Status", "google/rpc/status.proto"),
    ] {
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let response = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("{symbol}: {:?}", response.message_response);
        };
        let first =
            prost_types::FileDescriptorProto::decode(&*files.file_descriptor_proto[0]).unwrap();
        assert_eq!(first.name(), file, "{symbol}");
        let short = symbol.rsplit('.').next().unwrap();
        assert!(
            first.message_type.iter().any(|m| m.name() == short),
            "{symbol} not described in {file}"
        );
    }
}

fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
}

#[tokio::test]
async fn verify_passes_on_a_clean_ledger_and_names_a_tampered_account() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("honest", 100, "a"))).await.unwrap();
    c.grant(admin(grant_req("tampered", 100, "b")))
        .await
        .unwrap();
    c.track_usage(admin(usage_req("tampered", 40, "c")))
        .await
        .unwrap();

    let clean = binary()
        .args(["verify", "--database-url", &app.db.url()])
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("2 accounts, 3 journal rows"));

    // Someone edits a balance behind the ledger's back (keeping the row's own CHECK happy).
    sqlx::query("UPDATE accounts SET balance = balance + 5, granted_total = granted_total + 5 WHERE user_id = 'tampered'")
        .execute(&app.pool)
        .await
        .unwrap();

    let caught = binary()
        .args(["verify", "--database-url", &app.db.url()])
        .output()
        .unwrap();
    assert_eq!(caught.status.code(), Some(1));
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains("MISMATCH user tampered: balance: account says 65, journal says 60"),
        "{out}"
    );
    assert!(!out.contains("user honest"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_stops_accepting() {
    let mut app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1, "k"))).await.unwrap();

    // An in-flight call: a write held on its account's row lock until we release it.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM accounts WHERE user_id = 'u' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let in_flight =
        tokio::spawn(async move { c.grant(admin(grant_req("u", 2, "in-flight"))).await });
    let mut polls = 0;
    while app
        .count("SELECT count(*) FROM pg_locks WHERE NOT granted")
        .await
        == 0
    {
        polls += 1;
        assert!(
            polls < 1_000,
            "the in-flight write never waited for the lock"
        );
        tokio::task::yield_now().await;
    }

    // Shutdown begins: new connections are refused while the call is still in flight.
    let server = app.begin_stop();
    let mut polls = 0;
    while tokio::net::TcpStream::connect(app.addr).await.is_ok() {
        polls += 1;
        assert!(
            polls < 10_000,
            "the listener stayed open after shutdown began"
        );
        tokio::task::yield_now().await;
    }
    assert!(!in_flight.is_finished(), "the in-flight call was cut short");

    // Released, the in-flight call completes, then the server finishes stopping.
    blocker.rollback().await.unwrap();
    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(r.balance, 3);
    server.await.unwrap().expect("the server stops cleanly");
}

/// A `token-ledger serve` child on the embedded cluster (no DATABASE_URL), its stderr kept.
struct EmbeddedServe {
    child: tokio::process::Child,
    url: String,
    /// Everything the server logged, collected as it goes (so it never blocks on a full pipe).
    log: tokio::task::JoinHandle<String>,
}

impl EmbeddedServe {
    /// Starts `serve` from `cwd` on an ephemeral port, with `--data-dir` only if `data_dir` is
    /// given, and waits until it is SERVING. The port comes from its "listening" log line: no
    /// port is picked, released and bound again.
    async fn start(cwd: &Path, data_dir: Option<&Path>) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("TOKEN_LEDGER_DATA_DIR")
            .env_remove("TOKEN_LEDGER_API_KEYS")
            .env("TOKEN_LEDGER_HEALTH_INTERVAL_MS", "100")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = data_dir {
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut logged = String::new();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
                .await
                .expect("the embedded server did not listen in time")
                .unwrap()
                .unwrap_or_else(|| panic!("serve exited before listening:\n{logged}"));
            logged.push_str(&line);
            logged.push('\n');
            if line.contains("gRPC server listening") {
                let addr = strip_ansi(&line);
                let addr = addr
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("local_addr="))
                    .expect("the listening line names its address");
                break addr.to_string();
            }
        };
        let log = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                logged.push_str(&line);
                logged.push('\n');
            }
            logged
        });
        let url = format!("http://{addr}");
        let mut polls = 0;
        loop {
            if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut health = HealthClient::new(channel);
                if let Ok(r) = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    if r.into_inner().status == ServingStatus::Serving as i32 {
                        return Self { child, url, log };
                    }
                }
            }
            polls += 1;
            assert!(polls < 600, "the embedded server never became SERVING");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Grants 10 tokens to `u` (open mode) and returns the balance.
    async fn grant_ten(&self, key: &str) -> i64 {
        let mut c = pb::ledger_service_client::LedgerServiceClient::connect(self.url.clone())
            .await
            .unwrap();
        c.grant(grant_req("u", 10, key))
            .await
            .unwrap()
            .into_inner()
            .balance
    }

    /// Sends `signal`, waits for the exit and returns it with everything logged.
    async fn signal_and_wait(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, signal) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (status, self.log.await.unwrap())
    }
}

/// `line` without terminal colour codes (`ESC [ … m`), should the log have any.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The postmaster's pid, if `data_dir` has a postmaster.pid.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Asserts that no server runs for `data_dir`, and none of the given postmasters is alive.
/// `pg_ctl stop -w` returns once postmaster.pid is gone, a moment before the process exits, so
/// the processes get a bounded wait.
async fn assert_no_server_for(data_dir: &Path, postmasters: &[i32]) {
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "no postmaster.pid left in {}",
        data_dir.display()
    );
    for pid in postmasters {
        let mut waited = Duration::ZERO;
        while process_alive(*pid) {
            assert!(
                waited < Duration::from_secs(10),
                "postmaster {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
    }
}

/// Stops a cluster a failed test left running and removes what it made outside its temp dir.
struct ClusterCleanup {
    data_dir: PathBuf,
    /// A directory under /var/lib/token-ledger this test made.
    remove: Option<PathBuf>,
}

impl Drop for ClusterCleanup {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            if let Ok(bin) = token_ledger::embedded_pg::find_binaries() {
                let mut stop = if running_as_root() {
                    let mut c = std::process::Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
                    c
                } else {
                    std::process::Command::new(bin.join("pg_ctl"))
                };
                let _ = stop
                    .arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "immediate", "-w", "stop"])
                    .current_dir("/")
                    .output();
            }
        }
        if let Some(dir) = &self.remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A mode-700 directory to run `serve` from, like a clone in root's home, and where the
/// embedded cluster is expected to live when `serve` runs there without --data-dir.
fn closed_checkout() -> (tempfile::TempDir, ClusterCleanup) {
    let dir = tempfile::Builder::new()
        .prefix("tl-home-")
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let default = dir.path().canonicalize().unwrap().join("data/postgres");
    let cleanup = if running_as_root() {
        let data_dir = token_ledger::embedded_pg::fallback_data_dir(&default);
        ClusterCleanup {
            remove: Some(data_dir.parent().unwrap().to_path_buf()),
            data_dir,
        }
    } else {
        eprintln!("note: not root, so the cluster stays in ./data/postgres; the fallback under /var/lib/token-ledger is not exercised");
        ClusterCleanup {
            data_dir: default,
            remove: None,
        }
    };
    (dir, cleanup)
}

/// The one-command run: `serve` with no DATABASE_URL starts a private PostgreSQL from the local
/// binaries, serves, and on SIGTERM drains and stops the cluster; data persists across restarts.
#[tokio::test]
async fn serve_without_a_database_url_runs_on_an_embedded_cluster_that_persists() {
    if token_ledger::embedded_pg::find_binaries().is_err() {
        eprintln!("skipped: no local PostgreSQL binaries");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tl-embedded-")
        .tempdir_in("/tmp")
        .unwrap();
    // PostgreSQL may run as another user (never as root): let it through the temp dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("pg");
    let _cleanup = ClusterCleanup {
        data_dir: data_dir.clone(),
        remove: None,
    };

    for round in 0..2 {
        let serve = EmbeddedServe::start(Path::new("/"), Some(&data_dir)).await;
        assert_eq!(
            serve.grant_ten(&format!("round-{round}")).await,
            10 * (round + 1),
            "round {round}: the balance survives a restart"
        );
        let postmaster = postmaster_pid(&data_dir).expect("the cluster runs");

        // SIGTERM: drain, close the pool, stop the cluster, exit 0.
        let (status, log) = serve.signal_and_wait(libc::SIGTERM).await;
        assert!(status.success(), "serve exited with {status}: {log}");
        assert_no_server_for(&data_dir, &[postmaster]).await;
    }
}

/// As root, from a checkout postgres cannot enter (a clone in root's mode-700 home), the default
/// cluster lives under /var/lib/token-ledger, persists, and is stopped on exit; the checkout is
/// left as it was.
#[tokio::test]
async fn serve_from_a_directory_closed_to_postgres_keeps_its_cluster_where_postgres_can_reach() {
    if token_ledger::embedded_pg::find_binaries().is_err() {
        eprintln!("skipped: no local PostgreSQL binaries");
        return;
    }
    let (checkout, cleanup) = closed_checkout();

    for round in 0..2 {
        let serve = EmbeddedServe::start(checkout.path(), None).await;
        assert_eq!(
            serve.grant_ten(&format!("round-{round}")).await,
            10 * (round + 1),
            "round {round}: the balance survives a restart"
        );
        let postmaster = postmaster_pid(&cleanup.data_dir).expect("the cluster runs there");

        let (status, log) = serve.signal_and_wait(libc::SIGTERM).await;
        assert!(status.success(), "serve exited with {status}: {log}");
        if running_as_root() {
            assert!(
                log.contains(&cleanup.data_dir.display().to_string()),
                "the log names where the cluster lives: {log}"
            );
        }
        assert_no_server_for(&cleanup.data_dir, &[postmaster]).await;
    }
    if running_as_root() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(checkout.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "the checkout's permissions are untouched"
        );
        assert!(
            std::fs::read_dir(checkout.path()).unwrap().next().is_none(),
            "nothing was made in the checkout"
        );
    }
}

/// As root, an explicit --data-dir the postgres user cannot reach is refused in one line that
/// names the fix, and nothing is made.
#[tokio::test]
async fn an_explicit_data_dir_postgres_cannot_reach_is_refused_in_one_line_leaving_nothing() {
    if !running_as_root() {
        eprintln!("skipped: only root runs the cluster as another user");
        return;
    }
    if token_ledger::embedded_pg::find_binaries().is_err() {
        eprintln!("skipped: no local PostgreSQL binaries");
        return;
    }
    let closed = tempfile::Builder::new()
        .prefix("tl-closed-")
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let wanted = closed.path().join("ledger/pg");
    let _cleanup = ClusterCleanup {
        data_dir: wanted.clone(),
        remove: None,
    };

    let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&wanted)
        .env_remove("DATABASE_URL")
        .env_remove("TOKEN_LEDGER_API_KEYS")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), serve)
        .await
        .expect("serve must refuse at once, not start")
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        errors[0],
        format!(
            "error: the postgres user (the embedded cluster runs as it, as PostgreSQL refuses root) cannot reach {}: \
             choose a --data-dir under a directory it can traverse, such as /var/lib/token-ledger, or set DATABASE_URL",
            wanted.display()
        )
    );
    assert!(
        std::fs::read_dir(closed.path()).unwrap().next().is_none(),
        "nothing was made"
    );
}

/// A `serve` killed with -9 cannot stop its cluster; the next `serve` adopts it (no live process
/// holds the lock) and stops it on SIGTERM.
#[tokio::test]
async fn a_cluster_left_by_a_killed_serve_is_adopted_and_stopped_by_the_next() {
    if token_ledger::embedded_pg::find_binaries().is_err() {
        eprintln!("skipped: no local PostgreSQL binaries");
        return;
    }
    let (checkout, cleanup) = closed_checkout();
    let first = EmbeddedServe::start(checkout.path(), None).await;
    assert_eq!(first.grant_ten("before-the-crash").await, 10);
    let orphan = postmaster_pid(&cleanup.data_dir).expect("the cluster runs");

    let (status, _) = first.signal_and_wait(libc::SIGKILL).await;
    assert!(!status.success());
    assert!(process_alive(orphan), "the cluster outlives a killed serve");

    let second = EmbeddedServe::start(checkout.path(), None).await;
    assert_eq!(
        postmaster_pid(&cleanup.data_dir),
        Some(orphan),
        "the running cluster is reused, not restarted"
    );
    assert_eq!(second.grant_ten("after-the-crash").await, 20);
    let (status, log) = second.signal_and_wait(libc::SIGTERM).await;

    assert!(status.success(), "serve exited with {status}: {log}");
    assert!(log.contains("adopting"), "{log}");
    assert_no_server_for(&cleanup.data_dir, &[orphan]).await;
}

#[tokio::test]
async fn an_internal_error_reaches_the_client_opaque() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    // Break the schema under the server: the SQL error must not leak to the caller.
    sqlx::query("ALTER TABLE token_usage RENAME TO token_usage_gone")
        .execute(&app.pool)
        .await
        .unwrap();

    let err = c
        .track_usage(admin(usage_req("u", 1, "k")))
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "internal error");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys").await,
        0,
        "the failed write rolled back"
    );
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_drives_every_call() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let run = |args: &[&str]| {
        let out = binary()
            .args(args)
            .args(["--ledger-url", &url, "--api-key", ADMIN_KEY])
            .env_remove("TOKEN_LEDGER_API_KEY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (ok, out) = run(&[
        "grant",
        "--user",
        "u1",
        "--tokens",
        "1000",
        "--reason",
        "welcome",
        "--idempotency-key",
        "cli-1",
    ]);
    assert!(ok && out.contains("balance 1000"), "{out}");
    let (ok, out) = run(&[
        "grant",
        "--user",
        "u1",
        "--tokens",
        "1000",
        "--reason",
        "welcome",
        "--idempotency-key",
        "cli-1",
    ]);
    assert!(ok && out.contains("replayed"), "{out}");
    let (ok, out) = run(&[
        "deduct", "--user", "u1", "--tokens", "100", "--reason", "refund",
    ]);
    assert!(ok && out.contains("balance 900"), "{out}");
    let (ok, out) = run(&[
        "purchase",
        "--user",
        "u1",
        "--tokens",
        "2000000",
        "--amount-cents",
        "9900",
        "--payment-intent",
        "pi_cli",
        "--pack",
        "pack_2m",
    ]);
    assert!(ok && out.contains("balance 2000900"), "{out}");
    let (ok, out) = run(&[
        "drip",
        "--user",
        "u1",
        "--tokens",
        "375000",
        "--stripe-subscription",
        "sub_cli",
        "--period-start",
        "2026-11-01T00:00:00Z",
    ]);
    assert!(ok && out.contains("balance 2375900"), "{out}");
    let (ok, out) = run(&[
        "usage",
        "--user",
        "u1",
        "--tokens",
        "900",
        "--model",
        "gpt-4o",
        "--input-tokens",
        "400",
        "--output-tokens",
        "500",
    ]);
    assert!(ok && out.contains("balance 2375000"), "{out}");
    let (ok, out) = run(&["balance", "--user", "u1", "--json"]);
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["balance"], "2375000");
    assert_eq!(json["totals"]["used"], "900");
    let (ok, out) = run(&["history", "--user", "u1", "--page-size", "2"]);
    assert!(
        ok && out.contains("usage") && out.contains("more: --page-token"),
        "{out}"
    );
    let (ok, out) = run(&[
        "deduct", "--user", "u1", "--tokens", "99999999", "--reason", "too much",
    ]);
    assert!(!ok && out.contains("FailedPrecondition"), "{out}");
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_finds_reverses_and_explains_a_purchase() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr);
    let run = |args: &[&str]| {
        let out = binary()
            .args(args)
            .args(["--ledger-url", &url, "--api-key", ADMIN_KEY])
            .env_remove("TOKEN_LEDGER_API_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(run(&all).trim()).unwrap()
    };

    // Every write prints its transaction id, in either form.
    let bought = json(&[
        "purchase",
        "--user",
        "support-u",
        "--tokens",
        "2000000",
        "--amount-cents",
        "9900",
        "--payment-intent",
        "pi_support",
        "--pack",
        "pack_2m",
    ]);
    let purchase_id = bought["transaction_id"].as_str().unwrap().to_string();
    assert_eq!(bought["balance"], "2000000");
    assert_eq!(bought["replayed"], false);
    let used = run(&[
        "usage",
        "--user",
        "support-u",
        "--tokens",
        "500",
        "--model",
        "gpt-4o",
    ]);
    assert!(used.starts_with("transaction "), "{used}");

    // Found by its payment intent, with nothing reversed yet.
    let found = json(&["transaction", "--payment-intent", "pi_support"]);
    assert_eq!(found["transaction"]["id"], purchase_id.as_str());
    assert_eq!(found["user_id"], "support-u");
    assert_eq!(found["reversed_tokens"], "0");
    assert_eq!(
        found["transaction"]["purchase"]["stripe_payment_intent_id"],
        "pi_support"
    );
    assert_eq!(found["transaction"]["kind"], "TRANSACTION_KIND_PURCHASE");

    // Reversed in part, with a reason; the lookup then says what is left.
    let reversed = json(&[
        "reverse",
        "--user",
        "support-u",
        "--tokens",
        "500000",
        "--original",
        &purchase_id,
        "--reason",
        "ticket 42: partial refund",
    ]);
    assert_eq!(reversed["balance"], "1499500");
    let reversal_id = reversed["transaction_id"].as_str().unwrap().to_string();
    let text = run(&["transaction", "--id", &purchase_id]);
    assert!(
        text.contains("reversed 500000 of 2000000: 1500000 left to reverse")
            && text.contains("payment_intent=pi_support"),
        "{text}"
    );

    // History shows ids and details; its JSON is the whole message.
    let history = run(&["history", "--user", "support-u"]);
    assert!(
        history.contains(&reversal_id)
            && history.contains(&format!("reverses={purchase_id}"))
            && history.contains("model=gpt-4o"),
        "{history}"
    );
    let page = json(&["history", "--user", "support-u"]);
    let rows = page["transactions"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0]["reversal"]["original_transaction_id"],
        purchase_id.as_str()
    );
    assert_eq!(rows[0]["reversal"]["source"], "REVERSAL_SOURCE_ADMIN");
    assert_eq!(rows[1]["usage"]["model"], "gpt-4o");

    // Balance: every total, in the equation they satisfy.
    let balance = run(&["balance", "--user", "support-u"]);
    assert!(
        balance.contains("credited 2000000 = granted 0 + purchased 2000000 + dripped 0")
            && balance
                .contains("debited  500500 = deducted 0 + used 500 + reversed 500000 + expired 0")
            && balance.contains("balance  1499500 = credited 2000000 - debited 500500"),
        "{balance}"
    );

    // Accounts, whoami and the overview.
    let accounts = json(&["accounts", "--prefix", "support-", "--order", "balance"]);
    assert_eq!(accounts["accounts"][0]["user_id"], "support-u");
    assert_eq!(accounts["accounts"][0]["balance"], "1499500");
    let me = json(&["whoami"]);
    assert_eq!(me["actor"], "key:ops");
    assert_eq!(me["scopes"], serde_json::json!(["admin"]));
    let overview = json(&["overview", "--days", "2"]);
    assert_eq!(overview["tokens_outstanding"], "1499500");
    assert_eq!(overview["days"].as_array().unwrap().len(), 2);
    assert_eq!(overview["top_users"][0]["user_id"], "support-u");
    let text = run(&["overview", "--days", "1"]);
    assert!(text.contains("1499500 tokens outstanding"), "{text}");
}
