//! Reading Stripe events: the envelope, and for each event type we act on, the few fields we
//! need. Payload shapes differ by API version (since 2025-03-31 an invoice's subscription and its
//! metadata sit under `parent.subscription_details`, and a line's price under
//! `pricing.price_details`); every reader here accepts both shapes. Pure functions, no I/O.

use serde_json::Value;

/// The part of every event we read.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    pub livemode: bool,
    /// The API version Stripe rendered the event with (`2025-03-31.basil`); stored with the
    /// event, as payload shapes differ by version.
    pub api_version: Option<String>,
    pub object: Value,
}

/// Parses the event envelope; the error says what is missing.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if holds_nul(&value) {
        // Refused here, as the malformed input it is: stored later, it fails in PostgreSQL,
        // which reads as the database being down (503), and Stripe would retry it for days.
        return Err("body holds a NUL character (\\u0000), which no Stripe object does".into());
    }
    let id = text(&value, &["id"]).ok_or("event has no id")?;
    let event_type = text(&value, &["type"]).ok_or("event has no type")?;
    let livemode = value
        .get("livemode")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let api_version = text(&value, &["api_version"]);
    let object = value
        .get("data")
        .and_then(|d| d.get("object"))
        .cloned()
        .ok_or("event has no data.object")?;
    Ok(Envelope {
        id,
        event_type,
        livemode,
        api_version,
        object,
    })
}

/// Whether a string or key anywhere in `v` holds a NUL, which PostgreSQL text cannot store.
/// (The depth is bounded by serde_json's recursion limit.)
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A non-empty string at `path`; an expanded object at the end of the path yields its `id`.
pub fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

pub fn int(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_i64()
}

fn first_text(v: &Value, paths: &[&[&str]]) -> Option<String> {
    paths.iter().find_map(|p| text(v, p))
}

/// The user ids an object names for itself, most trusted first.
pub fn user_hints(v: &Value, paths: &[&[&str]]) -> Vec<String> {
    paths.iter().filter_map(|p| text(v, p)).collect()
}

/// What a checkout session says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub mode: String,
    pub status: Option<String>,
    pub payment_status: String,
    pub payment_intent: Option<String>,
    pub subscription: Option<String>,
    pub invoice: Option<String>,
    pub customer: Option<String>,
    pub amount_total: Option<i64>,
    /// Before discounts and tax: what identifies a product by price.
    pub amount_subtotal: Option<i64>,
    pub currency: Option<String>,
    pub created: Option<i64>,
    /// `client_reference_id`, then `metadata.user_id`.
    pub users: Vec<String>,
    /// `metadata.pack`, `metadata.product`, `metadata.price_id`, `metadata.lookup_key`.
    pub product_keys: Vec<String>,
}

pub fn checkout_session(o: &Value) -> Result<CheckoutSession, String> {
    Ok(CheckoutSession {
        id: text(o, &["id"]).ok_or("checkout session has no id")?,
        mode: text(o, &["mode"]).unwrap_or_default(),
        status: text(o, &["status"]),
        payment_status: text(o, &["payment_status"]).unwrap_or_default(),
        payment_intent: text(o, &["payment_intent"]),
        subscription: text(o, &["subscription"]),
        invoice: text(o, &["invoice"]),
        customer: text(o, &["customer"]),
        amount_total: int(o, &["amount_total"]),
        amount_subtotal: int(o, &["amount_subtotal"]),
        currency: text(o, &["currency"]),
        created: int(o, &["created"]),
        users: user_hints(
            o,
            &[
                &["client_reference_id"],
                &["metadata", "user_id"],
                &["metadata", "userId"],
            ],
        ),
        product_keys: {
            let mut keys = user_hints(
                o,
                &[
                    &["metadata", "pack"],
                    &["metadata", "product"],
                    &["metadata", "price_id"],
                    &["metadata", "lookup_key"],
                ],
            );
            // Line items are not in checkout events unless the sender expanded them; use them
            // when they are there.
            if let Some(items) = o
                .get("line_items")
                .and_then(|l| l.get("data"))
                .and_then(Value::as_array)
            {
                for item in items {
                    keys.extend(user_hints(
                        item,
                        &[&["price", "id"], &["price", "lookup_key"]],
                    ));
                }
            }
            keys
        },
    })
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub amount: Option<i64>,
    pub price_id: Option<String>,
    pub lookup_key: Option<String>,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub proration: bool,
}

