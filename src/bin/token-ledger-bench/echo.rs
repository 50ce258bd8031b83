//! The echo server: the very same `LedgerService` over the very same tonic stack, answering
//! constants without touching a database. What the bench measures against it is what the
//! transport alone allows on this machine, in this run; every ledger figure is also printed as a
//! ratio to it (absolute figures on a shared 2-core machine swing by ±30% from run to run, the
//! ratios much less).

use std::net::SocketAddr;

use tonic::{Request, Response, Status};

use token_ledger::pb;
use token_ledger::pb::ledger_service_server::{LedgerService, LedgerServiceServer};

/// Serves the echo service on `listen` until killed, after printing `echo listening <addr>`.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("echo listening {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // The ledger's own server settings that shape the transport.
    tonic::transport::Server::builder()
        .accept_http1(true)
        .concurrency_limit_per_connection(256)
        .add_service(LedgerServiceServer::new(Echo))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

struct Echo;

fn written() -> (String, i64, bool) {
    ("1".to_string(), 1_000_000, false)
}

fn not_echoed<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the echo server answers only what the bench calls",
    ))
}

#[tonic::async_trait]
impl LedgerService for Echo {
    async fn grant(
        &self,
        _: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let (transaction_id, balance, replayed) = written();
        Ok(Response::new(pb::GrantResponse {
            transaction_id,
            balance,
            replayed,
        }))
    }

    async fn track_usage(
        &self,
        _: Request<pb::TrackUsageRequest>,
    ) -> Result<Response<pb::TrackUsageResponse>, Status> {
        let (transaction_id, balance, replayed) = written();
        Ok(Response::new(pb::TrackUsageResponse {
            transaction_id,
            balance,
            replayed,
            ..Default::default()
        }))
    }

    async fn track_usage_batch(
        &self,
        request: Request<pb::TrackUsageBatchRequest>,
    ) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
        let results = request
            .into_inner()
            .events
            .iter()
            .map(|_| pb::TrackUsageResult {
                transaction_id: "1".into(),
                balance: 1_000_000,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::TrackUsageBatchResponse { results }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        Ok(Response::new(pb::GetBalanceResponse {
            user_id: request.into_inner().user_id,
            balance: 1_000_000,
            available: 1_000_000,
            totals: Some(pb::BalanceTotals::default()),
            transaction_count: 1,
            ..Default::default()
        }))
    }

    async fn reserve(
        &self,
        _: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        Ok(Response::new(pb::ReserveResponse {
            hold_id: "1".into(),
            held: 1_000,
            available: 999_000,
            balance: 1_000_000,
            ..Default::default()
        }))
    }

    async fn commit_hold(
        &self,
        _: Request<pb::CommitHoldRequest>,
    ) -> Result<Response<pb::CommitHoldResponse>, Status> {
        Ok(Response::new(pb::CommitHoldResponse {
            transaction_id: "1".into(),
            balance: 1_000_000,
            available: 1_000_000,
            held: 1_000,
            ..Default::default()
        }))
    }

    async fn deduct(
        &self,
        _: Request<pb::DeductRequest>,
    ) -> Result<Response<pb::DeductResponse>, Status> {
        not_echoed()
    }

    async fn drip(
        &self,
        _: Request<pb::DripRequest>,
    ) -> Result<Response<pb::DripResponse>, Status> {
        not_echoed()
    }

    async fn record_purchase(
        &self,
        _: Request<pb::RecordPurchaseRequest>,
    ) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
        not_echoed()
    }

    async fn list_transactions(
        &self,
        _: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        not_echoed()
    }

    async fn reverse(
        &self,
        _: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        not_echoed()
    }

    async fn get_transaction(
        &self,
        _: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        not_echoed()
    }

    async fn list_accounts(
        &self,
        _: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        not_echoed()
    }

    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        not_echoed()
    }

    async fn release_hold(
        &self,
        _: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        not_echoed()
    }

    async fn extend_hold(
        &self,
        _: Request<pb::ExtendHoldRequest>,
    ) -> Result<Response<pb::ExtendHoldResponse>, Status> {
        not_echoed()
    }

    async fn list_holds(
        &self,
        _: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        not_echoed()
    }

    async fn list_lots(
        &self,
        _: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        not_echoed()
    }

    async fn list_stripe_events(
        &self,
        _: Request<pb::ListStripeEventsRequest>,
    ) -> Result<Response<pb::ListStripeEventsResponse>, Status> {
        not_echoed()
    }

    async fn get_overview(
        &self,
        _: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::GetOverviewResponse>, Status> {
        not_echoed()
    }

    async fn set_model_price(
        &self,
        _: Request<pb::SetModelPriceRequest>,
    ) -> Result<Response<pb::SetModelPriceResponse>, Status> {
        not_echoed()
    }

    async fn list_model_prices(
        &self,
        _: Request<pb::ListModelPricesRequest>,
    ) -> Result<Response<pb::ListModelPricesResponse>, Status> {
        not_echoed()
    }

    async fn summarize_usage(
        &self,
        _: Request<pb::SummarizeUsageRequest>,
    ) -> Result<Response<pb::SummarizeUsageResponse>, Status> {
        not_echoed()
    }

    type WatchBalanceStream = tokio_stream::Empty<Result<pb::BalanceUpdate, Status>>;

    async fn watch_balance(
        &self,
        _: Request<pb::WatchBalanceRequest>,
    ) -> Result<Response<Self::WatchBalanceStream>, Status> {
        not_echoed()
    }

    async fn set_balance_alert(
        &self,
        _: Request<pb::SetBalanceAlertRequest>,
    ) -> Result<Response<pb::SetBalanceAlertResponse>, Status> {
        not_echoed()
    }

    async fn list_balance_alerts(
        &self,
        _: Request<pb::ListBalanceAlertsRequest>,
    ) -> Result<Response<pb::ListBalanceAlertsResponse>, Status> {
        not_echoed()
    }

    async fn delete_balance_alert(
        &self,
        _: Request<pb::DeleteBalanceAlertRequest>,
    ) -> Result<Response<pb::DeleteBalanceAlertResponse>, Status> {
        not_echoed()
    }

    async fn list_alert_events(
        &self,
        _: Request<pb::ListAlertEventsRequest>,
    ) -> Result<Response<pb::ListAlertEventsResponse>, Status> {
        not_echoed()
    }
}

/// An echo server started as a child of this bench (so it has a process of its own, like the
/// ledger server), killed when dropped.
pub struct EchoChild {
    _child: tokio::process::Child,
    pub url: String,
}

/// Starts `token-ledger-bench --serve-echo 127.0.0.1:0` and waits for its address.
pub async fn start() -> anyhow::Result<EchoChild> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--serve-echo", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the echo server")?;
    let stdout = child.stdout.take().context("echo stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .context("the echo server did not listen in time")??
        .context("the echo server exited")?;
    let addr = line
        .strip_prefix("echo listening ")
        .context("unexpected echo output")?
        .to_string();
    Ok(EchoChild {
        _child: child,
        url: format!("http://{addr}"),
    })
}
