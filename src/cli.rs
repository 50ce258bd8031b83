//! The command line: `serve`, `migrate`, `verify`, and a client for every RPC. Every flag also
//! reads an environment variable (shown in `--help` and the README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::ApiKey;
use crate::client;
use crate::embedded_pg::{DataDir, EmbeddedPostgres};
use crate::server::{self, Application, ServerConfig};
use crate::store::{Store, StoreConfig};
use crate::telemetry::{self, LogFormat};
use crate::webhook::catalog::Catalog;
use crate::webhook::ledger_port::RemoteLedger;
use crate::webhook::store::WebhookStore;
use crate::webhook::{Processor, WebhookConfig};

#[derive(Debug, Parser)]
#[command(
    name = "token-ledger",
    version,
    about = "The books for an AI product's tokens: a gRPC ledger over PostgreSQL."
)]
pub struct Cli {
    /// Log format: human-readable lines or one JSON object per line. Levels come from RUST_LOG
    /// (default `info`).
    #[arg(long, env = "TOKEN_LEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (migrating the database first).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Check that every account's balance equals the sum of its journal; exits 1 naming any that differ.
    Verify(DatabaseArgs),
    /// Credit tokens (admin grant, or an annual subscription allotment).
    Grant(client::GrantArgs),
    /// Debit tokens on an admin's behalf (refused below zero).
    Deduct(client::DeductArgs),
    /// Credit one 28-day subscription cycle.
    Drip(client::DripArgs),
    /// Record a paid token pack.
    Purchase(client::PurchaseArgs),
    /// Record the tokens one AI call consumed.
    Usage(client::UsageArgs),
    /// Show a user's balance and totals.
    Balance(client::BalanceArgs),
    /// Show a user's journal, newest first.
    History(client::HistoryArgs),
    /// Hold tokens for an AI call in flight (prints the hold id).
    Reserve(client::ReserveArgs),
    /// End a hold with the tokens the call actually used.
    CommitHold(client::CommitHoldArgs),
    /// End a hold unused.
    ReleaseHold(client::HoldArgs),
    /// Give an active hold a later expiry and/or more tokens.
    ExtendHold(client::ExtendHoldArgs),
    /// List a user's active holds (--all: every hold).
    Holds(client::ListArgs),
    /// List a user's lots in burn order (--all: spent ones too).
    Lots(client::ListArgs),
    /// Run the Stripe webhook adapter on its own, calling the ledger over gRPC.
    Webhook(WebhookArgs),
    /// List the Stripe events the webhook recorded, newest first: first and latest outcome,
    /// deliveries, mode and the transaction each produced.
    StripeEvents(client::StripeEventsArgs),
    /// Claw back (part of) a credit: a refunded purchase or an admin correction (prints the
    /// reversal's transaction id).
    Reverse(client::ReverseArgs),
    /// Show one transaction, by id or by Stripe payment intent, with what was reversed of it.
    Transaction(client::TransactionArgs),
    /// List accounts by user id prefix, ordered by user id, balance or last activity.
    Accounts(client::AccountsArgs),
    /// Say who the credentials belong to and what they may do.
    Whoami(client::WhoAmIArgs),
    /// The whole ledger: tokens outstanding, credited/used/expired per day, top users.
    Overview(client::OverviewArgs),
    /// Add a version of a model's price (rates per million tokens of each class).
    SetPrice(client::SetPriceArgs),
    /// List model prices: the version in force and those scheduled (--history: every one).
    Prices(client::PricesArgs),
    /// Usage sums over a window, by model, feature, local day or hour (from rollups).
    UsageSummary(client::UsageSummaryArgs),
    /// Print a user's balance as it changes, one line per update (WatchBalance), until stopped.
    Watch(client::WatchArgs),
    /// Set a balance-alert threshold for a user, or the default (no --user).
    SetAlert(client::SetAlertArgs),
    /// List balance-alert rules.
    Alerts(client::AlertUserArgs),
    /// Delete a user's balance-alert rule, or the default (no --user).
    DeleteAlert(client::AlertUserArgs),
    /// List balance-alert events and their delivery state, newest first.
    AlertEvents(client::AlertEventsArgs),
    /// Load-test a ledger over real gRPC: runs `token-ledger-bench` (built beside this binary)
    /// with the same arguments; see BENCHMARKS.md.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Stripe webhook settings, shared by `serve --stripe-webhook-listen` and `webhook`.
#[derive(Debug, Clone, Args)]
pub struct StripeArgs {
    /// Webhook signing secrets (`whsec_...`), comma-separated; several during a rotation.
    #[arg(
        long = "stripe-webhook-secret",
        env = "STRIPE_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secrets: Vec<String>,

