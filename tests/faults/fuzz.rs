//! Property-based fuzzing of the service's three input boundaries, each with what must hold for
//! *any* input:
//!
//! 1. the `Stripe-Signature` parser (`webhook::signature::verify`): never panics, and accepts a
//!    header only when it carries a genuine signature of this body within the tolerance;
//! 2. the Stripe event mapper (`webhook::event`): never panics on arbitrary JSON, arbitrary bytes
//!    or mutated real Stripe payloads; and the hosted webhook never answers 500 (nor drops the
//!    connection) for a correctly signed event, however malformed its content;
//! 3. request validation over real gRPC: no call answers INTERNAL or UNKNOWN, and a call refused
//!    as INVALID_ARGUMENT or OUT_OF_RANGE leaves the journal as it was.
//!
//! Case counts are modest so the file runs in seconds in a debug build; `PROPTEST_CASES=5000`
//! runs every property longer. A failing case is shrunk and printed; proptest keeps it under
//! `proptest-regressions/` and replays it first on the next run.

use std::future::Future;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tonic::{Code, Status};

use token_ledger::domain::{AMOUNT_PAID_CENTS_MAX, TOKENS_MAX};
use token_ledger::pb;
use token_ledger::transport::grpc::USAGE_BATCH_EVENTS_MAX;
use token_ledger::webhook::event;
use token_ledger::webhook::signature::{self, SignatureError};

use crate::common::stripe;
use crate::common::{admin, TestApp, TestOptions, WEBHOOK_SECRET};

/// Cases for pure functions: cheap, so many.
const PURE_CASES: u32 = 256;
/// Cases for each property driven over the network against a real server and database.
const LIVE_CASES: u32 = 64;

/// `cases` unless `PROPTEST_CASES` asks for another number (a longer hunt).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------------
// Shared generators.

/// Lengths around every text limit of the service (user ids and keys 128, Stripe ids 255,
/// reasons 1000, the signature header 4096) and well past them.
const LENGTHS: &[usize] = &[
    127, 128, 129, 254, 255, 256, 999, 1_000, 1_001, 4_097, 10_000,
];

/// Any text a caller might send: plausible ids most of the time, else empty, any Unicode,
/// control characters and odd whitespace at the edges, non-ASCII, runs of one- to four-byte
/// characters at and past the limits (so characters and bytes disagree), and random text past
/// what a PostgreSQL index entry holds.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z][a-z0-9_-]{0,15}",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[ \t\n\r\x00\x7f\u{85}\u{a0}\u{2028}]{1,3}[a-z]{0,4}[ \t\x00]{0,2}",
        1 => "[a-z]{0,3}[\x00-\x1f][a-z]{0,3}",
        1 => "[é漢🙂\u{200b}\u{feff}\u{fffd}\u{10ffff}]{1,12}",
        1 => (select(LENGTHS), select(vec!['a', 'é', '漢', '🙂']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        // Long and incompressible, so it stays long in a PostgreSQL index entry.
        1 => "[a-zA-Z0-9]{2600,3200}",
    ]
    .boxed()
}

/// Text that is absent (empty) as often as present.
fn optional_text() -> BoxedStrategy<String> {
    prop_oneof![2 => Just(String::new()), 3 => text()].boxed()
}

/// Token amounts: valid ones, every boundary, and any i64.
fn amount() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => 1i64..=1_000_000,
        2 => select(vec![
            0,
            -1,
            1,
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            i64::MAX - 1,
            TOKENS_MAX,
            TOKENS_MAX + 1,
            -TOKENS_MAX,
            AMOUNT_PAID_CENTS_MAX,
            AMOUNT_PAID_CENTS_MAX + 1,
        ]),
        2 => any::<i64>(),
    ]
    .boxed()
}

/// Integers as JSON carries them: boundaries of i64 and of what fits a timestamp, plausible
/// amounts and instants, and anything.
fn extreme_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        2 => select(vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            i64::MAX - 1,
            i64::MAX,
            i64::MAX - 28 * 86_400,
            253_402_300_799, // 9999-12-31T23:59:59Z
            253_402_300_800,
            -62_135_596_800, // 0001-01-01T00:00:00Z
            8_210_298_412_799, // chrono's last second
        ]),
        1 => 0i64..100_000,
        1 => 1_600_000_000i64..1_900_000_000,
        2 => any::<i64>(),
    ]
    .boxed()
}

/// Enum fields: every defined value, and numbers no enum defines.
fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![3 => 0i32..8, 1 => any::<i32>()].boxed()
}

// ------------------------------------------------------------------------------------------------
// 1. The Stripe-Signature header parser.

const SIG_SECRET: &str = "whsec_fuzz_0123456789";
const SIG_TOLERANCE_SECS: i64 = 300;
const SIG_NOW: i64 = 1_700_000_000;

/// HMAC-SHA256 of `"{t_text}.{body}"`, computed here independently of the code under test.
fn hmac_hex(secret: &str, t_text: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The oracle: whether `header` names, as its last `t`, a timestamp for which one of its `v1`s
/// is a genuine signature of `body` under one of `secrets`. `verify` may refuse more (stale,
/// too long, too many signatures) but must never accept less.
fn genuinely_signed(header: &str, body: &[u8], secrets: &[String]) -> bool {
    let parts: Vec<(&str, &str)> = header
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .collect();
    let Some(t) = parts.iter().rev().find(|(k, _)| *k == "t").map(|(_, v)| *v) else {
        return false;
    };
    parts.iter().filter(|(k, _)| *k == "v1").any(|(_, v)| {
        secrets
            .iter()
            .any(|s| v.eq_ignore_ascii_case(&hmac_hex(s, t, body)))
    })
}

/// Values of a `t=`: numbers of every size and sign, signs and leading zeros, hex, empty, junk.
fn timestamp_text() -> BoxedStrategy<String> {
    prop_oneof![
        extreme_i64().prop_map(|n| n.to_string()),
        "[+-]?0*[0-9]{1,30}",
        "0x[0-9a-f]{1,8}",
        Just(String::new()),
        text(),
    ]
    .boxed()
}

/// Values of a `v1=`/`v0=`: hex of any length and case, and anything.
fn signature_text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40).prop_map(hex::encode),
        "[0-9a-fA-F]{0,70}",
        text(),
    ]
    .boxed()
}

