//! Builders used by the transport layer: each turns the raw fields of one request into a
//! validated `WriteCommand`, checking every field and reporting every invalid one at once.
//!
//! Inputs are structs with named fields rather than positional arguments, so two fields of the
//! same type (a subscription id and an invoice id) can never be swapped by a caller.

use chrono::{DateTime, Utc};

use super::{
    optional_text, required_text, Actor, AiCall, CreditTerms, EntryId, GrantSource, IdempotencyKey,
    Overage, Pricing, ReversalSource, TokenCounts, Tokens, UserId, Violations, WriteCommand,
    WriteDetails, AMOUNT_PAID_CENTS_MAX, DRIP_PERIOD_DAYS_MAX, HOLD_TTL_DEFAULT, HOLD_TTL_MAX,
    LABEL_LEN_MAX, REASON_LEN_MAX, STRIPE_ID_LEN_MAX, TOKENS_MAX,
};
use crate::error::LedgerError;

/// The fields every write has.
#[derive(Debug, Clone)]
pub struct Common {
    pub user_id: String,
    pub tokens: i64,
    pub idempotency_key: String,
}

struct CommonChecked {
    user_id: Option<UserId>,
    tokens: Option<Tokens>,
    idempotency_key: Option<IdempotencyKey>,
}

impl Common {
    fn check(self, v: &mut Violations) -> CommonChecked {
        CommonChecked {
            user_id: v.check(UserId::parse("user_id", self.user_id)),
            tokens: v.check(Tokens::parse(self.tokens)),
            idempotency_key: v.check(IdempotencyKey::parse(self.idempotency_key)),
        }
    }
}

impl CommonChecked {
    /// The command, once every field of the request has passed (`v` is then empty).
    fn finish(
        self,
        v: Violations,
        created_by: Actor,
        details: Option<WriteDetails>,
    ) -> Result<WriteCommand, LedgerError> {
        v.finish()?;
        match (self.user_id, self.tokens, self.idempotency_key, details) {
            (Some(user_id), Some(tokens), Some(idempotency_key), Some(details)) => {
                Ok(WriteCommand {
                    user_id,
                    tokens,
                    idempotency_key,
                    created_by,
                    details,
                    terms: CreditTerms::default(),
                })
            }
            // Every `None` above recorded a violation, so `finish` has returned already.
            _ => Err(LedgerError::Invariant(
                "a builder lost a field without recording why".into(),
            )),
        }
    }
}

/// A grant: an admin's gift, or an annual subscription's allotment.
#[derive(Debug, Clone)]
pub struct Grant {
    pub common: Common,
    pub source: Option<GrantSource>,
    pub reason: String,
    pub stripe_subscription_id: String,
    pub stripe_invoice_id: String,
}

impl Grant {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = self.common.check(&mut v);
        let source = self.source;
        if source.is_none() {
            v.add(
                "source",
                "must be GRANT_SOURCE_ADMIN or GRANT_SOURCE_ANNUAL_SUBSCRIPTION",
            );
        }
        let reason = v.check(optional_text("reason", self.reason, REASON_LEN_MAX));
        let stripe_subscription_id = v.check(optional_text(
            "stripe_subscription_id",
            self.stripe_subscription_id,
            STRIPE_ID_LEN_MAX,
        ));
        let stripe_invoice_id = v.check(optional_text(
            "stripe_invoice_id",
            self.stripe_invoice_id,
            STRIPE_ID_LEN_MAX,
        ));
        match (source, &reason, &stripe_invoice_id) {
            (Some(GrantSource::Admin), Some(None), _) => {
                v.add("reason", "is required for an admin grant")
            }
            (Some(GrantSource::AnnualSubscription), _, Some(None)) => v.add(
                "stripe_invoice_id",
                "is required for an annual subscription grant: each invoice is granted once",
            ),
            _ => {}
        }
        let details = match (source, reason, stripe_subscription_id, stripe_invoice_id) {
            (Some(source), Some(reason), Some(stripe_subscription_id), Some(stripe_invoice_id)) => {
                Some(WriteDetails::Grant {
                    source,
                    reason,
                    stripe_subscription_id,
                    stripe_invoice_id,
                })
            }
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// An admin's deduction.
#[derive(Debug, Clone)]
pub struct Deduction {
    pub common: Common,
    pub reason: String,
    /// The admin explicitly allows the balance to go below zero.
    pub allow_negative: bool,
}

impl Deduction {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = self.common.check(&mut v);
        let details = v
            .check(required_text("reason", self.reason, REASON_LEN_MAX))
            .map(|reason| WriteDetails::Deduction {
                reason,
                allow_negative: self.allow_negative,
            });
        common.finish(v, created_by, details)
    }
}

/// A token pack bought through Stripe.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub common: Common,
    pub amount_paid_cents: i64,
    pub currency: String,
    pub stripe_payment_intent_id: String,
    pub stripe_checkout_session_id: String,
    pub pack: String,
}

