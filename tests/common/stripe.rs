//! Stripe test events built from Stripe's own fixture resources (tests/fixtures/stripe), signed
//! the way Stripe's libraries sign them, and posted over real HTTP.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> Value {
    let text = match name {
        "checkout_session" => include_str!("../fixtures/stripe/checkout_session.json"),
        "invoice" => include_str!("../fixtures/stripe/invoice.json"),
        "charge" => include_str!("../fixtures/stripe/charge.json"),
        "dispute" => include_str!("../fixtures/stripe/dispute.json"),
        "subscription" => include_str!("../fixtures/stripe/subscription.json"),
        "event" => include_str!("../fixtures/stripe/event.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Merges `patch` into `base` (objects recursively; anything else replaces).
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// A resource fixture with `patch` applied.
pub fn resource(name: &str, patch: Value) -> Value {
    let mut v = fixture(name);
    merge(&mut v, patch);
    v
}

/// Wraps a resource in the fixture event envelope.
pub fn event(id: &str, event_type: &str, object: Value) -> Value {
    let mut e = fixture("event");
    merge(
        &mut e,
        json!({"id": id, "type": event_type, "api_version": "2025-03-31.basil", "created": 1_700_000_000}),
    );
    e["data"] = json!({ "object": object });
    e
}

/// A paid one-off checkout for a token pack.
pub fn pack_checkout(
    session: &str,
    payment_intent: &str,
    user: &str,
    pack: &str,
    amount_cents: i64,
) -> Value {
    resource(
        "checkout_session",
        json!({
            "id": session, "mode": "payment", "status": "complete", "payment_status": "paid",
            "payment_intent": payment_intent, "client_reference_id": user, "customer": format!("cus_{user}"),
            "amount_total": amount_cents, "amount_subtotal": amount_cents, "currency": "usd",
            "metadata": {"pack": pack}
        }),
    )
}

/// A paid subscription checkout.
pub fn subscription_checkout(
    session: &str,
    sub: &str,
    invoice: &str,
    user: &str,
    product: &str,
    created: i64,
) -> Value {
    resource(
        "checkout_session",
        json!({
            "id": session, "mode": "subscription", "status": "complete", "payment_status": "paid",
            "payment_intent": null, "subscription": sub, "invoice": invoice,
            "client_reference_id": user, "customer": format!("cus_{user}"), "created": created,
            "amount_total": 9900, "currency": "usd", "metadata": {"product": product}
        }),
    )
}

/// A paid subscription invoice in the 2025-03-31 shape (subscription under
/// `parent.subscription_details`, price under `pricing.price_details`).
#[allow(clippy::too_many_arguments)]
pub fn invoice_paid(
    invoice: &str,
    sub: &str,
    billing_reason: &str,
    price: &str,
    period_start: i64,
    period_end: i64,
    user: Option<&str>,
    customer: &str,
) -> Value {
    let mut v = resource(
        "invoice",
        json!({
            "id": invoice, "status": "paid", "billing_reason": billing_reason, "customer": customer,
            "amount_paid": 9900, "amount_due": 9900, "amount_remaining": 0, "subscription": null,
            "parent": {"type": "subscription_details", "quote_details": null,
                       "subscription_details": {"subscription": sub,
                                                "metadata": user.map(|u| json!({"user_id": u})).unwrap_or(json!({}))}},
        }),
    );
    let mut line = v["lines"]["data"][0].clone();
    merge(
        &mut line,
        json!({
            "invoice": invoice, "amount": 9900,
            "period": {"start": period_start, "end": period_end},
            "pricing": {"type": "price_details", "price_details": {"price": price, "product": "prod_x"}},
            "parent": {"type": "subscription_item_details", "invoice_item_details": null,
                       "subscription_item_details": {"proration": billing_reason == "subscription_update",
                                                     "subscription": sub, "subscription_item": "si_1", "invoice_item": null}},
        }),
    );
    v["lines"]["data"] = json!([line]);
    v
}

/// A charge after refunds, with the cumulative refunded amount.
pub fn charge_refunded(
    charge: &str,
    payment_intent: &str,
    amount: i64,
    amount_refunded: i64,
) -> Value {
    resource(
        "charge",
        json!({
            "id": charge, "payment_intent": payment_intent, "amount": amount, "amount_captured": amount,
            "amount_refunded": amount_refunded, "refunded": amount_refunded >= amount, "captured": true
        }),
    )
}

pub fn dispute(id: &str, charge: &str, payment_intent: &str, amount: i64) -> Value {
    resource(
        "dispute",
        json!({"id": id, "charge": charge, "payment_intent": payment_intent, "amount": amount}),
    )
}

pub fn subscription_deleted(sub: &str, ended_at: i64) -> Value {
    resource(
        "subscription",
        json!({"id": sub, "status": "canceled", "ended_at": ended_at, "canceled_at": ended_at}),
    )
}

/// `Stripe-Signature` as Stripe's libraries make it: `t=<ts>,v1=<hex hmac-sha256>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// POSTs `body` to the webhook with `signature` over a plain HTTP/1.1 connection.
pub async fn post_raw(addr: SocketAddr, body: &[u8], signature: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST /stripe/webhook HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(sig) = signature {
        head.push_str(&format!("Stripe-Signature: {sig}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// Signs `event` with `secret` now and posts it.
pub async fn deliver(addr: SocketAddr, secret: &str, event: &Value) -> (u16, String) {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature(secret, now(), &body);
    post_raw(addr, &body, Some(&sig)).await
}