/// What a paid invoice says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: String,
    pub billing_reason: String,
    pub subscription: Option<String>,
    pub customer: Option<String>,
    pub users: Vec<String>,
    /// `metadata.product` on the subscription or the invoice.
    pub product_keys: Vec<String>,
    pub lines: Vec<InvoiceLine>,
    pub lines_has_more: bool,
    pub amount_paid: Option<i64>,
    pub currency: Option<String>,
}

pub fn invoice(o: &Value) -> Result<Invoice, String> {
    let lines = o
        .get("lines")
        .and_then(|l| l.get("data"))
        .and_then(Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .map(|l| InvoiceLine {
                    amount: int(l, &["amount"]),
                    price_id: first_text(
                        l,
                        &[
                            &["price", "id"],
                            &["pricing", "price_details", "price"],
                            &["plan", "id"],
                        ],
                    ),
                    lookup_key: text(l, &["price", "lookup_key"]),
                    period_start: int(l, &["period", "start"]),
                    period_end: int(l, &["period", "end"]),
                    proration: [
                        &["proration"][..],
                        &["parent", "subscription_item_details", "proration"],
                        &["parent", "invoice_item_details", "proration"],
                    ]
                    .iter()
                    .any(|p| {
                        let mut cur = l;
                        for k in *p {
                            match cur.get(k) {
                                Some(next) => cur = next,
                                None => return false,
                            }
                        }
                        cur.as_bool() == Some(true)
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let metadata_paths: [&[&str]; 3] = [
        &["parent", "subscription_details", "metadata"],
        &["subscription_details", "metadata"],
        &["metadata"],
    ];
    let users = metadata_paths
        .iter()
        .flat_map(|p| ["user_id", "userId"].map(|k| (p, k)))
        .filter_map(|(p, k)| {
            let mut path = p.to_vec();
            path.push(k);
            text(o, &path)
        })
        .collect();
    let product_keys = metadata_paths
        .iter()
        .filter_map(|p| {
            let mut path = p.to_vec();
            path.push("product");
            text(o, &path)
        })
        .collect();
    Ok(Invoice {
        id: text(o, &["id"]).ok_or("invoice has no id")?,
        billing_reason: text(o, &["billing_reason"]).unwrap_or_default(),
        subscription: first_text(
            o,
            &[
                &["subscription"],
                &["parent", "subscription_details", "subscription"],
                &["subscription_details", "subscription"],
            ],
        ),
        customer: text(o, &["customer"]),
        users,
        product_keys,
        lines,
        amount_paid: int(o, &["amount_paid"]),
        currency: text(o, &["currency"]),
        lines_has_more: o
            .get("lines")
            .and_then(|l| l.get("has_more"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// A charge's refund state (`charge.refunded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRefund {
    pub charge_id: String,
    pub payment_intent: Option<String>,
    /// Cumulative: everything refunded on this charge so far.
    pub amount_refunded: i64,
    pub amount: i64,
}

pub fn charge_refund(o: &Value) -> Result<ChargeRefund, String> {
    Ok(ChargeRefund {
        charge_id: text(o, &["id"]).ok_or("charge has no id")?,
        payment_intent: text(o, &["payment_intent"]),
        amount_refunded: int(o, &["amount_refunded"]).ok_or("charge has no amount_refunded")?,
        amount: int(o, &["amount"]).unwrap_or(0),
    })
}

/// A dispute (`charge.dispute.created`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    pub id: String,
    pub charge_id: Option<String>,
    pub payment_intent: Option<String>,
    pub amount: i64,
}

pub fn dispute(o: &Value) -> Result<Dispute, String> {
    Ok(Dispute {
        id: text(o, &["id"]).ok_or("dispute has no id")?,
        charge_id: text(o, &["charge"]),
        payment_intent: first_text(o, &[&["payment_intent"], &["charge", "payment_intent"]]),
        amount: int(o, &["amount"]).ok_or("dispute has no amount")?,
    })
}

/// An ended subscription (`customer.subscription.deleted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSubscription {
    pub id: String,
    pub ended_at: Option<i64>,
    pub users: Vec<String>,
    pub customer: Option<String>,
}

pub fn ended_subscription(o: &Value) -> Result<EndedSubscription, String> {
    Ok(EndedSubscription {
        id: text(o, &["id"]).ok_or("subscription has no id")?,
        ended_at: int(o, &["ended_at"]).or_else(|| int(o, &["canceled_at"])),
        users: user_hints(o, &[&["metadata", "user_id"]]),
        customer: text(o, &["customer"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_invoice_is_read_in_the_old_and_the_new_shape() {
        let old = json!({
            "id": "in_1", "billing_reason": "subscription_cycle", "subscription": "sub_1",
            "subscription_details": {"metadata": {"user_id": "u1"}},
            "lines": {"data": [{"price": {"id": "price_a", "lookup_key": "lk"}, "period": {"start": 10, "end": 20}, "proration": false}]}
        });
        let new = json!({
            "id": "in_1", "billing_reason": "subscription_cycle", "subscription": null,
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_1", "metadata": {"user_id": "u1"}}},
            "lines": {"data": [{"pricing": {"type": "price_details", "price_details": {"price": "price_a"}},
                                "period": {"start": 10, "end": 20},
                                "parent": {"subscription_item_details": {"proration": false}}}]}
        });
        for v in [old, new] {
            let inv = invoice(&v).unwrap();
            assert_eq!(inv.subscription.as_deref(), Some("sub_1"));
            assert_eq!(inv.users, vec!["u1".to_string()]);
            assert_eq!(inv.lines[0].price_id.as_deref(), Some("price_a"));
            assert_eq!(
                (inv.lines[0].period_start, inv.lines[0].period_end),
                (Some(10), Some(20))
            );
            assert!(!inv.lines[0].proration);
        }
    }

    #[test]
    fn an_expanded_object_yields_its_id() {
        let v = json!({"payment_intent": {"id": "pi_1", "object": "payment_intent"}});
        assert_eq!(text(&v, &["payment_intent"]).as_deref(), Some("pi_1"));
        assert_eq!(
            text(&json!({"payment_intent": null}), &["payment_intent"]),
            None
        );
    }

    #[test]
    fn an_envelope_without_data_is_refused() {
        assert!(parse_envelope(br#"{"id":"evt_1","type":"x"}"#).is_err());
        assert!(parse_envelope(b"not json").is_err());
        let e = parse_envelope(br#"{"id":"evt_1","type":"x","data":{"object":{}}}"#).unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("evt_1", "x"));
    }

    #[test]
    fn an_envelope_holding_a_nul_anywhere_is_refused() {
        for body in [
            r#"{"id":"evt_1","type":"x","data":{"object":{"metadata":{"user_id":"a\u0000b"}}}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":{"lines":[{"k\u0000":1}]}}}"#,
            r#"{"id":"evt_\u0000","type":"x","data":{"object":{}}}"#,
        ] {
            assert!(parse_envelope(body.as_bytes()).is_err(), "{body}");
        }
        let e = parse_envelope(br#"{"id":"evt_1","type":"x","data":{"object":{"a":"\u0001"}}}"#)
            .unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("evt_1", "x"));
    }
}
