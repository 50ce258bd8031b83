//! The ledger's rules, as one pure function over a batch of writes.
//!
//! The store loads what a batch needs (`BatchState`: the idempotency keys, the locked accounts,
//! the business objects already credited, the credits being reversed), `evaluate` decides every
//! write in arrival order against the running state, and the store persists what it staged.
//! Nothing here does I/O, knows SQL or gRPC, or awaits: every rule can be tested without a
//! database, and the next rules (holds, lots, pricing) have one place to live.
//!
//! The rules, in the order they are applied to each write:
//! 1. **Idempotency.** A key committed before, or applied earlier in this batch, is a replay when
//!    the request's fingerprint matches and `ALREADY_EXISTS` when it does not.
//! 2. **Business keys.** A business object (payment intent, annual invoice, subscription period)
//!    is credited once: a second credit for it is a replay of the first when user and amount
//!    match, else a conflict; its own idempotency key stays free.
//! 3. **Overdraft.** A deduction the running balance does not cover is refused (unless the admin
//!    allowed a negative balance); usage and reversals may overdraw.
//! 4. **Reversal cap.** A reversal must name a credit of the same account, and all its reversals
//!    together never exceed the credit's amount.
//! 5. **Range.** The balance and every running total are computed with checked arithmetic; a
//!    write that would overflow `i64` is refused alone (`AMOUNT_OVERFLOW`).
//! 6. **Pricing.** A usage write (or a hold's commit) with `tokens` = 0 is priced here, with
//!    the price its hold pinned or its model's price in force at the batch's clock
//!    (`MODEL_NOT_PRICED` without one); the priced amount then goes through every rule below.
//! 7. **Lots and holds** (`wallet`). Before anything else, what is due on the account expires
//!    (lots past their expiry, holds past their time), whatever becomes of the write. Credits
//!    add a lot (paying any debt first); debits burn lots in burn order; a deduction and a
//!    Reserve must be covered by `available = balance − held`; hold writes follow the hold's
//!    state (`HOLD_RELEASED`, `HOLD_ALREADY_COMMITTED`, ...).
//!
//! A refused write stages nothing and gives its idempotency key back, so a corrected retry under
//! the same key is evaluated afresh.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{
    AlertKind, Balance, BusinessKey, Charge, EntryId, EntryKind, HoldReceipt, HoldState, LotSource,
    ModelPrice, Overage, Overdraft, Pricing, Receipt, Threshold, Tokens, Totals, WriteCommand,
    WriteDetails, FINGERPRINT_LEN,
};
use crate::error::LedgerError;

pub mod wallet;

pub use wallet::{Expiry, Hold, Lot, Wallet, WalletSummary};

/// A request fingerprint (see `WriteCommand::fingerprint`).
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// Each write's answer, in the order the writes came.
pub type Outcome = Result<Receipt, LedgerError>;

/// What the store found for one idempotency key of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Committed by an earlier transaction, pointing at its journal row; `balance_after` is that
    /// row's (`None` if the row is missing, which is a broken invariant).
    Committed {
        fingerprint: Vec<u8>,
        entry_id: EntryId,
        balance_after: Option<i64>,
        /// The row's amount and price version, which a replayed usage write answers with.
        token_amount: Option<i64>,
        price_id: Option<i64>,
    },
    /// Claimed by this batch's transaction, with the journal id it reserved and the fingerprint
    /// stored with it (that of the batch's first write under the key).
    Claimed {
        entry_id: EntryId,
        stored: Fingerprint,
    },
}

/// An account as the batch's lock found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockedAccount {
    pub account_id: i64,
    pub balance: i64,
    pub totals: Totals,
    pub last_seq: i64,
    /// Created by this batch's lock (a first write); dropped again if no write applies to it, so
    /// a refused write leaves no empty account behind.
    pub created: bool,
    /// Its alert rule (its own, else the default), and its alert state.
    pub alerts: AlertState,
}

/// An account's balance-alert rule and where it stands against it, as of its last write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertState {
    pub rule: Option<Threshold>,
    /// The amount of its most recent credit (percentage thresholds are of it).
    pub last_credit: i64,
    /// `available` is at or below the threshold.
    pub low: bool,
    /// `available` is at or below zero.
    pub depleted: bool,
}

/// An alert event a write caused, for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedAlert {
    pub account_id: i64,
    pub user_id: String,
    pub kind: AlertKind,
    pub threshold: Option<i64>,
    pub available: i64,
    pub balance: i64,
    pub seq: i64,
    /// `credits_expiring`: the lot, when it expires, and its remaining tokens.
    pub lot: Option<(i64, DateTime<Utc>, i64)>,
}

/// A business object already credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorCredit {
    pub transaction_id: EntryId,
    pub user_id: String,
    pub token_amount: i64,
    pub balance_after: i64,
}

/// A journal row a reversal of the batch names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub account_id: i64,
    pub kind: EntryKind,
    pub token_amount: i64,
    /// Tokens committed reversals have taken back from it so far.
    pub reversed: i64,
}

