//! The ledger's vocabulary: validated newtypes and the write commands built from them.
//!
//! Everything here is checked once, when a value is constructed at the transport boundary, so the
//! ledger rules and the store never re-validate. Nothing in this module knows about gRPC or SQL.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::error::LedgerError;

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

fn check_text(field: &'static str, value: &str, len_max: usize) -> Result<(), LedgerError> {
    let len = value.chars().count();
    if len == 0 {
        return Err(LedgerError::invalid(field, "must not be empty"));
    }
    if len > len_max {
        return Err(LedgerError::invalid(
            field,
            format!("must be at most {len_max} characters, got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
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
fn optional_text(
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

fn required_text(
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

impl IdempotencyKey {
    pub fn parse(value: String) -> Result<Self, LedgerError> {
        required_text("idempotency_key", value, IDEMPOTENCY_KEY_LEN_MAX).map(Self)
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
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Admin => "admin",
            GrantSource::AnnualSubscription => "annual_subscription",
        }
    }
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "admin" => Some(GrantSource::Admin),
            "annual_subscription" => Some(GrantSource::AnnualSubscription),
            _ => None,
        }
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
    pub fn as_str(self) -> &'static str {
        match self {
            ReversalSource::Refund => "refund",
            ReversalSource::Dispute => "dispute",
            ReversalSource::Admin => "admin",
        }
    }
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "refund" => Some(ReversalSource::Refund),
            "dispute" => Some(ReversalSource::Dispute),
            "admin" => Some(ReversalSource::Admin),
            _ => None,
        }
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
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Deduction => "deduction",
            EntryKind::Purchase => "purchase",
            EntryKind::Drip => "drip",
            EntryKind::Usage => "usage",
            EntryKind::Reversal => "reversal",
        }
    }
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "grant" => Some(EntryKind::Grant),
            "deduction" => Some(EntryKind::Deduction),
            "purchase" => Some(EntryKind::Purchase),
            "drip" => Some(EntryKind::Drip),
            "usage" => Some(EntryKind::Usage),
            "reversal" => Some(EntryKind::Reversal),
            _ => None,
        }
    }
    /// Whether this kind adds to the balance (credits) or takes from it (debits).
    pub fn is_credit(self) -> bool {
        matches!(
            self,
            EntryKind::Grant | EntryKind::Purchase | EntryKind::Drip
        )
    }
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
        model: Option<String>,
        input_tokens: i64,
        output_tokens: i64,
        feature: Option<String>,
    },
    Reversal {
        original: EntryId,
        source: ReversalSource,
        reason: String,
        stripe_reference: Option<String>,
    },
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
        }
    }
}

/// The business object a write pays for. Whatever the idempotency key, one business object is
/// credited once: a second write for it is a replay of the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

impl WriteCommand {
    pub fn kind(&self) -> EntryKind {
        self.details.kind()
    }

    /// The signed journal amount: positive credits, negative debits.
    pub fn token_amount(&self) -> i64 {
        if self.kind().is_credit() {
            self.tokens.get()
        } else {
            -self.tokens.get()
        }
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
        match &self.details {
            WriteDetails::Grant {
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            } => {
                f.text(source.as_str());
                f.opt(reason);
                f.opt(stripe_subscription_id);
                f.opt(stripe_invoice_id);
            }
            WriteDetails::Deduction {
                reason,
                allow_negative,
            } => {
                f.text(reason);
                f.int(i64::from(*allow_negative));
            }
            WriteDetails::Purchase {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id,
                pack,
            } => {
                f.int(*amount_paid_cents);
                f.text(currency);
                f.text(stripe_payment_intent_id);
                f.opt(stripe_checkout_session_id);
                f.opt(pack);
            }
            WriteDetails::Drip {
                stripe_subscription_id,
                stripe_invoice_id,
                period_start,
                period_end,
            } => {
                f.text(stripe_subscription_id);
                f.opt(stripe_invoice_id);
                f.int(period_start.timestamp_micros());
                f.int(period_end.timestamp_micros());
            }
            WriteDetails::Usage {
                model,
                input_tokens,
                output_tokens,
                feature,
            } => {
                f.opt(model);
                f.int(*input_tokens);
                f.int(*output_tokens);
                f.opt(feature);
            }
            WriteDetails::Reversal {
                original,
                source,
                reason,
                stripe_reference,
            } => {
                f.int(original.0);
                f.text(source.as_str());
                f.text(reason);
                f.opt(stripe_reference);
            }
        }
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
}

/// Builders used by the transport layer: each validates its fields in one place.
pub mod build {
    use super::*;

    pub struct Common {
        pub user_id: String,
        pub tokens: i64,
        pub idempotency_key: String,
    }

    fn common(c: Common) -> Result<(UserId, Tokens, IdempotencyKey), LedgerError> {
        Ok((
            UserId::parse("user_id", c.user_id)?,
            Tokens::parse(c.tokens)?,
            IdempotencyKey::parse(c.idempotency_key)?,
        ))
    }