    /// Largest accepted gap between a signature's timestamp and now, in seconds.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = crate::webhook::TOLERANCE_SECS_DEFAULT)]
    pub stripe_tolerance_secs: i64,

    /// Act on events of this Stripe mode only; events of the other mode are answered 200 and
    /// recorded as `ignored_other_mode` (a test endpoint pointed at production never mints
    /// tokens). `any` acts on both.
    #[arg(long, env = "TOKEN_LEDGER_STRIPE_MODE", value_enum, default_value_t = crate::webhook::StripeMode::Any)]
    pub stripe_mode: crate::webhook::StripeMode,

    /// An event for a price or product the catalog lacks: `reject` (400, Stripe retries until
    /// the catalog is fixed) or `ignore` (200, recorded as `ignored_unknown_product`, logged at
    /// warn: for an account that sells other things too).
    #[arg(long, env = "TOKEN_LEDGER_STRIPE_UNKNOWN_PRODUCTS", value_enum, default_value_t = crate::webhook::UnknownProducts::Reject)]
    pub stripe_unknown_products: crate::webhook::UnknownProducts,

    /// The product catalog (TOML; see catalog.example.toml). Without it the built-in example
    /// catalog is used, with a warning.
    #[arg(long, env = "TOKEN_LEDGER_STRIPE_CATALOG")]
    pub stripe_catalog: Option<PathBuf>,
}

impl StripeArgs {
    fn load(&self) -> anyhow::Result<(WebhookConfig, Catalog)> {
        if self.secrets.is_empty() {
            anyhow::bail!(
                "the Stripe webhook needs its signing secret: set STRIPE_WEBHOOK_SECRETS (whsec_...) or --stripe-webhook-secret"
            );
        }
        let catalog = match &self.stripe_catalog {
            Some(path) => Catalog::load(path)?,
            None => {
                tracing::warn!("no TOKEN_LEDGER_STRIPE_CATALOG: using the built-in example catalog, whose price ids are placeholders");
                Catalog::parse(crate::webhook::catalog::EXAMPLE_CATALOG)?
            }
        };
        let config = WebhookConfig {
            secrets: self.secrets.clone(),
            tolerance_secs: self.stripe_tolerance_secs,
            mode: self.stripe_mode,
            unknown_products: self.stripe_unknown_products,
        };
        Ok((config, catalog))
    }
}

#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address the webhook's HTTP server listens on.
    #[arg(
        long,
        env = "TOKEN_LEDGER_WEBHOOK_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// The ledger's gRPC address.
    #[arg(
        long,
        env = "TOKEN_LEDGER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub ledger_url: String,

    /// The webhook's API key for the ledger (a key with the `billing` scope).
    #[arg(long, env = "TOKEN_LEDGER_WEBHOOK_API_KEY", hide_env_values = true)]
    pub ledger_api_key: Option<String>,

    /// How long one ledger call may take before the event is answered 503, in ms.
    #[arg(
        long,
        env = "TOKEN_LEDGER_WEBHOOK_LEDGER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub ledger_timeout_ms: u64,

    #[command(flatten)]
    pub stripe: StripeArgs,

    /// The webhook's own tables (processed events, customer and subscription mappings).
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Where the ledger's data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Without it, a private cluster is started from the local PostgreSQL binaries
    /// in --data-dir and stopped on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Data directory of the embedded cluster (used only without DATABASE_URL). Default:
    /// ./data/postgres; as root, when the postgres user cannot reach it, a directory under
    /// /var/lib/token-ledger tied to this checkout.
    #[arg(long, env = "TOKEN_LEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most database connections the pool opens.
    #[arg(long, env = "TOKEN_LEDGER_DB_POOL_MAX", default_value_t = 16)]
    pub db_pool_max: u32,

    /// How long a call waits for a pooled connection before failing with UNAVAILABLE, in ms.
    #[arg(
        long,
        env = "TOKEN_LEDGER_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub db_acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "TOKEN_LEDGER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// API keys, comma-separated, each NAME:SCOPE[+SCOPE...]:SECRET with scopes usage, billing,
    /// admin, read. With none, the server runs open, and only on a loopback address.
    #[arg(
        long = "api-key",
        env = "TOKEN_LEDGER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "TOKEN_LEDGER_MESSAGE_BYTES_MAX", default_value_t = 1024 * 1024)]
    pub message_bytes_max: usize,

