//! The ledger's vocabulary: validated newtypes, the write commands built from them, and the read
//! models the ledger answers with.
//!
//! Everything here is checked once, when a value is constructed at the transport boundary, so the
//! ledger rules and the store never re-validate. Nothing in this module knows about gRPC or SQL.
//! Each enum's string form (what the database stores, what the CHECK constraints in
//! `migrations/` list, what the console shows) is written once, here.

use std::fmt;

use crate::error::{FieldViolation, LedgerError};

mod alert;
pub mod build;
mod command;
mod credit;
mod price;
mod read;

pub use alert::{AlertEvent, AlertKind, AlertRule, Threshold};
pub use command::{
    AiCall, BusinessKey, Charge, Overdraft, Pricing, Receipt, WriteCommand, WriteDetails,
};
pub use credit::{
    CreditTerms, HoldReceipt, HoldState, LotSource, Overage, RolloverPolicy,
    HOLDS_PER_ACCOUNT_DEFAULT, HOLD_TTL_DEFAULT, HOLD_TTL_MAX, PRIORITY_MAX, PRIORITY_MIN,
};
pub use price::{
    ModelPrice, NewPrice, Rates, Tier, TokenCounts, PRICE_UNIT, RATE_PER_MILLION_MAX, TIERS_MAX,
};
pub use read::{
    AccountCursor, AccountOrder, AccountSummary, Balance, DayTotals, Discrepancy, EntryLookup,
    FoundEntry, HistoryFilter, JournalEntry, Overview, OverviewQuery, StripeEventCursor,
    StripeEventFilter, StripeEventRow, Totals, UsageQuery, UsageRow, UserUsage, VerifyReport,
};

/// Longest accepted user id, in characters. Product user ids are UUIDs (36 chars); the slack is for
/// other identity providers' ids.
pub const USER_ID_LEN_MAX: usize = 128;
/// Longest accepted idempotency key, in characters.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// Largest token amount one write may move: 10^12. The biggest product (a 12M pack) is five
/// orders of magnitude below it, and the sum of many writes stays far from `i64::MAX`.
pub const TOKENS_MAX: i64 = 1_000_000_000_000;
/// Longest accepted admin reason, in characters.
pub const REASON_LEN_MAX: usize = 1_000;
/// Longest accepted Stripe object id, in characters (Stripe documents 255 as the limit).
pub const STRIPE_ID_LEN_MAX: usize = 255;
/// Longest accepted model, feature or pack name, in characters.
pub const LABEL_LEN_MAX: usize = 128;
/// Largest accepted payment, in the currency's minor unit: 10^10 (one hundred million dollars).
pub const AMOUNT_PAID_CENTS_MAX: i64 = 10_000_000_000;
/// Longest subscription period a drip may cover. A 28-day cycle fits with room for calendar
/// billing anchors; anything longer is a caller bug.
pub const DRIP_PERIOD_DAYS_MAX: i64 = 366;

pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    len_max: usize,
) -> Result<(), LedgerError> {
    // One pass over the characters: this runs for every text field of every write.
    let (mut len, mut control) = (0usize, false);
    for c in value.chars() {
        len += 1;
        control |= c.is_control();
    }
    if len == 0 {
        return Err(LedgerError::invalid(field, "must not be empty"));
    }
    if len > len_max {
        return Err(LedgerError::invalid(
            field,
            format!("must be at most {len_max} characters, got {len}"),
        ));
    }
    if control {
        return Err(LedgerError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if value.trim() != value {
        return Err(LedgerError::invalid(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

/// Optional text: empty means absent.
pub(crate) fn optional_text(
    field: &'static str,
    value: String,
    len_max: usize,
) -> Result<Option<String>, LedgerError> {
    if value.is_empty() {
        return Ok(None);
    }
    check_text(field, &value, len_max)?;
    Ok(Some(value))
}

pub(crate) fn required_text(
    field: &'static str,
    value: String,
    len_max: usize,
) -> Result<String, LedgerError> {
    check_text(field, &value, len_max)?;
    Ok(value)
}

/// The product's id for a user; the ledger keeps one account per user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &'static str, value: String) -> Result<Self, LedgerError> {
        required_text(field, value, USER_ID_LEN_MAX).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's name for one logical write; retries reuse it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Marks a key the ledger made for its own write and never stores: a caller's key cannot start
/// with it (control characters are refused).
const TRANSIENT_KEY_PREFIX: char = '\u{1}';

impl IdempotencyKey {
    pub fn parse(value: String) -> Result<Self, LedgerError> {
        required_text("idempotency_key", value, IDEMPOTENCY_KEY_LEN_MAX).map(Self)
    }
    /// A key for a write of the ledger's own that is idempotent by its nature (settling what is
    /// due): never stored, never replayed across batches.
    pub fn transient(name: String) -> Self {
        Self(format!("{TRANSIENT_KEY_PREFIX}{name}"))
    }
    pub fn is_transient(&self) -> bool {
        self.0.starts_with(TRANSIENT_KEY_PREFIX)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive token amount, `1..=TOKENS_MAX`. The kind of write decides the sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tokens(i64);

impl Tokens {
    /// No tokens: what a hold write that moves none carries (a release, an extension that only
    /// extends, a commit of nothing used).
    pub const ZERO: Tokens = Tokens(0);

    /// A count that may be zero, `0..=TOKENS_MAX`.
    pub fn parse_count(field: &'static str, value: i64) -> Result<Self, LedgerError> {
        if value == 0 {
            return Ok(Self(0));
        }
        Self::parse(value).map_err(|_| {
            LedgerError::invalid(
                field,
                format!("must be between 0 and {TOKENS_MAX}, got {value}"),
            )
        })
    }

    pub fn parse(value: i64) -> Result<Self, LedgerError> {
        if value <= 0 {
            return Err(LedgerError::invalid(
                "tokens",
                format!("must be positive, got {value}"),
            ));
        }
        if value > TOKENS_MAX {
            return Err(LedgerError::invalid(
                "tokens",
                format!("must be at most {TOKENS_MAX}, got {value}"),
            ));
        }
        Ok(Self(value))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Bytes of a request fingerprint: SHA-256 truncated to 128 bits. It is only ever compared with
/// the fingerprint stored under the same idempotency key, so a false match needs a 2^-128 chance;
/// the 16 bytes saved per stored key are 16 bytes less per usage row.
pub const FINGERPRINT_LEN: usize = 16;

/// The id of one journal row, unique across every journal table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub i64);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl EntryId {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, LedgerError> {
        value
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Self)
            .ok_or_else(|| LedgerError::invalid(field, "must be a transaction id"))
    }
}

/// Who made a write, taken from the authenticated caller (never from a request field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a grant was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    Admin,
    AnnualSubscription,
}

impl GrantSource {
    pub const ALL: [GrantSource; 2] = [GrantSource::Admin, GrantSource::AnnualSubscription];
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Admin => "admin",
            GrantSource::AnnualSubscription => "annual_subscription",
        }
    }
    /// The inverse of `as_str`, derived from it so the two can never disagree.
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == value)
    }
}

/// Why a credit was reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalSource {
    Refund,
    Dispute,
    Admin,
}

impl ReversalSource {
    pub const ALL: [ReversalSource; 3] = [
        ReversalSource::Refund,
        ReversalSource::Dispute,
        ReversalSource::Admin,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ReversalSource::Refund => "refund",
            ReversalSource::Dispute => "dispute",
            ReversalSource::Admin => "admin",
        }
    }
    /// The inverse of `as_str`, derived from it so the two can never disagree.
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == value)
    }
}

/// The kind of a journal row; each kind lives in the seed's table for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Grant,
    Deduction,
    Purchase,
    Drip,
    Usage,
    Reversal,
    /// Unused tokens of a lot leaving the balance at its expiry (or at a rollover).
    Expiry,
    /// Reserve, ReleaseHold and ExtendHold: writes that change what is available, not the
    /// balance, and leave no journal row (the hold's row in `token_holds` records them).
    Hold,
}

