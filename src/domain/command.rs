//! Write commands: one validated balance change each, its business key and its fingerprint.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::FINGERPRINT_LEN;
use super::{
    Actor, CreditTerms, EntryId, EntryKind, GrantSource, HoldReceipt, IdempotencyKey, Overage,
    ReversalSource, TokenCounts, Tokens, UserId,
};

/// Whether a debit may take the balance below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdraft {
    /// Usage: the AI call already happened, so it is always recorded. Reversals claw back
    /// credits that may be spent already.
    Allowed,
    /// Admin deductions: refused when the balance does not cover them.
    Refused,
}

/// Who set a usage row's amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pricing {
    /// The caller gave `tokens`.
    Caller,
    /// The caller gave `tokens` = 0: the ledger computes them from a price (the model's in force,
    /// or the one its hold pinned) when it applies the write.
    Ledger,
    /// The ledger computed them with this price version (a row read back, or a priced write).
    Priced(i64),
}

impl Pricing {
    pub fn price_id(self) -> Option<i64> {
        match self {
            Pricing::Priced(id) => Some(id),
            _ => None,
        }
    }
}

/// One AI call, as the caller reported it (usage, a hold's commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiCall {
    pub model: Option<String>,
    pub feature: Option<String>,
    /// Validated: each `0..=TOKENS_MAX`, `cache_read + cache_write <= input`.
    pub counts: TokenCounts,
    pub pricing: Pricing,
}

/// The kind-specific part of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteDetails {
    Grant {
        source: GrantSource,
        reason: Option<String>,
        stripe_subscription_id: Option<String>,
        stripe_invoice_id: Option<String>,
    },
    Deduction {
        reason: String,
        /// The admin explicitly allowed the balance to go below zero.
        allow_negative: bool,
    },
    Purchase {
        amount_paid_cents: i64,
        currency: String,
        stripe_payment_intent_id: String,
        stripe_checkout_session_id: Option<String>,
        pack: Option<String>,
    },
    Drip {
        stripe_subscription_id: String,
        stripe_invoice_id: Option<String>,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
    },
    Usage {
        call: AiCall,
    },
    Reversal {
        original: EntryId,
        source: ReversalSource,
        reason: String,
        stripe_reference: Option<String>,
    },
    /// A lot's unused tokens leaving the balance (written by the ledger itself, never asked
    /// for): `carried` is what a rollover moved into the lot `carried_to` instead.
    Expiry {
        lot_id: i64,
        carried: i64,
        carried_to: Option<i64>,
    },
    /// Reserve `tokens` for an AI call for `ttl`.
    Reserve {
        ttl: chrono::Duration,
        overage: Overage,
        model: Option<String>,
        feature: Option<String>,
    },
    /// End a hold with the tokens actually used (`tokens`, may be 0): a usage row.
    CommitHold {
        hold_id: EntryId,
        call: AiCall,
    },
    /// End a hold unused.
    ReleaseHold {
        hold_id: EntryId,
    },
    /// Hold `tokens` more and/or until `ttl` from now.
    ExtendHold {
        hold_id: EntryId,
        ttl: Option<chrono::Duration>,
    },
    /// Write what is due on the account (expired lots, lapsed holds) and nothing else: the
    /// sweeper's write. Carries a transient key (never stored).
    Settle,
}

impl WriteDetails {
    pub fn kind(&self) -> EntryKind {
        match self {
            WriteDetails::Grant { .. } => EntryKind::Grant,
            WriteDetails::Deduction { .. } => EntryKind::Deduction,
            WriteDetails::Purchase { .. } => EntryKind::Purchase,
            WriteDetails::Drip { .. } => EntryKind::Drip,
            WriteDetails::Usage { .. } => EntryKind::Usage,
            WriteDetails::Reversal { .. } => EntryKind::Reversal,
            WriteDetails::Expiry { .. } => EntryKind::Expiry,
            WriteDetails::CommitHold { .. } => EntryKind::Usage,
            WriteDetails::Reserve { .. }
            | WriteDetails::ReleaseHold { .. }
            | WriteDetails::ExtendHold { .. }
            | WriteDetails::Settle => EntryKind::Hold,
        }
    }

    /// The hold a hold write names.
    pub fn hold_id(&self) -> Option<EntryId> {
        match self {
            WriteDetails::CommitHold { hold_id, .. }
            | WriteDetails::ReleaseHold { hold_id }
            | WriteDetails::ExtendHold { hold_id, .. } => Some(*hold_id),
            _ => None,
        }
    }
}

