//! One account's credits: the lots its credits created, the holds placed on them, and its debt.
//!
//! Pure, like the rest of `rules`: the store loads an account's live lots and active holds, the
//! batch changes them through these operations, and the store writes back what changed. The read
//! path runs the same `settle` on a copy, so GetBalance and the writes agree on what has expired.
//!
//! The invariants every operation keeps, for each lot and the account:
//! - `0 ≤ held ≤ remaining ≤ granted`;
//! - `balance = Σ remaining − debt`, and `held = Σ held of lots = Σ tokens of active holds`;
//! - debt is only owed while no live lot has unheld tokens (a credit, a freed hold or a reversal
//!   that leaves unheld tokens pays the debt from them at once).
//!
//! A lot is **live** at `now` while `now < expires_at` (expiry instants are exclusive). A debit
//! burns only unheld tokens of live lots, in burn order: lower priority first, then sooner expiry,
//! then lots that never expire, then unpaid credits before paid ones, then the oldest.

use chrono::{DateTime, Utc};

pub use crate::domain::{HoldState, LotSource, RolloverPolicy};

/// Tokens one credit added, and what is left of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// The journal row that created it (the credit, or for a rollover lot the expiry row that
    /// carried it). Negative while staged by a batch, before the store assigns the row's id.
    pub lot_id: i64,
    pub source: LotSource,
    /// Paid for (a purchase, a subscription's allotment) rather than given (an admin grant).
    pub paid: bool,
    /// The subscription whose cycle this is (drips and their rollovers), for rollover.
    pub subscription: Option<String>,
    pub granted: i64,
    pub remaining: i64,
    /// Tokens of `remaining` earmarked by active holds.
    pub held: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    /// A `credits_expiring` alert was written for it.
    pub expiring_alerted: bool,
}

impl Lot {
    pub fn unheld(&self) -> i64 {
        self.remaining - self.held
    }
    /// Whether the lot's remaining tokens are within `window` of expiring at `now`, and not
    /// alerted yet.
    pub fn expiring_unalerted(&self, now: DateTime<Utc>, window: chrono::Duration) -> bool {
        !self.expiring_alerted
            && self.remaining > 0
            && self
                .expires_at
                .is_some_and(|at| now < at && at - window <= now)
    }

    /// Whether the lot may still be burned at `now`.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
    fn burn_key(&self) -> impl Ord {
        (
            self.priority,
            self.expires_at.is_none(),
            self.expires_at,
            self.paid,
            self.created_at,
            self.lot_id,
        )
    }
}

/// Tokens reserved for an AI call in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: i64,
    pub account_id: i64,
    pub tokens: i64,
    pub state: HoldState,
    pub expires_at: DateTime<Utc>,
    /// Which lots hold the tokens, `(lot_id, tokens)`, in burn order; they sum to `tokens` while
    /// the hold is active.
    pub earmarks: Vec<(i64, i64)>,
    pub model: Option<String>,
    pub feature: Option<String>,
    pub created_by: String,
    pub placed_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The usage row a commit wrote, and its tokens.
    pub committed_transaction_id: Option<i64>,
    pub committed_tokens: Option<i64>,
    /// `available` right after the hold was placed or last grew: never negative.
    pub available_after: i64,
    /// The price of `model` in force when the hold was placed: its commit prices with it.
    pub price_id: Option<i64>,
}

impl Hold {
    /// Whether the hold still counts against `available` at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.state == HoldState::Active && now < self.expires_at
    }
}

/// Tokens of a lot that left the balance unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub lot_id: i64,
    /// Tokens that left the balance (may be 0 for a rollover that carried everything).
    pub tokens: i64,
    /// For a rollover: tokens carried into the new lot, and that lot's (staged) id.
    pub carried: Option<(i64, i64)>,
}

/// The figures GetBalance shows beside the balance, and when they next change by themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalletSummary {
    pub held: i64,
    pub debt: i64,
    pub active_holds: i64,
    /// The soonest instant at which a lot expires or a hold lapses: until then the account row's
    /// figures are exact; from then on a reader must settle first.
    pub settle_at: Option<DateTime<Utc>>,
    /// The soonest expiry of unheld tokens of a live lot, and how many expire then.
    pub next_expiry: Option<(DateTime<Utc>, i64)>,
}

