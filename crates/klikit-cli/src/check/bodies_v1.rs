//! The bodies `klikit check --scheme klikit-v1` sends: the shipped v1
//! fixtures with the delivery's own event id written in, and the raw-body
//! variants of a small v1 envelope.
//!
//! A v1 body repeats the event id (`event_id`, signed) that
//! `X-Klikit-Event-Id` carries, and a receiver may refuse a delivery whose
//! two ids differ, so every body is rewritten for the fresh id of its
//! delivery.

use bytes::Bytes;
use serde_json::Value;

/// Where [`RAW_BODIES`] hold the event id.
const ID: &str = "KLIKIT_CHECK_EVENT_ID";

/// The bodies of the raw-body check, each with `KLIKIT_CHECK_EVENT_ID` for
/// the event id: valid `order.placed.v1` envelopes (a sandbox dine-in
/// order), each not in the compact form a re-serialiser produces, in one
/// respect each. Money is a JSON number, as v1 sends it.
pub(crate) const RAW_BODIES: [(&str, &str); 7] = [
    (
        "whitespace",
        "{\r\n  \"event_id\" : \"KLIKIT_CHECK_EVENT_ID\",\n\t\"event_type\":\"order.placed.v1\" ,\n  \
         \"event_version\": \"1.0\", \"created_at\": \"2026-06-03T09:00:02Z\", \"business_id\": 9001,\n  \
         \"data\" : {\n    \"id\": \"ord_01J2SBX0CHECK0000000000RAW\", \"short_id\": \"SBXRAW\", \
         \"external_id\": null,\n    \"business_id\": 9001, \"brand_id\": 901, \"branch_id\": 90101,\n    \
         \"provider\": {\"id\": 99, \"name\": \"sandbox\", \"display_name\": \"Sandbox Fixtures\"},\n    \
         \"channel\": \"dine_in\", \"status\": \"placed\", \"status_code\": 1,\n    \"status_history\": [ \
         {\"status\": \"placed\", \"at\": \"2026-06-03T09:00:00Z\", \"by\": \"system\"} ],\n    \
         \"order_type\": \"dine_in\", \"placed_at\": \"2026-06-03T09:00:00Z\", \"scheduled_for\": null,\n    \
         \"customer\": {\"name\": \"Table 12\", \"phone\": \"+6500000012\"},\n    \"items\": [ \
         {\"klikit_item_id\": 700001, \"name\": \"Nasi Goreng\", \"quantity\": 2, \"unit_price\": 42.25, \
         \"subtotal\": 84.5, \"modifiers\": [ ]} ],\n    \"totals\": {\"currency\": \"SGD\", \"subtotal\": 84.5, \
         \"merchant_total\": 84.5, \"customer_total\": 84.5},\n    \"payment\": {\"method\": \"cash\", \
         \"status\": \"pending\", \"is_prepaid\": false},\n    \"fulfilment\": {\"mode\": \"dine_in\"},\n    \
         \"created_at\": \"2026-06-03T09:00:00Z\", \"updated_at\": \"2026-06-03T09:00:00Z\"\n  }\n}",
    ),
    (
        "key-order",
        r#"{"data":{"updated_at":"2026-06-03T09:00:00Z","totals":{"customer_total":84.5,"merchant_total":84.5,"subtotal":84.5,"currency":"SGD"},"items":[{"modifiers":[],"subtotal":84.5,"unit_price":42.25,"quantity":2,"name":"Nasi Goreng","klikit_item_id":700001}],"status":"placed","id":"ord_01J2SBX0CHECK0000000000RAW","short_id":"SBXRAW","external_id":null,"business_id":9001,"brand_id":901,"branch_id":90101,"provider":{"display_name":"Sandbox Fixtures","name":"sandbox","id":99},"channel":"dine_in","status_code":1,"status_history":[{"by":"system","at":"2026-06-03T09:00:00Z","status":"placed"}],"order_type":"dine_in","placed_at":"2026-06-03T09:00:00Z","scheduled_for":null,"customer":{"phone":"+6500000012","name":"Table 12"},"payment":{"is_prepaid":false,"status":"pending","method":"cash"},"fulfilment":{"mode":"dine_in"},"created_at":"2026-06-03T09:00:00Z"},"business_id":9001,"created_at":"2026-06-03T09:00:02Z","event_version":"1.0","event_type":"order.placed.v1","event_id":"KLIKIT_CHECK_EVENT_ID"}"#,
    ),
    (
        "unicode-escapes",
        r#"{"event_id":"KLIKIT_CHECK_EVENT_ID","event_type":"order.placed.v1","event_version":"1.0","created_at":"2026-06-03T09:00:02Z","business_id":9001,"data":{"id":"ord_01J2SBX0CHECK0000000000RAW","short_id":"SBXRAW","external_id":null,"business_id":9001,"brand_id":901,"branch_id":90101,"provider":{"id":99,"name":"sandbox","display_name":"Sandbox Fixtures"},"channel":"dine_in","status":"placed","status_code":1,"status_history":[{"status":"placed","at":"2026-06-03T09:00:00Z","by":"system"}],"order_type":"dine_in","placed_at":"2026-06-03T09:00:00Z","scheduled_for":null,"customer":{"name":"Zo\u00eb","phone":"+6500000012"},"items":[{"klikit_item_id":700001,"name":"Nasi Goreng \u2014 spesial","quantity":2,"unit_price":42.25,"subtotal":84.5,"modifiers":[],"special_instructions":"\u00e0 emporter \/ \"sans \u00e9pices\" \ud83c\udf36"}],"totals":{"currency":"SGD","subtotal":84.5,"merchant_total":84.5,"customer_total":84.5},"payment":{"method":"cash","status":"pending","is_prepaid":false},"fulfilment":{"mode":"dine_in"},"created_at":"2026-06-03T09:00:00Z","updated_at":"2026-06-03T09:00:00Z"}}"#,
    ),
    (
        "non-ascii",
        r#"{"event_id":"KLIKIT_CHECK_EVENT_ID","event_type":"order.placed.v1","event_version":"1.0","created_at":"2026-06-03T09:00:02Z","business_id":9001,"data":{"id":"ord_01J2SBX0CHECK0000000000RAW","short_id":"SBXRAW","external_id":null,"business_id":9001,"brand_id":901,"branch_id":90101,"provider":{"id":99,"name":"sandbox","display_name":"Sandbox Fixtures"},"channel":"dine_in","status":"placed","status_code":1,"status_history":[{"status":"placed","at":"2026-06-03T09:00:00Z","by":"system"}],"order_type":"dine_in","placed_at":"2026-06-03T09:00:00Z","scheduled_for":null,"customer":{"name":"Zoë Ağaoğlu","phone":"+6500000012"},"items":[{"klikit_item_id":700001,"name":"Nasi Goreng — 辣 spesial","quantity":2,"unit_price":42.25,"subtotal":84.5,"modifiers":[],"special_instructions":"à emporter, sans épices 🌶"}],"totals":{"currency":"SGD","subtotal":84.5,"merchant_total":84.5,"customer_total":84.5},"payment":{"method":"cash","status":"pending","is_prepaid":false},"fulfilment":{"mode":"dine_in"},"created_at":"2026-06-03T09:00:00Z","updated_at":"2026-06-03T09:00:00Z"}}"#,
    ),
    (
        "decimal-84.50",
        r#"{"event_id":"KLIKIT_CHECK_EVENT_ID","event_type":"order.placed.v1","event_version":"1.0","created_at":"2026-06-03T09:00:02Z","business_id":9001,"data":{"id":"ord_01J2SBX0CHECK0000000000RAW","short_id":"SBXRAW","external_id":null,"business_id":9001,"brand_id":901,"branch_id":90101,"provider":{"id":99,"name":"sandbox","display_name":"Sandbox Fixtures"},"channel":"dine_in","status":"placed","status_code":1,"status_history":[{"status":"placed","at":"2026-06-03T09:00:00Z","by":"system"}],"order_type":"dine_in","placed_at":"2026-06-03T09:00:00Z","scheduled_for":null,"customer":{"name":"Table 12","phone":"+6500000012"},"items":[{"klikit_item_id":700001,"name":"Nasi Goreng","quantity":2,"unit_price":42.25,"subtotal":84.50,"modifiers":[]}],"totals":{"currency":"SGD","subtotal":84.50,"merchant_total":84.50,"customer_total":84.50},"payment":{"method":"cash","status":"pending","is_prepaid":false},"fulfilment":{"mode":"dine_in"},"created_at":"2026-06-03T09:00:00Z","updated_at":"2026-06-03T09:00:00Z"}}"#,
    ),
    (
        "exponent-1e2",
        r#"{"event_id":"KLIKIT_CHECK_EVENT_ID","event_type":"order.placed.v1","event_version":"1.0","created_at":"2026-06-03T09:00:02Z","business_id":9001,"data":{"id":"ord_01J2SBX0CHECK0000000000RAW","short_id":"SBXRAW","external_id":null,"business_id":9001,"brand_id":901,"branch_id":90101,"provider":{"id":99,"name":"sandbox","display_name":"Sandbox Fixtures"},"channel":"dine_in","status":"placed","status_code":1,"status_history":[{"status":"placed","at":"2026-06-03T09:00:00Z","by":"system"}],"order_type":"dine_in","placed_at":"2026-06-03T09:00:00Z","scheduled_for":null,"customer":{"name":"Table 12","phone":"+6500000012"},"items":[{"klikit_item_id":700001,"name":"Nasi Goreng","quantity":2,"unit_price":42.25,"subtotal":84.5,"modifiers":[]}],"totals":{"currency":"SGD","subtotal":84.5,"additional_fee":1e2,"merchant_total":184.5,"customer_total":184.5},"payment":{"method":"cash","status":"pending","is_prepaid":false},"fulfilment":{"mode":"dine_in"},"created_at":"2026-06-03T09:00:00Z","updated_at":"2026-06-03T09:00:00Z"}}"#,
    ),
    (
        "trailing-newline",
        "{\"event_id\":\"KLIKIT_CHECK_EVENT_ID\",\"event_type\":\"order.placed.v1\",\"event_version\":\"1.0\",\
         \"created_at\":\"2026-06-03T09:00:02Z\",\"business_id\":9001,\"data\":{\"id\":\"ord_01J2SBX0CHECK0000000000RAW\",\
         \"short_id\":\"SBXRAW\",\"external_id\":null,\"business_id\":9001,\"brand_id\":901,\"branch_id\":90101,\
         \"provider\":{\"id\":99,\"name\":\"sandbox\",\"display_name\":\"Sandbox Fixtures\"},\"channel\":\"dine_in\",\
         \"status\":\"placed\",\"status_code\":1,\"status_history\":[{\"status\":\"placed\",\
         \"at\":\"2026-06-03T09:00:00Z\",\"by\":\"system\"}],\"order_type\":\"dine_in\",\
         \"placed_at\":\"2026-06-03T09:00:00Z\",\"scheduled_for\":null,\"customer\":{\"name\":\"Table 12\",\
         \"phone\":\"+6500000012\"},\"items\":[{\"klikit_item_id\":700001,\"name\":\"Nasi Goreng\",\"quantity\":2,\
         \"unit_price\":42.25,\"subtotal\":84.5,\"modifiers\":[]}],\"totals\":{\"currency\":\"SGD\",\"subtotal\":84.5,\
         \"merchant_total\":84.5,\"customer_total\":84.5},\"payment\":{\"method\":\"cash\",\"status\":\"pending\",\
         \"is_prepaid\":false},\"fulfilment\":{\"mode\":\"dine_in\"},\"created_at\":\"2026-06-03T09:00:00Z\",\
         \"updated_at\":\"2026-06-03T09:00:00Z\"}}\n",
    ),
];

