//! Wires the gRPC server: the ledger service, health, reflection, limits, and graceful shutdown.
//!
//! `Application::build` binds the listener (so tests can ask for port 0 and read the port back);
//! `Application::run_until` serves until the shutdown future resolves, then stops accepting,
//! drains in-flight calls and closes the database pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::auth::{ApiKey, Authenticator};
use crate::cache::{ServeLock, ServeLockMode};
use crate::jwt::JwtVerifier;
use crate::ledger::watch::{Watch, WatchConfig};
use crate::ledger::{Ledger, WriteConfig};
use crate::pb;
use crate::pb::ledger_service_server::LedgerServiceServer;
use crate::store::Store;
use crate::transport::grpc::LedgerGrpc;
use crate::webhook::catalog::Catalog;
use crate::webhook::ledger_port::InProcessLedger;
use crate::webhook::store::WebhookStore;
use crate::webhook::WebhookConfig;

/// The gRPC service name health reports on, beside the overall "" status.
pub const SERVICE_NAME: &str = "tokenledger.v1.LedgerService";

/// Server settings (the database is configured separately, in `StoreConfig`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_keys: Vec<ApiKey>,
    /// Largest request or response message, in bytes. Ledger messages are small; a page of 500
    /// history rows is about 100 KiB.
    pub message_bytes_max: usize,
    /// How often health pings the database.
    pub health_check_interval: Duration,
    /// Calls running longer than this are cancelled with DEADLINE_EXCEEDED (their transaction
    /// rolls back).
    pub request_timeout: Duration,
    /// Concurrent calls served per client connection; more wait in the connection.
    pub concurrency_per_connection_max: usize,
    /// Browser origins allowed to call over grpc-web (exact `scheme://host[:port]`). Others get
    /// no CORS grant. The console at `/admin` is same-origin and needs none.
    pub cors_origins: Vec<String>,
    /// Admin JWT verification, when configured.
    pub jwt: Option<JwtVerifier>,
    /// Group commit settings.
    pub write: WriteConfig,
    /// Connections of the hosted webhook's own pool, apart from the ledger's (its lane).
    pub webhook_pool_connections_max: u32,
    /// How often the expiry sweeper writes what is due (expired lots, lapsed holds).
    pub expiry_sweep_interval: Duration,
    /// WatchBalance: heartbeat interval and watcher limits.
    pub watch: WatchConfig,
    /// Where balance-alert events are delivered; `None` keeps them in the outbox.
    pub alert_hook: Option<crate::transport::alert_hook::AlertHookConfig>,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            api_keys: Vec::new(),
            message_bytes_max: 1024 * 1024,
            health_check_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection_max: 256,
            cors_origins: Vec::new(),
            jwt: None,
            write: WriteConfig::default(),
            webhook_pool_connections_max: crate::webhook::POOL_CONNECTIONS_MAX_DEFAULT,
            expiry_sweep_interval: crate::ledger::sweeper::SWEEP_INTERVAL_DEFAULT,
            watch: WatchConfig::default(),
            alert_hook: None,
        }
    }
}

/// A bound, not yet serving, server.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: ServerConfig,
    store: Store,
    webhook: Option<HostedWebhook>,
    /// Held from `build` until the server has stopped and closed its pool (see `ServeLock`).
    lock: ServeLock,
}

/// The Stripe webhook hosted in the server's process, calling the ledger in process.
struct HostedWebhook {
    listener: TcpListener,
    config: WebhookConfig,
    catalog: Catalog,
}

impl HostedWebhook {
    /// Serves the webhook until `shutdown`, on a database pool of its own (so reversals holding
    /// a payment intent's lock across their ledger calls never hold the connections the ledger
    /// needs: `WebhookStore::lane` says why), then closes that pool.
    fn spawn(
        self,
        store: &Store,
        pool_connections_max: u32,
        ledger: LedgerGrpc,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let webhook_store = WebhookStore::lane(store, pool_connections_max);
        let processor = crate::webhook::Processor::new(
            Arc::new(InProcessLedger::new(ledger)),
            webhook_store.clone(),
            Arc::new(self.catalog),
        );
        let router = crate::webhook::router(self.config, processor);
        let served = crate::webhook::serve(self.listener, router, shutdown);
        tokio::spawn(async move {
            let result = served.await;
            webhook_store.close().await;
            result
        })
    }
}

