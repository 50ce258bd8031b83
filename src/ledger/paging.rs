//! Page tokens: opaque to callers, checked on the way back in so a forged or foreign token is
//! refused as INVALID_ARGUMENT rather than misread or passed to SQL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::domain::{
    AccountCursor, AccountOrder, AccountSummary, StripeEventCursor, StripeEventRow, USER_ID_LEN_MAX,
};
use crate::error::LedgerError;

/// Longest page token accepted; real ones are about 20 characters.
const PAGE_TOKEN_LEN_MAX: usize = 64;
/// Prefix of page tokens, so that a random string is rejected rather than misread.
const PAGE_TOKEN_PREFIX: &str = "seq:";

pub(super) fn encode_account_token(order: AccountOrder, last: &AccountSummary) -> String {
    let raw = match order {
        AccountOrder::UserId => format!("u:{}", last.user_id),
        AccountOrder::BalanceDesc => format!("b:{}:{}", last.balance.balance, last.user_id),
        AccountOrder::LastActivityDesc => format!(
            "t:{}:{}",
            last.balance
                .updated_at
                .map(|t| t.timestamp_micros())
                .unwrap_or_default(),
            last.user_id
        ),
    };
    URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn decode_account_token(
    order: AccountOrder,
    token: &str,
) -> Result<Option<AccountCursor>, LedgerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        LedgerError::invalid(
            "page_token",
            "is not a token this server issued for this order",
        )
    };
    if token.len() > 4 * USER_ID_LEN_MAX {
        return Err(bad());
    }
    let raw =
        String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    // The cursor's user id goes to SQL: only what a user id may hold.
    if raw.chars().any(char::is_control) {
        return Err(bad());
    }
    let mut parts = raw.splitn(3, ':');
    let cursor = match (order, parts.next()) {
        (AccountOrder::UserId, Some("u")) => {
            AccountCursor::UserId(raw.get(2..).ok_or_else(bad)?.to_string())
        }
        (AccountOrder::BalanceDesc, Some("b")) => {
            let balance = parts.next().and_then(|b| b.parse().ok()).ok_or_else(bad)?;
            AccountCursor::Balance(balance, parts.next().ok_or_else(bad)?.to_string())
        }
        (AccountOrder::LastActivityDesc, Some("t")) => {
            // A server issues the epoch for "no activity yet" and later times otherwise; an
            // earlier one is forged, and some (before 4714 BC) PostgreSQL cannot even compare.
            let micros: i64 = parts
                .next()
                .and_then(|b| b.parse().ok())
                .filter(|m| *m >= 0)
                .ok_or_else(bad)?;
            let at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
            AccountCursor::LastActivity(at, parts.next().ok_or_else(bad)?.to_string())
        }
        _ => return Err(bad()),
    };
    Ok(Some(cursor))
}

/// Longest Stripe event id a cursor may carry (Stripe's are about 30 characters).
pub const STRIPE_EVENT_ID_LEN_MAX: usize = 255;

pub(super) fn encode_stripe_event_token(last: &StripeEventRow) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "e:{}:{}",
        last.first_seen_at.timestamp_micros(),
        last.event_id
    ))
}

pub(super) fn decode_stripe_event_token(
    token: &str,
) -> Result<Option<StripeEventCursor>, LedgerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || LedgerError::invalid("page_token", "is not a token this server issued");
    if token.len() > 2 * STRIPE_EVENT_ID_LEN_MAX {
        return Err(bad());
    }
    let raw =
        String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    if raw.chars().any(char::is_control) {
        return Err(bad());
    }
    let mut parts = raw.splitn(3, ':');
    if parts.next() != Some("e") {
        return Err(bad());
    }
    // Servers issue times after the epoch only; PostgreSQL cannot compare some earlier ones.
    let micros: i64 = parts
        .next()
        .and_then(|m| m.parse().ok())
        .filter(|m| *m >= 0)
        .ok_or_else(bad)?;
    let first_seen_at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let event_id = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
    Ok(Some(StripeEventCursor {
        first_seen_at,
        event_id: event_id.to_string(),
    }))
}

