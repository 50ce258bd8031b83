//! `--json` output: every response printed whole, in canonical proto JSON (the mapping every
//! protobuf runtime reads back), with the proto's own field names, enum names, RFC 3339
//! timestamps, int64 as strings, and zero values included, so a script sees every field.
//! Messages are transcoded through their descriptor (prost-reflect), so no field can be left out
//! by hand.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built from proto/ decodes")
});

/// `message` as canonical proto JSON.
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let descriptor = POOL
        .get_message_by_name(&M::full_name())
        .expect("every generated message is in the descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a dynamic message serializes to JSON")
}

/// Prints `message` as one line of canonical proto JSON.
pub fn print<M: prost::Message + prost::Name>(message: &M) {
    println!("{}", to_json(message));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn a_transaction_prints_with_proto_names_enum_names_and_its_details() {
        let t = pb::Transaction {
            id: "42".into(),
            kind: pb::TransactionKind::Purchase as i32,
            token_amount: 2_000_000,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 0,
            }),
            details: Some(pb::transaction::Details::Purchase(pb::PurchaseDetails {
                stripe_payment_intent_id: "pi_1".into(),
                amount_paid_cents: 9_900,
                ..Default::default()
            })),
            ..Default::default()
        };
        let v = to_json(&t);
        assert_eq!(v["token_amount"], "2000000");
        assert_eq!(v["kind"], "TRANSACTION_KIND_PURCHASE");
        assert_eq!(v["created_at"], "2025-11-24T16:00:00Z");
        assert_eq!(v["purchase"]["stripe_payment_intent_id"], "pi_1");
        assert_eq!(v["reason"], "", "zero values are printed too");
    }
}
