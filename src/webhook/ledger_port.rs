//! How the webhook adapter reaches the ledger: over gRPC as a client with its own API key, or,
//! when `serve` hosts the webhook, by calling the same gRPC service in process. Both go through
//! the ledger service's own authorization, validation and idempotency, so the event-to-call
//! mapping cannot tell them apart. `answer` is the one place a ledger call's status becomes
//! what the webhook does about it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::outcome::{EventOutcome, Fail};
use crate::auth::{Caller, Credential, Scope};
use crate::client::bearer;
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

/// A port that records how long each ledger call takes
/// (`ledger_webhook_ledger_call_seconds{call}`), whichever way it reaches the ledger.
pub struct Timed(pub std::sync::Arc<dyn LedgerPort>);

impl Timed {
    async fn time<T>(
        call: &'static str,
        future: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let result = future.await;
        crate::metrics::webhook_ledger_call(call, started.elapsed().as_secs_f64());
        result
    }
}

#[tonic::async_trait]
impl LedgerPort for Timed {
    async fn record_purchase(
        &self,
        r: pb::RecordPurchaseRequest,
    ) -> Result<pb::RecordPurchaseResponse, Status> {
        Self::time("RecordPurchase", self.0.record_purchase(r)).await
    }
    async fn drip(&self, r: pb::DripRequest) -> Result<pb::DripResponse, Status> {
        Self::time("Drip", self.0.drip(r)).await
    }
    async fn grant(&self, r: pb::GrantRequest) -> Result<pb::GrantResponse, Status> {
        Self::time("Grant", self.0.grant(r)).await
    }
    async fn reverse(&self, r: pb::ReverseRequest) -> Result<pb::ReverseResponse, Status> {
        Self::time("Reverse", self.0.reverse(r)).await
    }
    async fn get_transaction(
        &self,
        r: pb::GetTransactionRequest,
    ) -> Result<pb::GetTransactionResponse, Status> {
        Self::time("GetTransaction", self.0.get_transaction(r)).await
    }
}

/// A ledger call's answer that the event-to-call mapping acts on: each is a fact about the
/// ledger's state, acknowledged or not depending on the call.
#[derive(Debug)]
pub enum Answer<T> {
    Done(T),
    /// ALREADY_EXISTS: the same Stripe object was credited under the same key with other details
    /// (a twin event carrying slightly different data). Nothing more to do.
    AlreadyDone(String),
    /// FAILED_PRECONDITION.
    Refused(String),
    /// NOT_FOUND.
    NotFound,
}

impl<T> Answer<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Done(t) => Answer::Done(f(t)),
            Answer::AlreadyDone(m) => Answer::AlreadyDone(m),
            Answer::Refused(m) => Answer::Refused(m),
            Answer::NotFound => Answer::NotFound,
        }
    }
}

/// Sorts a ledger call's result: the answers the mapping acts on, or the event's failure, which
/// decides the webhook's HTTP answer. A ledger that cannot answer now (unreachable, timed out,
/// overloaded, cancelled) is `ledger_unavailable`, 503, and Stripe retries; a ledger refusing the
/// webhook's credentials, or answering anything else, is a bug or a misconfiguration: `failed`,
/// 500 (Stripe retries too, and the error log says what to fix).
pub fn answer<T>(result: Result<T, Status>) -> Result<Answer<T>, Fail> {
    let status = match result {
        Ok(t) => return Ok(Answer::Done(t)),
        Err(status) => status,
    };
    let (code, message) = (status.code(), status.message());
    match code {
        Code::AlreadyExists => Ok(Answer::AlreadyDone(message.to_string())),
        Code::FailedPrecondition => Ok(Answer::Refused(message.to_string())),
        Code::NotFound => Ok(Answer::NotFound),
        // The event carries a value the ledger will never accept (an over-long user id, a period
        // outside the years a timestamp may hold): as sent it can never be credited, so a retry
        // (a 5xx) would only repeat the refusal for days.
        Code::InvalidArgument => Err(Fail::new(
            EventOutcome::Malformed,
            format!("the ledger refused the event's values: {message}"),
        )),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted => Err(Fail::new(
            EventOutcome::LedgerUnavailable,
            format!("ledger unavailable: {code:?} {message}"),
        )),
        Code::Unauthenticated | Code::PermissionDenied => Err(Fail::failed(format!(
            "the ledger refused the webhook's credentials ({code:?}: {message}); it needs an API key with the billing scope"
        ))),
        _ => Err(Fail::failed(format!("ledger answered {code:?}: {message}"))),
    }
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
        let authorization = api_key.map(bearer).transpose()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_of(code: Code) -> Option<EventOutcome> {
        answer::<()>(Err(Status::new(code, "x")))
            .err()
            .map(|f| f.outcome)
    }

    #[test]
    fn a_ledger_refusal_of_the_events_values_is_a_400_not_a_500() {
        assert_eq!(
            outcome_of(Code::InvalidArgument),
            Some(EventOutcome::Malformed)
        );
        assert_eq!(EventOutcome::Malformed.http_status(), 400);
    }

    #[test]
    fn a_ledger_that_cannot_answer_now_is_retried_and_a_refusal_of_credentials_is_a_failure() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            assert_eq!(
                outcome_of(code),
                Some(EventOutcome::LedgerUnavailable),
                "{code:?}"
            );
        }
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert_eq!(outcome_of(code), Some(EventOutcome::Failed), "{code:?}");
        }
        assert!(matches!(
            answer::<()>(Err(Status::already_exists("twin"))),
            Ok(Answer::AlreadyDone(m)) if m == "twin"
        ));
        assert!(matches!(
            answer::<()>(Err(Status::not_found("x"))),
            Ok(Answer::NotFound)
        ));
        assert!(matches!(answer(Ok(7)), Ok(Answer::Done(7))));
    }
}
