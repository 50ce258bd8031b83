//! Wire ↔ domain, one conversion per message, each destructuring its message exhaustively so a
//! new proto field cannot be forgotten. Validation happens in the domain builders; what is
//! converted here is only the shape (enums, timestamps, optional lookups).

use chrono::{DateTime, Datelike, Utc};
use tonic::Status;

use crate::domain::build::{self, Common};
use crate::domain::{
    check_text, AccountOrder, AccountSummary, AiCall, Balance, CreditTerms, EntryId, EntryKind,
    EntryLookup, GrantSource, HistoryFilter, HoldState, JournalEntry, LotSource, Overage, Receipt,
    ReversalSource, RolloverPolicy, Totals, UserId, Violations, WriteDetails, STRIPE_ID_LEN_MAX,
};
use crate::error::LedgerError;
use crate::ledger::rules::{Hold, Lot};
use crate::pb;

/// Timestamps outside these years are caller bugs (and some would not fit PostgreSQL).
const TIMESTAMP_YEAR_MIN: i32 = 1970;
const TIMESTAMP_YEAR_MAX: i32 = 9999;

pub(super) fn timestamp_to_chrono(
    field: &'static str,
    ts: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, LedgerError> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(LedgerError::invalid(field, "nanos must be in 0..1e9"));
    }
    // PostgreSQL keeps microseconds: truncate here, so what is compared (business keys,
    // fingerprints) is exactly what is stored.
    let micros = ts.nanos / 1_000 * 1_000;
    let t = DateTime::from_timestamp(ts.seconds, micros as u32)
        .ok_or_else(|| LedgerError::invalid(field, "is out of range"))?;
    if !(TIMESTAMP_YEAR_MIN..=TIMESTAMP_YEAR_MAX).contains(&t.year()) {
        return Err(LedgerError::invalid(
            field,
            format!("must be between the years {TIMESTAMP_YEAR_MIN} and {TIMESTAMP_YEAR_MAX}"),
        ));
    }
    Ok(Some(t))
}

pub(super) fn chrono_to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(super) fn grant_source_from_pb(value: i32) -> Option<GrantSource> {
    match pb::GrantSource::try_from(value).ok()? {
        pb::GrantSource::Admin => Some(GrantSource::Admin),
        pb::GrantSource::AnnualSubscription => Some(GrantSource::AnnualSubscription),
        pb::GrantSource::Unspecified => None,
    }
}

fn grant_source_to_pb(source: GrantSource) -> pb::GrantSource {
    match source {
        GrantSource::Admin => pb::GrantSource::Admin,
        GrantSource::AnnualSubscription => pb::GrantSource::AnnualSubscription,
    }
}

pub(super) fn reversal_source_from_pb(value: i32) -> Option<ReversalSource> {
    match pb::ReversalSource::try_from(value).ok()? {
        pb::ReversalSource::Refund => Some(ReversalSource::Refund),
        pb::ReversalSource::Dispute => Some(ReversalSource::Dispute),
        pb::ReversalSource::Admin => Some(ReversalSource::Admin),
        pb::ReversalSource::Unspecified => None,
    }
}

fn reversal_source_to_pb(source: ReversalSource) -> pb::ReversalSource {
    match source {
        ReversalSource::Refund => pb::ReversalSource::Refund,
        ReversalSource::Dispute => pb::ReversalSource::Dispute,
        ReversalSource::Admin => pb::ReversalSource::Admin,
    }
}

fn entry_kind_from_pb(value: i32) -> Result<EntryKind, LedgerError> {
    match pb::TransactionKind::try_from(value) {
        Ok(pb::TransactionKind::Grant) => Ok(EntryKind::Grant),
        Ok(pb::TransactionKind::Deduction) => Ok(EntryKind::Deduction),
        Ok(pb::TransactionKind::Purchase) => Ok(EntryKind::Purchase),
        Ok(pb::TransactionKind::Drip) => Ok(EntryKind::Drip),
        Ok(pb::TransactionKind::Usage) => Ok(EntryKind::Usage),
        Ok(pb::TransactionKind::Reversal) => Ok(EntryKind::Reversal),
        Ok(pb::TransactionKind::Expiry) => Ok(EntryKind::Expiry),
        Ok(pb::TransactionKind::Unspecified) | Err(_) => Err(LedgerError::invalid(
            "kinds",
            format!("{value} is not a transaction kind"),
        )),
    }
}

