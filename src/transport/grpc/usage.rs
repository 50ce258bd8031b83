//! What the AI backend calls on every request: TrackUsage, TrackUsageBatch, GetBalance.

use tonic::{Request, Response, Status};

use super::convert::{balance_to_pb, chrono_to_timestamp, timestamp_to_chrono, usage_result};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{build, UserId};
use crate::error::LedgerError;
use crate::pb;

/// Most events one TrackUsageBatch call may carry.
pub const USAGE_BATCH_EVENTS_MAX: usize = 1_000;

pub(super) async fn track_usage(
    grpc: &LedgerGrpc,
    request: Request<pb::TrackUsageRequest>,
) -> Result<Response<pb::TrackUsageResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::TRACK_USAGE,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let input = build::Usage::from(request.into_inner());
    call.run(async {
        let caller = call.authorize(&[Scope::Usage])?;
        call.commit(input.build(caller.actor())?).await
    })
    .await
}

pub(super) async fn track_usage_batch(
    grpc: &LedgerGrpc,
    request: Request<pb::TrackUsageBatchRequest>,
) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
    let call = Call::new(grpc, method::TRACK_USAGE_BATCH, &request, "", "");
    let pb::TrackUsageBatchRequest { events } = request.into_inner();
    call.run(async {
        let caller = call.authorize(&[Scope::Usage])?;
        if events.len() > USAGE_BATCH_EVENTS_MAX {
            return Err(LedgerError::invalid(
                "events",
                format!(
                    "at most {USAGE_BATCH_EVENTS_MAX} events per call, got {}",
                    events.len()
                ),
            ));
        }
        // Each event is validated on its own: a bad one fails alone.
        let mut results: Vec<Option<pb::TrackUsageResult>> = vec![None; events.len()];
        let mut valid = Vec::with_capacity(events.len());
        let mut positions = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            match build::Usage::from(event).build(caller.actor()) {
                Ok(cmd) => {
                    valid.push(cmd);
                    positions.push(i);
                }
                Err(err) => results[i] = Some(usage_result(Err(err))),
            }
        }
        let written = call.ledger().write_many_within(valid, call.deadline).await;
        for (i, r) in positions.into_iter().zip(written) {
            results[i] = Some(usage_result(r));
        }
        // An event without an answer is a bug; it must never read as committed.
        let missing = || {
            usage_result(Err(LedgerError::Invariant(
                "no result for this event".into(),
            )))
        };
        Ok(pb::TrackUsageBatchResponse {
            results: results
                .into_iter()
                .map(|r| r.unwrap_or_else(missing))
                .collect(),
        })
    })
    .await
}

pub(super) async fn get_balance(
    grpc: &LedgerGrpc,
    request: Request<pb::GetBalanceRequest>,
) -> Result<Response<pb::GetBalanceResponse>, Status> {
    let call = Call::new(
        grpc,
        method::GET_BALANCE,
        &request,
        &request.get_ref().user_id,
        "",
    );
    let pb::GetBalanceRequest { user_id, as_of } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Usage, Scope::Billing, Scope::Read])?;
        let user_id = UserId::parse("user_id", user_id)?;
        if let Some(at) = timestamp_to_chrono("as_of", as_of)? {
            let (balance, seq, updated_at) = call.ledger().balance_at(&user_id, at).await?;
            return Ok(pb::GetBalanceResponse {
                user_id: user_id.as_str().to_string(),
                balance,
                transaction_count: seq,
                updated_at: updated_at.map(chrono_to_timestamp),
                ..Default::default()
            });
        }
        let balance = call
            .ledger()
            .balance_within(&user_id, call.deadline)
            .await?;
        Ok(balance_to_pb(&user_id, balance))
    })
    .await
}
