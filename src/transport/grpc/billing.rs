//! What the Stripe adapter calls: Drip, RecordPurchase, and Reverse for refunds and disputes
//! (admins may reverse too). Annual allotments go through Grant (`admin`), with the billing
//! scope.

use tonic::{Request, Response, Status};

use super::convert::{drip_from_pb, purchase_from_pb};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{build, ReversalSource};
use crate::pb;

pub(super) async fn drip(
    grpc: &LedgerGrpc,
    request: Request<pb::DripRequest>,
) -> Result<Response<pb::DripResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::DRIP, &request, &m.user_id, &m.idempotency_key);
    let (input, violations, terms) = drip_from_pb(request.into_inner());
    call.run(async {
        let caller = call.authorize(&[Scope::Billing])?;
        let built = input.build_after(violations, caller.actor());
        call.commit(build::with_terms(built, terms)?).await
    })
    .await
}

pub(super) async fn record_purchase(
    grpc: &LedgerGrpc,
    request: Request<pb::RecordPurchaseRequest>,
) -> Result<Response<pb::RecordPurchaseResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::RECORD_PURCHASE,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let (input, terms) = purchase_from_pb(request.into_inner());
    call.run(async {
        let caller = call.authorize(&[Scope::Billing])?;
        call.commit(build::with_terms(input.build(caller.actor()), terms)?)
            .await
    })
    .await
}

pub(super) async fn reverse(
    grpc: &LedgerGrpc,
    request: Request<pb::ReverseRequest>,
) -> Result<Response<pb::ReverseResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::REVERSE,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let input = build::Reversal::from(request.into_inner());
    call.run(async {
        // Refunds and disputes come from the billing adapter; hand corrections from admins.
        let allowed: &[Scope] = match input.source {
            Some(ReversalSource::Refund | ReversalSource::Dispute) => &[Scope::Billing],
            _ => &[],
        };
        let caller = call.authorize(allowed)?;
        call.commit(input.build(caller.actor())?).await
    })
    .await
}