/// One comma-separated part of a header.
fn header_part() -> BoxedStrategy<String> {
    prop_oneof![
        2 => timestamp_text().prop_map(|t| format!("t={t}")),
        3 => signature_text().prop_map(|s| format!("v1={s}")),
        1 => signature_text().prop_map(|s| format!("v0={s}")),
        1 => Just(String::new()),
        1 => Just("=".to_string()),
        1 => "[ \t]{0,2}[a-z0-9]{0,3}[ \t]{0,2}=?[ \t]{0,2}[a-z0-9=]{0,8}[ \t]{0,2}",
        1 => text(),
    ]
    .boxed()
}

/// Whole headers: built from plausible parts joined by one or more commas, any string, any
/// bytes made into a string, and ones past the length limit.
fn header() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec((header_part(), select(vec![",", ",,", ", ", " ,"])), 0..12)
            .prop_map(|parts| parts.into_iter().map(|(p, sep)| p + sep).collect()),
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (1_000usize..1_400).prop_map(|n| "t=1,v1=00".repeat(n)),
    ]
    .boxed()
}

fn secrets() -> BoxedStrategy<Vec<String>> {
    prop::collection::vec(
        prop_oneof![3 => Just(SIG_SECRET.to_string()), 1 => text()],
        0..3,
    )
    .boxed()
}

fn body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any::<String>().prop_map(String::into_bytes),
    ]
    .boxed()
}

/// Parts that neither name a timestamp nor a v1 signature: they must not change the verdict.
fn neutral_part() -> BoxedStrategy<String> {
    header_part()
        .prop_filter("names t or v1, or holds a comma", |p| {
            !p.contains(',') && !matches!(p.trim().split_once('='), Some(("t" | "v1", _)))
        })
        .boxed()
}

