//! Logging: human-readable or JSON lines through `tracing-subscriber`, levels from `RUST_LOG`.
//!
//! JSON lines are flattened (an event's fields sit beside `timestamp`, `level`, `target` and
//! the event's own `message`), so no event may carry a field with one of those names: it would
//! give the line a second key of the same name, which most log stores drop or reject. Ids keep
//! one JSON type everywhere: `transaction_id` is always a number (the journal row's BIGINT id),
//! never a string, so a log store indexes it once and range queries work; an event without a
//! transaction simply has no such field.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber. The server logs at `info` by default; client commands only
/// warn, so their output stays the answer. Human lines are coloured only on a terminal: piped
/// to a file or a log collector, colour codes are noise in every line.
pub fn init(format: LogFormat, is_server: bool) {
    let default = if is_server { "info,sqlx=warn" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder
            .with_ansi(colour_wanted(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything (https://no-color.org).
fn colour_wanted(stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