/// A [`RAW_BODIES`] template with `id` for the event id.
pub(crate) fn raw_body(template: &str, id: &str) -> Bytes {
    Bytes::from(template.replace(ID, id))
}

/// A shipped v1 fixture as the delivery of event `id`: its top-level
/// `event_id` set to `id`, its `event_type` to `event_type` when given, and
/// without the final newline of its file (a trailing newline is a raw-body
/// variant). Every other byte is kept.
pub(crate) fn envelope(fixture: &str, id: &str, event_type: Option<&str>) -> String {
    let mut body = set_top_level(fixture.trim_end(), "event_id", id);
    if let Some(event_type) = event_type {
        body = set_top_level(&body, "event_type", event_type);
    }
    body
}

/// `body` with the string value of its top-level `field` replaced by
/// `value` (which needs no JSON escaping), in place: the first occurrence of
/// the old value as a JSON string is rewritten. The shipped fixtures hold
/// their event id and type once each (a unit test checks every one).
fn set_top_level(body: &str, field: &str, value: &str) -> String {
    let old = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|envelope| envelope.get(field)?.as_str().map(str::to_owned));
    match old {
        Some(old) => body.replacen(&format!("\"{old}\""), &format!("\"{value}\""), 1),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klikit_webhook::payload::v1::{Envelope, fixtures};

    #[test]
    fn raw_bodies_are_v1_envelopes_of_their_id_and_not_compact_canonical_json() {
        for (label, template) in RAW_BODIES {
            let body = raw_body(template, "4e1c0b6a-93d2-4f57-a0c8-000000000007");
            let text = std::str::from_utf8(&body).unwrap();
            let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_ne!(serde_json::to_string(&value).unwrap(), text, "{label}");
            let envelope: Envelope = serde_json::from_str(text).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(envelope.event_id, "4e1c0b6a-93d2-4f57-a0c8-000000000007", "{label}");
            assert_eq!(envelope.event_type.to_string(), "order.placed.v1", "{label}");
            assert_eq!((envelope.business_id, envelope.data.items.len()), (9001, 1), "{label}");
        }
    }

    #[test]
    fn every_fixture_takes_the_id_and_type_and_keeps_the_rest() {
        for (name, fixture) in fixtures::ALL {
            let body = envelope(fixture, "evt-new", Some("order.check_unknown.v1"));
            assert!(!body.ends_with('\n'), "{name}");
            let mut before: Value = serde_json::from_str(fixture).unwrap();
            let after: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(after["event_id"], "evt-new", "{name}");
            assert_eq!(after["event_type"], "order.check_unknown.v1", "{name}");
            before["event_id"] = "evt-new".into();
            before["event_type"] = "order.check_unknown.v1".into();
            assert_eq!(before, after, "{name}");
            let kept = envelope(fixture, "evt-new", None);
            assert_eq!(
                serde_json::from_str::<Value>(&kept).unwrap()["event_type"],
                serde_json::from_str::<Value>(fixture).unwrap()["event_type"],
                "{name}"
            );
        }
    }
}
