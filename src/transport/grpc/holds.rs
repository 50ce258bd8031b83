//! Holds and lots: what the AI backend calls around a long AI call (Reserve, then CommitHold or
//! ReleaseHold, ExtendHold for long streams), and the reads of a user's holds and lots.

use tonic::{Request, Response, Status};

use super::convert::{duration_from_pb, hold_to_pb, lot_to_pb, overage_from_pb, price_id_text};
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{build, Actor, EntryId, Receipt, UserId};
use crate::error::LedgerError;
use crate::pb;

/// Who may place, commit, release and extend holds: the AI backend (and admins).
const HOLD_WRITERS: &[Scope] = &[Scope::Usage];

impl Call<'_> {
    /// For a write on an existing hold: the caller (who must hold a hold writer's scope), the
    /// hold's id and its owner (hold writes name no user: the hold knows it).
    async fn hold_target(&self, hold_id: &str) -> Result<(Actor, EntryId, String), LedgerError> {
        let caller = self.authorize(HOLD_WRITERS)?;
        let id = EntryId::parse("hold_id", hold_id)?;
        let owner = self.ledger().hold_owner(id).await?;
        Ok((caller.actor(), id, owner))
    }

    /// The hold as it is now, for the answer of a release or an extension.
    async fn hold_view(&self, user_id: String, id: EntryId) -> Result<pb::Hold, LedgerError> {
        let user_id = UserId::parse("user_id", user_id)?;
        let hold = self.ledger().hold(&user_id, id).await?;
        Ok(hold_to_pb(user_id.as_str(), &hold))
    }

    /// A hold write's receipt, logged like every write.
    async fn hold_write(&self, cmd: crate::domain::WriteCommand) -> Result<Receipt, LedgerError> {
        let receipt = self.ledger().write_within(cmd, self.deadline).await?;
        tracing::info!(
            transaction_id = receipt.transaction_id.0,
            balance = receipt.balance,
            replayed = receipt.replayed,
            "hold write committed"
        );
        Ok(receipt)
    }
}

fn hold_of(receipt: &Receipt) -> Result<crate::domain::HoldReceipt, LedgerError> {
    receipt
        .hold
        .ok_or_else(|| LedgerError::Invariant("a hold write answered without its hold".into()))
}

fn available(receipt: &Receipt) -> i64 {
    receipt
        .available
        .unwrap_or(receipt.balance - receipt.held.unwrap_or(0))
}

pub(super) async fn reserve(
    grpc: &LedgerGrpc,
    request: Request<pb::ReserveRequest>,
) -> Result<Response<pb::ReserveResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(
        grpc,
        method::RESERVE,
        &request,
        &m.user_id,
        &m.idempotency_key,
    );
    let pb::ReserveRequest {
        user_id,
        tokens,
        idempotency_key,
        ttl,
        model,
        feature,
        overage,
    } = request.into_inner();
    call.run(async {
        let caller = call.authorize(HOLD_WRITERS)?;
        let input = build::Reserve {
            common: build::Common {
                user_id,
                tokens,
                idempotency_key,
            },
            ttl: duration_from_pb("ttl", ttl)?,
            overage: overage_from_pb(overage)?,
            model,
            feature,
        };
        let receipt = call.hold_write(input.build(caller.actor())?).await?;
        let hold = hold_of(&receipt)?;
        Ok(pb::ReserveResponse {
            hold_id: hold.hold_id.to_string(),
            expires_at: Some(super::convert::chrono_to_timestamp(hold.expires_at)),
            held: hold.tokens,
            available: available(&receipt),
            balance: receipt.balance,
            replayed: receipt.replayed,
        })
    })
    .await
}