/// Everything the store loaded for one batch, under the batch's locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchState {
    /// Every distinct idempotency key of the batch.
    pub keys: HashMap<String, KeyState>,
    /// Every account a write with a claimed key may move, by user id.
    pub accounts: HashMap<String, LockedAccount>,
    /// Business objects of the batch's writes that earlier transactions credited.
    pub credited: HashMap<BusinessKey, PriorCredit>,
    /// The rows the batch's reversals name (those that exist).
    pub originals: HashMap<EntryId, Original>,
    /// Each write's [`WriteCommand::fingerprint`], in the batch's order: computed once, by
    /// whoever loads the state (the store needs them to claim the keys).
    pub fingerprints: Vec<Fingerprint>,
    /// The live lots (remaining above zero) of every locked account, by account id.
    pub lots: HashMap<i64, Vec<Lot>>,
    /// The active holds of every locked account (the store may skip an account whose row counts
    /// none), plus every hold a write of the batch names
    /// (by its id, or a replayed Reserve by its key), whatever its state.
    pub holds: Vec<Hold>,
    /// Debt of every locked account that owes some, by account id.
    pub debts: HashMap<i64, i64>,
    /// Most active holds one account may have.
    pub holds_per_account_max: i64,
    /// Prices for the batch's usage writes, commits and holds.
    pub prices: PriceBook,
    /// How long before a lot expires a `credits_expiring` alert is written; `None`: never.
    pub expiring_window: Option<chrono::Duration>,
}

/// One journal row to insert: write `write` of the batch, at `seq` of its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    pub write: usize,
    pub entry_id: EntryId,
    pub account_id: i64,
    pub seq: i64,
    pub balance_after: i64,
    /// The signed amount: the write's own, or for a usage row the ledger priced, the price's.
    pub token_amount: i64,
    /// The price version a ledger-priced usage row was computed with.
    pub price_id: Option<i64>,
}

/// The prices a batch may price its usage with, loaded under its locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceBook {
    /// The version of each model the batch names that is in force at the batch's clock.
    pub current: HashMap<String, ModelPrice>,
    /// The versions the batch's holds pinned, by id.
    pub pinned: HashMap<i64, ModelPrice>,
}

/// An expiry row the rules wrote on their own. `entry_id` is a placeholder (negative) until the
/// store assigns the row an id; a rollover lot shares its placeholder with the row that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedExpiry {
    pub entry_id: i64,
    pub account_id: i64,
    pub seq: i64,
    pub balance_after: i64,
    pub expiry: Expiry,
}

/// An account's state after the batch: what its row must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMove {
    pub account_id: i64,
    pub user_id: String,
    pub balance: Balance,
    pub wallet: WalletSummary,
    pub alerts: AlertState,
}

/// Every change the batch makes, for the store to persist in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staged {
    /// Journal rows, in arrival order.
    pub rows: Vec<StagedRow>,
    /// Accounts at least one write moved, with their new balances and totals.
    pub moved: Vec<AccountMove>,
    /// Accounts the batch created that no write applied to: to delete.
    pub abandoned_accounts: Vec<i64>,
    /// Keys the batch claimed but no write applied under: to give back.
    pub released_keys: Vec<String>,
    /// Keys whose first write was refused and a later, different one applied: the stored
    /// fingerprint must become the applied write's.
    pub rehashed_keys: Vec<(String, Fingerprint)>,
    /// Expiry rows, in the order they happened.
    pub expiries: Vec<StagedExpiry>,
    /// Alert events, in the order the writes caused them.
    pub alerts: Vec<StagedAlert>,
    /// The batch's clock: every row it writes is created at this instant, so an account's rows
    /// are in time order as they are in sequence order (a later batch takes the account's lock,
    /// and reads this clock, after the earlier one committed).
    pub now: DateTime<Utc>,
    /// How many placeholder ids (-1, -2, ...) the expiry rows and rollover lots use.
    pub placeholders: i64,
    /// Lots created or changed, with their account id.
    pub lots: Vec<(i64, Lot)>,
    /// The lots of `lots` the batch created (the others exist and are updated).
    pub new_lots: Vec<i64>,
    /// Holds placed or changed.
    pub holds: Vec<Hold>,
}

/// Decides every write of a batch in arrival order. `now` is the batch's clock (the database
/// transaction's time, plus the test clock's offset): the accounts' `updated_at`, and the instant
/// against which lots and holds expire.
pub fn evaluate(
    mut state: BatchState,
    writes: &[WriteCommand],
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Staged) {
    let fingerprints = std::mem::take(&mut state.fingerprints);
    let mut batch = Batch::new(state, now);
    let outcomes = writes
        .iter()
        .enumerate()
        .map(|(i, cmd)| match fingerprints.get(i) {
            Some(fingerprint) => batch.decide(i, cmd, *fingerprint),
            None => Err(LedgerError::Invariant(
                format!("write {i} of the batch came without its fingerprint").into(),
            )),
        })
        .collect();
    (outcomes, batch.finish())
}

/// A key during evaluation.
enum KeyRun {
    Committed {
        fingerprint: Vec<u8>,
        entry_id: EntryId,
        balance_after: Option<i64>,
        charged: Option<(i64, Option<i64>)>,
    },
    Claimed {
        entry_id: EntryId,
        stored: Fingerprint,
        /// The write that applied under this key in this batch, if one has.
        applied: Option<(Fingerprint, Receipt)>,
    },
}

/// An account during evaluation.
struct RunningAccount {
    locked: LockedAccount,
    wallet: Wallet,
    touched: bool,
}

