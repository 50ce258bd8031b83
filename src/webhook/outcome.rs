//! What the webhook did with an event: the `outcome` recorded in `stripe_events` (and answered in
//! the reply's body), one value per case, each with the one HTTP status Stripe gets with it.
//! The named CHECK `stripe_events_outcome_known` (migrations/0008_webhook_modes.sql) lists the
//! same values; a unit test below keeps the enum and the migration equal.

use std::fmt;

/// One recorded outcome. The doc of each variant says its HTTP status and when it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOutcome {
    /// 200: a purchase, annual grant or drip cycle committed by this delivery.
    Credited,
    /// 200: the ledger already held this credit or reversal under the same key (a redelivery, a
    /// twin event, a second adapter process): nothing new was written.
    Replayed,
    /// 200: deliberately not acted on (an event type not handled, an unpaid or incomplete
    /// session, a proration, a pack invoice, a charge with no payment intent...).
    Ignored,
    /// 200: a checkout paid by a delayed method; credited by its `async_payment_succeeded`.
    AwaitingPayment,
    /// 200: facts written to the webhook's own tables only (a subscription's owner, its end).
    Recorded,
    /// 200: a refund or dispute clawed back its share of the purchase.
    Reversed,
    /// 200: the refund's or dispute's share was already clawed back (a purchase fully reversed,
    /// or a step whose cumulative amount adds nothing): nothing to reverse.
    AlreadyReversed,
    /// 200: a refund or dispute whose purchase is not credited yet, parked under the payment
    /// intent's lock and clawed back when the purchase lands.
    UnmatchedReversal,
    /// 503: no user is known for the object yet (an invoice before its checkout); Stripe retries.
    UserUnknown,
    /// 503: the ledger did not answer (unreachable, timed out, overloaded); Stripe retries.
    LedgerUnavailable,
    /// 503: the webhook's own tables could not be read or written; Stripe retries.
    StoreUnavailable,
    /// 400: the event names a price or product the catalog lacks (or of the wrong kind): a
    /// catalog gap, logged as an error; Stripe retries until the catalog is fixed.
    UnknownPrice,
    /// 400: the event's object lacks a field it must have (an id, an amount, a period).
    Malformed,
    /// 500: a bug or misconfiguration (e.g. the webhook's key lacks the billing scope).
    Failed,
    /// 200: an event of the other mode than `--stripe-mode` (a live event at a test endpoint, or
    /// a test event at a live one): never acted on.
    IgnoredOtherMode,
    /// 200: an event for a price or product the catalog lacks, with
    /// `--stripe-unknown-products ignore` (an account that sells other things too).
    IgnoredUnknownProduct,
}

impl EventOutcome {
    /// Every outcome, in the order the migration's CHECK lists them.
    pub const ALL: [EventOutcome; 16] = [
        EventOutcome::Credited,
        EventOutcome::Replayed,
        EventOutcome::Ignored,
        EventOutcome::AwaitingPayment,
        EventOutcome::Recorded,
        EventOutcome::Reversed,
        EventOutcome::AlreadyReversed,
        EventOutcome::UnmatchedReversal,
        EventOutcome::UserUnknown,
        EventOutcome::LedgerUnavailable,
        EventOutcome::StoreUnavailable,
        EventOutcome::UnknownPrice,
        EventOutcome::Malformed,
        EventOutcome::Failed,
        EventOutcome::IgnoredOtherMode,
        EventOutcome::IgnoredUnknownProduct,
    ];

    /// The form stored in `stripe_events.outcome` and sent in the reply.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Credited => "credited",
            EventOutcome::Replayed => "replayed",
            EventOutcome::Ignored => "ignored",
            EventOutcome::AwaitingPayment => "awaiting_payment",
            EventOutcome::Recorded => "recorded",
            EventOutcome::Reversed => "reversed",
            EventOutcome::AlreadyReversed => "already_reversed",
            EventOutcome::UnmatchedReversal => "unmatched_reversal",
            EventOutcome::UserUnknown => "user_unknown",
            EventOutcome::LedgerUnavailable => "ledger_unavailable",
            EventOutcome::StoreUnavailable => "store_unavailable",
            EventOutcome::UnknownPrice => "unknown_price",
            EventOutcome::Malformed => "malformed",
            EventOutcome::Failed => "failed",
            EventOutcome::IgnoredOtherMode => "ignored_other_mode",
            EventOutcome::IgnoredUnknownProduct => "ignored_unknown_product",
        }
    }

    /// The HTTP status Stripe gets: 2xx acknowledges the event for good, 4xx and 5xx make
    /// Stripe deliver it again.
    pub const fn http_status(self) -> u16 {
        match self {
            EventOutcome::Credited
            | EventOutcome::Replayed
            | EventOutcome::Ignored
            | EventOutcome::AwaitingPayment
            | EventOutcome::Recorded
            | EventOutcome::Reversed
            | EventOutcome::AlreadyReversed
            | EventOutcome::UnmatchedReversal
            | EventOutcome::IgnoredOtherMode
            | EventOutcome::IgnoredUnknownProduct => 200,
            EventOutcome::UserUnknown
            | EventOutcome::LedgerUnavailable
            | EventOutcome::StoreUnavailable => 503,
            EventOutcome::UnknownPrice | EventOutcome::Malformed => 400,
            EventOutcome::Failed => 500,
        }
    }

    /// Whether the event is acknowledged (Stripe will not deliver it again).
    pub const fn is_acknowledged(self) -> bool {
        self.http_status() == 200
    }
}