fn entry_kind_to_pb(kind: EntryKind) -> pb::TransactionKind {
    match kind {
        EntryKind::Grant => pb::TransactionKind::Grant,
        EntryKind::Deduction => pb::TransactionKind::Deduction,
        EntryKind::Purchase => pb::TransactionKind::Purchase,
        EntryKind::Drip => pb::TransactionKind::Drip,
        EntryKind::Usage => pb::TransactionKind::Usage,
        EntryKind::Reversal => pb::TransactionKind::Reversal,
        EntryKind::Expiry => pb::TransactionKind::Expiry,
        EntryKind::Hold => pb::TransactionKind::Unspecified,
    }
}

/// A credit's terms from its request's fields.
pub(super) fn terms_from_pb(
    expires_at: Option<prost_types::Timestamp>,
    priority: i32,
    rollover: Option<pb::Rollover>,
) -> Result<CreditTerms, LedgerError> {
    let expires_at = timestamp_to_chrono("expires_at", expires_at)?;
    let rollover = rollover.map(|r| RolloverPolicy {
        max_tokens: r.max_tokens,
        max_percent: r.max_percent,
    });
    CreditTerms::parse(expires_at, priority, rollover)
}

pub(super) fn duration_from_pb(
    field: &'static str,
    d: Option<prost_types::Duration>,
) -> Result<Option<chrono::Duration>, LedgerError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(LedgerError::invalid(field, "must be a positive duration"));
    }
    // Whole milliseconds: what the request's fingerprint keeps.
    chrono::Duration::try_seconds(d.seconds)
        .map(|s| Some(s + chrono::Duration::milliseconds(i64::from(d.nanos / 1_000_000))))
        .ok_or_else(|| LedgerError::invalid(field, "is out of range"))
}

pub(super) fn overage_from_pb(value: i32) -> Result<Overage, LedgerError> {
    match pb::Overage::try_from(value) {
        Ok(pb::Overage::Unspecified | pb::Overage::Reject) => Ok(Overage::Reject),
        Ok(pb::Overage::Cap) => Ok(Overage::Cap),
        Err(_) => Err(LedgerError::invalid("overage", "is not an overage policy")),
    }
}

fn hold_state_to_pb(state: HoldState) -> pb::HoldState {
    match state {
        HoldState::Active => pb::HoldState::Active,
        HoldState::Committed => pb::HoldState::Committed,
        HoldState::Released => pb::HoldState::Released,
        HoldState::Expired => pb::HoldState::Expired,
    }
}

fn lot_source_to_pb(source: LotSource) -> pb::LotSource {
    match source {
        LotSource::Opening => pb::LotSource::Opening,
        LotSource::Grant => pb::LotSource::Grant,
        LotSource::Purchase => pb::LotSource::Purchase,
        LotSource::Drip => pb::LotSource::Drip,
        LotSource::Rollover => pb::LotSource::Rollover,
    }
}

pub(super) fn hold_to_pb(user_id: &str, h: &Hold) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id.to_string(),
        user_id: user_id.to_string(),
        tokens: h.tokens,
        state: hold_state_to_pb(h.state) as i32,
        expires_at: Some(chrono_to_timestamp(h.expires_at)),
        placed_at: Some(chrono_to_timestamp(h.placed_at)),
        ended_at: h.ended_at.map(chrono_to_timestamp),
        model: h.model.clone().unwrap_or_default(),
        feature: h.feature.clone().unwrap_or_default(),
        committed_transaction_id: h
            .committed_transaction_id
            .map(|t| t.to_string())
            .unwrap_or_default(),
        committed_tokens: h.committed_tokens.unwrap_or_default(),
        price_id: price_id_text(h.price_id),
    }
}