struct Batch {
    now: DateTime<Utc>,
    keys: HashMap<String, KeyRun>,
    accounts: HashMap<String, RunningAccount>,
    /// Prior credits, plus the batch's own as they are applied.
    credited: HashMap<BusinessKey, PriorCredit>,
    originals: HashMap<EntryId, Original>,
    /// Every hold loaded, as it was before the batch: what a replayed hold write answers with.
    holds_before: HashMap<i64, Hold>,
    prices: PriceBook,
    holds_per_account_max: i64,
    rows: Vec<StagedRow>,
    expiries: Vec<StagedExpiry>,
    alerts: Vec<StagedAlert>,
    placeholders: i64,
}

/// A write that passed every rule: the account's next state.
struct Next {
    balance: i64,
    totals: Totals,
}

impl Batch {
    fn new(state: BatchState, now: DateTime<Utc>) -> Self {
        let keys = state
            .keys
            .into_iter()
            .map(|(key, s)| {
                let run = match s {
                    KeyState::Committed {
                        fingerprint,
                        entry_id,
                        balance_after,
                        token_amount,
                        price_id,
                    } => KeyRun::Committed {
                        fingerprint,
                        entry_id,
                        balance_after,
                        charged: token_amount.map(|t| (-t, price_id)),
                    },
                    KeyState::Claimed { entry_id, stored } => KeyRun::Claimed {
                        entry_id,
                        stored,
                        applied: None,
                    },
                };
                (key, run)
            })
            .collect();
        let mut lots = state.lots;
        let mut holds: HashMap<i64, Vec<Hold>> = HashMap::new();
        let holds_before = state.holds.iter().map(|h| (h.hold_id, h.clone())).collect();
        for hold in state.holds {
            holds.entry(hold.account_id).or_default().push(hold);
        }
        let accounts = state
            .accounts
            .into_iter()
            .map(|(user, locked)| {
                let id = locked.account_id;
                let wallet = Wallet {
                    lots: lots.remove(&id).unwrap_or_default(),
                    holds: holds.remove(&id).unwrap_or_default(),
                    debt: state.debts.get(&id).copied().unwrap_or(0),
                    expiring_window: state.expiring_window,
                    ..Wallet::default()
                };
                let running = RunningAccount {
                    locked,
                    wallet,
                    touched: false,
                };
                (user, running)
            })
            .collect();
        Self {
            now,
            keys,
            accounts,
            credited: state.credited,
            originals: state.originals,
            holds_before,
            prices: state.prices,
            holds_per_account_max: state.holds_per_account_max,
            rows: Vec::new(),
            expiries: Vec::new(),
            alerts: Vec::new(),
            placeholders: 0,
        }
    }

    /// Rule 1, then the rest for a write whose key this batch claimed.
    fn decide(&mut self, write: usize, cmd: &WriteCommand, fingerprint: Fingerprint) -> Outcome {
        let key = cmd.idempotency_key.as_str();
        let conflict = || LedgerError::IdempotencyConflict {
            key: key.to_string(),
        };
        match self.keys.get(key) {
            None => Err(LedgerError::Invariant(
                format!("idempotency key {key:?} was neither claimed nor found by its batch")
                    .into(),
            )),
            Some(KeyRun::Committed {
                fingerprint: stored,
                entry_id,
                balance_after,
                charged,
            }) => {
                if stored.as_slice() != fingerprint.as_slice() {
                    return Err(conflict());
                }
                let mut receipt = self.replay(cmd, *entry_id, *balance_after)?;
                if cmd.kind() == EntryKind::Usage {
                    receipt.charged = charged.map(|(tokens, price_id)| Charge { tokens, price_id });
                }
                Ok(receipt)
            }
            Some(KeyRun::Claimed {
                applied: Some((applied, receipt)),
                ..
            }) => {
                if *applied != fingerprint {
                    return Err(conflict());
                }
                Ok(Receipt {
                    replayed: true,
                    ..*receipt
                })
            }
            Some(KeyRun::Claimed { entry_id, .. }) => {
                let entry_id = *entry_id;
                let outcome = self.apply(write, cmd, entry_id);
                if let Ok(receipt) = &outcome {
                    if !receipt.replayed {
                        if let Some(KeyRun::Claimed { applied, .. }) = self.keys.get_mut(key) {
                            *applied = Some((fingerprint, *receipt));
                        }
                    }
                }
                outcome
            }
        }
    }

    /// The answer to a write committed by an earlier transaction. A hold write without a
    /// journal row answers with its hold as loaded; the ledger fills in the current balance.
    fn replay(&self, cmd: &WriteCommand, entry_id: EntryId, balance_after: Option<i64>) -> Outcome {
        let hold_id = cmd.details.hold_id().unwrap_or(entry_id);
        let hold = self.holds_before.get(&hold_id.0).map(|h| {
            // A commit's answer says whether the hold had lapsed before it.
            let lapsed = matches!(cmd.details, WriteDetails::CommitHold { .. })
                && h.state == HoldState::Expired;
            hold_receipt(h, lapsed)
        });
        let balance = match (balance_after, cmd.kind()) {
            (Some(balance), _) => balance,
            (None, EntryKind::Hold) => 0,
            (None, _) => {
                return Err(LedgerError::Invariant(
                    format!(
                    "idempotency key {:?} points at journal row {entry_id}, which does not exist",
                    cmd.idempotency_key.as_str()
                )
                    .into(),
                ))
            }
        };
        Ok(Receipt {
            transaction_id: entry_id,
            balance,
            replayed: true,
            held: None,
            available: None,
            hold,
            charged: None,
        })
    }