proptest! {
    #![proptest_config(config(PURE_CASES))]

    /// Any header, body, secrets, tolerance and clock: no panic, and Ok only when the header is
    /// genuinely signed.
    #[test]
    fn verify_accepts_only_a_genuine_signature(
        header in header(),
        body in body(),
        secrets in secrets(),
        tolerance in prop_oneof![Just(SIG_TOLERANCE_SECS), any::<i64>()],
        now in extreme_i64(),
    ) {
        let result = signature::verify(Some(&header), &body, &secrets, tolerance, now);
        if result.is_ok() {
            prop_assert!(genuinely_signed(&header, &body, &secrets), "accepted {header:?}");
        }
        if header.len() > 4096 {
            prop_assert_eq!(result, Err(SignatureError::Malformed));
        }
    }

    /// A genuine signature within the tolerance verifies wherever it sits among other parts
    /// (unknown schemes, empty parts, repeated commas, up to seven wrong v1s).
    #[test]
    fn a_genuine_signature_among_any_other_parts_verifies(
        body in body(),
        now in any::<i64>(),
        skew in -SIG_TOLERANCE_SECS..=SIG_TOLERANCE_SECS,
        neutral in prop::collection::vec(neutral_part(), 0..6),
        decoys in prop::collection::vec(prop::collection::vec(any::<u8>(), 32), 0..7),
        order in any::<Index>(),
        rotated in any::<bool>(),
    ) {
        let t = now.saturating_add(skew);
        let mut parts: Vec<String> = neutral;
        parts.extend(decoys.iter().map(|d| format!("v1={}", hex::encode(d))));
        parts.push(format!("v1={}", signature::sign(SIG_SECRET, t, &body)));
        let len = parts.len();
        parts.rotate_left(order.index(len));
        // The timestamp must be the last `t`: put it anywhere, no other part names one.
        parts.insert(order.index(len + 1), format!("t={t}"));
        let header = parts.join(",");
        let secrets: Vec<String> = if rotated {
            vec!["whsec_old".into(), SIG_SECRET.into()]
        } else {
            vec![SIG_SECRET.into()]
        };
        let result = signature::verify(Some(&header), &body, &secrets, SIG_TOLERANCE_SECS, now);
        if header.len() > 4096 {
            prop_assert_eq!(result, Err(SignatureError::Malformed));
        } else {
            prop_assert_eq!(result, Ok(()), "{}", header);
        }
    }

    /// A genuine signature at any timestamp, checked at any time: no panic (even where
    /// `now - t` does not fit an i64), and Ok exactly when within the tolerance.
    #[test]
    fn a_genuine_signature_at_any_timestamp_is_fresh_or_stale(
        body in body(),
        t in extreme_i64(),
        now in extreme_i64(),
        tolerance in prop_oneof![Just(SIG_TOLERANCE_SECS), 0i64..1_000_000, any::<i64>()],
    ) {
        let header = format!("t={t},v1={}", signature::sign(SIG_SECRET, t, &body));
        let result = signature::verify(Some(&header), &body, &[SIG_SECRET.into()], tolerance, now);
        let fresh = (i128::from(now) - i128::from(t)).abs() <= i128::from(tolerance);
        if fresh {
            prop_assert_eq!(result, Ok(()));
        } else {
            let is_stale = matches!(result, Err(SignatureError::Stale { .. }));
            prop_assert!(is_stale, "{:?}", result);
        }
    }

    /// Changing any one character of the signature's hex, the body, the timestamp or the
    /// secret never verifies. (Hex is read case-insensitively, so the same digit in the other
    /// case is the same signature: that one still verifies.)
    #[test]
    fn a_tampered_signature_never_verifies(
        body in body(),
        skew in -SIG_TOLERANCE_SECS..=SIG_TOLERANCE_SECS,
        at in any::<Index>(),
        replacement in prop_oneof![select("0123456789abcdefABCDEF".chars().collect::<Vec<_>>()), any::<char>()],
        other_body in body(),
        other_secret in text(),
    ) {
        let t = SIG_NOW + skew;
        let good = signature::sign(SIG_SECRET, t, &body);
        let secrets = [SIG_SECRET.to_string()];
        let verify = |h: &str, b: &[u8], s: &[String]| {
            signature::verify(Some(h), b, s, SIG_TOLERANCE_SECS, SIG_NOW)
        };

        let i = at.index(good.len());
        let original = good.as_bytes()[i] as char;
        if replacement != original {
            let mut flipped = good.clone();
            flipped.replace_range(i..=i, replacement.encode_utf8(&mut [0; 4]));
            let result = verify(&format!("t={t},v1={flipped}"), &body, &secrets);
            if replacement.to_ascii_lowercase() == original {
                prop_assert_eq!(result, Ok(()));
            } else {
                prop_assert_eq!(result, Err(SignatureError::NoMatch), "{}", flipped);
            }
        }
        if other_body != body {
            prop_assert_eq!(
                verify(&format!("t={t},v1={good}"), &other_body, &secrets),
                Err(SignatureError::NoMatch)
            );
        }
        prop_assert_eq!(
            verify(&format!("t={},v1={good}", t + 1), &body, &secrets),
            Err(SignatureError::NoMatch)
        );
        if other_secret != SIG_SECRET {
            prop_assert_eq!(
                verify(&format!("t={t},v1={good}"), &body, &[other_secret]),
                Err(SignatureError::NoMatch)
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// 2. The Stripe event mapper.

/// Every field name the mapper reads, so generated objects reach its deep paths.
const FIELD_NAMES: &[&str] = &[
    "id",
    "type",
    "livemode",
    "data",
    "object",
    "mode",
    "status",
    "payment_status",
    "payment_intent",
    "subscription",
    "invoice",
    "customer",
    "amount",
    "amount_total",
    "amount_subtotal",
    "amount_paid",
    "amount_refunded",
    "currency",
    "created",
    "client_reference_id",
    "metadata",
    "user_id",
    "userId",
    "pack",
    "product",
    "price_id",
    "lookup_key",
    "line_items",
    "lines",
    "has_more",
    "price",
    "pricing",
    "price_details",
    "plan",
    "period",
    "start",
    "end",
    "proration",
    "parent",
    "subscription_details",
    "subscription_item_details",
    "invoice_item_details",
    "billing_reason",
    "charge",
    "ended_at",
    "canceled_at",
];

/// Paths the mapper reads, to be set (creating what is missing on the way) by a mutation.
const READ_PATHS: &[&[&str]] = &[
    &["id"],
    &["mode"],
    &["status"],
    &["payment_status"],
    &["payment_intent"],
    &["subscription"],
    &["invoice"],
    &["customer"],
    &["amount"],
    &["amount_total"],
    &["amount_subtotal"],
    &["amount_paid"],
    &["amount_refunded"],
    &["currency"],
    &["created"],
    &["client_reference_id"],
    &["metadata"],
    &["metadata", "user_id"],
    &["metadata", "userId"],
    &["metadata", "pack"],
    &["metadata", "product"],
    &["line_items", "data"],
    &["lines"],
    &["lines", "data"],
    &["lines", "has_more"],
    &["lines", "data", "0", "price"],
    &["lines", "data", "0", "price", "id"],
    &["lines", "data", "0", "pricing", "price_details", "price"],
    &["lines", "data", "0", "period"],
    &["lines", "data", "0", "period", "start"],
    &["lines", "data", "0", "period", "end"],
    &["lines", "data", "0", "amount"],
    &[
        "lines",
        "data",
        "0",
        "parent",
        "subscription_item_details",
        "proration",
    ],
    &["parent"],
    &["parent", "subscription_details", "subscription"],
    &["parent", "subscription_details", "metadata"],
    &["parent", "subscription_details", "metadata", "user_id"],
    &["billing_reason"],
    &["charge"],
    &["ended_at"],
    &["canceled_at"],
];

/// Strings the service gives meaning to: event types, catalog names, price ids, statuses.
const MEANINGFUL_STRINGS: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "invoice.payment_succeeded",
    "charge.refunded",
    "charge.dispute.created",
    "customer.subscription.deleted",
    "payment",
    "subscription",
    "complete",
    "paid",
    "unpaid",
    "no_payment_required",
    "subscription_create",
    "subscription_cycle",
    "subscription_update",
    "pack_2m",
    "pack_5m",
    "vision_pro_annual",
    "vision_pro_28day",
    "price_pack_12m",
    "price_vision_pro_28day",
    "token_pack_5m",
    "pi_seed",
    "usd",
];

fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        2 => select(MEANINGFUL_STRINGS).prop_map(str::to_string),
        3 => text(),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        extreme_i64().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![9_900i64, 19_900, 39_900, 99_900]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(vec![f64::MIN, f64::MAX, -0.0, 1e300, 9.9e3, 0.5]).prop_map(Value::from),
        json_string().prop_map(Value::String),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![3 => select(FIELD_NAMES).prop_map(str::to_string), 1 => text()].boxed()
}

/// Any JSON tree, its object keys mostly the names the mapper reads.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((json_key(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// A mapper path, as the mappers take it.
fn read_path() -> BoxedStrategy<Vec<&'static str>> {
    prop_oneof![
        select(READ_PATHS).prop_map(<[&str]>::to_vec),
        prop::collection::vec(select(FIELD_NAMES), 0..5),
    ]
    .boxed()
}

/// Whether a string or key anywhere in `v` holds a NUL.
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Runs every reader over `v` and checks what each promises of what it returns.
fn map_everything(v: &Value, paths: &[Vec<&str>]) -> Result<(), TestCaseError> {
    if let Ok(s) = event::checkout_session(v) {
        prop_assert!(!s.id.is_empty());
    }
    if let Ok(i) = event::invoice(v) {
        prop_assert!(!i.id.is_empty());
    }
    if let Ok(c) = event::charge_refund(v) {
        prop_assert!(!c.charge_id.is_empty());
    }
    if let Ok(d) = event::dispute(v) {
        prop_assert!(!d.id.is_empty());
    }
    if let Ok(s) = event::ended_subscription(v) {
        prop_assert!(!s.id.is_empty());
    }
    for path in paths {
        if let Some(t) = event::text(v, path) {
            prop_assert!(!t.is_empty());
        }
        let _ = event::int(v, path);
    }
    let as_slices: Vec<&[&str]> = paths.iter().map(Vec::as_slice).collect();
    for hint in event::user_hints(v, &as_slices) {
        prop_assert!(!hint.is_empty());
    }
    Ok(())
}

/// One step into a JSON tree.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    At(usize),
}