pub(super) fn lot_to_pb(l: &Lot) -> pb::Lot {
    pb::Lot {
        lot_id: l.lot_id.to_string(),
        source_transaction_id: match l.source {
            LotSource::Opening => String::new(),
            _ => l.lot_id.to_string(),
        },
        source: lot_source_to_pb(l.source) as i32,
        granted: l.granted,
        remaining: l.remaining,
        held: l.held,
        expires_at: l.expires_at.map(chrono_to_timestamp),
        priority: l.priority,
        created_at: Some(chrono_to_timestamp(l.created_at)),
        paid: l.paid,
    }
}

/// A grant's input and its terms.
pub(super) fn grant_from_pb(
    m: pb::GrantRequest,
) -> (build::Grant, Result<CreditTerms, LedgerError>) {
    let pb::GrantRequest {
        user_id,
        tokens,
        idempotency_key,
        source,
        reason,
        stripe_subscription_id,
        stripe_invoice_id,
        expires_at,
        priority,
    } = m;
    let input = build::Grant {
        common: Common {
            user_id,
            tokens,
            idempotency_key,
        },
        source: grant_source_from_pb(source),
        reason,
        stripe_subscription_id,
        stripe_invoice_id,
    };
    (input, terms_from_pb(expires_at, priority, None))
}

impl From<pb::DeductRequest> for build::Deduction {
    fn from(m: pb::DeductRequest) -> Self {
        let pb::DeductRequest {
            user_id,
            tokens,
            idempotency_key,
            reason,
            allow_negative,
        } = m;
        build::Deduction {
            common: Common {
                user_id,
                tokens,
                idempotency_key,
            },
            reason,
            allow_negative,
        }
    }
}

/// A drip's input, the violations its timestamps already have, and its terms.
pub(super) fn drip_from_pb(
    m: pb::DripRequest,
) -> (build::Drip, Violations, Result<CreditTerms, LedgerError>) {
    let pb::DripRequest {
        user_id,
        tokens,
        idempotency_key,
        stripe_subscription_id,
        stripe_invoice_id,
        period_start,
        period_end,
        expires_at,
        priority,
        rollover,
    } = m;
    let mut v = Violations::default();
    let period_start = v
        .check(timestamp_to_chrono("period_start", period_start))
        .flatten();
    let period_end = v
        .check(timestamp_to_chrono("period_end", period_end))
        .flatten();
    let input = build::Drip {
        common: Common {
            user_id,
            tokens,
            idempotency_key,
        },
        stripe_subscription_id,
        stripe_invoice_id,
        period_start,
        period_end,
    };
    (input, v, terms_from_pb(expires_at, priority, rollover))
}

/// A purchase's input and its terms.
pub(super) fn purchase_from_pb(
    m: pb::RecordPurchaseRequest,
) -> (build::Purchase, Result<CreditTerms, LedgerError>) {
    let pb::RecordPurchaseRequest {
        user_id,
        tokens,
        idempotency_key,
        amount_paid_cents,
        currency,
        stripe_payment_intent_id,
        stripe_checkout_session_id,
        pack,
        expires_at,
        priority,
    } = m;
    let input = build::Purchase {
        common: Common {
            user_id,
            tokens,
            idempotency_key,
        },
        amount_paid_cents,
        currency,
        stripe_payment_intent_id,
        stripe_checkout_session_id,
        pack,
    };
    (input, terms_from_pb(expires_at, priority, None))
}

/// One conversion for TrackUsage and each event of TrackUsageBatch.
impl From<pb::TrackUsageRequest> for build::Usage {
    fn from(m: pb::TrackUsageRequest) -> Self {
        let pb::TrackUsageRequest {
            user_id,
            tokens,
            idempotency_key,
            model,
            input_tokens,
            output_tokens,
            feature,
            cache_read_tokens,
            cache_write_tokens,
        } = m;
        build::Usage {
            common: Common {
                user_id,
                tokens,
                idempotency_key,
            },
            call: build::CallInput {
                model,
                feature,
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
            },
        }
    }
}

impl From<pb::ReverseRequest> for build::Reversal {
    fn from(m: pb::ReverseRequest) -> Self {
        let pb::ReverseRequest {
            user_id,
            tokens,
            idempotency_key,
            original_transaction_id,
            source,
            reason,
            stripe_reference,
        } = m;
        build::Reversal {
            common: Common {
                user_id,
                tokens,
                idempotency_key,
            },
            original_transaction_id,
            source: reversal_source_from_pb(source),
            reason,
            stripe_reference,
        }
    }
}

