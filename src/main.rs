use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    token_ledger::cli::run(token_ledger::cli::Cli::parse()).await
}
