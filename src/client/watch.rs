//! CLI command `watch`: a user's balance as it changes (WatchBalance), one line per message.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::{json, report_status, time, Client, ClientArgs};
use crate::pb;

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[arg(long = "user")]
    pub user_id: String,
    /// Resume from the last seq printed: the current balance is printed only if its seq is
    /// above it; every later change is.
    #[arg(long, default_value_t = 0)]
    pub after_seq: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints every update until the server ends the stream (exit 1 with its status) or the user
/// stops it.
pub async fn watch(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::connect(&a.client).await?;
    let req = c.request(pb::WatchBalanceRequest {
        user_id: a.user_id,
        after_seq: a.after_seq,
    });
    let mut stream = match c.inner.watch_balance(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return report_status(status),
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                if c.json {
                    json::print(&update);
                } else {
                    println!("{}", line(&update));
                }
                // A pipe would otherwise hold lines back until its buffer fills.
                std::io::stdout().flush()?;
            }
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(status) => return report_status(status),
        }
    }
}

/// `seq 7: balance 1000  held 200  available 800  at 2026-…` (a heartbeat says so first).
fn line(u: &pb::BalanceUpdate) -> String {
    format!(
        "{}seq {}: balance {}  held {}  available {}  at {}",
        if u.heartbeat { "heartbeat " } else { "" },
        u.seq,
        u.balance,
        u.held,
        u.available,
        time(u.updated_at)
    )
}