    /// How often health checks the database, in ms.
    #[arg(long, env = "TOKEN_LEDGER_HEALTH_INTERVAL_MS", default_value_t = 2_000)]
    pub health_interval_ms: u64,

    /// Calls running longer than this are cancelled, in ms.
    #[arg(
        long,
        env = "TOKEN_LEDGER_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,

    /// Browser origins allowed to call over grpc-web (comma-separated, e.g.
    /// https://admin.example.com). The console at /admin is same-origin and needs none.
    #[arg(
        long = "cors-origin",
        env = "TOKEN_LEDGER_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub write: WriteArgs,

    /// How often the expiry sweeper writes what is due (lots past their expiry, holds past their
    /// time), in ms. Reads and writes never wait for it.
    #[arg(
        long,
        env = "TOKEN_LEDGER_EXPIRY_SWEEP_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub expiry_sweep_interval_ms: u64,

    /// Most active holds one account may have; Reserve beyond it is RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "TOKEN_LEDGER_HOLDS_PER_ACCOUNT_MAX",
        default_value_t = crate::domain::HOLDS_PER_ACCOUNT_DEFAULT
    )]
    pub holds_per_account_max: i64,

    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub alerts: AlertArgs,

    /// Serve Prometheus metrics on this address (GET /metrics). Off by default.
    #[arg(long, env = "TOKEN_LEDGER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Also serve the Stripe webhook (POST /stripe/webhook) on this address, in this process.
    #[arg(long, env = "TOKEN_LEDGER_STRIPE_WEBHOOK_LISTEN")]
    pub stripe_webhook_listen: Option<SocketAddr>,

    /// Database connections of the hosted webhook's own pool, apart from --db-pool-max, so the
    /// webhook cannot take the connections the ledger's writers need.
    #[arg(
        long,
        env = "TOKEN_LEDGER_STRIPE_WEBHOOK_DB_POOL_MAX",
        default_value_t = crate::webhook::POOL_CONNECTIONS_MAX_DEFAULT
    )]
    pub stripe_webhook_db_pool_max: u32,

    #[command(flatten)]
    pub stripe: StripeArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// WatchBalance: heartbeats and limits.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// A watcher that saw no change for this long gets a heartbeat message, in seconds.
    #[arg(long, env = "TOKEN_LEDGER_WATCH_HEARTBEAT_SECS", default_value_t = crate::ledger::watch::WATCH_HEARTBEAT_DEFAULT.as_secs())]
    pub watch_heartbeat_secs: u64,

    /// Most WatchBalance streams this process serves; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "TOKEN_LEDGER_WATCHERS_MAX", default_value_t = crate::ledger::watch::WATCHERS_MAX_DEFAULT)]
    pub watchers_max: usize,

    /// Most WatchBalance streams of one user this process serves; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "TOKEN_LEDGER_WATCHERS_PER_USER_MAX", default_value_t = crate::ledger::watch::WATCHERS_PER_USER_MAX_DEFAULT)]
    pub watchers_per_user_max: usize,
}

impl WatchArgs {
    pub fn config(&self) -> crate::ledger::watch::WatchConfig {
        crate::ledger::watch::WatchConfig {
            heartbeat: Duration::from_secs(self.watch_heartbeat_secs.max(1)),
            watchers_max: self.watchers_max,
            watchers_per_user_max: self.watchers_per_user_max,
        }
    }
}

/// Where balance-alert events go. Without a URL they stay in the outbox (ListAlertEvents).
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// POST every balance-alert event here (JSON, signed with --alert-webhook-secret in the
    /// `Token-Ledger-Signature` header), retried until a 2xx.
    #[arg(long, env = "TOKEN_LEDGER_ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,

    /// The HMAC-SHA256 key receivers verify signatures with (required with the URL).
    #[arg(
        long,
        env = "TOKEN_LEDGER_ALERT_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub alert_webhook_secret: Option<String>,

    /// How often the deliverer looks for due events when it found none, in ms.
    #[arg(long, env = "TOKEN_LEDGER_ALERT_POLL_MS", default_value_t = 1_000)]
    pub alert_poll_ms: u64,

    /// Longest wait between two attempts of one event, in seconds (retries double from 1 s).
    #[arg(
        long,
        env = "TOKEN_LEDGER_ALERT_RETRY_MAX_SECS",
        default_value_t = 3_600
    )]
    pub alert_retry_max_secs: u64,

    /// Write a `credits_expiring` alert when a lot's remaining tokens will expire within this
    /// many hours (once per lot); 0: never.
    #[arg(
        long,
        env = "TOKEN_LEDGER_ALERT_EXPIRING_WINDOW_HOURS",
        default_value_t = 0
    )]
    pub alert_expiring_window_hours: u32,
}