/// Whether a lot expiring at `previous` belongs to an earlier cycle than one expiring at `next`:
/// a late delivery of an older cycle never ends the current one.
fn earlier_cycle(previous: Option<DateTime<Utc>>, next: Option<DateTime<Utc>>) -> bool {
    match (previous, next) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(p), Some(n)) => p <= n,
    }
}

/// One account's lots, holds and debt during a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wallet {
    pub lots: Vec<Lot>,
    /// The account's active holds, plus any ended hold a write of the batch names.
    pub holds: Vec<Hold>,
    pub debt: i64,
    /// Lots and holds whose rows must be written back.
    pub changed_lots: Vec<i64>,
    pub changed_holds: Vec<i64>,
    /// Lots this batch created (inserted rather than updated).
    pub new_lots: Vec<i64>,
    /// How long before a lot expires a `credits_expiring` alert is written; `None`: never.
    pub expiring_window: Option<chrono::Duration>,
}

impl Wallet {
    pub fn held(&self) -> i64 {
        self.lots.iter().map(|l| l.held).sum()
    }

    /// Σ remaining − debt: must equal the account's balance.
    pub fn balance(&self) -> i64 {
        self.lots.iter().map(|l| l.remaining).sum::<i64>() - self.debt
    }

    pub fn hold(&self, hold_id: i64) -> Option<&Hold> {
        self.holds.iter().find(|h| h.hold_id == hold_id)
    }

    pub fn hold_mut(&mut self, hold_id: i64) -> Option<&mut Hold> {
        self.mark_hold(hold_id);
        self.holds.iter_mut().find(|h| h.hold_id == hold_id)
    }

    pub fn active_holds(&self) -> i64 {
        self.holds
            .iter()
            .filter(|h| h.state == HoldState::Active)
            .count() as i64
    }

    pub fn mark_lot(&mut self, lot_id: i64) {
        if !self.changed_lots.contains(&lot_id) {
            self.changed_lots.push(lot_id);
        }
    }

    fn mark_hold(&mut self, hold_id: i64) {
        if !self.changed_holds.contains(&hold_id) {
            self.changed_holds.push(hold_id);
        }
    }

    fn lot_mut(&mut self, lot_id: i64) -> Option<&mut Lot> {
        self.mark_lot(lot_id);
        self.lots.iter_mut().find(|l| l.lot_id == lot_id)
    }

    /// The lots, in the order debits burn them.
    pub fn lots_in_burn_order(&self) -> Vec<Lot> {
        self.burn_order()
            .into_iter()
            .map(|i| self.lots[i].clone())
            .collect()
    }