/// A ListTransactions request, validated.
pub(super) struct HistoryQuery {
    pub user_id: UserId,
    pub filter: HistoryFilter,
    pub page_size: i32,
    pub page_token: String,
}

impl TryFrom<pb::ListTransactionsRequest> for HistoryQuery {
    type Error = LedgerError;

    fn try_from(m: pb::ListTransactionsRequest) -> Result<Self, LedgerError> {
        let pb::ListTransactionsRequest {
            user_id,
            page_size,
            page_token,
            kinds,
            created_after,
            created_before,
        } = m;
        let mut v = Violations::default();
        let user_id = v.check(UserId::parse("user_id", user_id));
        let kinds: Option<Vec<EntryKind>> = if kinds.is_empty() {
            Some(Vec::new())
        } else {
            v.check(kinds.into_iter().map(entry_kind_from_pb).collect())
        };
        let created_after = v.check(timestamp_to_chrono("created_after", created_after));
        let created_before = v.check(timestamp_to_chrono("created_before", created_before));
        v.finish()?;
        let (Some(user_id), Some(kinds), Some(created_after), Some(created_before)) =
            (user_id, kinds, created_after, created_before)
        else {
            return Err(LedgerError::Invariant(
                "a conversion lost a field without recording why".into(),
            ));
        };
        let filter = HistoryFilter {
            kinds: (!kinds.is_empty()).then_some(kinds),
            created_after,
            created_before,
        };
        Ok(HistoryQuery {
            user_id,
            filter,
            page_size,
            page_token,
        })
    }
}

impl TryFrom<Option<pb::get_transaction_request::Lookup>> for EntryLookup {
    type Error = LedgerError;

    fn try_from(lookup: Option<pb::get_transaction_request::Lookup>) -> Result<Self, LedgerError> {
        use pb::get_transaction_request::Lookup;
        match lookup {
            Some(Lookup::TransactionId(id)) => {
                Ok(EntryLookup::Id(EntryId::parse("transaction_id", &id)?))
            }
            Some(Lookup::StripePaymentIntentId(pi)) => {
                check_text("stripe_payment_intent_id", &pi, STRIPE_ID_LEN_MAX)?;
                Ok(EntryLookup::PaymentIntent(pi))
            }
            None => Err(LedgerError::invalid(
                "lookup",
                "set transaction_id or stripe_payment_intent_id",
            )),
        }
    }
}

pub(super) fn account_order_from_pb(value: i32) -> Result<AccountOrder, LedgerError> {
    match pb::AccountOrder::try_from(value) {
        Ok(pb::AccountOrder::Unspecified | pb::AccountOrder::UserId) => Ok(AccountOrder::UserId),
        Ok(pb::AccountOrder::BalanceDesc) => Ok(AccountOrder::BalanceDesc),
        Ok(pb::AccountOrder::LastActivityDesc) => Ok(AccountOrder::LastActivityDesc),
        Err(_) => Err(LedgerError::invalid("order_by", "is not an account order")),
    }
}

impl From<Totals> for pb::BalanceTotals {
    fn from(t: Totals) -> Self {
        let Totals {
            granted,
            deducted,
            purchased,
            dripped,
            used,
            reversed,
            expired,
        } = t;
        pb::BalanceTotals {
            granted,
            deducted,
            purchased,
            dripped,
            used,
            reversed,
            expired,
        }
    }
}

pub(super) fn balance_to_pb(user_id: &UserId, b: Balance) -> pb::GetBalanceResponse {
    pb::GetBalanceResponse {
        user_id: user_id.to_string(),
        balance: b.balance,
        totals: Some(b.totals.into()),
        updated_at: b.updated_at.map(chrono_to_timestamp),
        transaction_count: b.transaction_count,
        held: b.held,
        available: b.available(),
        next_expiry: b.next_expiry.map(|(at, tokens)| pb::NextExpiry {
            at: Some(chrono_to_timestamp(at)),
            tokens,
        }),
    }
}

