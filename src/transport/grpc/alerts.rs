//! Balance alerts: SetBalanceAlert, DeleteBalanceAlert (admins), ListBalanceAlerts and
//! ListAlertEvents (dashboards).

use tonic::{Request, Response, Status};

use super::convert::chrono_to_timestamp;
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::{AlertEvent, AlertRule, Threshold, UserId};
use crate::error::LedgerError;
use crate::pb;

/// An optional user id: empty means "the default" (rules) or "everyone" (events).
fn optional_user(user_id: String) -> Result<Option<UserId>, LedgerError> {
    (!user_id.is_empty())
        .then(|| UserId::parse("user_id", user_id))
        .transpose()
}

pub(super) async fn set_balance_alert(
    grpc: &LedgerGrpc,
    request: Request<pb::SetBalanceAlertRequest>,
) -> Result<Response<pb::SetBalanceAlertResponse>, Status> {
    use pb::set_balance_alert_request::Threshold as T;
    let m = request.get_ref();
    let call = Call::new(grpc, method::SET_BALANCE_ALERT, &request, &m.user_id, "");
    let pb::SetBalanceAlertRequest { user_id, threshold } = request.into_inner();
    call.run(async {
        let caller = call.authorize(&[])?;
        let user = optional_user(user_id)?;
        let threshold = match threshold {
            Some(T::Tokens(t)) => Threshold::parse(Some(t), None)?,
            Some(T::Percent(p)) => Threshold::parse(None, Some(p))?,
            None => Threshold::parse(None, None)?,
        };
        let rule = call
            .ledger()
            .set_alert(user.as_ref(), threshold, caller.actor().as_str())
            .await?;
        tracing::info!(alert_id = rule.alert_id, ?threshold, "balance alert set");
        Ok(pb::SetBalanceAlertResponse {
            alert: Some(rule_to_pb(rule)),
        })
    })
    .await
}

pub(super) async fn delete_balance_alert(
    grpc: &LedgerGrpc,
    request: Request<pb::DeleteBalanceAlertRequest>,
) -> Result<Response<pb::DeleteBalanceAlertResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::DELETE_BALANCE_ALERT, &request, &m.user_id, "");
    let pb::DeleteBalanceAlertRequest { user_id } = request.into_inner();
    call.run(async {
        call.authorize(&[])?;
        let user = optional_user(user_id)?;
        let deleted = call.ledger().delete_alert(user.as_ref()).await?;
        tracing::info!(deleted, "balance alert deleted");
        Ok(pb::DeleteBalanceAlertResponse { deleted })
    })
    .await
}

pub(super) async fn list_balance_alerts(
    grpc: &LedgerGrpc,
    request: Request<pb::ListBalanceAlertsRequest>,
) -> Result<Response<pb::ListBalanceAlertsResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::LIST_BALANCE_ALERTS, &request, &m.user_id, "");
    let pb::ListBalanceAlertsRequest { user_id } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let user = optional_user(user_id)?;
        let rules = call
            .ledger()
            .alerts(user.as_ref().map(UserId::as_str))
            .await?;
        Ok(pb::ListBalanceAlertsResponse {
            alerts: rules.into_iter().map(rule_to_pb).collect(),
        })
    })
    .await
}

pub(super) async fn list_alert_events(
    grpc: &LedgerGrpc,
    request: Request<pb::ListAlertEventsRequest>,
) -> Result<Response<pb::ListAlertEventsResponse>, Status> {
    let m = request.get_ref();
    let call = Call::new(grpc, method::LIST_ALERT_EVENTS, &request, &m.user_id, "");
    let pb::ListAlertEventsRequest {
        user_id,
        pending_only,
        page_size,
        page_token,
    } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read])?;
        let user = optional_user(user_id)?;
        let (events, next) = call
            .ledger()
            .alert_events(
                user.as_ref().map(UserId::as_str),
                pending_only,
                page_size,
                &page_token,
            )
            .await?;
        Ok(pb::ListAlertEventsResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    })
    .await
}

fn rule_to_pb(r: AlertRule) -> pb::BalanceAlert {
    use pb::balance_alert::Threshold as T;
    pb::BalanceAlert {
        alert_id: r.alert_id.to_string(),
        user_id: r.user_id.unwrap_or_default(),
        threshold: Some(match r.threshold {
            Threshold::Tokens(t) => T::Tokens(t),
            Threshold::Percent(p) => T::Percent(p),
        }),
        created_by: r.created_by,
        created_at: Some(chrono_to_timestamp(r.created_at)),
        updated_at: Some(chrono_to_timestamp(r.updated_at)),
    }
}

pub(crate) fn event_to_pb(e: AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        event_id: e.event_id.to_string(),
        user_id: e.user_id,
        r#type: e.kind.as_str().to_string(),
        threshold: e.threshold.unwrap_or_default(),
        available: e.available,
        balance: e.balance,
        seq: e.seq,
        created_at: Some(chrono_to_timestamp(e.created_at)),
        delivered_at: e.delivered_at.map(chrono_to_timestamp),
        attempts: e.attempts,
        next_attempt_at: Some(chrono_to_timestamp(e.next_attempt_at)),
        last_error: e.last_error.unwrap_or_default(),
        lot_id: e.lot.map(|l| l.0.to_string()).unwrap_or_default(),
        expires_at: e.lot.map(|l| chrono_to_timestamp(l.1)),
        tokens: e.lot.map_or(0, |l| l.2),
    }
}
