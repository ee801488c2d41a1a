//! The typed payload against the documented examples and the loose spots of
//! Klikit's docs: money as strings or numbers, unknown status codes, string
//! ids in `cart_v2`, fields that are missing, null, or new.

use klikit_webhook::{
    EventType, KlikitEvent,
    payload::{OrderEnvelope, OrderStatus},
};
use rust_decimal::Decimal;

/// The example body of `shared/KLIKIT.md` §4.
const DIGEST_EXAMPLE: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","business_id":737,
 "brand_id":663,"branch_id":1062,"brands":[{"id":663,"title":"Bali Bites"}],"status":5,
 "placed_at":"2026-06-25T09:14:11Z","updated_at":"2026-06-25T09:21:05Z","currency":"AED","total":"84.50",
 "payment_status":1,"payment_channel":8,"payment_method":14,"customer":{},
 "cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0,"unit_price":0,"vat":0}],
 "some_future_field":{"ignored":true}}]}"#;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[test]
fn digest_example_parses_with_every_documented_field() {
    let envelope: OrderEnvelope = serde_json::from_str(DIGEST_EXAMPLE).unwrap();
    assert_eq!(
        (envelope.brand_id, envelope.branch_id, envelope.orders.len()),
        (663, 1062, 1)
    );
    let order = &envelope.orders[0];
    assert_eq!(order.id, 7_585_307);
    assert_eq!(order.external_id.as_deref(), Some("ABC-123"));
    assert_eq!(order.business_id, Some(737));
    assert_eq!(order.status, Some(OrderStatus::Ready));
    assert_eq!(order.total, Some(dec("84.50")));
    assert_eq!(order.total.unwrap().to_string(), "84.50", "scale kept");
    assert_eq!(order.currency.as_deref(), Some("AED"));
    assert_eq!(
        (order.payment_status, order.payment_channel, order.payment_method),
        (Some(1), Some(8), Some(14))
    );
    assert_eq!(order.placed_at.unwrap().unix_timestamp(), 1_782_378_851);
    assert!(order.updated_at.unwrap() > order.placed_at.unwrap());
    assert_eq!(order.brands[0].title.as_deref(), Some("Bali Bites"));
    assert_eq!(order.cart[0].item_id, Some(289_379));
    assert_eq!(order.cart[0].quantity, Some(2));
    assert_eq!(order.cart[0].price, Some(Decimal::ZERO));
}

#[test]
fn money_is_exact_from_strings_integers_and_floats() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[
        {"id":1,"total":"0.10"},
        {"id":2,"total":0.1},
        {"id":3,"total":84},
        {"id":4,"total":"1e2"},
        {"id":5,"total":null},
        {"id":6,"total":" 12.5 "},
        {"id":7,"total":123456789.123}
    ]}"#;
    let envelope: OrderEnvelope = serde_json::from_str(body).unwrap();
    let totals: Vec<_> = envelope.orders.iter().map(|o| o.total).collect();
    assert_eq!(
        totals,
        vec![
            Some(dec("0.10")),
            Some(dec("0.1")),
            Some(dec("84")),
            Some(dec("100")),
            None,
            Some(dec("12.5")),
            Some(dec("123456789.123")),
        ]
    );
}

#[test]
fn money_that_is_not_a_number_is_an_error() {
    for bad in [r#""abc""#, "true", "[]"] {
        let body = format!(r#"{{"brand_id":1,"branch_id":2,"orders":[{{"id":1,"total":{bad}}}]}}"#);
        assert!(serde_json::from_str::<OrderEnvelope>(&body).is_err(), "{bad}");
    }
}

#[test]
fn unknown_status_codes_are_kept_not_rejected() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":1,"status":2},{"id":2,"status":99}]}"#;
    let envelope: OrderEnvelope = serde_json::from_str(body).unwrap();
    assert_eq!(envelope.orders[0].status, Some(OrderStatus::Unknown(2)));
    assert_eq!(envelope.orders[1].status.unwrap().code(), 99);
}

#[test]
fn cart_v2_ids_are_strings_even_when_sent_as_numbers() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":1,"cart_v2":[
        {"id":"289379","price":"0.00"},{"id":289380,"price":0}]}]}"#;
    let envelope: OrderEnvelope = serde_json::from_str(body).unwrap();
    let cart = &envelope.orders[0].cart_v2;
    assert_eq!(cart[0].id.as_deref(), Some("289379"));
    assert_eq!(cart[1].id.as_deref(), Some("289380"));
    assert_eq!(cart[0].price, Some(dec("0.00")));
}

#[test]
fn missing_and_null_collections_are_empty() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":1,"cart":null},{"id":2}]}"#;
    let envelope: OrderEnvelope = serde_json::from_str(body).unwrap();
    assert!(envelope.orders.iter().all(|o| o.cart.is_empty() && o.brands.is_empty()));
}

#[test]
fn several_orders_in_one_created_event() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":1},{"id":2},{"id":3}]}"#;
    let event = KlikitEvent::new("evt".parse().unwrap(), EventType::OrderCreated, body.into());
    let ids: Vec<i64> = event.payload().unwrap().orders.iter().map(|o| o.id).collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn json_parses_into_a_user_type() {
    #[derive(serde::Deserialize)]
    struct Mine {
        branch_id: u32,
    }
    let event = KlikitEvent::new("evt".parse().unwrap(), EventType::OrderCreated, DIGEST_EXAMPLE.into());
    assert_eq!(event.json::<Mine>().unwrap().branch_id, 1062);
    assert!(event.json::<Vec<u8>>().is_err());
}

#[test]
fn event_types_round_trip() {
    for name in [
        "klikit.order.created.v2",
        "klikit.order.status.updated",
        "klikit.order.cart.updated",
    ] {
        let parsed = EventType::from_name(name);
        assert!(parsed.is_known());
        assert_eq!(parsed.as_str(), name);
    }
    assert!(!EventType::from_name("klikit.order.created.v3").is_known());
}

#[test]
fn shipped_fixtures_parse_as_their_event_types() {
    use klikit_webhook::fixtures;
    for (event_type, fixture) in [
        (EventType::OrderCreated, fixtures::ORDER_CREATED),
        (EventType::OrderStatusUpdated, fixtures::ORDER_STATUS_UPDATED),
        (EventType::OrderCartUpdated, fixtures::ORDER_CART_UPDATED),
    ] {
        assert_eq!(fixtures::for_event_type(&event_type), Some(fixture));
        let event = KlikitEvent::new("evt".parse().unwrap(), event_type, fixture.into());
        let envelope = event.payload().unwrap();
        assert!(!envelope.orders.is_empty());
        assert!(
            envelope
                .orders
                .iter()
                .all(|o| o.total.is_some() && o.updated_at.is_some())
        );
    }
    let created: OrderEnvelope = serde_json::from_str(fixtures::ORDER_CREATED).unwrap();
    assert_eq!(created.orders.len(), 2, "created.v2 batches orders");
    assert_eq!(created.orders[0].cart_v2[0].id.as_deref(), Some("289379"));
}
