//! Stripe webhook signatures, exactly as Stripe specifies them.
//!
//! The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]` (other schemes such
//! as `v0` are ignored). Each `v1` is the lowercase hex HMAC-SHA256, keyed with the whole
//! `whsec_...` secret string, of `"{t}.{raw body}"`. A request is genuine when any `v1` matches
//! any configured secret (several are accepted during a secret rotation) and `t` is within the
//! tolerance of now. Comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Longest `Stripe-Signature` header accepted; real ones are under 300 bytes.
const SIGNATURE_HEADER_LEN_MAX: usize = 4096;
/// Most `v1` signatures looked at in one header.
const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// Why a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("malformed Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature matches any configured webhook secret")]
    NoMatch,
    #[error(
        "signature timestamp {timestamp} is outside the {tolerance_secs} s tolerance (now {now})"
    )]
    Stale {
        timestamp: i64,
        now: i64,
        tolerance_secs: i64,
    },
}

/// Verifies `body` against `header` with any of `secrets`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > SIGNATURE_HEADER_LEN_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            "v1" if candidates.len() < SIGNATURES_PER_HEADER_MAX => {
                // A v1 that is not hex cannot match; skip it rather than reject the header.
                if let Ok(bytes) = hex::decode(value) {
                    candidates.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp.ok_or(SignatureError::Malformed)?;
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    let mut matched = false;
    for secret in secrets {
        let expected = sign_raw(secret, timestamp_text, body);
        for candidate in &candidates {
            // Evaluate every pair, so timing does not tell which one matched.
            matched |= bool::from(expected.as_slice().ct_eq(candidate.as_slice()));
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    // In i128: a genuine but absurd timestamp (i64::MIN) is stale, not an overflow panic.
    if (i128::from(now) - i128::from(timestamp)).abs() > i128::from(tolerance_secs) {
        return Err(SignatureError::Stale {
            timestamp,
            now,
            tolerance_secs,
        });
    }
    Ok(())
}

fn sign_raw(secret: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The `v1` signature Stripe would send: lowercase hex. Used by tests and the docs' examples.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(sign_raw(secret, &timestamp.to_string(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    fn header(t: i64, sigs: &[String]) -> String {
        let mut h = format!("t={t}");
        for s in sigs {
            h.push_str(&format!(",v1={s}"));
        }
        h
    }

    #[test]
    fn a_genuine_signature_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header(1_000, &[sign(SECRET, 1_000, body)]);
        assert_eq!(verify(Some(&h), body, &[SECRET.into()], 300, 1_100), Ok(()));
    }

    #[test]
    fn a_known_vector_matches() {
        // HMAC-SHA256(key="whsec_test_secret", "1700000000.{}") computed independently.
        let expected = {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(b"1700000000.{}");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(sign(SECRET, 1_700_000_000, b"{}"), expected);
        assert_eq!(expected.len(), 64);
        assert_eq!(expected, expected.to_lowercase());
    }

    #[test]
    fn any_matching_v1_is_enough_and_other_schemes_are_ignored() {
        let body = b"{}";
        let good = sign(SECRET, 10, body);
        let h = format!("t=10,v0=deadbeef,v1={},v1={good}", "0".repeat(64));
        assert_eq!(verify(Some(&h), body, &[SECRET.into()], 300, 10), Ok(()));
    }

    #[test]
    fn any_configured_secret_may_match() {
        let body = b"{}";
        let h = header(10, &[sign("whsec_new", 10, body)]);
        assert_eq!(
            verify(
                Some(&h),
                body,
                &["whsec_old".into(), "whsec_new".into()],
                300,
                10
            ),
            Ok(())
        );
    }

    #[test]
    fn a_genuine_signature_at_an_extreme_timestamp_is_stale_not_a_panic() {
        let body = b"{}";
        for (t, now) in [
            (i64::MIN, 0),
            (1, i64::MIN),
            (i64::MAX, i64::MIN),
            (i64::MIN, i64::MAX),
        ] {
            let h = header(t, &[sign(SECRET, t, body)]);
            assert!(
                matches!(
                    verify(Some(&h), body, &[SECRET.into()], 300, now),
                    Err(SignatureError::Stale { .. })
                ),
                "t={t} now={now}"
            );
        }
        let h = header(i64::MIN, &[sign(SECRET, i64::MIN, body)]);
        assert_eq!(
            verify(Some(&h), body, &[SECRET.into()], i64::MAX, i64::MIN + 5),
            Ok(())
        );
    }

    #[test]
    fn tampering_staleness_and_garbage_are_rejected() {
        let body = b"{\"amount\":1}";
        let h = header(10, &[sign(SECRET, 10, body)]);
        assert_eq!(
            verify(Some(&h), b"{\"amount\":2}", &[SECRET.into()], 300, 10),
            Err(SignatureError::NoMatch)
        );
        assert!(matches!(
            verify(Some(&h), body, &[SECRET.into()], 300, 311),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            verify(None, body, &[SECRET.into()], 300, 10),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("v1=abc"), body, &[SECRET.into()], 300, 10),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=10"), body, &[SECRET.into()], 300, 10),
            Err(SignatureError::NoMatch)
        );
        // A signature made with a different timestamp than the header claims.
        let forged = header(11, &[sign(SECRET, 10, body)]);
        assert_eq!(
            verify(Some(&forged), body, &[SECRET.into()], 300, 11),
            Err(SignatureError::NoMatch)
        );
    }
}
