//! WatchBalance, the frontend's live token counter: a server stream fed by the process's
//! watched balances (`ledger::watch`), one task per stream.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::balance_update;
use super::{method, Call, LedgerGrpc};
use crate::auth::Scope;
use crate::domain::UserId;
use crate::error::LedgerError;
use crate::ledger::watch::WatchEvent;
use crate::pb;

/// The stream a WatchBalance call answers with.
pub type WatchBalanceStream = ReceiverStream<Result<pb::BalanceUpdate, Status>>;

/// Messages made ahead of what the client has read. One: a watcher that reads slowly must find
/// the newest balance when it reads again, not a queue of old ones (the watch channel behind it
/// keeps only the newest).
const STREAM_AHEAD_MAX: usize = 1;

pub(super) async fn watch_balance(
    grpc: &LedgerGrpc,
    request: Request<pb::WatchBalanceRequest>,
) -> Result<Response<WatchBalanceStream>, Status> {
    let call = Call::new(
        grpc,
        method::WATCH_BALANCE,
        &request,
        &request.get_ref().user_id,
        "",
    );
    let pb::WatchBalanceRequest { user_id, after_seq } = request.into_inner();
    call.run(async {
        call.authorize(&[Scope::Read, Scope::Usage])?;
        let user_id = UserId::parse("user_id", user_id)?;
        if after_seq < 0 {
            return Err(LedgerError::invalid(
                "after_seq",
                format!("must not be negative, got {after_seq}"),
            ));
        }
        let watch = grpc.watch.as_ref().ok_or_else(|| {
            LedgerError::Unavailable("this server does not serve WatchBalance".into())
        })?;
        let mut watcher = watch.subscribe(user_id.clone(), after_seq).await?;
        let (tx, rx) = mpsc::channel(STREAM_AHEAD_MAX);
        let stream = async move {
            loop {
                let event = tokio::select! {
                    event = watcher.next() => event,
                    // The client went away: stop watching now, not at the next change.
                    () = tx.closed() => return,
                };
                let message = match &event {
                    WatchEvent::Changed(b) => Ok(balance_update(&user_id, b, false)),
                    WatchEvent::Heartbeat(b) => Ok(balance_update(&user_id, b, true)),
                    WatchEvent::ShuttingDown => Err(Status::unavailable(
                        "the server is shutting down: watch again, with after_seq set to the last seq received",
                    )),
                };
                let last = message.is_err();
                if tx.send(message).await.is_err() || last {
                    return;
                }
            }
        };
        tokio::spawn(stream.instrument(tracing::Span::current()));
        Ok(ReceiverStream::new(rx))
    })
    .await
}
