//! Read models: what the ledger answers with when asked about balances, history and accounts.
//! The store builds them from rows; the transport turns them into messages.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{EntryId, EntryKind, WriteDetails};

/// Per-kind totals, each a positive sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub granted: i64,
    pub deducted: i64,
    pub purchased: i64,
    pub dripped: i64,
    pub used: i64,
    pub reversed: i64,
    pub expired: i64,
}

impl Totals {
    /// The total `kind` adds to (hold writes add to none).
    pub fn of_kind_mut(&mut self, kind: EntryKind) -> Option<&mut i64> {
        Some(match kind {
            EntryKind::Grant => &mut self.granted,
            EntryKind::Deduction => &mut self.deducted,
            EntryKind::Purchase => &mut self.purchased,
            EntryKind::Drip => &mut self.dripped,
            EntryKind::Usage => &mut self.used,
            EntryKind::Reversal => &mut self.reversed,
            EntryKind::Expiry => &mut self.expired,
            EntryKind::Hold => return None,
        })
    }
}

/// One account's balance as GetBalance reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub balance: i64,
    pub totals: Totals,
    pub updated_at: Option<DateTime<Utc>>,
    pub transaction_count: i64,
    /// Tokens reserved by active holds; `available = balance − held`.
    pub held: i64,
    /// The soonest expiry of unheld tokens, and how many expire then.
    pub next_expiry: Option<(DateTime<Utc>, i64)>,
    /// Until this instant nothing of the account expires or lapses by itself (a cache may keep
    /// the figures until then).
    pub settle_at: Option<DateTime<Utc>>,
}

impl Balance {
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }

    /// An account that has never been written to.
    pub fn empty() -> Self {
        Self {
            balance: 0,
            totals: Totals::default(),
            updated_at: None,
            transaction_count: 0,
            held: 0,
            next_expiry: None,
            settle_at: None,
        }
    }
}

/// One journal row, whichever table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: EntryId,
    pub seq: i64,
    pub token_amount: i64,
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub details: WriteDetails,
}

impl JournalEntry {
    pub fn kind(&self) -> EntryKind {
        self.details.kind()
    }
}

/// Which journal rows a history page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only these kinds; `None` means all.
    pub kinds: Option<Vec<EntryKind>>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// How ListAccounts orders accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountOrder {
    UserId,
    BalanceDesc,
    LastActivityDesc,
}

/// Where the previous page of accounts ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCursor {
    UserId(String),
    Balance(i64, String),
    LastActivity(DateTime<Utc>, String),
}

/// One account as the admin page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub user_id: String,
    pub balance: Balance,
    pub created_at: DateTime<Utc>,
}

/// An account whose stored balance disagrees with its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub user_id: String,
    pub what: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts_checked: i64,
    pub journal_rows: i64,
    pub discrepancies: Vec<Discrepancy>,
}

/// A journal row looked up on its own, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEntry {
    pub entry: JournalEntry,
    pub user_id: String,
    /// Tokens reversals have clawed back from this row so far.
    pub reversed_tokens: i64,
}

/// How to find one journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryLookup {
    Id(EntryId),
    PaymentIntent(String),
}

impl fmt::Display for EntryLookup {
    /// Completes "no transaction …" in a NOT_FOUND message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryLookup::Id(id) => write!(f, "transaction {id}"),
            EntryLookup::PaymentIntent(pi) => write!(f, "purchase with payment intent {pi}"),
        }
    }
}

/// Which Stripe events to list; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StripeEventFilter {
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    /// A latest outcome, one of the webhook's `EventOutcome` names.
    pub outcome: Option<String>,
    pub livemode: Option<bool>,
}

/// Where a page of Stripe events starts: after this (first sight, event id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEventCursor {
    pub first_seen_at: DateTime<Utc>,
    pub event_id: String,
}

/// One Stripe event as the webhook adapter recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEventRow {
    pub event_id: String,
    pub event_type: String,
    pub outcome: String,
    pub first_outcome: String,
    pub detail: Option<String>,
    pub deliveries: i32,
    pub livemode: bool,
    pub user_id: Option<String>,
    pub transaction_id: Option<String>,
    pub api_version: Option<String>,
    pub payment_intent: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// The window and size of an overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverviewQuery {
    /// Days up to and including today, at least 1.
    pub days: i32,
    /// An IANA time zone name, checked by PostgreSQL.
    pub time_zone: String,
    pub top_users: i64,
}

/// What moved on one local day, all positive token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotals {
    pub day: chrono::NaiveDate,
    pub credited: i64,
    pub used: i64,
    pub expired: i64,
    pub deducted: i64,
}

/// One user's usage in an overview's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUsage {
    pub user_id: String,
    pub used: i64,
    pub events: i64,
    pub balance: i64,
}

/// The whole ledger at one instant (one snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    pub tokens_outstanding: i64,
    pub tokens_overdrawn: i64,
    pub tokens_held: i64,
    pub accounts: i64,
    /// Every day of the window, oldest first.
    pub days: Vec<DayTotals>,
    pub top_users: Vec<UserUsage>,
    pub as_of: DateTime<Utc>,
}

/// A SummarizeUsage request, validated: a window of whole quarter hours and what to group by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// One user; `None`: every user.
    pub user_id: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// An IANA time zone name, checked by PostgreSQL.
    pub time_zone: String,
    pub by_model: bool,
    pub by_feature: bool,
    pub by_day: bool,
    /// Hours take precedence over days (an hour row also names its day).
    pub by_hour: bool,
}

/// One group's usage sums; keys not grouped by are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub model: Option<String>,
    pub feature: Option<String>,
    /// The start of the group's local day or hour.
    pub period_start: Option<DateTime<Utc>>,
    pub day: Option<chrono::NaiveDate>,
    pub hour: Option<i32>,
    pub events: i64,
    pub tokens: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// The group's period is cut by the window's `from` or `to`.
    pub partial: bool,
}