/// Prefix of offset tokens (summaries, whose groups have no natural key to page by).
const OFFSET_TOKEN_PREFIX: &str = "off:";

pub(super) fn encode_offset_token(offset: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{OFFSET_TOKEN_PREFIX}{offset}"))
}

pub(super) fn decode_offset_token(token: &str) -> Result<i64, LedgerError> {
    if token.is_empty() {
        return Ok(0);
    }
    let bad = || LedgerError::invalid("page_token", "is not a token this server issued");
    if token.len() > PAGE_TOKEN_LEN_MAX {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    String::from_utf8(raw)
        .ok()
        .and_then(|t| t.strip_prefix(OFFSET_TOKEN_PREFIX)?.parse::<i64>().ok())
        .filter(|o| *o > 0)
        .ok_or_else(bad)
}

pub(super) fn encode_page_token(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{seq}"))
}

pub(super) fn decode_page_token(token: &str) -> Result<Option<i64>, LedgerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || LedgerError::invalid("page_token", "is not a token this server issued");
    if token.len() > PAGE_TOKEN_LEN_MAX {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let seq = text
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(bad)?;
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        assert_eq!(decode_page_token(&encode_page_token(42)).unwrap(), Some(42));
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("not-a-token").is_err());
        assert!(decode_page_token(&URL_SAFE_NO_PAD.encode("seq:-1")).is_err());
        assert!(decode_page_token(&"A".repeat(PAGE_TOKEN_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn stripe_event_tokens_round_trip_and_forgeries_are_rejected() {
        let at = chrono::DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let row = StripeEventRow {
            event_id: "evt_1:x".into(),
            event_type: "charge.refunded".into(),
            outcome: "reversed".into(),
            first_outcome: "reversed".into(),
            detail: None,
            deliveries: 1,
            livemode: false,
            user_id: None,
            transaction_id: None,
            api_version: None,
            payment_intent: None,
            first_seen_at: at,
            last_seen_at: at,
        };
        let cursor = decode_stripe_event_token(&encode_stripe_event_token(&row))
            .unwrap()
            .unwrap();
        assert_eq!(
            (cursor.first_seen_at, cursor.event_id.as_str()),
            (at, "evt_1:x")
        );
        for forged in ["e:-1:evt", "e:1:", "s:1:evt", "e:x:evt", "e:1:ev\0t"] {
            let token = URL_SAFE_NO_PAD.encode(forged);
            assert!(decode_stripe_event_token(&token).is_err(), "{forged}");
        }
        assert!(decode_stripe_event_token(&"A".repeat(2 * STRIPE_EVENT_ID_LEN_MAX + 1)).is_err());
        assert_eq!(decode_stripe_event_token("").unwrap(), None);
    }

    #[test]
    fn an_account_token_carrying_a_control_character_is_rejected() {
        let forged = URL_SAFE_NO_PAD.encode("u:a\0b");
        assert!(decode_account_token(AccountOrder::UserId, &forged).is_err());
        let fine = URL_SAFE_NO_PAD.encode("u:ab");
        assert_eq!(
            decode_account_token(AccountOrder::UserId, &fine).unwrap(),
            Some(AccountCursor::UserId("ab".into()))
        );
    }

    #[test]
    fn an_activity_token_from_before_the_epoch_is_rejected() {
        // One microsecond before PostgreSQL's earliest timestamp: it answered "out of range",
        // which reached the caller as INTERNAL.
        let min = format!("t:{}:a", i64::MIN);
        for forged in ["t:-210866803200000001:a", "t:-1:a", min.as_str()] {
            let token = URL_SAFE_NO_PAD.encode(forged);
            assert!(
                decode_account_token(AccountOrder::LastActivityDesc, &token).is_err(),
                "{forged}"
            );
        }
        let never_active = URL_SAFE_NO_PAD.encode("t:0:a");
        assert!(decode_account_token(AccountOrder::LastActivityDesc, &never_active).is_ok());
    }
}