    /// Rules 2 to 6 for a fresh write; stages what it changes when all pass.
    fn apply(&mut self, write: usize, cmd: &WriteCommand, entry_id: EntryId) -> Outcome {
        let business_key = cmd.business_key();
        if let Some(bk) = &business_key {
            if let Some(prior) = self.credited.get(bk) {
                return replay_of_credit(cmd, bk, prior);
            }
        }
        let now = self.now;
        let user = cmd.user_id.as_str();
        let Some(account) = self.accounts.get_mut(user) else {
            return Err(LedgerError::Invariant(
                format!("the account of {user} was not locked by its batch").into(),
            ));
        };
        // What is due expires whatever becomes of this write.
        let due = account.wallet.settle(now);
        stage_expiries(account, due, &mut self.expiries, &mut self.placeholders);
        // A write the ledger prices goes on as if the caller had given the priced amount.
        let (priced_cmd, refused) = match price_of(&self.prices, account, cmd) {
            Ok(priced) => (priced, None),
            Err(e) => (None, Some(e)),
        };
        let cmd = priced_cmd.as_ref().unwrap_or(cmd);
        let outcome = match (&cmd.details, refused) {
            (_, Some(refused)) => Err(refused),
            (WriteDetails::Reserve { .. }, _) => {
                let price_id = reserve_price(&self.prices, cmd);
                reserve(
                    account,
                    cmd,
                    entry_id,
                    now,
                    self.holds_per_account_max,
                    price_id,
                )
            }
            (WriteDetails::ReleaseHold { hold_id }, _) => release(account, *hold_id, now),
            (WriteDetails::ExtendHold { hold_id, ttl }, _) => {
                extend(account, *hold_id, cmd.tokens.get(), *ttl, now)
            }
            (WriteDetails::Settle, _) => Ok(Receipt {
                transaction_id: entry_id,
                balance: account.locked.balance,
                replayed: false,
                held: None,
                available: None,
                hold: None,
                charged: None,
            }),
            _ => {
                let ctx = JournalWrite {
                    write,
                    cmd,
                    entry_id,
                    now,
                    originals: &mut self.originals,
                    rows: &mut self.rows,
                    expiries: &mut self.expiries,
                    placeholders: &mut self.placeholders,
                };
                ctx.apply(account)
            }
        };
        // A hold that ended on an expired lot leaves the balance now; freed tokens pay debt.
        let due = account.wallet.expire_due(now);
        stage_expiries(account, due, &mut self.expiries, &mut self.placeholders);
        account.wallet.pay_debt(now);
        if outcome.is_ok() && cmd.kind().is_credit() {
            account.locked.alerts.last_credit = cmd.tokens.get();
        }
        // Whatever became of the write, settling may have moved `available`; but a refused
        // first write leaves no account (and so no alert) behind.
        // An account with no journal row yet (a refused first write, a rule set for a user
        // who has never been written to) has nothing to alert about.
        let never_written = account.locked.last_seq == 0;
        if !never_written && check_alerts(user, account, now, &mut self.alerts) {
            account.touched = true;
        }
        let mut receipt = outcome?;
        // A sweep that found nothing due leaves the account as it was.
        if !matches!(cmd.details, WriteDetails::Settle) {
            account.touched = true;
        }
        if cmd.kind() == EntryKind::Hold {
            receipt.balance = account.locked.balance;
        }
        let held = account.wallet.held();
        receipt.held = Some(held);
        receipt.available = Some(account.locked.balance - held);
        if let Some(bk) = business_key {
            self.credited.insert(
                bk,
                PriorCredit {
                    transaction_id: entry_id,
                    user_id: user.to_string(),
                    token_amount: cmd.token_amount(),
                    balance_after: receipt.balance,
                },
            );
        }
        Ok(receipt)
    }

    fn finish(self) -> Staged {
        let now = self.now;
        let mut staged = Staged {
            rows: self.rows,
            expiries: self.expiries,
            alerts: self.alerts,
            now,
            placeholders: self.placeholders,
            ..Staged::default()
        };
        for (key, run) in self.keys {
            if let KeyRun::Claimed {
                stored, applied, ..
            } = run
            {
                match applied {
                    None => staged.released_keys.push(key),
                    Some((applied, _)) if applied != stored => {
                        staged.rehashed_keys.push((key, applied))
                    }
                    Some(_) => {}
                }
            }
        }
        for (user_id, account) in self.accounts {
            let RunningAccount {
                locked,
                mut wallet,
                touched,
            } = account;
            if touched || !wallet.changed_lots.is_empty() || !wallet.changed_holds.is_empty() {
                let summary = wallet.summary(now);
                staged.new_lots.append(&mut wallet.new_lots);
                for lot_id in std::mem::take(&mut wallet.changed_lots) {
                    if let Some(lot) = wallet.lots.iter().find(|l| l.lot_id == lot_id) {
                        staged.lots.push((locked.account_id, lot.clone()));
                    }
                }
                for hold_id in std::mem::take(&mut wallet.changed_holds) {
                    if let Some(hold) = wallet.hold(hold_id) {
                        staged.holds.push(hold.clone());
                    }
                }
                staged.moved.push(AccountMove {
                    account_id: locked.account_id,
                    user_id,
                    balance: Balance {
                        balance: locked.balance,
                        totals: locked.totals,
                        updated_at: Some(now),
                        transaction_count: locked.last_seq,
                        held: summary.held,
                        next_expiry: summary.next_expiry,
                        settle_at: summary.settle_at,
                    },
                    wallet: summary,
                    alerts: locked.alerts,
                });
            } else if locked.created {
                staged.abandoned_accounts.push(locked.account_id);
            }
        }
        // Deterministic statement order (and lock order, for the rows' unique indexes).
        staged.released_keys.sort_unstable();
        staged.rehashed_keys.sort_unstable();
        staged.moved.sort_unstable_by_key(|m| m.account_id);
        staged.abandoned_accounts.sort_unstable();
        staged.lots.sort_unstable_by_key(|(_, l)| l.lot_id);
        staged.holds.sort_unstable_by_key(|h| h.hold_id);
        staged
    }
}

