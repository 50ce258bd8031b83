//! Test harness: a fresh, migrated database per test (cloned from a migrated template), a real
//! server on port 0, and a real gRPC client.
//!
//! PostgreSQL comes from `TEST_DATABASE_URL` or `DATABASE_URL` (any database on the server; it
//! is used for CREATE/DROP DATABASE), else from a throwaway cluster started from the local
//! binaries and stopped when the test binary exits.

#![allow(dead_code)]

pub mod process;
pub mod proxy;
pub mod stripe;

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use token_ledger::auth::ApiKey;
use token_ledger::embedded_pg::{DataDir, EmbeddedPostgres};
use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;
use token_ledger::server::{Application, ServerConfig};
use token_ledger::store::{Store, StoreConfig, MIGRATOR};

pub const ADMIN_KEY: &str = "admin-secret-0000000000000001";
pub const USAGE_KEY: &str = "usage-secret-0000000000000002";
pub const BILLING_KEY: &str = "billing-secret-000000000000003";
pub const READ_KEY: &str = "read-secret-00000000000000004";

/// The test keys in `--api-key` form (`NAME:SCOPE:SECRET`).
pub fn test_key_specs() -> [String; 4] {
    [
        format!("ops:admin:{ADMIN_KEY}"),
        format!("ai-backend:usage:{USAGE_KEY}"),
        format!("stripe-webhook:billing:{BILLING_KEY}"),
        format!("dashboard:read:{READ_KEY}"),
    ]
}

pub fn test_keys() -> Vec<ApiKey> {
    test_key_specs()
        .iter()
        .map(|k| k.parse().unwrap())
        .collect()
}

struct Cluster {
    /// Options for the maintenance connection.
    admin: PgConnectOptions,
    /// Kept alive for the life of the test binary when we started it ourselves.
    _embedded: Option<&'static EmbeddedPostgres>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static EMBEDDED: OnceLock<EmbeddedPostgres> = OnceLock::new();
static EMBEDDED_DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

extern "C" fn stop_embedded_at_exit() {
    if let Some(pg) = EMBEDDED.get() {
        let _ = pg.stop_blocking();
    }
    if let Some(dir) = EMBEDDED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let url = std::env::var("TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .ok();
        match url {
            Some(url) => Cluster {
                admin: PgConnectOptions::from_str(&url)
                    .expect("TEST_DATABASE_URL must be a PostgreSQL URL"),
                _embedded: None,
            },
            None => {
                // Start on a separate runtime: we may be inside a test's runtime here.
                let dir = EMBEDDED_DIR.get_or_init(|| {
                    tempfile::Builder::new()
                        .prefix("tl-pg-")
                        .tempdir_in("/tmp")
                        .expect("temp dir")
                });
                // PostgreSQL runs as another user when we are root: let it through the temp dir.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                    .unwrap();
                // Inside the temp dir, so its lock file goes with it.
                let data_dir = DataDir::Explicit(dir.path().join("pg"));
                let pg = std::thread::spawn(move || {
                    tokio::runtime::Runtime::new()
                        .unwrap()
                        .block_on(EmbeddedPostgres::start(&data_dir))
                })
                .join()
                .unwrap()
                .expect("no TEST_DATABASE_URL and the throwaway PostgreSQL cluster did not start");
                let pg = EMBEDDED.get_or_init(|| pg);
                // SAFETY: registering a plain extern "C" function has no preconditions.
                unsafe { libc::atexit(stop_embedded_at_exit) };
                Cluster {
                    admin: PgConnectOptions::from_str(&pg.url_for("postgres")).unwrap(),
                    _embedded: Some(pg),
                }
            }
        }
    })
}

/// The prefix of the shared template's name; a test of the harness itself passes its own.
pub const TEMPLATE_PREFIX: &str = "tl_template";
/// One advisory lock id for template creation across every test process on the server.
const TEMPLATE_LOCK_ID: i64 = 727274;
/// How long the harness waits for PostgreSQL to end the backends on a database it is about to
/// rename or clone. Backends end within milliseconds; this only bounds a hung server.
const BACKENDS_GONE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the harness looks at `pg_stat_activity` while it waits.
const BACKENDS_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// SQLSTATE object_in_use: "database ... is being accessed by other users".
const OBJECT_IN_USE: &str = "55006";