impl Application {
    /// Checks the configuration and binds the listener.
    pub async fn build(config: ServerConfig, store: Store) -> anyhow::Result<Self> {
        if config.api_keys.is_empty() && config.jwt.is_none() {
            if !config.listen.ip().is_loopback() {
                anyhow::bail!(
                    "refusing to listen on {} with no API keys configured: anyone who can reach it could move balances. \
                     Set TOKEN_LEDGER_API_KEYS (NAME:SCOPE[+SCOPE]:SECRET,...) or listen on a loopback address",
                    config.listen
                );
            }
            tracing::warn!(
                listen = %config.listen,
                "NO API KEYS CONFIGURED: every caller on this machine has admin rights. \
                 Fine for local development only; set TOKEN_LEDGER_API_KEYS for anything else"
            );
        }
        anyhow::ensure!(
            config.webhook_pool_connections_max >= 1,
            "the Stripe webhook's pool needs at least one connection"
        );
        // Before binding: a process that may not serve this database says so and listens on
        // nothing.
        let mode = if config.write.balance_cache {
            ServeLockMode::Exclusive
        } else {
            ServeLockMode::Shared
        };
        let lock = ServeLock::acquire(&store, mode).await?;
        let listener = bind(config.listen, "gRPC").await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            config,
            store,
            webhook: None,
            lock,
        })
    }

    /// Also serves the Stripe webhook on `listener`, in this process. Its events reach the
    /// ledger through the same service code as remote calls, as the `stripe-webhook` caller.
    pub async fn with_webhook(
        mut self,
        listen: SocketAddr,
        config: WebhookConfig,
        catalog: Catalog,
    ) -> anyhow::Result<Self> {
        let listener = bind(listen, "the Stripe webhook").await?;
        self.webhook = Some(HostedWebhook {
            listener,
            config,
            catalog,
        });
        Ok(self)
    }

    /// The webhook's address, when one is hosted.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook
            .as_ref()
            .and_then(|w| w.listener.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` resolves, then drains and closes the pool. Also stops (and
    /// answers an error) when the serve lock is lost for good (`ServeLock::hold`).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            local_addr,
            config,
            store,
            webhook,
            lock,
        } = self;
        // One shutdown signal, fanned out to the gRPC server and the webhook: the caller's, or
        // the serve lock's loss.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let (release_lock, lock_released) = tokio::sync::oneshot::channel();
        let (lock_lost, on_lock_lost) = tokio::sync::oneshot::channel();
        let lock_task = tokio::spawn(lock.hold(lock_released, lock_lost));
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                Ok(()) = on_lock_lost => {}
            }
            let _ = stop_tx.send(true);
        });
        let (health_task, health_service) =
            start_health(store.clone(), config.health_check_interval).await;

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        // A read batch that outlives the request timeout has no caller left to answer.
        let mut write = config.write;
        write.read.batch_timeout = config.request_timeout;
        let core = Ledger::with_config(store.clone(), write);
        let sampler = tokio::spawn(sample_gauges(core.clone(), store.clone()));
        let sweeper = tokio::spawn(crate::ledger::sweeper::run(
            core.clone(),
            config.expiry_sweep_interval,
            crate::ledger::sweeper::lease_holder(),
        ));
        // Watchers end when the server stops: a stream left open would hold the drain forever.
        let watch = Watch::start(core.clone(), config.watch, stop_rx.clone());
        let alert_hook = config
            .alert_hook
            .clone()
            .map(|c| tokio::spawn(crate::transport::alert_hook::run(store.clone(), c)));
        let ledger = LedgerGrpc::new(
            core,
            Authenticator::new(config.api_keys.clone()).with_jwt(config.jwt.clone()),
        )
        .with_request_timeout(config.request_timeout)
        .with_watch(watch);
        let webhook_task = webhook.map(|w| {
            w.spawn(
                &store,
                config.webhook_pool_connections_max,
                ledger.clone(),
                stopped(stop_rx.clone()),
            )
        });
        let ledger_service = LedgerServiceServer::new(ledger)
            .max_decoding_message_size(config.message_bytes_max)
            .max_encoding_message_size(config.message_bytes_max);

        tracing::info!(%local_addr, "token-ledger gRPC server listening");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        // gRPC, grpc-web (HTTP/1.1 and HTTP/2) and the admin console share one port. grpc-web
        // translation wraps the gRPC routes only (it refuses plain HTTP/1.1 requests, which the
        // console's pages are); CORS is the outer layer, so preflights are answered first.
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ledger_service)
            .into_axum_router()
            .layer(tonic_web::GrpcWebLayer::new())
            .merge(crate::console::router());
        let served = Server::builder()
            .accept_http1(true)
            // The ledger's handlers answer DEADLINE_EXCEEDED at `request_timeout` themselves
            // (and drop writes still queued then); tonic's own timer, which answers CANCELLED
            // and would race them, only backs up the other services.
            .timeout(config.request_timeout + REQUEST_TIMEOUT_BACKSTOP)
            .concurrency_limit_per_connection(config.concurrency_per_connection_max)
            .layer(cors_layer(&config.cors_origins)?)
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
            .await;
        if let Some(task) = webhook_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(%err, "Stripe webhook server failed"),
                Err(err) => tracing::error!(%err, "Stripe webhook task failed"),
            }
        }
        tracing::info!("gRPC server drained; closing the database pool");
        health_task.abort();
        sampler.abort();
        sweeper.abort();
        if let Some(task) = alert_hook {
            task.abort();
        }
        store.close().await;
        // Only now: this process writes nothing more, so a process that takes the lock next
        // (a cache process) sees every write of this one.
        let _ = release_lock.send(());
        let held = lock_task
            .await
            .map_err(|err| anyhow::anyhow!("the serve lock's task failed: {err}"))?;
        served?;
        held
    }
}

/// The health service, NOT_SERVING until the task it starts (`watch_database`) sees the
/// database answer.
async fn start_health(
    store: Store,
    interval: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    (
        tokio::spawn(watch_database(store, reporter, interval)),
        service,
    )
}

/// Binds `addr`, or says which address, for what, could not be bound: a bare "Address already
/// in use" leaves an operator guessing which of the service's listeners collided.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr} for {what}: {err}"))
}

/// What reflection describes: the ledger, health, and the `google.rpc` error-detail types
/// (`BadRequest`, `ErrorInfo`, … and `Status`), so grpcurl and `buf curl` decode an error's
/// details instead of printing them as base64.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(google_rpc_descriptors())
}

/// The `google.rpc` descriptors tonic-types ships, under the paths googleapis gives them
/// (`google/rpc/error_details.proto`): tonic-types names them `error_details.proto`, and a
/// client that already knows the googleapis file would see two files defining one type.
fn google_rpc_descriptors() -> prost_types::FileDescriptorSet {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .expect("tonic-types ships a valid descriptor set");
    let bare: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "google.rpc" && !f.name().contains('/'))
        .map(|f| f.name().to_string())
        .collect();
    let path = |name: &mut String| {
        if bare.contains(name) {
            *name = format!("google/rpc/{name}");
        }
    };
    for file in &mut set.file {
        if let Some(name) = file.name.as_mut() {
            path(name);
        }
        file.dependency.iter_mut().for_each(path);
    }
    set
}

/// CORS for browsers calling over grpc-web: only the configured origins get a grant.
fn cors_layer(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("bad CORS origin {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(600)))
}

/// Samples the queue depth and pool gauges for metrics. Holds a weak interest only: it is
/// aborted when the server stops.
async fn sample_gauges(ledger: Ledger, store: Store) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        crate::metrics::queue_depth(ledger.queue_depth());
        crate::metrics::pool(store.pool().size(), store.pool().num_idle());
    }
}

/// How often health pings the database while it is down, so recovery shows within a second.
const DOWN_PING_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps health in step with the database: SERVING while it answers, NOT_SERVING while it does
/// not. Probes every `interval` while up and every [`DOWN_PING_INTERVAL`] while down; a call that
/// loses the database, or waits [`crate::store::SLOW_ACQUIRE`] for a connection, wakes it at once,
/// so an outage shows without waiting for the next ping: a database that stops answering shows
/// after about `SLOW_ACQUIRE` + [`crate::store::PROBE_TIMEOUT`].
async fn watch_database(
    store: Store,
    reporter: tonic_health::server::HealthReporter,
    interval: Duration,
) {
    let availability = store.availability().clone();
    let mut probe = store.probe();
    let mut serving: Option<bool> = None;
    loop {
        let wait = match serving {
            None => Duration::ZERO,
            Some(true) => interval,
            Some(false) => DOWN_PING_INTERVAL,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = availability.probe_wanted() => {}
        }
        let ok = probe.answers().await;
        if ok {
            availability.mark_up();
        } else {
            availability.mark_down();
        }
        if serving != Some(ok) {
            let status = if ok {
                tracing::info!("database answers: health SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!("database does not answer: health NOT_SERVING");
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            serving = Some(ok);
        }
    }
}

/// How long after `request_timeout` tonic's own timer ends a call the ledger did not end itself.
const REQUEST_TIMEOUT_BACKSTOP: Duration = Duration::from_secs(1);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}
