//! What the admin console and read-only dashboards call: Grant (also the Stripe adapter, for
//! annual allotments), Deduct, ListTransactions, GetTransaction, ListAccounts, WhoAmI.

use tonic::{Request, Response, Status};

use super::convert::{account_order_from_pb, grant_from_pb, HistoryQuery};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{build, EntryLookup, GrantSource};
use crate::error::LedgerError;
use crate::pb;

pub(super) async fn grant(
    grpc: &LedgerGrpc,
    request: Request<pb::GrantRequest>,
) -> Result<Response<pb::GrantResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::GRANT,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let (input, terms) = grant_from_pb(request.into_inner());
    call.run(async {
        // Annual allotments come from the billing adapter; admin grants only from admins.
        let allowed: &[Scope] = match input.source {
            Some(GrantSource::AnnualSubscription) => &[Scope::Billing],
            _ => &[],
        };
        let caller = call.authorize(allowed)?;
        call.commit(build::with_terms(input.build(caller.actor()), terms)?)
            .await
    })
    .await
}

pub(super) async fn deduct(
    grpc: &LedgerGrpc,
    request: Request<pb::DeductRequest>,
) -> Result<Response<pb::DeductResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::DEDUCT,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let input = build::Deduction::from(request.into_inner());
    call.run(async {
        let caller = call.authorize(&[])?;
        call.commit(input.build(caller.actor())?).await
    })
    .await
}

pub(super) async fn list_transactions(
    grpc: &LedgerGrpc,
    request: Request<pb::ListTransactionsRequest>,
) -> Result<Response<pb::ListTransactionsResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::LIST_TRANSACTIONS, &request, &m.user_id, "");
    let message = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let q = HistoryQuery::try_from(message)?;
        let page = call
            .ledger()
            .history(&q.user_id, q.page_size, &q.page_token, &q.filter)
            .await?;
        Ok(pb::ListTransactionsResponse {
            transactions: page.entries.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    })
    .await
}

pub(super) async fn get_transaction(
    grpc: &LedgerGrpc,
    request: Request<pb::GetTransactionRequest>,
) -> Result<Response<pb::GetTransactionResponse>, Status> {
    let call = Call::new(grpc, method::GET_TRANSACTION, &request, "", "");
    let pb::GetTransactionRequest { lookup } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read, Scope::Billing])?;
        let lookup = EntryLookup::try_from(lookup)?;
        let found = call
            .ledger()
            .find(&lookup)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("There is no {lookup}.")))?;
        Ok(pb::GetTransactionResponse {
            transaction: Some(found.entry.into()),
            user_id: found.user_id,
            reversed_tokens: found.reversed_tokens,
        })
    })
    .await
}

pub(super) async fn list_accounts(
    grpc: &LedgerGrpc,
    request: Request<pb::ListAccountsRequest>,
) -> Result<Response<pb::ListAccountsResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::LIST_ACCOUNTS, &request, &m.user_id_prefix, "");
    let pb::ListAccountsRequest {
        user_id_prefix,
        order_by,
        page_size,
        page_token,
    } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let order = account_order_from_pb(order_by)?;
        let page = call
            .ledger()
            .accounts(&user_id_prefix, order, page_size, &page_token)
            .await?;
        Ok(pb::ListAccountsResponse {
            accounts: page.accounts.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        })
    })
    .await
}

pub(super) async fn who_am_i(
    grpc: &LedgerGrpc,
    request: Request<pb::WhoAmIRequest>,
) -> Result<Response<pb::WhoAmIResponse>, Status> {
    let call = Call::new(grpc, method::WHO_AM_I, &request, "", "");
    call.run(async {
        // Any scope will do; a caller with none (a non-admin JWT) is refused.
        let caller = call.authorize(&[Scope::Usage, Scope::Billing, Scope::Read])?;
        Ok(pb::WhoAmIResponse {
            actor: caller.actor().as_str().to_string(),
            credential: caller.credential.as_str().to_string(),
            scopes: caller
                .scopes
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
        })
    })
    .await
}