/// The environment variable that selects a test-only schema variant.
pub const SCHEMA_VARIANT_VAR: &str = "TOKEN_LEDGER_TEST_SCHEMA";
/// The hash-partitioned variant: every ledger table `PARTITION BY HASH` on its shard key, applied
/// to the template after the migrations (`hash_partitioned.sql`; docs/scale-out.md says why).
const HASH_PARTITIONED: &str = "hash-partitioned";
/// What turns a migrated database into the hash-partitioned variant.
const HASH_PARTITIONED_SQL: &str = include_str!("hash_partitioned.sql");

/// Whether the suite runs on the hash-partitioned schema variant (`TOKEN_LEDGER_TEST_SCHEMA=
/// hash-partitioned`); any other non-empty value is a mistake, and fails loudly.
pub fn hash_partitioned() -> bool {
    match std::env::var(SCHEMA_VARIANT_VAR).as_deref() {
        Err(_) | Ok("") => false,
        Ok(HASH_PARTITIONED) => true,
        Ok(other) => {
            panic!("{SCHEMA_VARIANT_VAR}={other:?}: the only variant is {HASH_PARTITIONED:?}")
        }
    }
}

/// `<prefix>_<hash of the migrations>` (and `_hp` for the hash-partitioned variant): a new
/// migration gets a new template, and the variants never share one.
pub fn template_name(prefix: &str) -> String {
    let mut h = Sha256::new();
    for m in MIGRATOR.iter() {
        h.update(m.version.to_be_bytes());
        h.update(&*m.checksum);
    }
    let variant = if hash_partitioned() { "_hp" } else { "" };
    format!("{prefix}_{}{variant}", &hex::encode(h.finalize())[..16])
}

pub async fn admin_connection() -> PgConnection {
    cluster()
        .admin
        .connect()
        .await
        .expect("connecting to the test PostgreSQL")
}

async fn database_exists(conn: &mut PgConnection, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// Waits until no backend is connected to `database`. `pool.close()` returns before the server
/// has ended the pool's backends (sqlx issue 3217), and a RENAME or a clone fails while any
/// remain.
async fn wait_until_no_backends(conn: &mut PgConnection, database: &str) {
    let deadline = tokio::time::Instant::now() + BACKENDS_GONE_TIMEOUT;
    loop {
        let backends: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(database)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        if backends == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let who: Vec<String> = sqlx::query_scalar(
                "SELECT format('%s %s (%s) last query: %s', pid, backend_type, state, query) \
                     FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(database)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            panic!(
                "{backends} backends still on {database} after {BACKENDS_GONE_TIMEOUT:?}: {who:?}"
            );
        }
        tokio::time::sleep(BACKENDS_POLL_INTERVAL).await;
    }
}

fn is_object_in_use(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(OBJECT_IN_USE))
}

/// Runs `sql` (a RENAME or a clone of `busy_database`), waiting out backends still on
/// `busy_database` and retrying while the server says it is in use, up to
/// [`BACKENDS_GONE_TIMEOUT`].
async fn execute_when_unused(conn: &mut PgConnection, sql: &str, busy_database: &str) {
    let deadline = tokio::time::Instant::now() + BACKENDS_GONE_TIMEOUT;
    loop {
        wait_until_no_backends(conn, busy_database).await;
        match sqlx::query(sql).execute(&mut *conn).await {
            Ok(_) => return,
            Err(err) if is_object_in_use(&err) && tokio::time::Instant::now() < deadline => {}
            Err(err) => panic!("{sql}: {err}"),
        }
    }
}