/// The business object a write pays for. Whatever the idempotency key, one business object is
/// credited once: a second write for it is a replay of the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusinessKey {
    /// A token pack, by its Stripe payment intent.
    PaymentIntent(String),
    /// An annual subscription allotment, by the Stripe invoice that paid it.
    AnnualInvoice(String),
    /// One cycle of a 28-day subscription.
    SubscriptionPeriod {
        stripe_subscription_id: String,
        period_start: DateTime<Utc>,
    },
}

/// One validated balance change, ready for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteCommand {
    pub user_id: UserId,
    pub tokens: Tokens,
    pub idempotency_key: IdempotencyKey,
    pub created_by: Actor,
    pub details: WriteDetails,
    /// Credits only: how the credit's lot lives. Default for every other kind.
    pub terms: CreditTerms,
}

impl WriteCommand {
    /// The sweeper's write for `user_id`: settles what is due, nothing else.
    pub fn settle(user_id: UserId) -> Self {
        let key = IdempotencyKey::transient(format!("settle:{user_id}"));
        Self {
            user_id,
            tokens: Tokens::ZERO,
            idempotency_key: key,
            created_by: Actor::new("ledger"),
            details: WriteDetails::Settle,
            terms: CreditTerms::default(),
        }
    }

    pub fn kind(&self) -> EntryKind {
        self.details.kind()
    }

    /// Whether this write may overdraw: usage is always recorded (losing the record of an AI
    /// call that happened loses revenue), reversals claw back what may be spent already, and an
    /// admin deduction must be covered unless the admin explicitly allowed otherwise.
    pub fn overdraft(&self) -> Overdraft {
        match &self.details {
            WriteDetails::Deduction {
                allow_negative: false,
                ..
            } => Overdraft::Refused,
            _ => Overdraft::Allowed,
        }
    }

    /// The signed journal amount: positive credits, negative debits.
    pub fn token_amount(&self) -> i64 {
        match self.kind() {
            k if k.is_credit() => self.tokens.get(),
            EntryKind::Hold => 0,
            _ => -self.tokens.get(),
        }
    }

    /// The AI call of a usage write or a hold's commit.
    pub fn ai_call(&self) -> Option<&AiCall> {
        match &self.details {
            WriteDetails::Usage { call } | WriteDetails::CommitHold { call, .. } => Some(call),
            _ => None,
        }
    }

    /// This write as the ledger priced it: `tokens` computed with price `price_id`.
    pub fn priced(&self, tokens: Tokens, price_id: i64) -> WriteCommand {
        let mut priced = self.clone();
        priced.tokens = tokens;
        if let WriteDetails::Usage { call } | WriteDetails::CommitHold { call, .. } =
            &mut priced.details
        {
            call.pricing = Pricing::Priced(price_id);
        }
        priced
    }

    pub fn business_key(&self) -> Option<BusinessKey> {
        match &self.details {
            WriteDetails::Purchase {
                stripe_payment_intent_id,
                ..
            } => Some(BusinessKey::PaymentIntent(stripe_payment_intent_id.clone())),
            WriteDetails::Grant {
                source: GrantSource::AnnualSubscription,
                stripe_invoice_id: Some(invoice),
                ..
            } => Some(BusinessKey::AnnualInvoice(invoice.clone())),
            WriteDetails::Drip {
                stripe_subscription_id,
                period_start,
                ..
            } => Some(BusinessKey::SubscriptionPeriod {
                stripe_subscription_id: stripe_subscription_id.clone(),
                period_start: *period_start,
            }),
            _ => None,
        }
    }

    /// A digest of everything that makes this request what it is, except the idempotency key and
    /// the caller. A retry with the same key must carry the same fingerprint, else it is a
    /// different request reusing a key.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let mut f = Fingerprint::default();
        f.text(self.kind().as_str());
        f.text(self.user_id.as_str());
        f.int(self.tokens.get());
        f.details(&self.details);
        f.terms(&self.terms);
        f.finish()
    }
}

/// Length-prefixed hashing, so that ("ab", "c") and ("a", "bc") differ.
#[derive(Default)]
struct Fingerprint(Sha256);

