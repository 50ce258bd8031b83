//! Balance alerts: a threshold rule, the kinds of alert event, and the read models of rules and
//! events. The rules decide crossings (`ledger::rules`); the store keeps rules, state and outbox.

use chrono::{DateTime, Utc};

use super::TOKENS_MAX;
use crate::error::LedgerError;

/// When an account is low: at or below a number of tokens, or a percentage of its most recent
/// credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Tokens(i64),
    Percent(i32),
}

impl Threshold {
    /// Checked once, at the boundary.
    pub fn parse(tokens: Option<i64>, percent: Option<i32>) -> Result<Self, LedgerError> {
        match (tokens, percent) {
            (Some(t), None) if (0..=TOKENS_MAX).contains(&t) => Ok(Threshold::Tokens(t)),
            (Some(t), None) => Err(LedgerError::invalid(
                "tokens",
                format!("must be between 0 and {TOKENS_MAX}, got {t}"),
            )),
            (None, Some(p)) if (0..=100).contains(&p) => Ok(Threshold::Percent(p)),
            (None, Some(p)) => Err(LedgerError::invalid(
                "percent",
                format!("must be between 0 and 100, got {p}"),
            )),
            _ => Err(LedgerError::invalid(
                "threshold",
                "give exactly one of tokens or percent",
            )),
        }
    }

    /// The threshold in tokens for an account whose most recent credit was `last_credit`
    /// (a percentage rounds up: 10% of 5 tokens is 1).
    pub fn tokens(self, last_credit: i64) -> i64 {
        match self {
            Threshold::Tokens(t) => t,
            Threshold::Percent(p) => {
                let scaled = i128::from(last_credit.max(0)) * i128::from(p);
                i64::try_from((scaled + 99) / 100).unwrap_or(i64::MAX)
            }
        }
    }
}

/// What an alert event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// `available` went from above the threshold to at or below it.
    BalanceLow,
    /// `available` rose back above the threshold (the alert is armed again).
    BalanceRecovered,
    /// `available` reached zero or less.
    BalanceDepleted,
    /// A lot's remaining tokens will expire within the configured window.
    CreditsExpiring,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::BalanceLow,
        AlertKind::BalanceRecovered,
        AlertKind::BalanceDepleted,
        AlertKind::CreditsExpiring,
    ];

    /// The name stored in `alert_outbox.kind` and sent to receivers.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BalanceLow => "balance_low",
            AlertKind::BalanceRecovered => "balance_recovered",
            AlertKind::BalanceDepleted => "balance_depleted",
            AlertKind::CreditsExpiring => "credits_expiring",
        }
    }

    pub fn from_db(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A rule as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRule {
    pub alert_id: i64,
    /// `None`: the default for every account without a rule of its own.
    pub user_id: Option<String>,
    pub threshold: Threshold,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An alert event as the outbox holds it, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub event_id: i64,
    pub user_id: String,
    pub kind: AlertKind,
    pub threshold: Option<i64>,
    pub available: i64,
    pub balance: i64,
    /// The account's journal row count when it happened.
    pub seq: i64,
    /// `credits_expiring`: the lot, when it expires, and its remaining tokens then.
    pub lot: Option<(i64, DateTime<Utc>, i64)>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentage_threshold_rounds_up_and_a_bad_rule_names_its_field() {
        assert_eq!(Threshold::Percent(10).tokens(5), 1);
        assert_eq!(Threshold::Percent(10).tokens(1_000), 100);
        assert_eq!(Threshold::Percent(100).tokens(TOKENS_MAX), TOKENS_MAX);
        assert_eq!(Threshold::Percent(50).tokens(-3), 0);
        assert_eq!(Threshold::Tokens(7).tokens(1_000), 7);
        for (t, p) in [
            (None, None),
            (Some(1), Some(1)),
            (Some(-1), None),
            (None, Some(101)),
        ] {
            assert!(Threshold::parse(t, p).is_err(), "{t:?} {p:?}");
        }
    }
}