pub(super) async fn commit_hold(
    grpc: &LedgerGrpc,
    request: Request<pb::CommitHoldRequest>,
) -> Result<Response<pb::CommitHoldResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::COMMIT_HOLD, &request, "", &m.idempotency_key);
    let pb::CommitHoldRequest {
        hold_id,
        tokens,
        idempotency_key,
        model,
        input_tokens,
        output_tokens,
        feature,
        cache_read_tokens,
        cache_write_tokens,
    } = request.into_inner();
    call.run(async {
        let (actor, _, user_id) = call.hold_target(&hold_id).await?;
        let input = build::CommitHold {
            user_id,
            hold_id,
            tokens,
            idempotency_key,
            call: build::CallInput {
                model,
                feature,
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
            },
        };
        let receipt = call.hold_write(input.build(actor)?).await?;
        let hold = hold_of(&receipt)?;
        Ok(pb::CommitHoldResponse {
            transaction_id: receipt.transaction_id.to_string(),
            balance: receipt.balance,
            available: available(&receipt),
            replayed: receipt.replayed,
            hold_expired: hold.had_expired,
            held: hold.tokens,
            tokens: receipt.charged.map_or(0, |c| c.tokens),
            price_id: price_id_text(receipt.charged.and_then(|c| c.price_id)),
        })
    })
    .await
}

pub(super) async fn release_hold(
    grpc: &LedgerGrpc,
    request: Request<pb::ReleaseHoldRequest>,
) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
    let call = Call::new(grpc, method::RELEASE_HOLD, &request, "", "");
    let pb::ReleaseHoldRequest { hold_id } = request.into_inner();
    call.run(async {
        let (actor, id, user_id) = call.hold_target(&hold_id).await?;
        let input = build::ReleaseHold {
            user_id: user_id.clone(),
            hold_id,
        };
        let receipt = call.hold_write(input.build(actor)?).await?;
        Ok(pb::ReleaseHoldResponse {
            hold: Some(call.hold_view(user_id, id).await?),
            balance: receipt.balance,
            available: available(&receipt),
        })
    })
    .await
}

pub(super) async fn extend_hold(
    grpc: &LedgerGrpc,
    request: Request<pb::ExtendHoldRequest>,
) -> Result<Response<pb::ExtendHoldResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::EXTEND_HOLD, &request, "", &m.idempotency_key);
    let pb::ExtendHoldRequest {
        hold_id,
        ttl,
        add_tokens,
        idempotency_key,
    } = request.into_inner();
    call.run(async {
        let (actor, id, user_id) = call.hold_target(&hold_id).await?;
        let input = build::ExtendHold {
            user_id: user_id.clone(),
            hold_id,
            ttl: duration_from_pb("ttl", ttl)?,
            add_tokens,
            idempotency_key,
        };
        let receipt = call.hold_write(input.build(actor)?).await?;
        Ok(pb::ExtendHoldResponse {
            hold: Some(call.hold_view(user_id, id).await?),
            balance: receipt.balance,
            available: available(&receipt),
            replayed: receipt.replayed,
        })
    })
    .await
}

pub(super) async fn list_holds(
    grpc: &LedgerGrpc,
    request: Request<pb::ListHoldsRequest>,
) -> Result<Response<pb::ListHoldsResponse>, Status> {
    let call = Call::new(
        grpc,
        method::LIST_HOLDS,
        &request,
        &request.get_ref().user_id,
        "",
    );
    let pb::ListHoldsRequest {
        user_id,
        active_only,
    } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read, Scope::Usage])?;
        let user_id = UserId::parse("user_id", user_id)?;
        let holds = call.ledger().holds(&user_id, active_only).await?;
        Ok(pb::ListHoldsResponse {
            holds: holds
                .iter()
                .map(|h| hold_to_pb(user_id.as_str(), h))
                .collect(),
        })
    })
    .await
}

pub(super) async fn list_lots(
    grpc: &LedgerGrpc,
    request: Request<pb::ListLotsRequest>,
) -> Result<Response<pb::ListLotsResponse>, Status> {
    let call = Call::new(
        grpc,
        method::LIST_LOTS,
        &request,
        &request.get_ref().user_id,
        "",
    );
    let pb::ListLotsRequest {
        user_id,
        include_spent,
    } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read, Scope::Usage, Scope::Billing])?;
        let user_id = UserId::parse("user_id", user_id)?;
        let lots = call.ledger().lots(&user_id, include_spent).await?;
        Ok(pb::ListLotsResponse {
            lots: lots.iter().map(lot_to_pb).collect(),
        })
    })
    .await
}
