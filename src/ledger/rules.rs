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
//!
//! A refused write stages nothing and gives its idempotency key back, so a corrected retry under
//! the same key is evaluated afresh.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{
    Balance, BusinessKey, EntryId, EntryKind, Overdraft, Receipt, Totals, WriteCommand,
    WriteDetails, FINGERPRINT_LEN,
};
use crate::error::LedgerError;

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
    },
    /// Claimed by this batch's transaction, with the journal id it reserved and the fingerprint
    /// stored with it (that of the batch's first write under the key).
    Claimed {
        entry_id: EntryId,
        stored: Fingerprint,
    },
}

/// An account as the batch's lock found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedAccount {
    pub account_id: i64,
    pub balance: i64,
    pub totals: Totals,
    pub last_seq: i64,
    /// Created by this batch's lock (a first write); dropped again if no write applies to it, so
    /// a refused write leaves no empty account behind.
    pub created: bool,
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
}

/// One journal row to insert: write `write` of the batch, at `seq` of its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    pub write: usize,
    pub entry_id: EntryId,
    pub account_id: i64,
    pub seq: i64,
    pub balance_after: i64,
}

/// An account's state after the batch: what its row must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMove {
    pub account_id: i64,
    pub user_id: String,
    pub balance: Balance,
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
}

/// Decides every write of a batch in arrival order. `now` is the batch's clock (the database
/// transaction's time): the accounts' `updated_at`.
pub fn evaluate(
    mut state: BatchState,
    writes: &[WriteCommand],
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Staged) {
    let fingerprints = std::mem::take(&mut state.fingerprints);
    let mut batch = Batch::new(state);
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
    (outcomes, batch.finish(now))
}

/// A key during evaluation.
enum KeyRun {
    Committed {
        fingerprint: Vec<u8>,
        entry_id: EntryId,
        balance_after: Option<i64>,
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
    touched: bool,
}

struct Batch {
    keys: HashMap<String, KeyRun>,
    accounts: HashMap<String, RunningAccount>,
    /// Prior credits, plus the batch's own as they are applied.
    credited: HashMap<BusinessKey, PriorCredit>,
    originals: HashMap<EntryId, Original>,
    rows: Vec<StagedRow>,
}

/// A write that passed every rule: the account's next state.
struct Next {
    balance: i64,
    totals: Totals,
}

impl Batch {
    fn new(state: BatchState) -> Self {
        let keys = state
            .keys
            .into_iter()
            .map(|(key, s)| {
                let run = match s {
                    KeyState::Committed {
                        fingerprint,
                        entry_id,
                        balance_after,
                    } => KeyRun::Committed {
                        fingerprint,
                        entry_id,
                        balance_after,
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
        let accounts = state
            .accounts
            .into_iter()
            .map(|(user, locked)| {
                let running = RunningAccount {
                    locked,
                    touched: false,
                };
                (user, running)
            })
            .collect();
        Self {
            keys,
            accounts,
            credited: state.credited,
            originals: state.originals,
            rows: Vec::new(),
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
            }) => {
                if stored.as_slice() != fingerprint.as_slice() {
                    return Err(conflict());
                }
                let balance = balance_after.ok_or_else(|| {
                    LedgerError::Invariant(
                        format!("idempotency key {key:?} points at journal row {entry_id}, which does not exist")
                            .into(),
                    )
                })?;
                Ok(Receipt {
                    transaction_id: *entry_id,
                    balance,
                    replayed: true,
                })
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

    /// Rules 2 to 5 for a fresh write; stages its row when all pass.
    fn apply(&mut self, write: usize, cmd: &WriteCommand, entry_id: EntryId) -> Outcome {
        let business_key = cmd.business_key();
        if let Some(bk) = &business_key {
            if let Some(prior) = self.credited.get(bk) {
                return replay_of_credit(cmd, bk, prior);
            }
        }
        let user = cmd.user_id.as_str();
        let Some(account) = self.accounts.get_mut(user) else {
            return Err(LedgerError::Invariant(
                format!("the account of {user} was not locked by its batch").into(),
            ));
        };
        check_overdraft(cmd, &account.locked)?;
        let reversed = check_reversal(cmd, &account.locked, &self.originals)?;
        let next = next_state(cmd, &account.locked)?;

        // Every rule passed: the write applies.
        if let Some((original, tokens)) = reversed {
            if let Some(o) = self.originals.get_mut(&original) {
                o.reversed += tokens;
            }
        }
        let locked = &mut account.locked;
        locked.balance = next.balance;
        locked.totals = next.totals;
        locked.last_seq += 1;
        account.touched = true;
        self.rows.push(StagedRow {
            write,
            entry_id,
            account_id: locked.account_id,
            seq: locked.last_seq,
            balance_after: locked.balance,
        });
        if let Some(bk) = business_key {
            self.credited.insert(
                bk,
                PriorCredit {
                    transaction_id: entry_id,
                    user_id: user.to_string(),
                    token_amount: cmd.token_amount(),
                    balance_after: locked.balance,
                },
            );
        }
        Ok(Receipt {
            transaction_id: entry_id,
            balance: locked.balance,
            replayed: false,
        })
    }

    fn finish(self, now: DateTime<Utc>) -> Staged {
        let mut staged = Staged {
            rows: self.rows,
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
            let locked = account.locked;
            if account.touched {
                staged.moved.push(AccountMove {
                    account_id: locked.account_id,
                    user_id,
                    balance: Balance {
                        balance: locked.balance,
                        totals: locked.totals,
                        updated_at: Some(now),
                        transaction_count: locked.last_seq,
                    },
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
        staged
    }
}

/// Rule 2: a business object credited already.
fn replay_of_credit(cmd: &WriteCommand, bk: &BusinessKey, prior: &PriorCredit) -> Outcome {
    if prior.user_id == cmd.user_id.as_str() && prior.token_amount == cmd.token_amount() {
        Ok(Receipt {
            transaction_id: prior.transaction_id,
            balance: prior.balance_after,
            replayed: true,
        })
    } else {
        Err(LedgerError::BusinessKeyConflict {
            object: bk.to_string(),
            transaction_id: prior.transaction_id.0,
        })
    }
}

/// Rule 3.
fn check_overdraft(cmd: &WriteCommand, account: &LockedAccount) -> Result<(), LedgerError> {
    let tokens = cmd.tokens.get();
    if !cmd.kind().is_credit() && cmd.overdraft() == Overdraft::Refused && account.balance < tokens
    {
        return Err(LedgerError::InsufficientBalance {
            balance: account.balance,
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
    let total = totals.of_kind_mut(kind);
    *total = total
        .checked_add(cmd.tokens.get())
        .ok_or(overflow(total_name(kind)))?;
    let t = totals;
    t.granted
        .checked_add(t.purchased)
        .and_then(|s| s.checked_add(t.dripped))
        .and_then(|s| s.checked_sub(t.deducted))
        .and_then(|s| s.checked_sub(t.used))
        .and_then(|s| s.checked_sub(t.reversed))
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
    }
}

#[cfg(test)]
mod tests;