impl Purchase {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = self.common.check(&mut v);
        let amount_paid_cents = self.amount_paid_cents;
        if !(0..=AMOUNT_PAID_CENTS_MAX).contains(&amount_paid_cents) {
            v.add(
                "amount_paid_cents",
                format!("must be between 0 and {AMOUNT_PAID_CENTS_MAX}, got {amount_paid_cents}"),
            );
        }
        let currency = self.currency;
        let currency_ok = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_lowercase());
        if !currency_ok {
            v.add(
                "currency",
                "must be a lowercase three-letter ISO 4217 code such as \"usd\"",
            );
        }
        let stripe_payment_intent_id = v.check(required_text(
            "stripe_payment_intent_id",
            self.stripe_payment_intent_id,
            STRIPE_ID_LEN_MAX,
        ));
        let stripe_checkout_session_id = v.check(optional_text(
            "stripe_checkout_session_id",
            self.stripe_checkout_session_id,
            STRIPE_ID_LEN_MAX,
        ));
        let pack = v.check(optional_text("pack", self.pack, LABEL_LEN_MAX));
        let details = match (stripe_payment_intent_id, stripe_checkout_session_id, pack) {
            (Some(stripe_payment_intent_id), Some(stripe_checkout_session_id), Some(pack)) => {
                Some(WriteDetails::Purchase {
                    amount_paid_cents,
                    currency,
                    stripe_payment_intent_id,
                    stripe_checkout_session_id,
                    pack,
                })
            }
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// One cycle of a 28-day subscription.
#[derive(Debug, Clone)]
pub struct Drip {
    pub common: Common,
    pub stripe_subscription_id: String,
    pub stripe_invoice_id: String,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
}

impl Drip {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        self.build_after(Violations::default(), created_by)
    }

    /// Like `build`, continuing from violations the transport found already (a timestamp it
    /// could not convert is not reported a second time as missing).
    pub fn build_after(
        self,
        mut v: Violations,
        created_by: Actor,
    ) -> Result<WriteCommand, LedgerError> {
        let common = self.common.check(&mut v);
        let stripe_subscription_id = v.check(required_text(
            "stripe_subscription_id",
            self.stripe_subscription_id,
            STRIPE_ID_LEN_MAX,
        ));
        let stripe_invoice_id = v.check(optional_text(
            "stripe_invoice_id",
            self.stripe_invoice_id,
            STRIPE_ID_LEN_MAX,
        ));
        for (field, value) in [
            ("period_start", self.period_start),
            ("period_end", self.period_end),
        ] {
            if value.is_none() && !v.names(field) {
                v.add(field, "is required");
            }
        }
        if let (Some(start), Some(end)) = (self.period_start, self.period_end) {
            if end <= start {
                v.add("period_end", "must be after period_start");
            } else if (end - start).num_days() > DRIP_PERIOD_DAYS_MAX {
                v.add(
                    "period_end",
                    format!("a drip period must be at most {DRIP_PERIOD_DAYS_MAX} days long"),
                );
            }
        }
        let details = match (
            stripe_subscription_id,
            stripe_invoice_id,
            self.period_start,
            self.period_end,
        ) {
            (Some(stripe_subscription_id), Some(stripe_invoice_id), Some(start), Some(end)) => {
                Some(WriteDetails::Drip {
                    stripe_subscription_id,
                    stripe_invoice_id,
                    period_start: start,
                    period_end: end,
                })
            }
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// What a caller reports of one AI call (usage, a hold's commit).
#[derive(Debug, Clone, Default)]
pub struct CallInput {
    pub model: String,
    pub feature: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

impl CallInput {
    /// Checks the call's fields: labels at most `LABEL_LEN_MAX`, counts `0..=TOKENS_MAX`, and
    /// the cached part of the prompt within the prompt.
    fn check(self, v: &mut Violations, pricing: Pricing) -> Option<AiCall> {
        let counts = [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_write_tokens", self.cache_write_tokens),
        ];
        let mut counts_ok = true;
        for (field, value) in counts {
            if !(0..=TOKENS_MAX).contains(&value) {
                counts_ok = false;
                v.add(
                    field,
                    format!("must be between 0 and {TOKENS_MAX}, got {value}"),
                );
            }
        }
        if counts_ok && self.cache_read_tokens + self.cache_write_tokens > self.input_tokens {
            counts_ok = false;
            v.add(
                "cache_read_tokens",
                format!(
                    "cache_read_tokens + cache_write_tokens ({} + {}) must not exceed input_tokens ({}): cached tokens are part of the prompt",
                    self.cache_read_tokens, self.cache_write_tokens, self.input_tokens
                ),
            );
        }
        let model = v.check(optional_text("model", self.model, LABEL_LEN_MAX));
        let feature = v.check(optional_text("feature", self.feature, LABEL_LEN_MAX));
        match (model, feature, counts_ok) {
            (Some(model), Some(feature), true) => Some(AiCall {
                model,
                feature,
                counts: TokenCounts {
                    input: self.input_tokens,
                    cache_read: self.cache_read_tokens,
                    cache_write: self.cache_write_tokens,
                    output: self.output_tokens,
                },
                pricing,
            }),
            _ => None,
        }
    }
}

/// Tokens one AI call consumed: `tokens` as given, or 0 for the ledger to price the call from
/// its model's price.
#[derive(Debug, Clone)]
pub struct Usage {
    pub common: Common,
    pub call: CallInput,
}

impl Usage {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let ledger_priced = self.common.tokens == 0;
        if ledger_priced && self.call.model.trim().is_empty() {
            v.add(
                "tokens",
                "must be positive, or 0 with a priced `model` for the ledger to price the call",
            );
        }
        let common = CommonChecked {
            user_id: v.check(UserId::parse("user_id", self.common.user_id)),
            tokens: v.check(Tokens::parse_count("tokens", self.common.tokens)),
            idempotency_key: v.check(IdempotencyKey::parse(self.common.idempotency_key)),
        };
        let pricing = if ledger_priced {
            Pricing::Ledger
        } else {
            Pricing::Caller
        };
        let details = self
            .call
            .check(&mut v, pricing)
            .map(|call| WriteDetails::Usage { call });
        common.finish(v, created_by, details)
    }
}

/// Taking back (part of) a credit: a refund, a dispute, an admin's correction.
#[derive(Debug, Clone)]
pub struct Reversal {
    pub common: Common,
    pub original_transaction_id: String,
    pub source: Option<ReversalSource>,
    pub reason: String,
    pub stripe_reference: String,
}

impl Reversal {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = self.common.check(&mut v);
        let original = v.check(EntryId::parse(
            "original_transaction_id",
            &self.original_transaction_id,
        ));
        if self.source.is_none() {
            v.add(
                "source",
                "must be REVERSAL_SOURCE_REFUND, REVERSAL_SOURCE_DISPUTE or REVERSAL_SOURCE_ADMIN",
            );
        }
        let reason = v.check(required_text("reason", self.reason, REASON_LEN_MAX));
        let stripe_reference = v.check(optional_text(
            "stripe_reference",
            self.stripe_reference,
            STRIPE_ID_LEN_MAX,
        ));
        let details = match (original, self.source, reason, stripe_reference) {
            (Some(original), Some(source), Some(reason), Some(stripe_reference)) => {
                Some(WriteDetails::Reversal {
                    original,
                    source,
                    reason,
                    stripe_reference,
                })
            }
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// Attaches a credit's terms to its command, reporting the violations of both at once.
pub fn with_terms(
    built: Result<WriteCommand, LedgerError>,
    terms: Result<CreditTerms, LedgerError>,
) -> Result<WriteCommand, LedgerError> {
    match (built, terms) {
        (Ok(mut cmd), Ok(terms)) => {
            cmd.terms = terms;
            Ok(cmd)
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) => {
            let mut v = Violations::default();
            v.check::<()>(Err(a));
            v.check::<()>(Err(b));
            v.finish()
                .map(|()| unreachable!("two errors were recorded"))
        }
    }
}

/// A hold's time to live: the default when not given, else `1 s ..= HOLD_TTL_MAX`.
fn hold_ttl(
    v: &mut Violations,
    ttl: Option<chrono::Duration>,
    default: Option<chrono::Duration>,
) -> Option<chrono::Duration> {
    match ttl.or(default) {
        Some(t) if t < chrono::Duration::seconds(1) || t > HOLD_TTL_MAX => {
            v.add(
                "ttl",
                format!(
                    "must be between 1 second and {} hours",
                    HOLD_TTL_MAX.num_hours()
                ),
            );
            None
        }
        other => other,
    }
}

fn hold_id(v: &mut Violations, value: &str) -> Option<EntryId> {
    v.check(EntryId::parse("hold_id", value))
}

/// The common fields of a write on an existing hold, whose token count may be zero.
fn hold_common(
    v: &mut Violations,
    user_id: String,
    tokens_field: &'static str,
    tokens: i64,
    idempotency_key: String,
) -> CommonChecked {
    CommonChecked {
        user_id: v.check(UserId::parse("user_id", user_id)),
        tokens: v.check(Tokens::parse_count(tokens_field, tokens)),
        idempotency_key: v.check(IdempotencyKey::parse(idempotency_key)),
    }
}

/// Reserve: hold tokens for an AI call in flight.
#[derive(Debug, Clone)]
pub struct Reserve {
    pub common: Common,
    pub ttl: Option<chrono::Duration>,
    pub overage: Overage,
    pub model: String,
    pub feature: String,
}

impl Reserve {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = self.common.check(&mut v);
        let ttl = hold_ttl(&mut v, self.ttl, Some(HOLD_TTL_DEFAULT));
        let model = v.check(optional_text("model", self.model, LABEL_LEN_MAX));
        let feature = v.check(optional_text("feature", self.feature, LABEL_LEN_MAX));
        let details = match (ttl, model, feature) {
            (Some(ttl), Some(model), Some(feature)) => Some(WriteDetails::Reserve {
                ttl,
                overage: self.overage,
                model,
                feature,
            }),
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// CommitHold: the tokens a held call actually used (`tokens` may be 0).
#[derive(Debug, Clone)]
pub struct CommitHold {
    pub user_id: String,
    pub hold_id: String,
    pub tokens: i64,
    pub idempotency_key: String,
    pub call: CallInput,
}

impl CommitHold {
    /// `tokens` = 0 with token counts: the ledger prices the call (with the hold's pinned
    /// price, else the model's in force); 0 without counts: nothing was used.
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = hold_common(
            &mut v,
            self.user_id,
            "tokens",
            self.tokens,
            self.idempotency_key,
        );
        let hold_id = hold_id(&mut v, &self.hold_id);
        let counted = [
            self.call.input_tokens,
            self.call.output_tokens,
            self.call.cache_read_tokens,
            self.call.cache_write_tokens,
        ]
        .iter()
        .any(|c| *c != 0);
        let pricing = if self.tokens == 0 && counted {
            Pricing::Ledger
        } else {
            Pricing::Caller
        };
        let call = self.call.check(&mut v, pricing);
        let details = match (hold_id, call) {
            (Some(hold_id), Some(call)) => Some(WriteDetails::CommitHold { hold_id, call }),
            _ => None,
        };
        common.finish(v, created_by, details)
    }
}

/// ReleaseHold: end a hold unused. Idempotent by its nature (a released hold stays released).
#[derive(Debug, Clone)]
pub struct ReleaseHold {
    pub user_id: String,
    pub hold_id: String,
}

impl ReleaseHold {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let hold = hold_id(&mut v, &self.hold_id);
        // Idempotent by the hold's state: a key of the ledger's own, never stored.
        let common = CommonChecked {
            user_id: v.check(UserId::parse("user_id", self.user_id)),
            tokens: Some(Tokens::ZERO),
            idempotency_key: Some(IdempotencyKey::transient(format!(
                "release:{}",
                self.hold_id
            ))),
        };
        let details = hold.map(|hold_id| WriteDetails::ReleaseHold { hold_id });
        common.finish(v, created_by, details)
    }
}

/// ExtendHold: a later expiry and/or more tokens held.
#[derive(Debug, Clone)]
pub struct ExtendHold {
    pub user_id: String,
    pub hold_id: String,
    pub ttl: Option<chrono::Duration>,
    pub add_tokens: i64,
    pub idempotency_key: String,
}

impl ExtendHold {
    pub fn build(self, created_by: Actor) -> Result<WriteCommand, LedgerError> {
        let mut v = Violations::default();
        let common = hold_common(
            &mut v,
            self.user_id,
            "add_tokens",
            self.add_tokens,
            self.idempotency_key,
        );
        let hold = hold_id(&mut v, &self.hold_id);
        let ttl = hold_ttl(&mut v, self.ttl, None);
        if self.ttl.is_none() && self.add_tokens == 0 {
            v.add("ttl", "ttl or add_tokens must be given");
        }
        let details = hold.map(|hold_id| WriteDetails::ExtendHold { hold_id, ttl });
        common.finish(v, created_by, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(user_id: &str, tokens: i64, key: &str) -> Common {
        Common {
            user_id: user_id.into(),
            tokens,
            idempotency_key: key.into(),
        }
    }

    fn usage(tokens: i64, model: &str) -> WriteCommand {
        Usage {
            common: common("u1", tokens, "k1"),
            call: CallInput {
                model: model.into(),
                input_tokens: 1,
                output_tokens: 2,
                ..Default::default()
            },
        }
        .build(Actor::new("test"))
        .unwrap()
    }

    #[test]
    fn fingerprint_changes_with_any_field_but_not_with_the_caller() {
        let a = usage(10, "gpt");
        let mut same_but_other_caller = a.clone();
        same_but_other_caller.created_by = Actor::new("other");
        assert_eq!(a.fingerprint(), same_but_other_caller.fingerprint());
        assert_ne!(a.fingerprint(), usage(11, "gpt").fingerprint());
        assert_ne!(a.fingerprint(), usage(10, "gpt2").fingerprint());
    }

    #[test]
    fn debits_are_negative_and_credits_positive() {
        assert_eq!(usage(10, "m").token_amount(), -10);
        let grant = Grant {
            common: common("u1", 7, "k"),
            source: Some(GrantSource::Admin),
            reason: "welcome".into(),
            stripe_subscription_id: String::new(),
            stripe_invoice_id: String::new(),
        }
        .build(Actor::new("a"))
        .unwrap();
        assert_eq!(grant.token_amount(), 7);
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let err = Purchase {
            common: common("", 0, ""),
            amount_paid_cents: -1,
            currency: "USD".into(),
            stripe_payment_intent_id: String::new(),
            stripe_checkout_session_id: "a\0b".into(),
            pack: String::new(),
        }
        .build(Actor::new("a"))
        .unwrap_err();
        let LedgerError::InvalidArgument { violations } = err else {
            panic!("expected InvalidArgument, got {err:?}");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            [
                "user_id",
                "tokens",
                "idempotency_key",
                "amount_paid_cents",
                "currency",
                "stripe_payment_intent_id",
                "stripe_checkout_session_id"
            ]
        );
    }

    #[test]
    fn a_drip_without_a_period_names_both_ends_once() {
        let err = Drip {
            common: common("u", 1, "k"),
            stripe_subscription_id: "sub_1".into(),
            stripe_invoice_id: String::new(),
            period_start: None,
            period_end: None,
        }
        .build(Actor::new("a"))
        .unwrap_err();
        let LedgerError::InvalidArgument { violations } = err else {
            panic!("expected InvalidArgument, got {err:?}");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["period_start", "period_end"]);
    }
}