impl EntryKind {
    /// The kinds of journal rows.
    pub const ALL: [EntryKind; 7] = [
        EntryKind::Grant,
        EntryKind::Deduction,
        EntryKind::Purchase,
        EntryKind::Drip,
        EntryKind::Usage,
        EntryKind::Reversal,
        EntryKind::Expiry,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Deduction => "deduction",
            EntryKind::Purchase => "purchase",
            EntryKind::Drip => "drip",
            EntryKind::Usage => "usage",
            EntryKind::Reversal => "reversal",
            EntryKind::Expiry => "expiry",
            EntryKind::Hold => "hold",
        }
    }
    /// The inverse of `as_str`, derived from it so the two can never disagree.
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == value)
    }
    /// Whether this kind adds to the balance (credits) or takes from it (debits).
    pub fn is_credit(self) -> bool {
        matches!(
            self,
            EntryKind::Grant | EntryKind::Purchase | EntryKind::Drip
        )
    }
}

/// Which of `shards` a user id belongs to (FNV-1a of its bytes): stable across processes and
/// restarts, so one account always lands on the same group-commit writer (its writes stay in
/// arrival order) and the same balance-cache shard. The one hash of its kind in the crate.
pub fn shard_of(user_id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Collects every invalid field of one request, so the caller hears about all of them at once
/// (one `google.rpc.BadRequest` with a violation per field) instead of fixing them one by one.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps `result`'s value, or records its violations and gives `None`.
    pub fn check<T>(&mut self, result: Result<T, LedgerError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(LedgerError::InvalidArgument { violations }) => {
                self.0.extend(violations);
                None
            }
            Err(other) => {
                // Only validation errors are collected; anything else is a bug in a builder.
                self.0.push(FieldViolation {
                    field: "request",
                    reason: other.to_string().into(),
                });
                None
            }
        }
    }
    pub fn add(&mut self, field: &'static str, reason: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.push(FieldViolation {
            field,
            reason: reason.into(),
        });
    }
    /// Whether a violation of `field` was recorded already.
    pub fn names(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
    }
    /// `Ok(())` when nothing was recorded, else one `InvalidArgument` naming every field.
    pub fn finish(self) -> Result<(), LedgerError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LedgerError::InvalidArgument { violations: self.0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bounded_on_both_sides() {
        assert!(Tokens::parse(0).is_err());
        assert!(Tokens::parse(-5).is_err());
        assert!(Tokens::parse(1).is_ok());
        assert!(Tokens::parse(TOKENS_MAX).is_ok());
        assert!(Tokens::parse(TOKENS_MAX + 1).is_err());
    }

    #[test]
    fn ids_reject_empty_long_and_control_characters() {
        assert!(UserId::parse("user_id", String::new()).is_err());
        assert!(UserId::parse("user_id", "a".repeat(USER_ID_LEN_MAX)).is_ok());
        assert!(UserId::parse("user_id", "a".repeat(USER_ID_LEN_MAX + 1)).is_err());
        assert!(UserId::parse("user_id", "a\nb".into()).is_err());
        assert!(UserId::parse("user_id", "a\0b".into()).is_err());
        assert!(UserId::parse("user_id", " a".into()).is_err());
        assert!(IdempotencyKey::parse("k".repeat(IDEMPOTENCY_KEY_LEN_MAX)).is_ok());
        assert!(IdempotencyKey::parse("k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn every_enum_string_round_trips_and_is_unique() {
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::from_db(k.as_str()), Some(k));
        }
        for s in GrantSource::ALL {
            assert_eq!(GrantSource::from_db(s.as_str()), Some(s));
        }
        for s in ReversalSource::ALL {
            assert_eq!(ReversalSource::from_db(s.as_str()), Some(s));
        }
        assert_eq!(EntryKind::from_db("refund"), None);
    }

    /// The journal's CHECK constraints list the same kind names as `EntryKind::as_str`.
    #[test]
    fn the_schema_checks_use_the_domain_names() {
        let schema = include_str!("../../migrations/0006_lots_and_holds.sql");
        let check = schema
            .rsplit("token_transactions_type_check")
            .next()
            .and_then(|rest| rest.split(')').next())
            .expect("the transaction type check exists");
        for kind in [
            EntryKind::Grant,
            EntryKind::Deduction,
            EntryKind::Purchase,
            EntryKind::Reversal,
            EntryKind::Expiry,
        ] {
            assert!(check.contains(&format!("'{}'", kind.as_str())), "{check}");
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("alice", 4), shard_of("alice", 4));
        assert!((0..1000).all(|i| shard_of(&format!("u{i}"), 7) < 7));
        assert_eq!(shard_of("anyone", 0), 0);
    }
}