    /// Indexes of the lots in burn order.
    fn burn_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lots.len()).collect();
        order.sort_by_key(|&i| self.lots[i].burn_key());
        order
    }

    /// Lapses every hold whose time is up and expires what is due: the unheld tokens of every
    /// lot past its expiry (the held part waits for its hold to end). Tokens a lapsed hold gave
    /// back pay any debt, as every write's freed tokens do.
    pub fn settle(&mut self, now: DateTime<Utc>) -> Vec<Expiry> {
        // In the order things happened: each lapse frees tokens at its own instant, when they
        // pay what debt there is from the lots live then (settling everything at `now` at once
        // would pay from lots that were still held back then).
        let mut expired = Vec::new();
        while let Some(at) = self
            .holds
            .iter()
            .filter(|h| h.state == HoldState::Active && h.expires_at <= now)
            .map(|h| h.expires_at)
            .min()
        {
            let due: Vec<i64> = self
                .holds
                .iter()
                .filter(|h| h.state == HoldState::Active && h.expires_at == at)
                .map(|h| h.hold_id)
                .collect();
            for hold_id in due {
                self.end_hold(hold_id, HoldState::Expired, None);
            }
            expired.extend(self.expire_due(at));
            self.pay_debt(at);
        }
        expired.extend(self.expire_due(now));
        self.pay_debt(now);
        expired
    }

    /// Expires the unheld tokens of every lot past its expiry.
    pub fn expire_due(&mut self, now: DateTime<Utc>) -> Vec<Expiry> {
        let due: Vec<i64> = self
            .lots
            .iter()
            .filter(|l| !l.live_at(now) && l.unheld() > 0)
            .map(|l| l.lot_id)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for lot_id in due {
            if let Some(lot) = self.lot_mut(lot_id) {
                let tokens = lot.unheld();
                lot.remaining -= tokens;
                out.push(Expiry {
                    lot_id,
                    tokens,
                    carried: None,
                });
            }
        }
        out
    }

    /// Ends a hold: its earmarks go back to their lots (and, for a lot that has expired, leave
    /// the balance at the next `expire_due`). `at` is when it ended; an expired hold ended at its
    /// expiry.
    pub fn end_hold(&mut self, hold_id: i64, state: HoldState, at: Option<DateTime<Utc>>) {
        let Some(hold) = self.hold_mut(hold_id) else {
            return;
        };
        hold.state = state;
        hold.ended_at = Some(at.unwrap_or(hold.expires_at));
        let earmarks = hold.earmarks.clone();
        for (lot_id, tokens) in earmarks {
            if let Some(lot) = self.lot_mut(lot_id) {
                lot.held -= tokens;
            }
        }
    }

    /// Adds a credit's lot; it pays the debt first (unless it is expired already: then it
    /// expires whole at the write's end, and pays nothing).
    pub fn credit(&mut self, mut lot: Lot, now: DateTime<Utc>) {
        if lot.live_at(now) {
            let paid = self.debt.min(lot.remaining);
            lot.remaining -= paid;
            self.debt -= paid;
        }
        self.mark_lot(lot.lot_id);
        self.new_lots.push(lot.lot_id);
        self.lots.push(lot);
    }

    /// A hold's commit: `tokens` come from the hold's own earmarks first, the exact amounts it
    /// held (held tokens are the call's, even on a lot that expired meanwhile), then like any
    /// debit. Call after the hold has ended (its earmarks given back to their lots).
    pub fn debit_hold(&mut self, tokens: i64, earmarks: &[(i64, i64)], now: DateTime<Utc>) {
        let mut left = tokens;
        for (lot_id, held) in earmarks {
            if left == 0 {
                break;
            }
            if let Some(lot) = self.lot_mut(*lot_id) {
                let take = left.min(*held).min(lot.unheld());
                lot.remaining -= take;
                left -= take;
            }
        }
        self.debit(left, &[], now);
    }

    /// Takes `tokens` from the unheld tokens of live lots, `first` (lots to burn before the burn
    /// order: a hold's earmarks) then in burn order; what they cannot cover becomes debt.
    pub fn debit(&mut self, tokens: i64, first: &[i64], now: DateTime<Utc>) {
        let mut order: Vec<usize> = first
            .iter()
            .filter_map(|id| self.lots.iter().position(|l| l.lot_id == *id))
            .collect();
        order.extend(self.burn_order());
        let left = self.walk_unheld(tokens, order, now, |lot, take| lot.remaining -= take);
        self.debt += left;
    }

    /// Takes up to `tokens` of unheld tokens from the live lots in `order`, applying `take` to
    /// each lot it takes from; answers what it could not take.
    fn walk_unheld(
        &mut self,
        mut tokens: i64,
        order: Vec<usize>,
        now: DateTime<Utc>,
        mut take: impl FnMut(&mut Lot, i64),
    ) -> i64 {
        for i in order {
            if tokens == 0 {
                break;
            }
            let lot = &self.lots[i];
            if !lot.live_at(now) || lot.unheld() == 0 {
                continue;
            }
            let part = tokens.min(lot.unheld());
            let lot_id = lot.lot_id;
            self.mark_lot(lot_id);
            take(&mut self.lots[i], part);
            tokens -= part;
        }
        tokens
    }

    /// Pays the debt from unheld tokens of live lots, in burn order.
    pub fn pay_debt(&mut self, now: DateTime<Utc>) {
        if self.debt > 0 {
            let debt = std::mem::take(&mut self.debt);
            self.debit(debt, &[], now);
        }
    }

    /// Tokens that may be held or deducted: `balance − held`.
    pub fn available(&self) -> i64 {
        self.balance() - self.held()
    }

    /// Earmarks `tokens` of unheld live lots in burn order for a hold. The caller has checked
    /// that `available` covers them (so the unheld live tokens do).
    pub fn earmark(&mut self, tokens: i64, now: DateTime<Utc>) -> Vec<(i64, i64)> {
        let mut earmarks = Vec::new();
        let order = self.burn_order();
        self.walk_unheld(tokens, order, now, |lot, take| {
            lot.held += take;
            earmarks.push((lot.lot_id, take));
        });
        earmarks
    }

    /// Takes back a reversed credit: from its own lot's unheld tokens first, the rest like a
    /// debit (other lots in burn order, then debt).
    pub fn reverse(&mut self, lot_id: i64, tokens: i64, now: DateTime<Utc>) {
        let own = match self.lots.iter().find(|l| l.lot_id == lot_id) {
            Some(lot) if lot.live_at(now) => tokens.min(lot.unheld()),
            _ => 0,
        };
        if own > 0 {
            if let Some(lot) = self.lot_mut(lot_id) {
                lot.remaining -= own;
            }
        }
        self.debit(tokens - own, &[], now);
    }

    /// Rolls a subscription's previous cycles over into a new lot: of each live drip lot of
    /// `subscription` (not itself a rollover), the unheld tokens expire now, except
    /// `policy.carry(unheld)` which moves into a new lot `new_lot` (its id, expiry and priority
    /// given). Returns the expiries (one per previous lot) and adds the new lots.
    pub fn rollover(
        &mut self,
        subscription: &str,
        policy: Option<RolloverPolicy>,
        new_lot: &Lot,
        next_id: &mut impl FnMut() -> i64,
        now: DateTime<Utc>,
    ) -> Vec<Expiry> {
        let previous: Vec<i64> = self
            .lots
            .iter()
            .filter(|l| {
                l.source == LotSource::Drip
                    && l.lot_id != new_lot.lot_id
                    && l.subscription.as_deref() == Some(subscription)
                    && l.live_at(now)
                    && earlier_cycle(l.expires_at, new_lot.expires_at)
            })
            .map(|l| l.lot_id)
            .collect();
        let mut out = Vec::new();
        for lot_id in previous {
            let Some(lot) = self.lot_mut(lot_id) else {
                continue;
            };
            // The previous cycle ends now: what is held stays with its hold and expires when
            // the hold ends.
            lot.expires_at = Some(now);
            let unused = lot.unheld();
            let carry = policy.map_or(0, |p| p.carry(unused));
            lot.remaining -= unused;
            let (paid, created_at) = (lot.paid, lot.created_at);
            let carried = (carry > 0).then(|| {
                let id = next_id();
                self.lots.push(Lot {
                    lot_id: id,
                    source: LotSource::Rollover,
                    paid,
                    subscription: Some(subscription.to_string()),
                    granted: carry,
                    remaining: carry,
                    held: 0,
                    expires_at: new_lot.expires_at,
                    priority: new_lot.priority,
                    created_at: created_at.min(new_lot.created_at),
                    expiring_alerted: false,
                });
                self.mark_lot(id);
                self.new_lots.push(id);
                (carry, id)
            });
            if unused > 0 {
                out.push(Expiry {
                    lot_id,
                    tokens: unused - carry,
                    carried,
                });
            }
        }
        out
    }

    pub fn summary(&self, now: DateTime<Utc>) -> WalletSummary {
        // Held parts of lots wait for their holds, whose expiries are counted below.
        let lot_expiries = self
            .lots
            .iter()
            .filter(|l| l.unheld() > 0)
            .filter_map(|l| l.expires_at);
        let hold_expiries = self
            .holds
            .iter()
            .filter(|h| h.state == HoldState::Active)
            .map(|h| h.expires_at);
        let settle_at = lot_expiries.chain(hold_expiries).min();
        let next_at = self
            .lots
            .iter()
            .filter(|l| l.live_at(now) && l.unheld() > 0)
            .filter_map(|l| l.expires_at)
            .min();
        let next_expiry = next_at.map(|at| {
            let tokens = self
                .lots
                .iter()
                .filter(|l| l.expires_at == Some(at))
                .map(Lot::unheld)
                .sum();
            (at, tokens)
        });
        WalletSummary {
            held: self.held(),
            debt: self.debt,
            active_holds: self.active_holds(),
            settle_at,
            next_expiry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn lot(id: i64, tokens: i64, expires: Option<i64>, priority: i32, paid: bool) -> Lot {
        Lot {
            lot_id: id,
            source: if paid {
                LotSource::Purchase
            } else {
                LotSource::Grant
            },
            paid,
            subscription: None,
            granted: tokens,
            remaining: tokens,
            held: 0,
            expires_at: expires.map(t),
            priority,
            expiring_alerted: false,
            created_at: t(id),
        }
    }

    fn remaining(w: &Wallet) -> Vec<(i64, i64)> {
        let mut v: Vec<_> = w.lots.iter().map(|l| (l.lot_id, l.remaining)).collect();
        v.sort();
        v
    }

    #[test]
    fn debits_burn_in_burn_order() {
        let mut w = Wallet::default();
        w.credit(lot(1, 100, None, 0, true), t(0)); // paid, no expiry
        w.credit(lot(2, 100, None, 0, false), t(0)); // unpaid, no expiry
        w.credit(lot(3, 100, Some(1000), 0, true), t(0)); // expires
        w.credit(lot(4, 100, Some(500), 0, true), t(0)); // expires sooner
        w.credit(lot(5, 100, None, -1, true), t(0)); // lowest priority
        w.debit(450, &[], t(0));
        assert_eq!(remaining(&w), vec![(1, 50), (2, 0), (3, 0), (4, 0), (5, 0)]);
        w.debit(80, &[], t(0));
        assert_eq!(w.debt, 30);
        assert_eq!(w.balance(), -30);
        w.credit(lot(6, 100, None, 0, false), t(0));
        assert_eq!(w.debt, 0);
        assert_eq!(remaining(&w).last(), Some(&(6, 70)));
    }

    #[test]
    fn expired_lots_are_never_burned_and_expire_on_settle() {
        let mut w = Wallet::default();
        w.credit(lot(1, 100, Some(10), 0, true), t(0));
        w.credit(lot(2, 100, None, 0, true), t(0));
        w.debit(30, &[], t(10)); // lot 1 expired at exactly 10
        assert_eq!(remaining(&w), vec![(1, 100), (2, 70)]);
        let e = w.settle(t(10));
        assert_eq!(
            e,
            vec![Expiry {
                lot_id: 1,
                tokens: 100,
                carried: None
            }]
        );
        assert!(w.settle(t(11)).is_empty(), "settling twice expires nothing");
    }

    #[test]
    fn a_held_part_of_an_expired_lot_waits_for_its_hold() {
        let mut w = Wallet::default();
        w.credit(lot(1, 100, Some(10), 0, true), t(0));
        w.credit(lot(2, 100, None, 0, true), t(0));
        let earmarks = w.earmark(150, t(0));
        assert_eq!(earmarks, vec![(1, 100), (2, 50)]);
        w.holds.push(Hold {
            hold_id: 9,
            account_id: 1,
            tokens: 150,
            state: HoldState::Active,
            expires_at: t(100),
            earmarks,
            model: None,
            feature: None,
            created_by: "t".into(),
            placed_at: t(0),
            ended_at: None,
            committed_transaction_id: None,
            committed_tokens: None,
            available_after: 50,
            price_id: None,
        });
        assert!(w.settle(t(20)).is_empty(), "lot 1 is fully held");
        assert_eq!((w.balance(), w.held(), w.available()), (200, 150, 50));
        // The hold lapses: lot 1's 100 expire then, never back to available.
        let e = w.settle(t(100));
        assert_eq!(e.iter().map(|e| e.tokens).sum::<i64>(), 100);
        assert_eq!((w.balance(), w.held(), w.available()), (100, 0, 100));
    }

    #[test]
    fn rollover_carries_the_capped_part_and_expires_the_rest() {
        let mut w = Wallet::default();
        let mut first = lot(1, 375, Some(1000), 0, true);
        first.source = LotSource::Drip;
        first.subscription = Some("sub".into());
        w.credit(first, t(0));
        w.debit(75, &[], t(0)); // 300 unused
        let mut next = lot(2, 375, Some(2000), 0, true);
        next.source = LotSource::Drip;
        next.subscription = Some("sub".into());
        let policy = RolloverPolicy {
            max_tokens: Some(200),
            max_percent: Some(50),
        };
        let mut ids = -1;
        let mut next_id = || {
            ids -= 1;
            ids
        };
        let e = w.rollover("sub", Some(policy), &next, &mut next_id, t(900));
        w.credit(next, t(0));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].tokens, 150);
        assert_eq!(e[0].carried, Some((150, -2)));
        assert_eq!(w.balance(), 150 + 375);
        let carried = w.lots.iter().find(|l| l.lot_id == -2).unwrap();
        assert_eq!(carried.expires_at, Some(t(2000)));
    }

    #[test]
    fn summary_names_the_next_expiry_and_when_to_settle() {
        let mut w = Wallet::default();
        w.credit(lot(1, 100, Some(50), 0, true), t(0));
        w.credit(lot(2, 40, Some(50), 0, false), t(0));
        w.credit(lot(3, 10, None, 0, false), t(0));
        let s = w.summary(t(0));
        assert_eq!(s.next_expiry, Some((t(50), 140)));
        assert_eq!(s.settle_at, Some(t(50)));
        let _ = Duration::seconds(1);
    }
}