/// Every path to a value in `v` (the root excluded).
fn all_paths(v: &Value) -> Vec<Vec<Step>> {
    fn walk(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match v {
            Value::Object(o) => o.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (Step::At(i), c))
                .collect(),
            _ => return,
        };
        for (step, child) in children {
            prefix.push(step);
            out.push(prefix.clone());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Replaces (or, with `None`, removes) the value at an existing `path`.
fn replace_at(v: &mut Value, path: &[Step], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for step in parents {
        cur = match (step, cur) {
            (Step::Key(k), Value::Object(o)) => o.get_mut(k).unwrap(),
            (Step::At(i), Value::Array(a)) => &mut a[*i],
            _ => unreachable!("paths come from all_paths"),
        };
    }
    match (last, cur, new) {
        (Step::Key(k), Value::Object(o), Some(n)) => {
            o.insert(k.clone(), n);
        }
        (Step::Key(k), Value::Object(o), None) => {
            o.remove(k);
        }
        (Step::At(i), Value::Array(a), Some(n)) => a[*i] = n,
        (Step::At(i), Value::Array(a), None) => {
            a.remove(*i);
        }
        _ => unreachable!("paths come from all_paths"),
    }
}

/// Sets the value at `path`, making objects (or, for a numeric step, arrays) on the way.
fn set_path(v: &mut Value, path: &[&str], new: Value) {
    let mut cur = v;
    for step in path {
        cur = match step.parse::<usize>() {
            Ok(i) => {
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let a = cur.as_array_mut().unwrap();
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                &mut a[i]
            }
            Err(_) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                cur.as_object_mut()
                    .unwrap()
                    .entry(step.to_string())
                    .or_insert(Value::Null)
            }
        };
    }
    *cur = new;
}

/// One change to a payload: a value anywhere in it replaced or removed, or a path the mapper
/// reads set to anything.
#[derive(Debug, Clone)]
enum Mutation {
    Existing(Index, Option<Value>),
    Read(&'static [&'static str], Value),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        (any::<Index>(), prop::option::weighted(0.85, json_value()))
            .prop_map(|(i, v)| Mutation::Existing(i, v)),
        (select(READ_PATHS), json_value()).prop_map(|(p, v)| Mutation::Read(p, v)),
    ]
    .boxed()
}

fn apply(v: &mut Value, m: &Mutation) {
    match m {
        Mutation::Existing(at, new) => {
            let paths = all_paths(v);
            if !paths.is_empty() {
                replace_at(v, &paths[at.index(paths.len())], new.clone());
            }
        }
        Mutation::Read(path, new) => set_path(v, path, new.clone()),
    }
}

/// The real Stripe resources under tests/fixtures/stripe.
const FIXTURES: &[&str] = &[
    "checkout_session",
    "invoice",
    "charge",
    "dispute",
    "subscription",
    "event",
];