impl fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event could not be handled (yet): the outcome recorded for it (never an acknowledged
/// one) and a sentence for the operator.
#[derive(Debug)]
pub struct Fail {
    pub outcome: EventOutcome,
    pub detail: String,
}

impl Fail {
    pub fn new(outcome: EventOutcome, detail: impl Into<String>) -> Self {
        assert!(
            !outcome.is_acknowledged(),
            "{outcome} acknowledges the event: it is no failure"
        );
        Self {
            outcome,
            detail: detail.into(),
        }
    }

    /// 400: the object lacks a field it must have.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(EventOutcome::Malformed, detail)
    }

    /// 400: a catalog gap.
    pub fn unknown_price(detail: impl Into<String>) -> Self {
        Self::new(EventOutcome::UnknownPrice, detail)
    }

    /// 500: a bug or misconfiguration.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self::new(EventOutcome::Failed, detail)
    }
}

/// The webhook's own tables could not be used: 503, Stripe retries.
impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        let refused_value = match &e {
            sqlx::Error::Database(db) => db.code().is_some_and(|c| is_refused_value(&c)),
            _ => false,
        };
        if refused_value {
            Fail::new(
                EventOutcome::Malformed,
                format!("the event holds a value the webhook database cannot store: {e}"),
            )
        } else {
            Fail::new(
                EventOutcome::StoreUnavailable,
                format!("webhook database error: {e}"),
            )
        }
    }
}

/// Whether a SQLSTATE says the database refused a value itself: class 22 (data exception: a
/// NUL, a timestamp out of range) or 54 (over a limit, such as an id too long for an index
/// entry). The value came from the event, so a retry would only send it again.
fn is_refused_value(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("54")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The migration that last set the CHECK.
    const MIGRATION: &str = include_str!("../../migrations/0008_webhook_modes.sql");

    /// The quoted values of the `stripe_events_outcome_known` CHECK, comments left out.
    fn values_in_check(migration: &str, constraint: &str) -> Vec<String> {
        let sql: String = migration
            .lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let start = sql
            .find(&format!("CONSTRAINT {constraint} CHECK"))
            .unwrap_or_else(|| panic!("the migration adds no CHECK named {constraint}"));
        let statement = &sql[start..start + sql[start..].find(';').expect("a ';'")];
        statement
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_outcome_is_in_the_migrations_check_and_nothing_else_is() {
        let in_check = values_in_check(MIGRATION, "stripe_events_outcome_known");
        let in_check_set: BTreeSet<&str> = in_check.iter().map(String::as_str).collect();
        assert_eq!(in_check_set.len(), in_check.len(), "a value listed twice");
        let in_enum: BTreeSet<&str> = EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            in_enum.len(),
            EventOutcome::ALL.len(),
            "a value named twice"
        );
        assert_eq!(in_enum, in_check_set);
    }

    #[test]
    fn a_failure_never_carries_an_acknowledged_outcome() {
        for outcome in EventOutcome::ALL {
            let built = std::panic::catch_unwind(|| Fail::new(outcome, "x"));
            assert_eq!(built.is_err(), outcome.is_acknowledged(), "{outcome}");
        }
    }

    #[test]
    fn only_a_value_the_database_refuses_is_a_400_and_every_other_database_error_a_503() {
        for refused in ["22021", "22008", "22001", "54000"] {
            assert!(is_refused_value(refused), "{refused}");
        }
        // Connection lost, serialization failure, shutting down, a unique violation (a race).
        for passing in ["08006", "40001", "57P01", "23505"] {
            assert!(!is_refused_value(passing), "{passing}");
        }
    }
}