impl AlertArgs {
    fn config(&self) -> anyhow::Result<Option<crate::transport::alert_hook::AlertHookConfig>> {
        let Some(url) = self.alert_webhook_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let secret = self
            .alert_webhook_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--alert-webhook-url needs a signing secret: set TOKEN_LEDGER_ALERT_WEBHOOK_SECRET or --alert-webhook-secret"
                )
            })?;
        Ok(Some(crate::transport::alert_hook::AlertHookConfig {
            url,
            secret,
            poll_interval: Duration::from_millis(self.alert_poll_ms.max(1)),
            retry_max: Duration::from_secs(self.alert_retry_max_secs.max(1)),
        }))
    }
}

/// Group commit: how concurrent writes share transactions.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Most writes committed in one transaction; 1 = one transaction per write.
    #[arg(long, env = "TOKEN_LEDGER_BATCH_MAX", default_value_t = crate::ledger::BATCH_MAX_DEFAULT)]
    pub batch_max: usize,

    /// How long a busy writer keeps collecting writes before committing, in microseconds (never
    /// applied to a lone write).
    #[arg(long, env = "TOKEN_LEDGER_BATCH_LINGER_US", default_value_t = crate::ledger::LINGER_US_DEFAULT)]
    pub batch_linger_us: u64,

    /// Writes that may wait for a writer; beyond it writes get RESOURCE_EXHAUSTED.
    #[arg(long, env = "TOKEN_LEDGER_WRITE_QUEUE_MAX", default_value_t = crate::ledger::QUEUE_MAX_DEFAULT)]
    pub write_queue_max: usize,

    /// Batches committing concurrently. Default: 4, or the pool size when --batch-max is 1 (so
    /// the one-transaction-per-write baseline gets the same concurrency as a plain service).
    #[arg(long, env = "TOKEN_LEDGER_WRITERS")]
    pub writers: Option<usize>,

    /// Serve GetBalance from memory, kept by the writers. Only when this is the ONLY process
    /// writing to the database (not with several ledger instances, nor with SQL edits by hand):
    /// it refuses to start beside another ledger process, others refuse beside it, and it stops
    /// if it loses the lock that says so.
    #[arg(long, env = "TOKEN_LEDGER_BALANCE_CACHE")]
    pub balance_cache: bool,

    /// Most concurrent GetBalance calls answered by one query; 1 = a query per call.
    #[arg(long, env = "TOKEN_LEDGER_READ_BATCH_MAX", default_value_t = crate::ledger::READ_BATCH_MAX_DEFAULT)]
    pub read_batch_max: usize,

    /// GetBalance queries in flight at once.
    #[arg(long, env = "TOKEN_LEDGER_READ_CONCURRENCY", default_value_t = crate::ledger::READ_CONCURRENCY_DEFAULT)]
    pub read_concurrency: usize,
}

impl WriteArgs {
    pub fn config(&self, pool_max: u32) -> crate::ledger::WriteConfig {
        crate::ledger::WriteConfig {
            batch_max: self.batch_max.max(1),
            queue_max: self.write_queue_max.max(1),
            writers: self.writers.unwrap_or(if self.batch_max <= 1 {
                pool_max as usize
            } else {
                crate::ledger::WRITERS_DEFAULT
            }),
            linger: Duration::from_micros(self.batch_linger_us),
            balance_cache: self.balance_cache,
            read: crate::ledger::ReadConfig {
                batch_max: self.read_batch_max.max(1),
                concurrency: self.read_concurrency.max(1),
                queue_max: crate::ledger::READ_QUEUE_MAX_DEFAULT,
                // `serve` puts the request timeout here.
                batch_timeout: crate::ledger::READ_BATCH_TIMEOUT_DEFAULT,
            },
        }
    }
}