proptest! {
    #![proptest_config(config(PURE_CASES))]

    /// Any JSON tree, read by every mapper along any path: no panic, and what is returned
    /// keeps its promises (ids and texts are never empty).
    #[test]
    fn the_mappers_read_any_json(v in json_value(), paths in prop::collection::vec(read_path(), 0..6)) {
        map_everything(&v, &paths)?;
        map_everything(&json!({ "data": { "object": v } }), &paths)?;
    }

    /// Any bytes, any JSON text and any envelope with any object: no panic, and an accepted
    /// envelope has an id and a type and holds no NUL.
    #[test]
    fn parse_envelope_takes_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            (json_value(), json_value(), json_value(), json_value()).prop_map(|(id, ty, live, object)| {
                serde_json::to_vec(&json!({"id": id, "type": ty, "livemode": live, "data": {"object": object}})).unwrap()
            }),
            (1usize..5_000, select(vec!["[", "{\"a\":", "[{\"data\":"])).prop_map(|(n, open)| open.repeat(n).into_bytes()),
        ],
    ) {
        if let Ok(envelope) = event::parse_envelope(&bytes) {
            prop_assert!(!envelope.id.is_empty());
            prop_assert!(!envelope.event_type.is_empty());
            // Nothing PostgreSQL cannot store gets past the envelope.
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert!(!holds_nul(&parsed));
        }
    }

    /// A real Stripe payload with a few of its values replaced, removed or added (any JSON at
    /// any depth, or at a path the mapper reads): no panic, directly or through the envelope.
    #[test]
    fn the_mappers_read_any_mutated_fixture(
        name in select(FIXTURES),
        mutations in prop::collection::vec(mutation(), 1..4),
        paths in prop::collection::vec(read_path(), 0..4),
    ) {
        let mut object = stripe::resource(name, json!({}));
        for m in &mutations {
            apply(&mut object, m);
        }
        map_everything(&object, &paths)?;
        let body = serde_json::to_vec(&stripe::event("evt_fuzz", "invoice.paid", object)).unwrap();
        if let Ok(envelope) = event::parse_envelope(&body) {
            map_everything(&envelope.object, &paths)?;
        }
    }
}

/// A Stripe event as the adapter would act on it, before mutation: its type and object.
fn scenario() -> BoxedStrategy<(&'static str, Value)> {
    let id = "[a-z0-9]{8}";
    let user = prop_oneof![3 => Just("user-fuzz".to_string()), 1 => text()];
    let product = select(vec![
        "pack_2m",
        "pack_5m",
        "vision_pro_annual",
        "vision_pro_28day",
        "nope",
    ]);
    let price = select(vec![
        "price_vision_pro_annual",
        "price_vision_pro_28day",
        "price_pack_2m",
        "price_none",
    ]);
    let pi = prop_oneof![
        Just("pi_seed".to_string()),
        id.prop_map(|s| format!("pi_{s}"))
    ];
    prop_oneof![
        (id, user.clone(), product.clone(), amount()).prop_map(|(id, user, pack, cents)| (
            "checkout.session.completed",
            stripe::pack_checkout(&format!("cs_{id}"), &format!("pi_{id}"), &user, pack, cents)
        )),
        (id, user.clone(), product, extreme_i64()).prop_map(|(id, user, product, created)| (
            "checkout.session.completed",
            stripe::subscription_checkout(
                &format!("cs_{id}"),
                &format!("sub_{id}"),
                &format!("in_{id}"),
                &user,
                product,
                created
            )
        )),
        (
            id,
            select(vec![
                "subscription_create",
                "subscription_cycle",
                "subscription_update",
                "manual"
            ]),
            price,
            extreme_i64(),
            extreme_i64(),
            prop::option::of(user),
        )
            .prop_map(|(id, reason, price, start, end, user)| (
                "invoice.paid",
                stripe::invoice_paid(
                    &format!("in_{id}"),
                    &format!("sub_{id}"),
                    reason,
                    price,
                    start,
                    end,
                    user.as_deref(),
                    &format!("cus_{id}")
                )
            )),
        (id, pi.clone(), amount(), amount()).prop_map(|(id, pi, amount, refunded)| (
            "charge.refunded",
            stripe::charge_refunded(&format!("ch_{id}"), &pi, amount, refunded)
        )),
        (id, pi, amount()).prop_map(|(id, pi, amount)| (
            "charge.dispute.created",
            stripe::dispute(&format!("dp_{id}"), &format!("ch_{id}"), &pi, amount)
        )),
        (id, extreme_i64()).prop_map(|(id, ended)| (
            "customer.subscription.deleted",
            stripe::subscription_deleted(&format!("sub_{id}"), ended)
        )),
    ]
    .boxed()
}

/// A signed delivery's body: a scenario's event with a few mutations (most of the time), or
/// any JSON object under a handled type, or any JSON at all.
fn webhook_body() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => ("[a-z0-9]{10}", scenario(), prop::collection::vec(mutation(), 0..3)).prop_map(
            |(id, (event_type, mut object), mutations)| {
                for m in &mutations {
                    apply(&mut object, m);
                }
                stripe::event(&format!("evt_{id}"), event_type, object)
            }
        ),
        1 => ("[a-z0-9]{10}", select(&MEANINGFUL_STRINGS[..7]), json_value()).prop_map(
            |(id, event_type, object)| json!({"id": format!("evt_{id}"), "type": event_type, "data": {"object": object}})
        ),
        1 => json_value(),
    ]
    .boxed()
}

/// Credits a purchase for `pi_seed`, so refunds and disputes of it reach the ledger's Reverse.
async fn seed_purchase(addr: std::net::SocketAddr) {
    let seeded = stripe::deliver(
        addr,
        WEBHOOK_SECRET,
        &stripe::event(
            "evt_seed",
            "checkout.session.completed",
            stripe::pack_checkout("cs_seed", "pi_seed", "user-fuzz", "pack_2m", 9_900),
        ),
    )
    .await;
    assert_eq!(seeded.0, 200, "{seeded:?}");
}