/// Stages an expiry row for each expiry of `account`, at its next sequence numbers.
fn stage_expiries(
    account: &mut RunningAccount,
    due: Vec<Expiry>,
    out: &mut Vec<StagedExpiry>,
    placeholders: &mut i64,
) {
    for expiry in due {
        let locked = &mut account.locked;
        locked.balance -= expiry.tokens;
        locked.totals.expired += expiry.tokens;
        locked.last_seq += 1;
        account.touched = true;
        let entry_id = match expiry.carried {
            Some((_, lot_id)) => lot_id,
            None => {
                *placeholders += 1;
                -*placeholders
            }
        };
        out.push(StagedExpiry {
            entry_id,
            account_id: locked.account_id,
            seq: locked.last_seq,
            balance_after: locked.balance,
            expiry,
        });
    }
}

fn hold_receipt(hold: &Hold, had_expired: bool) -> HoldReceipt {
    HoldReceipt {
        hold_id: EntryId(hold.hold_id),
        state: hold.state,
        tokens: hold.tokens,
        expires_at: hold.expires_at,
        had_expired,
    }
}

fn hold_refused(hold: &Hold) -> LedgerError {
    let reason = match hold.state {
        HoldState::Released => "HOLD_RELEASED",
        HoldState::Committed => "HOLD_ALREADY_COMMITTED",
        HoldState::Expired if hold.committed_transaction_id.is_some() => "HOLD_ALREADY_COMMITTED",
        HoldState::Expired => "HOLD_EXPIRED",
        HoldState::Active => "HOLD_ACTIVE",
    };
    LedgerError::HoldRefused {
        hold_id: hold.hold_id,
        reason,
        state: hold.state.as_str(),
    }
}

fn hold_not_found(hold_id: EntryId) -> LedgerError {
    LedgerError::NotFound(format!("hold {hold_id} does not exist"))
}

/// A Reserve: earmarks `available` tokens for a new hold.
fn reserve(
    account: &mut RunningAccount,
    cmd: &WriteCommand,
    entry_id: EntryId,
    now: DateTime<Utc>,
    holds_max: i64,
    price_id: Option<i64>,
) -> Outcome {
    let WriteDetails::Reserve {
        ttl,
        overage,
        model,
        feature,
    } = &cmd.details
    else {
        return Err(LedgerError::Invariant("reserve without its details".into()));
    };
    let wallet = &mut account.wallet;
    if wallet.active_holds() >= holds_max {
        return Err(LedgerError::ResourceExhausted(
            "the account has as many active holds as allowed: commit or release one first",
        ));
    }
    let available = wallet.available();
    let requested = cmd.tokens.get();
    let tokens = match overage {
        Overage::Reject if available >= requested => requested,
        Overage::Cap if available >= 1 => requested.min(available),
        _ => {
            return Err(LedgerError::InsufficientBalance {
                balance: account.locked.balance,
                available,
                requested,
            })
        }
    };
    let earmarks = wallet.earmark(tokens, now);
    let hold = Hold {
        hold_id: entry_id.0,
        account_id: account.locked.account_id,
        tokens,
        state: HoldState::Active,
        expires_at: now + *ttl,
        earmarks,
        model: model.clone(),
        feature: feature.clone(),
        created_by: cmd.created_by.as_str().to_string(),
        placed_at: now,
        ended_at: None,
        committed_transaction_id: None,
        committed_tokens: None,
        available_after: available - tokens,
        price_id,
    };
    let receipt = hold_receipt(&hold, false);
    wallet.holds.push(hold);
    let _ = wallet.hold_mut(entry_id.0);
    Ok(Receipt {
        transaction_id: entry_id,
        balance: account.locked.balance,
        replayed: false,
        held: None,
        available: None,
        hold: Some(receipt),
        charged: None,
    })
}