    pub fn grant(
        c: Common,
        created_by: Actor,
        source: Option<GrantSource>,
        reason: String,
        stripe_subscription_id: String,
        stripe_invoice_id: String,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        let source = source.ok_or_else(|| {
            LedgerError::invalid(
                "source",
                "must be GRANT_SOURCE_ADMIN or GRANT_SOURCE_ANNUAL_SUBSCRIPTION",
            )
        })?;
        let reason = optional_text("reason", reason, REASON_LEN_MAX)?;
        let stripe_subscription_id = optional_text(
            "stripe_subscription_id",
            stripe_subscription_id,
            STRIPE_ID_LEN_MAX,
        )?;
        let stripe_invoice_id =
            optional_text("stripe_invoice_id", stripe_invoice_id, STRIPE_ID_LEN_MAX)?;
        match source {
            GrantSource::Admin if reason.is_none() => {
                return Err(LedgerError::invalid(
                    "reason",
                    "is required for an admin grant",
                ))
            }
            GrantSource::AnnualSubscription if stripe_invoice_id.is_none() => {
                return Err(LedgerError::invalid(
                    "stripe_invoice_id",
                    "is required for an annual subscription grant: each invoice is granted once",
                ))
            }
            _ => {}
        }
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Grant {
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            },
        })
    }

    pub fn deduction(
        c: Common,
        created_by: Actor,
        reason: String,
        allow_negative: bool,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        let reason = required_text("reason", reason, REASON_LEN_MAX)?;
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Deduction {
                reason,
                allow_negative,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn purchase(
        c: Common,
        created_by: Actor,
        amount_paid_cents: i64,
        currency: String,
        stripe_payment_intent_id: String,
        stripe_checkout_session_id: String,
        pack: String,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        if !(0..=AMOUNT_PAID_CENTS_MAX).contains(&amount_paid_cents) {
            return Err(LedgerError::invalid(
                "amount_paid_cents",
                format!("must be between 0 and {AMOUNT_PAID_CENTS_MAX}, got {amount_paid_cents}"),
            ));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(LedgerError::invalid(
                "currency",
                "must be a lowercase three-letter ISO 4217 code such as \"usd\"",
            ));
        }
        let stripe_payment_intent_id = required_text(
            "stripe_payment_intent_id",
            stripe_payment_intent_id,
            STRIPE_ID_LEN_MAX,
        )?;
        let stripe_checkout_session_id = optional_text(
            "stripe_checkout_session_id",
            stripe_checkout_session_id,
            STRIPE_ID_LEN_MAX,
        )?;
        let pack = optional_text("pack", pack, LABEL_LEN_MAX)?;
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Purchase {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id,
                pack,
            },
        })
    }

    pub fn drip(
        c: Common,
        created_by: Actor,
        stripe_subscription_id: String,
        stripe_invoice_id: String,
        period_start: Option<DateTime<Utc>>,
        period_end: Option<DateTime<Utc>>,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        let stripe_subscription_id = required_text(
            "stripe_subscription_id",
            stripe_subscription_id,
            STRIPE_ID_LEN_MAX,
        )?;
        let stripe_invoice_id =
            optional_text("stripe_invoice_id", stripe_invoice_id, STRIPE_ID_LEN_MAX)?;
        let period_start =
            period_start.ok_or_else(|| LedgerError::invalid("period_start", "is required"))?;
        let period_end =
            period_end.ok_or_else(|| LedgerError::invalid("period_end", "is required"))?;
        if period_end <= period_start {
            return Err(LedgerError::invalid(
                "period_end",
                "must be after period_start",
            ));
        }
        if (period_end - period_start).num_days() > DRIP_PERIOD_DAYS_MAX {
            return Err(LedgerError::invalid(
                "period_end",
                format!("a drip period must be at most {DRIP_PERIOD_DAYS_MAX} days long"),
            ));
        }
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Drip {
                stripe_subscription_id,
                stripe_invoice_id,
                period_start,
                period_end,
            },
        })
    }

    pub fn usage(
        c: Common,
        created_by: Actor,
        model: String,
        input_tokens: i64,
        output_tokens: i64,
        feature: String,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        for (field, value) in [
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
        ] {
            if !(0..=TOKENS_MAX).contains(&value) {
                return Err(LedgerError::invalid(
                    field,
                    format!("must be between 0 and {TOKENS_MAX}, got {value}"),
                ));
            }
        }
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Usage {
                model: optional_text("model", model, LABEL_LEN_MAX)?,
                input_tokens,
                output_tokens,
                feature: optional_text("feature", feature, LABEL_LEN_MAX)?,
            },
        })
    }

    pub fn reversal(
        c: Common,
        created_by: Actor,
        original_transaction_id: &str,
        source: Option<ReversalSource>,
        reason: String,
        stripe_reference: String,
    ) -> Result<WriteCommand, LedgerError> {
        let (user_id, tokens, idempotency_key) = common(c)?;
        let original = EntryId::parse("original_transaction_id", original_transaction_id)?;
        let source = source.ok_or_else(|| {
            LedgerError::invalid(
                "source",
                "must be REVERSAL_SOURCE_REFUND, REVERSAL_SOURCE_DISPUTE or REVERSAL_SOURCE_ADMIN",
            )
        })?;
        let reason = required_text("reason", reason, REASON_LEN_MAX)?;
        let stripe_reference =
            optional_text("stripe_reference", stripe_reference, STRIPE_ID_LEN_MAX)?;
        Ok(WriteCommand {
            user_id,
            tokens,
            idempotency_key,
            created_by,
            details: WriteDetails::Reversal {
                original,
                source,
                reason,
                stripe_reference,
            },
        })
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
        assert!(UserId::parse("user_id", " a".into()).is_err());
        assert!(IdempotencyKey::parse("k".repeat(IDEMPOTENCY_KEY_LEN_MAX)).is_ok());
        assert!(IdempotencyKey::parse("k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)).is_err());
    }

    fn usage(tokens: i64, model: &str) -> WriteCommand {
        build::usage(
            build::Common {
                user_id: "u1".into(),
                tokens,
                idempotency_key: "k1".into(),
            },
            Actor::new("test"),
            model.into(),
            1,
            2,
            String::new(),
        )
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
        let grant = build::grant(
            build::Common {
                user_id: "u1".into(),
                tokens: 7,
                idempotency_key: "k".into(),
            },
            Actor::new("a"),
            Some(GrantSource::Admin),
            "welcome".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(grant.token_amount(), 7);
    }
}