/// What the webhook may answer a correctly signed event: 200 (handled or ignored), 400 (will
/// never be accepted as sent) or 503 (retry later), the last only for a reason that passes:
/// the user is not known yet. (The ledger and the store are up throughout, so a 503 blaming
/// either is an input misread as an outage, and Stripe would retry it for days.) A 500 is a bug
/// or a misconfiguration; a dropped connection (no status at all) is a panicking handler.
fn acceptable(status: u16, reply: &str) -> bool {
    let outcome = serde_json::from_str::<Value>(reply)
        .ok()
        .and_then(|r| r["outcome"].as_str().map(str::to_owned));
    match status {
        200 | 400 => true,
        503 => outcome.as_deref() == Some("user_unknown"),
        _ => false,
    }
}

fn live_webhook() -> (Live, std::net::SocketAddr) {
    let live = Live::start(TestOptions {
        webhook: true,
        ..TestOptions::default()
    });
    let addr = live.app.webhook_addr.expect("the webhook is hosted");
    live.rt.block_on(seed_purchase(addr));
    (live, addr)
}

/// A correctly signed event with any content reaches the adapter, and is never answered 500
/// nor with a dropped connection.
#[test]
fn the_hosted_webhook_never_answers_500_to_a_signed_event() {
    let (live, addr) = live_webhook();
    live.run(LIVE_CASES, webhook_body(), async |_, event| {
        let (status, reply) = stripe::deliver(addr, WEBHOOK_SECRET, &event).await;
        prop_assert!(acceptable(status, &reply), "answered {} {}", status, reply);
        Ok(())
    });
}

/// Every integer the adapter reads, set to every boundary of an i64 (and of what a timestamp
/// holds) in the one event that acts on it. Random search rarely lands exactly there, and
/// this is where arithmetic on a sender's number overflows.
#[test]
fn the_hosted_webhook_takes_every_boundary_integer_where_it_reads_one() {
    const BOUNDARIES: &[i64] = &[
        i64::MIN,
        i64::MIN + 1,
        -1,
        0,
        253_402_300_800,
        -62_135_596_801,
        i64::MAX - 28 * 86_400,
        i64::MAX - 1,
        i64::MAX,
    ];
    let t0 = 1_760_000_000;
    let sites = |n: usize| -> Vec<(&'static str, Value, &'static [&'static str])> {
        let checkout = stripe::pack_checkout(
            &format!("cs_{n}"),
            &format!("pi_{n}"),
            "user-fuzz",
            "pack_2m",
            9_900,
        );
        let drip_checkout = stripe::subscription_checkout(
            &format!("cs_{n}"),
            &format!("sub_{n}"),
            &format!("in_{n}"),
            "user-fuzz",
            "vision_pro_28day",
            t0,
        );
        let invoice = stripe::invoice_paid(
            &format!("in_{n}"),
            &format!("sub_{n}"),
            "subscription_cycle",
            "price_vision_pro_28day",
            t0,
            t0 + 28 * 86_400,
            Some("user-fuzz"),
            &format!("cus_{n}"),
        );
        let refund = stripe::charge_refunded(&format!("ch_{n}"), "pi_seed", 9_900, 4_950);
        let dispute = stripe::dispute(&format!("dp_{n}"), &format!("ch_{n}"), "pi_seed", 9_900);
        let ended = stripe::subscription_deleted(&format!("sub_{n}"), t0);
        vec![
            (
                "checkout.session.completed",
                checkout.clone(),
                &["amount_total"],
            ),
            ("checkout.session.completed", checkout, &["amount_subtotal"]),
            (
                "checkout.session.completed",
                drip_checkout.clone(),
                &["created"],
            ),
            (
                "checkout.session.completed",
                drip_checkout,
                &["amount_total"],
            ),
            (
                "invoice.paid",
                invoice.clone(),
                &["lines", "data", "0", "period", "start"],
            ),
            (
                "invoice.paid",
                invoice.clone(),
                &["lines", "data", "0", "period", "end"],
            ),
            (
                "invoice.paid",
                invoice.clone(),
                &["lines", "data", "0", "amount"],
            ),
            ("invoice.paid", invoice, &["amount_paid"]),
            ("charge.refunded", refund.clone(), &["amount"]),
            ("charge.refunded", refund, &["amount_refunded"]),
            ("charge.dispute.created", dispute, &["amount"]),
            (
                "customer.subscription.deleted",
                ended.clone(),
                &["ended_at"],
            ),
            ("customer.subscription.deleted", ended, &["canceled_at"]),
        ]
    };
    let (live, addr) = live_webhook();
    live.rt.block_on(async {
        let mut n = 0;
        for &value in BOUNDARIES {
            for (event_type, mut object, path) in sites(n) {
                n += 1;
                set_path(&mut object, path, json!(value));
                let event = stripe::event(&format!("evt_int_{n}"), event_type, object);
                let (status, reply) = stripe::deliver(addr, WEBHOOK_SECRET, &event).await;
                assert!(
                    acceptable(status, &reply),
                    "{event_type} with {path:?} = {value}: answered {status} {reply}"
                );
            }
        }
    });
    live.stop();
}

// ------------------------------------------------------------------------------------------------
// 3. Request validation over real gRPC.

/// One server on a fresh database for a whole property run, and the runtime that drives it
/// from proptest's synchronous test closures.
struct Live {
    app: TestApp,
    rt: tokio::runtime::Runtime,
}

impl Live {
    fn start(options: TestOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = rt.block_on(TestApp::spawn_with(options));
        Self { app, rt }
    }

    /// Runs `property` over `cases` inputs from `strategy`, then stops the server and fails the
    /// test if any case failed.
    fn run<S, F>(self, cases: u32, strategy: S, property: F)
    where
        S: Strategy,
        F: AsyncFn(&TestApp, S::Value) -> Result<(), TestCaseError>,
    {
        let mut runner = TestRunner::new(config(cases));
        let result = runner.run(&strategy, |input| {
            self.rt.block_on(property(&self.app, input))
        });
        self.stop();
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }

    /// Stops the server inside the runtime, where its pool must be dropped.
    fn stop(self) {
        let Live { app, rt } = self;
        rt.block_on(async move { drop(app) });
    }
}

/// The property every call must keep: no INTERNAL or UNKNOWN, and a call refused for its input
/// (INVALID_ARGUMENT, OUT_OF_RANGE) writes nothing.
async fn checked<T>(
    app: &TestApp,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<Option<T>, TestCaseError> {
    let before = app.journal_rows().await;
    let result = call.await;
    let after = app.journal_rows().await;
    match result {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) => {
            prop_assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown),
                "{:?}",
                status
            );
            if matches!(status.code(), Code::InvalidArgument | Code::OutOfRange) {
                prop_assert_eq!(before, after, "refused with {:?} but wrote", status);
            }
            Ok(None)
        }
    }
}

