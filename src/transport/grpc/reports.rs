//! What operators read about the whole ledger: the Stripe events the webhook recorded, and the
//! overview (liability, daily movements, top users).

use tonic::{Request, Response, Status};

use super::LedgerGrpc;
use crate::pb;

pub(super) async fn list_stripe_events(
    _grpc: &LedgerGrpc,
    _request: Request<pb::ListStripeEventsRequest>,
) -> Result<Response<pb::ListStripeEventsResponse>, Status> {
    Err(Status::unimplemented("ListStripeEvents is being built"))
}

pub(super) async fn get_overview(
    _grpc: &LedgerGrpc,
    _request: Request<pb::GetOverviewRequest>,
) -> Result<Response<pb::GetOverviewResponse>, Status> {
    Err(Status::unimplemented("GetOverview is being built"))
}