/// Creates, once per migrations version across concurrently running test binaries and
/// `cargo test` runs, the migrated template database `name`.
///
/// It is built under a unique name, so a builder that crashed never leaves a name in anyone's
/// way, and under the advisory lock, so the migrations run once and stale builds can be dropped
/// safely. Connections to it are then disallowed (no pool or autovacuum backend can appear
/// again), and it is renamed once the server shows no backend on it.
async fn ensure_template(conn: &mut PgConnection, name: &str) {
    if database_exists(conn, name).await {
        return;
    }
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK_ID)
        .execute(&mut *conn)
        .await
        .unwrap();
    if !database_exists(conn, name).await {
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) \
             AND datname ~ '_b[0-9a-f]{12}$' AND length(datname) = length($1) + 12",
        )
        .bind(format!("{name}_b"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        for db in stale {
            // Only a builder holding the lock uses a build; this one's builder is gone.
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let building = format!(
            "{name}_b{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::query(&format!("CREATE DATABASE {building}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        // One connection, closed with a Terminate the server acknowledges by ending its backend.
        // (A pool's close() returns before its connections are gone, and a connection the
        // migrator handed back as the pool closed was seen to stay open, idle after its
        // `pg_advisory_unlock`, for good: sqlx issue 3217.)
        let mut migrating = cluster()
            .admin
            .clone()
            .database(&building)
            .connect()
            .await
            .unwrap();
        MIGRATOR
            .run_direct(&mut migrating)
            .await
            .expect("migrating the template");
        if hash_partitioned() {
            // One script of many statements: the simple query protocol runs it as it is.
            sqlx::Executor::execute(&mut migrating, HASH_PARTITIONED_SQL)
                .await
                .expect("converting the template to the hash-partitioned schema");
        }
        migrating.close().await.unwrap();
        sqlx::query(&format!(
            "ALTER DATABASE {building} WITH ALLOW_CONNECTIONS false"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        // No one may connect now, and only this builder (holding the lock) ever used the build:
        // anything still on it is a leftover of ours, ended here rather than waited for.
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&building)
            .execute(&mut *conn)
            .await
            .unwrap();
        execute_when_unused(
            conn,
            &format!("ALTER DATABASE {building} RENAME TO {name}"),
            &building,
        )
        .await;
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK_ID)
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A fresh, migrated database, dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::from_template(TEMPLATE_PREFIX).await
    }

    /// A fresh database cloned from the template `template_name(template_prefix)`, which is
    /// built first if it does not exist yet.
    pub async fn from_template(template_prefix: &str) -> Self {
        let mut conn = admin_connection().await;
        let template = template_name(template_prefix);
        ensure_template(&mut conn, &template).await;
        let name = format!("tl_test_{}", uuid::Uuid::new_v4().simple());
        // Cloning fails while a session is connected to the template; templates disallow
        // connections, but one made by an older harness may not.
        execute_when_unused(
            &mut conn,
            &format!("CREATE DATABASE {name} TEMPLATE {template}"),
            &template,
        )
        .await;
        conn.close().await.ok();
        let options = cluster().admin.clone().database(&name);
        Self { name, options }
    }

    /// A fresh database with no schema at all (a migration test applies what it wants).
    pub async fn empty() -> Self {
        let mut conn = admin_connection().await;
        let name = format!("tl_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let options = cluster().admin.clone().database(&name);
        Self { name, options }
    }

    pub fn url(&self) -> String {
        url_of(&self.options)
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect_with(self.options.clone()).await.unwrap()
    }
}

/// Ends the backends of `application_name` on `db` (as a failover or an operator would):
/// answers how many.
pub async fn terminate_backends(db: &TestDb, application_name: &str) -> i64 {
    let pool = db.pool().await;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(application_name)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    ended
}

/// Renders options back to a URL the server's `--database-url` accepts.
pub fn url_of(o: &PgConnectOptions) -> String {
    token_ledger::store::url_of(o)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop needs async I/O; do it on a runtime of its own so it works inside or outside one.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let mut conn = admin_connection().await;
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                })
        })
        .join();
    }
}