/// A server with an account that has a grant (transaction 1), a purchase for `pi_seed`
/// (transaction 2) and some usage (transaction 3), so reversals and lookups find real rows.
fn seeded() -> Live {
    let live = Live::start(TestOptions::default());
    live.rt.block_on(async {
        let mut c = live.app.client().await;
        c.grant(admin(crate::common::grant_req(
            "u1",
            1_000_000,
            "seed-grant",
        )))
        .await
        .unwrap();
        c.record_purchase(admin(crate::common::purchase_req(
            "u1",
            "seed-purchase",
            "pi_seed",
        )))
        .await
        .unwrap();
        c.track_usage(admin(crate::common::usage_req("u1", 10, "seed-usage")))
            .await
            .unwrap();
    });
    live
}

fn user_id() -> BoxedStrategy<String> {
    prop_oneof![1 => Just("u1".to_string()), 3 => text()].boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a-z0-9]{1,12}", 1 => text()].boxed()
}

fn transaction_id() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (1i64..6).prop_map(|n| n.to_string()),
        1 => extreme_i64().prop_map(|n| n.to_string()),
        1 => select(vec!["0", "-1", "+1", "01", " 1", "1e3", "99999999999999999999", ""]).prop_map(str::to_string),
        1 => text(),
    ]
    .boxed()
}

fn timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let nanos = prop_oneof![
        3 => Just(0),
        2 => 0i32..1_000_000_000,
        1 => select(vec![-1, 999_999_999, 1_000_000_000, i32::MIN, i32::MAX]),
    ];
    prop::option::weighted(
        0.85,
        (extreme_i64(), nanos)
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
    .boxed()
}

/// A drip period: unrelated ends, or an end at most a few hundred days after the start.
fn period() -> BoxedStrategy<(
    Option<prost_types::Timestamp>,
    Option<prost_types::Timestamp>,
)> {
    prop_oneof![
        (timestamp(), timestamp()),
        (1_600_000_000i64..1_900_000_000, -86_400i64..400 * 86_400).prop_map(|(start, len)| (
            Some(prost_types::Timestamp {
                seconds: start,
                nanos: 0
            }),
            Some(prost_types::Timestamp {
                seconds: start + len,
                nanos: 0
            }),
        )),
    ]
    .boxed()
}

fn page_size() -> BoxedStrategy<i32> {
    prop_oneof![
        0i32..200,
        any::<i32>(),
        select(vec![i32::MIN, -1, i32::MAX])
    ]
    .boxed()
}

/// Page tokens: empty, any text, and base64 of what the server's tokens decode to, with any
/// numbers and any user ids in them (forged tokens must be refused, not passed on to SQL).
fn page_token() -> BoxedStrategy<String> {
    let raw = prop_oneof![
        extreme_i64().prop_map(|n| format!("seq:{n}")),
        text().prop_map(|u| format!("u:{u}")),
        (extreme_i64(), text()).prop_map(|(b, u)| format!("b:{b}:{u}")),
        (extreme_i64(), text()).prop_map(|(t, u)| format!("t:{t}:{u}")),
        text(),
    ];
    prop_oneof![
        1 => Just(String::new()),
        1 => text(),
        3 => raw.prop_map(|r| URL_SAFE_NO_PAD.encode(r)),
    ]
    .boxed()
}

fn usage_request() -> BoxedStrategy<pb::TrackUsageRequest> {
    (
        user_id(),
        amount(),
        key(),
        optional_text(),
        amount(),
        amount(),
        optional_text(),
    )
        .prop_map(
            |(user_id, tokens, idempotency_key, model, input_tokens, output_tokens, feature)| {
                pb::TrackUsageRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    model,
                    input_tokens,
                    output_tokens,
                    feature,
                    ..Default::default()
                }
            },
        )
        .boxed()
}

#[test]
fn grant_never_fails_internally() {
    let strategy = (
        user_id(),
        amount(),
        key(),
        enum_value(),
        optional_text(),
        optional_text(),
        optional_text(),
    )
        .prop_map(
            |(
                user_id,
                tokens,
                idempotency_key,
                source,
                reason,
                stripe_subscription_id,
                stripe_invoice_id,
            )| {
                pb::GrantRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    source,
                    reason,
                    stripe_subscription_id,
                    stripe_invoice_id,
                    ..Default::default()
                }
            },
        );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.grant(admin(request))).await.map(drop)
    });
}