/// A ReleaseHold: an active hold ends unused; any other answers its state.
fn release(account: &mut RunningAccount, hold_id: EntryId, now: DateTime<Utc>) -> Outcome {
    let Some(hold) = account.wallet.hold(hold_id.0) else {
        return Err(hold_not_found(hold_id));
    };
    if hold.state == HoldState::Active {
        account
            .wallet
            .end_hold(hold_id.0, HoldState::Released, Some(now));
    }
    let hold = account
        .wallet
        .hold(hold_id.0)
        .map(|h| hold_receipt(h, false));
    Ok(Receipt {
        transaction_id: hold_id,
        balance: account.locked.balance,
        replayed: false,
        held: None,
        available: None,
        hold,
        charged: None,
    })
}

/// An ExtendHold: a later expiry and/or more tokens, for an active hold.
fn extend(
    account: &mut RunningAccount,
    hold_id: EntryId,
    add: i64,
    ttl: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> Outcome {
    let wallet = &mut account.wallet;
    let Some(hold) = wallet.hold(hold_id.0) else {
        return Err(hold_not_found(hold_id));
    };
    if hold.state != HoldState::Active {
        return Err(hold_refused(hold));
    }
    let available = wallet.available();
    // An extension that only extends needs nothing available.
    if add > 0 && add > available {
        return Err(LedgerError::InsufficientBalance {
            balance: account.locked.balance,
            available,
            requested: add,
        });
    }
    let more = wallet.earmark(add, now);
    let Some(hold) = wallet.hold_mut(hold_id.0) else {
        return Err(LedgerError::Invariant(
            "a hold vanished while extended".into(),
        ));
    };
    for (lot_id, tokens) in more {
        match hold.earmarks.iter_mut().find(|(l, _)| *l == lot_id) {
            Some((_, t)) => *t += tokens,
            None => hold.earmarks.push((lot_id, tokens)),
        }
    }
    hold.tokens += add;
    if add > 0 {
        hold.available_after = available - add;
    }
    if let Some(ttl) = ttl {
        hold.expires_at = hold.expires_at.max(now + ttl);
    }
    let receipt = hold_receipt(hold, false);
    Ok(Receipt {
        transaction_id: hold_id,
        balance: account.locked.balance,
        replayed: false,
        held: None,
        available: None,
        hold: Some(receipt),
        charged: None,
    })
}

/// A write that leaves a journal row: a credit, a debit, a reversal or a hold's commit.
struct JournalWrite<'a> {
    write: usize,
    cmd: &'a WriteCommand,
    entry_id: EntryId,
    now: DateTime<Utc>,
    originals: &'a mut HashMap<EntryId, Original>,
    rows: &'a mut Vec<StagedRow>,
    expiries: &'a mut Vec<StagedExpiry>,
    placeholders: &'a mut i64,
}

impl JournalWrite<'_> {
    fn apply(self, account: &mut RunningAccount) -> Outcome {
        let (cmd, now) = (self.cmd, self.now);
        // Every check before any change: a refused write changes nothing.
        let commit = match &cmd.details {
            WriteDetails::CommitHold { hold_id, .. } => Some(check_commit(account, *hold_id)?),
            _ => None,
        };
        check_overdraft(cmd, &account.locked, account.wallet.held())?;
        let reversed = check_reversal(cmd, &account.locked, self.originals)?;
        next_state(cmd, &account.locked)?;

        // Every rule passed: the write applies.
        if let Some((original, tokens)) = reversed {
            if let Some(o) = self.originals.get_mut(&original) {
                o.reversed += tokens;
            }
        }
        // A new cycle with rollover: the previous cycles end first (their expiry rows come
        // before this credit's row), carrying what the policy allows into a new lot.
        if let (
            WriteDetails::Drip {
                stripe_subscription_id,
                ..
            },
            Some(policy),
        ) = (&cmd.details, cmd.terms.rollover)
        {
            let lot = new_lot(cmd, self.entry_id, now);
            let placeholders = &mut *self.placeholders;
            let mut next_id = || {
                *placeholders += 1;
                -*placeholders
            };
            let rolled = account.wallet.rollover(
                stripe_subscription_id,
                Some(policy),
                &lot,
                &mut next_id,
                now,
            );
            stage_expiries(account, rolled, self.expiries, self.placeholders);
        }
        let wallet = &mut account.wallet;
        let tokens = cmd.tokens.get();
        let mut hold = None;
        match (&cmd.details, commit) {
            (WriteDetails::CommitHold { hold_id, .. }, Some(had_expired)) => {
                if had_expired {
                    // Its earmarks went back (or expired) when it lapsed.
                    wallet.debit(tokens, &[], now);
                } else {
                    let earmarks = wallet
                        .hold(hold_id.0)
                        .map(|h| h.earmarks.clone())
                        .unwrap_or_default();
                    wallet.end_hold(hold_id.0, HoldState::Committed, Some(now));
                    wallet.debit_hold(tokens, &earmarks, now);
                }
                if let Some(h) = wallet.hold_mut(hold_id.0) {
                    h.committed_transaction_id = Some(self.entry_id.0);
                    h.committed_tokens = Some(tokens);
                    hold = Some(hold_receipt(h, had_expired));
                }
            }
            (WriteDetails::Reversal { original, .. }, _) => wallet.reverse(original.0, tokens, now),
            (d, _) if d.kind().is_credit() => wallet.credit(new_lot(cmd, self.entry_id, now), now),
            _ => wallet.debit(tokens, &[], now),
        }
        // Checked above against a balance at least as high (a rollover only lowers it).
        let next = next_state(cmd, &account.locked)?;
        let locked = &mut account.locked;
        locked.balance = next.balance;
        locked.totals = next.totals;
        locked.last_seq += 1;
        let price_id = cmd.ai_call().and_then(|c| c.pricing.price_id());
        self.rows.push(StagedRow {
            write: self.write,
            entry_id: self.entry_id,
            account_id: locked.account_id,
            seq: locked.last_seq,
            balance_after: locked.balance,
            token_amount: cmd.token_amount(),
            price_id,
        });
        let balance = locked.balance;
        let charged = (cmd.kind() == EntryKind::Usage).then_some(Charge { tokens, price_id });
        Ok(Receipt {
            transaction_id: self.entry_id,
            balance,
            replayed: false,
            held: None,
            available: None,
            hold,
            charged,
        })
    }
}

