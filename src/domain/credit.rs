//! Credits with a lifecycle: the terms a credit is given with (expiry, priority, rollover), the
//! lots credits become, and the holds that reserve tokens for AI calls in flight.

use chrono::{DateTime, Duration, Utc};

use super::EntryId;
use crate::error::LedgerError;

/// Lowest and highest accepted lot priority (lower burns first).
pub const PRIORITY_MIN: i32 = -1_000;
pub const PRIORITY_MAX: i32 = 1_000;
/// A hold's time to live when Reserve names none.
pub const HOLD_TTL_DEFAULT: Duration = Duration::minutes(15);
/// Longest a hold may live per Reserve or ExtendHold.
pub const HOLD_TTL_MAX: Duration = Duration::hours(24);
/// Default most active holds per account.
pub const HOLDS_PER_ACCOUNT_DEFAULT: i64 = 1_000;

/// How a credit's tokens live: when they expire, in which order they burn, and (for a
/// subscription cycle) what the previous cycle carries into this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditTerms {
    /// Exclusive: the lot cannot be burned at this instant. `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub priority: i32,
    /// Drips only: carry part of the subscription's previous cycle into this one. `None` keeps
    /// previous cycles as they are (today's behaviour).
    pub rollover: Option<RolloverPolicy>,
}

impl CreditTerms {
    pub fn is_default(&self) -> bool {
        *self == CreditTerms::default()
    }

    /// Checks the terms of a credit written at about `now`.
    pub fn parse(
        expires_at: Option<DateTime<Utc>>,
        priority: i32,
        rollover: Option<RolloverPolicy>,
    ) -> Result<Self, LedgerError> {
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
            return Err(LedgerError::invalid(
                "priority",
                format!("must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {priority}"),
            ));
        }
        if rollover.is_some() && expires_at.is_none() {
            return Err(LedgerError::invalid(
                "rollover",
                "needs expires_at: a carried lot expires with its cycle, or carried tokens would \
                 pile up cycle after cycle",
            ));
        }
        if let Some(p) = rollover.and_then(|r| r.max_percent) {
            if p > 100 {
                return Err(LedgerError::invalid(
                    "rollover_max_percent",
                    format!("must be at most 100, got {p}"),
                ));
            }
        }
        if let Some(m) = rollover.and_then(|r| r.max_tokens) {
            if m < 0 {
                return Err(LedgerError::invalid(
                    "rollover_max_tokens",
                    format!("must not be negative, got {m}"),
                ));
            }
        }
        Ok(Self {
            expires_at,
            priority,
            rollover,
        })
    }
}

/// What Reserve does when `available` does not cover the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overage {
    /// Refuse with INSUFFICIENT_BALANCE (the default).
    #[default]
    Reject,
    /// Hold what is available (at least one token) and say how much.
    Cap,
}

/// What a hold write answers besides the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldReceipt {
    pub hold_id: EntryId,
    pub state: HoldState,
    /// Tokens the hold holds (or held, once ended).
    pub tokens: i64,
    pub expires_at: DateTime<Utc>,
    /// A commit that came after the hold had lapsed: the usage was recorded anyway.
    pub had_expired: bool,
}

/// What created a lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LotSource {
    /// The balance an account had when lots were introduced (migration 0006).
    Opening,
    Grant,
    Purchase,
    Drip,
    /// What a subscription's previous cycle carried into this one.
    Rollover,
}

impl LotSource {
    pub const ALL: [LotSource; 5] = [
        LotSource::Opening,
        LotSource::Grant,
        LotSource::Purchase,
        LotSource::Drip,
        LotSource::Rollover,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LotSource::Opening => "opening",
            LotSource::Grant => "grant",
            LotSource::Purchase => "purchase",
            LotSource::Drip => "drip",
            LotSource::Rollover => "rollover",
        }
    }
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == value)
    }
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    Active,
    Committed,
    Released,
    Expired,
}

impl HoldState {
    pub const ALL: [HoldState; 4] = [
        HoldState::Active,
        HoldState::Committed,
        HoldState::Released,
        HoldState::Expired,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Active => "active",
            HoldState::Committed => "committed",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == value)
    }
}

/// How much to carry from a subscription's previous cycle into its next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolloverPolicy {
    pub max_tokens: Option<i64>,
    pub max_percent: Option<u32>,
}

impl RolloverPolicy {
    /// `min(unused, max, ⌊unused × percent / 100⌋)`, the limits that are set.
    pub fn carry(&self, unused: i64) -> i64 {
        let mut carry = unused;
        if let Some(max) = self.max_tokens {
            carry = carry.min(max);
        }
        if let Some(pct) = self.max_percent {
            let scaled = (i128::from(unused) * i128::from(pct)) / 100;
            carry = carry.min(i64::try_from(scaled).unwrap_or(i64::MAX));
        }
        carry.max(0)
    }
}
