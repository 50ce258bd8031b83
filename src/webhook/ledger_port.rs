//! How the webhook adapter reaches the ledger: over gRPC as a client with its own API key, or,
//! when `serve` hosts the webhook, by calling the same gRPC service in process. Both go through
//! the ledger service's own authorization, validation and idempotency, so the event-to-call
//! mapping cannot tell them apart.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::auth::{Caller, Credential, Scope};
use crate::pb;
use crate::pb::ledger_service_client::LedgerServiceClient;
use crate::pb::ledger_service_server::LedgerService;
use crate::transport::grpc::{InProcessCaller, LedgerGrpc};

/// The ledger calls the adapter makes.
#[tonic::async_trait]
pub trait LedgerPort: Send + Sync + 'static {
    async fn record_purchase(
        &self,
        r: pb::RecordPurchaseRequest,
    ) -> Result<pb::RecordPurchaseResponse, Status>;
    async fn drip(&self, r: pb::DripRequest) -> Result<pb::DripResponse, Status>;
    async fn grant(&self, r: pb::GrantRequest) -> Result<pb::GrantResponse, Status>;
    async fn reverse(&self, r: pb::ReverseRequest) -> Result<pb::ReverseResponse, Status>;
    async fn get_transaction(
        &self,
        r: pb::GetTransactionRequest,
    ) -> Result<pb::GetTransactionResponse, Status>;
}

/// The ledger over the network.
#[derive(Clone)]
pub struct RemoteLedger {
    client: LedgerServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl RemoteLedger {
    /// Connects lazily, so the adapter starts (and answers 503) while the ledger is down.
    pub fn new(
        url: &str,
        api_key: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy();
        let authorization = api_key
            .map(|k| MetadataValue::try_from(format!("Bearer {k}")))
            .transpose()?;
        Ok(Self {
            client: LedgerServiceClient::new(channel),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }
}

#[tonic::async_trait]
impl LedgerPort for RemoteLedger {
    async fn record_purchase(
        &self,
        r: pb::RecordPurchaseRequest,
    ) -> Result<pb::RecordPurchaseResponse, Status> {
        Ok(self
            .client
            .clone()
            .record_purchase(self.request(r))
            .await?
            .into_inner())
    }
    async fn drip(&self, r: pb::DripRequest) -> Result<pb::DripResponse, Status> {
        Ok(self
            .client
            .clone()
            .drip(self.request(r))
            .await?
            .into_inner())
    }
    async fn grant(&self, r: pb::GrantRequest) -> Result<pb::GrantResponse, Status> {
        Ok(self
            .client
            .clone()
            .grant(self.request(r))
            .await?
            .into_inner())
    }
    async fn reverse(&self, r: pb::ReverseRequest) -> Result<pb::ReverseResponse, Status> {
        Ok(self
            .client
            .clone()
            .reverse(self.request(r))
            .await?
            .into_inner())
    }
    async fn get_transaction(
        &self,
        r: pb::GetTransactionRequest,
    ) -> Result<pb::GetTransactionResponse, Status> {
        Ok(self
            .client
            .clone()
            .get_transaction(self.request(r))
            .await?
            .into_inner())
    }
}

/// The ledger in this process, called as the `stripe-webhook` caller with the `billing` scope.
#[derive(Clone)]
pub struct InProcessLedger {
    service: LedgerGrpc,
    caller: Caller,
}

impl InProcessLedger {
    pub fn new(service: LedgerGrpc) -> Self {
        Self {
            service,
            caller: Caller {
                name: "stripe-webhook".into(),
                scopes: vec![Scope::Billing],
                credential: Credential::InProcess,
            },
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.extensions_mut()
            .insert(InProcessCaller(self.caller.clone()));
        r
    }
}

#[tonic::async_trait]
impl LedgerPort for InProcessLedger {
    async fn record_purchase(
        &self,
        r: pb::RecordPurchaseRequest,
    ) -> Result<pb::RecordPurchaseResponse, Status> {
        Ok(self
            .service
            .record_purchase(self.request(r))
            .await?
            .into_inner())
    }
    async fn drip(&self, r: pb::DripRequest) -> Result<pb::DripResponse, Status> {
        Ok(self.service.drip(self.request(r)).await?.into_inner())
    }
    async fn grant(&self, r: pb::GrantRequest) -> Result<pb::GrantResponse, Status> {
        Ok(self.service.grant(self.request(r)).await?.into_inner())
    }
    async fn reverse(&self, r: pb::ReverseRequest) -> Result<pb::ReverseResponse, Status> {
        Ok(self.service.reverse(self.request(r)).await?.into_inner())
    }
    async fn get_transaction(
        &self,
        r: pb::GetTransactionRequest,
    ) -> Result<pb::GetTransactionResponse, Status> {
        Ok(self
            .service
            .get_transaction(self.request(r))
            .await?
            .into_inner())
    }
}