/// Admin JWT verification (the admin frontend's signed-in admin).
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// Shared secret for HS256 JWTs (Supabase: Project Settings → API → JWT secret).
    #[arg(long, env = "TOKEN_LEDGER_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,

    /// A JWKS file with the public keys for RS256/ES256 JWTs.
    #[arg(long, env = "TOKEN_LEDGER_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// A JWKS URL with the public keys for RS256/ES256 JWTs (Supabase:
    /// https://<project>.supabase.co/auth/v1/.well-known/jwks.json; Auth0:
    /// https://<tenant>.auth0.com/.well-known/jwks.json). Kept in memory, refreshed, and refetched
    /// (at most every 30 s) when a token names an unknown key id; a failed fetch keeps the last
    /// good keys.
    #[arg(long, env = "TOKEN_LEDGER_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS URL is refetched, in seconds.
    #[arg(long, env = "TOKEN_LEDGER_JWT_JWKS_REFRESH_SECS", default_value_t = crate::jwks::REFRESH_INTERVAL_DEFAULT.as_secs())]
    pub jwt_jwks_refresh_secs: u64,

    /// Required `aud` claim, if set.
    #[arg(long, env = "TOKEN_LEDGER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "TOKEN_LEDGER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The claim that makes a JWT an admin's, as path=value.
    #[arg(
        long,
        env = "TOKEN_LEDGER_JWT_ADMIN_CLAIM",
        default_value = "app_metadata.role=admin"
    )]
    pub jwt_admin_claim: String,
}

impl JwtArgs {
    pub fn verifier(&self) -> anyhow::Result<Option<crate::jwt::JwtVerifier>> {
        crate::jwt::JwtVerifier::from_settings(&crate::jwt::JwtSettings {
            hs256_secret: self.jwt_hs256_secret.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            jwks_url: self.jwt_jwks_url.clone(),
            jwks_refresh_interval: std::time::Duration::from_secs(
                self.jwt_jwks_refresh_secs.max(1),
            ),
            jwks_refetch_gap: crate::jwks::REFETCH_GAP_DEFAULT,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            admin_claim: self.jwt_admin_claim.clone(),
        })
    }
}

/// An open database: the store, and the embedded cluster behind it if we started one.
struct Database {
    store: Store,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    async fn open(args: &DatabaseArgs) -> anyhow::Result<Self> {
        // An empty value (`DATABASE_URL=`) means "not given", as in the README's own setup.
        let (url, embedded) = match args
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(url) => (url.to_string(), None),
            None => {
                let data_dir = DataDir::from_option(args.data_dir.clone());
                tracing::info!(
                    ?data_dir,
                    "no DATABASE_URL: starting the embedded PostgreSQL"
                );
                let pg = EmbeddedPostgres::start(&data_dir).await?;
                (pg.database_url(), Some(pg))
            }
        };
        let store = Store::connect_lazy(&StoreConfig {
            database_url: url,
            pool_connections_max: args.db_pool_max,
            pool_acquire_timeout: Duration::from_millis(args.db_acquire_timeout_ms),
        })?;
        // A multi-host URL starts on the node that qualifies (the primary), not the first listed.
        store.choose_host().await?;
        Ok(Self { store, embedded })
    }

    async fn close(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Some(pg) = self.embedded {
            pg.stop().await?;
        }
        Ok(())
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let is_server = matches!(cli.command, Command::Serve(_) | Command::Webhook(_));
    telemetry::init(cli.log_format, is_server);
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", crate::error::one_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => {
            let db = Database::open(&args).await?;
            let result = db.store.migrate().await.context("migrating the database");
            db.close().await?;
            result?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => verify(args).await,
        Command::Grant(a) => client::grant(a).await,
        Command::Deduct(a) => client::deduct(a).await,
        Command::Drip(a) => client::drip(a).await,
        Command::Purchase(a) => client::purchase(a).await,
        Command::Usage(a) => client::usage(a).await,
        Command::Balance(a) => client::balance(a).await,
        Command::History(a) => client::history(a).await,
        Command::Reserve(a) => client::reserve(a).await,
        Command::CommitHold(a) => client::commit_hold(a).await,
        Command::ReleaseHold(a) => client::release_hold(a).await,
        Command::ExtendHold(a) => client::extend_hold(a).await,
        Command::Holds(a) => client::holds(a).await,
        Command::Lots(a) => client::lots(a).await,
        Command::Webhook(args) => webhook(args).await.map(|()| ExitCode::SUCCESS),
        Command::StripeEvents(a) => client::stripe_events(a).await,
        Command::Reverse(a) => client::reverse(a).await,
        Command::Transaction(a) => client::transaction(a).await,
        Command::Accounts(a) => client::accounts(a).await,
        Command::Whoami(a) => client::who_am_i(a).await,
        Command::Overview(a) => client::overview(a).await,
        Command::SetPrice(a) => client::set_price(a).await,
        Command::Prices(a) => client::prices(a).await,
        Command::UsageSummary(a) => client::usage_summary(a).await,
        Command::Watch(a) => client::watch(a).await,
        Command::SetAlert(a) => client::set_alert(a).await,
        Command::Alerts(a) => client::alerts(a).await,
        Command::DeleteAlert(a) => client::delete_alert(a).await,
        Command::AlertEvents(a) => client::alert_events(a).await,
        Command::Bench { args } => bench(&args),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let db = Database::open(&args.database).await?;
    let result = async {
        db.store
            .migrate()
            .await
            .context("applying database migrations at start-up")?;
        let mut config = ServerConfig::new(args.listen);
        config.api_keys = args.api_keys.clone();
        config.message_bytes_max = args.message_bytes_max;
        config.health_check_interval = Duration::from_millis(args.health_interval_ms);
        config.request_timeout = Duration::from_millis(args.request_timeout_ms);
        config.cors_origins = args.cors_origins.clone();
        config.jwt = args.jwt.verifier()?;
        config.write = args.write.config(args.database.db_pool_max);
        config.webhook_pool_connections_max = args.stripe_webhook_db_pool_max;
        config.expiry_sweep_interval = Duration::from_millis(args.expiry_sweep_interval_ms.max(1));
        config.watch = args.watch.config();
        config.alert_hook = args.alerts.config()?;
        if let Some(listen) = args.metrics_listen {
            crate::metrics::install(listen).await?;
        }
        let store = db
            .store
            .clone()
            .with_holds_per_account_max(args.holds_per_account_max)
            .with_alert_expiring_window((args.alerts.alert_expiring_window_hours > 0).then(|| {
                chrono::Duration::hours(i64::from(args.alerts.alert_expiring_window_hours))
            }));
        let mut app = Application::build(config, store).await?;
        if let Some(listen) = args.stripe_webhook_listen {
            let (webhook_config, catalog) = args.stripe.load()?;
            app = app.with_webhook(listen, webhook_config, catalog).await?;
        }
        app.run_until(server::shutdown_signal()).await
    }
    .await;
    db.close().await?;
    result
}