impl Fingerprint {
    fn text(&mut self, value: &str) {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value.as_bytes());
    }
    fn opt(&mut self, value: &Option<String>) {
        match value {
            Some(v) => {
                self.0.update([1]);
                self.text(v);
            }
            None => self.0.update([0]),
        }
    }
    fn int(&mut self, value: i64) {
        self.0.update(value.to_be_bytes());
    }
    /// The kind-specific fields of a write.
    fn details(&mut self, details: &WriteDetails) {
        match details {
            WriteDetails::Grant {
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            } => {
                self.text(source.as_str());
                self.opt(reason);
                self.opt(stripe_subscription_id);
                self.opt(stripe_invoice_id);
            }
            WriteDetails::Deduction {
                reason,
                allow_negative,
            } => {
                self.text(reason);
                self.int(i64::from(*allow_negative));
            }
            WriteDetails::Purchase {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id,
                pack,
            } => {
                self.int(*amount_paid_cents);
                self.text(currency);
                self.text(stripe_payment_intent_id);
                self.opt(stripe_checkout_session_id);
                self.opt(pack);
            }
            WriteDetails::Drip {
                stripe_subscription_id,
                stripe_invoice_id,
                period_start,
                period_end,
            } => {
                self.text(stripe_subscription_id);
                self.opt(stripe_invoice_id);
                self.int(period_start.timestamp_micros());
                self.int(period_end.timestamp_micros());
            }
            WriteDetails::Usage { call } => self.call(call),
            WriteDetails::Reversal {
                original,
                source,
                reason,
                stripe_reference,
            } => {
                self.int(original.0);
                self.text(source.as_str());
                self.text(reason);
                self.opt(stripe_reference);
            }
            WriteDetails::Expiry {
                lot_id,
                carried,
                carried_to,
            } => {
                self.int(*lot_id);
                self.int(*carried);
                self.int(carried_to.unwrap_or(0));
            }
            WriteDetails::Reserve {
                ttl,
                overage,
                model,
                feature,
            } => {
                self.text("reserve");
                self.int(ttl.num_milliseconds());
                self.int(i64::from(*overage == Overage::Cap));
                self.opt(model);
                self.opt(feature);
            }
            WriteDetails::CommitHold { hold_id, call } => {
                self.text("commit_hold");
                self.int(hold_id.0);
                self.call(call);
            }
            WriteDetails::ReleaseHold { hold_id } => {
                self.text("release_hold");
                self.int(hold_id.0);
            }
            WriteDetails::ExtendHold { hold_id, ttl } => {
                self.text("extend_hold");
                self.int(hold_id.0);
                self.int(ttl.map_or(-1, |t| t.num_milliseconds()));
            }
            WriteDetails::Settle => self.text("settle"),
        }
    }

    /// An AI call's fields. The cache counts only when given, so the fingerprints of requests
    /// stored before they existed stay what they were. Whether the ledger prices it follows
    /// from `tokens` (0), which the fingerprint holds already.
    fn call(&mut self, call: &AiCall) {
        self.opt(&call.model);
        self.int(call.counts.input);
        self.int(call.counts.output);
        self.opt(&call.feature);
        if call.counts.cache_read != 0 || call.counts.cache_write != 0 {
            self.text("cache");
            self.int(call.counts.cache_read);
            self.int(call.counts.cache_write);
        }
    }

    /// A credit's terms, only when they differ from the default, so the fingerprints of
    /// requests stored before credits had terms stay what they were.
    fn terms(&mut self, terms: &CreditTerms) {
        if !terms.is_default() {
            let t = terms;
            self.text("terms");
            self.int(t.expires_at.map_or(i64::MIN, |e| e.timestamp_micros()));
            self.int(i64::from(t.priority));
            let r = t.rollover.unwrap_or_default();
            self.int(i64::from(t.rollover.is_some()));
            self.int(r.max_tokens.unwrap_or(-1));
            self.int(r.max_percent.map_or(-1, i64::from));
        }
    }

    fn finish(self) -> [u8; FINGERPRINT_LEN] {
        let digest = self.0.finalize();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        out
    }
}

/// What a write returns: the journal row and the balance right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub transaction_id: EntryId,
    pub balance: i64,
    pub replayed: bool,
    /// Tokens held by active holds right after the write; `None` on a replay (the ledger then
    /// reads the current figure).
    pub held: Option<i64>,
    /// `balance − held` as the account stands after the write (its batch's later settling
    /// included); on a replay, the current figure. `None` until known.
    pub available: Option<i64>,
    /// For hold writes: the hold after the write.
    pub hold: Option<HoldReceipt>,
    /// For usage (and commits): the tokens debited, and the price version the ledger computed
    /// them with (`None`: caller-priced). `None` for other kinds.
    pub charged: Option<Charge>,
}

/// What a usage row debited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub tokens: i64,
    pub price_id: Option<i64>,
}

impl std::fmt::Display for BusinessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusinessKey::PaymentIntent(pi) => write!(f, "payment intent {pi}"),
            BusinessKey::AnnualInvoice(invoice) => {
                write!(f, "annual subscription invoice {invoice}")
            }
            BusinessKey::SubscriptionPeriod {
                stripe_subscription_id,
                period_start,
            } => write!(
                f,
                "subscription {stripe_subscription_id} period starting {}",
                period_start.to_rfc3339()
            ),
        }
    }
}