/// Rule 6: the write as the ledger priced it, when it asks to be priced (`Pricing::Ledger`):
/// with the price its hold pinned, else its model's (the request's, else the hold's) price in
/// force. `Ok(None)`: nothing to price.
fn price_of(
    prices: &PriceBook,
    account: &RunningAccount,
    cmd: &WriteCommand,
) -> Result<Option<WriteCommand>, LedgerError> {
    let Some(call) = cmd.ai_call() else {
        return Ok(None);
    };
    if call.pricing != Pricing::Ledger {
        return Ok(None);
    }
    let hold = cmd.details.hold_id().and_then(|h| account.wallet.hold(h.0));
    let pinned = hold
        .and_then(|h| h.price_id)
        .and_then(|id| prices.pinned.get(&id));
    let model = call
        .model
        .as_deref()
        .or_else(|| hold.and_then(|h| h.model.as_deref()));
    let price = match (pinned, model) {
        (Some(price), _) => price,
        (None, Some(model)) => {
            prices
                .current
                .get(model)
                .ok_or_else(|| LedgerError::ModelNotPriced {
                    model: model.to_string(),
                })?
        }
        (None, None) => {
            return Err(LedgerError::invalid(
                "model",
                "is needed for the ledger to price the call (tokens is 0)",
            ))
        }
    };
    let tokens = Tokens::parse_count("tokens", price.cost(&call.counts)?)?;
    Ok(Some(cmd.priced(tokens, price.price_id)))
}

/// The price a new hold pins: its model's in force, if any.
fn reserve_price(prices: &PriceBook, cmd: &WriteCommand) -> Option<i64> {
    match &cmd.details {
        WriteDetails::Reserve {
            model: Some(model), ..
        } => prices.current.get(model).map(|p| p.price_id),
        _ => None,
    }
}

/// Rule 8: an alert event when the account's `available` crossed its threshold (down: low; back
/// up: recovered) or reached zero (depleted; rising above zero re-arms it without an event)
/// since its last write. `true` when the account's alert state changed.
fn check_alerts(
    user: &str,
    account: &mut RunningAccount,
    now: DateTime<Utc>,
    out: &mut Vec<StagedAlert>,
) -> bool {
    let expiring = check_expiring(user, account, now, out);
    let locked = &mut account.locked;
    let available = locked.balance - account.wallet.held();
    let before = locked.alerts;
    let threshold = before.rule.map(|r| r.tokens(before.last_credit));
    let low = threshold.is_some_and(|t| available <= t);
    let depleted = available <= 0;
    let mut event = |kind, threshold| {
        out.push(StagedAlert {
            account_id: locked.account_id,
            user_id: user.to_string(),
            kind,
            threshold,
            available,
            balance: locked.balance,
            seq: locked.last_seq,
            lot: None,
        })
    };
    if threshold.is_some() && low != before.low {
        let kind = if low {
            AlertKind::BalanceLow
        } else {
            AlertKind::BalanceRecovered
        };
        event(kind, threshold);
    }
    if depleted && !before.depleted {
        event(AlertKind::BalanceDepleted, Some(0));
    }
    locked.alerts.low = low;
    locked.alerts.depleted = depleted;
    locked.alerts != before || expiring
}

/// A `credits_expiring` event for each lot whose remaining tokens entered the window, once per
/// lot. `true` when one was written.
fn check_expiring(
    user: &str,
    account: &mut RunningAccount,
    now: DateTime<Utc>,
    out: &mut Vec<StagedAlert>,
) -> bool {
    let Some(window) = account.wallet.expiring_window else {
        return false;
    };
    let due: Vec<i64> = account
        .wallet
        .lots
        .iter()
        .filter(|l| l.expiring_unalerted(now, window))
        .map(|l| l.lot_id)
        .collect();
    let available = account.locked.balance - account.wallet.held();
    for lot_id in &due {
        let Some(lot) = account.wallet.lots.iter_mut().find(|l| l.lot_id == *lot_id) else {
            continue;
        };
        lot.expiring_alerted = true;
        if let Some(at) = lot.expires_at {
            out.push(StagedAlert {
                account_id: account.locked.account_id,
                user_id: user.to_string(),
                kind: AlertKind::CreditsExpiring,
                threshold: None,
                available,
                balance: account.locked.balance,
                seq: account.locked.last_seq,
                lot: Some((*lot_id, at, lot.remaining)),
            });
        }
        account.wallet.mark_lot(*lot_id);
    }
    !due.is_empty()
}