async fn webhook(args: WebhookArgs) -> anyhow::Result<()> {
    let (config, catalog) = args.stripe.load()?;
    let db = Database::open(&args.database).await?;
    let result = async {
        db.store
            .migrate()
            .await
            .context("applying database migrations")?;
        let ledger = RemoteLedger::new(
            &args.ledger_url,
            args.ledger_api_key.as_deref(),
            Duration::from_millis(args.ledger_timeout_ms),
        )?;
        let processor = Processor::new(
            Arc::new(ledger),
            WebhookStore::new(db.store.pool().clone()),
            Arc::new(catalog),
        );
        let listener = server::bind(args.listen, "the Stripe webhook").await?;
        crate::webhook::serve(
            listener,
            crate::webhook::router(config, processor),
            server::shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    db.close().await?;
    result
}

async fn verify(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let db = Database::open(&args).await?;
    let report = db.store.verify().await;
    db.close().await?;
    let report = report.map_err(|e| anyhow::anyhow!("verify failed: {e}"))?;
    if report.discrepancies.is_empty() {
        println!(
            "ok: {} accounts, {} journal rows, every balance equals the sum of its journal",
            report.accounts_checked, report.journal_rows
        );
        return Ok(ExitCode::SUCCESS);
    }
    for d in &report.discrepancies {
        println!("MISMATCH user {}: {}", d.user_id, d.what);
    }
    println!(
        "{} discrepancies in {} accounts checked",
        report.discrepancies.len(),
        report.accounts_checked
    );
    Ok(ExitCode::FAILURE)
}

/// Parses `human`/`json`.
impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Human, LogFormat::Json]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            LogFormat::Human => clap::builder::PossibleValue::new("human"),
            LogFormat::Json => clap::builder::PossibleValue::new("json"),
        })
    }
}

/// `token-ledger bench …`: a thin entry point to the load generator, its own binary.
fn bench(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe()?.with_file_name("token-ledger-bench");
    let status = std::process::Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build --release`)",
                binary.display()
            )
        })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