/// One WatchBalance message.
pub(super) fn balance_update(user_id: &UserId, b: &Balance, heartbeat: bool) -> pb::BalanceUpdate {
    pb::BalanceUpdate {
        user_id: user_id.to_string(),
        balance: b.balance,
        held: b.held,
        available: b.available(),
        seq: b.transaction_count,
        updated_at: b.updated_at.map(chrono_to_timestamp),
        heartbeat,
    }
}

impl From<AccountSummary> for pb::Account {
    fn from(a: AccountSummary) -> Self {
        pb::Account {
            user_id: a.user_id,
            balance: a.balance.balance,
            totals: Some(a.balance.totals.into()),
            updated_at: a.balance.updated_at.map(chrono_to_timestamp),
            transaction_count: a.balance.transaction_count,
            created_at: Some(chrono_to_timestamp(a.created_at)),
        }
    }
}

/// A row's reason (a column of its own in the message) and its kind-specific details.
fn details_to_pb(details: WriteDetails) -> (String, pb::transaction::Details) {
    use pb::transaction::Details;
    match details {
        WriteDetails::Grant {
            source,
            reason,
            stripe_subscription_id,
            stripe_invoice_id,
        } => (
            reason.unwrap_or_default(),
            Details::Grant(pb::GrantDetails {
                source: grant_source_to_pb(source) as i32,
                stripe_subscription_id: stripe_subscription_id.unwrap_or_default(),
                stripe_invoice_id: stripe_invoice_id.unwrap_or_default(),
            }),
        ),
        WriteDetails::Deduction {
            reason,
            allow_negative,
        } => (
            reason,
            Details::Deduction(pb::DeductionDetails { allow_negative }),
        ),
        WriteDetails::Purchase {
            amount_paid_cents,
            currency,
            stripe_payment_intent_id,
            stripe_checkout_session_id,
            pack,
        } => (
            String::new(),
            Details::Purchase(pb::PurchaseDetails {
                amount_paid_cents,
                currency,
                stripe_payment_intent_id,
                stripe_checkout_session_id: stripe_checkout_session_id.unwrap_or_default(),
                pack: pack.unwrap_or_default(),
            }),
        ),
        WriteDetails::Drip {
            stripe_subscription_id,
            stripe_invoice_id,
            period_start,
            period_end,
        } => (
            String::new(),
            Details::Drip(pb::DripDetails {
                stripe_subscription_id,
                stripe_invoice_id: stripe_invoice_id.unwrap_or_default(),
                period_start: Some(chrono_to_timestamp(period_start)),
                period_end: Some(chrono_to_timestamp(period_end)),
            }),
        ),
        WriteDetails::Usage { call } => (String::new(), Details::Usage(usage_details(call, ""))),
        WriteDetails::CommitHold { hold_id, call } => (
            String::new(),
            Details::Usage(usage_details(call, &hold_id.to_string())),
        ),
        WriteDetails::Expiry {
            lot_id,
            carried,
            carried_to,
        } => (
            String::new(),
            Details::Expiry(pb::ExpiryDetails {
                lot_id: lot_id.to_string(),
                carried_tokens: carried,
                carried_to_lot_id: carried_to.map(|l| l.to_string()).unwrap_or_default(),
            }),
        ),
        WriteDetails::Reserve { .. }
        | WriteDetails::ReleaseHold { .. }
        | WriteDetails::ExtendHold { .. }
        | WriteDetails::Settle => (String::new(), Details::Usage(pb::UsageDetails::default())),
        WriteDetails::Reversal {
            original,
            source,
            reason,
            stripe_reference,
        } => (
            reason,
            Details::Reversal(pb::ReversalDetails {
                original_transaction_id: original.to_string(),
                source: reversal_source_to_pb(source) as i32,
                stripe_reference: stripe_reference.unwrap_or_default(),
            }),
        ),
    }
}