/// A running server on its own fresh database.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub webhook_addr: Option<std::net::SocketAddr>,
    pub db: TestDb,
    pub pool: PgPool,
    /// The server's store: its clock is the ledger's (`advance` lets time pass).
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct TestOptions {
    pub api_keys: Vec<ApiKey>,
    /// Overrides the database URL the server uses (e.g. through a proxy).
    pub database_url: Option<String>,
    pub health_check_interval: Duration,
    /// Host the Stripe webhook in process (secret `WEBHOOK_SECRET`, the example catalog unless
    /// `catalog` names another).
    pub webhook: bool,
    /// The hosted webhook's product catalog; `None`: the example catalog.
    pub catalog: Option<token_ledger::webhook::catalog::Catalog>,
    /// The hosted webhook's settings; `None`: `webhook_config()`.
    pub webhook_config: Option<token_ledger::webhook::WebhookConfig>,
    pub jwt: Option<token_ledger::jwt::JwtVerifier>,
    pub cors_origins: Vec<String>,
    pub write: token_ledger::ledger::WriteConfig,
    /// The server's `--request-timeout-ms`; `None` keeps the default.
    pub request_timeout: Option<Duration>,
    /// How long a call waits for a pooled connection while the database is thought up.
    pub pool_acquire_timeout: Duration,
    /// The hosted webhook's own pool size; `None` keeps the default.
    pub webhook_pool_connections_max: Option<u32>,
    /// Most active holds per account.
    pub holds_per_account_max: i64,
    /// The expiry sweeper's interval: an hour by default, so a test sees what reads and writes
    /// settle on their own unless it runs a sweep itself.
    pub expiry_sweep_interval: Duration,
    /// WatchBalance's heartbeat and limits.
    pub watch: token_ledger::ledger::watch::WatchConfig,
    /// Where balance alerts are delivered; `None` keeps them in the outbox.
    pub alert_hook: Option<token_ledger::transport::alert_hook::AlertHookConfig>,
    /// The `credits_expiring` window; `None`: off.
    pub alert_expiring_window: Option<chrono::Duration>,
}

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            api_keys: test_keys(),
            database_url: None,
            health_check_interval: Duration::from_millis(100),
            webhook: false,
            catalog: None,
            webhook_config: None,
            jwt: None,
            cors_origins: Vec::new(),
            write: token_ledger::ledger::WriteConfig::default(),
            request_timeout: None,
            pool_acquire_timeout: Duration::from_secs(2),
            webhook_pool_connections_max: None,
            holds_per_account_max: token_ledger::domain::HOLDS_PER_ACCOUNT_DEFAULT,
            expiry_sweep_interval: Duration::from_secs(3600),
            watch: Default::default(),
            alert_hook: None,
            alert_expiring_window: None,
        }
    }
}

pub fn webhook_config() -> token_ledger::webhook::WebhookConfig {
    token_ledger::webhook::WebhookConfig {
        secrets: vec![WEBHOOK_SECRET.to_string()],
        tolerance_secs: 300,
        mode: Default::default(),
        unknown_products: Default::default(),
    }
}

