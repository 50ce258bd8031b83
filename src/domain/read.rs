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