impl From<JournalEntry> for pb::Transaction {
    fn from(entry: JournalEntry) -> Self {
        let kind = entry_kind_to_pb(entry.kind());
        let (reason, details) = details_to_pb(entry.details);
        pb::Transaction {
            id: entry.id.to_string(),
            kind: kind as i32,
            token_amount: entry.token_amount,
            balance_after: entry.balance_after,
            created_at: Some(chrono_to_timestamp(entry.created_at)),
            created_by: entry.created_by,
            reason,
            idempotency_key: entry.idempotency_key.unwrap_or_default(),
            sequence: entry.seq,
            details: Some(details),
        }
    }
}

fn usage_details(call: AiCall, hold_id: &str) -> pb::UsageDetails {
    pb::UsageDetails {
        model: call.model.unwrap_or_default(),
        input_tokens: call.counts.input,
        output_tokens: call.counts.output,
        feature: call.feature.unwrap_or_default(),
        hold_id: hold_id.to_string(),
        cache_read_tokens: call.counts.cache_read,
        cache_write_tokens: call.counts.cache_write,
        price_id: price_id_text(call.pricing.price_id()),
    }
}

/// A price version as the API spells it: its id, or empty for "caller-priced".
pub(super) fn price_id_text(price_id: Option<i64>) -> String {
    price_id.map(|id| id.to_string()).unwrap_or_default()
}

/// Every write response has the same three fields.
pub(super) trait FromReceipt {
    fn from_receipt(r: Receipt) -> Self;
}

macro_rules! impl_from_receipt {
    ($($ty:ty),*) => {$(
        impl FromReceipt for $ty {
            fn from_receipt(r: Receipt) -> Self {
                Self { transaction_id: r.transaction_id.to_string(), balance: r.balance, replayed: r.replayed }
            }
        }
    )*};
}

impl_from_receipt!(
    pb::ReverseResponse,
    pb::GrantResponse,
    pb::DeductResponse,
    pb::DripResponse,
    pb::RecordPurchaseResponse
);

impl FromReceipt for pb::TrackUsageResponse {
    fn from_receipt(r: Receipt) -> Self {
        Self {
            transaction_id: r.transaction_id.to_string(),
            balance: r.balance,
            replayed: r.replayed,
            tokens: r.charged.map_or(0, |c| c.tokens),
            price_id: price_id_text(r.charged.and_then(|c| c.price_id)),
        }
    }
}

/// One event's answer in a TrackUsageBatch response: its code is never OK unless it committed.
pub(super) fn usage_result(r: Result<Receipt, LedgerError>) -> pb::TrackUsageResult {
    match r {
        Ok(r) => pb::TrackUsageResult {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            transaction_id: r.transaction_id.to_string(),
            balance: r.balance,
            replayed: r.replayed,
            tokens: r.charged.map_or(0, |c| c.tokens),
            price_id: price_id_text(r.charged.and_then(|c| c.price_id)),
        },
        Err(err) => {
            let status = Status::from(err);
            pb::TrackUsageResult {
                code: status.code() as i32,
                message: status.message().to_string(),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console shows a kind as its proto name lowercased; the database stores the domain's
    /// name. They must be one and the same.
    #[test]
    fn every_domain_name_is_its_proto_name_lowercased() {
        for kind in EntryKind::ALL {
            let pb_kind = entry_kind_to_pb(kind);
            assert_eq!(entry_kind_from_pb(pb_kind as i32).unwrap(), kind);
            let name = pb_kind.as_str_name().strip_prefix("TRANSACTION_KIND_");
            assert_eq!(name.map(str::to_lowercase).as_deref(), Some(kind.as_str()));
        }
        for source in GrantSource::ALL {
            let pb_source = grant_source_to_pb(source);
            assert_eq!(grant_source_from_pb(pb_source as i32), Some(source));
            let name = pb_source.as_str_name().strip_prefix("GRANT_SOURCE_");
            assert_eq!(
                name.map(str::to_lowercase).as_deref(),
                Some(source.as_str())
            );
        }
        for source in ReversalSource::ALL {
            let pb_source = reversal_source_to_pb(source);
            assert_eq!(reversal_source_from_pb(pb_source as i32), Some(source));
            let name = pb_source.as_str_name().strip_prefix("REVERSAL_SOURCE_");
            assert_eq!(
                name.map(str::to_lowercase).as_deref(),
                Some(source.as_str())
            );
        }
    }
}