pub fn example_catalog() -> token_ledger::webhook::catalog::Catalog {
    token_ledger::webhook::catalog::Catalog::parse(token_ledger::webhook::catalog::EXAMPLE_CATALOG)
        .unwrap()
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(options: TestOptions) -> Self {
        let db = TestDb::new().await;
        Self::spawn_on(db, options).await
    }

    pub async fn spawn_on(db: TestDb, options: TestOptions) -> Self {
        let store = Store::connect_lazy(&StoreConfig {
            database_url: options.database_url.clone().unwrap_or_else(|| db.url()),
            pool_connections_max: 16,
            pool_acquire_timeout: options.pool_acquire_timeout,
        })
        .unwrap()
        .with_holds_per_account_max(options.holds_per_account_max)
        .with_alert_expiring_window(options.alert_expiring_window);
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        config.expiry_sweep_interval = options.expiry_sweep_interval;
        config.alert_hook = options.alert_hook.clone();
        config.api_keys = options.api_keys;
        config.health_check_interval = options.health_check_interval;
        config.jwt = options.jwt;
        config.cors_origins = options.cors_origins;
        config.write = options.write;
        config.watch = options.watch;
        if let Some(timeout) = options.request_timeout {
            config.request_timeout = timeout;
        }
        if let Some(connections) = options.webhook_pool_connections_max {
            config.webhook_pool_connections_max = connections;
        }
        let mut app = Application::build(config, store.clone()).await.unwrap();
        if options.webhook {
            app = app
                .with_webhook(
                    "127.0.0.1:0".parse().unwrap(),
                    options.webhook_config.unwrap_or_else(webhook_config),
                    options.catalog.unwrap_or_else(example_catalog),
                )
                .await
                .unwrap();
        }
        let addr = app.local_addr();
        let webhook_addr = app.webhook_addr();
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        let pool = db.pool().await;
        Self {
            addr,
            webhook_addr,
            db,
            pool,
            store,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.channel().await)
    }

    /// Stops the server and waits for it to drain.
    /// Signals shutdown and returns the server task (which ends once it has drained).
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("the server is running")
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Lets the ledger's time pass by `by`, without sleeping.
    pub fn advance(&self, by: chrono::Duration) {
        self.store.clock().advance(by);
    }

    /// `verify` over the whole database: every invariant holds.
    pub async fn assert_verified(&self) {
        let report = self.store.verify().await.unwrap();
        assert!(
            report.discrepancies.is_empty(),
            "verify found: {:?}",
            report.discrepancies
        );
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Rows in every journal table and the key table: a write that was refused changes none.
    pub async fn journal_rows(&self) -> i64 {
        self.count(
            "SELECT (SELECT count(*) FROM token_transactions) + (SELECT count(*) FROM token_drips) \
             + (SELECT count(*) FROM token_usage) + (SELECT count(*) FROM idempotency_keys)",
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Wraps a message with a bearer key.
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
    );
    r
}

pub fn admin<T>(message: T) -> Request<T> {
    with_key(ADMIN_KEY, message)
}

/// The field named by a status's google.rpc.BadRequest.
pub fn bad_request_field(status: &Status) -> String {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let br = status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT must carry google.rpc.BadRequest");
    br.field_violations[0].field.clone()
}

pub fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn grant_req(user: &str, tokens: i64, key: &str) -> pb::GrantRequest {
    pb::GrantRequest {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
        source: pb::GrantSource::Admin as i32,
        reason: "support credit".into(),
        ..Default::default()
    }
}

pub fn usage_req(user: &str, tokens: i64, key: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
        model: "gpt-4o".into(),
        input_tokens: tokens / 2,
        output_tokens: tokens - tokens / 2,
        feature: "chat".into(),
        ..Default::default()
    }
}

pub fn purchase_req(user: &str, key: &str, payment_intent: &str) -> pb::RecordPurchaseRequest {
    pb::RecordPurchaseRequest {
        user_id: user.into(),
        tokens: 2_000_000,
        idempotency_key: key.into(),
        amount_paid_cents: 9_900,
        currency: "usd".into(),
        stripe_payment_intent_id: payment_intent.into(),
        stripe_checkout_session_id: "cs_test_1".into(),
        pack: "pack_2m".into(),
        ..Default::default()
    }
}

pub fn drip_req(user: &str, key: &str, subscription: &str, start: &str) -> pb::DripRequest {
    let start_ts = ts(start);
    pb::DripRequest {
        user_id: user.into(),
        tokens: 375_000,
        idempotency_key: key.into(),
        stripe_subscription_id: subscription.into(),
        stripe_invoice_id: format!("in_{key}"),
        period_end: Some(prost_types::Timestamp {
            seconds: start_ts.seconds + 28 * 86_400,
            nanos: 0,
        }),
        period_start: Some(start_ts),
        ..Default::default()
    }
}

pub async fn balance_of(client: &mut LedgerServiceClient<Channel>, user: &str) -> i64 {
    client
        .get_balance(admin(pb::GetBalanceRequest {
            user_id: user.into(),
            as_of: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .balance
}