/// Whether a hold may be committed: `Ok(had_expired)`.
fn check_commit(account: &RunningAccount, hold_id: EntryId) -> Result<bool, LedgerError> {
    let Some(hold) = account.wallet.hold(hold_id.0) else {
        return Err(hold_not_found(hold_id));
    };
    match hold.state {
        HoldState::Active => Ok(false),
        HoldState::Expired if hold.committed_transaction_id.is_none() => Ok(true),
        _ => Err(hold_refused(hold)),
    }
}

/// The lot a credit creates.
fn new_lot(cmd: &WriteCommand, entry_id: EntryId, now: DateTime<Utc>) -> Lot {
    let (source, paid, subscription) = match &cmd.details {
        WriteDetails::Grant { source, .. } => (
            LotSource::Grant,
            *source == crate::domain::GrantSource::AnnualSubscription,
            None,
        ),
        WriteDetails::Purchase { .. } => (LotSource::Purchase, true, None),
        WriteDetails::Drip {
            stripe_subscription_id,
            ..
        } => (LotSource::Drip, true, Some(stripe_subscription_id.clone())),
        _ => (LotSource::Grant, false, None),
    };
    Lot {
        lot_id: entry_id.0,
        source,
        paid,
        subscription,
        granted: cmd.tokens.get(),
        remaining: cmd.tokens.get(),
        held: 0,
        expires_at: cmd.terms.expires_at,
        priority: cmd.terms.priority,
        created_at: now,
        expiring_alerted: false,
    }
}

/// Rule 2: a business object credited already.
fn replay_of_credit(cmd: &WriteCommand, bk: &BusinessKey, prior: &PriorCredit) -> Outcome {
    if prior.user_id == cmd.user_id.as_str() && prior.token_amount == cmd.token_amount() {
        Ok(Receipt {
            transaction_id: prior.transaction_id,
            balance: prior.balance_after,
            replayed: true,
            held: None,
            available: None,
            hold: None,
            charged: None,
        })
    } else {
        Err(LedgerError::BusinessKeyConflict {
            object: bk.to_string(),
            transaction_id: prior.transaction_id.0,
        })
    }
}

/// Rule 3: a deduction must be covered by what is available (held tokens are promised).
fn check_overdraft(
    cmd: &WriteCommand,
    account: &LockedAccount,
    held: i64,
) -> Result<(), LedgerError> {
    let tokens = cmd.tokens.get();
    let available = account.balance - held;
    if !cmd.kind().is_credit() && cmd.overdraft() == Overdraft::Refused && available < tokens {
        return Err(LedgerError::InsufficientBalance {
            balance: account.balance,
            available,
            requested: tokens,
        });
    }
    Ok(())
}

/// Rule 4: for a reversal, the original and the tokens to add to its reversed amount.
fn check_reversal(
    cmd: &WriteCommand,
    account: &LockedAccount,
    originals: &HashMap<EntryId, Original>,
) -> Result<Option<(EntryId, i64)>, LedgerError> {
    let WriteDetails::Reversal { original, .. } = &cmd.details else {
        return Ok(None);
    };
    let Some(o) = originals
        .get(original)
        .filter(|o| o.account_id == account.account_id)
    else {
        return Err(LedgerError::NotFound(format!(
            "transaction {original} is not a transaction of user {}",
            cmd.user_id
        )));
    };
    if !o.kind.is_credit() {
        return Err(LedgerError::NotReversible(original.0));
    }
    let tokens = cmd.tokens.get();
    let reversible = o.token_amount - o.reversed;
    if tokens > reversible {
        return Err(LedgerError::ReversalExceedsOriginal {
            original: original.0,
            reversible,
            requested: tokens,
        });
    }
    Ok(Some((*original, tokens)))
}

/// Rule 5: the account after the write, every figure computed with checked arithmetic, including
/// the sum the schema's `accounts_balance_is_totals` check computes (in its order), so PostgreSQL
/// never sees a value it cannot hold.
fn next_state(cmd: &WriteCommand, account: &LockedAccount) -> Result<Next, LedgerError> {
    let overflow = |what| LedgerError::AmountOverflow { what };
    let balance = account
        .balance
        .checked_add(cmd.token_amount())
        .ok_or(overflow("balance"))?;
    let mut totals = account.totals;
    let kind = cmd.kind();
    if let Some(total) = totals.of_kind_mut(kind) {
        *total = total
            .checked_add(cmd.tokens.get())
            .ok_or(overflow(total_name(kind)))?;
    }
    let t = totals;
    t.granted
        .checked_add(t.purchased)
        .and_then(|s| s.checked_add(t.dripped))
        .and_then(|s| s.checked_sub(t.deducted))
        .and_then(|s| s.checked_sub(t.used))
        .and_then(|s| s.checked_sub(t.reversed))
        .and_then(|s| s.checked_sub(t.expired))
        .ok_or(overflow("sum of totals"))?;
    Ok(Next { balance, totals })
}

fn total_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Grant => "granted total",
        EntryKind::Deduction => "deducted total",
        EntryKind::Purchase => "purchased total",
        EntryKind::Drip => "dripped total",
        EntryKind::Usage => "used total",
        EntryKind::Reversal => "reversed total",
        EntryKind::Expiry => "expired total",
        EntryKind::Hold => "held total",
    }
}

#[cfg(test)]
mod tests;