#[test]
fn deduct_never_fails_internally() {
    let strategy = (user_id(), amount(), key(), text(), any::<bool>()).prop_map(
        |(user_id, tokens, idempotency_key, reason, allow_negative)| pb::DeductRequest {
            user_id,
            tokens,
            idempotency_key,
            reason,
            allow_negative,
        },
    );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.deduct(admin(request))).await.map(drop)
    });
}

#[test]
fn track_usage_never_fails_internally() {
    seeded().run(LIVE_CASES, usage_request(), async |app, request| {
        let mut c = app.client().await;
        checked(app, c.track_usage(admin(request))).await.map(drop)
    });
}

#[test]
fn track_usage_batch_never_fails_internally() {
    let over_limit = pb::TrackUsageBatchRequest {
        events: (0..=USAGE_BATCH_EVENTS_MAX)
            .map(|i| crate::common::usage_req("u1", 1, &format!("over-{i}")))
            .collect(),
    };
    let strategy = prop_oneof![
        8 => prop::collection::vec(usage_request(), 0..6)
            .prop_map(|events| pb::TrackUsageBatchRequest { events }),
        1 => Just(over_limit),
    ];
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        let before = app.journal_rows().await;
        let Some(response) = checked(app, c.track_usage_batch(admin(request))).await? else {
            return Ok(());
        };
        let refused =
            |code: i32| matches!(Code::from(code), Code::InvalidArgument | Code::OutOfRange);
        for r in &response.results {
            let code = Code::from(r.code);
            prop_assert!(!matches!(code, Code::Internal | Code::Unknown), "{:?}", r);
        }
        if response.results.iter().all(|r| refused(r.code)) {
            prop_assert_eq!(before, app.journal_rows().await);
        }
        Ok(())
    });
}

#[test]
fn record_purchase_never_fails_internally() {
    let currency = prop_oneof![Just("usd".to_string()), "[a-zA-Z]{2,4}", text()];
    let strategy = (
        user_id(),
        amount(),
        key(),
        amount(),
        currency,
        prop_oneof![Just("pi_seed".to_string()), text()],
        optional_text(),
        optional_text(),
    )
        .prop_map(
            |(user_id, tokens, idempotency_key, amount_paid_cents, currency, pi, cs, pack)| {
                pb::RecordPurchaseRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    amount_paid_cents,
                    currency,
                    stripe_payment_intent_id: pi,
                    stripe_checkout_session_id: cs,
                    pack,
                    ..Default::default()
                }
            },
        );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.record_purchase(admin(request)))
            .await
            .map(drop)
    });
}

#[test]
fn drip_never_fails_internally() {
    let strategy = (
        user_id(),
        amount(),
        key(),
        text(),
        optional_text(),
        period(),
    )
        .prop_map(
            |(user_id, tokens, idempotency_key, sub, invoice, (period_start, period_end))| {
                pb::DripRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    stripe_subscription_id: sub,
                    stripe_invoice_id: invoice,
                    period_start,
                    period_end,
                    ..Default::default()
                }
            },
        );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.drip(admin(request))).await.map(drop)
    });
}

#[test]
fn reverse_never_fails_internally() {
    let strategy = (
        user_id(),
        amount(),
        key(),
        transaction_id(),
        enum_value(),
        text(),
        optional_text(),
    )
        .prop_map(
            |(user_id, tokens, idempotency_key, original, source, reason, stripe_reference)| {
                pb::ReverseRequest {
                    user_id,
                    tokens,
                    idempotency_key,
                    original_transaction_id: original,
                    source,
                    reason,
                    stripe_reference,
                }
            },
        );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.reverse(admin(request))).await.map(drop)
    });
}

#[test]
fn get_balance_never_fails_internally() {
    let strategy = user_id().prop_map(|user_id| pb::GetBalanceRequest {
        user_id,
        as_of: None,
    });
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.get_balance(admin(request))).await.map(drop)
    });
}

#[test]
fn list_transactions_never_fails_internally() {
    let strategy = (
        user_id(),
        page_size(),
        page_token(),
        prop::collection::vec(enum_value(), 0..4),
        timestamp(),
        timestamp(),
    )
        .prop_map(
            |(user_id, page_size, page_token, kinds, created_after, created_before)| {
                pb::ListTransactionsRequest {
                    user_id,
                    page_size,
                    page_token,
                    kinds,
                    created_after,
                    created_before,
                }
            },
        );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.list_transactions(admin(request)))
            .await
            .map(drop)
    });
}

#[test]
fn list_accounts_never_fails_internally() {
    let prefix = prop_oneof![
        3 => text(),
        1 => "[%_\\\\u1]{1,4}",
        1 => Just(String::new()),
    ];
    let strategy = (prefix, enum_value(), page_size(), page_token()).prop_map(
        |(user_id_prefix, order_by, page_size, page_token)| pb::ListAccountsRequest {
            user_id_prefix,
            order_by,
            page_size,
            page_token,
        },
    );
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.list_accounts(admin(request)))
            .await
            .map(drop)
    });
}

#[test]
fn get_transaction_never_fails_internally() {
    use pb::get_transaction_request::Lookup;
    let strategy = prop::option::weighted(
        0.9,
        prop_oneof![
            transaction_id().prop_map(Lookup::TransactionId),
            prop_oneof![Just("pi_seed".to_string()), text()]
                .prop_map(Lookup::StripePaymentIntentId),
        ],
    )
    .prop_map(|lookup| pb::GetTransactionRequest { lookup });
    seeded().run(LIVE_CASES, strategy, async |app, request| {
        let mut c = app.client().await;
        checked(app, c.get_transaction(admin(request)))
            .await
            .map(drop)
    });
}
